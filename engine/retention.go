package engine

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// Retention: what the engine deletes in the background, and when.
//
// A sweep (Engine.Sweep; the sweeper goroutine runs one every
// Retention.Interval) reads the store outside the commit loop, decides
// what is past retention, and deletes it through the pipeline's
// background lane in ops of at most sweepChunk writes, mostly range
// deletions, waiting for each before reading on: submits never wait
// behind more than one such op, and a sweep can be stopped between any
// two. Everything it decides from its reads stays true until its op
// applies, because what it looks at only moves one way: streams only
// grow at their head (a sweep never deletes a stream's last entry), and
// a DING or a must-confirm message only settles. So the worst a race
// costs is something kept until the next sweep.
//
// What goes, with Retention's zero values meaning its defaults:
//
//   - Stream entries older than MaxAge, or beyond a stream's newest
//     MaxEntries (neither, by default: streams are kept). A stream's
//     last entry always stays (it is the stream's head: seqs never
//     restart), and so does an entry of a DING not yet settled for the
//     stream's user or of a must-confirm announcement the user has not
//     confirmed. The stream's trim mark ('T' | user) records the newest
//     seq a sweep found past retention: at and below it entries may be
//     missing and may name deleted messages (Range skips those); above
//     it the stream is gap-free. Devices resuming below it resume at the
//     first entry kept (WELCOME's resume_from says where).
//   - Messages older than MaxAge, with their receipts, and for a DING
//     its record, recipients' states and ledger; unless the DING is not
//     settled (a recipient still escalating: settled means stopped, or
//     every step taken with nothing left to wait for, exhausted), the
//     announcement asks for confirmation and someone still in the
//     directory (not offboarded: they never will) has not confirmed,
//     the message is a live secret message (it burns on its own), its
//     fan-out is still running, or an outbox record for another
//     partition names it (relay.go).
//   - Client-message-id keys older than DedupeWindow (default 7 days):
//     a retry with the same id after that is a new message.
//   - Quota counters of past days, and last-DING times older than the
//     recipient interval (both after a day).
//   - Provider references (SMS and call SIDs) of DINGs older than a week
//     whose recipient is settled.
//   - Daily statistics older than StatsAge (default 400 days).
type Retention struct {
	// MaxAge is how long stream entries and messages are kept; zero
	// keeps them forever. At least MinRetentionAge.
	MaxAge time.Duration
	// MaxEntries bounds each stream to its newest entries; zero: no
	// bound. At least MinRetentionEntries. Messages go by age only.
	MaxEntries int
	// DedupeWindow is how long a client message id deduplicates
	// retries; zero means 7 days, negative forever.
	DedupeWindow time.Duration
	// StatsAge is how long daily statistics are kept; zero means 400
	// days, negative forever.
	StatsAge time.Duration
	// Interval is the time between sweeps; zero means 10 minutes,
	// negative turns the sweeper off (Sweep still works).
	Interval time.Duration
}

// Bounds of Retention, against a typo (a fan-out in progress is kept
// whatever the age; see messageUnsettled).
const (
	MinRetentionAge     = time.Minute
	MinRetentionEntries = 100
	MinDedupeWindow     = time.Minute
)

const (
	defaultDedupeWindow      = 7 * 24 * time.Hour
	defaultStatsAge          = 400 * 24 * time.Hour
	defaultRetentionInterval = 10 * time.Minute
	// refAge: a provider's status callbacks come within minutes; a week
	// is a wide margin.
	refAge = 7 * 24 * time.Hour
	// sweepChunk bounds the writes of one sweep op (and the items one
	// read collects before an op).
	sweepChunk = 1024
)

func (r *Retention) setDefaults() {
	if r.DedupeWindow == 0 {
		r.DedupeWindow = defaultDedupeWindow
	}
	if r.StatsAge == 0 {
		r.StatsAge = defaultStatsAge
	}
	if r.Interval == 0 {
		r.Interval = defaultRetentionInterval
	}
}

func (r *Retention) validate() error {
	switch {
	case r.MaxAge < 0 || r.MaxEntries < 0:
		return errors.New("engine: config: retention must not be negative")
	case r.MaxAge > 0 && r.MaxAge < MinRetentionAge:
		return fmt.Errorf("engine: config: retention age %v is below %v", r.MaxAge, MinRetentionAge)
	case r.MaxEntries > 0 && r.MaxEntries < MinRetentionEntries:
		return fmt.Errorf("engine: config: retention of %d entries per stream is below %d", r.MaxEntries, MinRetentionEntries)
	case r.DedupeWindow > 0 && r.DedupeWindow < MinDedupeWindow:
		return fmt.Errorf("engine: config: dedupe window %v is below %v", r.DedupeWindow, MinDedupeWindow)
	case r.StatsAge > 0 && r.StatsAge < 48*time.Hour:
		return fmt.Errorf("engine: config: statistics age %v is below 48h", r.StatsAge)
	}
	return nil
}

// SweepReport counts what one sweep deleted, and what it kept past
// retention because it was not settled.
type SweepReport struct {
	Entries  int `json:"entries"`  // stream entries
	Messages int `json:"messages"` // messages (with their receipts)
	Dings    int `json:"dings"`    // DING records (with states and ledgers), among Messages
	Dedupe   int `json:"dedupe"`   // client message id keys
	Quotas   int `json:"quotas"`   // quota counters
	Refs     int `json:"refs"`     // provider references
	Days     int `json:"days"`     // days of statistics
	// Held: entries and messages past retention kept because a DING or a
	// must-confirm message they belong to is not settled.
	Held int           `json:"held"`
	Took time.Duration `json:"-"`
}

func trimMarkKey(user string) []byte { return append([]byte{prefixTrimmed}, user...) }

// TrimMark returns the newest seq of user's stream that a sweep found
// past retention (0: none): entries at or below it may be gone.
func (e *Engine) TrimMark(user string) (uint64, error) {
	v, err := e.st.Get(trimMarkKey(user))
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return parseU64(v)
}

// FirstFrom returns the seq of the first entry of user's stream at or
// after from, or head+1 when there is none: where a device resuming
// from there starts (retention may have deleted entries after its
// cursor).
func (e *Engine) FirstFrom(user string, from uint64) (uint64, error) {
	head, err := e.Head(user)
	if err != nil || from > head {
		return max(from, head+1), err
	}
	first := head + 1
	err = e.st.Scan(inboxKey(user, from), inboxKey(user, head+1), func(k, _ []byte) bool {
		first, err = seqFromInboxKey(k)
		return false
	})
	return first, err
}

// ResumeFrom returns the first seq a device of user whose cursor is
// cursor will be sent: cursor+1, unless retention deleted entries after
// the cursor (it is below the stream's trim mark), then the first entry
// kept after it.
func (e *Engine) ResumeFrom(user string, cursor uint64) (uint64, error) {
	mark, err := e.TrimMark(user)
	if err != nil || cursor >= mark {
		return cursor + 1, err
	}
	return e.FirstFrom(user, cursor+1)
}

// sweepWrites collects one sweep op's writes.
type sweepWrites struct {
	dels   [][]byte
	ranges [][2][]byte
	sets   [][2][]byte
	forget []ID // messages to drop from the cache once deleted
}

func (w *sweepWrites) n() int { return len(w.dels) + len(w.ranges) + len(w.sets) }

func (w *sweepWrites) delRange(lo, hi []byte) { w.ranges = append(w.ranges, [2][]byte{lo, hi}) }

// flush applies w through the pipeline's background lane, waits for it
// to be durable, and empties w.
func (e *Engine) sweepFlush(ctx context.Context, w *sweepWrites) error {
	if w.n() == 0 {
		return nil
	}
	dels, ranges, sets, forget := w.dels, w.ranges, w.sets, w.forget
	*w = sweepWrites{}
	err := wait(ctx, func(done func(error)) {
		// Ungated: deletions go through while the disk guard refuses
		// writes (SetReadOnly), since they are how a nearly full disk is
		// freed (a few bytes of log each; Pebble's compactions then drop
		// what they cover). The trim marks set beside them are as small.
		o := e.op(func(c *txn) error {
			for _, r := range ranges {
				c.batch.DeleteRange(r[0], r[1])
			}
			for _, k := range dels {
				c.batch.Delete(k)
			}
			for _, kv := range sets {
				c.batch.Set(kv[0], kv[1])
			}
			return nil
		}, done, max(1, (len(dels)+len(ranges)+len(sets))/4))
		o.Background, o.Ungated = true, true
		_ = e.pipe.Enqueue(o)
	})
	if err != nil {
		return err
	}
	for _, id := range forget {
		e.cache.forget(id)
	}
	return nil
}

// Sweep deletes what is past retention now (see Retention), in ops of
// its own; one sweep runs at a time. The sweeper calls it every
// Retention.Interval; tests and dingctl call it directly.
func (e *Engine) Sweep(ctx context.Context) (SweepReport, error) {
	e.sweepMu.Lock()
	defer e.sweepMu.Unlock()
	start := time.Now()
	now := e.cfg.Clock.Now()
	var r SweepReport
	var w sweepWrites
	err := e.sweepStreams(ctx, now, &w, &r)
	if err == nil {
		err = e.sweepMessages(ctx, now, &w, &r)
	}
	if err == nil {
		err = e.sweepDedupe(ctx, now, &w, &r)
	}
	if err == nil {
		err = e.sweepQuotas(ctx, now, &w, &r)
	}
	if err == nil {
		err = e.sweepRefs(ctx, now, &w, &r)
	}
	if err == nil {
		err = e.sweepStats(now, &w, &r)
	}
	if err == nil {
		err = e.sweepFlush(ctx, &w)
	}
	r.Took = time.Since(start)
	e.metrics.sweep(&r, err)
	return r, err
}

func (e *Engine) sweeperLoop() {
	defer close(e.sweeperDone)
	iv := e.cfg.Retention.Interval
	if iv < 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-e.stopTimers:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		select {
		case <-e.cfg.Clock.Until(e.cfg.Clock.Now().Add(iv)):
		case <-e.stopTimers:
			return
		}
		r, err := e.Sweep(ctx)
		switch {
		case ctx.Err() != nil || errors.Is(err, ErrClosed) || errors.Is(err, ErrFailed):
			return
		case err != nil:
			e.log.Error("retention sweep failed; trying again at the next", "err", err)
		case r.Entries+r.Messages+r.Dedupe+r.Quotas+r.Refs+r.Days > 0:
			e.log.Info("retention sweep", "entries", r.Entries, "messages", r.Messages, "dings", r.Dings,
				"dedupe_keys", r.Dedupe, "quota_keys", r.Quotas, "refs", r.Refs, "stat_days", r.Days, "held", r.Held,
				"took", r.Took.Round(time.Millisecond))
		}
	}
}

// nextStream returns the user of the first stream at or after start.
func (e *Engine) nextStream(start []byte) (string, bool, error) {
	var user string
	var found bool
	err := e.st.Scan(start, []byte{prefixInbox + 1}, func(k, _ []byte) bool {
		if len(k) >= 10 {
			user, found = string(k[1:len(k)-9]), true
		}
		return false
	})
	return user, found, err
}

// entryTime returns when an entry was written, as its payload says: the
// message's id for a message or a burn, the event's time otherwise.
func entryTime(ent *Entry, id ID) int64 {
	switch ent.Kind {
	case EntryMessage:
		return ms(id.Time())
	case EntryBurn:
		return ms(ent.Burn.Time())
	case EntryReceipt:
		return ms(ent.Receipt.At)
	case EntryDing:
		return ms(ent.Ding.At)
	case EntrySecret:
		return ms(ent.Secret.At)
	}
	return math.MaxInt64
}

func (e *Engine) sweepStreams(ctx context.Context, now time.Time, w *sweepWrites, r *SweepReport) error {
	ret := e.cfg.Retention
	if ret.MaxAge <= 0 && ret.MaxEntries <= 0 {
		return nil
	}
	cutoff := int64(math.MinInt64)
	if ret.MaxAge > 0 {
		cutoff = ms(now.Add(-ret.MaxAge))
	}
	type cand struct {
		seq   uint64
		id    ID
		flags byte
	}
	start := []byte{prefixInbox}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		user, ok, err := e.nextStream(start)
		if err != nil || !ok {
			return err
		}
		head, err := e.Head(user)
		if err != nil {
			return err
		}
		var keepFrom uint64 // entries below it are beyond MaxEntries
		if ret.MaxEntries > 0 && head > uint64(ret.MaxEntries) {
			keepFrom = head - uint64(ret.MaxEntries) + 1
		}
		var cands []cand
		var lastOld uint64 // the newest seq found past retention
		more := false
		p := inboxPrefix(user)
		err = e.scanStream(user, 0, head, func(ent Entry, id ID) bool {
			seq := ent.Seq
			if entryTime(&ent, id) >= cutoff && (keepFrom == 0 || seq >= keepFrom) {
				return false
			}
			lastOld = seq
			if seq == head {
				return false // the head stays
			}
			cands = append(cands, cand{seq, id, ent.flags})
			if len(cands) >= sweepChunk {
				more = true
				return false
			}
			return true
		})
		if err != nil {
			return fmt.Errorf("stream %s: %w", user, err)
		}
		deleted := 0
		var run []uint64 // [first, last] of the run being collected
		endRun := func() {
			if run != nil {
				w.delRange(inboxKey(user, run[0]), inboxKey(user, run[1]+1))
				run = nil
			}
		}
		for _, c := range cands {
			keep := false
			if c.flags&(entryFlagDing|entryFlagAnnouncement) != 0 {
				if keep, err = e.entryUnsettled(user, c.id, c.flags); err != nil {
					return err
				}
			}
			if keep {
				r.Held++
				endRun()
				continue
			}
			deleted++
			if run == nil {
				run = []uint64{c.seq, c.seq}
			} else {
				run[1] = c.seq
			}
		}
		endRun()
		r.Entries += deleted
		if lastOld > 0 {
			mark, err := e.TrimMark(user)
			if err != nil {
				return err
			}
			if lastOld > mark {
				w.sets = append(w.sets, [2][]byte{trimMarkKey(user), u64(lastOld)})
			}
		}
		if w.n() >= sweepChunk || more {
			if err := e.sweepFlush(ctx, w); err != nil {
				return err
			}
		}
		if !more || deleted == 0 {
			start = prefixEnd(p) // next stream (or: a whole chunk held, go on)
		}
	}
}

// entryUnsettled reports whether user's stream must keep an entry past
// retention: a DING not settled for user, or a must-confirm
// announcement user has not confirmed.
func (e *Engine) entryUnsettled(user string, id ID, flags byte) (bool, error) {
	if flags&entryFlagDing != 0 {
		rec, err := e.loadDing(id)
		if errors.Is(err, ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		for idx, to := range rec.Recipients {
			if to != user {
				continue
			}
			s, err := e.loadState(id, idx)
			if errors.Is(err, ErrNotFound) {
				return false, nil
			}
			if err != nil {
				return false, err
			}
			return !settled(s, rec), nil
		}
		return false, nil
	}
	m, err := e.Message(id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil || m.Flags&FlagConfirm == 0 || e.removed(user) {
		return false, err // a removed user will never confirm
	}
	v, err := e.st.Get(receiptKey(id, user))
	if errors.Is(err, store.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	rc, err := decodeReceipt(user, v)
	if err != nil {
		return false, err
	}
	return rc.State < StateConfirmed, nil
}

// removed reports whether the directory says user was removed
// (offboarded); false when the engine cannot tell (no ActiveFilter).
func (e *Engine) removed(user string) bool {
	return e.active != nil && !e.active.Active(user)
}

// settled reports whether a DING recipient's escalation is over: stopped,
// or every step taken with nothing left to wait for (exhausted; a later
// confirmation is still recorded while the DING is kept).
func settled(s *rcptState, rec *dingRecord) bool {
	return s.Status != StatusPending || (s.Next >= len(rec.Plan) && len(s.Timers) == 0)
}

func (e *Engine) sweepMessages(ctx context.Context, now time.Time, w *sweepWrites, r *SweepReport) error {
	if e.cfg.Retention.MaxAge <= 0 {
		return nil
	}
	var cutoff ID
	binary.BigEndian.PutUint64(cutoff[:8], uint64(ms(now.Add(-e.cfg.Retention.MaxAge)))<<16)
	lower := []byte{prefixMessage}
	upper := messageKey(cutoff)
	// Read before the messages: a message past retention was stored with
	// its outbox records, which only go once relayed.
	outboxed, err := e.outboxedMessages()
	if err != nil {
		return err
	}
	type msg struct {
		id     ID
		kind   Kind
		flags  uint32
		secret bool
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var batch []msg
		var derr error
		err := e.st.Scan(lower, upper, func(k, v []byte) bool {
			if len(k) != 17 {
				derr = fmt.Errorf("message key %x: %w", k, ErrCorrupt)
				return false
			}
			var id ID
			copy(id[:], k[1:])
			m, err := decodeMessage(id, v)
			if err != nil {
				derr = fmt.Errorf("message %s: %w", id, err)
				return false
			}
			batch = append(batch, msg{id: id, kind: m.Kind, flags: m.Flags, secret: m.Chat != ID{}})
			return len(batch) < sweepChunk
		})
		if err == nil {
			err = derr
		}
		if err != nil || len(batch) == 0 {
			return err
		}
		lower = append(messageKey(batch[len(batch)-1].id), 0)
		var run []ID // [first, last] of the run of deletable messages
		endRun := func() {
			if run != nil {
				w.delRange(messageKey(run[0]), append(messageKey(run[1]), 0))
				w.delRange(receiptPrefix(run[0]), prefixEnd(receiptPrefix(run[1])))
				run = nil
			}
		}
		for _, m := range batch {
			keep := outboxed[m.id] // not yet relayed to another partition
			if !keep {
				var err error
				if keep, err = e.messageUnsettled(m.id, m.kind, m.flags, m.secret, w); err != nil {
					return err
				}
			}
			if keep {
				r.Held++
				endRun()
				continue
			}
			r.Messages++
			if m.kind == KindDing {
				r.Dings++
			}
			w.forget = append(w.forget, m.id)
			if run == nil {
				run = []ID{m.id, m.id}
			} else {
				run[1] = m.id
			}
		}
		endRun()
		if err := e.sweepFlush(ctx, w); err != nil {
			return err
		}
	}
}

// messageUnsettled reports whether a message past retention must be
// kept; if not, it adds to w what goes with it besides the message and
// its receipts (a DING's record, states, ledger and index keys; an
// announcement's counts).
func (e *Engine) messageUnsettled(id ID, kind Kind, flags uint32, secret bool, w *sweepWrites) (bool, error) {
	if secret {
		if _, err := e.st.Get(secretKey(id)); err == nil {
			return true, nil // live: it burns on its own
		} else if !errors.Is(err, store.ErrNotFound) {
			return false, err
		}
	}
	if _, err := e.st.Get(jobKey(id)); err == nil {
		return true, nil // still fanning out
	} else if !errors.Is(err, store.ErrNotFound) {
		return false, err
	}
	switch {
	case kind == KindDing:
		rec, err := e.loadDing(id)
		if errors.Is(err, ErrNotFound) {
			break
		}
		if err != nil {
			return false, err
		}
		var extra [][]byte
		for idx, to := range rec.Recipients {
			s, err := e.loadState(id, idx)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return false, err
			}
			if !settled(s, rec) {
				return true, nil
			}
			if s.User && s.Status == StatusPending {
				extra = append(extra, pendingUserKey(to, id, idx))
			}
			if s.PhoneAt != 0 {
				extra = append(extra, phoneKey(s.Phone, s.PhoneAt, id, idx))
			}
		}
		w.dels = append(w.dels, extra...)
		w.dels = append(w.dels, dingKey(id), announcementKey(id))
		w.delRange(rcptPrefix(id), prefixEnd(rcptPrefix(id)))
		lp := append([]byte{prefixLedger}, id[:]...)
		w.delRange(lp, prefixEnd(lp))
	case flags&FlagConfirm != 0:
		unconfirmed := false
		var derr error
		p := receiptPrefix(id)
		err := e.st.Scan(p, prefixEnd(p), func(k, v []byte) bool {
			user := string(k[len(p):])
			rc, err := decodeReceipt(user, v)
			if err != nil {
				derr = err
				return false
			}
			// A removed (offboarded) user will never confirm: they do
			// not hold the message past retention.
			unconfirmed = rc.State < StateConfirmed && !e.removed(user)
			return !unconfirmed
		})
		if err == nil {
			err = derr
		}
		if err != nil || unconfirmed {
			return unconfirmed, err
		}
		w.dels = append(w.dels, announcementKey(id))
	case kind == KindAnnouncement:
		w.dels = append(w.dels, announcementKey(id))
	}
	return false, nil
}

// sweepKeys scans [lower, upper) in chunks and deletes each key that
// expired says has, counting them in *n.
func (e *Engine) sweepKeys(ctx context.Context, lower, upper []byte, w *sweepWrites, n *int, expired func(k, v []byte) (bool, error)) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var keys [][]byte
		var last []byte
		var ferr error
		seen := 0
		err := e.st.Scan(lower, upper, func(k, v []byte) bool {
			seen++
			last = append(last[:0], k...)
			x, err := expired(k, v)
			if err != nil {
				ferr = err
				return false
			}
			if x {
				keys = append(keys, append([]byte(nil), k...))
			}
			return len(keys) < sweepChunk && seen < 16*sweepChunk
		})
		if err == nil {
			err = ferr
		}
		if err != nil {
			return err
		}
		w.dels = append(w.dels, keys...)
		*n += len(keys)
		if err := e.sweepFlush(ctx, w); err != nil {
			return err
		}
		if len(keys) < sweepChunk && seen < 16*sweepChunk {
			return nil
		}
		lower = append(last, 0)
	}
}

func (e *Engine) sweepDedupe(ctx context.Context, now time.Time, w *sweepWrites, r *SweepReport) error {
	win := e.cfg.Retention.DedupeWindow
	if win < 0 {
		return nil
	}
	cutoff := now.Add(-win)
	return e.sweepKeys(ctx, []byte{prefixDedupe}, []byte{prefixDedupe + 1}, w, &r.Dedupe, func(_, v []byte) (bool, error) {
		if len(v) != 16 {
			return false, nil // not ours to judge: dingd check reports it
		}
		return ID(v).Time().Before(cutoff), nil
	})
}

func (e *Engine) sweepQuotas(ctx context.Context, now time.Time, w *sweepWrites, r *SweepReport) error {
	oldDay := utcDay(now.Add(-48 * time.Hour)) // today and yesterday stay
	lastDing := ms(now.Add(-max(24*time.Hour, e.cfg.Quotas.RecipientInterval)))
	return e.sweepKeys(ctx, []byte{prefixQuota}, []byte{prefixQuota + 1}, w, &r.Quotas, func(k, v []byte) (bool, error) {
		if len(k) < 3 {
			return false, nil
		}
		sep := -1
		for i := 2; i < len(k); i++ {
			if k[i] == 0 {
				sep = i
				break
			}
		}
		if sep < 0 {
			return false, nil
		}
		switch k[1] {
		case 's', 'b': // per day: sub is YYYYMMDD
			return string(k[sep+1:]) <= oldDay, nil
		case 'r': // the last DING from scope to sub
			t, err := parseU64(v)
			return err == nil && int64(t) < lastDing, nil
		}
		return false, nil
	})
}

func (e *Engine) sweepRefs(ctx context.Context, now time.Time, w *sweepWrites, r *SweepReport) error {
	cutoff := now.Add(-refAge)
	return e.sweepKeys(ctx, []byte{prefixRef}, []byte{prefixRef + 1}, w, &r.Refs, func(_, v []byte) (bool, error) {
		id, idx, _, _, err := parseRefValue(v[:min(len(v), 20)])
		if err != nil || !id.Time().Before(cutoff) {
			return false, nil
		}
		rec, err := e.loadDing(id)
		if errors.Is(err, ErrNotFound) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		s, err := e.loadState(id, idx)
		if errors.Is(err, ErrNotFound) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		return settled(s, rec), nil
	})
}

// sweepStats deletes the days of statistics older than StatsAge with two
// range deletions, if there are any.
func (e *Engine) sweepStats(now time.Time, w *sweepWrites, r *SweepReport) error {
	age := e.cfg.Retention.StatsAge
	if age < 0 {
		return nil
	}
	day := dayOf(now.Add(-age))
	for _, p := range []byte{prefixRollup, prefixUnanswered} {
		lo := []byte{p}
		hi := binary.BigEndian.AppendUint32([]byte{p}, day)
		days := map[uint32]bool{}
		err := e.st.Scan(lo, hi, func(k, _ []byte) bool {
			if len(k) >= 5 {
				days[binary.BigEndian.Uint32(k[1:5])] = true
			}
			return true
		})
		if err != nil {
			return err
		}
		if len(days) > 0 {
			w.delRange(lo, hi)
			r.Days = max(r.Days, len(days))
		}
	}
	return nil
}

// sweepState is the Engine's part of retention.
type sweepState struct {
	sweepMu     sync.Mutex // one sweep at a time
	sweeperDone chan struct{}
}
