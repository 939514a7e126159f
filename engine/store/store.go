// Package store is the contract between Ding's engine and the ordered
// key-value store it keeps everything in.
//
// A Store is an ordered map of byte keys to byte values with atomic batches
// and synced commits. The engine owns the key layout (see package engine);
// a Store knows nothing about messages. Implementations live in
// sub-packages (pebblestore for production, memstore for fast tests) and
// must pass the conformance suite in storetest.
//
// Usage:
//
//	b := st.NewBatch()
//	b.Set([]byte("k"), []byte("v"))
//	if err := b.Commit(true); err != nil { ... } // durable when nil
//	b.Close()
package store

import "errors"

// ErrNotFound is returned by Get when the key does not exist.
var ErrNotFound = errors.New("store: not found")

// ErrClosed is returned by every method called after Close.
var ErrClosed = errors.New("store: closed")

// Store is an ordered, durable key-value map.
//
// All methods are safe for concurrent use. Reads see every batch whose
// Commit has returned; a Scan sees a consistent snapshot taken when it
// starts.
type Store interface {
	// Get returns a copy of the value stored under key, or ErrNotFound.
	Get(key []byte) ([]byte, error)

	// Scan calls fn for every key in [lower, upper) in ascending order until
	// fn returns false. The slices passed to fn are valid only during the
	// call. A nil upper means no upper bound.
	Scan(lower, upper []byte, fn func(key, value []byte) bool) error

	// GetMany looks up keys (best given in ascending order) and calls fn
	// with each key's index and value, or a nil value when the key does not
	// exist. The value is valid only during the call. It is cheaper than a
	// Get per key because it reuses one cursor.
	GetMany(keys [][]byte, fn func(i int, value []byte)) error

	// Last returns copies of the greatest key in [lower, upper) and its
	// value, or ErrNotFound when the range is empty.
	Last(lower, upper []byte) (key, value []byte, err error)

	// NewBatch returns an empty batch bound to this store.
	NewBatch() Batch

	// Close flushes and releases the store. Calls after Close return
	// ErrClosed.
	Close() error
}

// Batch is a set of writes applied atomically by Commit. A Batch is not safe
// for concurrent use.
type Batch interface {
	// Set records key=value. Both slices are copied.
	Set(key, value []byte)
	// Delete records the removal of key.
	Delete(key []byte)
	// DeleteRange records the removal of every key in [start, end),
	// including keys set earlier in this batch; keys set later in the
	// batch are kept. It costs one write however many keys it removes
	// (retention deletes old streams and messages with it).
	DeleteRange(start, end []byte)
	// Len is the number of writes recorded.
	Len() int
	// Commit applies every write atomically. With sync it returns only once
	// the writes are durable on disk (fsync'd); an error means none of them
	// may be assumed applied. A batch is committed at most once.
	Commit(sync bool) error
	// Close releases the batch; it must not be used afterwards.
	Close()
}

// Pipelined is an optional interface of a Batch: it splits Commit(true)
// in two, so that a writer can build and apply its next batch while this
// one's fsync is in flight (the engine's commit pipeline does).
//
// Apply makes the batch's writes visible to reads, in the order of Apply
// calls, and starts making them durable; it does not wait for the fsync.
// Wait returns once they are durable (fsync'd), or with the error that
// kept them from it, in which case the writes may or may not be on disk.
// A batch is applied at most once, and an applied batch must be waited
// for before Close. An error from Apply means none of the writes may be
// assumed applied. Batches applied one after another become durable in
// that order: when Wait of a batch returns nil, every batch applied
// before it is durable too.
type Pipelined interface {
	Apply() error
	Wait() error
}

// Checkpointer is implemented by stores that can write a consistent,
// openable copy of themselves into a new directory (a backup).
type Checkpointer interface {
	// Checkpoint writes the copy into dir, which must not exist yet.
	Checkpoint(dir string) error
}

// LastManyer is an optional interface of a Store: LastMany finds the last
// key of each [lower, upper) range (given in ascending order) with one
// iterator, calling fn with the range's index and its last key, or nil if
// the range is empty. The key is valid only during the call. It is how a
// fanout reads the stream heads of thousands of recipients at once.
type LastManyer interface {
	LastMany(ranges [][2][]byte, fn func(i int, key []byte)) error
}

// Shippable is an optional interface of a Store whose batches can be
// copied to another store of the same kind and replayed there (cluster
// mode's replication ships each committed batch to a standby).
type Shippable interface {
	// Repr returns the writes of b, a batch of this store, in the
	// store's own encoding; the slice is valid until b is closed.
	Repr(b Batch) ([]byte, error)
	// BatchFrom returns a new batch holding the writes of repr (from
	// Repr of a store of the same kind); more writes may be added to it.
	BatchFrom(repr []byte) (Batch, error)
}
