// Package pebblestore implements store.Store on github.com/cockroachdb/pebble/v2.
//
// Durability comes from Pebble's write-ahead log: Batch.Commit(true) returns
// after the WAL record holding the batch is fsync'd. Pebble itself
// group-commits concurrent synced batches; the engine adds its own group
// commit on top so that one fsync carries many submits.
//
// A failing disk: once a write fails (the log's write or fsync), the store
// refuses every later write and Flush with that error, and Close does not
// flush (Pebble cannot rotate a log whose writer failed); reads go on. A
// write failing while Open creates the store is Open's error. What Pebble
// still does by design: a write that fails in its own goroutines while it
// flushes a memtable or rotates its log (the MANIFEST, a directory's fsync,
// a new log file) stops the process; the restart recovers from what was
// synced (engine/crashpoint_test.go checks both, at every write).
package pebblestore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/dingmq/ding/engine/store"
)

// DB is a store.Store backed by one Pebble database.
type DB struct {
	// mu is held for reading by every operation and for writing by Close,
	// because Pebble panics when used after Close.
	mu     sync.RWMutex
	closed bool // guarded by mu
	db     *pebble.DB

	// failed is the first error of a write (a commit, or the write or
	// fsync of the write-ahead log under it); nil while none failed.
	// After one, every write and Flush fails with it: the log may have
	// lost a write (fsync errors are not recoverable), and Pebble panics
	// when it rotates a log whose writer failed (a Flush does; so would a
	// full memtable), with a fatal "unlock of unlocked mutex" that no
	// recover catches: it killed dingd at its shutdown's Flush after a
	// disk error (the crash points found it). Close then closes without
	// flushing: the synced log is replayed at the next Open. (A synced
	// Commit whose fsync fails makes Pebble call Logger.Fatalf on the
	// caller's goroutine: Commit recovers that into its error.)
	failed atomic.Pointer[error]
}

var (
	_ store.Store        = (*DB)(nil)
	_ store.Checkpointer = (*DB)(nil)
	_ store.Pipelined    = (*batch)(nil)
)

// Options tune the Pebble instance. The zero value is the production default.
type Options struct {
	// Logger receives Pebble's own log lines. Nil means discard them.
	Logger *slog.Logger
	// CacheBytes is the block cache size, beyond the memtables' memory
	// that Pebble reserves from it; zero means 64 MiB. Ignored with a
	// Shared (whose cache is sized by NewShared).
	CacheBytes int64
	// Shared, if set, gives the store the block and file caches of the
	// Shared (several stores in one process); nil means caches of its
	// own, as before Shared existed. See Shared for the references.
	Shared *Shared
	// MemTableBytes is the size of a memtable (Pebble keeps up to two
	// while one flushes); zero means the Shared's, or 32 MiB without one.
	MemTableBytes int64
	// ReadOnly opens the store without writing anything to it (dingd
	// check): writes fail.
	ReadOnly bool
	// FS is the file system the store lives on; nil means the operating
	// system's. The crash-point tests give one that fails or stops at a
	// chosen write (package crashfs).
	FS vfs.FS
}

// Open opens (creating if needed) the Pebble database in dir.
func Open(dir string, o Options) (*DB, error) {
	opts, release, err := pebbleOptions(o)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	// Pebble takes its own references on the caches (released by Close):
	// ours are given back once it holds them, or failed.
	defer release()
	db, err := openPebble(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	return &DB{db: db}, nil
}

const (
	defaultCacheBytes   = 64 << 20
	defaultMemTable     = 32 << 20
	defaultMaxOpenFiles = 1000 // Pebble's default MaxOpenFiles
)

// pebbleOptions makes the Pebble options for o, holding a reference on
// their caches that release gives back.
func pebbleOptions(o Options) (opts *pebble.Options, release func(), err error) {
	if o.MemTableBytes < 0 || o.CacheBytes < 0 {
		return nil, nil, fmt.Errorf("negative sizes (memtable %d, cache %d)", o.MemTableBytes, o.CacheBytes)
	}
	memTable := o.MemTableBytes
	var c *pebble.Cache
	var files *pebble.FileCache
	if s := o.Shared; s != nil {
		if release, err = s.acquire(); err != nil {
			return nil, nil, err
		}
		c, files = s.cache, s.files
		if memTable == 0 {
			memTable = s.memTable
		}
	} else {
		if memTable == 0 {
			memTable = defaultMemTable
		}
		cache := o.CacheBytes
		if cache == 0 {
			cache = defaultCacheBytes
		}
		// Pebble reserves its memtables' memory from the block cache (an
		// active one and one being flushed): a cache no larger than that
		// caches nothing. It was 64 MiB against two 32 MiB memtables, so
		// every point read (a submit's client-message-id lookup) read its
		// filter, index and data blocks from the file: a quarter of dingd's
		// CPU in ingest, at a 6% hit rate (bench/RESULTS.md, 2026-12-03).
		c = pebble.NewCache(cache + 2*memTable)
		release = c.Unref
	}
	opts = &pebble.Options{
		Cache:              c,
		FileCache:          files, // nil: Pebble makes one for this store
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             slogLogger{o.Logger},
		MemTableSize:       uint64(memTable),
		ReadOnly:           o.ReadOnly,
		FS:                 o.FS,
	}
	// Bloom filters on every level (later levels inherit L0's policy): the
	// engine looks up keys that usually do not exist (client message ids,
	// new cursors), and without filters each miss reads a block per level.
	opts.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	return opts, release, nil
}

// openPebble is pebble.Open, except that a write failing during it is
// returned as an error rather than raised. Pebble panics when a write
// fails while it creates its MANIFEST (Logger.Fatalf) or when it cannot
// sync its directory (fsync errors are unrecoverable), and releases what
// it holds (the lock, its files) before raising the panic again: the
// caller can report the disk's error instead of crashing (the crash
// points found it: a disk failing at start-up killed dingd with a stack
// trace). A panic that is not an error (a bug) is raised again.
func openPebble(dir string, opts *pebble.Options) (db *pebble.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			perr, ok := r.(error)
			var rerr runtime.Error
			if !ok || errors.As(perr, &rerr) {
				panic(r)
			}
			db, err = nil, fmt.Errorf("pebble gave up: %w", perr)
		}
	}()
	return pebble.Open(dir, opts)
}

// Get implements store.Store.
func (d *DB) Get(key []byte) ([]byte, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return nil, store.ErrClosed
	}
	v, closer, err := d.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, mapErr(err)
	}
	out := append([]byte(nil), v...)
	closer.Close()
	return out, nil
}

// Scan implements store.Store.
func (d *DB) Scan(lower, upper []byte, fn func(key, value []byte) bool) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return store.ErrClosed
	}
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return mapErr(err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return mapErr(err)
		}
		if !fn(it.Key(), v) {
			break
		}
	}
	return mapErr(it.Close())
}

// GetMany implements store.Store with one iterator: seeking forward from
// the previous position is much cheaper than a fresh Get.
func (d *DB) GetMany(keys [][]byte, fn func(i int, value []byte)) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return store.ErrClosed
	}
	it, err := d.db.NewIter(nil)
	if err != nil {
		return mapErr(err)
	}
	for i, k := range keys {
		if it.SeekGE(k) && bytes.Equal(it.Key(), k) {
			v, err := it.ValueAndErr()
			if err != nil {
				it.Close()
				return mapErr(err)
			}
			fn(i, v)
			continue
		}
		if err := it.Error(); err != nil {
			it.Close()
			return mapErr(err)
		}
		fn(i, nil)
	}
	return mapErr(it.Close())
}

// Last implements store.Store.
var _ store.LastManyer = (*DB)(nil)
var _ store.Shippable = (*DB)(nil)

// LastMany implements store.LastManyer with one iterator.
func (d *DB) LastMany(ranges [][2][]byte, fn func(i int, key []byte)) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return store.ErrClosed
	}
	if len(ranges) == 0 {
		return nil
	}
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: ranges[0][0], UpperBound: ranges[len(ranges)-1][1]})
	if err != nil {
		return mapErr(err)
	}
	for i, r := range ranges {
		if it.SeekLT(r[1]) && bytes.Compare(it.Key(), r[0]) >= 0 {
			fn(i, it.Key())
			continue
		}
		if err := it.Error(); err != nil {
			it.Close()
			return mapErr(err)
		}
		fn(i, nil)
	}
	return mapErr(it.Close())
}

func (d *DB) Last(lower, upper []byte) ([]byte, []byte, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return nil, nil, store.ErrClosed
	}
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, nil, mapErr(err)
	}
	defer it.Close()
	if !it.Last() {
		if err := it.Error(); err != nil {
			return nil, nil, mapErr(err)
		}
		return nil, nil, store.ErrNotFound
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return nil, nil, mapErr(err)
	}
	return append([]byte(nil), it.Key()...), append([]byte(nil), v...), nil
}

// NewBatch implements store.Store.
func (d *DB) NewBatch() store.Batch { return &batch{d: d, b: d.db.NewBatch()} }

// Repr implements store.Shippable: Pebble's own batch encoding.
func (d *DB) Repr(b store.Batch) ([]byte, error) {
	pb, ok := b.(*batch)
	if !ok {
		return nil, fmt.Errorf("pebblestore: Repr of a %T", b)
	}
	return pb.b.Repr(), nil
}

// BatchFrom implements store.Shippable.
func (d *DB) BatchFrom(repr []byte) (store.Batch, error) {
	pb := d.db.NewBatch()
	// SetRepr keeps the slice: give it a copy the caller cannot change.
	if err := pb.SetRepr(append([]byte(nil), repr...)); err != nil {
		_ = pb.Close()
		return nil, fmt.Errorf("pebblestore: batch from repr: %w", err)
	}
	return &batch{d: d, b: pb}, nil
}

// Checkpoint implements store.Checkpointer with a Pebble checkpoint, which
// hard-links immutable table files and copies the WAL tail.
func (d *DB) Checkpoint(dir string) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return store.ErrClosed
	}
	if err := d.db.Checkpoint(dir, pebble.WithFlushedWAL()); err != nil {
		return fmt.Errorf("pebblestore: checkpoint %s: %w", dir, mapErr(err))
	}
	return nil
}

// Flush writes the memtable to a table file (tests use it to make sure
// data reached the LSM's tables, not only the log; the disk guard, to
// release the write-ahead logs the memtables held, each preallocated to
// 110% of a memtable). After a write failed it fails (see DB.failed).
func (d *DB) Flush() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return store.ErrClosed
	}
	if err := d.err(); err != nil {
		return err
	}
	return d.noteErr(d.db.Flush())
}

// err returns the error that stopped the store from writing, or nil.
func (d *DB) err() error {
	if p := d.failed.Load(); p != nil {
		return fmt.Errorf("pebblestore: refusing writes after a failed one: %w", *p)
	}
	return nil
}

// noteErr maps err and, if it is a write's failure, remembers it (see
// DB.failed).
func (d *DB) noteErr(err error) error {
	err = mapErr(err)
	if err != nil && !errors.Is(err, store.ErrClosed) {
		d.failed.CompareAndSwap(nil, &err)
	}
	return err
}

// DiskUsage returns the bytes the store's files take on disk (tables,
// write-ahead logs, manifests): what retention keeps flat.
func (d *DB) DiskUsage() uint64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return 0
	}
	return d.db.Metrics().DiskSpaceUsage()
}

// Close implements store.Store.
func (d *DB) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return store.ErrClosed
	}
	d.closed = true
	// Flush the memtable first: a clean stop then leaves no WAL to replay,
	// and the next Open does not start with an L0 compaction that it
	// waits on (a restart went from ~0.3-1 s to tens of ms with 1M keys).
	// Not after a failed write: Pebble cannot flush then (see DB.failed).
	ferr := d.err()
	if ferr == nil {
		ferr = mapErr(d.db.Flush())
	}
	return errors.Join(ferr, mapErr(d.db.Close()))
}

type batch struct {
	d       *DB
	b       *pebble.Batch
	applied bool // Apply was called (Pipelined)
}

func (b *batch) Set(k, v []byte) { _ = b.b.Set(k, v, nil) }
func (b *batch) Delete(k []byte) { _ = b.b.Delete(k, nil) }
func (b *batch) DeleteRange(start, end []byte) {
	if bytes.Compare(start, end) < 0 {
		_ = b.b.DeleteRange(start, end, nil)
	}
}
func (b *batch) Len() int { return int(b.b.Count()) }
func (b *batch) Close()   { _ = b.b.Close() }
func (b *batch) Commit(sync bool) error {
	b.d.mu.RLock()
	defer b.d.mu.RUnlock()
	if b.d.closed {
		return store.ErrClosed
	}
	if err := b.d.err(); err != nil {
		return err
	}
	o := pebble.NoSync
	if sync {
		o = pebble.Sync
	}
	return b.d.noteErr(b.commit(o))
}

func (b *batch) commit(o *pebble.WriteOptions) (err error) {
	defer recoverFatal(&err)
	return b.b.Commit(o)
}

// Apply implements store.Pipelined with Pebble's ApplyNoSyncWait: the
// batch goes into the memtable and the WAL's queue, and is visible when it
// returns; its fsync runs in Pebble's log writer.
func (b *batch) Apply() error {
	b.d.mu.RLock()
	defer b.d.mu.RUnlock()
	if b.d.closed {
		return store.ErrClosed
	}
	if err := b.d.err(); err != nil {
		return err
	}
	b.applied = true
	return b.d.noteErr(b.apply())
}

func (b *batch) apply() (err error) {
	defer recoverFatal(&err)
	return b.d.db.ApplyNoSyncWait(b.b, pebble.Sync)
}

// Wait implements store.Pipelined. A batch that Apply refused has nothing
// to wait for.
func (b *batch) Wait() error {
	if !b.applied {
		return errors.New("pebblestore: Wait before Apply")
	}
	return b.d.noteErr(b.b.SyncWait())
}

func mapErr(err error) error {
	if errors.Is(err, pebble.ErrClosed) {
		return store.ErrClosed
	}
	return err
}

// slogLogger adapts Pebble's printf logger to slog; a nil logger discards.
type slogLogger struct{ l *slog.Logger }

func (s slogLogger) Infof(format string, args ...any) {
	if s.l != nil {
		s.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
	}
}
func (s slogLogger) Errorf(format string, args ...any) {
	if s.l != nil {
		s.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	}
}
func (s slogLogger) Fatalf(format string, args ...any) {
	if s.l != nil {
		s.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	}
	f := &fatalError{msg: fmt.Sprintf(format, args...)}
	for _, a := range args {
		if err, ok := a.(error); ok && f.err == nil {
			f.err = err
		}
	}
	panic(f)
}

// fatalError is what Fatalf panics with: Pebble cannot go on (a MANIFEST
// write failed, a synced commit's fsync failed, an invariant broke). It
// wraps the error it was given, if any (the disk's).
type fatalError struct {
	msg string
	err error
}

func (f *fatalError) Error() string { return "pebble: fatal: " + f.msg }
func (f *fatalError) Unwrap() error { return f.err }

// recoverFatal turns a Fatalf panic raised on the caller's goroutine into
// *err (Pebble raises one when a synced commit's fsync fails: "fatal
// commit error"; its commit pipeline holds no lock by then). Any other
// panic goes on.
func recoverFatal(err *error) {
	if r := recover(); r != nil {
		f, ok := r.(*fatalError)
		if !ok {
			panic(r)
		}
		*err = f
	}
}

var _ io.Closer = (*DB)(nil)

// BackupStats is what Verify found in a backup.
type BackupStats struct {
	Keys  int64 `json:"keys"`
	Bytes int64 `json:"bytes"` // keys and values
	// ByPrefix counts keys by their first byte (the engine's record
	// kinds: 'm' messages, 'i' stream entries, 'u' the directory, ...).
	ByPrefix map[string]int64 `json:"by_prefix"`
}

// Verify opens the Pebble database in dir (a backup: a checkpoint)
// read-only and reads every key and value, which checks every block's
// checksum on the way: a backup that verifies opens and reads whole.
func Verify(dir string) (BackupStats, error) {
	st := BackupStats{ByPrefix: map[string]int64{}}
	if ms, _ := filepath.Glob(filepath.Join(dir, "MANIFEST-*")); len(ms) == 0 {
		return st, fmt.Errorf("pebblestore: %s holds no store (no MANIFEST)", dir)
	}
	db, err := pebble.Open(dir, &pebble.Options{ReadOnly: true, Logger: slogLogger{}})
	if err != nil {
		return st, fmt.Errorf("pebblestore: open %s: %w", dir, mapErr(err))
	}
	defer db.Close()
	it, err := db.NewIter(nil)
	if err != nil {
		return st, mapErr(err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return st, fmt.Errorf("pebblestore: read %s: %w", dir, mapErr(err))
		}
		st.Keys++
		st.Bytes += int64(len(k) + len(v))
		if len(k) > 0 {
			st.ByPrefix[string(k[:1])]++
		}
	}
	if err := it.Close(); err != nil {
		return st, fmt.Errorf("pebblestore: read %s: %w", dir, mapErr(err))
	}
	return st, nil
}
