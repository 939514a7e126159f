package pebblestore_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// LastMany agrees with Last on every range, empty ones included.
func TestLastManyAgreesWithLast(t *testing.T) {
	db, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b := db.NewBatch()
	for u := range 50 {
		for s := range u % 7 { // user u has u%7 keys; some none
			b.Set([]byte(fmt.Sprintf("i%03d\x00%02d", u, s)), []byte("v"))
		}
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()
	var ranges [][2][]byte
	for u := range 50 {
		p := []byte(fmt.Sprintf("i%03d\x00", u))
		end := append(bytes.Clone(p[:len(p)-1]), 1)
		ranges = append(ranges, [2][]byte{p, end})
	}
	got := make([][]byte, len(ranges))
	if err := db.LastMany(ranges, func(i int, k []byte) { got[i] = bytes.Clone(k) }); err != nil {
		t.Fatal(err)
	}
	for i, r := range ranges {
		k, _, err := db.Last(r[0], r[1])
		if err == store.ErrNotFound {
			k = nil
		} else if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(k, got[i]) {
			t.Fatalf("range %d: LastMany %q, Last %q", i, got[i], k)
		}
	}
}
