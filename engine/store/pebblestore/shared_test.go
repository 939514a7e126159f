package pebblestore

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
)

// TestOptionsAsBefore: with Shared nil and no MemTableBytes, Open gives
// Pebble what it gave before Shared existed (the options as that Open
// built them, compared as Pebble prints them, defaults filled in).
func TestOptionsAsBefore(t *testing.T) {
	for _, o := range []Options{{}, {CacheBytes: 8 << 20, ReadOnly: true}} {
		cache := o.CacheBytes
		if cache == 0 {
			cache = 64 << 20
		}
		const memTable = 32 << 20
		c := pebble.NewCache(cache + 2*memTable)
		want := &pebble.Options{
			Cache:              c,
			FormatMajorVersion: pebble.FormatNewest,
			Logger:             slogLogger{o.Logger},
			MemTableSize:       memTable,
			ReadOnly:           o.ReadOnly,
			FS:                 o.FS,
		}
		want.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
		got, release, err := pebbleOptions(o)
		if err != nil {
			t.Fatal(err)
		}
		want.EnsureDefaults()
		got.EnsureDefaults()
		if w, g := want.String(), got.String(); w != g {
			t.Errorf("options %+v: Pebble is given\n%s\nnot, as before,\n%s", o, g, w)
		}
		release()
		c.Unref()
	}
}

// TestOptionsWithoutShared: with Shared nil a store has caches of its
// own, sized as before Shared existed.
func TestOptionsWithoutShared(t *testing.T) {
	for _, c := range []struct {
		name              string
		o                 Options
		wantCache, wantMT int64
	}{
		{"zero", Options{}, 64<<20 + 2*32<<20, 32 << 20},
		{"cache bytes", Options{CacheBytes: 1 << 20}, 1<<20 + 2*32<<20, 32 << 20},
		{"memtable bytes", Options{MemTableBytes: 8 << 20}, 64<<20 + 2*8<<20, 8 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts, release, err := pebbleOptions(c.o)
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			if got := opts.Cache.MaxSize(); got != c.wantCache {
				t.Errorf("block cache %d, want %d", got, c.wantCache)
			}
			if opts.MemTableSize != uint64(c.wantMT) {
				t.Errorf("memtable %d, want %d", opts.MemTableSize, c.wantMT)
			}
			if opts.FileCache != nil {
				t.Error("a file cache was given: Pebble makes the store's own")
			}
		})
	}
	if _, _, err := pebbleOptions(Options{MemTableBytes: -1}); err == nil {
		t.Fatal("a negative memtable size was accepted")
	}
}

func TestSharedOptions(t *testing.T) {
	s := NewShared(1<<20, 3, 4<<20)
	defer s.Close()
	for _, c := range []struct {
		name   string
		o      Options
		wantMT uint64
	}{
		{"the shared memtable size", Options{Shared: s, CacheBytes: 999 << 20}, 4 << 20},
		{"memtable bytes override it", Options{Shared: s, MemTableBytes: 2 << 20}, 2 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts, release, err := pebbleOptions(c.o)
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			if opts.Cache != s.cache || opts.FileCache != s.files {
				t.Fatal("the store does not use the shared caches")
			}
			if got, want := opts.Cache.MaxSize(), int64(1<<20+3*2*4<<20); got != want {
				t.Errorf("block cache %d, want %d", got, want)
			}
			if opts.MemTableSize != c.wantMT {
				t.Errorf("memtable %d, want %d", opts.MemTableSize, c.wantMT)
			}
		})
	}
	d := NewShared(0, 0, 0)
	defer d.Close()
	if got, want := d.cache.MaxSize(), int64(64<<20+2*32<<20); got != want || d.memTable != 32<<20 {
		t.Fatalf("NewShared(0, 0, 0): cache %d, memtable %d; want %d and 32 MiB", got, d.memTable, want)
	}
}

// freed fails t unless both of s's caches have no reference left: Pebble
// refuses (panics) to take one on a cache whose count reached zero.
func freed(t *testing.T, s *Shared) {
	t.Helper()
	for _, c := range []struct {
		name string
		ref  func()
	}{{"block cache", s.cache.Ref}, {"file cache", s.files.Ref}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("the %s is still referenced after the stores and the Shared closed", c.name)
				}
			}()
			c.ref()
		}()
	}
}

// use writes, flushes and reads back a key, so the store's tables go
// through both caches.
func use(t *testing.T, d *DB, i int) {
	t.Helper()
	k, v := []byte(fmt.Sprintf("k%d", i)), []byte(fmt.Sprintf("v%d", i))
	b := d.NewBatch()
	b.Set(k, v)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, err := d.Get(k); err != nil || string(got) != string(v) {
		t.Fatalf("Get %s = %q, %v", k, got, err)
	}
}

// TestSharedCloseInAnyOrder: the stores and the Shared close in any
// order; a store outliving its Shared still reads through the caches;
// once all are closed nothing is referenced, and nothing was released
// twice (Pebble panics on a negative count).
func TestSharedCloseInAnyOrder(t *testing.T) {
	for _, c := range []struct {
		name  string
		order []int // indexes of the stores; -1 is the Shared
	}{
		{"shared first", []int{-1, 0, 1, 2}},
		{"shared last", []int{2, 0, 1, -1}},
		{"shared between", []int{1, -1, 2, 0}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := NewShared(1<<20, 3, 1<<20)
			dbs := make([]*DB, 3)
			for i := range dbs {
				d, err := Open(t.TempDir(), Options{Shared: s})
				if err != nil {
					t.Fatal(err)
				}
				dbs[i] = d
				use(t, d, i)
			}
			if m := s.cache.Metrics(); m.Count == 0 {
				t.Fatal("nothing in the shared block cache")
			}
			for i, d := range dbs {
				if got, want := d.db.Metrics().BlockCache, s.cache.Metrics(); got != want {
					t.Fatalf("store %d's block cache metrics %+v, the shared one's %+v: not the same cache", i, got, want)
				}
			}
			open := map[int]bool{0: true, 1: true, 2: true}
			for _, i := range c.order {
				if i < 0 {
					s.Close()
					s.Close() // idempotent
					if _, err := Open(t.TempDir(), Options{Shared: s}); !errors.Is(err, ErrClosed) {
						t.Fatalf("Open with a closed Shared: %v, want ErrClosed", err)
					}
					for j := range open {
						use(t, dbs[j], 10+j) // the caches live on for the open stores
					}
					continue
				}
				if err := dbs[i].Close(); err != nil {
					t.Fatal(err)
				}
				delete(open, i)
			}
			freed(t, s)
		})
	}
}

// TestSharedOpenRacesClose: stores opening and closing while the Shared
// closes: each Open either works or fails with ErrClosed, and at the end
// nothing is referenced.
func TestSharedOpenRacesClose(t *testing.T) {
	s := NewShared(1<<20, 4, 1<<20)
	dirs := make([]string, 4)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(dirs))
	for i, dir := range dirs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := Open(dir, Options{Shared: s})
			if errors.Is(err, ErrClosed) {
				return
			}
			if err != nil {
				errs <- err
				return
			}
			b := d.NewBatch()
			b.Set([]byte{byte(i)}, []byte("v"))
			err = errors.Join(b.Commit(true), d.Flush())
			b.Close()
			if _, gerr := d.Get([]byte{byte(i)}); gerr != nil {
				err = errors.Join(err, gerr)
			}
			errs <- errors.Join(err, d.Close())
		}()
	}
	s.Close()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	freed(t, s)
}
