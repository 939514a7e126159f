package pebblestore

import (
	"errors"
	"runtime"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// Shared is one block cache and one file cache for several stores opened
// in one process (Options.Shared): P partitions on a node then share one
// memory budget instead of each reserving a cache and two memtables.
//
// Reference counting. Pebble's caches are counted: NewShared holds one
// reference on each, every DB opened with the Shared takes its own (its
// cache and file-cache handles, released by the DB's Close), and Close
// gives back the Shared's. The memory is freed when the last of them is
// released, so the stores and the Shared may be closed in any order. Open
// holds a reference of its own while Pebble opens, so a Close racing an
// Open frees nothing under it; an Open after Close fails with ErrClosed.
//
// Each store's block-cache metrics (Pebble's Metrics().BlockCache) are
// then the shared cache's, for all its stores together.
//
//	s := pebblestore.NewShared(256<<20, 16, 4<<20)
//	defer s.Close()
//	db, err := pebblestore.Open(dir, pebblestore.Options{Shared: s})
type Shared struct {
	cache    *pebble.Cache
	files    *pebble.FileCache
	memTable int64

	mu     sync.Mutex
	closed bool // guarded by mu
}

// ErrClosed is returned by Open with a Shared that was closed.
var ErrClosed = errors.New("pebblestore: shared caches closed")

// NewShared makes the caches for dbs stores: a block cache of cacheBytes
// plus, since Pebble reserves its memtables' memory from the block cache
// (an active one and one being flushed), 2 × memTable per store, and a
// file cache of Pebble's default size per store. memTable is also the
// memtable size of the stores opened with it (Options.MemTableBytes
// overrides it); zero means 32 MiB, as a store of its own has. cacheBytes
// zero means 64 MiB; dbs below 1 counts as 1. Opening more stores than
// dbs works, with less cache each.
func NewShared(cacheBytes int64, dbs int, memTable int64) *Shared {
	if cacheBytes <= 0 {
		cacheBytes = defaultCacheBytes
	}
	if memTable <= 0 {
		memTable = defaultMemTable
	}
	dbs = max(dbs, 1)
	return &Shared{
		cache:    pebble.NewCache(cacheBytes + int64(dbs)*2*memTable),
		files:    pebble.NewFileCache(runtime.GOMAXPROCS(0), dbs*pebble.FileCacheSize(defaultMaxOpenFiles)),
		memTable: memTable,
	}
}

// Close releases the Shared's references: the caches are freed once every
// store opened with it is closed too. Idempotent.
func (s *Shared) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.files.Unref()
	s.cache.Unref()
}

// acquire takes a reference on both caches for an Open; release gives it
// back once Pebble holds its own.
func (s *Shared) acquire() (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	s.cache.Ref()
	s.files.Ref()
	return func() {
		s.files.Unref()
		s.cache.Unref()
	}, nil
}
