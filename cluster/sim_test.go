package cluster

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// The deterministic simulation of the ownership and replication protocol
// (FoundationDB's and TigerBeetle's simulators are the model): three
// nodes (-sim.nodes N for more), one partition, a MemCoord on a fake clock, and one seeded random
// schedule of writes, standby reads, acks, lease renewals and expiries,
// takeovers, standby changes, crashes (a disk lost at most once), pauses,
// entries the stream loses (and a stream trimmed to its last 2 to 31
// entries) and rollbacks of the coordinator's state. After
// every step it checks the safety argument of the package doc:
//
//   - every acknowledged batch is in the history of every new owner when
//     it takes over, and of the owner at the newest epoch after every step;
//   - one Seq is never acknowledged with two different batches;
//   - at most one node acknowledges at any epoch, and owners' epochs grow;
//   - at the end, after the faults heal, some node holds every
//     acknowledged batch (nothing acknowledged is lost).
//
// A failing seed is printed with the schedule's last steps, and
//
//	go test ./cluster -run TestSimulation -sim.seed N -v
//
// replays exactly that schedule.

var (
	simSeed      = flag.Uint64("sim.seed", 0, "replay one simulation seed")
	simSchedules = flag.Int("sim.schedules", 3000, "simulation schedules to run")
	simFrom      = flag.Uint64("sim.from", 1, "the first seed of the schedules run")
	simNodes     = flag.Int("sim.nodes", 3, "nodes in each schedule (3 or more)")
	simAll       = flag.Bool("sim.all", false, "run every schedule, then report each failing seed's first line and how many failed (to size a gap), rather than stop at the first")
)

func TestSimulation(t *testing.T) {
	if *simSeed != 0 {
		if err := simulate(*simSeed, 400, true); err != nil {
			t.Fatal(err)
		}
		return
	}
	n := *simSchedules
	if testing.Short() {
		n /= 10
	}
	stats := simStats{}
	var failed []string
	for seed := *simFrom; seed < *simFrom+uint64(n); seed++ {
		if err := simulateStats(seed, 400, false, &stats); err != nil {
			if !*simAll {
				t.Fatalf("seed %d: %v\nreplay: go test ./cluster -run TestSimulation -sim.seed %d -v", seed, err, seed)
			}
			first, _, _ := strings.Cut(err.Error(), "\n")
			failed = append(failed, fmt.Sprintf("seed %d: %s", seed, first))
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d schedules failed (replay one with -sim.seed N -v):\n%s", len(failed), n, strings.Join(failed, "\n"))
	}
	// The schedules must reach the situations the argument is about, or
	// the test proves nothing (a quick run of fewer than 1,000 schedules
	// may not: it only says what it met).
	t.Logf("%d schedules: %+v", n, stats)
	if n < 1000 {
		t.Logf("fewer than 1,000 schedules: not checking that every situation was met")
		return
	}
	if stats.takeovers == 0 || stats.fencedOwners == 0 || stats.rollbacks == 0 || stats.acked == 0 || stats.refusedTakeovers == 0 || stats.trimmed == 0 || stats.drops == 0 || stats.recoveries == 0 || stats.observed == 0 || stats.observerResets == 0 || stats.learners == 0 || stats.moves == 0 || stats.demotions == 0 || stats.continued == 0 || stats.handovers == 0 || stats.oneStepMoves == 0 {
		t.Fatalf("the schedules never reached some situation: %+v", stats)
	}
}

type simStats struct {
	acked, takeovers, refusedTakeovers, fencedOwners, rollbacks, standbyChanges, staleSnapshots, wipes, trimmed, drops, recoveries int
	observed, observerResets, learners, moves, demotions, continued, handovers, namedFollows, oneStepMoves                         int
}

type simNode struct {
	id string
	// Durable: survives a crash, lost with the disk.
	log      []Entry
	st       StandbyState
	hasState bool
	unrepl   unreplicated // OwnerLog's record (simLog)
	maxFence uint64       // the newest fence it held (the check's memory)
	// Volatile.
	up, paused bool
	owner      *Owner
	learner    *simNode // a node following this owner's snapshot to take the standby's place
	reported   uint64   // the owner acknowledged through here
	standby    *Standby
}

// simLog is a node's history as a Log.
type simLog struct{ n *simNode }

func (l simLog) Apply(e Entry, _ StandbyState) error {
	if e.Seq != uint64(len(l.n.log))+1 {
		return fmt.Errorf("%s: apply seq %d onto a history of %d", l.n.id, e.Seq, len(l.n.log))
	}
	e.Data = append([]byte(nil), e.Data...)
	l.n.log = append(l.n.log, e)
	return nil
}

func (l simLog) SaveState(st StandbyState) error { l.n.st, l.n.hasState = st, true; return nil }

// SaveOwnerState and ClearUnreplicated make simLog an OwnerLog, as
// dingd's Follower is.
func (l simLog) SaveOwnerState(st, took StandbyState) error {
	l.n.st, l.n.hasState = st, true
	l.n.unrepl = unreplicated{epoch: st.FenceEpoch, took: took}
	return nil
}

func (l simLog) Unreplicated() (uint64, StandbyState) { return l.n.unrepl.epoch, l.n.unrepl.took }

func (l simLog) ClearUnreplicated(epoch uint64) error {
	if l.n.unrepl.epoch == epoch {
		l.n.unrepl = unreplicated{}
	}
	return nil
}

// fence is what n would report of its copy to a recovery (a member's
// GET /cluster/fence, from its durable state: its history runs through
// its log).
func (n *simNode) fence() Fence {
	if !n.hasState {
		return Fence{Member: n.id, KeepsUnreplicated: true}
	}
	st := n.st
	st.Seq = uint64(len(n.log))
	return fenceOf(n.id, st, n.unrepl)
}

type sim struct {
	rng   *rand.Rand
	now   time.Time
	c     *MemCoord
	nodes []*simNode
	trace []string
	verb  bool
	stats *simStats

	acked    map[uint64][]byte // Seq → the batch acknowledged
	ackedBy  map[uint64]string // epoch → the node that acknowledged at it
	maxAckEp uint64
	// maxOwnerEp is the newest epoch any owner got.
	maxOwnerEp uint64
	saved      []MemState
	wiped      bool
	nextBatch  int
	// obs is an observer's copy (observe.go), read from any owner,
	// deposed ones included.
	obs []Entry
}

// simRecent is what the simulation's owners keep for the observer: a
// few entries, so that it is often further behind than that.
const simRecent = 40

// observe: the observer reads changes from a random owner (a deposed or
// paused one too, as an observer that has not learnt of a takeover
// would) and applies them; when that owner no longer keeps them, it
// starts again from the owner's history through its acked Seq (a
// snapshot, confirmed).
func (s *sim) observe() error {
	o := s.pick(func(n *simNode) bool { return n.owner != nil })
	if o == nil {
		return nil
	}
	ch, _, err := o.owner.Changes(uint64(len(s.obs)), 1+s.rng.IntN(4))
	if errors.Is(err, ErrChangesTrimmed) {
		acked := ch.Acked
		if acked > uint64(len(o.log)) {
			return fmt.Errorf("%s acked %d with a history of %d", o.id, acked, len(o.log))
		}
		s.obs = append([]Entry(nil), o.log[:acked]...)
		s.stats.observerResets++
		s.log("the observer starts again from %s's history through %d", o.id, acked)
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ch.Entries {
		if e.Seq != uint64(len(s.obs))+1 || e.Seq > ch.Acked {
			return fmt.Errorf("%s handed the observer entry %d after %d (acked %d)", o.id, e.Seq, len(s.obs), ch.Acked)
		}
		s.obs = append(s.obs, e)
		s.stats.observed++
	}
	if len(ch.Entries) > 0 {
		s.log("the observer applies %d entries from %s, through %d", len(ch.Entries), o.id, len(s.obs))
	}
	return nil
}

// observerPrefixOf checks that the observer's copy is a prefix of n's
// history: it never holds what a failover took back.
func (s *sim) observerPrefixOf(n *simNode, who string) error {
	for i, e := range s.obs {
		if i >= len(n.log) || !bytes.Equal(n.log[i].Data, e.Data) || n.log[i].Standby != e.Standby {
			return fmt.Errorf("the observer holds seq %d %q, which %s (%s) does not", e.Seq, e.Data, who, n.id)
		}
	}
	return nil
}

const (
	simP   = Partition(0)
	simTTL = 5 * time.Second
)

func simulate(seed uint64, steps int, verbose bool) error {
	return simulateStats(seed, steps, verbose, &simStats{})
}

func simulateStats(seed uint64, steps int, verbose bool, stats *simStats) (err error) {
	s := &sim{
		rng:     rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		now:     time.Unix(1_800_000_000, 0),
		verb:    verbose,
		stats:   stats,
		acked:   map[uint64][]byte{},
		ackedBy: map[uint64]string{},
	}
	s.c = NewMemCoord(func() time.Time { return s.now })
	// A short stream, trimmed while standbys still read it: what a
	// standby needs is what the owner has not seen acked, which it
	// resends.
	s.c.StreamKeep = 2 + s.rng.IntN(30)
	for i := range max(3, *simNodes) {
		s.nodes = append(s.nodes, &simNode{id: fmt.Sprintf("n%d", i), up: true})
	}
	defer func() {
		if err != nil {
			start := max(0, len(s.trace)-40)
			err = fmt.Errorf("%w\nlast steps:\n  %s", err, strings.Join(s.trace[start:], "\n  "))
		}
	}()
	ctx := context.Background()
	// Bootstrap: n0 owns the new partition, n1 is its standby.
	n0 := s.nodes[0]
	ep, ok, err := s.c.TakeLease(ctx, simP, n0.id, 0, simTTL)
	if err != nil || !ok {
		return fmt.Errorf("bootstrap lease: %v %v", ok, err)
	}
	n0.owner = NewOwner(s.c, simP, n0.id, ep, 0, "")
	n0.owner.KeepRecent(simRecent)
	s.maxOwnerEp = ep
	n0.st, n0.hasState = StandbyState{FenceEpoch: ep, FenceOwner: n0.id}, true
	if err := s.assignStandby(ctx, n0, s.nodes[1]); err != nil {
		return err
	}
	for step := range steps {
		if err := s.step(ctx, step); err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		if s.rng.IntN(2) == 0 {
			if err := s.observe(); err != nil {
				return fmt.Errorf("step %d: %w", step, err)
			}
		}
		if err := s.checkOwner(); err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		if err := s.checkRecoverable(); err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		for _, n := range s.nodes {
			if !n.hasState {
				n.maxFence = 0 // a lost disk: a new node
				continue
			}
			if n.st.FenceEpoch < n.maxFence {
				return fmt.Errorf("step %d: %s's fence moved back from %d to %d", step, n.id, n.maxFence, n.st.FenceEpoch)
			}
			n.maxFence = n.st.FenceEpoch
		}
	}
	s.stats.trimmed += s.c.Trimmed
	return s.heal(ctx)
}

func (s *sim) log(format string, args ...any) {
	line := fmt.Sprintf("t=%s ", s.now.Format("15:04:05.000")) + fmt.Sprintf(format, args...)
	s.trace = append(s.trace, line)
	if s.verb {
		fmt.Println(line)
	}
}

func (s *sim) pick(f func(n *simNode) bool) *simNode {
	var c []*simNode
	for _, n := range s.nodes {
		if n.up && !n.paused && f(n) {
			c = append(c, n)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[s.rng.IntN(len(c))]
}

func (s *sim) step(ctx context.Context, step int) error {
	switch r := s.rng.IntN(100); {
	case r < 20:
		return s.write(ctx)
	case r < 38:
		return s.standbyStep(ctx)
	case r < 52:
		return s.poll(ctx)
	case r < 54:
		if o := s.pick(func(n *simNode) bool { return n.owner != nil }); o != nil {
			s.log("%s resends %d", o.id, len(o.owner.unacked))
			_ = o.owner.Resend(ctx)
		}
	case r < 56:
		// A planned hand-over (dingd's drain and balance): an owner whose
		// standby acked everything it shipped stops and releases the
		// lease; the standby takes over, and the owner before may then
		// continue as its standby from its own history (maybeContinue).
		o := s.pick(func(n *simNode) bool {
			if n.owner == nil {
				return false
			}
			cur, next := n.owner.Standby()
			return cur != "" && next == "" && len(n.owner.unacked) == 0
		})
		if o == nil {
			return nil
		}
		if err := s.c.ReleaseLease(ctx, simP, o.id, o.owner.Epoch()); err != nil {
			return err
		}
		s.log("%s hands the partition over: releases its lease at epoch %d, history %d", o.id, o.owner.Epoch(), len(o.log))
		o.owner = nil
		s.stats.handovers++
	case r < 64:
		return s.renew(ctx)
	case r < 70:
		d := time.Duration(s.rng.IntN(3000)) * time.Millisecond
		s.now = s.now.Add(d)
	case r < 72:
		return s.recover(ctx)
	case r < 78:
		return s.takeover(ctx)
	case r < 79:
		if s.rng.IntN(4) > 0 {
			// An owner without a standby takes the node before it, from
			// its own history, when it can (as dingd's does); else a
			// snapshot goes to another node.
			if s.rng.IntN(2) == 0 {
				if done, err := s.maybeContinue(ctx); done || err != nil {
					return err
				}
			}
			return s.maybeAssign(ctx)
		}
		// The owner drops a standby that stopped acking (in dingd: after
		// two lease TTLs without progress), whether it did or not.
		if o := s.pick(func(n *simNode) bool { return n.owner != nil && n.owner.standby != "" }); o != nil {
			if leaving, _ := o.owner.Leaving(); leaving != "" && s.rng.IntN(2) == 0 {
				// A move's second half: the standby replaced is let go, the
				// new one (named already) stays.
				s.log("%s lets %s, the standby replaced, go without its demotion", o.id, leaving)
				o.owner.LetLeavingGo()
				s.stats.drops++
				return nil
			}
			s.log("%s drops its standby %s", o.id, o.owner.standby)
			o.owner.DropStandby()
			s.stats.drops++
			return s.c.SetStandby(ctx, simP, "")
		}
	case r < 81:
		// A planned move (a node joins, another is drained): the owner
		// replaces a working standby. The old one is not told and keeps
		// following and acking, as a paused or cut-off node would.
		o := s.pick(func(n *simNode) bool {
			if n.owner == nil {
				return false
			}
			cur, next := n.owner.Standby()
			return cur != "" && next == ""
		})
		if o == nil {
			return nil
		}
		if leaving, at := o.owner.Leaving(); leaving != "" {
			// A move in its second half: no other starts. The entry that
			// demotes the standby replaced is the next batch, or one of
			// its own (dingd's ReplaceStandbyAt ships it at once).
			if at == 0 {
				return s.shipDemotion(ctx, o)
			}
			return nil
		}
		cur, _ := o.owner.Standby()
		if l := o.learner; l != nil {
			// The second half of dingd's move: the learner, following
			// since some earlier step (or crashed, restarted, stale since:
			// whatever it is now), is named in the hand-over entry.
			o.learner = nil
			if l.id != cur {
				return s.handOverTo(ctx, o, l)
			}
			return nil
		}
		c := s.pick(func(n *simNode) bool { return n != o && n.owner == nil && n.id != cur })
		if c == nil {
			return nil
		}
		if s.rng.IntN(2) == 0 {
			return s.learn(o, c)
		}
		return s.replaceStandby(ctx, o, c)
	case r < 84:
		if n := s.pick(func(*simNode) bool { return true }); n != nil {
			s.log("%s crashes", n.id)
			n.up, n.owner, n.standby = false, nil, nil
		}
	case r < 87:
		for _, n := range s.nodes {
			if !n.up {
				s.restart(ctx, n)
				break
			}
		}
	case r < 90:
		n := s.nodes[s.rng.IntN(len(s.nodes))]
		if n.up {
			n.paused = !n.paused
			s.log("%s paused=%v", n.id, n.paused)
		}
	case r < 93:
		s.c.DropAppends = 1 + s.rng.IntN(3)
		s.log("the stream will lose the next %d appends", s.c.DropAppends)
	case r < 96:
		s.saved = append(s.saved, s.c.Snapshot())
	case r < 98:
		if len(s.saved) > 0 {
			i := s.rng.IntN(len(s.saved))
			s.c.Restore(s.saved[i])
			s.stats.rollbacks++
			s.log("the coordinator rolls back to saved state %d", i)
		}
	default:
		if !s.wiped {
			for _, n := range s.nodes {
				if !n.up {
					s.wiped = true
					s.stats.wipes++
					s.log("%s loses its disk", n.id)
					n.log, n.st, n.hasState, n.unrepl = nil, StandbyState{}, false, unreplicated{}
					break
				}
			}
		}
	}
	return nil
}

func (s *sim) write(ctx context.Context) error {
	o := s.pick(func(n *simNode) bool { return n.owner != nil })
	if o == nil {
		return nil
	}
	s.nextBatch++
	data := []byte(fmt.Sprintf("batch %d by %s@%d", s.nextBatch, o.id, o.owner.Epoch()))
	e := Entry{Epoch: o.owner.Epoch(), Owner: o.id, Seq: uint64(len(o.log)) + 1, Data: data}
	if err := (simLog{o}).Apply(e, StandbyState{}); err != nil { // the owner's own fsync first
		return err
	}
	o.st.Seq = e.Seq
	seq, err := o.owner.Ship(ctx, data)
	if err == ErrFenced {
		s.log("%s is fenced; steps down", o.id)
		o.owner = nil
		return nil
	}
	if seq != e.Seq {
		return fmt.Errorf("%s shipped seq %d for its history's %d", o.id, seq, e.Seq)
	}
	s.log("%s writes seq %d at epoch %d", o.id, seq, e.Epoch)
	return nil
}

func (s *sim) standbyStep(ctx context.Context) error {
	n := s.pick(func(n *simNode) bool { return n.standby != nil })
	if n == nil {
		return nil
	}
	k, err := n.standby.Step(ctx, 1+s.rng.IntN(20))
	if err != nil {
		return err
	}
	if k > 0 {
		st := n.standby.State()
		s.log("%s applies %d, through %d (fence %d/%s)", n.id, k, st.Seq, st.FenceEpoch, st.FenceOwner)
	}
	return nil
}

func (s *sim) poll(ctx context.Context) error {
	o := s.pick(func(n *simNode) bool { return n.owner != nil })
	if o == nil {
		return nil
	}
	_, moving := o.owner.Standby()
	leaving, _ := o.owner.Leaving()
	acked, err := o.owner.Poll(ctx)
	if cur, next := o.owner.Standby(); moving != "" && next == "" && cur == moving {
		s.stats.moves++
		s.log("%s names %s its standby: the move's first half is complete", o.id, cur)
	}
	if now, _ := o.owner.Leaving(); leaving != "" && now == "" {
		s.stats.demotions++
		s.log("%s's old standby %s holds the entry demoting it: the move is complete", o.id, leaving)
	}
	if err == ErrFenced {
		s.stats.fencedOwners++
		s.log("%s polls: fenced; steps down", o.id)
		o.owner = nil
		return nil
	}
	for seq := o.reported + 1; seq <= acked; seq++ {
		if err := s.acknowledge(o, seq); err != nil {
			return err
		}
	}
	o.reported = max(o.reported, acked)
	return nil
}

// acknowledge records that owner o told a client batch seq is durable,
// and checks the safety argument.
func (s *sim) acknowledge(o *simNode, seq uint64) error {
	ep := o.owner.Epoch()
	if who, ok := s.ackedBy[ep]; ok && who != o.id {
		return fmt.Errorf("%s and %s both acknowledged at epoch %d", who, o.id, ep)
	}
	if o.unrepl.epoch == ep {
		return fmt.Errorf("%s acknowledged seq %d at epoch %d, which its disk still records as unreplicated", o.id, seq, ep)
	}
	s.ackedBy[ep] = o.id
	s.maxAckEp = max(s.maxAckEp, ep)
	if seq > uint64(len(o.log)) {
		return fmt.Errorf("%s acknowledged seq %d beyond its history of %d", o.id, seq, len(o.log))
	}
	data := o.log[seq-1].Data
	if prev, ok := s.acked[seq]; ok && !bytes.Equal(prev, data) {
		return fmt.Errorf("seq %d acknowledged twice with different batches: %q then %q by %s", seq, prev, data, o.id)
	}
	s.acked[seq] = data
	s.stats.acked++
	s.log("%s acknowledges seq %d at epoch %d", o.id, seq, ep)
	return nil
}

// checkOwner checks that the owner at the newest epoch (if its node is
// up) holds every acknowledged batch. A deposed owner may still
// acknowledge batches of the history it shared with its successor (its
// standby's acks for them are true), but its own later batches must never
// be acknowledged.
func (s *sim) checkOwner() error {
	for _, n := range s.nodes {
		if n.up && n.owner != nil && n.owner.Epoch() == s.maxOwnerEp {
			if by, ok := s.ackedBy[s.maxOwnerEp]; ok && by != n.id {
				// The coordinator granted the epoch twice (a rollback) and
				// the other owner acknowledged at it: this one is a zombie,
				// which acknowledge checks never acknowledges; the other is
				// checked.
				continue
			}
			if n.unrepl.epoch == s.maxOwnerEp {
				// Nothing acknowledged at its epoch (acknowledge checks
				// it never is while so recorded), and a recovery counts
				// it by the history it took over with, which held every
				// batch acknowledged then (the takeover, or the recovery,
				// that made it owner checks it). An owner
				// deposed by a coordinator rolled back past this takeover
				// may acknowledge more at the older epoch meanwhile:
				// checkRecoverable checks that a recovery would choose a
				// node holding it.
				continue
			}
			if err := s.holdsAll(n, "the owner at the newest epoch"); err != nil {
				return err
			}
			return s.observerPrefixOf(n, "the owner at the newest epoch")
		}
	}
	return nil // it stepped down or crashed: no owner until a takeover
}

// checkRecoverable checks that, were the coordinator to lose the
// partition's state now and every node with a disk answer (a recovery
// waits for all of them; an owner steps down once its lease is gone and
// reports from its disk), the member RecoveryChoice names holds every
// acknowledged batch. When it names none there is no recovery (an
// operator's case), not a loss.
func (s *sim) checkRecoverable() error {
	fences := make([]Fence, 0, len(s.nodes))
	for _, n := range s.nodes {
		fences = append(fences, n.fence())
	}
	id, err := RecoveryChoice(fences)
	if err != nil {
		return nil
	}
	for _, n := range s.nodes {
		if n.id == id {
			return s.holdsAll(n, "the member a recovery would choose now")
		}
	}
	return fmt.Errorf("RecoveryChoice named %q, not a member", id)
}

// holdsAll checks that n's history holds every acknowledged batch.
func (s *sim) holdsAll(n *simNode, who string) error {
	for seq, data := range s.acked {
		if seq > uint64(len(n.log)) || !bytes.Equal(n.log[seq-1].Data, data) {
			got := "nothing"
			if seq <= uint64(len(n.log)) {
				got = fmt.Sprintf("%q", n.log[seq-1].Data)
			}
			return fmt.Errorf("%s (%s) lacks acknowledged seq %d %q: it holds %s", who, n.id, seq, data, got)
		}
	}
	return nil
}

func (s *sim) renew(ctx context.Context) error {
	o := s.pick(func(n *simNode) bool { return n.owner != nil })
	if o == nil {
		return nil
	}
	ok, err := s.c.RenewLease(ctx, simP, o.id, o.owner.Epoch(), simTTL)
	if err != nil {
		return err
	}
	if !ok {
		s.log("%s cannot renew its lease at epoch %d; steps down", o.id, o.owner.Epoch())
		o.owner = nil
	}
	return nil
}

func (s *sim) takeover(ctx context.Context) error {
	n := s.pick(func(n *simNode) bool { return n.owner == nil && n.hasState })
	if n == nil {
		return nil
	}
	sb := n.standby
	if sb == nil {
		if named, err := s.c.Standby(ctx, simP); err == nil && named == n.id && !n.st.Stale && !n.st.Demoted {
			// Named the standby (a coordinator rolled back may name a
			// deposed owner, or a standby a move replaced), it follows from
			// its own history, as dingd's member does (member.run), and
			// takes over from there, as a standby, when the lease lapses.
			n.standby = NewStandby(s.c, simP, n.id, simLog{n}, n.st)
			s.stats.namedFollows++
			s.log("%s, named the standby, follows from its own history through %d", n.id, len(n.log))
			return nil
		}
		sb = NewStandby(s.c, simP, n.id, simLog{n}, n.st)
	}
	o, err := sb.TakeOver(ctx, simTTL)
	if err != nil {
		if n.standby == nil {
			s.stats.refusedTakeovers++
		}
		return nil // refused: not the standby, lease held, or a stale epoch
	}
	if n.standby == nil {
		return fmt.Errorf("%s took over without being a standby in this life", n.id)
	}
	s.stats.takeovers++
	s.log("%s takes over at epoch %d with history %d", n.id, o.Epoch(), len(n.log))
	if o.Epoch() <= s.maxAckEp {
		return fmt.Errorf("%s took over at epoch %d, not above %d, an epoch already acknowledged at", n.id, o.Epoch(), s.maxAckEp)
	}
	if err := s.holdsAll(n, "a new owner"); err != nil {
		return err
	}
	if err := s.observerPrefixOf(n, "a new owner"); err != nil {
		return err
	}
	n.standby, n.owner, n.reported = nil, o, uint64(len(n.log))
	o.KeepRecent(simRecent)
	s.maxOwnerEp = max(s.maxOwnerEp, o.Epoch())
	return nil
}

// recover is the members' recovery when the coordinator names no owner
// and no standby (internal/node/recover.go): only when every node answers
// (up, not paused) does the one RecoveryChoice names take the partition
// over from its own history. (dingd continues the numbering above every
// Seq reported; here histories are slices, so it continues its own: the
// same batches are acknowledged either way.)
func (s *sim) recover(ctx context.Context) error {
	holder, _, err := s.c.Lease(ctx, simP)
	if err != nil || holder != "" {
		return nil
	}
	if sb, err := s.c.Standby(ctx, simP); err != nil || sb != "" {
		return nil
	}
	var fences []Fence
	var floor uint64
	for _, n := range s.nodes {
		if !n.up || n.paused {
			return nil // it might hold the newest history: wait for it
		}
		f := n.fence()
		f.Serving = n.owner != nil
		if f.Held {
			floor = max(floor, f.Epoch)
		}
		fences = append(fences, f)
	}
	id, err := RecoveryChoice(fences)
	if err != nil {
		return nil
	}
	var n *simNode
	for _, c := range s.nodes {
		if c.id == id {
			n = c
		}
	}
	o, err := NewStandby(s.c, simP, n.id, simLog{n}, n.st).Recover(ctx, simTTL, floor, uint64(len(n.log))+1)
	if err != nil {
		return nil // the lease was taken meanwhile
	}
	s.stats.recoveries++
	s.log("%s recovers the partition at epoch %d with history %d", n.id, o.Epoch(), len(n.log))
	if o.Epoch() <= s.maxAckEp {
		return fmt.Errorf("%s recovered at epoch %d, not above %d, an epoch already acknowledged at", n.id, o.Epoch(), s.maxAckEp)
	}
	if err := s.holdsAll(n, "a recovering owner"); err != nil {
		return err
	}
	// The others may keep following (a node that has not noticed): their
	// acks count for nobody until the new owner names a standby.
	n.standby, n.owner, n.reported = nil, o, uint64(len(n.log))
	o.KeepRecent(simRecent)
	s.maxOwnerEp = max(s.maxOwnerEp, o.Epoch())
	return nil
}

// maybeAssign gives an owner without a standby one: a snapshot of its
// history goes to another node, which then follows the stream.
func (s *sim) maybeAssign(ctx context.Context) error {
	o := s.pick(func(n *simNode) bool { return n.owner != nil && n.owner.standby == "" })
	if o == nil {
		return nil
	}
	c := s.pick(func(n *simNode) bool { return n != o && n.owner == nil })
	if c == nil {
		return nil
	}
	return s.assignStandby(ctx, o, c)
}

func (s *sim) assignStandby(ctx context.Context, o, c *simNode) error {
	st := StandbyState{FenceEpoch: o.owner.Epoch(), FenceOwner: o.id, Seq: uint64(len(o.log))}
	if s.refuses(o, c, st) {
		return nil
	}
	s.seed(o, c, st)
	// The coordinator names the new standby before its acks count.
	if err := s.c.SetStandby(ctx, simP, c.id); err != nil {
		return err
	}
	o.owner.SetStandby(c.id)
	s.stats.standbyChanges++
	s.log("%s makes %s its standby from a snapshot through %d", o.id, c.id, st.Seq)
	return nil
}

// refuses reports whether c refuses a snapshot of o's history at st
// (CheckSnapshot: its fence never moves back).
func (s *sim) refuses(o, c *simNode, st StandbyState) bool {
	if err := CheckSnapshot(c.st, c.hasState, st); err != nil {
		s.stats.staleSnapshots++
		s.log("%s refuses %s's snapshot: %v", c.id, o.id, err)
		return true
	}
	return false
}

// seed gives c a snapshot of o's history, at st, and has it follow.
func (s *sim) seed(o, c *simNode, st StandbyState) {
	c.log = append([]Entry(nil), o.log...)
	c.st, c.hasState = st, true
	c.standby = NewStandby(s.c, simP, c.id, simLog{c}, st)
}

// restart brings a node back: with a history, it follows the stream again
// (its acks count only if it is the standby an owner counts).
func (s *sim) restart(_ context.Context, n *simNode) {
	n.up, n.paused = true, false
	if n.hasState {
		n.standby = NewStandby(s.c, simP, n.id, simLog{n}, n.st)
		s.log("%s restarts following, history %d", n.id, len(n.log))
		return
	}
	s.log("%s restarts empty", n.id)
}

// replaceStandby hands o's standby role to c: the hand-over entry goes
// into o's history and the stream, c gets a snapshot that includes it,
// and the old standby's ack of it completes the move (in Poll).
func (s *sim) replaceStandby(ctx context.Context, o, c *simNode) error {
	st := StandbyState{FenceEpoch: o.owner.Epoch(), FenceOwner: o.id}
	if s.refuses(o, c, st) {
		return nil
	}
	seq, ok, err := s.shipHandOver(ctx, o, c)
	if !ok {
		return err
	}
	st.Seq = seq
	s.seed(o, c, st)
	s.stats.standbyChanges++
	s.log("%s hands its standby role to %s at seq %d (snapshot through %d)", o.id, c.id, seq, seq)
	return nil
}

// maybeContinue makes a node the standby of an owner that has none
// without a snapshot, when its own history is the one the owner took
// over with (Owner.Continues: in dingd, the owner before, after a
// hand-over): the owner names it, then it records the owner's fence at
// its own Seq and follows; or it crashes before recording it.
func (s *sim) maybeContinue(ctx context.Context) (bool, error) {
	o := s.pick(func(n *simNode) bool {
		if n.owner == nil {
			return false
		}
		cur, next := n.owner.Standby()
		return cur == "" && next == ""
	})
	if o == nil {
		return false, nil
	}
	c := s.pick(func(n *simNode) bool { return n != o && n.owner == nil && n.hasState })
	if c == nil {
		return false, nil
	}
	// Its durable state says how far its history runs (dingd writes it in
	// each batch an owner applies).
	if c.st.Seq != uint64(len(c.log)) {
		return false, fmt.Errorf("%s's state says %d, its history holds %d", c.id, c.st.Seq, len(c.log))
	}
	if !o.owner.Continues(c.st) {
		return false, nil
	}
	if err := s.c.SetStandby(ctx, simP, c.id); err != nil {
		return false, err
	}
	o.owner.SetStandby(c.id)
	s.stats.continued++
	if s.rng.IntN(4) == 0 {
		c.up, c.standby = false, nil
		s.log("%s names %s its standby from its own history through %d; %s crashes before recording it", o.id, c.id, c.st.Seq, c.id)
		return true, nil
	}
	c.st = StandbyState{FenceEpoch: o.owner.Epoch(), FenceOwner: o.id, Seq: c.st.Seq}
	c.standby = NewStandby(s.c, simP, c.id, simLog{c}, c.st)
	s.log("%s names %s its standby from its own history through %d (no snapshot)", o.id, c.id, c.st.Seq)
	return true, nil
}

// learn is the first half of a standby place's move as dingd makes it:
// c takes a snapshot of o's history (without a hand-over entry) and
// follows the stream as a learner, its acks not counted, until a later
// step names it in the hand-over entry (handOverTo).
func (s *sim) learn(o, c *simNode) error {
	st := StandbyState{FenceEpoch: o.owner.Epoch(), FenceOwner: o.id, Seq: uint64(len(o.log)), Learner: true}
	if s.refuses(o, c, st) {
		return nil
	}
	s.seed(o, c, st)
	o.learner = c
	s.stats.learners++
	s.log("%s follows %s's snapshot through %d as a learner", c.id, o.id, st.Seq)
	return nil
}

// shipHandOver writes o's hand-over entry naming c into o's history (the
// stream gets it from ReplaceStandby); ok is false when o was fenced
// (it steps down) or on err.
//
// One move in three is of one step (ReplaceStandbyOneStep, as for a
// standby of an older build), chosen by the entry's Seq rather than by
// the schedule's randomness, which would renumber every schedule.
func (s *sim) shipHandOver(ctx context.Context, o, c *simNode) (seq uint64, ok bool, err error) {
	if (o.st.Seq+1)%3 == 0 {
		seq, err = o.owner.ReplaceStandbyOneStep(ctx, c.id)
		if err == nil {
			s.stats.oneStepMoves++
			s.log("%s's move to %s is of one step", o.id, c.id)
		}
	} else {
		seq, err = o.owner.ReplaceStandby(ctx, c.id)
	}
	if err == ErrFenced {
		s.log("%s is fenced; steps down", o.id)
		o.owner = nil
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if err := (simLog{o}).Apply(Entry{Epoch: o.owner.Epoch(), Owner: o.id, Seq: seq, Standby: c.id}, StandbyState{}); err != nil {
		return 0, false, err
	}
	o.st.Seq = seq
	return seq, true, nil
}

// shipDemotion ships o's entry demoting the standby a move replaced
// (the move's second half), into o's history and the stream.
func (s *sim) shipDemotion(ctx context.Context, o *simNode) error {
	seq, err := o.owner.ShipDemotion(ctx)
	if err == ErrFenced {
		s.log("%s is fenced; steps down", o.id)
		o.owner = nil
		return nil
	}
	if err != nil {
		return err
	}
	leaving, _ := o.owner.Leaving()
	if err := (simLog{o}).Apply(Entry{Epoch: o.owner.Epoch(), Owner: o.id, Seq: seq, Demote: leaving}, StandbyState{}); err != nil {
		return err
	}
	o.st.Seq = seq
	s.log("%s ships the entry demoting %s at seq %d", o.id, leaving, seq)
	return nil
}

// handOverTo ships o's hand-over entry naming c, a learner: c's ack of
// it names c in the coordinator, and the old standby's of the next entry
// (which demotes it) ends the move (Owner.Observe).
func (s *sim) handOverTo(ctx context.Context, o, c *simNode) error {
	seq, ok, err := s.shipHandOver(ctx, o, c)
	if !ok {
		return err
	}
	s.stats.standbyChanges++
	s.log("%s hands its standby role to %s, a learner, at seq %d", o.id, c.id, seq)
	return nil
}

// heal ends the faults and checks that nothing acknowledged was lost:
// some node holds every acknowledged batch.
func (s *sim) heal(ctx context.Context) error {
	s.c.DropAppends = 0
	for _, n := range s.nodes {
		if !n.up {
			s.restart(ctx, n)
		}
		n.paused = false
	}
	for _, n := range s.nodes {
		if s.holdsAll(n, "a node at the end") == nil {
			return nil
		}
	}
	if len(s.acked) == 0 {
		return nil
	}
	return fmt.Errorf("no node holds every acknowledged batch (%d acknowledged)", len(s.acked))
}
