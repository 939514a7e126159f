// Package memstore implements store.Store in memory, for fast engine tests.
// It passes the same conformance suite (storetest) as pebblestore; Commit's
// sync flag is accepted and ignored, since nothing here survives a restart.
package memstore

import (
	"bytes"
	"slices"
	"sync"

	"github.com/dingmq/ding/engine/store"
)

// Store is an in-memory store.Store: a sorted slice of keys and a map.
type Store struct {
	mu     sync.RWMutex
	keys   [][]byte          // sorted; guarded by mu
	vals   map[string][]byte // guarded by mu
	closed bool              // guarded by mu
}

var (
	_ store.Store     = (*Store)(nil)
	_ store.Pipelined = (*batch)(nil)
)

// New returns an empty store.
func New() *Store { return &Store{vals: map[string][]byte{}} }

// Get implements store.Store.
func (s *Store) Get(key []byte) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	v, ok := s.vals[string(key)]
	if !ok {
		return nil, store.ErrNotFound
	}
	return bytes.Clone(v), nil
}

func (s *Store) rangeLocked(lower, upper []byte) (int, int) {
	lo, _ := slices.BinarySearchFunc(s.keys, lower, bytes.Compare)
	hi := len(s.keys)
	if upper != nil {
		hi, _ = slices.BinarySearchFunc(s.keys, upper, bytes.Compare)
	}
	return lo, max(lo, hi)
}

// Scan implements store.Store. It iterates over a snapshot copy of the range.
func (s *Store) Scan(lower, upper []byte, fn func(key, value []byte) bool) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return store.ErrClosed
	}
	lo, hi := s.rangeLocked(lower, upper)
	type kv struct{ k, v []byte }
	snap := make([]kv, 0, hi-lo)
	for _, k := range s.keys[lo:hi] {
		snap = append(snap, kv{k, s.vals[string(k)]})
	}
	s.mu.RUnlock()
	for _, e := range snap {
		if !fn(e.k, e.v) {
			break
		}
	}
	return nil
}

// GetMany implements store.Store.
func (s *Store) GetMany(keys [][]byte, fn func(i int, value []byte)) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return store.ErrClosed
	}
	vals := make([][]byte, len(keys))
	for i, k := range keys {
		vals[i] = s.vals[string(k)]
	}
	s.mu.RUnlock()
	for i, v := range vals {
		fn(i, v)
	}
	return nil
}

// Last implements store.Store.
func (s *Store) Last(lower, upper []byte) ([]byte, []byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, nil, store.ErrClosed
	}
	lo, hi := s.rangeLocked(lower, upper)
	if hi <= lo {
		return nil, nil, store.ErrNotFound
	}
	k := s.keys[hi-1]
	return bytes.Clone(k), bytes.Clone(s.vals[string(k)]), nil
}

// NewBatch implements store.Store.
func (s *Store) NewBatch() store.Batch { return &batch{s: s} }

// Close implements store.Store.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return store.ErrClosed
	}
	s.closed = true
	return nil
}

type op struct {
	key, val []byte
	del      bool
	end      []byte // del of [key, end) when set
}

type batch struct {
	s   *Store
	ops []op
}

func (b *batch) Set(k, v []byte) { b.ops = append(b.ops, op{key: bytes.Clone(k), val: bytes.Clone(v)}) }
func (b *batch) Delete(k []byte) { b.ops = append(b.ops, op{key: bytes.Clone(k), del: true}) }
func (b *batch) DeleteRange(start, end []byte) {
	if bytes.Compare(start, end) < 0 {
		b.ops = append(b.ops, op{key: bytes.Clone(start), end: bytes.Clone(end), del: true})
	}
}
func (b *batch) Len() int { return len(b.ops) }
func (b *batch) Close()   { b.ops = nil }

// Apply implements store.Pipelined: the writes become visible at once and,
// in memory, there is nothing more to wait for.
func (b *batch) Apply() error { return b.Commit(true) }

// Wait implements store.Pipelined.
func (b *batch) Wait() error { return nil }

func (b *batch) Commit(bool) error {
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return store.ErrClosed
	}
	for _, o := range b.ops {
		if o.end != nil {
			lo, hi := s.rangeLocked(o.key, o.end)
			for _, k := range s.keys[lo:hi] {
				delete(s.vals, string(k))
			}
			s.keys = slices.Delete(s.keys, lo, hi)
			continue
		}
		i, found := slices.BinarySearchFunc(s.keys, o.key, bytes.Compare)
		switch {
		case o.del && found:
			s.keys = slices.Delete(s.keys, i, i+1)
			delete(s.vals, string(o.key))
		case !o.del && !found:
			s.keys = slices.Insert(s.keys, i, o.key)
			fallthrough
		case !o.del:
			s.vals[string(o.key)] = o.val
		}
	}
	b.ops = nil
	return nil
}
