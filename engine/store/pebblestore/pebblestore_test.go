package pebblestore_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/engine/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(tb testing.TB) store.Store {
		db, err := pebblestore.Open(tb.TempDir(), pebblestore.Options{})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = db.Close() })
		return db
	})
}

func TestCheckpointReopens(t *testing.T) {
	db, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b := db.NewBatch()
	b.Set([]byte("k"), []byte("v"))
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()
	dir := filepath.Join(t.TempDir(), "backup")
	if err := db.Checkpoint(dir); err != nil {
		t.Fatal(err)
	}
	cp, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	if v, err := cp.Get([]byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("checkpoint Get = %q, %v", v, err)
	}
}

// TestConformanceShared runs the suite on stores opened with a Shared:
// one Shared for every case (closed after them), and a Shared per store
// closed as soon as the store is open (the store holds the last
// references).
func TestConformanceShared(t *testing.T) {
	t.Run("one for all", func(t *testing.T) {
		s := pebblestore.NewShared(1<<20, 4, 1<<20)
		t.Cleanup(s.Close) // after every case's store closed
		storetest.Run(t, func(tb testing.TB) store.Store {
			db, err := pebblestore.Open(tb.TempDir(), pebblestore.Options{Shared: s})
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { _ = db.Close() })
			return db
		})
	})
	t.Run("closed first", func(t *testing.T) {
		storetest.Run(t, func(tb testing.TB) store.Store {
			s := pebblestore.NewShared(1<<20, 1, 1<<20)
			db, err := pebblestore.Open(tb.TempDir(), pebblestore.Options{Shared: s})
			s.Close()
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { _ = db.Close() })
			return db
		})
	})
}

// Several stores in one process share one block cache and one file
// cache: 256 MiB of blocks plus two 4 MiB memtables for each of 16.
func ExampleNewShared() {
	s := pebblestore.NewShared(256<<20, 16, 4<<20)
	defer s.Close() // the caches live on until the last store closes too
	dir, err := os.MkdirTemp("", "shared")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	for p := range 2 {
		db, err := pebblestore.Open(filepath.Join(dir, "p", strconv.Itoa(p), "store"), pebblestore.Options{Shared: s})
		if err != nil {
			panic(err)
		}
		defer db.Close()
	}
	fmt.Println("open")
	// Output: open
}
