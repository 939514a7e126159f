// Package crashfs is a file system for crash-point tests of a Pebble
// store (pebblestore.Options.FS): it lives in memory, numbers every write
// operation Pebble makes on it (creating, writing, syncing, renaming,
// removing a file, taking the lock, ...), and at a chosen one either
// fails it or takes the image that a power loss at that moment would
// leave: what was synced, and of the rest nothing (or, for a torn write,
// a random share of the unsynced blocks).
//
// A test runs its workload once to count the operations (Ops), then once
// per operation N with Plan{At: N}, and reopens the store from Image:
//
//	fs := crashfs.New(crashfs.Plan{At: 42, Mode: crashfs.Stop})
//	db, err := pebblestore.Open("data", pebblestore.Options{FS: fs.VFS()})
//	... the workload, then db.Close() ...
//	img := fs.Image() // the disk as a crash just before operation 42 left it
//	db, err = pebblestore.Open("data", pebblestore.Options{FS: img.VFS()})
//
// Only write operations are numbered: reads never change what a crash
// leaves. The numbering is as deterministic as the workload: Pebble's
// own goroutines (the WAL's flusher, flushes, deleting obsolete files)
// write concurrently with the caller, so a workload that waits for each
// answer before its next step numbers the same way every run.
package crashfs

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// ErrInjected is the error a Fail plan injects (an EIO, as a dying disk
// reports it).
var ErrInjected = errors.New("crashfs: injected I/O error")

// Mode is what happens at the plan's operation.
type Mode int

const (
	// Count only numbers the operations.
	Count Mode = iota
	// Fail makes operation At fail with ErrInjected; it is not carried
	// out, and every other operation is.
	Fail
	// Stop takes the image just before operation At (Image returns it);
	// the operations themselves all run, but none from At on reaches the
	// image: the power went off there.
	Stop
)

func (m Mode) String() string {
	switch m {
	case Fail:
		return "fail"
	case Stop:
		return "stop"
	}
	return "count"
}

// Plan chooses the operation and what happens there.
type Plan struct {
	// At is the number of the operation (from 1); zero means none.
	At   int
	Mode Mode
	// Unsynced is the percentage of the data blocks and directory entries
	// written but not synced that a Stop image keeps (a torn write); zero
	// keeps none. Seed seeds that choice.
	Unsynced int
	Seed     uint64
	// OnHit, if set, runs when operation At starts, before anything
	// happens to it (and, for Stop, before the image is taken): no other
	// operation starts meanwhile, so what the caller records there (the
	// crash instant, files kept beside the store) is consistent with the
	// image.
	OnHit func(Op)
	// Observe, if set, is called with every write operation as it
	// starts, in order (a test notes which of its steps each falls in).
	Observe func(Op)
}

// Op is one numbered write operation.
type Op struct {
	N    int
	Kind string // Pebble's name for it: OpFileSync, OpCreate, ...
	Path string
}

func (o Op) String() string { return fmt.Sprintf("op %d: %s %s", o.N, o.Kind, o.Path) }

// FS is the file system. Its methods are safe for concurrent use.
type FS struct {
	mem  *vfs.MemFS
	fs   vfs.FS
	plan Plan

	// mu is held while an operation is numbered and, at the plan's
	// operation, while OnHit runs and the image is taken.
	mu    sync.Mutex
	ops   []Op       // guarded by mu
	hit   *Op        // the plan's operation, once it started; guarded by mu
	image *vfs.MemFS // Stop's image; guarded by mu
}

// New returns an empty file system that carries out plan.
func New(plan Plan) *FS { return wrap(vfs.NewCrashableMem(), plan) }

func wrap(mem *vfs.MemFS, plan Plan) *FS {
	f := &FS{mem: mem, plan: plan}
	f.fs = errorfs.Wrap(mem, errorfs.InjectorFunc(f.maybeError))
	return f
}

// VFS returns the file system to give Pebble.
func (f *FS) VFS() vfs.FS { return f.fs }

func (f *FS) maybeError(op errorfs.Op) error {
	if op.Kind.ReadOrWrite() != errorfs.OpIsWrite {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	o := Op{N: len(f.ops) + 1, Kind: kindName(op.Kind), Path: op.Path}
	f.ops = append(f.ops, o)
	if f.plan.Observe != nil {
		f.plan.Observe(o)
	}
	if o.N != f.plan.At || f.plan.Mode == Count {
		return nil
	}
	f.hit = &o
	if f.plan.OnHit != nil {
		f.plan.OnHit(o)
	}
	switch f.plan.Mode {
	case Fail:
		return fmt.Errorf("%w (%s)", ErrInjected, o)
	case Stop:
		f.image = f.crashClone()
	}
	return nil
}

func (f *FS) crashClone() *vfs.MemFS {
	cfg := vfs.CrashCloneCfg{UnsyncedDataPercent: f.plan.Unsynced}
	if cfg.UnsyncedDataPercent > 0 {
		cfg.RNG = rand.New(rand.NewPCG(f.plan.Seed, uint64(f.plan.At)))
	}
	return f.mem.CrashClone(cfg)
}

// Ops returns every write operation numbered so far, in order.
func (f *FS) Ops() []Op {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Op(nil), f.ops...)
}

// Hit returns the plan's operation, and whether it has started.
func (f *FS) Hit() (Op, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hit == nil {
		return Op{}, false
	}
	return *f.hit, true
}

// Image returns what a crash left on the disk, as a new FS that only
// counts: for a Stop plan whose operation was reached, the image taken
// then; otherwise the disk as a crash now would leave it (what was
// synced, plus the plan's share of the rest). The store on f must be
// closed, or abandoned, first: its later writes do not reach the image.
func (f *FS) Image() *FS {
	f.mu.Lock()
	defer f.mu.Unlock()
	img := f.image
	if img == nil {
		img = f.crashClone()
	}
	return wrap(img, Plan{})
}

// kindName names an errorfs operation kind (errorfs.OpKind has no
// String method).
func kindName(k errorfs.OpKind) string {
	switch k {
	case errorfs.OpCreate:
		return "create"
	case errorfs.OpLink:
		return "link"
	case errorfs.OpRemove:
		return "remove"
	case errorfs.OpRemoveAll:
		return "remove-all"
	case errorfs.OpRename:
		return "rename"
	case errorfs.OpReuseForWrite:
		return "reuse-for-write"
	case errorfs.OpMkdirAll:
		return "mkdir"
	case errorfs.OpLock:
		return "lock"
	case errorfs.OpFileClose:
		return "close"
	case errorfs.OpFileWrite:
		return "write"
	case errorfs.OpFileWriteAt:
		return "write-at"
	case errorfs.OpFileSync:
		return "sync"
	case errorfs.OpFileSyncData:
		return "sync-data"
	case errorfs.OpFileSyncTo:
		return "sync-to"
	case errorfs.OpFileFlush:
		return "flush"
	case errorfs.OpFilePreallocate:
		return "preallocate"
	}
	return fmt.Sprintf("op%d", int(k))
}
