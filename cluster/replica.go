package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Owner is the replication side of a partition's owner: it numbers and
// ships committed batches and learns which of them the standby holds.
// A batch may be acknowledged to clients once Poll (or Acked) covers its
// Seq, never before. Owner is not safe for concurrent use: the commit
// pipeline's publish side drives it.
type Owner struct {
	c       Coord
	p       Partition
	node    string
	epoch   uint64
	standby string // the standby whose acks count; "" while there is none

	next    uint64  // Seq of the next batch
	acked   uint64  // highest Seq the standby holds
	unacked []Entry // shipped, not yet acked, in Seq order (resent by Resend)
	fenced  bool

	// A standby place moving (ReplaceStandby); zero when none is.
	standbyMove

	// took is the history this owner's continues from a takeover: the
	// standby's fence and Seq just before it (zero for a founding or a
	// recovery). See Continues.
	took StandbyState

	// unreplicated: this owner's node recorded its epoch as one nothing
	// has been acknowledged at yet (OwnerLog), and clearUnreplicated
	// (set with it) erases that record durably, before the first
	// standby's ack at the epoch is counted (RecoveryChoice).
	unreplicated      bool
	clearUnreplicated func() error

	// The entries observers may read (observe.go): the latest shipped,
	// up to a bound in bytes (KeepRecent; none by default), through confirmed,
	// the highest Seq a standby's ack at this owner's epoch covered
	// (unlike acked, not the history a new owner starts with: that may
	// be on this node alone); ackWake is closed when confirmed moves.
	confirmed uint64
	recent    recentRing
	ackWake   chan struct{}
}

// standbyMove is an Owner's standby place in motion, kept apart so that
// dropping or restoring a move is one assignment.
type standbyMove struct {
	// A hand-over in progress: the entry at handAt names handTo; handTo's
	// ack of it names handTo in the Coord (the move's first half).
	handTo string
	handAt uint64
	// oneStep: the move has no second half (ReplaceStandbyOneStep).
	oneStep bool
	// The move's second half: the standby replaced, still counted beside
	// the new one until it applies an entry demoting it (the first
	// shipped after the first half, at leaveAt; 0 until then).
	leaving string
	leaveAt uint64
}

// NewOwner starts shipping for node, owner of p at epoch, whose history
// runs through applied (the next batch is applied+1). standby is the node
// whose acks count ("" for none yet: nothing can be acknowledged
// replicated until SetStandby).
func NewOwner(c Coord, p Partition, node string, epoch, applied uint64, standby string) *Owner {
	return &Owner{c: c, p: p, node: node, epoch: epoch, standby: standby, next: applied + 1, acked: applied}
}

// Continues reports whether a node whose history is st (its durable
// state: fence and Seq) holds exactly the history this owner took over
// with, so that it may become this owner's standby without a snapshot
// (ReplicatedStore.AddStandbyContinuing): the node this owner's
// standby followed, most often its previous owner, whose hand-over or
// death made this one owner. Its history is then a prefix of this
// owner's: the standby applied the fence owner's entries in Seq order
// (rule 1), through the same Seq; and this owner still holds every
// entry it shipped since (unacked: no standby acked them), so the node
// gets them from the stream or a resend. A history of another length
// (the old owner wrote batches its standby never applied) is not a
// prefix; nor is a stale or demoted one trusted.
func (o *Owner) Continues(st StandbyState) bool {
	if o.fenced || o.took.FenceEpoch == 0 || st.Stale || st.Demoted {
		return false
	}
	if st.FenceEpoch != o.took.FenceEpoch || st.FenceOwner != o.took.FenceOwner || st.Seq != o.took.Seq {
		return false
	}
	shipped := o.next - 1 - o.took.Seq // entries since the takeover
	return shipped == 0 || (uint64(len(o.unacked)) == shipped && o.unacked[0].Seq == o.took.Seq+1)
}

// ownHistory is the encoded state of this owner's own store once its
// history runs through seq (StateKey): what Continues compares with, on
// the next owner, should this one follow it.
func (o *Owner) ownHistory(seq uint64) []byte {
	return encodeState(StandbyState{FenceEpoch: o.epoch, FenceOwner: o.node, Seq: seq})
}

// Epoch returns the owner's epoch.
func (o *Owner) Epoch() uint64 { return o.epoch }

// SetStandby makes node the standby of an owner that has none (a new
// partition, or right after a takeover): node must hold a snapshot of
// the owner's history fenced at (o.Epoch(), the owner), and the Coord
// must name it first. To replace a standby, use ReplaceStandby.
func (o *Owner) SetStandby(node string) { o.standby = node }

// DropStandby stops counting the standby's acks (and ends a move in
// progress, either half): a standby that stopped acking (dead, cut off)
// holds every batch acknowledged so far, and no later one is acknowledged
// until a new standby (SetStandby, from a snapshot) holds it. The caller
// then stops the Coord naming it, so that it can no longer take over.
func (o *Owner) DropStandby() {
	o.standby, o.standbyMove = "", standbyMove{}
}

// LetLeavingGo, in a move's second half (Leaving), stops counting the
// standby the move replaced: the new one, named in the Coord already,
// stays, and its acks alone count. A
// stalled standby in the second half is let go so first (should the new
// one be the one that stopped, DropStandby drops it next). Ending the
// wait so trusts the Coord, as dropping a standby does: the node let go
// was not demoted, and a Coord rolled back to naming it again would let
// it take over.
func (o *Owner) LetLeavingGo() { o.leaving, o.leaveAt = "", 0 }

// Standby returns the standby whose acks count ("" for none), and the
// one a hand-over in progress moves to ("" for none).
func (o *Owner) Standby() (current, next string) { return o.standby, o.handTo }

// Leaving returns the standby a move replaced that is still counted
// beside the current one ("" for none), and the Seq of the entry that
// demotes it (0 until one is shipped): see ReplaceStandby.
func (o *Owner) Leaving() (node string, at uint64) { return o.leaving, o.leaveAt }

// ReplaceStandby starts handing the standby role from the current
// standby to node: it ships a hand-over entry naming node (and the
// standby it replaces) and returns its Seq. The caller applies that
// entry to its own history first (like any batch). node follows this
// owner's history: from a snapshot taken before the entry (a learner,
// already following the stream: the way dingd moves a standby place) or
// from one that includes it. The move has two halves, so that at every
// moment the node the Coord names may take over and holds every batch
// acknowledged:
//
//  1. Until node acks the entry, the old standby is the standby: its
//     acks count, up to the entry (node will hold no more than that
//     when it is named). Once both have acked it, Poll names node in
//     the Coord.
//  2. Then both count: a batch is acknowledged once both hold it, since
//     either may take over (node, named; the old one, not demoted, if a
//     Coord rolled back named it again). The first entry shipped after
//     (a batch, or ShipDemotion's when none comes) demotes the old
//     standby; its ack of that entry ends the move, and node's acks
//     alone count.
//
// Every other node applying the hand-over is demoted by it.
func (o *Owner) ReplaceStandby(ctx context.Context, node string) (uint64, error) {
	return o.replaceStandby(ctx, node, false)
}

// ReplaceStandbyOneStep is ReplaceStandby for a standby that speaks a
// protocol older than ProtocolTwoHalves (a build from before it, during
// a rolling upgrade): such a node ignores Entry.Replacing and
// Entry.Demote, demotes itself on applying the hand-over entry, and
// stops following, so it would never ack the entry that ends a second
// half (the move then waited for the owner to drop it as stalled, two
// lease TTLs). The entry carries no Replacing, so that every node
// applying it but node is demoted at once, as every build reads it, and
// the move ends with its first half: node is named in the Coord once
// both have acked the entry, and its acks alone count from then.
//
// What it gives up is what the second half was for, and what that
// older build never had: an owner that dies after the old standby
// applied the entry and before it names node leaves the Coord naming a
// standby that refuses to take over (demoted), and nobody else may;
// nothing clears that on its own. ReplicatedStore.ReplaceStandbyAt
// narrows that window to the acks of one entry by shipping it only once
// node has caught up.
func (o *Owner) ReplaceStandbyOneStep(ctx context.Context, node string) (uint64, error) {
	return o.replaceStandby(ctx, node, true)
}

func (o *Owner) replaceStandby(ctx context.Context, node string, oneStep bool) (uint64, error) {
	if o.fenced {
		return 0, ErrFenced
	}
	if o.standby == "" || o.handTo != "" || o.leaving != "" {
		return 0, fmt.Errorf("cluster: partition %d: no standby to replace, or a hand-over in progress", o.p)
	}
	e := Entry{Standby: node, Replacing: o.standby}
	if oneStep {
		e.Replacing = ""
	}
	seq, err := o.ship(ctx, e)
	o.handTo, o.handAt, o.oneStep = node, seq, oneStep
	return seq, err
}

// Ship appends batch data as the next entry and returns its Seq. It keeps
// the entry until the standby acks it, to resend it.
func (o *Owner) Ship(ctx context.Context, data []byte) (uint64, error) {
	return o.ShipWithKeys(ctx, data, nil)
}

// ShipWithKeys is Ship with the sealed secret-message keys the batch's
// build put or erased (Entry.Keys).
func (o *Owner) ShipWithKeys(ctx context.Context, data, keys []byte) (uint64, error) {
	if o.fenced {
		return 0, ErrFenced
	}
	return o.ship(ctx, Entry{Data: data, Keys: keys})
}

// ship numbers e as this owner's next entry and appends it to the
// stream, keeping it until the standby acks it (an append that fails is
// kept too: Resend ships it again). In a move's second half
// (ReplaceStandby) the entry demotes the standby replaced, the first such
// one being the one whose ack ends the move.
func (o *Owner) ship(ctx context.Context, e Entry) (uint64, error) {
	e.Epoch, e.Owner, e.Seq = o.epoch, o.node, o.next
	if o.leaving != "" {
		e.Demote = o.leaving
		if o.leaveAt == 0 {
			o.leaveAt = e.Seq
		}
	}
	o.next++
	o.recent.remember(e)
	o.unacked = append(o.unacked, e)
	return e.Seq, o.c.Append(ctx, o.p, e)
}

// ShipDemotion ships, in a move's second half, an entry of its own that
// demotes the standby replaced, when no batch has since the first half
// (ReplaceStandby), and returns the Seq whose ack ends the move (0: no
// move in its second half). The caller applies that entry to its own
// history first, as ReplaceStandby's.
func (o *Owner) ShipDemotion(ctx context.Context) (uint64, error) {
	if o.fenced {
		return 0, ErrFenced
	}
	if o.leaving == "" || o.leaveAt != 0 {
		return o.leaveAt, nil
	}
	return o.ship(ctx, Entry{})
}

// Poll reads the standby's ack and returns the highest Seq it holds. It
// returns ErrFenced once any ack names a newer epoch: the owner must
// acknowledge nothing more (batches not yet covered are answered as not
// owned; the new owner has them or they were never acknowledged).
func (o *Owner) Poll(ctx context.Context) (uint64, error) {
	if o.fenced {
		return o.acked, ErrFenced
	}
	acks, err := o.c.Acks(ctx, o.p)
	if err != nil {
		return o.acked, err
	}
	return o.Observe(ctx, acks)
}

// Observe is Poll with acks already read (Coord.Acks): a caller that
// shares the Owner under a lock reads them outside it.
func (o *Owner) Observe(ctx context.Context, acks map[string]Ack) (uint64, error) {
	if o.fenced {
		return o.acked, ErrFenced
	}
	for _, a := range acks {
		if a.Epoch > o.epoch {
			o.fenced = true
			return o.acked, ErrFenced
		}
	}
	// Only acks of the standbys counted, for this owner's own epoch,
	// count: another node's ack (a replaced standby, this node's own
	// takeover ack) says nothing about what a future owner will hold.
	holds := func(node string) (uint64, bool) {
		a, ok := acks[node]
		if !ok || node == "" || a.Epoch != o.epoch || a.Owner != o.node {
			return 0, false
		}
		return min(a.Seq, o.next-1), true
	}
	if o.handTo != "" {
		// A move's first half (ReplaceStandby). The new standby is named
		// in the Coord once both hold the hand-over entry: the new one
		// then holds every batch acknowledged so far (none after the
		// entry), whether it joined from a snapshot that includes the
		// entry or from an earlier one it followed from (a learner).
		// Until then the old standby's acks count, up to the entry. (The
		// old one's ack of the entry is not needed for that, but the move
		// waits for it as it did when that ack demoted it: a Coord rolled
		// back may hand out an ack the new node made in an earlier life.)
		a, aok := holds(o.standby)
		if n, ok := holds(o.handTo); !ok || n < o.handAt || !aok || a < o.handAt {
			if aok {
				if err := o.ackThrough(min(a, o.handAt-1)); err != nil {
					return o.acked, err
				}
			}
			return o.acked, nil
		}
		if err := o.c.SetStandby(ctx, o.p, o.handTo); err != nil {
			return o.acked, err
		}
		if o.oneStep {
			o.standby, o.handTo, o.handAt, o.oneStep = o.handTo, "", 0, false
		} else {
			o.standby, o.leaving, o.leaveAt, o.handTo, o.handAt = o.handTo, o.standby, 0, "", 0
		}
	}
	seq, ok := holds(o.standby)
	if !ok {
		return o.acked, nil
	}
	if o.leaving != "" {
		// The second half: both count, until the old standby holds the
		// entry that demotes it.
		old, ok := holds(o.leaving)
		if ok && o.leaveAt != 0 && old >= o.leaveAt {
			o.leaving, o.leaveAt = "", 0
		} else {
			seq = min(seq, old) // 0 when it has acked nothing at this epoch
		}
	}
	err := o.ackThrough(seq)
	return o.acked, err
}

// ackThrough counts the batches through seq acked (no more than that
// when already counted). The first it counts at an epoch recorded as
// unreplicated erases the record first: failing that, it counts nothing.
func (o *Owner) ackThrough(seq uint64) error {
	if seq <= o.acked {
		return nil
	}
	if err := o.MarkReplicated(); err != nil {
		return err
	}
	if seq > o.confirmed {
		o.confirmed = seq
		if o.ackWake != nil {
			close(o.ackWake)
			o.ackWake = nil
		}
	}
	o.acked = seq
	i := 0
	for i < len(o.unacked) && o.unacked[i].Seq <= seq {
		i++
	}
	o.unacked = append(o.unacked[:0], o.unacked[i:]...)
	return nil
}

// MarkReplicated erases this owner's record that nothing has been
// acknowledged at its epoch (OwnerLog), if it has one, durably: before
// the first batch is acknowledged at the epoch. ackThrough calls it
// before it counts a standby's first ack; owner-only durability
// (--ack-replicas 0) before the first batch it acknowledges alone.
func (o *Owner) MarkReplicated() error {
	if !o.unreplicated {
		return nil
	}
	if err := o.clearUnreplicated(); err != nil {
		return fmt.Errorf("cluster: recording that partition %d's epoch %d is replicated: %w", o.p, o.epoch, err)
	}
	o.unreplicated = false
	return nil
}

// Acked returns the highest Seq the standby holds, as of the last Poll.
func (o *Owner) Acked() uint64 { return o.acked }

// Resend ships again every entry not yet acked, in order (an entry the
// stream lost leaves a gap the standby waits at).
func (o *Owner) Resend(ctx context.Context) error {
	if o.fenced {
		return ErrFenced
	}
	for _, e := range o.unacked {
		if err := o.c.Append(ctx, o.p, e); err != nil {
			return err
		}
	}
	return nil
}

// StandbyState is what a standby keeps durably for a partition, beside
// the history itself: its fence (the newest epoch and its owner) and how
// far its history runs. A node whose disk lost it is not a standby.
type StandbyState struct {
	FenceEpoch uint64
	FenceOwner string
	Seq        uint64 // the history runs through Seq
	Cursor     string // where in the stream to read next (a hint; Seq decides)
	// Demoted is set when the history hands the standby role to another
	// node: this node may never take the partition over again (until a
	// new snapshot makes it a standby afresh).
	Demoted bool
	// Learner is set on a node that follows an owner's snapshot to take
	// the standby's place (ReplicatedStore.ReplaceStandbyAt), until it
	// applies the hand-over entry naming it: until then it may not take
	// over, whatever the coordinator says (a coordinator that lost its
	// state may still name it from an earlier life, one whose disk it
	// lost).
	Learner bool
	// Leaving is set on the standby a hand-over replaces when it applies
	// it (Entry.Replacing): it may still take over, and keeps following,
	// until it applies the entry that demotes it (Entry.Demote), though
	// the coordinator may already name the node replacing it.
	Leaving bool
	// Stale is set when the stream showed an entry of a newer owner than
	// the one whose history this node holds: the fence moved to it (older
	// owners are refused), but the history did not: a newer owner's
	// history continues its own, which this node's may not be a prefix of
	// (it followed a deposed owner further, or was dropped and fell
	// behind). A stale node applies and acks nothing more, may not take
	// over, and follows again only from a new snapshot.
	Stale bool
}

// history is st's fence and how far its history runs, without its flags
// and stream cursor: the history a node holds, as a new owner records
// the one it took over with.
func (st StandbyState) history() StandbyState {
	return StandbyState{FenceEpoch: st.FenceEpoch, FenceOwner: st.FenceOwner, Seq: st.Seq}
}

// Log is the partition's history on one node (Pebble in dingd, a slice in
// the simulation). Its methods run inside Standby.Step and TakeOver, with
// the Standby locked: they must not call the Standby.
type Log interface {
	// Apply appends e to the history (e.Seq is the history's last + 1),
	// after which the standby's state is st (a Log may store it with the
	// entry). It need not be durable when it returns, but what survives a
	// crash must be a prefix of the applies.
	Apply(e Entry, st StandbyState) error
	// SaveState records st durably, and every Apply before it: the
	// standby acks only after it.
	SaveState(st StandbyState) error
}

// OwnerLog is a Log that also keeps, beside a new owner's fence, the
// record that nothing has been acknowledged at its epoch yet: the fence
// the node held before it took over (or recovered). The owner erases the
// record before it counts the first standby's ack at its epoch
// (Owner.MarkReplicated). RecoveryChoice reads a member whose fence is
// its own epoch, still so recorded, as holding the history it took over
// with, not the epoch: it wrote at that epoch, but nothing it wrote there
// was acknowledged. That is what lets an owner deposed by a coordinator
// that rolled back past the takeover (it holds the lease again at its
// older epoch, and acknowledges more) win a recovery over a new owner
// that took over and stopped before anything reached its standby (the
// package doc, after "Why nothing acknowledged is lost"). A Log that is
// not an OwnerLog records no such thing, and its owners' epochs count as
// replicated from the start, as before.
type OwnerLog interface {
	Log
	// SaveOwnerState records st, the new owner's state, as SaveState
	// does, together with the record that nothing is acknowledged at
	// st.FenceEpoch yet, and took, the state it held before.
	SaveOwnerState(st, took StandbyState) error
	// ClearUnreplicated erases that record, durably, if it is epoch's.
	ClearUnreplicated(epoch uint64) error
	// Unreplicated returns the record: the epoch (0 for none) and the
	// state taken over from.
	Unreplicated() (epoch uint64, took StandbyState)
}

// ErrStaleSnapshot refuses a snapshot whose fence is older than the
// history a node already holds.
var ErrStaleSnapshot = errors.New("cluster: snapshot older than the history held")

// CheckSnapshot decides whether a node holding cur (held false: no state
// for the partition, a new node or a lost disk) may replace its history
// with an owner's snapshot fenced at snap. A node's fence never moves
// back: a deposed owner that has not learnt it (its coordinator lost the
// evidence) must not overwrite its successor's history on a standby.
func CheckSnapshot(cur StandbyState, held bool, snap StandbyState) error {
	if !held || snap.FenceEpoch > cur.FenceEpoch || (snap.FenceEpoch == cur.FenceEpoch && snap.FenceOwner == cur.FenceOwner) {
		return nil
	}
	return fmt.Errorf("%w: fenced at %d/%s, snapshot at %d/%s", ErrStaleSnapshot, cur.FenceEpoch, cur.FenceOwner, snap.FenceEpoch, snap.FenceOwner)
}

// Standby follows a partition's stream: it applies the current owner's
// entries in Seq order, refuses entries of older epochs, and acks.
// Its methods are safe for concurrent use: a Step in progress finishes
// before a TakeOver begins.
type Standby struct {
	c    Coord
	p    Partition
	node string
	log  Log

	mu sync.Mutex // held through Step and TakeOver; guards st
	st StandbyState

	// The entries it applied last (KeepRecent; guarded by mu): the owner
	// it becomes keeps them for observers.
	recent recentRing
}

// KeepRecent makes the standby keep the entries it applies last, up to
// bytes of data, so that the owner it may become answers observers that
// are behind its takeover from memory (Owner.KeepRecent; else they start
// again from a snapshot). Zero keeps none.
func (s *Standby) KeepRecent(bytes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recent.keep(bytes)
}

// NewStandby follows p for node from st (its durable state: the fence and
// history given by the owner's snapshot, or what it kept before a
// restart).
func NewStandby(c Coord, p Partition, node string, log Log, st StandbyState) *Standby {
	return &Standby{c: c, p: p, node: node, log: log, st: st}
}

// State returns the standby's state.
func (s *Standby) State() StandbyState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// Step reads up to n new entries, applies those that extend the current
// owner's history, and publishes its ack (when it read any). It returns
// how many it applied.
func (s *Standby) Step(ctx context.Context, n int) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	es, cursor, err := s.c.Entries(ctx, s.p, s.st.Cursor, n)
	if err != nil {
		return 0, err
	}
	return s.apply(ctx, es, cursor)
}

// StepWaiting is Step with a read that waits, at most max, for an entry
// when there is none (EntryReader, a blocking XREAD), without holding
// the standby's lock meanwhile (TakeOver and State do not wait for it).
func (s *Standby) StepWaiting(ctx context.Context, r EntryReader, n int, max time.Duration) (int, error) {
	from := s.State().Cursor
	es, cursor, err := r.ReadEntries(ctx, s.p, from, n, max)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st.Cursor != from {
		return 0, nil // another Step read on meanwhile: read again from where it stopped
	}
	return s.apply(ctx, es, cursor)
}

// apply applies, under mu, the entries read after the state's cursor
// (es, up to cursor), saves the state and acks: Step's second half.
func (s *Standby) apply(ctx context.Context, es []Entry, cursor string) (int, error) {
	applied := 0
	for _, e := range es {
		if e.Epoch > s.st.FenceEpoch {
			// A newer owner, whatever its entry's Seq: its history
			// continues its own, which this node's need not be a prefix of
			// (a standby follows only the owner it was seeded from; a new
			// owner's standby starts from its snapshot). Fence it, and
			// apply nothing more (Stale).
			s.st.FenceEpoch, s.st.FenceOwner, s.st.Stale = e.Epoch, e.Owner, true
			break
		}
		switch {
		case e.Epoch < s.st.FenceEpoch:
			continue // a deposed owner's: never applied, never acked
		case e.Epoch == s.st.FenceEpoch && e.Owner != s.st.FenceOwner:
			continue // one epoch granted twice: the first owner seen keeps it
		case e.Seq <= s.st.Seq:
			continue // a resend of what the history has
		case e.Seq > s.st.Seq+1:
			continue // a gap (an entry lost): wait for the resend
		}
		next := s.st
		if next.Stale {
			continue
		}
		next.Seq = e.Seq
		switch {
		case e.Standby == s.node:
			// Named by a hand-over: the standby from when the owner names
			// it in the Coord (Owner.ReplaceStandby).
			next.Demoted, next.Learner, next.Leaving = false, false, false
		case e.Standby != "" && e.Replacing == s.node:
			next.Leaving = true
		case e.Standby != "":
			// A hand-over between others: this node may never take over
			// (until a new snapshot makes it a standby afresh).
			next.Demoted = true
		case e.Demote == s.node:
			// The standby replaced, once the one that replaces it is
			// named: until this entry, the owner counted its acks too,
			// and it could take over.
			next.Demoted = true
		}
		if err := s.log.Apply(e, next); err != nil {
			return applied, err
		}
		s.st = next
		s.recent.remember(e)
		applied++
	}
	if len(es) == 0 {
		return 0, nil // nothing new: no write, no ack
	}
	s.st.Cursor = cursor
	if err := s.log.SaveState(s.st); err != nil {
		return applied, err
	}
	if s.st.FenceEpoch == 0 || s.st.Stale {
		return applied, nil // a stale node's ack would claim a history it lacks
	}
	// Acked again even when every entry read was one it had (a resend):
	// the owner resends when it saw no ack, which the coordinator may
	// have lost.
	return applied, s.c.PutAck(ctx, s.p, Ack{Standby: s.node, Epoch: s.st.FenceEpoch, Owner: s.st.FenceOwner, Seq: s.st.Seq})
}

// TakeOver makes this standby the partition's owner once no live lease
// is held by anyone else: it takes the lease with an epoch above its
// fence, fences itself at that epoch, publishes the fence (any older
// owner that polls learns it is deposed), and returns the Owner, whose
// history continues from this node's. Only the node named standby in the
// Coord may take over, and only with a fence (a node that never followed
// the partition, or lost its disk, has none).
func (s *Standby) TakeOver(ctx context.Context, ttl time.Duration) (*Owner, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st.FenceEpoch == 0 {
		return nil, fmt.Errorf("%w: %s has no history of partition %d", ErrNotStandby, s.node, s.p)
	}
	if s.st.Demoted {
		return nil, fmt.Errorf("%w: %s handed partition %d's standby role over", ErrNotStandby, s.node, s.p)
	}
	if s.st.Learner {
		return nil, fmt.Errorf("%w: %s follows partition %d as a learner, not yet named in a hand-over", ErrNotStandby, s.node, s.p)
	}
	if s.st.Stale {
		return nil, fmt.Errorf("%w: %s saw a newer owner (epoch %d) than the history it holds", ErrNotStandby, s.node, s.st.FenceEpoch)
	}
	sb, err := s.c.Standby(ctx, s.p)
	if err != nil {
		return nil, err
	}
	if sb != s.node {
		return nil, fmt.Errorf("%w: partition %d's standby is %q, not %s", ErrNotStandby, s.p, sb, s.node)
	}
	epoch, ok, err := s.c.TakeLease(ctx, s.p, s.node, s.st.FenceEpoch, ttl)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrLeaseHeld
	}
	if epoch <= s.st.FenceEpoch {
		// The Coord handed out an epoch it should not have (lost state):
		// refuse it rather than share an epoch with an older owner.
		return nil, fmt.Errorf("cluster: lease epoch %d not above the fence %d", epoch, s.st.FenceEpoch)
	}
	took := s.st.history()
	s.st.FenceEpoch, s.st.FenceOwner = epoch, s.node
	o, err := s.becomeOwner(ctx, epoch, took)
	if o != nil {
		o.took = took
	}
	return o, err
}

// becomeOwner finishes a takeover or a recovery at epoch, s.st being the
// new owner's state and prev the one it held before: recorded (with
// prev, as unreplicated, by an OwnerLog), the standby's name cleared,
// the fence published (an older owner that polls learns it is deposed).
func (s *Standby) becomeOwner(ctx context.Context, epoch uint64, prev StandbyState) (*Owner, error) {
	ol, records := s.log.(OwnerLog)
	if records {
		if e, took := ol.Unreplicated(); e != 0 && e == prev.FenceEpoch && prev.FenceOwner == s.node {
			// Taken over again from its own epoch, at which nothing was
			// acknowledged either: what it holds that was acknowledged is
			// still what it took over with then.
			seq := min(took.Seq, prev.Seq)
			prev = took
			prev.Seq = seq
		}
		if err := ol.SaveOwnerState(s.st, prev); err != nil {
			return nil, err
		}
	} else if err := s.log.SaveState(s.st); err != nil {
		return nil, err
	}
	if err := s.c.SetStandby(ctx, s.p, ""); err != nil {
		return nil, err
	}
	if err := s.c.PutAck(ctx, s.p, Ack{Standby: s.node, Epoch: epoch, Owner: s.node, Seq: s.st.Seq}); err != nil {
		return nil, err
	}
	o := NewOwner(s.c, s.p, s.node, epoch, s.st.Seq, "")
	if records {
		// The log may be closed by the time the owner counts its first
		// ack (dingd reopens the store to serve it): the ReplicatedStore
		// serving it erases the record in its own store instead.
		o.unreplicated, o.clearUnreplicated = true, func() error { return ol.ClearUnreplicated(epoch) }
	}
	// What it applied as the standby is the start of the new owner's
	// history: observers behind the takeover read it from memory, once
	// the new owner's standby holds it (confirmed).
	o.recent, s.recent = s.recent, recentRing{cap: s.recent.cap}
	return o, nil
}

// Fence is what a member reports of its copy of a partition when the
// coordinator has lost the partition's state (RecoveryChoice).
type Fence struct {
	Member string `json:"member"`
	// Held: the member holds a history of the partition (else the rest
	// is zero).
	Held    bool   `json:"held"`
	Epoch   uint64 `json:"epoch"` // its fence: the newest epoch it has seen
	Owner   string `json:"owner"` // that epoch's owner (itself: it owned it)
	Seq     uint64 `json:"seq"`   // its history runs through Seq (an owner's: a lower bound)
	Demoted bool   `json:"demoted,omitempty"`
	// Stale: its fence is past its history (StandbyState.Stale).
	Stale bool `json:"stale,omitempty"`
	// Serving: it serves the partition now (it holds a lease it has not
	// lost yet): no recovery is needed.
	Serving bool `json:"serving,omitempty"`
	// Drained: it holds no role and takes none (dingctl cluster drain).
	Drained bool `json:"drained,omitempty"`
	// Unreplicated: Epoch is the member's own, taken over (or recovered)
	// but nothing acknowledged at it yet (OwnerLog): what it holds that
	// was acknowledged is the history it took over with, fenced at
	// TookEpoch by TookOwner and running through TookSeq. A build before
	// this field reports none, and its epochs count as replicated.
	Unreplicated bool   `json:"unreplicated,omitempty"`
	TookEpoch    uint64 `json:"took_epoch,omitempty"`
	TookOwner    string `json:"took_owner,omitempty"`
	TookSeq      uint64 `json:"took_seq,omitempty"`
	// KeepsUnreplicated: the member's build keeps that record, so that a
	// fence without Unreplicated says something was acknowledged at its
	// epoch. While one member holding a history does not say so (a build
	// from before), every member chooses by the rule before the record,
	// so that members of both builds make the same choice.
	KeepsUnreplicated bool `json:"keeps_unreplicated,omitempty"`
	// Peers are the members it knows of, by id, with their HTTP address.
	Peers map[string]string `json:"peers,omitempty"`
}

// ErrNoRecovery is returned by RecoveryChoice when no member may recover
// the partition from the fences given.
var ErrNoRecovery = errors.New("cluster: no member may recover the partition")

// RecoveryChoice picks the member that recovers a partition whose
// coordinator state is lost (no lease, no standby named, epochs maybe
// rolled back), from the fences of every member of the cluster, which the
// caller must have gathered all of (a member that does not answer may
// hold the newest history; only members removed for good may be left
// out, and then by an operator's word). A drained member's answer counts
// for the epochs, but it is never chosen: it takes no role. The newest epoch any member holds the history of, E, is the last
// one granted that anyone acted on (if a member saw a newer one whose
// history nobody who answered holds, there is no choice). E's owner holds
// every batch it acknowledged, so it is chosen if it answered with a
// history. Otherwise (its disk was lost) every batch acknowledged at E is
// on E's standby, and every member holding E's history holds a prefix of
// E's owner's (it was seeded from E's owner's snapshot and applies only
// E's owner's entries; a member that saw a newer owner than its history's
// is Stale and not counted), so the one with the longest among them holds
// them all: it is chosen (ties: the smallest id). Older epochs' batches
// are in E's history (rule 3).
//
// An epoch whose owner reports it Unreplicated does not count: nothing
// was acknowledged at it, and the coordinator may have rolled back past
// its takeover, so that its predecessor acknowledged more at the older
// epoch since (OwnerLog). Every member fenced at it, the owner and any
// standby that joined it, counts as holding the history the owner took
// over with (its Took fence; followed through any number of such epochs),
// as far as its own runs. Not when the owner it took over from answers
// at that epoch with a shorter history: it lost batches it had shipped
// before its fsync, and the new owner, whose engine took them for
// durable (a client's retry answered as a duplicate, relay records sent
// on), is the one holding them. A member Stale at such an epoch still
// counts as having seen it: its history is of some older owner, which
// its fence does not name (TestSimulation's seed 399882 recovered from a
// node without the acknowledged batches when it did not). The epoch
// still bounds the one the recovery takes (the caller's floor). While a
// member holding a history does not say it KeepsUnreplicated (a build
// from before), none of this applies: the choice is the same for every
// member.
func RecoveryChoice(fences []Fence) (string, error) {
	type fenceOf struct {
		epoch uint64
		owner string
	}
	took := map[fenceOf]Fence{}
	keeps := !slices.ContainsFunc(fences, func(f Fence) bool { return f.Held && !f.KeepsUnreplicated })
	for _, f := range fences {
		if !keeps || !f.Held || !f.Unreplicated || f.Owner != f.Member || f.TookEpoch == 0 || f.TookEpoch >= f.Epoch {
			continue
		}
		lost := slices.ContainsFunc(fences, func(g Fence) bool {
			return g.Held && g.Member == f.TookOwner && g.Owner == f.TookOwner && g.Epoch == f.TookEpoch && g.Seq < f.TookSeq
		})
		if !lost {
			took[fenceOf{f.Epoch, f.Owner}] = f
		}
	}
	if len(took) > 0 {
		fences = slices.Clone(fences)
		for i := range fences {
			f := &fences[i]
			if !f.Held || f.Stale {
				continue
			}
			// Took epochs only go down: this ends.
			for t, ok := took[fenceOf{f.Epoch, f.Owner}]; ok; t, ok = took[fenceOf{f.Epoch, f.Owner}] {
				f.Epoch, f.Owner, f.Seq = t.TookEpoch, t.TookOwner, min(f.Seq, t.TookSeq)
			}
		}
	}
	var top, seen uint64
	for _, f := range fences {
		if f.Serving {
			return "", fmt.Errorf("%w: %s serves it", ErrNoRecovery, f.Member)
		}
		if f.Held {
			seen = max(seen, f.Epoch)
			if !f.Stale {
				top = max(top, f.Epoch)
			}
		}
	}
	if top == 0 {
		return "", fmt.Errorf("%w: no member holds a history of it", ErrNoRecovery)
	}
	if seen > top {
		// Someone saw an owner at an epoch whose history nobody who
		// answered holds: its owner and its standby both lost theirs.
		return "", fmt.Errorf("%w: epoch %d was seen, but nobody holds its history", ErrNoRecovery, seen)
	}
	best := -1
	for i, f := range fences {
		if !f.Held || f.Stale || f.Drained || f.Epoch != top {
			continue // a drained member takes no role: it cannot serve
		}
		if f.Owner == f.Member {
			if best < 0 || fences[best].Owner != fences[best].Member || f.Member < fences[best].Member {
				best = i
			}
			continue
		}
		if best >= 0 && fences[best].Owner == fences[best].Member {
			continue
		}
		if best < 0 || f.Seq > fences[best].Seq || (f.Seq == fences[best].Seq && f.Member < fences[best].Member) {
			best = i
		}
	}
	if best < 0 {
		return "", fmt.Errorf("%w: the members holding epoch %d's history are drained", ErrNoRecovery, top)
	}
	return fences[best].Member, nil
}

// Recover makes this node, chosen by RecoveryChoice, the partition's
// owner after its coordinator lost the partition's state: it takes the
// lease with an epoch above floor (the newest epoch any member has seen)
// and its own fence, records it, and continues the history at next (above
// every Seq any member reported). Unlike TakeOver it does not ask the
// coordinator whether this node is the standby: the coordinator no longer
// knows, and RecoveryChoice, over every member's own records, decided.
func (s *Standby) Recover(ctx context.Context, ttl time.Duration, floor, next uint64) (*Owner, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st.FenceEpoch == 0 {
		return nil, fmt.Errorf("cluster: %s has no history of partition %d to recover", s.node, s.p)
	}
	floor = max(floor, s.st.FenceEpoch)
	epoch, ok, err := s.c.TakeLease(ctx, s.p, s.node, floor, ttl)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrLeaseHeld
	}
	if epoch <= floor {
		return nil, fmt.Errorf("cluster: lease epoch %d not above %d", epoch, floor)
	}
	if next <= s.st.Seq {
		next = s.st.Seq + 1
	}
	prev := s.st.history()
	s.st = StandbyState{FenceEpoch: epoch, FenceOwner: s.node, Seq: next - 1}
	return s.becomeOwner(ctx, epoch, prev)
}
