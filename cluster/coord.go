package cluster

import (
	"context"
	"errors"
	"time"
)

// Partition is a partition number. Users hash into partitions (package
// fanout, PartitionOf); each has one owner at a time.
type Partition uint32

// Entry is one committed batch of a partition as its owner ships it to
// the standby.
type Entry struct {
	Epoch uint64 // the owner's lease epoch when it shipped the batch
	Owner string // the owner's node id
	Seq   uint64 // the batch's place in the partition's history: from 1, no gaps
	Data  []byte // the batch, opaque here
	// Standby, when set, makes the entry a hand-over instead of a batch
	// (Data empty): from it on, the standby is this node. Replacing is the
	// standby it replaces, which stays one (it may still take over) until
	// it applies an entry whose Demote names it; every other node applying
	// it is demoted at once (see Owner.ReplaceStandby). A hand-over without
	// Replacing (written before it existed) demotes every node but Standby.
	Standby   string
	Replacing string
	// Demote, on a batch or on an entry of its own (Data empty), names the
	// standby a completed hand-over replaced: applying it demotes that
	// node (Owner.ShipDemotion).
	Demote string
	// Keys are the secret-message keys put and erased while the batch was
	// built, sealed (keys.go); nil for none.
	Keys []byte
}

// Ack is what a standby reports after applying entries durably: it holds
// the partition's history through Seq, and it accepts entries of Owner at
// Epoch and of no older epoch (its fence).
type Ack struct {
	Standby string
	Epoch   uint64
	Owner   string
	Seq     uint64
}

// Coord is what the protocol needs from the shared service (Redis in
// production, MemCoord in tests and the simulation). None of its answers
// is trusted for safety beyond what the package doc says: leases may be
// granted twice with one epoch, entries may be lost or read out of order,
// an ack may be read stale.
type Coord interface {
	// TakeLease gives node the partition's lease for ttl if no one else
	// holds a live one, with an epoch above every epoch it handed out for
	// the partition and above min. ok is false, with the holder's epoch,
	// when another node holds it. A holder may take its own lease again:
	// it gets a new epoch.
	TakeLease(ctx context.Context, p Partition, node string, min uint64, ttl time.Duration) (epoch uint64, ok bool, err error)
	// RenewLease extends node's lease at epoch by ttl; false if the lease
	// is no longer node's at that epoch.
	RenewLease(ctx context.Context, p Partition, node string, epoch uint64, ttl time.Duration) (bool, error)
	// ReleaseLease gives up node's lease at epoch (nothing if it is not).
	ReleaseLease(ctx context.Context, p Partition, node string, epoch uint64) error
	// Lease returns the live lease's holder and epoch; holder is "" when
	// none is live.
	Lease(ctx context.Context, p Partition) (holder string, epoch uint64, err error)

	// Append adds an entry to the partition's replication stream. The
	// stream may drop its oldest entries to stay bounded (both
	// implementations keep the latest StreamKeep): the protocol reads
	// only entries the owner has not seen acked, and the owner ships
	// those again when the stream lost them (Owner.Resend).
	Append(ctx context.Context, p Partition, e Entry) error
	// Entries returns up to n entries appended after cursor ("" for the
	// start of the stream) and the cursor after them.
	Entries(ctx context.Context, p Partition, cursor string, n int) ([]Entry, string, error)

	// PutAck publishes a standby's (or a new owner's) ack, replacing the
	// last one a.Standby published.
	PutAck(ctx context.Context, p Partition, a Ack) error
	// Acks returns the last ack each node published for the partition.
	Acks(ctx context.Context, p Partition) (map[string]Ack, error)

	// SetStandby names the partition's standby ("" for none).
	SetStandby(ctx context.Context, p Partition, node string) error
	// Standby returns the partition's standby ("" for none).
	Standby(ctx context.Context, p Partition) (string, error)

	// SetAddr publishes where node's HTTP listener is (for peers: its
	// snapshots), for ttl; Addr reads it ("" when unknown or expired).
	SetAddr(ctx context.Context, node, addr string, ttl time.Duration) error
	Addr(ctx context.Context, node string) (string, error)
}

// EntryReader is an optional interface of a Coord: ReadEntries is
// Entries, except that when the stream holds nothing after cursor it
// waits, at most max, for an entry to come and returns what came (none
// after max). A standby with nothing to read waits in it instead of
// polling, and gets the entries in the same round trip.
type EntryReader interface {
	ReadEntries(ctx context.Context, p Partition, cursor string, n int, max time.Duration) ([]Entry, string, error)
}

// AckNotifier is an optional interface of a Coord: every ack PutAck
// publishes is also passed at once to whoever watches the partition's
// acks, so that an owner waiting for its standby learns of each ack
// without polling Acks. A notice may be lost, late, repeated or out of
// order (Redis's pub/sub): Acks stays the record, which the owner still
// reads when no notice comes for a while. An ack is a true statement
// whenever it arrives (the standby held that history when it made it),
// so an owner may count it on arrival.
type AckNotifier interface {
	// WatchAcks calls f (which must return quickly) with each ack put
	// for p from when WatchAcks returns until ctx ends.
	WatchAcks(ctx context.Context, p Partition, f func(Ack)) error
}

// Announcer is an optional interface of a Coord: a hint to every node
// that a partition changed hands (its new owner serves it now, or its
// owner let it go), so that what waits for the partition elsewhere (the
// relay's retries, a cached owner, the standby's look at the lease) goes
// at once instead of after its backoff or poll. An announcement reaches the nodes
// listening at most once, and may be late, lost or passed on out of order
// (Redis's pub/sub; a Redis Cluster's nodes forward it on their bus):
// nothing the protocol promises rests on it.
type Announcer interface {
	// Announce tells the nodes listening that partition p changed hands.
	Announce(ctx context.Context, p Partition) error
	// Listen calls f (which must return quickly) with each partition
	// announced from when Listen returns until ctx ends.
	Listen(ctx context.Context, f func(Partition)) error
}

// PartitionCounter is an optional interface of a Coord: the cluster's
// partition count, recorded by the first node to start, since users'
// placement must be the same on every node.
type PartitionCounter interface {
	// ClaimPartitions records p as the cluster's partition count unless
	// one is recorded already, and returns the one recorded.
	ClaimPartitions(ctx context.Context, p int) (int, error)
}

// Registry is an optional interface of a Coord: where the members of a
// cluster say what they are doing, for operators (dingctl cluster
// status). Nothing in the protocol reads it.
type Registry interface {
	// SetMember publishes node's status for ttl.
	SetMember(ctx context.Context, node string, m Member, ttl time.Duration) error
	// Members returns the status of every member whose last one has not
	// expired.
	Members(ctx context.Context) (map[string]Member, error)
}

// Member is what a member last said of itself.
type Member struct {
	// Role: owner, standby, joining, spare or drained (a node with a
	// member per partition: the partitions it owns and follows).
	Role string `json:"role"`
	// HTTP and Socket are its advertised addresses.
	HTTP   string `json:"http"`
	Socket string `json:"socket"`
	// Epoch is the owner's epoch, or the newest a standby has seen; Seq
	// the last batch it holds (the owner: the last it shipped).
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
	// At is when it said so.
	At time.Time `json:"at"`
	// Partitions is how many partitions the member's node runs, with a
	// member per partition (Role then lists which it owns and follows);
	// 0 for a cluster of one partition.
	Partitions int `json:"partitions,omitempty"`
	// Protocol is the replication protocol the member's build speaks
	// (Protocol); 0, from a build that did not say, is 1.
	Protocol int `json:"protocol,omitempty"`
	// Build names the member's build (its VCS revision; package
	// internal/buildinfo), for operators: during a rolling upgrade, which
	// members run which build. Nothing in the protocol reads it.
	Build string `json:"build,omitempty"`
}

// The replication protocol's versions: what a build writes on the
// stream and the hand-over entries it understands. Builds of one
// cluster may differ during a rolling upgrade; a member publishes the
// version it speaks (Member.Protocol), and an owner uses a behaviour
// another node must understand only when that node says it speaks a
// version that has it (the doc's "Compatibility between builds").
const (
	// ProtocolOneStep: a standby place moves in one step; the hand-over
	// entry demotes every node but the new standby (builds before
	// 9aa8e02; builds before a4b0dfb publish no version and are taken
	// for it).
	ProtocolOneStep = 1
	// ProtocolTwoHalves: a standby place moves in two halves
	// (Entry.Replacing, Entry.Demote; Owner.ReplaceStandby).
	ProtocolTwoHalves = 2
	// Protocol is the version this build speaks.
	Protocol = ProtocolTwoHalves
)

// Speaks returns the protocol m speaks: 1 for a member that did not say.
func (m Member) Speaks() int { return max(m.Protocol, ProtocolOneStep) }

// ErrFenced is returned to an owner once a newer epoch exists: it must
// not acknowledge anything more for the partition and must step down.
var ErrFenced = errors.New("cluster: fenced: a newer owner exists")

// ErrNotStandby refuses a takeover by a node that is not the
// partition's up-to-date standby.
var ErrNotStandby = errors.New("cluster: not the partition's standby")

// ErrLeaseHeld refuses a takeover while another node holds a live lease.
var ErrLeaseHeld = errors.New("cluster: the lease is held")
