// Package fanout decides who gets a message and pushes durable stream
// entries to every live device.
//
// The Directory is the address book: users, the tree of departments,
// ad-hoc groups, and an audit log of every change to them. It implements
// engine.Recipients and engine.Contacts, and expands recipient targets:
//
//	all          every active user
//	dept:ID      the active users of department ID and of every department under it
//	group:ID     the members of ad-hoc group ID
//	ID           the user ID, if active
//
// Derived groups (all, dept:) are computed from the users and the tree, so
// they are always consistent; Expand returns sorted, de-duplicated ids.
// Removing a user (offboarding) keeps their record with status "removed",
// takes them out of their department and every group, and makes them an
// unknown recipient. Import applies an HR export (JSON, or CSV with
// department paths) idempotently and reports the difference.
//
//	dir, _ := fanout.OpenDirectory(st, nil)
//	dir.PutDepartment(fanout.Department{ID: "eng", Name: "Engineering"}, fanout.Actor{Name: "admin"})
//	dir.PutUserAs(fanout.User{ID: "ana", Name: "Ana", Department: "eng"}, fanout.Actor{Name: "admin"})
//	ids, _ := dir.Expand("dept:eng") // [ana]
//
// # Directory keys
//
// The directory owns engine.PrefixDirectory ('u'); the next byte says
// what the record is. Ids are engine.ValidName, so they hold no 0x00;
// integers are big-endian so that keys sort numerically.
//
//	user        'u' 'u' | user id        -> JSON User (status active or removed)
//	department  'u' 'd' | department id  -> JSON Department {id, name, parent}
//	group       'u' 'g' | group id       -> JSON Group {id, name, members (sorted)}
//	audit       'u' 'a' | seq (8)        -> JSON AuditEntry {seq, at, actor, role, source, action, target, detail, prev, hash}
//	admin       'u' 'm' | admin name     -> JSON Admin {name, role, dept, status, gen, expires, ...}
//
// Admins (admin.go) are the named holders of admin tokens: the directory
// keeps each one's role, department and the generation its token must
// carry (never the token), so that the admin API checks a token against
// memory, and a revocation is one audited change like any other.
//
// OpenDirectory loads users, departments, groups and admins into memory
// (one scan each) and finds the last audit seq and hash with one Last; the
// audit log is read from the store only by Audit and VerifyAudit. Every
// change, its derived changes (a removed user leaving groups) and its
// audit entries are one synced batch.
//
// # The audit chain
//
// Each audit entry names its actor: the admin's name and role, and the
// address of the HTTP peer that asked (Actor). Entries are chained: an
// entry's hash covers its contents and the hash of the entry before, so
// that changing, removing or reordering one breaks the chain there.
//
//	hash(n) = SHA-256( hash(n-1) (32) | canonical(entry n) )
//	canonical = 0x01 | seq (8) | at, Unix ns (8) | actor | role | source | action | target | detail
//	            each string: uvarint length | UTF-8 bytes
//
// Prev and Hash are stored in the entry's JSON, hex, in the same write as
// the entry. The chain starts at the first entry written with a hash (its
// prev is 32 zero bytes, the genesis): entries written before this version
// have no hash, are read as before and are covered by nothing;
// VerifyAudit reports where the chain starts (first_hashed_seq). After it
// starts, an entry without a hash is a break.
//
// The hashes are keyed by nothing: someone who can write the store can
// rewrite every entry from one on and recompute the chain, or remove
// entries from its end, and the chain still holds. What catches that is a
// head hash kept outside the server (VerifyAudit's expect, `dingctl audit
// verify --expect`): every entry up to it is bound by it, and a log that
// lost its tail no longer has it.
//
// # The delivery path
//
// The engine hands each user's durable entries to its Sink, the
// Publisher, on its publish loop: once per user and committed batch (an
// announcement to 100k users is 100k calls), in sequence order, never
// overlapping. The path is built from small interfaces so that a cluster
// plugs in without changing it (DESIGN.md, Cluster mode):
//
//	engine publish loop
//	  │ engine.Sink.Deliver(user, entries)
//	  ▼
//	Publisher ──────────────────────────────┐
//	  │ 1. Broker.Publish(user, entries)     │ 2. only if there are hooks (and
//	  ▼                                      │    user's stream is local):
//	LocalBroker                              │    connected := Presence.Devices(user)
//	  │ Ownership.Owner(user) local?         │    each OfflineHook.Appended(user,
//	  │ (SingleNode is not asked)            │      entries, connected)
//	  │ no: ErrNotOwner, nothing sent        ▼
//	  │ yes: Receiver.Deliver, on this     the hook hands off to its own
//	  │ goroutine (no copy, no queue)      goroutine (push) and returns
//	  ▼
//	Hub.Deliver: user's shard (read lock) → user's devices
//	  │ Device.push (Device.mu): encode once per entry, skip what was
//	  │ sent, a gap sends the device to catch-up
//	  ▼
//	Endpoint.Send: queue and coalesce; the connection writes
//
// On one node (internal/node): Ownership is SingleNode (every partition
// is local), the Broker is a LocalBroker delivering into the hub, and the
// hub's registry is the Presence (engine.Presence orders a fanout's
// online users first; the admin API lists connected devices). In a
// cluster: users hash into Partitions (PartitionOf: FNV-1a, fixed, so
// changing it is a data migration), each owned by one node; a Broker
// carries entries to the nodes with the user's devices and hands them to
// their hubs; Presence lives in Redis with a TTL, read through a local
// view and written on the hub's DeviceHook events; Hub.Join refuses a
// device of a user this node does not own with a *NotOwnerError naming
// the owner (ErrNotOwner), so the edge can redirect it.
//
// Nothing on the path blocks: the broker delivers or queues, the hub
// queues frames on endpoints, hooks hand off. Nothing on it needs to be
// reliable either: every entry is durable before the Publisher sees it,
// and a device that misses one finds it in the store (below). Hooks run
// only on the node that owns the stream, after publishing; with no hooks
// the Publisher only publishes.
//
// The Hub keeps every device attached to this node in a 64-way sharded
// registry, encodes each entry once for all of a user's devices, and
// writes it to each device's Endpoint, which queues and coalesces
// writes. It tells its DeviceHooks when a device attaches and leaves.
//
// # Delivery to one device
//
// A Device has one number that matters: next, the sequence number it needs
// next. It is in one of two modes:
//
//   - live: the broker calls Deliver; an entry with Seq == next is
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
// Lock order: shard.mu, then Device.mu, then the endpoint's own lock;
// DeviceHook methods run under shard.mu and take only their own locks.
// The shard lock is never held while sending, and no lock is held while
// the Publisher calls the broker or the hooks.
package fanout
