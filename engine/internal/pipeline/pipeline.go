// Package pipeline is the engine's commit pipeline: it turns operations
// into group-committed, fsync'd store batches and answers each operation
// only once the batch holding it is durable. It knows no features: an
// operation is a function applied to the caller's per-batch state (a
// Txn), and everything a feature keeps for a batch lives in that Txn.
//
// # The design
//
// Every mutation becomes an Op on one of two bounded queues (lanes),
// foreground or background (Op.Background). One goroutine, the commit
// loop, owns sequencing; a second, the publish loop, owns answers:
//
//  1. The commit loop takes one op, then every foreground op already
//     waiting, up to MaxBatch units of work (Op.Weight).
//  2. It begins a batch on a free Txn and applies each op to it in queue
//     order: the op writes to the store batch and to the Txn's overlay
//     (the batch's view of what it changed, so that ops in one batch see
//     each other). Then it takes background ops and applies them, for at
//     most Config.BackgroundBudget of build time and up to MaxBatch, but
//     at least one while any wait (so they are never starved). Then
//     Txn.Flush writes what the ops deferred.
//  3. It applies the batch to the store without waiting for the fsync
//     (store.Pipelined): the writes are visible to reads at once, and
//     Txn.Applied runs, on the commit loop, before the next batch is
//     begun. The batch goes to the publish loop, and the commit loop
//     builds the next one while this one's fsync is in flight.
//  4. The publish loop waits until the batch is durable, runs
//     Txn.Durable, answers every op of the batch in the order applied
//     (Op.Done), then runs Txn.Published and frees the Txn.
//
// A store whose batches are not store.Pipelined commits each batch with
// Commit(true) on the commit loop (step 3 then waits for the fsync).
//
// # Invariants
//
//   - Ack only after fsync: an op is answered only after its batch, and
//     every batch applied before it, is durable (Durable runs first).
//   - Order: batches are applied, made durable and published in one order;
//     ops of one lane are applied and answered in their queue's order.
//     Between the lanes only ops with the same Op.Key keep their order: a
//     background op may be applied after an unrelated foreground op queued
//     later. A feature that numbers things (stream sequence numbers) does
//     it in apply order on the commit loop, and hands them out in that
//     order from the publish loop.
//   - Reads see applied batches before they are durable (the store makes a
//     batch visible when it is applied, as Pebble does). What a reader may
//     show a client must be bounded by what Durable published, never by
//     the store alone (the engine's durable stream heads).
//   - An op that fails aborts only itself where it can. An op's error that
//     Config.Aborts says may have left part of its writes in the batch
//     (a store read failing half-way) discards the batch; that op is
//     answered with its error and the batch is rebuilt from the other ops,
//     at most Config.Retries times, after which the rest are answered
//     Config.Aborted (retryable). Any other error is the op's own refusal:
//     the op must not have written what it does not mean to keep, and the
//     batch goes on.
//   - Stop on failure: if applying or syncing a batch fails, the pipeline
//     cannot know what reached the disk. That batch's ops and every later
//     op get Config.Fail(cause), and the pipeline refuses further writes
//     (Err). A restart rebuilds the truth from the store.
//
// While one batch is being synced, ops accumulate in the queue, so the
// batch size grows with load and throughput is bound by bandwidth rather
// than fsyncs per second (group commit); with pipelining, the building and
// applying of the next batch overlaps the fsync too.
//
// # Goroutines and callbacks
//
//	Op.Apply, Txn.Begin, Txn.Flush, Txn.Applied  the commit loop
//	Txn.Durable, Op.Done, Txn.Published          the publish loop
//	Txn.Abandon                                   the commit loop (aborted before apply)
//	                                              or the publish loop (commit failed)
//	Op.Done of an op refused at Enqueue           the caller of Enqueue
//
// None of them may block on anything the pipeline waits for: an Op.Done
// must hand its answer over and return. Config.InFlight bounds the batches
// applied but not yet published (each holds a Txn); when all are busy, the
// commit loop waits, and the full queue makes Enqueue wait (back-pressure).
//
// # Two lanes
//
// Some work is bulk and may wait a little: delivery acknowledgements (one
// ACK can cover thousands of entries, and a thousand devices acking at
// once is a burst of receipts) and the chunks of an announcement's
// fan-out. In one queue, a burst of it would hold every later submit for
// as long as the burst takes to build (a lockstep ACK burst held submits
// for 450 ms; bench/RESULTS.md). In the background lane it fills each
// batch only after the foreground ops, for a bounded build time, and the
// foreground waits at most one such budget. Ops that must not overtake
// an earlier background op share its Op.Key (a device's READ or
// CONFIRM after its ACK: the sender must see "delivered" before "read"):
// they join the background lane while one of their key waits there.
//
// # Alternatives rejected
//
// A lock per stream with each submitter committing its own synced batch
// (one fsync per message, and a message to many needs many locks); relying
// on Pebble's own group commit alone (it batches concurrent syncs, but
// sequencing would still need a lock held across the fsync); per-user
// goroutines (idle users would cost memory); a pipeline that knows the
// features' state (each feature edited it, and one missed reset leaked a
// batch's state into the next: features keep their state in the Txn).
package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// ErrClosed is returned by Enqueue after Close (unless Config.Closed says
// otherwise).
var ErrClosed = errors.New("pipeline: closed")

// Txn is the per-batch state of the pipeline's user: what its ops changed
// in this batch. A Txn is reused for later batches once Published or
// Abandon has run. See the package doc for which goroutine calls what.
type Txn interface {
	// Begin starts a batch: the ops' writes go to b; now is the batch's
	// time, the same for every op in it.
	Begin(b store.Batch, now time.Time)
	// Flush writes to the batch what the ops deferred to its end. An
	// error discards the batch: its ops are answered Config.Aborted.
	Flush() error
	// Applied runs once the batch is applied (visible to reads, not yet
	// durable), before the next batch is begun.
	Applied()
	// Durable runs once the batch is durable, before its ops are answered.
	Durable()
	// Published runs after every op of the batch has been answered.
	Published()
	// Abandon runs instead of the steps above when the batch will not be
	// committed: it was discarded before Apply (applied false; nothing of
	// it reached the store), or applying or syncing it failed (applied
	// true; it may or may not be on disk). The Txn forgets the batch.
	Abandon(err error, applied bool)
}

// Op is one operation.
type Op[T Txn] struct {
	// Apply applies the op to the batch, on the commit loop. It returns
	// the op's answer: nil, or an error (see Config.Aborts).
	Apply func(t T) error
	// Done receives the answer once the batch is durable, or the error
	// that kept the op from it. It is called exactly once and must not
	// block.
	Done func(err error)
	// Weight is the op's share of a batch (Config.MaxBatch); zero means 1.
	Weight int
	// Background puts the op in the background lane: it may wait behind
	// foreground ops queued after it (see the package doc).
	Background bool
	// Key, when set, orders the op after every earlier op of the same
	// Key whichever lane each is in: an op queued while an earlier op of
	// its Key waits in the background lane joins that lane (a device's
	// READ after its ACK is applied after the ACK).
	Key string
	// Ungated skips Config.Gate: an op that only frees space (retention's
	// deletions) runs while the store refuses writes for want of it.
	Ungated bool

	err     error // the op's answer, once applied
	settled bool  // answered already (aborted its batch): not applied again
}

// Config configures a Pipeline. Store, NewTxn, Aborts, Aborted and Fail are
// required.
type Config[T Txn] struct {
	Store store.Store
	// NewTxn makes a Txn; the pipeline makes up to InFlight+1 of them.
	NewTxn func() T
	// Now is the batches' clock; nil means time.Now.
	Now func() time.Time
	// Aborts reports whether an op's error may have left part of the op's
	// writes in the batch, which must then be discarded.
	Aborts func(err error) bool
	// Aborted is what the other ops of a discarded batch are answered when
	// it cannot be rebuilt without them (safe to retry).
	Aborted error
	// Fail wraps the cause of a failed apply or sync: what every op of
	// that batch and later ones get, and what Err returns.
	Fail func(cause error) error
	// Closed is what Enqueue answers after Close; nil means ErrClosed.
	Closed error
	// Gate, if set, is asked by Enqueue for every op: an error answers
	// the op at once, unapplied (a store refusing writes for now: the
	// disk is nearly full).
	Gate func() error
	// MaxBatch bounds the work in one batch; zero means 4096.
	MaxBatch int
	// QueueLen bounds the ops waiting for the commit loop in each lane;
	// zero means 16384.
	QueueLen int
	// BackgroundBudget bounds the build time one batch spends applying
	// background ops after its foreground ones (measured with Now); zero
	// means 2ms. At least one background op is applied per batch while
	// any wait, whatever its cost.
	BackgroundBudget time.Duration
	// InFlight bounds the batches applied and not yet published; zero
	// means 4.
	InFlight int
	// Retries bounds how often one group of ops is rebuilt after ops
	// aborted it; zero means 3.
	Retries int
	// OnQueueFull is called when Enqueue finds the queue full and waits;
	// nil means nothing.
	OnQueueFull func()
	// OnBatch is called on the publish loop after each published batch
	// with its op count and how long each stage took: build (applying the
	// ops and Flush, on the commit loop), commit (from Apply until
	// durable) and publish (Durable, the answers and Published); nil
	// means nothing.
	OnBatch func(ops int, build, commit, publish time.Duration)
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Pipeline is a running commit pipeline. Its methods are safe for
// concurrent use.
type Pipeline[T Txn] struct {
	cfg Config[T]

	// qmu guards closed and sending on queue, so that Close never races a
	// send on the closed channel.
	qmu    sync.RWMutex
	closed bool        // guarded by qmu
	queue  chan *Op[T] // the foreground lane
	bg     chan *Op[T] // the background lane

	keyMu  sync.Mutex
	bgKeys map[string]int // guarded by keyMu: ops of each Key in the background lane, not yet applied

	failMu sync.Mutex
	failed error // guarded by failMu; non-nil once an apply or sync failed

	// held is a background op taken from its lane but left for a later
	// batch (it did not fit); passed counts the batches that left it.
	// Both belong to the commit loop.
	held   *Op[T]
	passed int

	free     chan T            // Txns not in use
	applied  chan *inflight[T] // applied batches, for the publish loop
	loopDone chan struct{}
	pubDone  chan struct{}
}

// inflight is an applied batch on its way to the publish loop.
type inflight[T Txn] struct {
	txn     T
	batch   store.Batch
	ops     []*Op[T]
	err     error         // the apply's error: the batch is answered with it
	build   time.Duration // applying the ops and flushing
	started time.Time     // Apply
	synced  bool          // committed with Commit(true): nothing to wait for
}

// New starts a pipeline.
func New[T Txn](cfg Config[T]) (*Pipeline[T], error) {
	if cfg.Store == nil || cfg.NewTxn == nil || cfg.Aborts == nil || cfg.Aborted == nil || cfg.Fail == nil {
		return nil, errors.New("pipeline: config: Store, NewTxn, Aborts, Aborted and Fail are required")
	}
	if cfg.MaxBatch < 0 || cfg.QueueLen < 0 || cfg.InFlight < 0 || cfg.Retries < 0 || cfg.BackgroundBudget < 0 {
		return nil, errors.New("pipeline: config: limits must not be negative")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Closed == nil {
		cfg.Closed = ErrClosed
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = 4096
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 16384
	}
	if cfg.InFlight == 0 {
		cfg.InFlight = 4
	}
	if cfg.Retries == 0 {
		cfg.Retries = 3
	}
	if cfg.BackgroundBudget == 0 {
		cfg.BackgroundBudget = 2 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Pipeline[T]{
		cfg:      cfg,
		queue:    make(chan *Op[T], cfg.QueueLen),
		bg:       make(chan *Op[T], cfg.QueueLen),
		bgKeys:   map[string]int{},
		free:     make(chan T, cfg.InFlight+1),
		applied:  make(chan *inflight[T], cfg.InFlight),
		loopDone: make(chan struct{}),
		pubDone:  make(chan struct{}),
	}
	for range cfg.InFlight + 1 {
		p.free <- cfg.NewTxn()
	}
	go p.commitLoop()
	go p.publishLoop()
	return p, nil
}

// Enqueue queues op for the next batch. It blocks only while the queue is
// full. If the pipeline is closed or has failed, op.Done gets the error
// before Enqueue returns, and Enqueue returns it too.
func (p *Pipeline[T]) Enqueue(op *Op[T]) error {
	if err := p.Err(); err != nil {
		op.Done(err)
		return err
	}
	if p.cfg.Gate != nil && !op.Ungated {
		if err := p.cfg.Gate(); err != nil {
			op.Done(err)
			return err
		}
	}
	p.qmu.RLock()
	defer p.qmu.RUnlock()
	if p.closed {
		op.Done(p.cfg.Closed)
		return p.cfg.Closed
	}
	q := p.queue
	if op.Key != "" {
		p.keyMu.Lock()
		if op.Background || p.bgKeys[op.Key] > 0 {
			op.Background = true
			p.bgKeys[op.Key]++
		}
		p.keyMu.Unlock()
	}
	if op.Background {
		q = p.bg
	}
	select {
	case q <- op:
	default:
		if p.cfg.OnQueueFull != nil {
			p.cfg.OnQueueFull()
		}
		q <- op // back-pressure: wait for the commit loop
	}
	return nil
}

// Len returns how many ops wait in the queues.
func (p *Pipeline[T]) Len() int { return len(p.queue) + len(p.bg) }

// Err returns the error that stopped the pipeline from writing, or nil.
func (p *Pipeline[T]) Err() error {
	p.failMu.Lock()
	defer p.failMu.Unlock()
	return p.failed
}

func (p *Pipeline[T]) fail(cause error) error {
	p.failMu.Lock()
	defer p.failMu.Unlock()
	if p.failed == nil {
		p.failed = p.cfg.Fail(cause)
		p.cfg.Logger.Error("commit failed; refusing further writes", "err", cause)
	}
	return p.failed
}

// Close stops accepting ops, commits and answers those already queued, and
// waits for both loops; or returns ctx.Err() if ctx ends first (the loops
// then finish on their own). It is idempotent.
func (p *Pipeline[T]) Close(ctx context.Context) error {
	p.qmu.Lock()
	if !p.closed {
		p.closed = true
		close(p.queue)
		close(p.bg)
	}
	p.qmu.Unlock()
	select {
	case <-p.pubDone:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *Pipeline[T]) commitLoop() {
	defer close(p.loopDone)
	defer close(p.applied)
	fg, bg := p.queue, p.bg // nil once closed and drained
	var ops []*Op[T]
	for fg != nil || bg != nil || p.held != nil {
		ops = ops[:0]
		work := 0
		if p.held == nil { // else the held background op starts a batch now
			select {
			case o, ok := <-fg:
				if !ok {
					fg = nil
					continue
				}
				ops = append(ops, o)
				work = weight(o)
			case o, ok := <-bg:
				if !ok {
					bg = nil
					continue
				}
				p.held = o
			}
		}
	drain:
		for fg != nil && work < p.cfg.MaxBatch {
			select {
			case o, ok := <-fg:
				if !ok {
					fg = nil
					break drain
				}
				ops = append(ops, o)
				work += weight(o)
			default:
				break drain
			}
		}
		p.commit(ops, work)
		ops = make([]*Op[T], 0, len(ops))
	}
}

func weight[T Txn](o *Op[T]) int { return max(1, o.Weight) }

// commit builds, applies and hands over one batch: the foreground ops
// (work units of it), then background ones (see background).
func (p *Pipeline[T]) commit(ops []*Op[T], work int) {
	t := <-p.free
	if err := p.Err(); err != nil {
		// Answered in order, after the batches still in flight.
		if p.held != nil {
			p.taken(p.held)
			ops, p.held = append(ops, p.held), nil
		}
		for _, o := range ops {
			o.err, o.settled = err, true
		}
		p.applied <- &inflight[T]{txn: t, ops: ops, synced: true}
		return
	}
	start := time.Now()
	b, ops, ok := p.build(t, ops, work)
	if !ok {
		p.applied <- &inflight[T]{txn: t, ops: ops, synced: true}
		return
	}
	in := &inflight[T]{txn: t, batch: b, ops: ops, started: time.Now()}
	in.build = in.started.Sub(start)
	var err error
	if pb, ok := b.(store.Pipelined); ok {
		err = pb.Apply()
	} else {
		err = b.Commit(true)
		in.synced = true
	}
	if err != nil {
		in.err = p.fail(err)
	} else {
		t.Applied()
	}
	p.applied <- in
}

// build applies ops to a new batch on t, then the background ops it
// takes (background), rebuilding the batch without the ops that abort
// it. It returns every op it took, and false when no batch is left to
// commit: every op is settled (answered with its refusal or
// Config.Aborted), and t has been abandoned.
func (p *Pipeline[T]) build(t T, ops []*Op[T], work int) (store.Batch, []*Op[T], bool) {
	for attempt := 0; ; attempt++ {
		b := p.cfg.Store.NewBatch()
		t.Begin(b, p.cfg.Now())
		aborted := false
		apply := func(o *Op[T]) bool {
			o.err = o.Apply(t)
			if o.err != nil && p.cfg.Aborts(o.err) {
				o.settled = true // answered with its own error; not applied again
				aborted = true
			}
			return !aborted
		}
		for _, o := range ops {
			if !o.settled && !apply(o) {
				break
			}
		}
		if !aborted && attempt == 0 {
			// Background ops join only the first attempt; a rebuild
			// applies those it took like the rest.
			ops, aborted = p.background(ops, work, apply)
		}
		if !aborted {
			if err := t.Flush(); err != nil {
				p.cfg.Logger.Error("commit batch aborted: flush", "err", err)
				aborted = true
				attempt = p.cfg.Retries // not an op's fault: rebuilding would not help
			} else {
				return b, ops, true
			}
		}
		b.Close()
		t.Abandon(p.cfg.Aborted, false)
		if attempt >= p.cfg.Retries {
			for _, o := range ops {
				if !o.settled {
					o.err, o.settled = p.cfg.Aborted, true
				}
			}
			return nil, ops, false
		}
		if !unsettled(ops) {
			return nil, ops, false
		}
	}
}

// background takes background ops (the held one first) and applies them
// after the batch's foreground ops (work units of them, the first
// len(ops)); apply reports false when one aborted the batch. It takes
// them while they fit in MaxBatch and the budget lasts, and holds the
// first that does not for a later batch. It takes one whatever its cost
// when the batch has no foreground op, when the foreground filled it
// (the background lane is not starved under saturation), or when the
// held op was passed over twice already (nor while the foreground is
// never quite full).
func (p *Pipeline[T]) background(ops []*Op[T], work int, apply func(*Op[T]) bool) ([]*Op[T], bool) {
	start := p.cfg.Now()
	foreground := len(ops) > 0
	for took := false; ; took = true {
		o := p.held
		if o == nil {
			select {
			case o = <-p.bg: // nil once closed: the commit loop sees that itself
			default:
			}
		}
		if o == nil {
			return ops, false
		}
		force := !took && (!foreground || work >= p.cfg.MaxBatch || p.passed >= 2)
		if !force && (work+weight(o) > p.cfg.MaxBatch || p.cfg.Now().Sub(start) >= p.cfg.BackgroundBudget) {
			if p.held == nil {
				p.held, p.passed = o, 0
			}
			if !took {
				p.passed++
			}
			return ops, false
		}
		p.held = nil
		p.taken(o)
		ops = append(ops, o)
		work += weight(o)
		if !apply(o) {
			return ops, true
		}
	}
}

// taken counts a keyed background op out of the lane as it is applied:
// ops of its Key queued from now on may take the foreground lane.
func (p *Pipeline[T]) taken(o *Op[T]) {
	if o.Key == "" {
		return
	}
	p.keyMu.Lock()
	if p.bgKeys[o.Key]--; p.bgKeys[o.Key] <= 0 {
		delete(p.bgKeys, o.Key)
	}
	p.keyMu.Unlock()
}

func unsettled[T Txn](ops []*Op[T]) bool {
	for _, o := range ops {
		if !o.settled {
			return true
		}
	}
	return false
}

func (p *Pipeline[T]) publishLoop() {
	defer close(p.pubDone)
	for in := range p.applied {
		p.publish(in)
		p.free <- in.txn
	}
}

// publish waits until an applied batch is durable and answers its ops.
func (p *Pipeline[T]) publish(in *inflight[T]) {
	if in.batch == nil { // nothing was committed: every op is settled
		for _, o := range in.ops {
			o.Done(o.err)
		}
		return
	}
	err := in.err
	if err == nil && !in.synced {
		if werr := in.batch.(store.Pipelined).Wait(); werr != nil {
			err = p.fail(werr)
		}
	}
	if err == nil {
		// A batch applied after one that failed may sync, but it was
		// built on what the failed one wrote: it must not be answered
		// as durable.
		err = p.Err()
	}
	in.batch.Close()
	if err != nil {
		in.txn.Abandon(err, true)
		for _, o := range in.ops {
			o.Done(err)
		}
		return
	}
	durable := time.Now()
	in.txn.Durable()
	for _, o := range in.ops {
		o.Done(o.err)
	}
	in.txn.Published()
	if p.cfg.OnBatch != nil {
		p.cfg.OnBatch(len(in.ops), in.build, durable.Sub(in.started), time.Since(durable))
	}
}
