package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine/store"
)

// ReplicatedStore is the owner's store in cluster mode: a local store
// (Pebble) whose batches, once durable locally, are shipped to the
// partition's standby, and whose Wait (or Commit) returns only once the
// standby holds them. The engine's pipeline answers an op only after
// Wait, so with it a submit is acknowledged after the owner's fsync and
// the standby's durable apply. Reads go to the local store.
//
// Replication waits out coordinator errors (a Redis failover) and
// retries; it fails a batch only when the owner is fenced (ErrFenced: a
// newer owner exists, so this one must acknowledge nothing more) or the
// store is closed. The engine then stops writing, as it does on any
// commit failure.
type ReplicatedStore struct {
	store.Store
	ship store.Shippable

	mu    sync.Mutex // guards owner: batches ship on the commit loop, acks are read on the publish loop
	owner *Owner
	// applyMu makes a batch's local apply and its shipping one step, so
	// that a snapshot holds exactly the batches shipped before it.
	applyMu sync.Mutex

	ctx    context.Context // ends at Close
	cancel context.CancelFunc

	// Keys, if set, is the owner's keyring: what it recorded rides with
	// each batch shipped (keys.go).
	Keys *KeyShipper

	// PollEvery is how often a waiting batch reads the standby's ack;
	// ResendAfter how long without progress before unacked entries are
	// shipped again.
	PollEvery, ResendAfter time.Duration

	waitSeconds prometheus.Histogram
	resends     prometheus.Counter
	// ackNotices and ackReads: how the owner learned of acks.
	ackNotices, ackReads prometheus.Counter

	// waitingSince is when the standby last made progress while batches
	// waited for it, or when the first of them was shipped; zero while
	// none waits. Guarded by mu.
	waitingSince time.Time
	// heard is the newest ack heard from each node, by notice or read
	// from the coordinator (guarded by mu): what Owner.Observe counts.
	heard map[string]Ack

	// Notices (AckNotifier): watching is set once the coordinator passes
	// this partition's acks on as they are put; pending holds those that
	// came since await last looked, and notice is closed (and replaced)
	// when one comes. Guarded by noticeMu, never held with mu waiting
	// on it the other way round.
	watching atomic.Bool
	noticeMu sync.Mutex
	pending  map[string]Ack
	notice   chan struct{}

	// ownerOnly: --ack-replicas 0 (SetOwnerOnly). leaseUntil is until
	// when the owner's lease is known to hold (unix ns), set by whoever
	// renews it; in owner-only mode nothing is acknowledged after it.
	ownerOnly  bool
	leaseUntil atomic.Int64
	pollDone   chan struct{}
}

// SetOwnerOnly switches to owner-only durability (dingd --ack-replicas
// 0): a batch is acknowledged once durable on the owner, while its lease
// is known to hold (SetLeaseUntil), without waiting for the standby,
// which is still shipped every batch and may take over. What the standby
// had not applied when the owner died is then lost: the weaker promise
// an operator chooses for latency. A background poll reads the standby's
// acks (to trim what waits for a resend, to notice a newer owner, and to
// tell a stalled standby) every PollEvery×20. Call it before the first
// batch; until is the lease's first deadline. (An owner that records
// its epoch as unreplicated, OwnerLog, erases the record before the
// first batch it acknowledges without its standby.)
func (r *ReplicatedStore) SetOwnerOnly(until time.Time) {
	r.ownerOnly = true
	r.SetLeaseUntil(until)
	r.pollDone = make(chan struct{})
	go r.pollAcks()
}

// SetLeaseUntil records that the owner's lease holds until t (the time
// the renewal was sent, plus the lease's TTL, minus a margin).
func (r *ReplicatedStore) SetLeaseUntil(t time.Time) { r.leaseUntil.Store(t.UnixNano()) }

// AwaitStandby waits, up to ctx's end, until the standby holds every
// batch shipped so far: in owner-only mode a drain calls it before
// releasing the lease, so that a planned hand-over loses nothing.
func (r *ReplicatedStore) AwaitStandby(ctx context.Context) error {
	for {
		st := r.Status()
		if st.Standby == "" {
			return errors.New("cluster: no standby")
		}
		if st.Acked >= st.Shipped {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: the standby holds batches through %d of %d: %w", st.Acked, st.Shipped, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// pollAcks is owner-only mode's reader of the standby's acks.
func (r *ReplicatedStore) pollAcks() {
	defer close(r.pollDone)
	every := 20 * r.PollEvery
	progress := time.Now()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(every):
		}
		acks, err := r.owner.c.Acks(r.ctx, r.owner.p)
		r.ackReads.Inc()
		if err != nil {
			continue
		}
		r.mu.Lock()
		before := r.owner.acked
		_, err = r.observe(acks)
		if r.owner.acked > before || len(r.owner.unacked) == 0 {
			progress = time.Now()
			r.waitingSince = time.Time{}
			if len(r.owner.unacked) > 0 {
				r.waitingSince = progress
			}
		}
		if err == nil && len(r.owner.unacked) > 0 && time.Since(progress) >= r.ResendAfter {
			_ = r.owner.Resend(r.ctx)
			progress = time.Now()
			if r.resends != nil {
				r.resends.Inc()
			}
		}
		r.mu.Unlock()
	}
}

// Register exposes the owner's replication metrics on reg (their
// catalogue: deploy/METRICS.md, "Cluster mode").
func (r *ReplicatedStore) Register(reg prometheus.Registerer) error {
	r.waitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ding_cluster_replication_wait_seconds",
		Help:    "Time a batch durable on the owner waited until its standby held it too.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	r.resends = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ding_cluster_resends_total",
		Help: "Times the owner shipped its unacked batches again after a stretch without acks.",
	})
	gauge := func(name, help string, f func(Status) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(r.Status()) })
	}
	for _, c := range []prometheus.Collector{
		r.waitSeconds, r.resends, r.ackNotices, r.ackReads,
		gauge("ding_cluster_epoch", "The owner's lease epoch.", func(s Status) float64 { return float64(s.Epoch) }),
		gauge("ding_cluster_has_standby", "1 when the owner has a standby; 0: writes wait, nothing is acknowledged.", func(s Status) float64 {
			if s.Standby == "" {
				return 0
			}
			return 1
		}),
		gauge("ding_cluster_unacked_batches", "Batches shipped to the standby and not yet acked.", func(s Status) float64 { return float64(s.Unacked) }),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("cluster: metrics: %w", err)
		}
	}
	return nil
}

// NewReplicatedStore wraps st, whose batches must be store.Pipelined and
// which must be store.Shippable, for owner.
func NewReplicatedStore(st store.Store, owner *Owner) (*ReplicatedStore, error) {
	sh, ok := st.(store.Shippable)
	if !ok {
		return nil, fmt.Errorf("cluster: a %T cannot ship its batches", st)
	}
	if owner.unreplicated {
		// The record is in this store (the node's partition store,
		// which the Follower that took over wrote it to and may have
		// closed since): erased here, outside the batches shipped.
		owner.clearUnreplicated = func() error { return clearUnreplicated(st, owner.p, owner.epoch) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &ReplicatedStore{Store: st, ship: sh, owner: owner, ctx: ctx, cancel: cancel,
		PollEvery: 500 * time.Microsecond, ResendAfter: 500 * time.Millisecond,
		heard: map[string]Ack{}, pending: map[string]Ack{}, notice: make(chan struct{})}
	// Made here, registered by Register: the notices may come first.
	r.ackNotices = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ding_cluster_ack_notices_total",
		Help: "Acks the owner heard as they were put (the coordinator's notices), counted without reading the recorded acks.",
	})
	r.ackReads = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ding_cluster_ack_reads_total",
		Help: "Reads of the recorded acks by the owner: every poll when its coordinator sends no notices, else only after 20 polls without one.",
	})
	if n, ok := owner.c.(AckNotifier); ok {
		go func() {
			// Until it is watching (or if it cannot), await polls Acks.
			if err := n.WatchAcks(ctx, owner.p, r.noteAck); err == nil {
				r.watching.Store(true)
			}
		}()
	}
	return r, nil
}

// noteAck takes an ack notice (AckNotifier): kept for await, which it
// wakes. It never waits for mu (held while a batch ships).
func (r *ReplicatedStore) noteAck(a Ack) {
	r.ackNotices.Inc()
	r.noticeMu.Lock()
	defer r.noticeMu.Unlock()
	if cur, ok := r.pending[a.Standby]; !ok || newerAck(a, cur) {
		r.pending[a.Standby] = a
	}
	close(r.notice)
	r.notice = make(chan struct{})
}

// newerAck reports whether a says more than b, both from one node: a
// newer epoch, or more of the same epoch's history.
func newerAck(a, b Ack) bool {
	return a.Epoch > b.Epoch || a.Epoch == b.Epoch && a.Seq > b.Seq
}

// observe counts, under mu, what the acks heard so far say: the notices
// that came since the last look and acks (read from the coordinator;
// nil when not read), each kept if newer than what was heard from its
// node. Keeping the newest rather than the last read is sound because
// an ack is a true statement whenever it is counted: a node's history
// of one owner's epoch only grows, and a node that lost its disk
// follows again only from a snapshot of the owner, which holds every
// batch shipped before, so every batch the node ever acked. (A
// coordinator that rolls back may hand out an older ack; that one says
// less, not something false.)
func (r *ReplicatedStore) observe(acks map[string]Ack) (uint64, error) {
	r.noticeMu.Lock()
	for node, a := range r.pending {
		r.hear(a)
		delete(r.pending, node)
	}
	r.noticeMu.Unlock()
	for _, a := range acks {
		r.hear(a)
	}
	return r.owner.Observe(r.ctx, r.heard)
}

func (r *ReplicatedStore) hear(a Ack) {
	if cur, ok := r.heard[a.Standby]; !ok || newerAck(a, cur) {
		r.heard[a.Standby] = a
	}
}

// noticed returns the channel the next ack notice closes.
func (r *ReplicatedStore) noticed() <-chan struct{} {
	r.noticeMu.Lock()
	defer r.noticeMu.Unlock()
	return r.notice
}

// Stop stops waiting for the standby: a batch still waiting, and every
// later one, gets store.ErrClosed (the engine stops writing). The local
// store stays open. An owner that lost its lease stops so, before its
// node shuts down.
func (r *ReplicatedStore) Stop() { r.cancel() }

// Close stops waiting for the standby (a batch still waiting gets
// store.ErrClosed) and closes the local store.
func (r *ReplicatedStore) Close() error {
	r.cancel()
	if r.pollDone != nil {
		<-r.pollDone
	}
	return r.Store.Close()
}

// SetKeys makes ks the owner's keyring whose operations ride with the
// batches shipped from now on.
func (r *ReplicatedStore) SetKeys(ks *KeyShipper) {
	r.applyMu.Lock()
	r.Keys = ks
	r.applyMu.Unlock()
}

// NewBatch implements store.Store.
func (r *ReplicatedStore) NewBatch() store.Batch { return &replBatch{r: r, Batch: r.Store.NewBatch()} }

// LastMany forwards store.LastManyer.
func (r *ReplicatedStore) LastMany(ranges [][2][]byte, fn func(i int, key []byte)) error {
	lm, ok := r.Store.(store.LastManyer)
	if !ok {
		return errors.New("cluster: the local store has no LastMany")
	}
	return lm.LastMany(ranges, fn)
}

// Checkpoint forwards store.Checkpointer.
func (r *ReplicatedStore) Checkpoint(dir string) error {
	cp, ok := r.Store.(store.Checkpointer)
	if !ok {
		return errors.New("cluster: the local store cannot checkpoint")
	}
	return cp.Checkpoint(dir)
}

type replBatch struct {
	store.Batch
	r   *ReplicatedStore
	seq uint64 // its entry's Seq once shipped; 0 for an empty batch
}

// Apply applies the batch locally and ships it at once, in apply order,
// so that the standby's fsync overlaps the owner's and several batches
// replicate at a time. Shipping before the local fsync is safe: a batch
// is acknowledged only when both hold it, and an owner that crashes is
// never owner again (its standby takes over), so a batch the standby
// holds and the owner lost is one that was never acknowledged.
func (b *replBatch) Apply() error {
	b.r.applyMu.Lock()
	defer b.r.applyMu.Unlock()
	if b.Len() > 0 {
		// The history this store holds, in the batch that extends it: an
		// owner that lets the partition go (or dies) knows, from its own
		// disk, exactly how far its history runs, and may follow its
		// successor without a snapshot (Owner.Continues). The entry
		// carries the key too; a follower's own state, set after it in
		// the same batch, overrides it. (Owner.next is written under
		// applyMu, held here, and mu both: no need for mu to read it.)
		o := b.r.owner
		b.Batch.Set(StateKey(o.p), o.ownHistory(o.next))
	}
	p, ok := b.Batch.(store.Pipelined)
	if !ok {
		if err := b.Batch.Commit(true); err != nil {
			return err
		}
	} else if err := p.Apply(); err != nil {
		return err
	}
	if err := b.r.shipBatch(b); err != nil {
		if p, ok := b.Batch.(store.Pipelined); ok {
			// Applied to the local log: Pebble must see its sync through
			// before the batch is closed, or its log writer is left
			// broken, and the store's Close then crashes in Pebble's
			// log rotation (seen: an owner fenced after SIGSTOP).
			_ = p.Wait()
		}
		return err
	}
	return nil
}

// Wait returns once the batch is durable locally and on the standby (in
// owner-only mode: locally, while the lease holds).
func (b *replBatch) Wait() error {
	if p, ok := b.Batch.(store.Pipelined); ok {
		if err := p.Wait(); err != nil {
			return err
		}
	}
	if b.r.ownerOnly {
		return b.r.ownerOnlyCheck()
	}
	return b.r.await(context.Background(), b.seq)
}

// ownerOnlyCheck: a batch durable on the owner is acknowledged once the
// owner is sure of its lease; while it is not (a renewal late), the batch
// waits for the next renewal, or fails when the owner is fenced or
// stopped (it lost the lease: the member stops it).
func (b *ReplicatedStore) ownerOnlyCheck() error {
	for {
		b.mu.Lock()
		fenced := b.owner.fenced
		held := time.Now().UnixNano() < b.leaseUntil.Load()
		var err error
		if !fenced && held {
			// Acknowledged without the standby: the owner's record that
			// nothing is acknowledged at its epoch goes first (once).
			err = b.owner.MarkReplicated()
		}
		b.mu.Unlock()
		switch {
		case fenced:
			return ErrFenced
		case b.ctx.Err() != nil:
			return store.ErrClosed
		case held && err == nil:
			return nil
		}
		select {
		case <-b.ctx.Done():
			return store.ErrClosed
		case <-time.After(20 * b.PollEvery):
		}
	}
}

func (b *replBatch) Commit(bool) error {
	if err := b.Apply(); err != nil {
		return err
	}
	return b.Wait()
}

func (r *ReplicatedStore) shipBatch(b *replBatch) error {
	if b.Len() == 0 {
		return nil
	}
	repr, err := r.ship.Repr(b.Batch)
	if err != nil {
		return err
	}
	// The store's batch is closed, and its buffer reused, once the
	// batch is answered: with --ack-replicas 0 before the standby holds
	// it. The entry is kept for a resend (and for observers), so it
	// holds its own copy.
	repr = bytes.Clone(repr)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.owner.unacked) == 0 {
		r.waitingSince = time.Now()
	}
	var keys []byte
	if r.Keys != nil {
		keys = r.Keys.Take()
	}
	b.seq, err = r.owner.ShipWithKeys(r.ctx, repr, keys)
	if errors.Is(err, ErrFenced) {
		return err
	}
	if r.ownerOnly && r.owner.standby == "" && r.owner.handTo == "" {
		// Nobody to resend to: a standby that joins starts from a
		// snapshot, which holds these batches. (With ack-replicas 1 they
		// wait for it instead.)
		r.owner.unacked = r.owner.unacked[:0]
		r.waitingSince = time.Time{}
	}
	return nil // an append that failed stays queued in the Owner: Resend ships it
}

// await waits until the standby holds seq, or ctx ends. With ack
// notices (AckNotifier) it counts those as they come and reads the
// coordinator's acks only when none came for 20 PollEvery (a notice
// lost); without, it reads them every PollEvery.
func (r *ReplicatedStore) await(ctx context.Context, seq uint64) error {
	if seq == 0 {
		return nil
	}
	r.mu.Lock()
	last := r.owner.Acked()
	r.mu.Unlock()
	progress, start := time.Now(), time.Now()
	if r.waitSeconds != nil {
		defer func() { r.waitSeconds.Observe(time.Since(start).Seconds()) }()
	}
	read := !r.watching.Load() // with notices, first look at what they brought
	for {
		wake := r.noticed() // before looking: a notice from now on ends the wait below
		var acks map[string]Ack
		var err error
		if read {
			// The Redis read outside the lock: the commit loop ships under it.
			acks, err = r.owner.c.Acks(r.ctx, r.owner.p)
			r.ackReads.Inc()
		}
		r.mu.Lock()
		acked := r.owner.acked
		if err == nil {
			before := r.owner.acked
			acked, err = r.observe(acks)
			if acked > before {
				r.waitingSince = time.Time{}
				if len(r.owner.unacked) > 0 {
					r.waitingSince = time.Now()
				}
			}
		} else if r.owner.fenced {
			err = ErrFenced
		}
		if err == nil && acked < seq && acked == last && time.Since(progress) >= r.ResendAfter {
			_ = r.owner.Resend(r.ctx) // errors: tried again after the next wait
			progress = time.Now()
			if r.resends != nil {
				r.resends.Inc()
			}
		}
		r.mu.Unlock()
		switch {
		case errors.Is(err, ErrFenced):
			return err
		case r.ctx.Err() != nil:
			return store.ErrClosed
		case err == nil && acked >= seq:
			return nil
		}
		if acked > last {
			last, progress = acked, time.Now()
		}
		every := r.PollEvery
		if r.watching.Load() {
			every = 20 * r.PollEvery
		}
		select {
		case <-wake:
			read = false
		case <-time.After(every):
			read = true
		case <-r.ctx.Done():
			return store.ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Snapshot writes a copy of the owner's store into dir (which must not
// exist), for a node that will become the standby, and returns the state
// that node starts from: the owner's fence and the history's Seq, which
// the copy holds exactly. The node opens its store from the copy and
// passes the state to NewFollower; then AddStandby names it.
func (r *ReplicatedStore) Snapshot(dir string) (StandbyState, error) {
	cp, ok := r.Store.(store.Checkpointer)
	if !ok {
		return StandbyState{}, errors.New("cluster: the local store cannot checkpoint")
	}
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	r.mu.Lock()
	st := StandbyState{FenceEpoch: r.owner.epoch, FenceOwner: r.owner.node, Seq: r.owner.next - 1}
	r.mu.Unlock()
	if err := cp.Checkpoint(dir); err != nil {
		return StandbyState{}, err
	}
	return st, nil
}

// AddStandby names node, which holds a snapshot of this owner's history
// (Snapshot) and follows the stream, the standby of an owner that has
// none (a new partition, or a new owner right after a takeover): from
// now on its acks count, and batches waiting for one are acknowledged
// once it holds them. To replace a working standby, the hand-over goes
// through the history (Owner.ReplaceStandby).
func (r *ReplicatedStore) AddStandby(ctx context.Context, c Coord, node string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addStandby(ctx, c, node)
}

// AddStandbyAt is AddStandby for a node that follows from a snapshot at
// snap (its fence epoch and Seq, sent with the request): refused unless
// the snapshot is this owner's (its epoch) and holds every batch this
// owner acknowledged, so that a node that lost the race for the place
// and asks again later, behind, never becomes the standby. The current
// standby asking again (it lost its copy and joined afresh) is named
// again.
func (r *ReplicatedStore) AddStandbyAt(ctx context.Context, c Coord, node string, snap StandbyState) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if snap.FenceEpoch != r.owner.epoch || snap.Seq < r.owner.acked {
		return fmt.Errorf("cluster: %s's snapshot (epoch %d, through %d) is not this owner's (epoch %d) or lacks batches acknowledged through %d: join again",
			node, snap.FenceEpoch, snap.Seq, r.owner.epoch, r.owner.acked)
	}
	if cur, next := r.owner.Standby(); cur == node && next == "" {
		return nil // already the standby: its acks count
	}
	return r.addStandby(ctx, c, node)
}

func (r *ReplicatedStore) addStandby(ctx context.Context, c Coord, node string) error {
	if cur, next := r.owner.Standby(); cur != "" || next != "" {
		return fmt.Errorf("cluster: partition %d has a standby (%q): hand it over instead", r.owner.p, cur)
	}
	// Named in the coordinator first: once its acks count, it must be the
	// one node allowed to take over.
	if err := c.SetStandby(ctx, r.owner.p, node); err != nil {
		return err
	}
	r.owner.SetStandby(node)
	return nil
}

// AddStandbyContinuing names node, whose own history is st (its durable
// state), the standby of an owner that has none, without a snapshot:
// only when st is exactly the history this owner took over with
// (Owner.Continues; most often node is the owner before, which handed
// the partition over). It returns the state node then follows from:
// this owner's fence, at st's Seq. The node records it before it
// follows; its acks count only once it has (they name this owner's
// epoch). Asked again by node while it is the standby and has acked
// nothing (its first answer lost), it answers the same. Refused
// (ErrStandbyRefused) otherwise: node then joins from a snapshot.
func (r *ReplicatedStore) AddStandbyContinuing(ctx context.Context, c Coord, node string, st StandbyState) (StandbyState, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// What node follows from: this owner's fence, at its own Seq.
	continued := StandbyState{FenceEpoch: r.owner.epoch, FenceOwner: r.owner.node, Seq: st.Seq}
	if cur, next := r.owner.Standby(); cur != "" || next != "" {
		if cur == node && next == "" && r.owner.Continues(st) {
			// node asks again (the answer to its first ask was lost): it
			// is the standby already, and has acked nothing (or
			// Continues would not hold), so the first answer stands.
			return continued, nil
		}
		return StandbyState{}, fmt.Errorf("%w: partition %d has a standby (%q)", ErrStandbyRefused, r.owner.p, cur)
	}
	if !r.owner.Continues(st) {
		return StandbyState{}, fmt.Errorf("%w: %s's history (epoch %d of %s, through %d) is not the one this owner took over with: join from a snapshot",
			ErrStandbyRefused, node, st.FenceEpoch, st.FenceOwner, st.Seq)
	}
	if err := r.addStandby(ctx, c, node); err != nil {
		return StandbyState{}, err
	}
	return continued, nil
}

// ReplaceStandbyAt moves the standby role from replacing, the current
// standby, to node, which follows this owner's history from a snapshot
// at snap (its fence epoch and Seq, sent with the request) and is
// already reading the stream (a learner: its acks do not count yet). It
// ships the hand-over entry (Owner.ReplaceStandby) and waits, until ctx
// ends, for the move's two halves: node acks the entry and the
// coordinator names it; then the old standby applies an entry that
// demotes it (the next batch, or one of its own: Owner.ShipDemotion).
// The node the coordinator names may take over at every moment of the
// move, and holds every batch acknowledged: the old standby until node
// is named, node after; and the old standby, not demoted yet, holds
// every batch acknowledged in the second half too. Unlike a release and
// a join from a snapshot (AddStandbyAt), the partition is never left
// without a standby holding its history while the new one catches up.
//
// replacingSpeaks is the protocol the standby replaced speaks (Member.
// Protocol): one older than ProtocolTwoHalves gets a move of one half
// (Owner.ReplaceStandbyOneStep), which is all it understands.
//
// Refused (ErrStandbyRefused) when replacing is not the standby, snap is
// not this owner's history, or another move is in progress; asking again
// for the move in progress to node waits for it again. A ctx that ends
// first leaves the move in progress (a standby that stops acking is
// dropped as always, which ends it).
func (r *ReplicatedStore) ReplaceStandbyAt(ctx context.Context, c Coord, node, replacing string, replacingSpeaks int, snap StandbyState) error {
	oneStep := replacingSpeaks < ProtocolTwoHalves
	if oneStep {
		// One step: the old standby demotes itself on the entry, and the
		// partition has no taker until node is named, so the entry goes
		// only once node holds what was shipped when this began: then
		// both ack it within a stream read or two.
		if err := r.awaitCaughtUp(ctx, c, node); err != nil {
			return err
		}
	}
	seq, err := r.startReplace(ctx, node, replacing, oneStep, snap)
	if err != nil {
		return err
	}
	if seq != 0 {
		if err := r.await(ctx, seq); err != nil {
			return err
		}
	}
	if seq, err = r.shipDemotion(ctx, node); err != nil || seq == 0 {
		return err
	}
	return r.await(ctx, seq)
}

// awaitCaughtUp waits until node's ack (a learner's, which counts for
// nothing) at this owner's epoch covers every batch shipped when it
// began, or ctx ends.
func (r *ReplicatedStore) awaitCaughtUp(ctx context.Context, c Coord, node string) error {
	r.mu.Lock()
	o := r.owner
	target, epoch, me := o.next-1, o.epoch, o.node
	r.mu.Unlock()
	for {
		if acks, err := c.Acks(ctx, o.p); err == nil {
			if a, ok := acks[node]; ok && a.Epoch == epoch && a.Owner == me && a.Seq >= target {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: %s has not caught up with batch %d yet: %w", node, target, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// shipDemotion ships, once a move to node is in its second half, the
// entry that demotes the standby it replaced if no batch has (the move
// then ends without waiting for the next write), and returns the Seq
// whose ack ends the move (0 when it has ended).
func (r *ReplicatedStore) shipDemotion(ctx context.Context, node string) (uint64, error) {
	r.applyMu.Lock() // the entry takes the next Seq, as in startReplace
	defer r.applyMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	o := r.owner
	if cur, _ := o.Standby(); cur != node {
		return 0, fmt.Errorf("%w: partition %d's standby is %q, not %q: the move ended otherwise", ErrStandbyRefused, o.p, cur, node)
	}
	if leaving, at := o.Leaving(); leaving == "" || at != 0 {
		return at, nil
	}
	return r.shipOwn(func() (uint64, error) { return o.ShipDemotion(ctx) })
}

// shipOwn ships an entry of a move's (ship: the Owner's ReplaceStandby or
// ShipDemotion), under applyMu and mu, and records in the owner's store,
// unsynced, that its history runs through it (a batch records it in
// itself: replBatch.Apply): a crash that loses the record leaves the
// store saying less than it holds, which only costs a snapshot
// (Owner.Continues wants the exact Seq). An append that failed stays
// queued in the Owner: Resend ships it.
func (r *ReplicatedStore) shipOwn(ship func() (uint64, error)) (uint64, error) {
	if len(r.owner.unacked) == 0 {
		r.waitingSince = time.Now()
	}
	seq, err := ship()
	if errors.Is(err, ErrFenced) {
		return 0, err
	}
	sb := r.Store.NewBatch()
	sb.Set(StateKey(r.owner.p), r.owner.ownHistory(seq))
	_ = sb.Commit(false)
	sb.Close()
	return seq, nil
}

func (r *ReplicatedStore) startReplace(ctx context.Context, node, replacing string, oneStep bool, snap StandbyState) (uint64, error) {
	// applyMu: the entry takes the next Seq between two shipped batches,
	// as a batch would (Snapshot and shipBatch hold it too).
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	o := r.owner
	cur, next := o.Standby()
	switch {
	case node == "" || replacing == "" || node == replacing:
		return 0, fmt.Errorf("%w: move the standby role from %q to %q?", ErrStandbyRefused, replacing, node)
	case snap.FenceEpoch != o.epoch:
		return 0, fmt.Errorf("%w: %s follows a snapshot of epoch %d, not this owner's (%d): join again", ErrStandbyRefused, node, snap.FenceEpoch, o.epoch)
	case cur == node && next == "":
		return 0, nil // named already (the second half may go on)
	case cur != replacing:
		return 0, fmt.Errorf("%w: partition %d's standby is %q, not %q", ErrStandbyRefused, o.p, cur, replacing)
	case next == node:
		return o.handAt, nil // in progress: wait for it again
	case next != "":
		return 0, fmt.Errorf("%w: partition %d's standby role is moving to %q", ErrStandbyRefused, o.p, next)
	}
	if leaving, _ := o.Leaving(); leaving != "" {
		return 0, fmt.Errorf("%w: partition %d's standby role is still leaving %q", ErrStandbyRefused, o.p, leaving)
	}
	return r.shipOwn(func() (uint64, error) { return o.replaceStandby(ctx, node, oneStep) })
}

// DropStandby stops waiting for a standby that stopped acking: its acks
// no longer count and c no longer names it (it can no longer take over),
// so that another member can join as the standby from a snapshot
// (AddStandby); until one does, batches wait. What the dropped standby
// acked is in the snapshot the next one starts from.
func (r *ReplicatedStore) DropStandby(ctx context.Context, c Coord) error {
	return r.dropStandby(ctx, c, "")
}

// dropStandby drops the standby (only if it is only, when set). In a
// move's second half, without only or with only the standby replaced, it
// lets that one go instead (Owner.LetLeavingGo): the coordinator names
// the new one already; the new one itself asking to go drops both.
func (r *ReplicatedStore) dropStandby(ctx context.Context, c Coord, only string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.owner.standby
	if leaving, _ := r.owner.Leaving(); leaving != "" && (only == "" || only == leaving) {
		r.owner.LetLeavingGo()
		return nil
	}
	if only != "" && cur != only {
		return fmt.Errorf("cluster: %q is not the standby of partition %d (%q is)", only, r.owner.p, cur)
	}
	if cur == "" {
		return nil
	}
	o := r.owner
	move := o.standbyMove
	o.DropStandby()
	if err := c.SetStandby(ctx, o.p, ""); err != nil {
		// Undone, so that the caller's retry drops it again: an owner that
		// counted nobody while the coordinator still named the standby
		// would wait forever (no spare may join a named standby's place).
		o.standby, o.standbyMove = cur, move
		return err
	}
	return nil
}

// ReleaseStandby drops node, the standby, at its own request (it is
// being drained): DropStandby, refused when node is not the standby.
func (r *ReplicatedStore) ReleaseStandby(ctx context.Context, c Coord, node string) error {
	if node == "" {
		return errors.New("cluster: release which standby?")
	}
	return r.dropStandby(ctx, c, node)
}

// Owner returns the protocol side (its epoch, its standby).
func (r *ReplicatedStore) Owner() *Owner { return r.owner }

// Status is an owner's replication at one moment.
type Status struct {
	Partition Partition `json:"partition"`
	Owner     string    `json:"owner"`
	Epoch     uint64    `json:"epoch"`
	// Standby is the member whose acks count ("" while there is none:
	// writes wait); HandingTo the one a hand-over in progress moves to;
	// Leaving the one a move replaced, counted beside Standby until it
	// applies the entry that demotes it (Owner.ReplaceStandby).
	Standby   string `json:"standby"`
	HandingTo string `json:"handing_to,omitempty"`
	Leaving   string `json:"leaving,omitempty"`
	// Shipped is the last batch shipped, Acked the last the standby
	// holds; Unacked the batches between, shipped and waiting.
	Shipped uint64 `json:"shipped_seq"`
	Acked   uint64 `json:"acked_seq"`
	Unacked int    `json:"unacked_batches"`
	// Stalled is how long batches have waited for the standby without it
	// making progress (0 while none waits).
	Stalled time.Duration `json:"-"`
}

// Status returns the owner's replication status.
func (r *ReplicatedStore) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	o := r.owner
	st := Status{Partition: o.p, Owner: o.node, Epoch: o.epoch, Standby: o.standby, HandingTo: o.handTo, Leaving: o.leaving,
		Shipped: o.next - 1, Acked: o.acked, Unacked: len(o.unacked)}
	if len(o.unacked) > 0 && !r.waitingSince.IsZero() {
		st.Stalled = time.Since(r.waitingSince)
	}
	return st
}

var (
	_ store.Store      = (*ReplicatedStore)(nil)
	_ store.Pipelined  = (*replBatch)(nil)
	_ store.LastManyer = (*ReplicatedStore)(nil)
)

// Follower keeps the standby's copy of a partition in a local store: it
// replays the owner's batches into it, each in one batch together with
// the record of how far it has applied (so a restart neither loses nor
// replays one), and syncs once per read of the stream before it acks. Its state lives under a key of its own (StateKey).
type Follower struct {
	sb   *Standby
	st   store.Store
	ship store.Shippable
	p    Partition

	// Keys and Codec, if set, receive the secret-message keys entries
	// carry (keys.go); Keys is synced before the store at each SaveState.
	Keys  KeyStore
	Codec *KeyCodec

	// unrepl is the store's record that nothing is acknowledged at an
	// epoch this node took the partition over at (OwnerLog), if any:
	// read when the follower opens, kept as it writes it (guarded by umu).
	umu    sync.Mutex
	unrepl unreplicated
}

// unreplicated is an OwnerLog's record: nothing acknowledged at epoch,
// taken over from took (zero epoch: no record).
type unreplicated struct {
	epoch uint64
	took  StandbyState
}

// UnreplicatedKey is where a partition's store keeps the record that
// nothing is acknowledged at its owner's epoch yet (OwnerLog). It is
// written and erased outside the batches the owner ships.
func UnreplicatedKey(p Partition) []byte {
	return fmt.Appendf(nil, "\xffcluster/unreplicated/%d", p)
}

// encodeUnreplicated: version 1, the epoch, then the state taken over
// from (encodeState).
func encodeUnreplicated(u unreplicated) []byte {
	b := binary.AppendUvarint([]byte{1}, u.epoch)
	return append(b, encodeState(u.took)...)
}

func decodeUnreplicated(b []byte) (unreplicated, error) {
	var u unreplicated
	if len(b) == 0 || b[0] != 1 {
		return u, errBadState
	}
	epoch, n := binary.Uvarint(b[1:])
	if n <= 0 {
		return u, errBadState
	}
	took, err := decodeState(b[1+n:])
	if err != nil {
		return u, err
	}
	return unreplicated{epoch: epoch, took: took}, nil
}

// readUnreplicated reads p's record from st (zero if it has none).
func readUnreplicated(st store.Store, p Partition) (unreplicated, error) {
	v, err := st.Get(UnreplicatedKey(p))
	if errors.Is(err, store.ErrNotFound) {
		return unreplicated{}, nil
	}
	if err != nil {
		return unreplicated{}, err
	}
	return decodeUnreplicated(v)
}

// clearUnreplicated erases p's record from st, durably, if it is
// epoch's.
func clearUnreplicated(st store.Store, p Partition, epoch uint64) error {
	u, err := readUnreplicated(st, p)
	if err != nil || u.epoch != epoch {
		return err
	}
	b := st.NewBatch()
	defer b.Close()
	b.Delete(UnreplicatedKey(p))
	return b.Commit(true)
}

// StateKey is where a Follower keeps partition p's standby state; the
// engine's keys never start with 0xff.
func StateKey(p Partition) []byte { return fmt.Appendf(nil, "\xffcluster/standby/%d", p) }

// NewFollower follows p for node into st, resuming from the state st
// holds; a store without one starts from init (the fence and history of
// the owner's snapshot: for a new partition, its first owner's epoch and
// node with Seq 0).
func NewFollower(c Coord, p Partition, node string, st store.Store, init StandbyState) (*Follower, error) {
	sh, ok := st.(store.Shippable)
	if !ok {
		return nil, fmt.Errorf("cluster: a %T cannot replay batches", st)
	}
	state := init
	v, err := st.Get(StateKey(p))
	switch {
	case err == nil:
		if state, err = decodeState(v); err != nil {
			return nil, err
		}
	case !errors.Is(err, store.ErrNotFound):
		return nil, err
	}
	u, err := readUnreplicated(st, p)
	if err != nil {
		return nil, err
	}
	f := &Follower{st: st, ship: sh, p: p, unrepl: u}
	f.sb = NewStandby(c, p, node, f, state)
	return f, nil
}

// Fence is what this follower's store says of the partition
// (RecoveryChoice): its fence and history, and whether the epoch is its
// own one nothing was acknowledged at (OwnerLog).
func (f *Follower) Fence(member string) Fence {
	f.umu.Lock()
	u := f.unrepl
	f.umu.Unlock()
	return fenceOf(member, f.sb.State(), u)
}

// fenceOf is member's Fence from its state st, holding a history
// through st.Seq, and its OwnerLog record u: the record counts only for
// the member's own epoch, the one its fence names.
func fenceOf(member string, st StandbyState, u unreplicated) Fence {
	fe := Fence{Member: member, KeepsUnreplicated: true}
	if st.FenceEpoch == 0 {
		return fe
	}
	fe.Held, fe.Epoch, fe.Owner, fe.Seq, fe.Demoted, fe.Stale = true, st.FenceEpoch, st.FenceOwner, st.Seq, st.Demoted, st.Stale
	if u.epoch != 0 && u.epoch == st.FenceEpoch && st.FenceOwner == member {
		fe.Unreplicated, fe.TookEpoch, fe.TookOwner, fe.TookSeq = true, u.took.FenceEpoch, u.took.FenceOwner, u.took.Seq
	}
	return fe
}

// NewFollowerFromSnapshot is NewFollower for a store just installed from
// an owner's snapshot (FetchSnapshot, ReplicatedStore.Snapshot): it
// starts at snap, the snapshot's state, whatever state the copied store
// holds (an owner that took over keeps the state it took over with, far
// behind the snapshot: a follower starting there would wait for entries
// the bounded stream no longer holds).
func NewFollowerFromSnapshot(c Coord, p Partition, node string, st store.Store, snap StandbyState) (*Follower, error) {
	if snap.FenceEpoch == 0 {
		return nil, fmt.Errorf("cluster: a snapshot of partition %d without a fence", p)
	}
	snap.Cursor, snap.Demoted, snap.Leaving = "", false, false // its stream position is its own to find
	b := st.NewBatch()
	b.Set(StateKey(p), encodeState(snap))
	b.Delete(UnreplicatedKey(p)) // the owner's own, copied with its store
	err := b.Commit(true)
	b.Close()
	if err != nil {
		return nil, err
	}
	return NewFollower(c, p, node, st, snap)
}

// Standby returns the protocol side, for TakeOver and State.
func (f *Follower) Standby() *Standby { return f.sb }

// Run follows the stream until ctx ends. When idle it waits for the next
// entry (EntryReader: in the same read, for at most poll), or sleeps
// poll between reads.
func (f *Follower) Run(ctx context.Context, poll time.Duration) error {
	r, waits := f.sb.c.(EntryReader)
	for {
		var n int
		var err error
		if waits {
			n, err = f.sb.StepWaiting(ctx, r, 512, poll)
		} else {
			n, err = f.sb.Step(ctx, 512)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil && (n > 0 || waits) {
			continue // a read that waited (or found nothing new) goes on at once
		}
		// Idle without a waiting read, or a coordinator error: wait a
		// poll and read again.
		select {
		case <-time.After(poll):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Apply implements Log: the owner's batch and the new state in one
// batch, not synced (SaveState, once per Step, syncs them all: Pebble's
// log is written in order, so a crash keeps a prefix).
func (f *Follower) Apply(e Entry, st StandbyState) error {
	if len(e.Keys) > 0 && f.Keys != nil {
		if err := f.Codec.Apply(e.Keys, f.Keys); err != nil {
			return err
		}
	}
	var b store.Batch
	if len(e.Data) > 0 {
		var err error
		if b, err = f.ship.BatchFrom(e.Data); err != nil {
			return err
		}
	} else {
		b = f.st.NewBatch() // a hand-over: nothing but the state
	}
	defer b.Close()
	b.Set(StateKey(f.p), encodeState(st))
	return b.Commit(false)
}

// SaveState implements Log.
func (f *Follower) SaveState(st StandbyState) error { return f.saveState(st, nil) }

// saveState records st, and with it what also sets (nil: nothing),
// durably, once the keyring (if any) is.
func (f *Follower) saveState(st StandbyState, also func(store.Batch)) error {
	if f.Keys != nil {
		if err := f.Keys.Sync(); err != nil {
			return err
		}
	}
	b := f.st.NewBatch()
	defer b.Close()
	b.Set(StateKey(f.p), encodeState(st))
	if also != nil {
		also(b)
	}
	return b.Commit(true)
}

// SaveOwnerState implements OwnerLog: the new owner's state and the
// record, in one synced batch.
func (f *Follower) SaveOwnerState(st, took StandbyState) error {
	u := unreplicated{epoch: st.FenceEpoch, took: took.history()}
	if err := f.saveState(st, func(b store.Batch) { b.Set(UnreplicatedKey(f.p), encodeUnreplicated(u)) }); err != nil {
		return err
	}
	f.umu.Lock()
	f.unrepl = u
	f.umu.Unlock()
	return nil
}

// Unreplicated implements OwnerLog.
func (f *Follower) Unreplicated() (uint64, StandbyState) {
	f.umu.Lock()
	defer f.umu.Unlock()
	return f.unrepl.epoch, f.unrepl.took
}

// ClearUnreplicated implements OwnerLog.
func (f *Follower) ClearUnreplicated(epoch uint64) error {
	if err := clearUnreplicated(f.st, f.p, epoch); err != nil {
		return err
	}
	f.umu.Lock()
	if f.unrepl.epoch == epoch {
		f.unrepl = unreplicated{}
	}
	f.umu.Unlock()
	return nil
}

// encodeState: version 1, fence epoch, seq, flags (1 demoted, 2 stale,
// 4 learner, 8 leaving), then the fence owner and the cursor, each
// length-prefixed.
func encodeState(st StandbyState) []byte {
	b := []byte{1}
	b = binary.AppendUvarint(b, st.FenceEpoch)
	b = binary.AppendUvarint(b, st.Seq)
	d := byte(0) // flags: 1 demoted, 2 stale, 4 learner, 8 leaving
	if st.Demoted {
		d |= 1
	}
	if st.Stale {
		d |= 2
	}
	if st.Learner {
		d |= 4
	}
	if st.Leaving {
		d |= 8
	}
	b = append(b, d)
	for _, s := range []string{st.FenceOwner, st.Cursor} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

var errBadState = errors.New("cluster: corrupt standby state")

func decodeState(b []byte) (StandbyState, error) {
	var st StandbyState
	if len(b) == 0 || b[0] != 1 {
		return st, errBadState
	}
	b = b[1:]
	var n int
	if st.FenceEpoch, n = binary.Uvarint(b); n <= 0 {
		return st, errBadState
	}
	b = b[n:]
	if st.Seq, n = binary.Uvarint(b); n <= 0 || len(b) < n+1 {
		return st, errBadState
	}
	st.Demoted, st.Stale, st.Learner, st.Leaving, b = b[n]&1 != 0, b[n]&2 != 0, b[n]&4 != 0, b[n]&8 != 0, b[n+1:]
	var ss [2]string
	for i := range ss {
		l, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < l {
			return st, errBadState
		}
		ss[i], b = string(b[n:n+int(l)]), b[n+int(l):]
	}
	st.FenceOwner, st.Cursor = ss[0], ss[1]
	return st, nil
}
