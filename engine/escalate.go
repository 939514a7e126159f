package engine

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dingmq/ding/engine/store"
)

// Escalation.
//
// Every change to a DING's state is an op on the commit loop, like a
// submit: creating it, a step's timer firing, a send's outcome, a
// provider's status report, a read, a confirmation, a cancel. So they are
// totally ordered, and each is durable before it has any effect outside:
//
//   - A recipient's state (key 'e') lists its pending timers; each timer is
//     also a key 't' | due | ding | recipient | n, so that the timer loop
//     finds the next due timer with one seek and keeps nothing per timer
//     in memory (escalation timers cost disk, not RAM).
//   - Stopping a recipient (read, confirmed, cancelled) deletes its timers
//     in the same batch that records the stop. A timer that fires is
//     checked against the state in the batch that fires it, so a step that
//     loses the race to a confirmation finds the recipient stopped and
//     does nothing: no send is decided after a confirmation is durable.
//   - A send (SMS or call) is decided in a batch that also arms a
//     recovery timer, and made by a dispatch worker only after that batch
//     is durable. Its outcome is recorded by another op, which disarms the
//     recovery timer. If the process dies in between, the recovery timer
//     fires after the restart and the send is made again: at least once per
//     step, and at most one duplicate per crash. While the process lives, a
//     recovery timer whose send is still in flight is re-armed instead.
//   - Ledger events are keys 'l' | ding | recipient | n, and each is also
//     pushed to the sender's stream as an EntryDing entry.
//   - A send the provider accepted arms a wait timer, disarmed by its
//     final status (an SMS sent, delivered or failed; a call completed,
//     busy, unanswered or failed), so that the timers a recipient's state
//     lists are everything that may still happen to it: a step to fire, a
//     send to make or retry, an outcome to learn (a failure falls back or
//     retries). When the last step has fired and the last timer is gone,
//     the policy has nothing more to try, and the op that got it there
//     records `exhausted` (exhaust). A call ringing when its step fires,
//     or a keypress still possible in it, is not the end; a confirmation
//     or read before then stops the recipient and nothing is exhausted. A
//     wait timer fires after Config.OutcomeWait if no final status came:
//     exhausted all the same, saying so. A failure reported after that
//     (or after an SMS's "sent") still retries: the recipient has
//     something to try again, and is exhausted again when that settles.
//
// Alternatives rejected: an in-memory timer heap rebuilt at start-up (a
// million pending steps would cost a full scan before the first fire and
// tens of megabytes of RAM); sending from the commit loop (it would wait on
// the provider); recording a send only after it is made (a crash after the
// send but before the record would lose the provider's reference, and a
// confirmation could not stop a send already decided).

// dingTx is escalation's per-batch overlay.
type dingTx struct {
	drecs      map[ID]*dingRecord
	dstates    map[string]*rcptState // by state key; written at flush if marked changed (rcptstate.go)
	quota      map[string]uint64     // by quota key
	refs       map[string][]byte     // provider references, by ref
	sends      []sendTask            // sends decided, for the dispatch workers once durable
	timerDelta int64                 // timers armed minus disarmed
	minDue     int64                 // earliest timer armed (ms); 0 if none
}

func newDingTx() dingTx {
	return dingTx{
		drecs: map[ID]*dingRecord{}, dstates: map[string]*rcptState{},
		quota: map[string]uint64{}, refs: map[string][]byte{},
	}
}

// flush writes the states the batch changed and the count of armed timers.
func (d *dingTx) flush(c *txn) error {
	c.flushStates()
	if d.timerDelta != 0 {
		c.batch.Set(timersCounterKey, u64(uint64(max(0, c.e.appliedTimers+d.timerDelta))))
	}
	return nil
}

// applied counts the timers and wakes the timer loop for an earlier one.
func (d *dingTx) applied(c *txn) {
	c.e.appliedTimers += d.timerDelta
	if d.minDue != 0 {
		c.e.noteTimer(d.minDue)
	}
}

// published hands the sends the batch decided to the dispatch workers. A
// send decided earlier in the batch than a confirmation (or any stop) of
// the same recipient is dropped: its recovery timer went with the stop.
func (d *dingTx) published(c *txn) {
	kept := d.sends[:0]
	for _, t := range d.sends {
		st := d.dstates[string(rcptKey(t.id, t.idx))]
		if st != nil && (st.Status != StatusPending || !slices.ContainsFunc(st.Timers, func(r timerRef) bool { return r.N == t.n })) {
			c.e.inflightDel(inflightKey(t.id, t.idx, t.n))
			continue
		}
		kept = append(kept, t)
	}
	c.e.queueSends(kept)
}

// durable counts the timers for readers.
func (d *dingTx) durable(c *txn) { c.e.pendingTimers.Add(d.timerDelta) }

// abandon forgets the sends: none of them is made.
func (d *dingTx) abandon(c *txn, applied bool) {
	for _, t := range d.sends {
		c.e.inflightDel(inflightKey(t.id, t.idx, t.n))
	}
}

func (d *dingTx) reset() {
	clear(d.drecs)
	clear(d.dstates)
	clear(d.quota)
	clear(d.refs)
	clear(d.sends)
	d.sends, d.timerDelta, d.minDue = d.sends[:0], 0, 0
}

// MaxSendAttempts bounds the sends of one step whose outcome stayed
// unknown (timeouts, provider errors) or that the carrier failed.
const MaxSendAttempts = 4

func sendBackoff(attempt int) time.Duration {
	switch attempt {
	case 1:
		return 5 * time.Second
	case 2:
		return 30 * time.Second
	default:
		return 2 * time.Minute
	}
}

// sendTask is a send decided by a durable batch, for a dispatch worker.
type sendTask struct {
	id      ID
	idx     int
	n       uint32 // the recovery timer
	ch      Channel
	attempt int
	to      string // the phone number, or for ChannelEmail the address
}

func inflightKey(id ID, idx int, n uint32) string {
	return string(timerKey(0, id, idx, n)[9:])
}

func ms(t time.Time) int64 { return t.UnixMilli() }

// clip makes text from outside (an SMS reply, a provider's detail) fit to
// be stored and pushed: valid UTF-8, at most n bytes, cut at a rune.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

func isPhone(to string) bool { return strings.HasPrefix(to, "+") }

// ding returns the DING record as this batch sees it.
func (c *txn) ding(id ID) (*dingRecord, error) {
	if r, ok := c.drecs[id]; ok {
		return r, nil
	}
	r, err := c.e.loadDing(id)
	if err != nil {
		return nil, err
	}
	c.drecs[id] = r
	return r, nil
}

// state returns a recipient's state as this batch sees it. A state
// loaded into the overlay is written back when the batch commits if it
// was changed (flushStates, rcptstate.go).
func (c *txn) state(id ID, idx int) (*rcptState, error) {
	k := rcptKey(id, idx)
	if s, ok := c.dstates[string(k)]; ok {
		return s, nil
	}
	s, err := c.e.loadState(id, idx)
	if err != nil {
		return nil, err
	}
	c.dstates[string(k)] = s
	return s, nil
}

// newState adds a recipient's new state to the overlay, to be written.
func (c *txn) newState(id ID, idx int, s *rcptState) {
	s.dirty = true
	c.dstates[string(rcptKey(id, idx))] = s
}

// flushStates writes every state this batch changed; one loaded and left
// as it was (a stopped recipient a cancel passed over, a disarmed timer's)
// is not written again.
func (c *txn) flushStates() {
	for k, s := range c.dstates {
		if !s.dirty {
			if raceBuild {
				checkUnmarked(k, s)
			}
			continue
		}
		c.batch.Set([]byte(k), encodeRcptState(s))
	}
}

func (c *txn) quotaGet(k []byte) (uint64, error) { return c.u64(c.quota, string(k), k) }

func (c *txn) quotaSet(k []byte, v uint64) {
	c.quota[string(k)] = v
	c.batch.Set(k, u64(v))
}

// ledger records an event in a recipient's timeline and pushes it to the
// sender's stream.
func (c *txn) ledger(id ID, idx int, s *rcptState, rec *dingRecord, ev DingEvent) error {
	ev.ID, ev.Index, ev.Recipient = id, idx, rec.Recipients[idx]
	le := LedgerEvent{At: ev.At, Event: ev.Event, Device: ev.Device, Detail: ev.Detail}
	if ev.Channel != 0 {
		le.Channel = ev.Channel.String()
	}
	c.batch.Set(ledgerKey(id, idx, s.nextLedger()), encodeLedgerEvent(&le))
	if t := hookDingType(ev.Event); c.hookWants(t) {
		c.emit(t, hookDingData(&ev, s.User, rec)...)
	}
	if ev.Event == LedgerSent {
		return nil // the sender's submit answer says as much
	}
	return c.appendEntry(rec.From, Entry{Kind: EntryDing, Ding: &ev})
}

// addTimer arms a timer. Wait timers are not counted in the timers
// count (PendingSteps, the pending-steps gauge): they never send.
func (c *txn) addTimer(id ID, idx int, s *rcptState, t timerRef) timerRef {
	t = s.armTimer(t)
	c.setTimerKey(t.Due, id, idx, t.N)
	if t.Kind != timerWait {
		c.timerDelta++
	}
	return t
}

// setTimerKey writes a timer's key and lowers the batch's earliest due
// time, which wakes the timer loop after the commit (timer.go).
func (c *txn) setTimerKey(due int64, id ID, idx int, n uint32) {
	c.batch.Set(timerKey(due, id, idx, n), nil)
	if c.minDue == 0 || due < c.minDue {
		c.minDue = due
	}
}

func (c *txn) removeTimer(id ID, idx int, s *rcptState, n uint32) (timerRef, bool) {
	t, ok := s.disarmTimer(n)
	if !ok {
		return timerRef{}, false
	}
	c.batch.Delete(timerKey(t.Due, id, idx, n))
	if t.Kind != timerWait {
		c.timerDelta--
	}
	return t, true
}

// lookupDedupe finds a sender's earlier message with the same client id.
func (c *txn) lookupDedupe(from, clientID string) (ID, bool, []byte, error) {
	dk := dedupeKey(from, clientID)
	if id, ok := c.dedupe[string(dk)]; ok {
		return id, true, dk, nil
	}
	v, err := c.e.st.Get(dk)
	switch {
	case err == nil && len(v) == 16:
		var id ID
		copy(id[:], v)
		return id, true, dk, nil
	case err == nil:
		return ID{}, false, nil, fmt.Errorf("dedupe %s: %w", from, ErrCorrupt)
	case !errors.Is(err, store.ErrNotFound):
		return ID{}, false, nil, err
	}
	return ID{}, false, dk, nil
}

func (c *txn) applyDing(q *dingReq, now time.Time) (DingResult, error) {
	var dk []byte
	if q.ClientID != "" {
		id, dup, k, err := c.lookupDedupe(q.From, q.ClientID)
		if err != nil || dup {
			return DingResult{ID: id, Created: id.Time(), Duplicate: dup}, err
		}
		dk = k
	}
	// Refusals first: a refused DING writes nothing.
	qs := &c.e.cfg.Quotas
	day := utcDay(now)
	sk := quotaKey('s', q.From, day)
	sent, err := c.quotaGet(sk)
	if err != nil {
		return DingResult{}, err
	}
	if qs.DingsPerSenderPerDay > 0 && sent >= uint64(qs.DingsPerSenderPerDay) {
		c.e.metrics.refusals.WithLabelValues(ReasonSenderDaily).Inc()
		tomorrow := time.Date(now.UTC().Year(), now.UTC().Month(), now.UTC().Day()+1, 0, 0, 0, 0, time.UTC)
		return DingResult{}, &QuotaError{Reason: ReasonSenderDaily,
			Detail: fmt.Sprintf("%d DINGs today, limit %d", sent, qs.DingsPerSenderPerDay), RetryAfter: tomorrow.Sub(now)}
	}
	for _, to := range q.To {
		if !isPhone(to) && !c.active(to) {
			return DingResult{}, fmt.Errorf("%w: %q was removed", ErrUnknownRecipient, to)
		}
	}
	var refused []Refusal
	ok := make([]bool, len(q.To))
	for i, to := range q.To {
		if !q.Critical {
			if in, end := q.contacts[i].Quiet.In(now); in {
				refused = append(refused, Refusal{to, ReasonQuietHours, end.Sub(now)})
				continue
			}
		}
		if qs.RecipientInterval > 0 {
			last, err := c.quotaGet(quotaKey('r', q.From, to))
			if err != nil {
				return DingResult{}, err
			}
			if next := time.UnixMilli(int64(last)).Add(qs.RecipientInterval); last != 0 && next.After(now) {
				refused = append(refused, Refusal{to, ReasonInterval, next.Sub(now)})
				continue
			}
		}
		ok[i] = true
	}
	for _, r := range refused {
		c.e.metrics.refusals.WithLabelValues(r.Reason).Inc()
	}
	if len(refused) == len(q.To) {
		r := refused[0]
		return DingResult{}, &QuotaError{Reason: r.Reason, RetryAfter: r.RetryAfter,
			Detail: fmt.Sprintf("every recipient refused (%d)", len(refused))}
	}

	id := c.e.ids.next(now)
	var users []string
	for i, to := range q.To {
		if ok[i] && !isPhone(to) {
			users = append(users, to)
		}
	}
	shown := users // the message's "to": who it went to in the app, or the audience asked for
	if len(q.Audience) > 0 {
		shown = q.Audience
	}
	m := &Message{
		ID: id, From: q.From, To: shown, Kind: KindDing, Body: []byte(q.Text),
		Created: id.Time(), ClientID: q.ClientID, Choices: q.Choices,
	}
	// Users of other partitions get the message through the relay, one
	// record per partition; the DING stays here (relay.go).
	local, remote := c.e.splitRecipients(users)
	for _, u := range local {
		if err := c.appendEntry(u, Entry{Kind: EntryMessage, Message: m}); err != nil {
			return DingResult{}, err
		}
	}
	for p, us := range remote {
		c.relayRecord(p, &RelayRecord{Kind: RelayMessage, Msg: m, Users: us})
	}
	c.batch.Set(messageKey(id), encodeMessage(m))
	sentR := encodeReceipt(Receipt{State: StateSent})
	for _, u := range local {
		c.batch.Set(receiptKey(id, u), sentR)
	}
	c.setDedupe(dk, id)
	rec := &dingRecord{
		From: q.From, Created: ms(m.Created), Policy: q.policyID, Plan: q.policy.plan(),
		Until: q.policy.Until, Choices: q.Choices, Critical: q.Critical, Recipients: q.To,
	}
	c.batch.Set(dingKey(id), encodeDingRecord(rec))
	c.drecs[id] = rec
	c.quotaSet(sk, sent+1)
	c.newMsgs = append(c.newMsgs, m)
	rday := dayOf(m.Created)
	c.rollup(rday, c.deptOf(q.From)).DingsSent++
	ri := 0
	for i, to := range q.To {
		s := &rcptState{Status: StatusPending, User: !isPhone(to), Phone: q.contacts[i].Phone, Dept: q.contacts[i].Department}
		if !s.User {
			s.Phone = to
		}
		if !ok[i] {
			s.Status = StatusRefused
		}
		c.newState(id, i, s)
		if !ok[i] {
			c.rollup(rday, s.Dept).outcome(OutcomeRefused, 1)
			r := refused[ri]
			ri++
			if err := c.ledger(id, i, s, rec, DingEvent{Event: LedgerQuotaRefused, Detail: r.Reason, At: now}); err != nil {
				return DingResult{}, err
			}
			continue
		}
		c.rollup(rday, s.Dept).DingRecipients++
		if qs.RecipientInterval > 0 {
			c.quotaSet(quotaKey('r', q.From, to), uint64(ms(now)))
		}
		if s.User {
			if err := c.ledger(id, i, s, rec, DingEvent{Event: LedgerSent, Channel: ChannelInApp, At: now}); err != nil {
				return DingResult{}, err
			}
		}
		if s.User {
			c.batch.Set(pendingUserKey(to, id, i), nil)
		}
		if err := c.advance(id, i, s, rec, now); err != nil {
			return DingResult{}, err
		}
	}
	return DingResult{ID: id, Created: m.Created, Refused: refused}, nil
}

// advance fires every planned step that is due and arms a timer for the
// next one.
func (c *txn) advance(id ID, idx int, s *rcptState, rec *dingRecord, now time.Time) error {
	created := time.UnixMilli(rec.Created)
	for s.Status == StatusPending && s.Next < len(rec.Plan) {
		due := created.Add(rec.Plan[s.Next].After)
		if due.After(now) {
			c.addTimer(id, idx, s, timerRef{Kind: timerStep, Step: s.Next, Due: ms(due)})
			return nil
		}
		step := s.takeStep()
		if later := s.Next; later < len(rec.Plan) && !created.Add(rec.Plan[later].After).After(now) &&
			slices.ContainsFunc(rec.Plan[later:], func(p plannedStep) bool {
				return p.Channel == rec.Plan[step].Channel && !created.Add(p.After).After(now)
			}) {
			// Overdue (the server was down) and superseded by a later
			// overdue step on the same channel: one call, not three.
			if err := c.ledger(id, idx, s, rec, DingEvent{Event: LedgerSkipped, Channel: rec.Plan[step].Channel, Detail: "overdue; a later step on the same channel is due too", At: now}); err != nil {
				return err
			}
			continue
		}
		if err := c.fireStep(id, idx, s, rec, step, now); err != nil {
			return err
		}
		if s.Next == len(rec.Plan) && s.Status == StatusPending {
			c.markUnanswered(idx, s, rec)
			// Exhausted now only if the last step left nothing to wait
			// for (an in-app reminder, no phone, a spent budget); a send
			// is exhausted when its outcome is known.
			return c.exhaust(id, idx, s, rec, "", now)
		}
	}
	return nil
}

// exhaust records that the policy has nothing more to try for a pending
// recipient, if so: every planned step has fired and no timer is armed
// (no step due, no send to make, retry or hear the final status of).
// It is called by the ops that take the last step or disarm a timer, and
// only by them, so that each time a recipient runs out of things to try
// is recorded once: an op that changes nothing for a recipient already
// exhausted (a status repeated, a late one) does not call it. A policy of
// one step is not said to be exhausted (its one send's outcome says it
// all), as before.
func (c *txn) exhaust(id ID, idx int, s *rcptState, rec *dingRecord, detail string, now time.Time) error {
	if s.Status != StatusPending || s.Next < len(rec.Plan) || len(s.Timers) > 0 || len(rec.Plan) < 2 {
		return nil
	}
	return c.ledger(id, idx, s, rec, DingEvent{Event: LedgerExhausted, Detail: detail, At: now})
}

func (c *txn) fireStep(id ID, idx int, s *rcptState, rec *dingRecord, step int, now time.Time) error {
	ps := rec.Plan[step]
	switch ps.Channel {
	case ChannelInApp:
		if ps.After == 0 || !s.User {
			return nil // the message itself; or a recipient outside the app
		}
		c.e.metrics.step(ChannelInApp, "reminder")
		user := rec.Recipients[idx]
		ev := DingEvent{ID: id, Index: idx, Recipient: user, Event: LedgerReminder, Channel: ChannelInApp, At: now}
		if err := c.appendEntry(user, Entry{Kind: EntryDing, Ding: &ev}); err != nil {
			return err
		}
		return c.ledger(id, idx, s, rec, ev)
	default:
		return c.startSend(id, idx, s, rec, ps.Channel, now)
	}
}

// startSend charges the org's budget and decides a send.
func (c *txn) startSend(id ID, idx int, s *rcptState, rec *dingRecord, ch Channel, now time.Time) error {
	if ch == ChannelPush {
		// No budget: a push costs nothing per message (the providers'
		// rate limits are the notifier's to honour).
		if !s.User || !c.hasPushToken(rec.Recipients[idx]) {
			c.e.metrics.step(ch, "no_device")
			return c.ledger(id, idx, s, rec, DingEvent{Event: LedgerNoPushDevice, Channel: ch, At: now})
		}
		return c.dispatch(id, idx, s, rec, ch, 1, false, now)
	}
	if ch == ChannelEmail {
		if c.emailOf(idx, s, rec) == "" {
			c.e.metrics.step(ch, "no_email")
			return c.ledger(id, idx, s, rec, DingEvent{Event: LedgerNoEmail, Channel: ch, At: now})
		}
	} else if s.Phone == "" {
		c.e.metrics.step(ch, "no_phone")
		return c.ledger(id, idx, s, rec, DingEvent{Event: LedgerNoPhone, Channel: ch, At: now})
	}
	limit, reason := c.e.cfg.Quotas.SMSPerDay, ReasonSMSBudget
	switch ch {
	case ChannelVoice:
		limit, reason = c.e.cfg.Quotas.CallsPerDay, ReasonVoiceBudget
	case ChannelEmail:
		limit, reason = c.e.cfg.Quotas.EmailsPerDay, ReasonEmailBudget
	}
	if limit > 0 {
		day := utcDay(now)
		k := quotaKey('b', ch.String(), day)
		n, err := c.quotaGet(k)
		if err != nil {
			return err
		}
		if n >= uint64(limit) || (c.e.cfg.Budget != nil && !c.e.cfg.Budget.Take(ch, day, limit)) {
			c.e.metrics.refusals.WithLabelValues(reason).Inc()
			c.e.metrics.step(ch, "quota")
			return c.ledger(id, idx, s, rec, DingEvent{Event: LedgerQuotaRefused, Channel: ch, Detail: reason, At: now})
		}
		c.quotaSet(k, n+1)
		c.hookBudget(ch, n, limit)
	}
	switch ch { // e-mails have no counter in the statistics' rollups (yet)
	case ChannelVoice:
		c.rollup(dayOf(now), s.Dept).Calls++
	case ChannelSMS:
		c.rollup(dayOf(now), s.Dept).SMS++
	}
	return c.dispatch(id, idx, s, rec, ch, 1, false, now)
}

// emailOf returns a user recipient's e-mail address as the directory has
// it now ("" for none, or for a phone-number recipient). Unlike the phone,
// which is the one the DING was sent with, an address is looked up at
// each send: the directory is in memory and the address is not kept in
// the recipient's state.
func (c *txn) emailOf(idx int, s *rcptState, rec *dingRecord) string {
	if !s.User || c.e.cfg.Contacts == nil {
		return ""
	}
	ct, err := c.e.cfg.Contacts.Contact(rec.Recipients[idx])
	if err != nil {
		return ""
	}
	return ct.Email
}

// dispatch decides a send: it arms the recovery timer and queues the task
// for the dispatch workers once this batch is durable.
func (c *txn) dispatch(id ID, idx int, s *rcptState, rec *dingRecord, ch Channel, attempt int, quiet bool, now time.Time) error {
	to := s.Phone
	if ch == ChannelPush {
		to = rec.Recipients[idx] // the notifier finds the user's devices at the send
	}
	if ch == ChannelEmail {
		// A retry looks the address up again: it may have been removed.
		if to = c.emailOf(idx, s, rec); to == "" {
			c.e.metrics.step(ch, "no_email")
			return c.ledger(id, idx, s, rec, DingEvent{Event: LedgerNoEmail, Channel: ch, At: now})
		}
	}
	t := c.addTimer(id, idx, s, timerRef{
		Kind: timerSend, Ch: ch, Attempt: attempt, Recover: true,
		Due: ms(now.Add(c.e.cfg.RecoverAfter)),
	})
	c.e.inflightAdd(inflightKey(id, idx, t.N))
	c.sends = append(c.sends, sendTask{id: id, idx: idx, n: t.N, ch: ch, attempt: attempt, to: to})
	if ch != ChannelEmail && ch != ChannelPush {
		// The phone now answers for this DING: a reply confirms the
		// pending DING most recently sent to that phone.
		if s.PhoneAt != 0 {
			c.batch.Delete(phoneKey(s.Phone, s.PhoneAt, id, idx))
		}
		s.setPhoneAt(ms(now))
		c.batch.Set(phoneKey(s.Phone, s.PhoneAt, id, idx), nil)
	}
	if quiet {
		return nil
	}
	return c.ledger(id, idx, s, rec, DingEvent{Event: LedgerSending, Channel: ch, Detail: fmt.Sprintf("attempt %d", attempt), At: now})
}

// stop ends a pending recipient's escalation: its timers go, and its
// phone no longer matches SMS replies.
func (c *txn) stop(id ID, idx int, s *rcptState, rec *dingRecord, status string, by Channel, now time.Time) {
	s.end(status, by, ms(now))
	for len(s.Timers) > 0 {
		c.removeTimer(id, idx, s, s.Timers[0].N)
	}
	if s.PhoneAt != 0 {
		c.batch.Delete(phoneKey(s.Phone, s.PhoneAt, id, idx))
		s.setPhoneAt(0)
	}
	if s.User {
		c.batch.Delete(pendingUserKey(rec.Recipients[idx], id, idx))
	}
	took := now.Sub(time.UnixMilli(rec.Created)).Seconds()
	r := c.rollup(dayOf(time.UnixMilli(rec.Created)), s.Dept)
	c.unmarkUnanswered(idx, s, rec)
	r.outcome(outcomeOf(status, by), 1)
	switch status {
	case StatusRead:
		c.e.metrics.timeToRead.WithLabelValues(by.String()).Observe(took)
		observe(&r.TimeToRead, took)
	case StatusConfirmed:
		c.e.metrics.timeToConfirm.WithLabelValues(by.String()).Observe(took)
		observe(&r.TimeToConfirm, took)
	}
}

// outcomeOf names a stop for the statistics.
func outcomeOf(status string, by Channel) string {
	switch status {
	case StatusRead:
		return OutcomeReadInApp
	case StatusConfirmed:
		return "confirmed_" + by.String()
	case StatusCancelled:
		return OutcomeCancelled
	case StatusRemoved:
		return OutcomeRemoved
	}
	return status
}

// markUnanswered counts a recipient whose every step has fired as
// unanswered, until something stops them.
func (c *txn) markUnanswered(idx int, s *rcptState, rec *dingRecord) {
	if !s.setUnanswered(true) {
		return
	}
	day := dayOf(time.UnixMilli(rec.Created))
	c.rollup(day, s.Dept).outcome(OutcomeUnanswered, 1)
	if s.User {
		c.unanswered(day, rec.Recipients[idx], 1)
	}
}

func (c *txn) unmarkUnanswered(idx int, s *rcptState, rec *dingRecord) {
	if !s.setUnanswered(false) {
		return
	}
	day := dayOf(time.UnixMilli(rec.Created))
	c.rollup(day, s.Dept).outcome(OutcomeUnanswered, -1)
	if s.User {
		c.unanswered(day, rec.Recipients[idx], -1)
	}
}

// confirm records a confirmation by channel ch with an answer already
// checked against the DING's choices.
func (c *txn) confirm(id ID, idx int, s *rcptState, rec *dingRecord, ch Channel, answer int, now time.Time) error {
	switch s.Status {
	case StatusConfirmed:
		return nil
	case StatusRefused:
		return fmt.Errorf("%w: %s", ErrNotRecipient, id)
	}
	detail := ""
	if answer > 0 {
		detail = strconv.Itoa(answer) + " " + rec.Choices[answer-1]
	}
	if err := c.ledger(id, idx, s, rec, DingEvent{Event: LedgerConfirmed, Channel: ch, Detail: detail, At: now}); err != nil {
		return err
	}
	if s.Status == StatusPending {
		c.stop(id, idx, s, rec, StatusConfirmed, ch, now)
	} else {
		// Confirmed after a read stopped it (or a cancel): the outcome
		// moves to the confirmation.
		r := c.rollup(dayOf(time.UnixMilli(rec.Created)), s.Dept)
		r.outcome(outcomeOf(s.Status, s.By), -1)
		r.outcome(outcomeOf(StatusConfirmed, ch), 1)
		observe(&r.TimeToConfirm, now.Sub(time.UnixMilli(rec.Created)).Seconds())
		s.end(StatusConfirmed, ch, ms(now))
	}
	s.setAnswer(answer)
	if !s.User {
		return nil
	}
	user := rec.Recipients[idx]
	rk := receiptKey(id, user)
	r, err := c.mirrorReceipt(rk, user) // a user of another partition may have none here yet
	if err != nil {
		return err
	}
	if r.Delivered.IsZero() {
		r.Delivered = now
	}
	if r.Read.IsZero() {
		r.Read = now // DINGs count in the statistics as DINGs, not messages
	}
	r.State, r.Confirmed = StateConfirmed, now
	c.setReceipt(rk, r)
	if p, other := c.e.remote(user); other {
		// The recipient's partition keeps their receipt too (relay.go);
		// for a confirmation made there, this changes nothing.
		c.relayRecord(p, &RelayRecord{Kind: RelayReceipt, User: user, IDs: []ID{id}, State: StateConfirmed, At: now, Answer: answer})
	}
	var ev events
	ev.add(rec.From, id)
	if user != rec.From {
		ev.add(user, id)
	}
	return c.notify(&ev, user, StateConfirmed, now)
}

func (c *txn) applyConfirmUser(user string, id ID, answer int, ch Channel, now time.Time) (ConfirmResult, error) {
	rec, err := c.ding(id)
	if errors.Is(err, ErrNotFound) {
		if m, merr := c.e.Message(id); merr == nil {
			if p, other := c.e.originOf(m); other && m.Kind == KindDing {
				// The DING lives at its sender's partition (relay.go).
				return c.confirmRemoteDing(user, m, p, answer, now)
			}
			return c.confirmMessage(user, m, answer, now)
		}
	}
	if err != nil {
		return ConfirmResult{}, err
	}
	idx := slices.Index(rec.Recipients, user)
	if idx < 0 {
		return ConfirmResult{}, fmt.Errorf("%w: %s", ErrNotRecipient, id)
	}
	return c.confirmRecipient(id, idx, rec, answer, ch, now)
}

// applyConfirmLink confirms for recipient idx of a DING of this engine,
// through an e-mail's signed link.
func (c *txn) applyConfirmLink(id ID, idx, answer int, now time.Time) (ConfirmResult, error) {
	rec, err := c.ding(id)
	if err != nil {
		return ConfirmResult{}, err
	}
	if idx < 0 || idx >= len(rec.Recipients) {
		return ConfirmResult{}, fmt.Errorf("%w: %s", ErrNotRecipient, id)
	}
	s, err := c.state(id, idx)
	if err != nil {
		return ConfirmResult{}, err
	}
	if s.Status == StatusRemoved {
		// Offboarded: a link in an old mail must not speak for them
		// (in the app, their tokens no longer work).
		return ConfirmResult{}, fmt.Errorf("%w: %s (removed)", ErrNotRecipient, id)
	}
	return c.confirmRecipient(id, idx, rec, answer, ChannelEmail, now)
}

// confirmRecipient confirms for recipient idx by channel ch, checking the
// answer; a recipient already confirmed changes nothing (Already).
func (c *txn) confirmRecipient(id ID, idx int, rec *dingRecord, answer int, ch Channel, now time.Time) (ConfirmResult, error) {
	if answer < 0 || answer > len(rec.Choices) {
		return ConfirmResult{}, fmt.Errorf("%w: answer %d, the DING has %d choices", ErrBadAnswer, answer, len(rec.Choices))
	}
	s, err := c.state(id, idx)
	if err != nil {
		return ConfirmResult{}, err
	}
	if s.Status == StatusConfirmed { // confirm changes nothing: say what stands
		return ConfirmResult{Already: true, Answer: s.Answer, Choice: choiceOf(rec, s.Answer), By: s.By, At: time.UnixMilli(s.Ended)}, nil
	}
	return ConfirmResult{Answer: answer, Choice: choiceOf(rec, answer), By: ch, At: now}, c.confirm(id, idx, s, rec, ch, answer, now)
}

// choiceOf returns the text of a 1-based answer; "" for 0 (or one out of
// range, from a corrupt state).
func choiceOf(rec *dingRecord, answer int) string {
	if answer < 1 || answer > len(rec.Choices) {
		return ""
	}
	return rec.Choices[answer-1]
}

// userState returns a user recipient's state, or nil if there is none (the
// DING is gone, or the user is not a recipient). Only store failures are
// errors, so that the read or ack calling it is never half applied.
func (c *txn) userState(id ID, user string) (*dingRecord, *rcptState, int, error) {
	rec, err := c.ding(id)
	if errors.Is(err, ErrNotFound) {
		return nil, nil, 0, nil
	}
	if err != nil {
		return nil, nil, 0, abort(err)
	}
	idx := slices.Index(rec.Recipients, user)
	if idx < 0 {
		return nil, nil, 0, nil
	}
	s, err := c.state(id, idx)
	if errors.Is(err, ErrNotFound) {
		return nil, nil, 0, nil
	}
	if err != nil {
		return nil, nil, 0, abort(err)
	}
	return rec, s, idx, nil
}

// dingRead is called for each DING a read moved to read.
func (c *txn) dingRead(id ID, user string, now time.Time) error {
	rec, s, idx, err := c.userState(id, user)
	if err != nil || s == nil {
		return err
	}
	if err := c.ledger(id, idx, s, rec, DingEvent{Event: LedgerRead, Channel: ChannelInApp, At: now}); err != nil {
		return err
	}
	if s.Status == StatusPending && rec.Until == StopRead {
		c.stop(id, idx, s, rec, StatusRead, ChannelInApp, now)
	}
	return nil
}

// dingDelivered is called for each DING a device acknowledged for the
// first time.
func (c *txn) dingDelivered(id ID, user, device string, now time.Time) error {
	rec, s, idx, err := c.userState(id, user)
	if err != nil || s == nil {
		return err
	}
	return c.ledger(id, idx, s, rec, DingEvent{Event: LedgerDelivered, Channel: ChannelInApp, Device: device, At: now})
}

// applyCancel stops DING id's pending recipients and says how many.
func (c *txn) applyCancel(id ID, now time.Time) (int, error) {
	rec, err := c.ding(id)
	if err != nil {
		return 0, err
	}
	stopped := 0
	for i := range rec.Recipients {
		s, err := c.state(id, i)
		if err != nil {
			return stopped, err
		}
		if s.Status != StatusPending {
			continue
		}
		if err := c.ledger(id, i, s, rec, DingEvent{Event: LedgerCancelled, At: now}); err != nil {
			return stopped, err
		}
		c.stop(id, i, s, rec, StatusCancelled, 0, now)
		stopped++
	}
	return stopped, nil
}

// ref returns a provider reference's value as this batch sees it.
func (c *txn) ref(ref string) ([]byte, error) {
	if v, ok := c.refs[ref]; ok {
		return v, nil
	}
	v, err := c.e.st.Get(refKey(ref))
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: provider reference", ErrNotFound)
	}
	return v, err
}

func (c *txn) setRef(ref string, v []byte) {
	c.refs[ref] = v
	c.batch.Set(refKey(ref), v)
}

// sendTarget is the recipient and send a provider reference names.
type sendTarget struct {
	id      ID
	idx     int
	ch      Channel
	attempt int
	raw     []byte // the reference's value; longer than 20 bytes once its outcome was acted on
	rec     *dingRecord
	s       *rcptState
}

// target looks a provider reference up, with its DING and recipient state.
func (c *txn) target(ref string) (*sendTarget, error) {
	v, err := c.ref(ref)
	if err != nil {
		return nil, err
	}
	t := &sendTarget{raw: v}
	if t.id, t.idx, t.ch, t.attempt, err = parseRefValue(v[:min(len(v), 20)]); err != nil {
		return nil, err
	}
	if t.rec, err = c.ding(t.id); err != nil {
		return nil, err
	}
	if t.s, err = c.state(t.id, t.idx); err != nil {
		return nil, err
	}
	return t, nil
}

var providerLedger = map[ProviderEvent]LedgerKind{
	ProviderSMSQueued: "", ProviderSMSSent: LedgerSMSSent, ProviderSMSDelivered: LedgerSMSDelivered, ProviderSMSFailed: LedgerSMSFailed,
	ProviderCallInitiated: "", ProviderCallRinging: LedgerCallRinging, ProviderCallAnswered: LedgerCallAnswered,
	ProviderCallCompleted: LedgerCallCompleted, ProviderCallBusy: LedgerCallBusy, ProviderCallNoAnswer: LedgerCallNoAnswer,
	ProviderCallFailed: LedgerCallFailed,
}

func (c *txn) applyProviderStatus(ref string, pe ProviderEvent, detail string, now time.Time) error {
	kind, known := providerLedger[pe]
	if !known {
		return fmt.Errorf("%w: provider event %d", ErrBadAnswer, pe)
	}
	if kind == "" {
		// Already recorded when the provider accepted the send; only
		// check that the reference is ours.
		_, err := c.ref(ref)
		return err
	}
	t, err := c.target(ref)
	if err != nil {
		return err
	}
	id, idx, ch, attempt, rec, s, v := t.id, t.idx, t.ch, t.attempt, t.rec, t.s, t.raw
	detail = clip(detail, 64)
	if err := c.ledger(id, idx, s, rec, DingEvent{Event: kind, Channel: ch, Detail: detail, At: now}); err != nil {
		return err
	}
	// A final status ends the wait for it (once: a repeated or late one
	// finds the timer gone).
	waited := false
	if finalStatus[pe] {
		if i := slices.IndexFunc(s.Timers, func(w timerRef) bool { return w.Kind == timerWait && w.Reason == ref }); i >= 0 {
			_, waited = c.removeTimer(id, idx, s, s.Timers[i].N)
		}
	}
	terminal := pe == ProviderSMSFailed || pe == ProviderCallBusy || pe == ProviderCallNoAnswer || pe == ProviderCallFailed
	if terminal && len(v) == 20 && s.Status == StatusPending { // not acted on yet
		c.setRef(ref, append(v[:20:20], 1))
		if ch == ChannelSMS {
			err = c.retryLater(id, idx, s, rec, ch, attempt, now)
		} else {
			err = c.fallback(id, idx, s, rec, now)
		}
		if err != nil {
			return err
		}
	}
	if !waited {
		return nil
	}
	return c.exhaust(id, idx, s, rec, "", now)
}

// finalStatus are the provider events after which nothing more is
// awaited of an SMS or call: what it could lead to (a retry, a fallback,
// a keypress) has happened or never will. A call answered may still get
// a keypress: its end is "completed". An SMS "sent" is final although a
// carrier may report it undelivered later (that still retries).
var finalStatus = map[ProviderEvent]bool{
	ProviderSMSSent: true, ProviderSMSDelivered: true, ProviderSMSFailed: true,
	ProviderCallCompleted: true, ProviderCallBusy: true, ProviderCallNoAnswer: true, ProviderCallFailed: true,
}

// retryLater arms a retry of a failed send, or gives up after
// MaxSendAttempts.
func (c *txn) retryLater(id ID, idx int, s *rcptState, rec *dingRecord, ch Channel, attempt int, now time.Time) error {
	if attempt >= MaxSendAttempts {
		return c.ledger(id, idx, s, rec, DingEvent{Event: LedgerSendFailed, Channel: ch, Detail: fmt.Sprintf("%d attempts", attempt), At: now})
	}
	wait := sendBackoff(attempt)
	c.addTimer(id, idx, s, timerRef{Kind: timerSend, Ch: ch, Attempt: attempt + 1, Reason: "retry", Due: ms(now.Add(wait))})
	return c.ledger(id, idx, s, rec, DingEvent{Event: LedgerRetry, Channel: ch, Detail: fmt.Sprintf("attempt %d in %v", attempt+1, wait), At: now})
}

// fallback sends an SMS at once because a call did not reach the person.
func (c *txn) fallback(id ID, idx int, s *rcptState, rec *dingRecord, now time.Time) error {
	if c.e.cfg.NoCallFallback {
		return nil
	}
	if err := c.ledger(id, idx, s, rec, DingEvent{Event: LedgerFallback, Channel: ChannelSMS, At: now}); err != nil {
		return err
	}
	return c.startSend(id, idx, s, rec, ChannelSMS, now)
}

func (c *txn) applyDigits(ref, digits string, now time.Time) error {
	t, err := c.target(ref)
	if err != nil {
		return err
	}
	if t.ch != ChannelVoice {
		return fmt.Errorf("%w: not a call", ErrNotFound)
	}
	id, idx, rec, s := t.id, t.idx, t.rec, t.s
	digits = clip(strings.TrimSpace(digits), 8)
	if err := c.ledger(id, idx, s, rec, DingEvent{Event: LedgerDigits, Channel: ChannelVoice, Detail: digits, At: now}); err != nil {
		return err
	}
	answer, ok := parseAnswer(digits, rec.Choices, false)
	if !ok {
		return fmt.Errorf("%w: key %q", ErrBadAnswer, digits)
	}
	return c.confirm(id, idx, s, rec, ChannelVoice, answer, now)
}

// parseAnswer maps a keypress or an SMS reply to an answer: "1" confirms
// (choosing the first choice, if any); another choice's number chooses
// it; in replies, words like OK, yes or 收到 confirm without a choice.
func parseAnswer(s string, choices []string, words bool) (int, bool) {
	s = strings.ToLower(strings.TrimSpace(strings.Trim(s, ".!。！")))
	if n, err := strconv.Atoi(s); err == nil {
		switch {
		case n == 1 && len(choices) == 0:
			return 0, true
		case n >= 1 && n <= len(choices):
			return n, true
		}
		return 0, false
	}
	if words {
		switch s {
		case "ok", "okay", "yes", "y", "confirm", "confirmed", "收到", "好", "确认", "確認", "好的":
			return 0, true
		}
	}
	return 0, false
}

func (c *txn) applyInboundSMS(phone, body string, now time.Time) error {
	p := phonePrefix(phone)
	// The pending DING most recently sent to the phone is the last key
	// (keys carry the send time). A stop in this same batch is caught below.
	k, _, err := c.e.st.Last(p, prefixEnd(p))
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: nothing pending for this phone", ErrNotFound)
	}
	if err != nil {
		return err
	}
	if len(k) != len(p)+26 {
		return ErrCorrupt
	}
	var id ID
	copy(id[:], k[len(p)+8:])
	idx := int(k[len(k)-2])<<8 | int(k[len(k)-1])
	rec, err := c.ding(id)
	if err != nil {
		return err
	}
	s, err := c.state(id, idx)
	if err != nil {
		return err
	}
	if s.Status != StatusPending {
		return fmt.Errorf("%w: nothing pending for this phone", ErrNotFound)
	}
	answer, ok := parseAnswer(body, rec.Choices, true)
	if !ok {
		text := clip(body, 160)
		if err := c.ledger(id, idx, s, rec, DingEvent{Event: LedgerReply, Channel: ChannelSMS, Detail: text, At: now}); err != nil {
			return err
		}
		return fmt.Errorf("%w: reply", ErrBadAnswer)
	}
	return c.confirm(id, idx, s, rec, ChannelSMS, answer, now)
}

func (c *txn) applySendResult(t sendTask, ref string, sendErr error, now time.Time) error {
	rec, err := c.ding(t.id)
	if err != nil {
		return err
	}
	s, err := c.state(t.id, t.idx)
	if err != nil {
		return err
	}
	_, removed := c.removeTimer(t.id, t.idx, s, t.n)
	if err := c.recordSendResult(t, rec, s, ref, sendErr, now); err != nil {
		return err
	}
	if !removed {
		return nil // stopped since the send was decided; nothing was pending
	}
	return c.exhaust(t.id, t.idx, s, rec, "", now)
}

// recordSendResult records what the provider answered a send, and what
// follows: a wait for its final status, a retry, a fallback.
func (c *txn) recordSendResult(t sendTask, rec *dingRecord, s *rcptState, ref string, sendErr error, now time.Time) error {
	switch t.ch {
	case ChannelEmail:
		return c.recordEmailResult(t, rec, s, ref, sendErr, now)
	case ChannelPush:
		return c.recordPushResult(t, rec, s, ref, sendErr, now)
	}
	ev := DingEvent{Channel: t.ch, At: now}
	switch {
	case sendErr == nil:
		c.e.metrics.step(t.ch, "sent")
		if ref != "" {
			c.setRef(ref, refValue(t.id, t.idx, t.ch, t.attempt))
			if s.Status == StatusPending && len(rec.Plan) > 1 {
				// Its final status may still call for a retry or a
				// fallback (or bring a keypress): wait for it, to say
				// when the policy is exhausted (never said of a policy
				// of one step).
				c.addTimer(t.id, t.idx, s, timerRef{Kind: timerWait, Ch: t.ch, Attempt: t.attempt, Reason: ref, Due: ms(now.Add(c.e.cfg.OutcomeWait))})
			}
		}
		ev.Event, ev.Detail = LedgerSMSQueued, ref
		if t.ch == ChannelVoice {
			ev.Event = LedgerCallInitiated
		}
		return c.ledger(t.id, t.idx, s, rec, ev)
	case errors.Is(sendErr, ErrNotConfigured):
		c.e.metrics.step(t.ch, "not_configured")
		ev.Event = LedgerNotConfigured
		return c.ledger(t.id, t.idx, s, rec, ev)
	case errors.Is(sendErr, ErrRejected):
		c.e.metrics.step(t.ch, "rejected")
		ev.Event, ev.Detail = LedgerSMSFailed, "rejected by the provider"
		if t.ch == ChannelVoice {
			ev.Event = LedgerCallFailed
		}
		if err := c.ledger(t.id, t.idx, s, rec, ev); err != nil {
			return err
		}
		if t.ch == ChannelVoice && s.Status == StatusPending {
			return c.fallback(t.id, t.idx, s, rec, now)
		}
		return nil
	default:
		c.e.metrics.step(t.ch, "error")
		if s.Status != StatusPending {
			return nil
		}
		return c.retryLater(t.id, t.idx, s, rec, t.ch, t.attempt, now)
	}
}

// recordEmailResult records what the mail server answered an e-mail. An
// e-mail has no status reports to wait for (bounces are not read): the
// server's acceptance is its outcome. A permanent refusal (SMTP 5xx) is
// final; a temporary one (4xx) or an unreachable server is retried with
// backoff, each failure in the ledger with the SMTP code.
func (c *txn) recordEmailResult(t sendTask, rec *dingRecord, s *rcptState, ref string, sendErr error, now time.Time) error {
	ev := DingEvent{Channel: ChannelEmail, At: now}
	var pd ProviderDetailer
	detail := ""
	if errors.As(sendErr, &pd) {
		detail = clip(pd.ProviderDetail(), 32)
	}
	switch {
	case sendErr == nil:
		c.e.metrics.step(ChannelEmail, "sent")
		ev.Event, ev.Detail = LedgerEmailSent, clip(ref, 128)
		return c.ledger(t.id, t.idx, s, rec, ev)
	case errors.Is(sendErr, ErrNotConfigured):
		c.e.metrics.step(ChannelEmail, "not_configured")
		ev.Event = LedgerNotConfigured
		return c.ledger(t.id, t.idx, s, rec, ev)
	case errors.Is(sendErr, ErrRejected):
		c.e.metrics.step(ChannelEmail, "rejected")
		if detail == "" {
			detail = "rejected"
		}
		ev.Event, ev.Detail = LedgerEmailFailed, detail+"; permanent, not retried"
		return c.ledger(t.id, t.idx, s, rec, ev)
	default:
		c.e.metrics.step(ChannelEmail, "error")
		if s.Status != StatusPending {
			return nil
		}
		if detail == "" {
			detail = "mail server unreachable"
		}
		ev.Event, ev.Detail = LedgerEmailFailed, detail+"; temporary"
		if err := c.ledger(t.id, t.idx, s, rec, ev); err != nil {
			return err
		}
		return c.retryLater(t.id, t.idx, s, rec, ChannelEmail, t.attempt, now)
	}
}

// fireTimers runs the timers the timer loop found due.
func (c *txn) fireTimers(keys [][]byte, now time.Time) error {
	for _, k := range keys {
		due, id, idx, n, err := parseTimerKey(k)
		if err != nil {
			c.e.log.Error("dropping corrupt timer key", "key", fmt.Sprintf("%x", k))
			c.batch.Delete(k)
			continue
		}
		if idx == secretTimerIdx {
			if err := c.fireSecret(k, due, id, n, now); err != nil {
				return err
			}
			continue
		}
		s, err := c.state(id, idx)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
			c.e.log.Error("dropping a timer whose escalation state is missing or corrupt", "ding", id.String(), "recipient", idx, "err", err)
			c.batch.Delete(k)
			continue
		}
		if err != nil {
			return err
		}
		i := slices.IndexFunc(s.Timers, func(t timerRef) bool { return t.N == n && t.Due == due })
		if i < 0 {
			c.batch.Delete(k) // disarmed by an op since the timer loop's scan
			continue
		}
		t := s.Timers[i]
		c.e.metrics.lateness.Observe(max(0, now.Sub(time.UnixMilli(due)).Seconds()))
		c.removeTimer(id, idx, s, n)
		if t.Recover && c.e.inflightHas(inflightKey(id, idx, n)) {
			// The send is still in flight here: wait for its outcome.
			t.Due = ms(now.Add(c.e.cfg.RecoverAfter))
			c.addTimer(id, idx, s, t)
			continue
		}
		if s.Status != StatusPending {
			continue
		}
		rec, err := c.ding(id)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
			c.e.log.Error("dropping a timer whose DING is missing or corrupt", "ding", id.String(), "err", err)
			continue
		}
		if err != nil {
			return err
		}
		switch t.Kind {
		case timerStep:
			if t.Step == s.Next {
				err = c.advance(id, idx, s, rec, now)
			} else {
				err = c.exhaust(id, idx, s, rec, "", now) // not next any more: it was only disarmed
			}
			if err != nil {
				return err
			}
		case timerWait:
			// No final status came for a send: stop waiting for it.
			detail := fmt.Sprintf("%s: no final status from the provider within %v", t.Ch, c.e.cfg.OutcomeWait)
			if err := c.exhaust(id, idx, s, rec, detail, now); err != nil {
				return err
			}
		case timerSend:
			quiet := t.Recover && c.e.deferredTake(inflightKey(id, idx, n))
			if t.Recover && !quiet {
				if err := c.ledger(id, idx, s, rec, DingEvent{Event: LedgerRetry, Channel: t.Ch, Detail: "outcome never recorded (a restart); sending again", At: now}); err != nil {
					return err
				}
			}
			if err := c.dispatch(id, idx, s, rec, t.Ch, t.Attempt, quiet, now); err != nil {
				return err
			}
			// A retried e-mail whose address is gone by now was not sent
			// (no_email): that may have been the last thing to try.
			if err := c.exhaust(id, idx, s, rec, "", now); err != nil {
				return err
			}
		}
	}
	return nil
}
