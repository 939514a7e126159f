package fanout

import "github.com/dingmq/ding/engine"

// Broker carries users' durable stream entries from the node that owns
// each user's stream (Ownership) to the nodes where that user's devices
// are attached, and there into the local hub. Its publish side is called
// by the Publisher on the engine's publish loop; its subscribe side is
// the Receiver it was made with, which it gives every entry published for
// a user with a device on this node.
//
// A Broker never has to be reliable: the entries are durable before
// Publish sees them, and a device that misses some (lost, late, out of
// order) sees a gap and catches up from the store. It must not block the
// publish loop to deliver more reliably.
//
// In process it is LocalBroker. In a cluster it would send to the nodes
// that have the user's devices (from their presence, or from
// subscriptions they make on DeviceHook events) and give what it receives
// to its Receiver on a goroutine of its own.
type Broker interface {
	// Publish hands user's new entries, in sequence order, to every node
	// where user may have a device attached; each such node's broker
	// gives them to its Receiver. It is called from one goroutine (the
	// publish loop), once per user and committed batch: calls never
	// overlap, and a user's calls come in sequence order. It must not
	// block (every later batch waits behind it): it delivers or queues
	// and returns. It must not modify entries; it may keep them.
	//
	// It returns an error wrapping ErrNotOwner, and publishes nothing, if
	// this node does not own user's stream. Any other error means some
	// node may not have the entries; there is nothing to retry (its
	// devices catch up from the store), so the caller counts it.
	Publish(user string, entries []engine.Entry) error
}

// Receiver is the subscribe side of a Broker: it takes a user's entries
// for the devices attached to this node. *Hub implements it.
type Receiver interface {
	// Deliver queues entries, in sequence order, on user's devices here,
	// and returns without waiting for any write. A broker calls it for a
	// user from one goroutine at a time, in sequence order; the hub
	// tolerates loss and reordering (a device that sees a gap catches up
	// from the store) but never sends out of order. It must not modify
	// entries; it does not keep them.
	Deliver(user string, entries []engine.Entry)
}

// LocalBroker is the Broker of a node that runs alone: Publish gives the
// entries of a local stream straight to the Receiver, on the caller's
// goroutine, with no copy, queue or goroutine of its own. It is the hot
// path of every delivery (BenchmarkDeliver): with SingleNode ownership it
// does not ask who owns the stream (every stream is local), so it adds
// one call to the hub's delivery (and the Publisher one more).
type LocalBroker struct {
	recv Receiver
	own  Ownership // nil for SingleNode: every stream is local
}

var _ Broker = (*LocalBroker)(nil)

// NewLocalBroker returns a broker delivering to r the entries of the
// streams own says are local; nil own means SingleNode (all of them).
func NewLocalBroker(r Receiver, own Ownership) *LocalBroker {
	if _, all := own.(SingleNode); all {
		own = nil
	}
	return &LocalBroker{recv: r, own: own}
}

// Publish implements Broker.
func (b *LocalBroker) Publish(user string, entries []engine.Entry) error {
	if b.own != nil {
		if node, local := b.own.Owner(user); !local {
			return notOwner(user, node)
		}
	}
	b.recv.Deliver(user, entries)
	return nil
}
