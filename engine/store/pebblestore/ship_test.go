package pebblestore

import (
	"errors"
	"testing"

	"github.com/dingmq/ding/engine/store"
)

// A batch's Repr replayed into another Pebble (BatchFrom) writes the same
// keys, deletes included, and takes more writes beside them.
func TestReprReplaysInAnotherStore(t *testing.T) {
	a, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	pre := b.NewBatch()
	pre.Set([]byte("gone"), []byte("x"))
	if err := pre.Commit(true); err != nil {
		t.Fatal(err)
	}
	pre.Close()

	src := a.NewBatch()
	src.Set([]byte("k1"), []byte("v1"))
	src.Set([]byte("k2"), []byte("v2"))
	src.Delete([]byte("gone"))
	repr, err := a.Repr(src)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := b.BatchFrom(repr)
	if err != nil {
		t.Fatal(err)
	}
	repr[len(repr)-1] ^= 0xff // the replayed batch holds its own copy
	dst.Set([]byte("state"), []byte("s"))
	if err := dst.Commit(true); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	src.Close()
	for k, want := range map[string]string{"k1": "v1", "k2": "v2", "state": "s"} {
		if v, err := b.Get([]byte(k)); err != nil || string(v) != want {
			t.Fatalf("%s = %q %v, want %q", k, v, err, want)
		}
	}
	if _, err := b.Get([]byte("gone")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the replayed delete did not delete: %v", err)
	}
	if _, err := b.BatchFrom([]byte{1, 2}); err == nil {
		t.Fatal("BatchFrom took a truncated repr")
	}
}
