package fanout

import (
	"errors"
	"fmt"
)

// Partitions is how many partitions users hash into. It is fixed: a
// partition is the unit of ownership that moves between nodes in a
// cluster, and a user's partition must be the same on every node and
// across restarts. Changing it (or the hash in PartitionOf) moves users
// to other partitions, so it is a data migration, not a setting.
const Partitions = 1024

// Partition is a partition number, in [0, Partitions).
type Partition uint16

// PartitionOf returns user's partition: the 32-bit FNV-1a hash of the
// user id's bytes (offset basis 2166136261, prime 16777619), modulo
// Partitions. FNV-1a is stable, needs no seed and is a few lines in any
// language (a Redis script, an operator's tool); it is not Go's maphash,
// which is seeded per process. TestPartitionOf pins known values: changing
// the hash is a data migration (see Partitions).
func PartitionOf(user string) Partition {
	h := uint32(2166136261)
	for i := 0; i < len(user); i++ {
		h ^= uint32(user[i])
		h *= 16777619
	}
	return Partition(h % Partitions)
}

// Ownership says which node owns each user's stream: the owner of the
// user's partition (PartitionOf). The owner's store is the stream's
// system of record; only the owner appends to it and publishes it (see
// Broker), and devices of its users attach there (Hub.Join).
//
// In a cluster the owner of a partition changes when a node dies or the
// partitions are rebalanced; an implementation answers from its current
// view of the leases, and the node that loses a partition detaches its
// users' devices (Hub.Kick), which reconnect and are sent to the new owner.
type Ownership interface {
	// Owner returns the address of the node that owns user's partition
	// now ("" if no node owns it, say while it moves) and whether that is
	// this node. It is called concurrently, on the delivery path (once
	// per user and committed batch) and on every attach, so it must not
	// block: it answers from memory and never fails. An implementation
	// that owns every partition need not hash the user.
	Owner(user string) (node string, local bool)
}

// SingleNode is the Ownership of a node that runs alone: it owns every
// partition.
type SingleNode struct {
	// Addr is this node's address, what Owner returns; it may be empty
	// (nobody is ever redirected to a single node).
	Addr string
}

var _ Ownership = SingleNode{}

// Owner implements Ownership: every user is local.
func (s SingleNode) Owner(string) (string, bool) { return s.Addr, true }

// ErrNotOwner is returned (wrapped in a *NotOwnerError) when an operation
// on a user's stream reaches a node that does not own the user's
// partition: attaching a device (Hub.Join), publishing entries
// (Broker.Publish). Retrying on the same node fails the same way until
// ownership moves; the error names the owner to go to instead.
var ErrNotOwner = errors.New("fanout: not the owner of the user's partition")

// NotOwnerError says which node owns a user's partition, so an edge can
// redirect the device there. errors.Is(err, ErrNotOwner) reports it.
type NotOwnerError struct {
	User      string
	Partition Partition
	Owner     string // the owner's address; "" if no node owns it now
}

func (e *NotOwnerError) Error() string {
	owner := e.Owner
	if owner == "" {
		owner = "no node now"
	}
	return fmt.Sprintf("fanout: user %s: partition %d is owned by %s", e.User, e.Partition, owner)
}

// Unwrap returns ErrNotOwner.
func (e *NotOwnerError) Unwrap() error { return ErrNotOwner }

// notOwner returns the error for user, whose partition node owns.
func notOwner(user, node string) error {
	return &NotOwnerError{User: user, Partition: PartitionOf(user), Owner: node}
}
