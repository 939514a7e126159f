package engine

import (
	"context"
	"errors"
	"math"
	"slices"
	"time"
)

// The timer loop and the dispatch workers (see escalate.go for the design).
//
// The timer loop owns no timers: it seeks the first 't' key, waits on the
// clock until that key is due (or until a commit arms an earlier timer),
// then hands every due key, in order, to the commit loop as one op, and
// waits for it before seeking again. A restart needs no scan: the first
// seek finds the most overdue timer.

// timerBatch bounds the timers one fire op handles.
const timerBatch = 1024

// noteTimer is called after a commit armed timers: it lowers the loop's
// scan floor if needed and wakes it.
func (e *Engine) noteTimer(minDue int64) {
	for {
		cur := e.minArmed.Load()
		if minDue >= cur || e.minArmed.CompareAndSwap(cur, minDue) {
			break
		}
	}
	select {
	case e.timerWake <- struct{}{}:
	default:
	}
}

func (e *Engine) timerLoop() {
	defer close(e.timerDone)
	var floor int64 // no due timer has a due time below floor
	for {
		if m := e.minArmed.Swap(math.MaxInt64); m < floor {
			floor = m
		}
		now := e.cfg.Clock.Now()
		keys, next, err := e.dueTimers(floor, ms(now))
		if err != nil {
			e.log.Error("timer scan failed; retrying", "err", err)
			next = ms(now.Add(time.Second)) // try again in a second
		}
		if len(keys) > 0 {
			done := make(chan error, 1)
			e.applyAsync(func(c *txn, now time.Time) error { return c.fireTimers(keys, now) },
				func(err error) { done <- err })
			select {
			case err := <-done:
				if err != nil {
					if errors.Is(err, ErrClosed) || errors.Is(err, ErrFailed) {
						return
					}
					e.log.Error("firing timers failed; retrying in a second", "err", err)
					select {
					case <-e.cfg.Clock.Until(e.cfg.Clock.Now().Add(time.Second)):
					case <-time.After(time.Second): // a fake clock may stand still
					case <-e.stopTimers:
						return
					}
				} else {
					floor, _, _, _, _ = parseTimerKey(keys[len(keys)-1])
				}
			case <-e.stopTimers:
				return
			}
			continue
		}
		var wait <-chan time.Time
		if next != 0 {
			wait = e.cfg.Clock.Until(time.UnixMilli(next))
		}
		select {
		case <-wait:
		case <-e.timerWake:
		case <-e.stopTimers:
			return
		}
	}
}

// dueTimers returns the keys of the timers due at nowMS (at most
// timerBatch), or, when none is due, the due time of the next one (0 if
// there is none).
func (e *Engine) dueTimers(floor, nowMS int64) (keys [][]byte, next int64, err error) {
	lower := timerKey(floor, ID{}, 0, 0)[:9]
	upper := []byte{prefixTimer + 1}
	err = e.st.Scan(lower, upper, func(k, _ []byte) bool {
		due, _, _, _, perr := parseTimerKey(k)
		if perr == nil && due > nowMS {
			if len(keys) == 0 {
				next = due
			}
			return false
		}
		keys = append(keys, append([]byte(nil), k...))
		return len(keys) < timerBatch
	})
	return keys, next, err
}

// Dispatch workers make the sends that durable batches decided.

func (e *Engine) inflightAdd(k string) {
	e.inflightMu.Lock()
	e.inflight[k] = struct{}{}
	e.inflightMu.Unlock()
}

func (e *Engine) inflightDel(k string) {
	e.inflightMu.Lock()
	if _, ok := e.inflight[k]; ok {
		delete(e.inflight, k)
		close(e.inflightShrank)
		e.inflightShrank = make(chan struct{})
	}
	e.inflightMu.Unlock()
}

// awaitRef runs op, which looks up a provider reference. A provider can
// report on a send (a status callback, a keypress) before the send's
// outcome, which carries the reference, is recorded: so while op finds
// nothing and sends are in flight, it waits for them to be recorded and
// tries again, for at most SendTimeout.
func (e *Engine) awaitRef(ctx context.Context, op func() error) error {
	deadline := e.cfg.Clock.Now().Add(e.cfg.SendTimeout)
	timeout := time.After(e.cfg.SendTimeout) // real time: a fake clock may stand still
	for {
		// Look before trying: a send recorded while op runs closes shrank.
		e.inflightMu.Lock()
		n, shrank := len(e.inflight), e.inflightShrank
		e.inflightMu.Unlock()
		err := op()
		if !errors.Is(err, ErrNotFound) || n == 0 || e.cfg.Clock.Now().After(deadline) {
			return err
		}
		select {
		case <-shrank:
		case <-timeout:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (e *Engine) inflightHas(k string) bool {
	e.inflightMu.Lock()
	defer e.inflightMu.Unlock()
	_, ok := e.inflight[k]
	return ok
}

// queueSends hands a batch's sends to the workers. It never blocks: a send
// that finds the queue full is dropped, and its recovery timer makes it
// again after Config.RecoverAfter.
func (e *Engine) queueSends(ts []sendTask) {
	for _, t := range ts {
		select {
		case e.sendQ <- t:
		default:
			e.metrics.sendsDropped.Inc()
			k := inflightKey(t.id, t.idx, t.n)
			e.inflightMu.Lock()
			e.deferred[k] = struct{}{} // its recovery timer sends it, quietly
			e.inflightMu.Unlock()
			e.inflightDel(k)
		}
	}
}

// deferredTake reports whether k's send was dropped from a full queue (not
// lost to a crash), forgetting it.
func (e *Engine) deferredTake(k string) bool {
	e.inflightMu.Lock()
	defer e.inflightMu.Unlock()
	_, ok := e.deferred[k]
	delete(e.deferred, k)
	return ok
}

// dispatchLoop makes sends until sendQ closes; ctx ends when the engine
// closes, cutting sends in flight short.
func (e *Engine) dispatchLoop(ctx context.Context) {
	defer e.dispatchWG.Done()
	for t := range e.sendQ {
		k := inflightKey(t.id, t.idx, t.n)
		if !e.stillWanted(t) {
			// Stopped (confirmed, read, cancelled) after the send was
			// decided: its timers are gone, nothing to record.
			e.metrics.step(t.ch, "stopped")
			e.inflightDel(k)
			continue
		}
		ref, err := e.send(ctx, t)
		if ctx.Err() != nil && err != nil {
			// Cancelled by Close: record nothing; the recovery timer sends
			// it after the restart.
			continue
		}
		e.recordSend(t, ref, err, 3)
	}
}

// stillWanted reports whether the recipient is still pending and the
// send's recovery timer still armed, as the store has it now.
func (e *Engine) stillWanted(t sendTask) bool {
	s, err := e.loadState(t.id, t.idx)
	if err != nil {
		return true // cannot tell: send (at least once)
	}
	return s.Status == StatusPending && slices.ContainsFunc(s.Timers, func(r timerRef) bool { return r.N == t.n })
}

// recordSend records a send's outcome. The send stays marked in flight
// until the outcome is durable, so that its recovery timer cannot make it
// again meanwhile; if recording fails, it is tried again, and after that
// the recovery timer sends again (a duplicate, which at-least-once allows).
func (e *Engine) recordSend(t sendTask, ref string, sendErr error, tries int) {
	k := inflightKey(t.id, t.idx, t.n)
	e.applyAsync(func(c *txn, now time.Time) error {
		return c.applySendResult(t, ref, sendErr, now)
	}, func(err error) {
		switch {
		case err == nil, errors.Is(err, ErrClosed), errors.Is(err, ErrFailed):
			e.inflightDel(k)
		case tries > 1:
			// Not on the commit loop's goroutine: applyAsync may block.
			e.dispatchWG.Add(1)
			go func() {
				defer e.dispatchWG.Done()
				e.recordSend(t, ref, sendErr, tries-1)
			}()
		default:
			e.log.Error("recording a send's outcome failed", "ding", t.id.String(), "err", err)
			e.inflightDel(k)
		}
	})
}

func (e *Engine) send(ctx context.Context, t sendTask) (string, error) {
	if e.cfg.Notifier == nil {
		return "", ErrNotConfigured
	}
	m, err := e.Message(t.id)
	if err != nil {
		return "", err
	}
	name := m.From
	if e.cfg.Contacts != nil {
		if c, err := e.cfg.Contacts.Contact(m.From); err == nil && c.Name != "" {
			name = c.Name
		}
	}
	o := Outbound{
		Ding: t.id, Recipient: t.idx, Attempt: t.attempt, Channel: t.ch, To: t.to,
		Text: "DING from " + name + ": " + string(m.Body), Choices: m.Choices, Sender: name,
	}
	if t.ch == ChannelPush {
		if rec, err := e.loadDing(t.id); err == nil {
			o.Critical = rec.Critical
		}
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.SendTimeout)
	defer cancel()
	start := time.Now()
	ref, err := e.cfg.Notifier.Send(ctx, o)
	e.metrics.sendSeconds.WithLabelValues(t.ch.String()).Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, ErrNotConfigured) {
		e.log.Warn("escalation send failed", "ding", t.id.String(), "recipient", t.idx, "channel", t.ch.String(), "attempt", t.attempt, "err", err)
	}
	return ref, err
}
