package pebblestore_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/dingmq/ding/engine/store"
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

// After a write to the log fails, the store refuses writes and Flush, and
// closes without flushing: Pebble panics (with a fatal error no recover
// catches) when it rotates a log whose writer failed. What was synced
// before is there at the next Open.
func TestAFailedLogWriteIsNeverFollowedByAFlush(t *testing.T) {
	count := crashfs.New(crashfs.Plan{})
	db, err := pebblestore.Open("data", pebblestore.Options{FS: count.VFS()})
	if err != nil {
		t.Fatal(err)
	}
	opened := len(count.Ops())
	if err := commit(db, "a"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	var logOps []int
	for _, o := range count.Ops()[opened:] {
		if strings.HasSuffix(o.Path, ".log") {
			logOps = append(logOps, o.N)
		}
		if len(logOps) == 2 { // the second commit's write and its sync
			break
		}
	}
	if len(logOps) == 0 {
		t.Fatal("the commit wrote nothing to the log")
	}
	for _, at := range logOps {
		fs := crashfs.New(crashfs.Plan{At: at, Mode: crashfs.Fail})
		db, err := pebblestore.Open("data", pebblestore.Options{FS: fs.VFS()})
		if err != nil {
			t.Fatal(err)
		}
		if err := commit(db, "a"); !errors.Is(err, crashfs.ErrInjected) {
			t.Fatalf("op %d: commit on a failing log: %v, want the disk's error", at, err)
		}
		if err := commit(db, "b"); !errors.Is(err, crashfs.ErrInjected) {
			t.Errorf("op %d: a commit after a failed one: %v, want it refused with the first error", at, err)
		}
		if err := db.Flush(); !errors.Is(err, crashfs.ErrInjected) {
			t.Errorf("op %d: Flush after a failed write: %v, want it refused", at, err)
		}
		if err := db.Close(); !errors.Is(err, crashfs.ErrInjected) {
			t.Errorf("op %d: Close after a failed write: %v, want the first error", at, err)
		}
		db, err = pebblestore.Open("data", pebblestore.Options{FS: fs.Image().VFS()})
		if err != nil {
			t.Fatalf("op %d: reopen: %v", at, err)
		}
		if _, err := db.Get([]byte("b")); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("op %d: the refused write is there: %v", at, err)
		}
		db.Close()
	}
}
