package fanout

import "github.com/dingmq/ding/engine"

// OfflineHook acts on entries for a user's devices that are not connected
// (push notifications through APNs or FCM). The Publisher calls every
// hook it was given; with none, publishing costs nothing more.
//
// A hook that also wants to know when devices attach and detach (to stop
// pushing to a device that just connected, say) implements DeviceHook too
// and is given to the hub as well (HubConfig.DeviceHooks).
type OfflineHook interface {
	// Appended is told, once per user and committed batch, which entries
	// were appended to user's stream (in sequence order) and which of
	// user's devices are connected now (Presence.Devices: nil if none,
	// in no order). It runs after the entries were published: on a
	// single node, after they were queued on every connected device (a
	// connected device may still be catching up, and gets them from the
	// store then). It runs only on the node that owns user's stream.
	//
	// It is called on the engine's publish loop (one goroutine, calls
	// never overlap), so it must not block: it hands what it needs to a
	// goroutine of its own through a bounded queue, counts what does not
	// fit, and returns. It must not modify entries or connected; it may
	// keep both. It returns no error: the entries are durable whatever it
	// does, and a hook retries or gives up by its own policy.
	Appended(user string, entries []engine.Entry, connected []string)
}

// DeviceHook is told when a device attaches to this node's hub and when
// it leaves it: the bookkeeping for a cluster's presence (write the
// device to Redis with a TTL, then remove it), a cluster's broker
// (subscribe to a user's entries while this node has one of their
// devices), or a push module.
//
// Its methods are called with the registry shard of user locked (so that
// a device's events come in the order the registry changed), from any
// goroutine: they must not block and must not call the hub. Hand off and
// return.
type DeviceHook interface {
	// Attached: device of user attached (Hub.Attach, Hub.Join). Sent
	// again when the same device attaches again and replaces its old
	// connection, which then leaves with no Detached.
	Attached(user, device string)
	// Detached: device of user left the hub (Device.Detach, Hub.Kick):
	// once per attachment, except one replaced by the same device (which
	// stays attached).
	Detached(user, device string)
}
