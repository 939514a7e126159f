package keyring_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/dingmq/ding/engine/keyring"
)

func newKey(t testing.TB) (id [16]byte, key [32]byte) {
	t.Helper()
	rand.Read(id[:])
	rand.Read(key[:])
	return id, key
}

func open(t testing.TB, path string) *keyring.Ring {
	t.Helper()
	r, err := keyring.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestPutGetEraseSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret.keys")
	r := open(t, path)
	ids := make([][16]byte, 5)
	keys := make([][32]byte, 5)
	for i := range ids {
		ids[i], keys[i] = newKey(t)
		if err := r.Put(ids[i], keys[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := r.Erase([][16]byte{ids[1], ids[3]}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		found := bytes.Contains(raw, k[:])
		if erased := i == 1 || i == 3; found == erased {
			t.Errorf("key %d: in the file %v, erased %v", i, found, erased)
		}
	}
	r.Close()

	r = open(t, path)
	if r.Len() != 3 {
		t.Fatalf("after reopen: %d keys, want 3", r.Len())
	}
	for i, id := range ids {
		got, ok := r.Get(id)
		if erased := i == 1 || i == 3; ok == erased || (ok && got != keys[i]) {
			t.Errorf("key %d after reopen: ok %v (erased %v), equal %v", i, ok, erased, got == keys[i])
		}
	}
	// Freed slots are reused: the file does not grow.
	before, _ := os.Stat(path)
	for range 2 {
		id, k := newKey(t)
		if err := r.Put(id, k); err != nil {
			t.Fatal(err)
		}
	}
	after, _ := os.Stat(path)
	if after.Size() != before.Size() {
		t.Errorf("file grew from %d to %d bytes although two slots were free", before.Size(), after.Size())
	}
}

func TestTornSlotIsDroppedAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret.keys")
	r := open(t, path)
	a, ka := newKey(t)
	b, kb := newKey(t)
	r.Put(a, ka)
	r.Put(b, kb)
	r.Sync()
	r.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{kb[3] ^ 0xff}, 16+64+20); err != nil { // inside b's key: its checksum fails
		t.Fatal(err)
	}
	f.Close()

	r = open(t, path)
	if _, ok := r.Get(b); ok {
		t.Error("a torn slot's key was returned")
	}
	if got, ok := r.Get(a); !ok || got != ka {
		t.Error("an intact slot was lost")
	}
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, kb[20:]) {
		t.Error("the torn slot's bytes were left in the file")
	}
}

func TestRefusesAForeignFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "not.keys")
	os.WriteFile(path, []byte("this is not a keyring at all"), 0o600)
	if _, err := keyring.Open(path); err == nil {
		t.Fatal("opened a foreign file")
	}
}
