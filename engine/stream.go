package engine

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// Streams and receipts.
//
// Each user's stream has two heads. The applied head is the newest seq the
// commit loop has written, in a batch applied to the store but perhaps not
// yet durable; the commit loop sequences from it and keeps it to itself
// (Engine.appliedHeads). The durable head is the newest seq of a durable
// batch (Engine.heads, under headsMu), published by the batch's Durable
// hook before its ops are answered; readers (Head, Range, a device's
// catch-up) are bounded by it, so that no device sees an entry a crash
// could still take back and whose seq would then be reused. The first
// time the commit loop touches a stream it loads its head from the store
// (nothing of it is in flight then, so that is the durable head) and
// caches it as both, before it writes anything to the stream; so a reader
// that finds no cached head may read the store's.

// streamTx is the streams' per-batch overlay: what this batch changed, so
// that its ops see each other.
type streamTx struct {
	heads      map[string]uint64  // provisional head per user
	receipts   map[string]Receipt // by receipt key
	cursors    map[string]uint64  // by cursor key
	watermarks map[string]uint64  // by user
	dedupe     map[string]ID      // by dedupe key
	users      []string           // users with new entries, in first-touch order
	entries    map[string][]Entry // new entries per user
	newMsgs    []*Message         // messages stored, for the cache once durable
}

func newStreamTx() streamTx {
	return streamTx{
		heads: map[string]uint64{}, receipts: map[string]Receipt{}, cursors: map[string]uint64{},
		watermarks: map[string]uint64{}, dedupe: map[string]ID{}, entries: map[string][]Entry{},
	}
}

// applied: later batches sequence after this one's entries.
func (s *streamTx) applied(c *txn) {
	for u, h := range s.heads {
		c.e.appliedHeads[u] = h
	}
}

// durable publishes the heads to readers and caches the new messages.
func (s *streamTx) durable(c *txn) {
	e := c.e
	e.headsMu.Lock()
	for u, h := range s.heads {
		e.heads[u] = h
	}
	e.headsMu.Unlock()
	for _, m := range s.newMsgs {
		e.cache.put(m)
	}
}

// published hands each user's new entries to the Sink, in seq order.
func (s *streamTx) published(c *txn) {
	if sink := c.e.getSink(); sink != nil {
		for _, u := range s.users {
			sink.Deliver(u, s.entries[u])
		}
	}
}

func (s *streamTx) reset() {
	clear(s.heads)
	clear(s.receipts)
	clear(s.cursors)
	clear(s.watermarks)
	clear(s.dedupe)
	clear(s.entries) // the Sink may keep the slices: they are never reused
	s.users = s.users[:0:0]
	clear(s.newMsgs)
	s.newMsgs = s.newMsgs[:0]
}

// head returns the user's head as this batch sees it: its provisional
// head, else the applied head.
func (c *txn) head(user string) (uint64, error) {
	if h, ok := c.heads[user]; ok {
		return h, nil
	}
	if h, ok := c.e.appliedHeads[user]; ok {
		return h, nil
	}
	return c.loadHead(user)
}

// loadHead loads the head of a stream the commit loop has not touched
// since the engine opened: no batch in flight writes to it, so the store's
// head is durable. It is cached as both heads.
func (c *txn) loadHead(user string) (uint64, error) {
	h, err := c.e.loadHead(user)
	if err != nil {
		return 0, err
	}
	c.cacheHeads([]string{user}, []uint64{h})
	return h, nil
}

func (c *txn) cacheHeads(users []string, heads []uint64) {
	e := c.e
	e.headsMu.Lock()
	for i, u := range users {
		e.appliedHeads[u] = heads[i]
		if _, ok := e.heads[u]; !ok {
			e.heads[u] = heads[i]
		}
	}
	e.headsMu.Unlock()
}

// durableHead returns the user's durable head: the newest entry any of
// their devices can have received.
func (c *txn) durableHead(user string) (uint64, error) {
	if h, ok := c.e.cachedHead(user); ok {
		return h, nil
	}
	return c.loadHead(user)
}

// prefetchHeads loads the heads of users the commit loop has not touched
// yet, with one store iterator when the store can (a fanout to thousands
// would otherwise open an iterator per recipient).
func (c *txn) prefetchHeads(users []string) error {
	lm, ok := c.e.st.(store.LastManyer)
	if !ok {
		return nil
	}
	var missing []string
	for _, u := range users {
		if _, ok := c.heads[u]; ok {
			continue
		}
		if _, ok := c.e.appliedHeads[u]; !ok {
			missing = append(missing, u)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	missing = slices.Clone(missing)
	slices.Sort(missing)
	missing = slices.Compact(missing)
	ranges := make([][2][]byte, len(missing))
	for i, u := range missing {
		p := inboxPrefix(u)
		ranges[i] = [2][]byte{p, prefixEnd(p)}
	}
	heads := make([]uint64, len(missing))
	var perr error
	err := lm.LastMany(ranges, func(i int, k []byte) {
		if k == nil || perr != nil {
			return
		}
		heads[i], perr = seqFromInboxKey(k)
	})
	if err == nil {
		err = perr
	}
	if err != nil {
		return fmt.Errorf("engine: stream heads: %w", err)
	}
	c.cacheHeads(missing, heads)
	return nil
}

// appendEntry sequences e into user's stream; for a user of another
// partition, it relays e there (relay.go).
func (c *txn) appendEntry(user string, ent Entry) error {
	if p, ok := c.e.remote(user); ok {
		return c.relayEntry(p, user, ent)
	}
	h, err := c.head(user)
	if err != nil {
		return err
	}
	ent.Seq = h + 1
	c.heads[user] = ent.Seq
	c.batch.Set(inboxKey(user, ent.Seq), encodeEntry(&ent))
	if _, ok := c.entries[user]; !ok {
		c.users = append(c.users, user)
	}
	c.entries[user] = append(c.entries[user], ent)
	return nil
}

func (c *txn) applySubmit(s *Submission, res *SubmitResult, now time.Time) error {
	var dk []byte
	if s.ClientID != "" {
		dk = dedupeKey(s.From, s.ClientID)
		if id, ok := c.dedupe[string(dk)]; ok {
			*res = SubmitResult{ID: id, Created: id.Time(), Duplicate: true}
			return nil
		}
		v, err := c.e.st.Get(dk)
		switch {
		case err == nil && len(v) == 16:
			var id ID
			copy(id[:], v)
			*res = SubmitResult{ID: id, Created: id.Time(), Duplicate: true}
			return nil
		case err == nil:
			return fmt.Errorf("dedupe %s: %w", s.From, ErrCorrupt)
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
	}
	if s.chat != nil {
		if err := c.applySecretSubmit(s, res, now); err != nil {
			return err
		}
		c.setDedupe(dk, res.ID)
		return nil
	}
	id := c.e.ids.next(now)
	m := &Message{
		ID: id, From: s.From, To: s.To, Kind: s.Kind, Body: s.Body,
		Created: id.Time(), ClientID: s.ClientID, Flags: s.flags,
		Forward: s.Forward, Quote: s.Quote,
	}
	c.batch.Set(messageKey(id), encodeMessage(m))
	r := c.rollup(dayOf(m.Created), c.deptOf(s.From))
	if s.Kind == KindAnnouncement {
		r.Announcements++
		c.anns[id] = &AnnouncementCounts{From: s.From, To: s.To, Created: ms(m.Created), Confirm: s.flags&FlagConfirm != 0, Total: uint64(len(s.recipients))}
		if c.hookWants(HookAnnouncementPublished) {
			c.emit(HookAnnouncementPublished, S("announcement", id.String()), S("from", s.From),
				S("to", strings.Join(s.To, ",")), N("recipients", int64(len(s.recipients))), N("confirm", int64(s.flags&FlagConfirm)))
		}
	} else {
		r.MessagesSent++
	}
	// Users of other partitions get one outbox record per partition
	// (relay.go); with no Placement, every user is local.
	local, remote := c.e.splitRecipients(s.recipients)
	for p, users := range remote {
		c.relayRecord(p, &RelayRecord{Kind: RelayMessage, Msg: m, Users: users})
	}
	if len(local) > c.e.cfg.FanoutChunk {
		// A message to many: its entries are written chunk by chunk
		// after it is durable (fanout.go).
		c.startFanout(id, local)
	} else if err := c.fanout(m, local); err != nil {
		// A store error: commit aborts the whole batch, so nothing
		// half-written survives (see clientError).
		return err
	}
	c.setDedupe(dk, id)
	*res = SubmitResult{ID: id, Created: m.Created}
	c.newMsgs = append(c.newMsgs, m)
	return nil
}

// setDedupe records that the sender's client id dk (nil for none) names
// message id.
func (c *txn) setDedupe(dk []byte, id ID) {
	if dk != nil {
		c.batch.Set(dk, id[:])
		c.dedupe[string(dk)] = id
	}
}

// fanout appends m to each recipient's stream, with a receipt in state
// sent.
func (c *txn) fanout(m *Message, recipients []string) error {
	if len(recipients) > 64 {
		if err := c.prefetchHeads(recipients); err != nil {
			return err
		}
	}
	sent := encodeReceipt(Receipt{State: StateSent})
	for _, to := range recipients {
		if !c.active(to) {
			continue // removed since the message was sent: they receive nothing more
		}
		if err := c.appendEntry(to, Entry{Kind: EntryMessage, Message: m}); err != nil {
			return err
		}
		c.batch.Set(receiptKey(m.ID, to), sent)
	}
	return nil
}

// receipt returns the receipt as this batch sees it.
func (c *txn) receipt(key []byte, user string) (Receipt, error) {
	if r, ok := c.receipts[string(key)]; ok {
		return r, nil
	}
	v, err := c.e.st.Get(key)
	if err != nil {
		return Receipt{}, err
	}
	return decodeReceipt(user, v)
}

func (c *txn) setReceipt(key []byte, r Receipt) {
	c.receipts[string(key)] = r
	c.batch.Set(key, encodeReceipt(r))
}

func (c *txn) u64(cache map[string]uint64, mapKey string, key []byte) (uint64, error) {
	if v, ok := cache[mapKey]; ok {
		return v, nil
	}
	v, err := c.e.st.Get(key)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return parseU64(v)
}

func (c *txn) applyAck(user, device string, seq uint64, now time.Time) error {
	// Only committed entries can have been received: check the committed
	// head, not this batch's provisional one.
	head, err := c.durableHead(user)
	if err != nil {
		return err
	}
	if seq > head {
		return fmt.Errorf("%w: %d > %d", ErrBadAck, seq, head)
	}
	ck := cursorKey(user, device)
	cur, err := c.u64(c.cursors, string(ck), ck)
	if err != nil {
		return err
	}
	if seq <= cur {
		return nil // nothing new for this device
	}
	c.cursors[string(ck)] = seq
	c.batch.Set(ck, u64(seq))
	wk := watermarkKey(user)
	wm, err := c.u64(c.watermarks, user, wk)
	if err != nil {
		return err
	}
	// Entries in (wm, seq] were acknowledged for the first time by any of
	// the user's devices: their messages become delivered. DINGs in
	// (cur, seq] reached this device for the first time: their ledgers
	// record it.
	type hit struct {
		id           ID
		sender       string
		announcement bool // no receipt event for its sender
		ding         bool // counted as a DING, not a message, in the statistics
		secret       bool // a secret message: the event names the user by pseudonym
	}
	var hits []hit
	var dings []hit
	var ierr error
	err = c.e.st.Scan(inboxKey(user, min(cur, wm)+1), inboxKey(user, seq+1), func(k, v []byte) bool {
		if len(v) > 0 && EntryKind(v[0]) == EntryMessage {
			seq, err := seqFromInboxKey(k)
			if err != nil {
				ierr = err
				return false
			}
			ent, id, sender, err := decodeEntry(0, v)
			if err != nil {
				ierr = err
				return false
			}
			if seq > wm {
				hits = append(hits, hit{id, string(sender), ent.flags&entryFlagAnnouncement != 0, ent.flags&entryFlagDing != 0, ent.flags&entryFlagSecret != 0})
			}
			if seq > cur && ent.flags&entryFlagDing != 0 {
				dings = append(dings, hit{id: id, sender: string(sender)})
			}
		}
		return true
	})
	if err == nil {
		err = ierr
	}
	if err != nil {
		return err
	}
	// Messages whose origin is another partition (relay.go): their
	// receipts here move, and the rest (counts, the sender's event, the
	// DING's ledger) is done at the origin, which a RelayReceipt tells.
	var out receiptsOut
	for _, d := range dings {
		if p, other := c.e.remote(d.sender); other {
			out.add(p, d.id)
			continue
		}
		if err := c.dingDelivered(d.id, user, device, now); err != nil {
			return err
		}
	}
	if seq <= wm {
		c.relayReceipts(&out, user, StateDelivered, now, device, 0)
		return nil
	}
	// Load the receipts this batch has not touched with one cursor.
	keys := make([][]byte, len(hits))
	rs := make([]Receipt, len(hits))
	found := make([]bool, len(hits))
	var missing [][]byte
	var missingAt []int
	for i, h := range hits {
		keys[i] = receiptKey(h.id, user)
		if r, ok := c.receipts[string(keys[i])]; ok {
			rs[i], found[i] = r, true
			continue
		}
		missing = append(missing, keys[i])
		missingAt = append(missingAt, i)
	}
	var derr error
	err = c.e.st.GetMany(missing, func(j int, v []byte) {
		if v == nil || derr != nil {
			return // no receipt: the message was removed since (burned, later)
		}
		i := missingAt[j]
		rs[i], derr = decodeReceipt(user, v)
		found[i] = derr == nil
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return err
	}
	var ev events
	for i, h := range hits {
		if !found[i] || rs[i].State >= StateDelivered {
			continue
		}
		var as string // the user's pseudonym, for a secret message
		if h.secret {
			if as, err = c.pseudonymOf(h.id, user); err != nil {
				return err
			}
			if as == "" {
				continue // burned earlier in this batch
			}
		}
		r := rs[i]
		r.State, r.Delivered = StateDelivered, now
		c.setReceipt(keys[i], r)
		if p, other := c.e.remote(h.sender); other {
			if !h.ding { // a DING's is in out already, with the device
				out.add(p, h.id)
			}
			continue
		}
		if !h.ding {
			c.countDelivered(h.id, h.sender, h.announcement)
		}
		switch {
		case h.secret:
			ev.addAs(h.sender, as, h.id)
		case !h.announcement:
			ev.add(h.sender, h.id)
		}
	}
	if err := c.notify(&ev, user, StateDelivered, now); err != nil {
		return err
	}
	c.relayReceipts(&out, user, StateDelivered, now, device, 0)
	c.watermarks[user] = seq
	c.batch.Set(wk, u64(seq))
	return nil
}

// events gathers, per stream to notify, the message ids whose state moved.
// A secret chat's events name the user by pseudonym (as), so they are
// gathered apart from the rest.
type events struct {
	order []evKey        // in first-touch order
	ids   map[evKey][]ID // by stream and name shown
}

type evKey struct{ to, as string }

func (ev *events) add(to string, id ID) { ev.addAs(to, "", id) }

func (ev *events) addAs(to, as string, id ID) {
	if ev.ids == nil {
		ev.ids = map[evKey][]ID{}
	}
	k := evKey{to, as}
	if _, ok := ev.ids[k]; !ok {
		ev.order = append(ev.order, k)
	}
	ev.ids[k] = append(ev.ids[k], id)
}

// notify appends to each gathered stream the events that user's state for
// its messages became st, MaxEventIDs ids at most per event.
func (c *txn) notify(ev *events, user string, st State, now time.Time) error {
	for _, k := range ev.order {
		ids := ev.ids[k]
		name := user
		if k.as != "" {
			name = k.as
		}
		// The sender's event (not the reader's own devices'): a webhook
		// event per message sent through the admin API (FlagViaAPI); none
		// for people's messages, nor for a message to oneself.
		if t := hookReceiptType(st); k.as == "" && k.to != user && t != "" && c.hookWants(t) {
			for _, id := range ids {
				if m, err := c.e.Message(id); err == nil && m.Flags&FlagViaAPI != 0 {
					c.emit(t, S("message", id.String()), S("from", k.to), S("recipient", user))
				}
			}
		}
		for len(ids) > 0 {
			n := min(len(ids), MaxEventIDs)
			if err := c.appendEntry(k.to, Entry{Kind: EntryReceipt, Receipt: &ReceiptEvent{IDs: ids[:n:n], User: name, State: st, At: now}}); err != nil {
				return err
			}
			ids = ids[n:]
		}
	}
	return nil
}

// pseudonymOf returns user's pseudonym in the chat of secret message id,
// or "" if it has burned.
func (c *txn) pseudonymOf(id ID, user string) (string, error) {
	s, err := c.secret(id)
	if err != nil || s == nil {
		return "", err
	}
	ch, err := c.chat(s.Chat)
	if err != nil {
		return "", err
	}
	return ch.pseudonym(user), nil
}

func (c *txn) applyRead(user string, ids []ID, now time.Time) error {
	type change struct {
		id           ID
		key          []byte
		r            Receipt
		wasDelivered bool
	}
	changes := make([]change, 0, len(ids))
	for i, id := range ids {
		if slices.Contains(ids[:i], id) {
			continue // the same id twice in one read
		}
		rk := receiptKey(id, user)
		r, err := c.receipt(rk, user)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: %s", ErrNotRecipient, id)
		}
		if err != nil {
			return err
		}
		if r.State >= StateRead {
			continue
		}
		wasDelivered := !r.Delivered.IsZero()
		if !wasDelivered {
			r.Delivered = now
		}
		r.State, r.Read = StateRead, now
		changes = append(changes, change{id, rk, r, wasDelivered})
	}
	// Load every message first: an error then leaves the batch untouched.
	msgs := make([]*Message, len(changes))
	for i, ch := range changes {
		m, err := c.e.Message(ch.id)
		if err != nil {
			return abort(fmt.Errorf("read %s: %w", ch.id, err))
		}
		if m.Chat != (ID{}) {
			if s, err := c.secret(m.ID); err != nil {
				return abort(err)
			} else if s == nil || (s.ExpireDue != 0 && s.ExpireDue <= ms(now)) {
				// Burned, or unread past its expiry: its expiry timer is
				// due (the timer loop may be late) and burns it; reading
				// it now must not disarm that timer.
				return fmt.Errorf("%w: %s (burned)", ErrNotRecipient, ch.id)
			}
		}
		msgs[i] = m
	}
	var senders, own events
	var dings []ID
	var out receiptsOut // messages whose origin is another partition (relay.go)
	for i, ch := range changes {
		m := msgs[i]
		c.setReceipt(ch.key, ch.r)
		p, other := c.e.originOf(m)
		if other {
			// The origin counts the read, tells the sender and stops
			// the DING (applyRelayReceipt); the reader's devices learn
			// it here. A secret message's copy here burns at the same
			// deadline as the origin's: now, sent in the receipt.
			out.add(p, ch.id)
		} else if m.Kind == KindDing {
			dings = append(dings, m.ID)
		} else {
			c.countRead(ch.id, m.From, m.Kind == KindAnnouncement, ch.wasDelivered)
		}
		if m.Chat != (ID{}) {
			as, err := c.pseudonymOf(m.ID, user)
			if err != nil {
				return err
			}
			if err := c.secretRead(m.ID, user, now); err != nil {
				return err
			}
			if !other {
				senders.addAs(m.From, as, ch.id)
			}
			own.addAs(user, as, ch.id)
			continue
		}
		if other {
			own.add(user, ch.id)
			continue
		}
		if m.Kind != KindAnnouncement {
			senders.add(m.From, ch.id)
		}
		// The reader's other devices learn it too (unless the reader is the
		// sender, whose stream already gets the event).
		if m.From != user {
			own.add(user, ch.id)
		}
	}
	if err := c.notify(&senders, user, StateRead, now); err != nil {
		return err
	}
	if err := c.notify(&own, user, StateRead, now); err != nil {
		return err
	}
	c.relayReceipts(&out, user, StateRead, now, "", 0)
	for _, id := range dings {
		if err := c.dingRead(id, user, now); err != nil {
			return err
		}
	}
	return nil
}
