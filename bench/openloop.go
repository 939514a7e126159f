package bench

import (
	"encoding/binary"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// The ingest load's two ways of pacing submits.
//
// Closed loop: each connection submits, waits for the ack, submits again.
// It finds the peak rate, but its latencies are those of the submits that
// got through: while the server stalls, no new submit is made, so the
// stall shows in one sample per connection instead of in every submit that
// would have been made meanwhile (coordinated omission).
//
// Open loop: the submits are scheduled in advance at a fixed offered rate
// (schedule) and each latency is measured from its scheduled time, not
// from when it was actually written. A connection may have several submits
// in flight, up to the server's limit; a submit that cannot be written on
// time (no free in-flight slot, or the pacer woke late) is counted as
// behind schedule, and its lateness stays in its latencies.

// sendFunc submits message ref (unique on its connection, from 1) with
// the body stamped with stamp (its first 8 bytes, Unix ns, which the
// recipient's reader takes as the submit time) and returns when it is
// acknowledged, with the time the ack arrived. It may be called
// concurrently.
type sendFunc func(ref uint64, stamp time.Time) (acked time.Time, err error)

// stampBody writes t into the first 8 bytes of body (at least 8 long).
func stampBody(body []byte, t time.Time) { binary.BigEndian.PutUint64(body, uint64(t.UnixNano())) }

// bodyStamp returns the time stampBody wrote into body, false when body
// is too short to hold one.
func bodyStamp(body []byte) (time.Time, bool) {
	if len(body) < 8 {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(body))), true
}

// window is what one ingest run measures. Submits are counted by their
// stamp (the time they were made in a closed loop, scheduled in an open
// one): latencies of those stamped in [from, to); acks by the time they
// arrived in [from, to).
type window struct {
	from, to time.Time
	conns    []connStats

	acked, delivered atomic.Int64
	// Open loop, of the submits scheduled in the window:
	scheduled atomic.Int64
	behind    atomic.Int64 // written more than lateAfter after their time
	slotWaits atomic.Int64 // ... of which found no free in-flight slot
	maxLag    atomic.Int64 // ns, the latest write after its time
}

// connStats is one connection's latencies.
type connStats struct {
	mu       sync.Mutex // guards ack and del: an open loop acks from several goroutines
	ack, del Latencies
}

// lateAfter is how long after its scheduled time a submit may be written
// before it counts as behind schedule.
const lateAfter = time.Millisecond

func newWindow(start time.Time, warmup, run time.Duration, conns int) *window {
	return &window{from: start.Add(warmup), to: start.Add(warmup + run), conns: make([]connStats, conns)}
}

func (w *window) in(t time.Time) bool { return !t.Before(w.from) && t.Before(w.to) }

// ack records that connection i's submit stamped stamp was acknowledged
// at at.
func (w *window) ack(i int, stamp, at time.Time) {
	if w.in(at) {
		w.acked.Add(1)
	}
	if w.in(stamp) {
		c := &w.conns[i]
		c.mu.Lock()
		c.ack = append(c.ack, at.Sub(stamp))
		c.mu.Unlock()
	}
}

// deliver records that connection i received, at at, a body whose first
// 8 bytes are its stamp.
func (w *window) deliver(i int, body []byte, at time.Time) {
	stamp, ok := bodyStamp(body)
	if !ok || !w.in(stamp) {
		return
	}
	c := &w.conns[i]
	c.mu.Lock()
	c.del = append(c.del, at.Sub(stamp))
	c.mu.Unlock()
	w.delivered.Add(1)
}

// sent records that a submit scheduled at due was written at at, after
// waiting for an in-flight slot if slotWait.
func (w *window) sent(due, at time.Time, slotWait bool) {
	if !w.in(due) {
		return
	}
	w.scheduled.Add(1)
	lag := at.Sub(due)
	if lag <= lateAfter {
		return
	}
	w.behind.Add(1)
	if slotWait {
		w.slotWaits.Add(1)
	}
	for {
		old := w.maxLag.Load()
		if int64(lag) <= old || w.maxLag.CompareAndSwap(old, int64(lag)) {
			return
		}
	}
}

// latencies returns every connection's ack and delivery latencies merged.
func (w *window) latencies() (ack, del Latencies) {
	for i := range w.conns {
		c := &w.conns[i]
		c.mu.Lock()
		ack.Merge(c.ack)
		del.Merge(c.del)
		c.mu.Unlock()
	}
	return ack, del
}

// closedLoop runs connection i's submits one at a time until w.to, each
// stamped with the moment it is made.
func closedLoop(i int, w *window, send sendFunc) error {
	for ref := uint64(1); ; ref++ {
		t0 := time.Now()
		if !t0.Before(w.to) {
			return nil
		}
		acked, err := send(ref, t0)
		if err != nil {
			return err
		}
		w.ack(i, t0, acked)
	}
}

// schedule is an open-loop plan: rate submits per second across conns
// connections from start. Submit k (from 0) of connection i is due at
// start + (k·conns + i)/rate: every connection sends at rate/conns, the
// connections staggered so that all their submits together are evenly
// spaced.
type schedule struct {
	start time.Time
	conns int
	rate  float64
}

func (s schedule) due(i, k int) time.Time {
	return s.start.Add(time.Duration(math.Round(float64(k*s.conns+i) * float64(time.Second) / s.rate)))
}

// clock is the open loop's time: the real one, or a fake in tests.
type clock interface {
	Now() time.Time
	// SleepUntil returns at t or later.
	SleepUntil(t time.Time)
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// SleepUntil is the pacing itself: the pacer has nothing to wait for but
// the time of the next submit.
func (wallClock) SleepUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.Sleep(d)
	}
}

// openLoop runs connection i's part of s until w.to: each submit is
// written at its due time, or as soon after as the pacer wakes and one of
// inflight slots is free (counted behind schedule in w), and is timed from
// its due time. It returns when every submit it made was answered, with
// the first error.
func openLoop(i int, s schedule, w *window, inflight int, clk clock, send sendFunc) error {
	slots := make(chan struct{}, max(inflight, 1))
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	for k := 0; firstErr.Load() == nil; k++ {
		due := s.due(i, k)
		if !due.Before(w.to) {
			break
		}
		clk.SleepUntil(due)
		slotWait := false
		select {
		case slots <- struct{}{}:
		default:
			slotWait = true
			slots <- struct{}{}
		}
		w.sent(due, clk.Now(), slotWait)
		wg.Add(1)
		go func(ref uint64) {
			defer wg.Done()
			acked, err := send(ref, due)
			if err != nil {
				firstErr.CompareAndSwap(nil, &err)
			} else {
				w.ack(i, due, acked)
			}
			<-slots
		}(uint64(k + 1))
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		return *err
	}
	return nil
}
