package engine

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// The commit pipeline.
//
// Every mutation (submit, ack, read) becomes an op on one bounded queue. A
// single goroutine, the commit loop, owns sequencing:
//
//  1. Take one op, then every op already waiting, up to MaxBatch units of
//     work (an op is one unit; a READ, one per id it marks).
//  2. Apply each op to one store batch and an in-memory overlay (the
//     batch's view of heads, receipts, cursors and dedupe keys, so that two
//     ops in the same batch see each other). Stream sequence numbers are
//     assigned here: head+1, head+2, ... per user, with no gaps.
//  3. Commit the batch with sync: one fsync for the whole group.
//  4. Only then publish: update the committed heads, and pass the batch to
//     the publish loop, which answers each op's done callback (the
//     submitter's ack) and hands each user's new entries to the Sink in
//     sequence order, while the commit loop builds the next batch.
//
// Invariants:
//   - An op is answered only after the batch holding it is durable (ack
//     only after fsync). If the commit fails, every op in the batch gets the
//     error, nothing is published, and the engine refuses further writes
//     (ErrFailed): it cannot know what reached the disk, and a restart
//     rebuilds the truth from the store.
//   - Per stream, entries are sequenced in commit order by one goroutine
//     and delivered in that order by another, fed through a FIFO.
//   - Receipt states only move forward; an op that would move one backwards
//     writes nothing for it.
//
// While one batch is being synced, new ops accumulate in the queue, so the
// batch size grows with load and throughput is bound by bandwidth rather
// than fsyncs per second (group commit).
//
// Alternatives rejected: a lock per stream with each submitter committing
// its own synced batch (one fsync per message, and cross-stream messages
// need several locks); relying on Pebble's own group commit alone (it
// batches concurrent syncs, but sequencing would still need a lock held
// across the fsync); per-user goroutines (idle users would cost memory).
// Overlapping the build of batch N+1 with the fsync of batch N is possible
// but not done: measure first (see bench/RESULTS.md).

type opKind uint8

const (
	opSubmit opKind = iota + 1
	opAck
	opRead
	opApply // a function of the committer: DINGs and their escalation
)

type op struct {
	kind   opKind
	queued time.Time

	// opSubmit
	sub        Submission
	submitDone func(SubmitResult, error)
	result     SubmitResult
	msg        *Message // the stored message, once applied

	// opAck, opRead
	user, device string
	seq          uint64
	ids          []ID
	done         func(error)

	// opApply
	fn func(c *committer, now time.Time) error

	err error
}

// weight is an op's share of a batch: a READ of many ids costs a point
// read or two per id (a thousand-id READ is not one submit's work), so
// batches of big READs stay short and other users' ops do not wait
// seconds behind them (bench/RESULTS.md, secret: bulk reads).
func (o *op) weight() int {
	if o.kind == opRead {
		return max(1, len(o.ids))
	}
	return 1
}

func (o *op) finish() {
	if o.kind == opSubmit {
		o.submitDone(o.result, o.err)
	} else {
		o.done(o.err)
	}
}

// committer is the commit loop's private state.
type committer struct {
	e   *Engine
	ids idGen

	ops   []*op
	batch store.Batch

	// The overlay: this batch's uncommitted view, reset after each commit.
	heads      map[string]uint64  // provisional head per user
	receipts   map[string]Receipt // by receipt key
	cursors    map[string]uint64  // by cursor key
	watermarks map[string]uint64  // by user
	dedupe     map[string]ID      // by dedupe key
	users      []string           // users with new entries, in first-touch order
	entries    map[string][]Entry // new entries per user

	// The escalation overlay (escalate.go).
	drecs      map[ID]*dingRecord
	dstates    map[string]*rcptState // by state key; written at commit if changed
	dorig      map[string][]byte     // the stored record of each state loaded (not of new ones)
	quota      map[string]uint64     // by quota key
	refs       map[string][]byte     // provider references, by ref
	newMsgs    []*Message            // DING messages, for the cache
	sends      []sendTask            // sends decided, for the dispatch workers
	timerDelta int64                 // timers armed minus disarmed
	minDue     int64                 // earliest timer armed (ms); 0 if none

	jobsStarted bool // a fanout job was recorded (fanout.go)

	// The statistics overlay (rollup.go); all written at commit.
	rollups  map[rollupID]*Rollup
	depts    map[string]string // user -> department, looked up this batch
	anns     map[ID]*AnnouncementCounts
	statsErr error // a rollup could not be read: the batch aborts rather than overwrite it

	// The secret chats overlay (secret.go).
	chats        map[ID]*Chat
	secrets      map[ID]*secretState // nil value: burned or never existed
	newKeys      []newKey            // keys put for this batch's messages (dropped if it fails)
	burns        []burned            // burns decided, finished after the commit
	secretDelta  int64               // secret messages stored minus burned
	chatsCreated []Level
}

func newCommitter(e *Engine) *committer {
	return &committer{
		e:          e,
		heads:      map[string]uint64{},
		receipts:   map[string]Receipt{},
		cursors:    map[string]uint64{},
		watermarks: map[string]uint64{},
		dedupe:     map[string]ID{},
		entries:    map[string][]Entry{},
		drecs:      map[ID]*dingRecord{},
		dstates:    map[string]*rcptState{},
		dorig:      map[string][]byte{},
		quota:      map[string]uint64{},
		refs:       map[string][]byte{},
		rollups:    map[rollupID]*Rollup{},
		depts:      map[string]string{},
		anns:       map[ID]*AnnouncementCounts{},
		chats:      map[ID]*Chat{},
		secrets:    map[ID]*secretState{},
	}
}

func (c *committer) loop() {
	defer close(c.e.loopDone)
	defer close(c.e.pubQ)
	for {
		o, ok := <-c.e.queue
		if !ok {
			return
		}
		c.ops = append(c.ops[:0], o)
		work := o.weight()
	drain:
		for work < c.e.cfg.MaxBatch {
			select {
			case o, ok := <-c.e.queue:
				if !ok {
					break drain
				}
				c.ops = append(c.ops, o)
				work += o.weight()
			default:
				break drain
			}
		}
		c.commit()
	}
}

func (c *committer) commit() {
	e := c.e
	if err := e.Err(); err != nil {
		for _, o := range c.ops {
			o.err = err
			o.finish()
		}
		return
	}
	now := e.cfg.Clock.Now()
	c.batch = e.st.NewBatch()
	var err error
	for _, o := range c.ops {
		switch o.kind {
		case opSubmit:
			o.err = c.applySubmit(o, now)
		case opAck:
			o.err = c.applyAck(o, now)
		case opRead:
			o.err = c.applyRead(o, now)
		case opApply:
			o.err = o.fn(c, now)
		}
		if o.err != nil && !clientError(o.err) {
			// Abort: nothing of this batch is written; the ops are answered
			// with the error and may be retried.
			c.batch.Close()
			c.publishAbort(o.err)
			return
		}
	}
	if c.statsErr != nil {
		err := c.statsErr
		c.statsErr = nil
		c.batch.Close()
		c.publishAbort(err)
		return
	}
	c.flushStates()
	c.flushRollups()
	pending := e.pendingTimers.Load() + c.timerDelta
	if c.timerDelta != 0 {
		c.batch.Set(timersCounterKey, u64(uint64(max(0, pending))))
	}
	if c.secretDelta != 0 {
		c.batch.Set(secretsCounterKey, u64(uint64(max(0, e.liveSecretN.Load()+c.secretDelta))))
	}
	if len(c.newKeys) > 0 {
		// A durable message always has its key: the keys first.
		if err := e.keys.Sync(); err != nil {
			c.batch.Close()
			c.publishAbort(fmt.Errorf("sync secret keys: %w", err))
			return
		}
	}
	if c.batch.Len() > 0 {
		start := time.Now()
		err = c.batch.Commit(true)
		e.metrics.commitSeconds.Observe(time.Since(start).Seconds())
		e.metrics.batchOps.Observe(float64(len(c.ops)))
	}
	c.batch.Close()
	if err != nil {
		err = fmt.Errorf("%w: commit: %w", ErrFailed, err)
		// The batch may be durable all the same (a WAL write that reached
		// the disk before the fsync failed): its messages' keys stay, and
		// the next start erases those whose message is not in the store
		// (reconcileSecrets). Dropping them would burn a message that a
		// sender's retry is then told was stored.
		c.newKeys = c.newKeys[:0]
		e.failMu.Lock()
		if e.failed == nil {
			e.failed = err
		}
		e.failMu.Unlock()
		e.log.Error("commit failed; refusing further writes", "err", err)
	} else if len(c.burns) > 0 {
		c.finishBurns()
	}
	c.publish(err)
}

func (c *committer) publishAbort(err error) {
	err = fmt.Errorf("engine: batch aborted: %w", err)
	c.e.log.Error("commit batch aborted", "err", err)
	for _, o := range c.ops {
		o.err = err
	}
	clear(c.heads) // nothing was committed: forget provisional heads
	c.publish(err)
}

// resetSecrets clears the secret overlay after a batch: the new keys of
// a batch aborted before its commit are dropped (a failed commit has
// already kept them).
func (c *committer) resetSecrets(commitErr error) {
	if commitErr != nil {
		c.dropNewKeys()
		for id := range c.secrets {
			c.e.secretCache.delete(id) // unknown outcome: read the store again
		}
	} else {
		// Write through: the commit loop is the only writer of these
		// states, so what this durable batch holds is current.
		for id, s := range c.secrets {
			if s == nil {
				c.e.secretCache.delete(id)
			} else {
				c.e.secretCache.put(id, *s)
			}
		}
		c.e.liveSecretN.Add(c.secretDelta)
		for _, l := range c.chatsCreated {
			c.e.metrics.chatsCreated.WithLabelValues(levelLabel(l)).Inc()
		}
	}
	c.newKeys, c.burns, c.secretDelta, c.chatsCreated = c.newKeys[:0], c.burns[:0], 0, c.chatsCreated[:0]
	clear(c.chats)
	clear(c.secrets)
}

// published is one committed (or failed) batch on its way from the commit
// loop to the publish loop.
type published struct {
	ops     []*op
	users   []string
	entries map[string][]Entry
	sends   []sendTask
	err     error
}

// publish makes the batch's heads visible, then hands its answers and
// entries to the publish loop, so that the commit loop can start the next
// batch while the previous one is answered and delivered. Order is kept:
// one publish loop, fed in commit order.
func (c *committer) publish(commitErr error) {
	e := c.e
	if commitErr == nil {
		e.headsMu.Lock()
		for u, h := range c.heads {
			e.heads[u] = h
		}
		e.headsMu.Unlock()
	}
	if commitErr == nil {
		for _, o := range c.ops {
			if o.kind == opSubmit && o.err == nil && !o.result.Duplicate {
				e.cache.put(o.msg)
			}
		}
		for _, m := range c.newMsgs {
			e.cache.put(m)
		}
		e.pendingTimers.Add(c.timerDelta)
		if c.minDue != 0 {
			e.noteTimer(c.minDue)
		}
		// A send decided earlier in this batch than a confirmation (or
		// any stop) of the same recipient is dropped here: its recovery
		// timer went with the stop.
		kept := c.sends[:0]
		for _, t := range c.sends {
			st := c.dstates[string(rcptKey(t.id, t.idx))]
			if st != nil && (st.Status != StatusPending || !slices.ContainsFunc(st.Timers, func(r timerRef) bool { return r.N == t.n })) {
				e.inflightDel(inflightKey(t.id, t.idx, t.n))
				continue
			}
			kept = append(kept, t)
		}
		c.sends = kept
		if c.jobsStarted {
			select {
			case e.fanoutWake <- struct{}{}:
			default:
			}
		}
	} else {
		for _, t := range c.sends {
			e.inflightDel(inflightKey(t.id, t.idx, t.n))
		}
		c.sends = nil
	}
	c.resetSecrets(commitErr)
	p := &published{ops: c.ops, users: c.users, entries: c.entries, sends: c.sends, err: commitErr}
	c.sends, c.newMsgs, c.timerDelta, c.minDue, c.jobsStarted = nil, c.newMsgs[:0], 0, 0, false
	clear(c.drecs)
	clear(c.dstates)
	clear(c.dorig)
	clear(c.rollups)
	clear(c.anns)
	clear(c.depts)
	clear(c.quota)
	clear(c.refs)
	c.ops, c.users, c.entries = make([]*op, 0, len(p.ops)), nil, make(map[string][]Entry, len(p.users))
	e.pubQ <- p
	clear(c.heads)
	clear(c.receipts)
	clear(c.cursors)
	clear(c.watermarks)
	clear(c.dedupe)
}

// publishLoop answers ops and calls the Sink, batch after batch.
func (e *Engine) publishLoop() {
	defer close(e.pubDone)
	sink := e.getSink
	for p := range e.pubQ {
		for _, o := range p.ops {
			if p.err != nil {
				o.err = p.err
			}
			if o.kind == opSubmit {
				e.countSubmit(o)
			}
			o.finish()
		}
		if p.err == nil {
			e.queueSends(p.sends)
			if s := sink(); s != nil {
				for _, u := range p.users {
					s.Deliver(u, p.entries[u])
				}
			}
		}
	}
}

func (e *Engine) countSubmit(o *op) {
	m := e.metrics
	switch {
	case o.err != nil:
		m.submitsFailed.Inc()
	case o.result.Duplicate:
		m.submitsDup.Inc()
	default:
		m.submitsOK.Inc()
		m.submitSeconds.Observe(time.Since(o.queued).Seconds())
	}
}

// head returns the user's head as this batch sees it.
func (c *committer) head(user string) (uint64, error) {
	if h, ok := c.heads[user]; ok {
		return h, nil
	}
	return c.committedHead(user)
}

// committedHead returns the user's durable head, caching it. Only the
// commit loop may fill the cache: it is the only writer of streams, so a
// value it loads cannot be stale.
func (c *committer) committedHead(user string) (uint64, error) {
	e := c.e
	e.headsMu.RLock()
	h, ok := e.heads[user]
	e.headsMu.RUnlock()
	if ok {
		return h, nil
	}
	h, err := e.loadHead(user)
	if err != nil {
		return 0, err
	}
	e.headsMu.Lock()
	e.heads[user] = h
	e.headsMu.Unlock()
	return h, nil
}

// prefetchHeads loads the committed heads of users not yet cached, with
// one store iterator when the store can (a fanout to thousands would
// otherwise open an iterator per recipient).
func (c *committer) prefetchHeads(users []string) error {
	lm, ok := c.e.st.(store.LastManyer)
	if !ok {
		return nil
	}
	var missing []string
	c.e.headsMu.RLock()
	for _, u := range users {
		if _, ok := c.heads[u]; ok {
			continue
		}
		if _, ok := c.e.heads[u]; !ok {
			missing = append(missing, u)
		}
	}
	c.e.headsMu.RUnlock()
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
	c.e.headsMu.Lock()
	for i, u := range missing {
		if _, ok := c.e.heads[u]; !ok {
			c.e.heads[u] = heads[i]
		}
	}
	c.e.headsMu.Unlock()
	return nil
}

// appendEntry sequences e into user's stream.
func (c *committer) appendEntry(user string, ent Entry) error {
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

func (c *committer) applySubmit(o *op, now time.Time) error {
	s := &o.sub
	var dk []byte
	if s.ClientID != "" {
		dk = dedupeKey(s.From, s.ClientID)
		if id, ok := c.dedupe[string(dk)]; ok {
			o.result = SubmitResult{ID: id, Created: id.Time(), Duplicate: true}
			return nil
		}
		v, err := c.e.st.Get(dk)
		switch {
		case err == nil && len(v) == 16:
			var id ID
			copy(id[:], v)
			o.result = SubmitResult{ID: id, Created: id.Time(), Duplicate: true}
			return nil
		case err == nil:
			return fmt.Errorf("dedupe %s: %w", s.From, ErrCorrupt)
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
	}
	if s.chat != nil {
		if err := c.applySecretSubmit(o, now); err != nil {
			return err
		}
		c.setDedupe(dk, o.result.ID)
		return nil
	}
	id := c.ids.next(now)
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
	} else {
		r.MessagesSent++
	}
	if len(s.recipients) > c.e.cfg.FanoutChunk {
		// A message to many: its entries are written chunk by chunk
		// after it is durable (fanout.go).
		c.startFanout(id, s.recipients)
	} else if err := c.fanout(m, s.recipients); err != nil {
		// A store error: commit aborts the whole batch, so nothing
		// half-written survives (see clientError).
		return err
	}
	c.setDedupe(dk, id)
	o.result = SubmitResult{ID: id, Created: m.Created}
	o.msg = m
	return nil
}

// setDedupe records that the sender's client id dk (nil for none) names
// message id.
func (c *committer) setDedupe(dk []byte, id ID) {
	if dk != nil {
		c.batch.Set(dk, id[:])
		c.dedupe[string(dk)] = id
	}
}

// fanout appends m to each recipient's stream, with a receipt in state
// sent.
func (c *committer) fanout(m *Message, recipients []string) error {
	if len(recipients) > 64 {
		if err := c.prefetchHeads(recipients); err != nil {
			return err
		}
	}
	af := c.e.active
	sent := encodeReceipt(Receipt{State: StateSent})
	for _, to := range recipients {
		if af != nil && !af.Active(to) {
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
func (c *committer) receipt(key []byte, user string) (Receipt, error) {
	if r, ok := c.receipts[string(key)]; ok {
		return r, nil
	}
	v, err := c.e.st.Get(key)
	if err != nil {
		return Receipt{}, err
	}
	return decodeReceipt(user, v)
}

func (c *committer) setReceipt(key []byte, r Receipt) {
	c.receipts[string(key)] = r
	c.batch.Set(key, encodeReceipt(r))
}

func (c *committer) u64(cache map[string]uint64, mapKey string, key []byte) (uint64, error) {
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

func (c *committer) applyAck(o *op, now time.Time) error {
	// Only committed entries can have been received: check the committed
	// head, not this batch's provisional one.
	head, err := c.committedHead(o.user)
	if err != nil {
		return err
	}
	if o.seq > head {
		return fmt.Errorf("%w: %d > %d", ErrBadAck, o.seq, head)
	}
	ck := cursorKey(o.user, o.device)
	cur, err := c.u64(c.cursors, string(ck), ck)
	if err != nil {
		return err
	}
	if o.seq <= cur {
		return nil // nothing new for this device
	}
	c.cursors[string(ck)] = o.seq
	c.batch.Set(ck, u64(o.seq))
	wk := watermarkKey(o.user)
	wm, err := c.u64(c.watermarks, o.user, wk)
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
	var dings []ID
	var ierr error
	err = c.e.st.Scan(inboxKey(o.user, min(cur, wm)+1), inboxKey(o.user, o.seq+1), func(k, v []byte) bool {
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
				hits = append(hits, hit{id, sender, ent.flags&entryFlagAnnouncement != 0, ent.flags&entryFlagDing != 0, ent.flags&entryFlagSecret != 0})
			}
			if seq > cur && ent.flags&entryFlagDing != 0 {
				dings = append(dings, id)
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
	for _, id := range dings {
		if err := c.dingDelivered(id, o.user, o.device, now); err != nil {
			return err
		}
	}
	if o.seq <= wm {
		return nil
	}
	// Load the receipts this batch has not touched with one cursor.
	keys := make([][]byte, len(hits))
	rs := make([]Receipt, len(hits))
	found := make([]bool, len(hits))
	var missing [][]byte
	var missingAt []int
	for i, h := range hits {
		keys[i] = receiptKey(h.id, o.user)
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
		rs[i], derr = decodeReceipt(o.user, v)
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
			if as, err = c.pseudonymOf(h.id, o.user); err != nil {
				return err
			}
			if as == "" {
				continue // burned earlier in this batch
			}
		}
		r := rs[i]
		r.State, r.Delivered = StateDelivered, now
		c.setReceipt(keys[i], r)
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
	if err := c.notify(&ev, o.user, StateDelivered, now); err != nil {
		return err
	}
	c.watermarks[o.user] = o.seq
	c.batch.Set(wk, u64(o.seq))
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
func (c *committer) notify(ev *events, user string, st State, now time.Time) error {
	for _, k := range ev.order {
		ids := ev.ids[k]
		name := user
		if k.as != "" {
			name = k.as
		}
		for len(ids) > 0 {
			n := min(len(ids), MaxEventIDs)
			if err := c.appendEntry(k.to, Entry{Kind: EntryReceipt, Receipt: ReceiptEvent{IDs: ids[:n:n], User: name, State: st, At: now}}); err != nil {
				return err
			}
			ids = ids[n:]
		}
	}
	return nil
}

// pseudonymOf returns user's pseudonym in the chat of secret message id,
// or "" if it has burned.
func (c *committer) pseudonymOf(id ID, user string) (string, error) {
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

func (c *committer) applyRead(o *op, now time.Time) error {
	type change struct {
		id           ID
		key          []byte
		r            Receipt
		wasDelivered bool
	}
	changes := make([]change, 0, len(o.ids))
	for i, id := range o.ids {
		if slices.Contains(o.ids[:i], id) {
			continue // the same id twice in one read
		}
		rk := receiptKey(id, o.user)
		r, err := c.receipt(rk, o.user)
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
	for i, ch := range changes {
		m := msgs[i]
		if m.Kind == KindDing {
			dings = append(dings, m.ID)
		}
		c.setReceipt(ch.key, ch.r)
		if m.Kind != KindDing {
			c.countRead(ch.id, m.From, m.Kind == KindAnnouncement, ch.wasDelivered)
		}
		if m.Chat != (ID{}) {
			as, err := c.pseudonymOf(m.ID, o.user)
			if err != nil {
				return err
			}
			if err := c.secretRead(m.ID, o.user, now); err != nil {
				return err
			}
			senders.addAs(m.From, as, ch.id)
			own.addAs(o.user, as, ch.id)
			continue
		}
		if m.Kind != KindAnnouncement {
			senders.add(m.From, ch.id)
		}
		// The reader's other devices learn it too (unless the reader is the
		// sender, whose stream already gets the event).
		if m.From != o.user {
			own.add(o.user, ch.id)
		}
	}
	if err := c.notify(&senders, o.user, StateRead, now); err != nil {
		return err
	}
	if err := c.notify(&own, o.user, StateRead, now); err != nil {
		return err
	}
	for _, id := range dings {
		if err := c.dingRead(id, o.user, now); err != nil {
			return err
		}
	}
	return nil
}

// clientError reports whether err is an op's own fault, detected before the
// op wrote anything to the batch. Any other error while building a batch
// (a store read failing) aborts the whole batch, since the op may have
// written part of its keys.
//
// An opApply function returning one of these may have written what it
// means to keep (an SMS reply that did not confirm is still recorded in
// the ledger); it must not have written anything else.
func clientError(err error) bool {
	var a *abortError
	if errors.As(err, &a) {
		return false
	}
	for _, ce := range []error{ErrBadAck, ErrNotRecipient, ErrUnknownRecipient, ErrQuota, ErrBadAnswer, ErrNotFound, ErrNotDing, ErrBadPolicy, ErrBadDing, ErrNotMember, ErrBadChat} {
		if errors.Is(err, ce) {
			return true
		}
	}
	return false
}

// abortError marks an error that must abort the batch even if it wraps a
// client error (a message missing while its receipt exists).
type abortError struct{ err error }

func abort(err error) error { return &abortError{err} }

func (a *abortError) Error() string { return a.err.Error() }
func (a *abortError) Unwrap() error { return a.err }
