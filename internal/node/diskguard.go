package node

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BallastFile is the file in the data directory that holds space in
// reserve: it is deleted when the disk runs nearly full, so that Pebble
// can still flush, compact and recover, and a restart can open the store.
const BallastFile = "ballast"

// errDiskFull is the reason writes are refused while free space is below
// the reserve.
var errDiskFull = errors.New("the disk holding the data directory is nearly full")

// diskGuard keeps a node from filling its disk: Pebble cannot survive a
// write that fails for want of space (it stops the process), so writes
// are refused before that, with a typed, retryable UNAVAILABLE, while
// free space is below the reserve; reads, resumes and deliveries of what
// is stored go on. A ballast file (a quarter of the reserve) is deleted
// the moment writes are refused. Writes resume by themselves once free
// space is back above one and a half times the reserve (the ballast is
// then made again). Choose a reserve well above two of Pebble's
// memtables (32 MiB each): a new write-ahead log is preallocated to 110%
// of one, and a flush writes one out.
type diskGuard struct {
	dir      string
	reserve  uint64
	resume   uint64
	ballast  uint64
	log      *slog.Logger
	readOnly func(reason error) // the engine's SetReadOnly, once it is open
	flush    func() error       // the store's Flush: releases its preallocated logs

	mu   sync.Mutex
	full bool  // writes refused; guarded by mu
	last error // the last statfs error; guarded by mu

	stop     chan struct{}
	done     chan struct{}
	attached bool
}

func newDiskGuard(dir string, reserve uint64, log *slog.Logger, reg prometheus.Registerer) (*diskGuard, error) {
	// Resume with room for the ballast made again and a margin, so that
	// making it does not take free space back under the reserve.
	g := &diskGuard{dir: dir, reserve: reserve, ballast: reserve / 4, resume: reserve + reserve/2, log: log,
		stop: make(chan struct{}), done: make(chan struct{})}
	writable := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ding_store_writable",
		Help: "1 while the store accepts writes; 0 while free space is below the reserve (--disk-reserve) and writes are refused."},
		func() float64 {
			if g.Full() {
				return 0
			}
			return 1
		})
	if err := reg.Register(writable); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *diskGuard) free() (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(g.dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", g.dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// check reads free space and moves between writable and full.
func (g *diskGuard) check() {
	free, err := g.free()
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		if g.last == nil {
			g.log.Warn("cannot read the free space of the data directory", "err", err)
		}
		g.last = err
		return
	}
	g.last = nil
	switch {
	case !g.full && free < g.reserve:
		g.full = true
		g.log.Error("the data disk is nearly full: refusing writes until space is freed (reads and deliveries go on)",
			"free_bytes", free, "reserve_bytes", g.reserve, "resume_above_bytes", g.resume)
		if err := os.Remove(filepath.Join(g.dir, BallastFile)); err == nil {
			g.log.Warn("deleted the ballast file to give the store room", "bytes", g.ballast)
		}
		if g.readOnly != nil {
			g.readOnly(errDiskFull)
		}
		if g.flush != nil {
			// Pebble preallocates each write-ahead log to 110% of a
			// memtable and keeps it until the memtable is flushed, which,
			// with writes refused, would be never.
			go func() {
				if err := g.flush(); err != nil {
					g.log.Warn("flushing the store to release its logs failed", "err", err)
				}
			}()
		}
	case g.full && free >= g.resume:
		g.full = false
		g.log.Info("free space is back: accepting writes again", "free_bytes", free)
		g.makeBallast()
		if g.readOnly != nil {
			g.readOnly(nil)
		}
	}
}

// makeBallast creates the ballast file if it is missing, with its blocks
// allocated (not a sparse file).
func (g *diskGuard) makeBallast() {
	p := filepath.Join(g.dir, BallastFile)
	if fi, err := os.Stat(p); err == nil && uint64(fi.Size()) >= g.ballast {
		return
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		g.log.Warn("cannot create the ballast file", "err", err)
		return
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, int64(g.ballast)); err != nil {
		g.log.Warn("cannot allocate the ballast file", "bytes", g.ballast, "err", err)
		_ = os.Remove(p)
	}
}

// prepare runs before the store opens: on a nearly full disk it frees
// the ballast (a store may need room to open) and starts refusing writes.
func (g *diskGuard) prepare() {
	g.check()
	g.mu.Lock()
	full := g.full
	g.mu.Unlock()
	if full {
		g.log.Error("starting read-only: the data disk is nearly full; writes are accepted again once free space is above the resume level",
			"resume_above_bytes", g.resume)
		return
	}
	g.makeBallast()
}

// attach hands the guard the engine's switch (applying the current state)
// and starts watching.
func (g *diskGuard) attach(setReadOnly func(error), flush func() error) {
	g.mu.Lock()
	g.readOnly, g.flush = setReadOnly, flush
	if g.full {
		setReadOnly(errDiskFull)
	}
	g.mu.Unlock()
	g.attached = true
	go func() {
		defer close(g.done)
		// Often enough that a burst of writes cannot cross the reserve
		// between two looks (a statfs costs a microsecond).
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-g.stop:
				return
			case <-t.C:
				g.check()
			}
		}
	}()
}

// Full reports whether writes are refused.
func (g *diskGuard) Full() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.full
}

// Close stops watching.
func (g *diskGuard) Close() {
	if !g.attached {
		return
	}
	close(g.stop)
	<-g.done
}

// Why is the reason /readyz gives while writes are refused ("" when not).
func (g *diskGuard) Why() string {
	if g.Full() {
		return "read-only: " + errDiskFull.Error() + "; free space, and writes resume by themselves"
	}
	return ""
}
