package engine

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// Relay between partitions.
//
// With Config.Placement set, users are spread over partitions, one engine
// (and one store) each; a user is local to the engine of their partition.
// A message's origin is its sender's partition: it holds the message, its
// DING state, its announcement counts and the sender's view of the
// receipts. What a local op writes for a user of another partition goes
// to that partition through this engine's outbox, with no per-feature
// code:
//
//   - A submit divides its recipients (applySubmit), and so does a DING
//     (applyDing): local users take the usual path (fanout, or a fanout
//     job for a message to many), and each other partition gets one
//     RelayMessage record naming its users, written in the same batch as
//     the message. An announcement to 100,000 users on 3 partitions
//     writes 2 records, and each destination fans out to its own users
//     (with its own fanout job when they are more than
//     Config.FanoutChunk).
//   - appendEntry diverts any other entry for a user of another partition
//     (a DING reminder, a confirmation's event for the recipient's
//     devices, a secret chat's screenshot event, a burn) into a
//     RelayEntry record; a burn's applies there as a burn of that
//     partition's copy (relay_secret.go). A message entry for one
//     is an internal error: messages reach other partitions only as
//     RelayMessage records.
//   - Receipts come back as RelayReceipt records. Where the recipient is,
//     applyAck, applyRead, confirmMessage and a DING's confirmation
//     (confirmRemoteDing) of a message whose origin is another partition
//     move the recipient's receipt there (it answers ErrNotRecipient
//     checks, and the reader's own devices get their event there), and
//     write, per origin, one record naming the messages moved; they do
//     not count, tell the sender or touch a DING. The origin applies it
//     (applyRelayReceipt) as the op would have on a single engine: its
//     receipt, a mirror moved only forward, so a record applied again,
//     late or out of order changes nothing; the announcement's counts and
//     the daily rollups (counted once, at the origin); the sender's
//     receipt event; and the DING's ledger (delivered per device, read)
//     and state (a read stops a DING until=read; a confirmation carries
//     its answer, checked where it was made against the message's
//     choices). So a DING's timers and escalation stay at its home, the
//     sender's partition, and a read or confirmation anywhere stops them
//     once relayed back.
//   - The origin's view of remote recipients: AckRelay, which is told the
//     destination holds a RelayMessage, writes a receipt in state sent
//     for each of its users (unless a RelayReceipt made one first), so
//     Receipts and Stats list them; until then Stats counts the names in
//     the outbox as pending (outboxAudience, a scan of the outbox, which
//     holds only what is not yet acknowledged). PendingFanout still
//     counts this engine's own fanout only. This was chosen over writing
//     the remote receipts with the message: the origin then says "sent"
//     only for what another partition holds durably.
//
// Records are numbered per destination from 1 ('k' "relay" | to holds the
// last seq allocated: records are deleted once acknowledged, so the
// outbox's last key cannot say it). Only durable records leave: the
// overlay's durable hook publishes each destination's last durable seq
// (as streamTx publishes heads), Outbox never reads past it, and
// OutboxReady fires once a batch that wrote records is durable. With a
// replicated store, durable means held by the standby, so nothing a
// deposed owner did not acknowledge is relayed.
//
// A pump (not in this package; stage 4 runs one per engine in process,
// stage 5 one per pair of partitions over HTTP) moves them:
//
//	b, _ := a.Outbox(to, 0, 256)           // durable records, oldest first
//	through, err := dest.ApplyRelay(ctx, b) // durable at the destination
//	err = a.AckRelay(ctx, to, through)      // deletes them here
//
// ApplyRelay is one op, and idempotent: records at or below the origin's
// watermark ('I' | from, written in the same batch) are skipped, a batch
// that starts above watermark+1 is refused (ErrRelayGap) and one for
// another partition too (ErrWrongPartition), both writing nothing. A
// message is further deduplicated by id: a user who has its receipt is
// skipped, a message whose fanout job is running is skipped, and its
// record is written only if absent. Users who are not local or no longer
// active are skipped. A receipt is deduplicated by its mirror's state. So
// a crash on either side leads to a resend and then a dedupe.
//
// Limits accepted in stage 2 (lifted by the stages named; see the design
// of issue 14):
//
//   - A DING confirmed at its home (by SMS, in a call) for a recipient of
//     another partition goes back to that partition as a RelayReceipt
//     too, where it only moves the recipient's receipt (followReceipt):
//     until it is applied there, an in-app confirmation there is accepted
//     and ignored at the home, which keeps the first answer. A
//     confirmation repeated in the recipient's partition answers Already
//     without the answer, which only the home knows.
//   - A DING delivered record repeated under a new seq (never by the
//     pump: the watermark skips resends) records its delivery in the
//     ledger again; receipts and counts do not move.
//   - Offboard stops the DINGs pending for a user only on the engine it
//     runs on; those whose home is another partition stop when that
//     engine's Forget applies the removal (change.go). Calling Forget on
//     every engine, and replaying the directory's removals from
//     ForgottenThrough, is the node's job (stage 4).
//   - Stats reads the whole outbox for its pending names: cheap while the
//     pump keeps up, linear in the backlog otherwise.
//   - Retention where a DING's recipient is does not know the DING's
//     state, which only its home holds: it takes a DING of another
//     partition for settled, so one still escalating past the retention
//     window may be trimmed from the recipient's stream there (the home
//     keeps the message, its state and its ledger). Must-confirm
//     announcements are kept on both sides, each by its own receipts.
//   - Secret chats work across partitions (stage 3, relay_secret.go):
//     each side keeps the chat and its own copy of each message and
//     burns it at the deadlines both compute. Its limits: the key rides
//     in RelaySecret.Key in memory, which is fine in process (stage 4);
//     a frame that leaves the process (stage 5b's EncodeRelayBatch) must
//     seal it with cluster.KeyCodec, not built yet. The origin keeps the
//     key of a message it relayed until the message burns (erasing it on
//     AckRelay would need the state to say so, or the next start's
//     reconcileSecrets takes it for a lost key). The origin's read burn
//     is armed when the receipt arrives, so its copy outlives the
//     reader's by the relay's delay at most; should its unread deadline
//     pass first, it burns as unread and the sender is not told of the
//     read. A burn only one side decides (a level-3 restart, lost keys,
//     offboarding) reaches the other side when the pump relays it; until
//     then that copy lives to its own deadlines. The destination keeps no
//     tombstone of a burned message: the watermark is what stops a record
//     applied again (the pump never sends one under a new seq).
//     CreateChat runs on the creator's partition and Submit in a chat on
//     the sender's (ErrCrossPartition otherwise).
//   - A user's partition must not change while records for them are in
//     flight: a record for a user who is not local at the destination
//     is dropped there.
//   - Retention keeps a message while an outbox record names it, so
//     Outbox finds it; should it be gone anyway (a lost record), Outbox
//     logs it and returns the record with Msg nil, which the destination
//     skips. A receipt for a message the origin no longer holds is
//     skipped.
//   - An id-addressed request (stats, DING status) must be sent to the
//     origin: ids name it (HomeOf), and routing by it is the caller's
//     job. A message, DING or announcement must be submitted at its
//     sender's partition (ErrWrongPartition otherwise).
//
// Keys are drawn in the package doc; the record's layout is in codec.go.

// RelayKind says what a relay record carries.
type RelayKind uint8

const (
	// RelayMessage: a message for some of the destination's users.
	RelayMessage RelayKind = 1
	// RelayEntry: one stream entry (anything but a message: a receipt
	// event, a DING event, a burn, a secret chat event) for one of the
	// destination's users.
	RelayEntry RelayKind = 2
	// RelayReceipt: a recipient's receipt for messages whose origin is the
	// destination moved forward (delivered, read, confirmed) here, where
	// the recipient is local (stage 2).
	RelayReceipt RelayKind = 3
	// RelayChat: a secret chat one of whose members is the destination's
	// (stage 3; relay_secret.go).
	RelayChat RelayKind = 4
)

// RelayRecord is one record of an outbox.
type RelayRecord struct {
	Seq  uint64 // from 1 per (origin, destination), gap-free
	Kind RelayKind
	// Msg is, for a RelayMessage, the stored message, body included; nil
	// if it was lost before it was relayed (the destination skips it).
	// Shared: it must not be modified.
	Msg *Message
	// Users are, for a RelayMessage, its recipients in the destination's
	// partition, sorted.
	Users []string
	// User and Entry are, for a RelayEntry, the stream and what to append
	// to it (any kind but EntryMessage; its Seq is ignored). User is, for
	// a RelayReceipt, the recipient.
	User  string
	Entry Entry
	// IDs, State, At, Device and Answer are, for a RelayReceipt: the
	// messages (all of the destination's origin), the state the
	// recipient's receipts reached at At (delivered, read or confirmed;
	// At is kept to the millisecond, as receipts are), the device whose
	// acknowledgement made them delivered (a DING's ledger records it),
	// and a DING confirmation's answer (1-based; 0 for none).
	IDs    []ID
	State  State
	At     time.Time
	Device string
	Answer int
	// Chat is, for a RelayChat, the chat record (pseudonyms included).
	// Shared: it must not be modified.
	Chat *Chat
	// Secret is, for a RelayMessage of a secret chat, its key and
	// deadline, or that it burned (relay_secret.go).
	Secret *RelaySecret
}

// RelayBatch is consecutive records of From's outbox for To.
type RelayBatch struct {
	From, To uint32
	Records  []RelayRecord
}

var (
	// ErrWrongPartition is returned by ApplyRelay for a batch whose To is
	// not this engine's partition (or to an engine without a Placement):
	// the sender's idea of who owns To is stale. Nothing was written;
	// retry with the owner.
	ErrWrongPartition = NewError(CodeUnavailable, "engine: relay for another partition")
	// ErrRelayGap is returned (wrapped, with the watermark) by ApplyRelay
	// for a batch whose first new record is not the one after the last
	// applied from its origin. Nothing was written; resend from the
	// watermark.
	ErrRelayGap = NewError(CodeUnavailable, "engine: relay records missing before this batch")
	// ErrBadRelay is returned by ApplyRelay for a malformed batch (records
	// not consecutive, an unknown kind, a message entry, a bad name) and
	// by AckRelay for an acknowledgement beyond the durable records.
	// Nothing was written; not safe to retry as is.
	ErrBadRelay = NewError(CodeBadRequest, "engine: malformed relay")
	// ErrCrossPartition is returned by CreateChat, and by Submit in a
	// secret chat, on an engine that is not the creator's (the sender's)
	// partition: a chat is created, and a message sealed, where its
	// creator (its sender) is. Not safe to retry on the same engine.
	ErrCrossPartition = NewError(CodeBadRequest, "engine: not possible on this partition")
)

var relayCounterPrefix = []byte{prefixCounter, 'r', 'e', 'l', 'a', 'y'}

func relayCounterKey(to uint32) []byte {
	return binary.BigEndian.AppendUint32(append([]byte(nil), relayCounterPrefix...), to)
}

func outboxPrefix(to uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{prefixOutbox}, to)
}

func outboxKey(to uint32, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(outboxPrefix(to), seq)
}

func relayedKey(from uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{prefixRelayed}, from)
}

// remote reports whether user belongs to another partition, and which.
// Without a Placement every user is local: one nil check.
func (e *Engine) remote(user string) (uint32, bool) {
	if e.cfg.Placement == nil {
		return 0, false
	}
	p := e.cfg.Placement(user)
	return p, p != e.cfg.Partition
}

// checkHome refuses a message, DING or announcement from a sender of
// another partition: its home is the sender's partition (receipts, counts
// and the DING's state go back there), so it must be submitted there.
func (e *Engine) checkHome(sender string) error {
	if p, other := e.remote(sender); other {
		return fmt.Errorf("%w: sender %q belongs to partition %d, not %d", ErrWrongPartition, sender, p, e.cfg.Partition)
	}
	return nil
}

// splitRecipients divides a message's recipients into this partition's
// and, per other partition, theirs (each in the order given).
func (e *Engine) splitRecipients(users []string) (local []string, remote map[uint32][]string) {
	if e.cfg.Placement == nil {
		return users, nil
	}
	for _, u := range users {
		p := e.cfg.Placement(u)
		if p == e.cfg.Partition {
			local = append(local, u)
			continue
		}
		if remote == nil {
			remote = map[uint32][]string{}
		}
		remote[p] = append(remote[p], u)
	}
	return local, remote
}

// loadRelayCounters reads, at Open, the last outbox seq of each
// destination: what the store holds then is durable.
func (e *Engine) loadRelayCounters() error {
	e.relayNext, e.outDurable, e.outTrimmed = map[uint32]uint64{}, map[uint32]uint64{}, map[uint32]uint64{}
	var derr error
	err := e.st.Scan(relayCounterPrefix, prefixEnd(relayCounterPrefix), func(k, v []byte) bool {
		seq, err := parseU64(v)
		if err != nil || len(k) != len(relayCounterPrefix)+4 {
			derr = fmt.Errorf("relay counter %x: %w", k, ErrCorrupt)
			return false
		}
		to := binary.BigEndian.Uint32(k[len(relayCounterPrefix):])
		e.relayNext[to], e.outDurable[to] = seq, seq
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return fmt.Errorf("engine: relay counters: %w", err)
	}
	// How far each destination's records are deleted: to the one before
	// the first left, or, with none left, every one allocated.
	for to, last := range e.relayNext {
		trimmed := last
		err := e.st.Scan(outboxKey(to, 0), prefixEnd(outboxPrefix(to)), func(k, _ []byte) bool {
			if len(k) == 13 {
				trimmed = binary.BigEndian.Uint64(k[5:]) - 1
			}
			return false
		})
		if err != nil {
			return fmt.Errorf("engine: outbox for partition %d: %w", to, err)
		}
		e.outTrimmed[to] = trimmed
	}
	return nil
}

// relayTx is the relay's per-batch overlay. Its maps are made on first
// use: a batch without relay records costs a few empty-map loops.
type relayTx struct {
	outSeqs   map[uint32]uint64 // the last outbox seq this batch allocated, per destination
	trimmed   map[uint32]uint64 // the seq through which this batch deleted the outbox, per destination
	relayIn   map[uint32]uint64 // the watermark this batch wrote, per origin
	relayMsgs map[ID]bool       // messages this batch's relays stored
	relaySeen map[string]bool   // receipt keys (message, user) this batch's relays wrote
	relayJobs map[ID]bool       // fanout jobs this batch's relays started
}

// flush writes each destination's counter once per batch.
func (r *relayTx) flush(c *txn) error {
	for to, seq := range r.outSeqs {
		c.batch.Set(relayCounterKey(to), u64(seq))
	}
	return nil
}

// applied: later batches number their records after this one's.
func (r *relayTx) applied(c *txn) {
	for to, seq := range r.outSeqs {
		c.e.relayNext[to] = seq
	}
	if len(r.trimmed) > 0 {
		c.e.outMu.Lock()
		for to, seq := range r.trimmed {
			c.e.outTrimmed[to] = seq
		}
		c.e.outMu.Unlock()
	}
}

// durable lets Outbox read this batch's records.
func (r *relayTx) durable(c *txn) {
	if len(r.outSeqs) == 0 {
		return
	}
	c.e.outMu.Lock()
	for to, seq := range r.outSeqs {
		c.e.outDurable[to] = seq
	}
	c.e.outMu.Unlock()
}

// published wakes the pump.
func (r *relayTx) published(c *txn) {
	if len(r.outSeqs) > 0 {
		select {
		case c.e.outboxReady <- struct{}{}:
		default:
		}
	}
}

func (r *relayTx) reset() {
	clear(r.outSeqs)
	clear(r.trimmed)
	clear(r.relayIn)
	clear(r.relayMsgs)
	clear(r.relaySeen)
	clear(r.relayJobs)
}

// relayRecord writes rec to the outbox for partition to, at the next seq.
func (c *txn) relayRecord(to uint32, rec *RelayRecord) {
	seq, ok := c.outSeqs[to]
	if !ok {
		seq = c.e.relayNext[to]
	}
	seq++
	if c.outSeqs == nil {
		c.outSeqs = map[uint32]uint64{}
	}
	c.outSeqs[to] = seq
	c.batch.Set(outboxKey(to, seq), encodeRelayRecord(rec))
}

// relayEntry is appendEntry for a user of partition to.
func (c *txn) relayEntry(to uint32, user string, ent Entry) error {
	if ent.Kind == EntryMessage {
		return abort(fmt.Errorf("engine: a message entry for %q of partition %d: messages are relayed whole", user, to))
	}
	c.relayRecord(to, &RelayRecord{Kind: RelayEntry, User: user, Entry: ent})
	return nil
}

// Outbox returns up to max durable records for partition to with Seq >
// after, in order (after is the last seq the caller has in flight; 0
// reads from the oldest record not acknowledged). A RelayMessage comes
// with its message loaded (Msg nil, logged, if it is gone). Safe for
// concurrent use; it reads the store, not the commit loop.
func (e *Engine) Outbox(to uint32, after uint64, max int) (RelayBatch, error) {
	b := RelayBatch{From: e.cfg.Partition, To: to}
	e.outMu.RLock()
	durable := e.outDurable[to]
	if t := e.outTrimmed[to]; t > after {
		after = t // the oldest left: no walk over the deleted records' tombstones
	}
	e.outMu.RUnlock()
	if after >= durable || max <= 0 {
		return b, nil
	}
	var ids []ID // per record; zero for entries
	var derr error
	err := e.st.Scan(outboxKey(to, after+1), outboxKey(to, durable+1), func(k, v []byte) bool {
		if len(k) != 13 {
			derr = fmt.Errorf("outbox key %x: %w", k, ErrCorrupt)
			return false
		}
		rec, id, err := decodeRelayRecord(v)
		if err != nil {
			derr = fmt.Errorf("outbox record %d for partition %d: %w", binary.BigEndian.Uint64(k[5:]), to, err)
			return false
		}
		rec.Seq = binary.BigEndian.Uint64(k[5:])
		b.Records = append(b.Records, rec)
		ids = append(ids, id)
		return len(b.Records) < max
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return RelayBatch{}, fmt.Errorf("engine: outbox: %w", err)
	}
	for i := range b.Records {
		r := &b.Records[i]
		if r.Kind != RelayMessage {
			continue
		}
		if r.Secret != nil {
			if err := e.relaySecret(r); err != nil {
				return RelayBatch{}, fmt.Errorf("engine: outbox record %d for partition %d: %w", r.Seq, to, err)
			}
			continue
		}
		m, err := e.Message(ids[i])
		switch {
		case errors.Is(err, ErrNotFound):
			e.log.Error("relay: a message was lost before it was relayed; its record goes without it",
				"message", ids[i].String(), "to", to, "seq", r.Seq)
			continue
		case err != nil:
			return RelayBatch{}, fmt.Errorf("engine: outbox: %w", err)
		case m.Chat != (ID{}):
			// Secret records name their chat (codec.go).
			return RelayBatch{}, fmt.Errorf("engine: outbox record %d for partition %d names secret message %s without its chat: %w", r.Seq, to, m.ID, ErrCorrupt)
		}
		r.Msg = m
	}
	return b, nil
}

// OutboxDests lists, in order, the partitions this engine's outbox holds
// records for (perhaps not yet durable ones): where a pump starting up
// has work.
func (e *Engine) OutboxDests() ([]uint32, error) {
	var out []uint32
	start := []byte{prefixOutbox}
	for {
		var k0 []byte
		err := e.st.Scan(start, []byte{prefixOutbox + 1}, func(k, _ []byte) bool {
			k0 = append([]byte(nil), k...)
			return false
		})
		if err != nil {
			return nil, fmt.Errorf("engine: outbox destinations: %w", err)
		}
		if k0 == nil {
			return out, nil
		}
		if len(k0) < 5 {
			return nil, fmt.Errorf("engine: outbox key %x: %w", k0, ErrCorrupt)
		}
		to := binary.BigEndian.Uint32(k0[1:5])
		out = append(out, to)
		if to == math.MaxUint32 {
			return out, nil
		}
		start = outboxPrefix(to + 1)
	}
}

// OutboxDurable returns the seq of the last durable record for partition
// to (0: none since the outbox began): with the seq a pump has had
// acknowledged, what waits. Safe for concurrent use.
func (e *Engine) OutboxDurable(to uint32) uint64 {
	e.outMu.RLock()
	defer e.outMu.RUnlock()
	return e.outDurable[to]
}

// OutboxReady is signalled (capacity 1, coalesced) after a batch that
// wrote outbox records is durable.
func (e *Engine) OutboxReady() <-chan struct{} { return e.outboxReady }

// AckRelay forgets this engine's records for partition to through seq
// through: the destination holds them durably (ApplyRelay's answer). It
// returns once that is durable. Idempotent; an acknowledgement beyond the
// durable records is refused with ErrBadRelay.
func (e *Engine) AckRelay(ctx context.Context, to uint32, through uint64) error {
	e.outMu.RLock()
	durable := e.outDurable[to]
	e.outMu.RUnlock()
	if through > durable {
		return fmt.Errorf("%w: acknowledgement of partition %d's records through %d, beyond the last durable one, %d", ErrBadRelay, to, through, durable)
	}
	if through == 0 {
		return nil
	}
	// The "sent" receipts are written a chunk of users per op, so that an
	// announcement to many users of another partition does not hold the
	// commit loop (found in review: 100,000 users took 240 ms in one op);
	// the records go in the last op. Until then they stay, so Stats still
	// counts the users not yet mirrored as pending, and an acknowledgement
	// cut short is repeated whole (users with a receipt are skipped).
	var cur mirrorCursor
	for {
		start, next, more := cur, mirrorCursor{}, false
		err := wait(ctx, func(done func(error)) {
			e.enqueueBackground(func(c *txn) error {
				// Run again if the batch is rebuilt: from start each time.
				var err error
				next, more, err = c.mirrorRelayed(to, through, start, e.cfg.FanoutChunk)
				if err != nil {
					return abort(fmt.Errorf("engine: acknowledge partition %d's records: %w", to, err))
				}
				if !more {
					c.trimOutbox(to, through)
				}
				return nil
			}, done, 1, "")
		})
		if err != nil || !more {
			return err
		}
		cur = next
	}
}

// trimOutbox deletes the records for partition to through seq through,
// one point deletion each, from the last ones deleted on. Not one range
// deletion per acknowledgement: Pebble fragments the range deletions of
// its memtable again for every read after a new one, and with one per
// relay batch that was 7-14% of a cluster node's CPU under load
// (bench/RESULTS.md, 2026-12-05). Reading from the first record not
// deleted also keeps the scans off the deleted records' tombstones.
func (c *txn) trimOutbox(to uint32, through uint64) {
	lo := c.relayTrimmed(to)
	if through <= lo {
		return
	}
	for seq := lo + 1; seq <= through; seq++ {
		c.batch.Delete(outboxKey(to, seq))
	}
	if c.trimmed == nil {
		c.trimmed = map[uint32]uint64{}
	}
	c.trimmed[to] = through
}

// relayTrimmed returns the seq through which the outbox for partition to
// is deleted, as of this batch (0 for a destination without records at
// Open: none was deleted since).
func (c *txn) relayTrimmed(to uint32) uint64 {
	if seq, ok := c.trimmed[to]; ok {
		return seq
	}
	return c.e.outTrimmed[to]
}

// mirrorCursor is where an acknowledgement's mirroring goes on: the
// record's seq and the index of its next user.
type mirrorCursor struct {
	seq  uint64
	user int
}

// mirrorRelayed writes, for the users of the RelayMessage records for
// partition to through seq through (those still in the outbox: an
// acknowledgement repeated finds none), a receipt in state sent here, at
// the origin, unless one is there already (a RelayReceipt may come back
// before the acknowledgement): so Receipts and Stats list them as sent.
// Users no longer active are skipped, as the destination skips them.
//
// It looks at no more than limit users, from cursor from, and returns
// where to go on and whether there is more.
func (c *txn) mirrorRelayed(to uint32, through uint64, from mirrorCursor, limit int) (next mirrorCursor, more bool, err error) {
	type rec struct {
		seq   uint64
		id    ID
		users []string
	}
	var recs []rec
	lo := c.relayTrimmed(to)
	var derr error
	err = c.e.st.Scan(outboxKey(to, max(from.seq, lo+1, 1)), outboxKey(to, through+1), func(k, v []byte) bool {
		if len(v) < 2 || v[0] != recordVersion || RelayKind(v[1]) != RelayMessage {
			return true
		}
		r, id, err := decodeRelayRecord(v)
		if err != nil {
			derr = err
			return false
		}
		recs = append(recs, rec{binary.BigEndian.Uint64(k[5:]), id, r.Users})
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return next, false, err
	}
	sent := Receipt{State: StateSent}
	looked := 0
	for _, r := range recs {
		first := 0
		if r.seq == from.seq {
			first = from.user
		}
		if first >= len(r.users) {
			continue
		}
		if looked >= limit {
			return mirrorCursor{r.seq, first}, true, nil
		}
		m, err := c.e.Message(r.id)
		switch {
		case errors.Is(err, ErrNotFound):
			continue // lost before it was relayed (Outbox logged it), or a secret one burned: no receipts for it
		case err != nil:
			return next, false, err
		}
		if m.Chat != (ID{}) {
			// A secret message may have burned earlier in this batch,
			// which the store does not show yet.
			if s, err := c.secret(r.id); err != nil {
				return next, false, err
			} else if s == nil {
				continue
			}
		}
		// The users this op looks at, from first; those with a receipt
		// (here already, or written in this batch) are skipped. The
		// store's are looked up with one iterator (GetMany), in the
		// record's order, which is the keys' (users sorted, one message):
		// an announcement's record names thousands.
		end := min(len(r.users), first+limit-looked)
		looked += end - first
		var keys [][]byte
		var who []string
		for _, u := range r.users[first:end] {
			if !c.active(u) {
				continue
			}
			rk := receiptKey(r.id, u)
			if _, ok := c.receipts[string(rk)]; ok {
				continue
			}
			keys, who = append(keys, rk), append(who, u)
		}
		held := make([]bool, len(keys))
		if len(keys) > 0 {
			if err := c.e.st.GetMany(keys, func(j int, v []byte) { held[j] = v != nil }); err != nil {
				return next, false, err
			}
		}
		for j, rk := range keys {
			if !held[j] {
				sent.User = who[j]
				c.setReceipt(rk, sent)
			}
		}
		if end < len(r.users) {
			return mirrorCursor{r.seq, end}, true, nil
		}
	}
	return next, false, nil
}

// outboxAudience returns the users the outbox names for message id: its
// recipients in other partitions that do not have it yet, as far as this
// origin knows (Stats counts them as pending). It reads the whole outbox,
// which holds only what is not yet acknowledged; without a Placement, it
// reads nothing.
func (e *Engine) outboxAudience(id ID) ([]string, error) {
	if e.cfg.Placement == nil {
		return nil, nil
	}
	var out []string
	var derr error
	err := e.st.Scan([]byte{prefixOutbox}, []byte{prefixOutbox + 1}, func(_, v []byte) bool {
		if len(v) < 18 || v[0] != recordVersion || RelayKind(v[1]) != RelayMessage || ID(v[2:18]) != id {
			return true
		}
		r, _, err := decodeRelayRecord(v)
		if err != nil {
			derr = err
			return false
		}
		out = append(out, r.Users...)
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("engine: outbox audience of %s: %w", id, err)
	}
	return out, nil
}

// originOf returns the partition of message m's origin and whether it is
// another: with no Placement, every message is this engine's own.
func (e *Engine) originOf(m *Message) (uint32, bool) { return e.remote(m.From) }

// receiptsOut gathers, per origin partition, the messages whose receipts
// an op moved here for a user of this partition: what goes back to each
// origin as RelayReceipt records (relayReceipts).
type receiptsOut struct {
	order []uint32
	ids   map[uint32][]ID
}

func (o *receiptsOut) add(p uint32, id ID) {
	if o.ids == nil {
		o.ids = map[uint32][]ID{}
	}
	if _, ok := o.ids[p]; !ok {
		o.order = append(o.order, p)
	}
	o.ids[p] = append(o.ids[p], id)
}

// relayReceipts writes what o gathered as RelayReceipt records, at most
// MaxEventIDs messages each.
func (c *txn) relayReceipts(o *receiptsOut, user string, st State, at time.Time, device string, answer int) {
	for _, p := range o.order {
		ids := o.ids[p]
		for len(ids) > 0 {
			n := min(len(ids), MaxEventIDs)
			c.relayRecord(p, &RelayRecord{Kind: RelayReceipt, User: user, IDs: ids[:n:n], State: st, At: at, Device: device, Answer: answer})
			ids = ids[n:]
		}
	}
}

// mirrorReceipt returns the receipt of id for user as this batch sees it;
// for a user of another partition with none here (its RelayMessage not
// yet acknowledged), a receipt in state sent.
func (c *txn) mirrorReceipt(rk []byte, user string) (Receipt, error) {
	r, err := c.receipt(rk, user)
	if errors.Is(err, store.ErrNotFound) {
		if _, other := c.e.remote(user); other {
			return Receipt{User: user, State: StateSent}, nil
		}
	}
	return r, err
}

// applyRelayReceipt applies, at the origin, a receipt that moved where
// the recipient is: the receipt here (a mirror, moved only forward, so
// a record applied again or late changes nothing), the counts (the
// announcement's, the rollups), the sender's receipt event, and the
// DING's state and ledger, as the op that moved it would have on a
// single engine. Messages gone (retention) or not of this origin are
// skipped; what a single engine would refuse (a confirmation of a
// refused recipient, an answer out of range) is skipped, so that a
// record never fails the batch.
func (c *txn) applyRelayReceipt(r *RelayRecord) error {
	user, at := r.User, r.At
	var senders events
	type dingOp struct {
		id ID
		m  *Message
	}
	var dings []dingOp
	for _, id := range r.IDs {
		m, err := c.e.Message(id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return abort(fmt.Errorf("relayed receipt of %s: %w", id, err))
		}
		rk := receiptKey(id, user)
		if _, other := c.e.originOf(m); other {
			// The origin moved the receipt of a user of this partition
			// (a DING confirmed by SMS or in a call at its home): only
			// the receipt here follows; the origin did the rest.
			if err := c.followReceipt(rk, user, r.State, at); err != nil {
				return abort(fmt.Errorf("relayed receipt of %s: %w", id, err))
			}
			continue
		}
		ding, ann := m.Kind == KindDing, m.Kind == KindAnnouncement
		cur, err := c.mirrorReceipt(rk, user)
		if errors.Is(err, store.ErrNotFound) {
			continue // not a recipient here (removed with the message)
		}
		if err != nil {
			return abort(fmt.Errorf("relayed receipt of %s: %w", id, err))
		}
		// A DING in a delivered record reached r.Device for the first
		// time (applyAck): its ledger says so even when the receipt had
		// moved already, from another device.
		if ding && r.State != StateRead {
			dings = append(dings, dingOp{id, m})
			if r.State == StateConfirmed {
				continue // confirm moves the receipt
			}
		}
		if cur.State >= r.State {
			continue
		}
		var as string // the reader's pseudonym, for a secret message
		if m.Chat != (ID{}) {
			if as, err = c.pseudonymOf(id, user); err != nil {
				return abort(fmt.Errorf("relayed receipt of %s: %w", id, err))
			}
			if as == "" {
				continue // burned here
			}
		}
		wasDelivered, wasRead := !cur.Delivered.IsZero(), !cur.Read.IsZero()
		if !wasDelivered {
			cur.Delivered = at
		}
		switch r.State {
		case StateDelivered:
			if !ding {
				c.countDelivered(id, m.From, ann)
			}
		case StateRead, StateConfirmed:
			if !wasRead {
				cur.Read = at
				if !ding {
					c.countRead(id, m.From, ann, wasDelivered)
				}
				if as != "" {
					// Burns here at the reader's deadline: the read's
					// time, kept to the millisecond on both sides.
					if err := c.secretRead(id, user, at); err != nil {
						return abort(fmt.Errorf("relayed read of %s: %w", id, err))
					}
				}
			}
			if r.State == StateRead && ding {
				dings = append(dings, dingOp{id, m})
			}
		}
		if r.State == StateConfirmed {
			cur.Confirmed = at
			if ann {
				if a := c.announcement(id); a != nil {
					a.Confirmed++
				}
			}
		}
		cur.State = r.State
		c.setReceipt(rk, cur)
		switch {
		case as != "":
			senders.addAs(m.From, as, id)
		case !ann && m.From != user:
			senders.add(m.From, id)
		}
	}
	if err := c.notify(&senders, user, r.State, at); err != nil {
		return err
	}
	for _, d := range dings {
		var err error
		switch r.State {
		case StateDelivered:
			err = c.dingDelivered(d.id, user, r.Device, at)
		case StateRead:
			err = c.dingRead(d.id, user, at)
		case StateConfirmed:
			err = c.relayedConfirm(d.id, user, r.Answer, at)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// followReceipt moves, where the recipient is, their receipt forward to
// st at at, as the message's origin reports it; a receipt already there,
// or none (the message was removed here), is left as it is.
func (c *txn) followReceipt(rk []byte, user string, st State, at time.Time) error {
	r, err := c.receipt(rk, user)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil || r.State >= st {
		return err
	}
	if r.Delivered.IsZero() {
		r.Delivered = at
	}
	if st >= StateRead && r.Read.IsZero() {
		r.Read = at
	}
	if st == StateConfirmed {
		r.Confirmed = at
	}
	r.State = st
	c.setReceipt(rk, r)
	return nil
}

// relayedConfirm applies a DING confirmation made in the recipient's
// partition: as applyConfirmUser would, less what that partition checked
// and answered.
func (c *txn) relayedConfirm(id ID, user string, answer int, at time.Time) error {
	rec, s, idx, err := c.userState(id, user)
	if err != nil || s == nil {
		return err
	}
	if s.Status == StatusRefused || answer > len(rec.Choices) {
		return nil
	}
	return c.confirm(id, idx, s, rec, ChannelInApp, answer, at)
}

// confirmRemoteDing records, where the recipient is, the confirmation of
// a DING whose home is another partition: the recipient's receipt here,
// and a RelayReceipt that the DING's home applies (relayedConfirm: the
// ledger, the end of the escalation, the sender's and the recipient's
// events).
func (c *txn) confirmRemoteDing(user string, m *Message, p uint32, answer int, now time.Time) (ConfirmResult, error) {
	if answer < 0 || answer > len(m.Choices) {
		return ConfirmResult{}, fmt.Errorf("%w: answer %d, the DING has %d choices", ErrBadAnswer, answer, len(m.Choices))
	}
	rk := receiptKey(m.ID, user)
	r, err := c.receipt(rk, user)
	if errors.Is(err, store.ErrNotFound) {
		return ConfirmResult{}, fmt.Errorf("%w: %s", ErrNotRecipient, m.ID)
	}
	if err != nil {
		return ConfirmResult{}, err
	}
	if r.State == StateConfirmed {
		// The answer and channel stand at the DING's home.
		return ConfirmResult{Already: true, By: ChannelInApp, At: r.Confirmed}, nil
	}
	if r.Delivered.IsZero() {
		r.Delivered = now
	}
	if r.Read.IsZero() {
		r.Read = now
	}
	r.State, r.Confirmed = StateConfirmed, now
	c.setReceipt(rk, r)
	c.relayRecord(p, &RelayRecord{Kind: RelayReceipt, User: user, IDs: []ID{m.ID}, State: StateConfirmed, At: now, Answer: answer})
	choice := ""
	if answer > 0 {
		choice = m.Choices[answer-1]
	}
	return ConfirmResult{Answer: answer, Choice: choice, By: ChannelInApp, At: now}, nil
}

// ApplyRelay applies b (from another partition's Outbox; b.To must be this
// engine's partition) in one op and returns, once that is durable, the
// seq through which records from b.From are applied here: the caller
// passes it to the origin's AckRelay. Records already applied are
// skipped, so a resend is harmless; a batch that leaves a gap is refused
// with ErrRelayGap, one for another partition with ErrWrongPartition,
// and a malformed one with ErrBadRelay, each writing nothing. See the
// relay's design comment for what it writes. If ctx ends first, the
// outcome is unknown: resend.
func (e *Engine) ApplyRelay(ctx context.Context, b RelayBatch) (through uint64, err error) {
	if e.cfg.Placement == nil || b.To != e.cfg.Partition {
		return 0, fmt.Errorf("%w: a batch for partition %d reached partition %d", ErrWrongPartition, b.To, e.cfg.Partition)
	}
	weight, err := checkRelayBatch(&b)
	if err != nil {
		return 0, err
	}
	type result struct {
		through uint64
		gap     error
	}
	res := new(result) // written on the commit loop, read once answered
	err = wait(ctx, func(done func(error)) {
		e.enqueueBackground(func(c *txn) error {
			var err error
			res.through, res.gap, err = c.applyRelay(&b)
			return err
		}, done, min(weight, e.cfg.MaxBatch), "")
	})
	if err != nil {
		return 0, err
	}
	return res.through, res.gap
}

// checkRelayBatch checks what ApplyRelay can without the store, and
// returns the batch's weight (its users, at least 1).
func checkRelayBatch(b *RelayBatch) (int, error) {
	if b.From == b.To {
		return 0, fmt.Errorf("%w: from partition %d to itself", ErrBadRelay, b.From)
	}
	weight := 1
	for i := range b.Records {
		r := &b.Records[i]
		switch {
		case r.Seq == 0 || (i > 0 && r.Seq != b.Records[i-1].Seq+1):
			return 0, fmt.Errorf("%w: record %d at seq %d: records must be consecutive from 1", ErrBadRelay, i, r.Seq)
		case r.Kind == RelayMessage:
			if len(r.Users) == 0 {
				return 0, fmt.Errorf("%w: seq %d: a message for no one", ErrBadRelay, r.Seq)
			}
			for _, u := range r.Users {
				if !ValidName(u) {
					return 0, fmt.Errorf("%w: seq %d: user %q", ErrBadRelay, r.Seq, u)
				}
			}
			if (r.Secret != nil && !checkRelaySecret(r)) || (r.Secret == nil && r.Msg != nil && r.Msg.Chat != (ID{})) {
				return 0, fmt.Errorf("%w: seq %d: a secret message without its key, chat or single recipient", ErrBadRelay, r.Seq)
			}
			weight += len(r.Users)
		case r.Kind == RelayChat:
			if r.Chat == nil || r.Chat.ID == (ID{}) || len(r.Chat.Members) != 2 || !ValidName(r.Chat.Members[0].User) || !ValidName(r.Chat.Members[1].User) {
				return 0, fmt.Errorf("%w: seq %d: a chat record", ErrBadRelay, r.Seq)
			}
			weight++
		case r.Kind == RelayEntry:
			ok := ValidName(r.User)
			switch r.Entry.Kind {
			case EntryReceipt:
				ok = ok && r.Entry.Receipt != nil
			case EntryDing:
				ok = ok && r.Entry.Ding != nil
			case EntrySecret:
				ok = ok && r.Entry.Secret != nil
			case EntryBurn:
			default:
				ok = false
			}
			if !ok {
				return 0, fmt.Errorf("%w: seq %d: an entry of kind %d for %q", ErrBadRelay, r.Seq, r.Entry.Kind, r.User)
			}
			weight++
		case r.Kind == RelayReceipt:
			if !ValidName(r.User) || len(r.IDs) == 0 || r.State < StateDelivered || r.State > StateConfirmed || r.Answer < 0 || r.Answer > 9 {
				return 0, fmt.Errorf("%w: seq %d: a receipt of %q in state %d for %d messages", ErrBadRelay, r.Seq, r.User, r.State, len(r.IDs))
			}
			weight += len(r.IDs)
		default:
			return 0, fmt.Errorf("%w: seq %d: kind %d", ErrBadRelay, r.Seq, r.Kind)
		}
	}
	return weight, nil
}

// relayed returns the seq of the last record from partition from applied
// here, as this batch sees it.
func (c *txn) relayed(from uint32) (uint64, error) {
	if seq, ok := c.relayIn[from]; ok {
		return seq, nil
	}
	v, err := c.e.st.Get(relayedKey(from))
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return parseU64(v)
}

// applyRelay applies a checked batch: it returns the watermark, and a gap
// error with nothing written when the batch starts beyond it.
func (c *txn) applyRelay(b *RelayBatch) (through uint64, gap, err error) {
	wm, err := c.relayed(b.From)
	if err != nil {
		return 0, nil, fmt.Errorf("engine: relay watermark of partition %d: %w", b.From, err)
	}
	recs := b.Records
	for len(recs) > 0 && recs[0].Seq <= wm {
		recs = recs[1:]
	}
	if len(recs) == 0 {
		return wm, nil, nil
	}
	if recs[0].Seq != wm+1 {
		return wm, fmt.Errorf("%w: partition %d's records are applied through %d; this batch starts at %d", ErrRelayGap, b.From, wm, recs[0].Seq), nil
	}
	for i := range recs {
		r := &recs[i]
		var err error
		switch r.Kind {
		case RelayMessage:
			if r.Secret != nil {
				err = c.applyRelaySecret(r)
			} else {
				err = c.applyRelayMessage(r)
			}
		case RelayReceipt:
			err = c.applyRelayReceipt(r)
		case RelayChat:
			err = c.applyRelayChat(r.Chat)
		default:
			if r.Entry.Kind == EntryBurn {
				err = c.applyRelayBurn(r.Entry.Burn)
				break
			}
			if _, other := c.e.remote(r.User); !other && c.active(r.User) {
				err = c.appendEntry(r.User, r.Entry)
			}
		}
		if err != nil {
			return 0, nil, err
		}
	}
	last := recs[len(recs)-1].Seq
	c.batch.Set(relayedKey(b.From), u64(last))
	if c.relayIn == nil {
		c.relayIn = map[uint32]uint64{}
	}
	c.relayIn[b.From] = last
	return last, nil, nil
}

// applyRelayMessage delivers a relayed message to its users here who do
// not have it yet.
func (c *txn) applyRelayMessage(r *RelayRecord) error {
	m := r.Msg
	if m == nil {
		return nil // lost at the origin (logged there)
	}
	id := m.ID
	stored := c.relayMsgs[id]
	if !stored {
		switch _, err := c.e.st.Get(messageKey(id)); {
		case err == nil:
			stored = true
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
	}
	if stored {
		// Relayed before: its fanout may be running, and some users
		// may have it.
		if c.relayJobs[id] {
			return nil
		}
		switch _, err := c.e.st.Get(jobKey(id)); {
		case err == nil:
			return nil
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
	}
	users := make([]string, 0, len(r.Users))
	for _, u := range r.Users {
		if _, other := c.e.remote(u); other || !c.active(u) {
			continue
		}
		if stored {
			rk := receiptKey(id, u)
			if c.relaySeen[string(rk)] {
				continue
			}
			switch _, err := c.e.st.Get(rk); {
			case err == nil:
				continue
			case !errors.Is(err, store.ErrNotFound):
				return err
			}
		}
		users = append(users, u)
	}
	if len(users) == 0 {
		return nil
	}
	if !stored {
		c.batch.Set(messageKey(id), encodeMessage(m))
		c.newMsgs = append(c.newMsgs, m)
		if c.relayMsgs == nil {
			c.relayMsgs = map[ID]bool{}
		}
		c.relayMsgs[id] = true
	}
	if len(users) > c.e.cfg.FanoutChunk {
		c.startFanout(id, users)
		if c.relayJobs == nil {
			c.relayJobs = map[ID]bool{}
		}
		c.relayJobs[id] = true
		return nil
	}
	if c.relaySeen == nil {
		c.relaySeen = map[string]bool{}
	}
	for _, u := range users {
		c.relaySeen[string(receiptKey(id, u))] = true
	}
	return c.fanout(m, users)
}

// outboxedMessages returns the messages outbox records name, which
// retention keeps (it reads them before the messages: the outbox only
// shrinks for a message already stored).
func (e *Engine) outboxedMessages() (map[ID]bool, error) {
	var out map[ID]bool
	err := e.st.Scan([]byte{prefixOutbox}, []byte{prefixOutbox + 1}, func(_, v []byte) bool {
		if len(v) >= 18 && v[0] == recordVersion && RelayKind(v[1]) == RelayMessage {
			if out == nil {
				out = map[ID]bool{}
			}
			out[ID(v[2:18])] = true
		}
		return true
	})
	return out, err
}
