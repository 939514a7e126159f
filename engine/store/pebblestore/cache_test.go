package pebblestore

import (
	"fmt"
	"testing"
)

// TestBlockCacheCaches: point reads of flushed keys come from the block
// cache the second time, after enough writes that Pebble holds two
// memtables (an active one and one flushed but still referenced), whose
// memory it reserves from the block cache. With a cache no larger than
// them, nothing was cached.
func TestBlockCacheCaches(t *testing.T) {
	d, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	val := make([]byte, 4<<10)
	const n = 18000 // 72 MiB: more than two 32 MiB memtables
	for i := 0; i < n; i += 500 {
		b := d.NewBatch()
		for j := i; j < i+500; j++ {
			b.Set([]byte(fmt.Sprintf("k%08d", j)), val)
		}
		if err := b.Commit(true); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	read := func() {
		for i := 0; i < 2000; i++ {
			if _, err := d.Get([]byte(fmt.Sprintf("k%08d", i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	read()
	before := d.db.Metrics().BlockCache
	read()
	after := d.db.Metrics().BlockCache
	hits, misses := after.Hits-before.Hits, after.Misses-before.Misses
	if hits == 0 || misses*10 > hits {
		t.Fatalf("second pass: %d block cache hits, %d misses; the cache is not caching", hits, misses)
	}
}
