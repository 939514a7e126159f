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
//	dir.PutDepartment(fanout.Department{ID: "eng", Name: "Engineering"}, "admin")
//	dir.PutUserAs(fanout.User{ID: "ana", Name: "Ana", Department: "eng"}, "admin")
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
//	audit       'u' 'a' | seq (8)        -> JSON AuditEntry {seq, at, actor, action, target, detail}
//
// OpenDirectory loads users, departments and groups into memory (one scan
// each) and finds the last audit seq with one Last; the audit log is read
// from the store only by Audit. Every change, its derived changes (a
// removed user leaving groups) and its audit entries are one synced batch.
//
// The Hub implements engine.Sink: it keeps
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
