package fanout

import "github.com/dingmq/ding/engine"

// Presence says which of a user's devices are connected, on any node. The
// engine orders a big fanout's online recipients first with it
// (engine.Presence), the admin API lists connected devices with it, and
// the Publisher tells offline hooks which devices are connected.
//
// In process it is the hub's registry (*Hub): a device is connected from
// Attach until Detach or Kick (or until its endpoint closes itself). Its
// bookkeeping is the registry itself. In a cluster, presence would live
// in Redis with a TTL, written on the hub's DeviceHook events and
// refreshed by each node for its own devices, and read through a local
// view, because of the calls on the commit and publish loops (below).
type Presence interface {
	// Online reports whether user has at least one connected device. It
	// is called concurrently, including on the engine's commit loop once
	// per recipient of a big fanout, so it must not block: it answers
	// from memory. It has no error: a view that may be stale answers
	// from what it has (the answer orders deliveries; it decides nothing
	// that a wrong answer could lose).
	Online(user string) bool
	// Devices returns the ids of user's connected devices, in no
	// particular order, or nil if there are none. The caller owns the
	// slice. It is called concurrently, including on the publish loop
	// once per user and batch when offline hooks are set, so like Online
	// it answers from memory and must not block.
	Devices(user string) []string
}

var _ engine.Presence = Presence(nil)
