package pebblestore_test

import (
	"errors"
	"testing"

	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/engine/store/pebblestore/crashfs"
)

// The store's own answers to a failing disk; the engine's contract
// through them is engine/crashpoint_test.go's.

func commit(db *pebblestore.DB, k string) error {
	b := db.NewBatch()
	defer b.Close()
	b.Set([]byte(k), []byte("v"))
	return b.Commit(true)
}

// A write failing while Pebble opens a new store (creating its MANIFEST,
// syncing its directory) is an error from Open, not a panic: Pebble
// raises one, having released what it held.
func TestOpenOnAFailingDiskIsAnError(t *testing.T) {
	count := crashfs.New(crashfs.Plan{})
	db, err := pebblestore.Open("data", pebblestore.Options{FS: count.VFS()})
	if err != nil {
		t.Fatal(err)
	}
	n := len(count.Ops())
	db.Close()
	failed := 0
	for at := 1; at <= n; at++ {
		fs := crashfs.New(crashfs.Plan{At: at, Mode: crashfs.Fail})
		db, err := pebblestore.Open("data", pebblestore.Options{FS: fs.VFS()})
		if err != nil {
			if !errors.Is(err, crashfs.ErrInjected) {
				t.Errorf("op %d: Open: %v, want the disk's error", at, err)
			}
			failed++
			continue
		}
		if err := commit(db, "k"); err != nil {
			t.Errorf("op %d: the store opened, then refused a write: %v", at, err)
		}
		db.Close()
	}
	if failed == 0 {
		t.Fatalf("none of the %d writes of Open failed it: the test injects nothing", n)
	}
}
