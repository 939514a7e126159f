// Package relay moves relay records between the engines of different
// partitions: the pump of cluster/PARTITIONS.md (stage 4, one node with P
// partitions in process).
//
// An engine with a Placement (engine/relay.go) writes what one of its ops
// owes a user of another partition into its outbox, in the same batch as
// the op. A Pump runs one goroutine per (origin, destination) link, so an
// origin's destinations are served in parallel and a slow one holds up
// only its own traffic. Woken by the origin's OutboxReady (and once at
// start, to drain what a restart left: OutboxDests), a link moves its
// records in three steps:
//
//	b, _ := origin.Outbox(to, acked, Batch) // durable records after acked, oldest first
//	through, _ := dest.ApplyRelay(ctx, b)    // one op, answered once durable at dest
//	origin.AckRelay(ctx, to, through)         // deletes them from the outbox
//
// # Why every recipient gets each record exactly once
//
// Only durable records leave: Outbox never reads past the last record the
// origin's store made durable (with a replicated store, held by the
// standby), so nothing a crash could take back is ever delivered. A
// record leaves the outbox only when AckRelay deletes it, and AckRelay is
// called only with what ApplyRelay answered, which it answers only once
// the destination's batch is durable. So every record is delivered at
// least once, across crashes of either side and a Close of the pump at
// any point: what was not acknowledged is read again (the pump starts
// from acked = 0, the oldest record the outbox still holds).
//
// ApplyRelay is idempotent: it keeps, in the same batch as what it
// applies, the last seq applied per origin, skips records at or below it
// and deduplicates messages by id (a user holding the message's receipt
// is skipped). At-least-once transport plus idempotent apply is an
// exactly-once effect: each recipient's stream holds each message once.
//
// A destination that answers ErrRelayGap (its watermark is below the
// batch's first record: a resend from a stale position) is sent the
// outbox again from its oldest record, which it skips up to its
// watermark. Any other failure (of Outbox, ApplyRelay or AckRelay) is
// retried after a capped exponential backoff per destination, with the
// same records, so a destination that is down holds up only its own
// traffic. Wake(to) ends the backoff of the links to partition to: the
// caller learned that the partition has an owner serving it again; a
// batch in flight to it is abandoned and sent again at once (the node it
// went to may be frozen, not dead, and would hold the link until the
// request timed out).
// Records for a partition the pump has no engine for stay in the
// outbox (counted and logged).
//
// Metrics (on Config.Registerer, labelled from and to):
//
//	ding_relay_records_total          records the destination holds and the origin let go
//	ding_relay_apply_errors_total     ApplyRelay failures, by reason
//	ding_relay_origin_errors_total    Outbox, AckRelay and OutboxDests failures, by step
//	ding_relay_backlog_records        durable records in the outbox, not yet acknowledged
//
// Between nodes (stage 5b, http.go) the loop is the same: HTTPDest is a
// Dest that posts the batch, in engine.EncodeRelayBatch's wire form with
// secret messages' keys sealed by the cluster secret, to the node that
// owns the destination (POST /cluster/relay), whose Handler applies it
// to its engine and answers with the seq applied through; a node that
// does not own the partition answers wrong_partition, and the pump asks
// again, of the owner it resolves then: after its backoff, or at once
// when the node hears that the partition's new owner serves it (the
// coordinator's announcement, cluster.Announcer; internal/node wakes the
// pump then).
package relay
