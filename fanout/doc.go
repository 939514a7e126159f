// Package fanout decides who gets a message and pushes durable stream
// entries to every live device.
//
// The Directory holds the users (and later departments and groups) and
// implements engine.Recipients. The Hub implements engine.Sink: it keeps
// every attached device of every user in a 64-way sharded registry, encodes
// each entry once for all of a user's devices, and writes it to each
// device's Endpoint, which queues and coalesces writes.
//
// # Delivery to one device
//
// A Device has one number that matters: next, the sequence number it needs
// next. It is in one of two modes:
//
//   - live: the commit loop calls Deliver; an entry with Seq == next is
//     sent at once, one already sent is skipped, and a gap (Seq > next)
//     switches the device to catch-up.
//   - catch-up: a worker reads the stream from the store (engine.Range) in
//     chunks from next and sends them; live pushes only set "behind". When
//     a chunk comes back short and nothing arrived meanwhile, the device
//     returns to live. A worker pauses a device whose endpoint has more
//     than it has room for (Endpoint.Room) and resumes it when the endpoint drains,
//     so catching up never overflows a connection; devices take turns, one
//     chunk each, so one huge backlog does not starve the others.
//
// A new device starts in catch-up from its resume point, so reconnects and
// restarts use the same path. Because every entry is durable before
// Deliver sees it, a device that misses a push (slow, disconnected, in
// catch-up) always finds it in the store.
//
// Lock order: shard.mu, then Device.mu, then the endpoint's own lock. The
// shard lock is never held while sending.
package fanout
