package engine

import (
	"context"
	"errors"
	"math"
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
			e.applyAsync(func(c *committer, now time.Time) error { return c.fireTimers(keys, now) },
				func(err error) { done <- err })
			select {
			case err := <-done:
				if err != nil {
					if errors.Is(err, ErrClosed) || errors.Is(err, ErrFailed) {
						return
					}
					e.log.Error("firing timers failed", "err", err)
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
			e.inflightDel(inflightKey(t.id, t.idx, t.n))
		}
	}
}

func (e *Engine) dispatchLoop() {
	defer e.dispatchWG.Done()
	for t := range e.sendQ {
		ref, err := e.send(t)
		e.applyAsync(func(c *committer, now time.Time) error {
			defer e.inflightDel(inflightKey(t.id, t.idx, t.n))
			return c.applySendResult(t, ref, err, now)
		}, func(err error) {
			if err != nil && !errors.Is(err, ErrClosed) {
				e.log.Error("recording a send's outcome failed", "ding", t.id.String(), "err", err)
			}
		})
	}
}

func (e *Engine) send(t sendTask) (string, error) {
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
		Ding: t.id, Recipient: t.idx, Attempt: t.attempt, Channel: t.ch, To: t.phone,
		Text: "DING from " + name + ": " + string(m.Body), Choices: m.Choices,
	}
	ctx, cancel := context.WithTimeout(e.sendCtx, e.cfg.SendTimeout)
	defer cancel()
	start := time.Now()
	ref, err := e.cfg.Notifier.Send(ctx, o)
	e.metrics.sendSeconds.WithLabelValues(t.ch.String()).Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, ErrNotConfigured) {
		e.log.Warn("escalation send failed", "ding", t.id.String(), "recipient", t.idx, "channel", t.ch.String(), "attempt", t.attempt, "err", err)
	}
	return ref, err
}
