package bench

import (
	"slices"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func ms64(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestScheduleSpreadsSubmitsEvenly(t *testing.T) {
	s := schedule{start: t0, conns: 4, rate: 1000}
	tests := []struct {
		i, k int
		want time.Duration
	}{
		{0, 0, 0},
		{1, 0, ms64(1)},
		{3, 0, ms64(3)},
		{0, 1, ms64(4)}, // every connection sends at rate/conns
		{2, 5, ms64(22)},
	}
	for _, tc := range tests {
		if got := s.due(tc.i, tc.k).Sub(t0); got != tc.want {
			t.Errorf("due(%d, %d) = %v, want %v", tc.i, tc.k, got, tc.want)
		}
	}
	// Together the connections' submits over one second are the 1,000
	// distinct milliseconds: evenly spaced at the offered rate.
	var all []time.Duration
	for i := range s.conns {
		for k := 0; ; k++ {
			d := s.due(i, k).Sub(t0)
			if d >= time.Second {
				break
			}
			all = append(all, d)
		}
	}
	slices.Sort(all)
	if len(all) != 1000 {
		t.Fatalf("%d submits in 1s at 1000/s", len(all))
	}
	for j, d := range all {
		if d != ms64(j) {
			t.Fatalf("submit %d due at %v, want %v", j, d, ms64(j))
		}
	}
}

// fakeClock's time moves only when SleepUntil or advanceTo asks it to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) SleepUntil(t time.Time) { c.advanceTo(t) }

func (c *fakeClock) advanceTo(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
}

// fakeServer answers submits in the order of their refs, one at a time,
// each taking service: a submit that arrives while it is busy waits. A
// submit arrives at its stamp (its due time) or, if the loop could not
// write it then, when the one before it is done: the loop waits for a free
// slot, and the tests give it one slot whenever the server is slower than
// the schedule. (Not at the fake clock's time, nor in the order the
// loop's goroutines happen to run: those vary from run to run.)
type fakeServer struct {
	clk     *fakeClock
	service time.Duration
	mu      sync.Mutex
	served  *sync.Cond // signalled when next moves
	next    uint64     // guarded by mu: the ref served next
	busy    time.Time  // guarded by mu: when the last one served is done
}

func newFakeServer(clk *fakeClock, service time.Duration) *fakeServer {
	s := &fakeServer{clk: clk, service: service, next: 1}
	s.served = sync.NewCond(&s.mu)
	return s
}

func (s *fakeServer) send(ref uint64, stamp time.Time) (time.Time, error) {
	s.mu.Lock()
	for ref != s.next {
		s.served.Wait()
	}
	start := s.busy
	if stamp.After(start) {
		start = stamp
	}
	s.busy = start.Add(s.service)
	done := s.busy
	s.next++
	s.served.Broadcast()
	s.mu.Unlock()
	s.clk.advanceTo(done)
	return done, nil
}

func durations(l Latencies) []time.Duration {
	s := slices.Clone([]time.Duration(l))
	slices.Sort(s)
	return s
}

// A server slower than the offered rate: the open loop must time every
// submit from its scheduled time, so the queue that builds up shows in
// each later submit's latency, and every submit after the first is behind
// schedule. A closed loop would have reported 25 ms for every submit.
func TestOpenLoopTimesFromSchedule(t *testing.T) {
	clk := &fakeClock{now: t0}
	srv := newFakeServer(clk, ms64(25))
	w := newWindow(t0, 0, ms64(100), 1)
	s := schedule{start: t0, conns: 1, rate: 100} // one every 10 ms
	if err := openLoop(0, s, w, 1, clk, srv.send); err != nil {
		t.Fatal(err)
	}
	ack, _ := w.latencies()
	var want []time.Duration
	for k := range 10 {
		// Submit k is due at 10k ms and answered at 25(k+1) ms.
		want = append(want, ms64(25+15*k))
	}
	if got := durations(ack); !slices.Equal(got, want) {
		t.Errorf("ack latencies %v, want %v", got, want)
	}
	if got := w.scheduled.Load(); got != 10 {
		t.Errorf("scheduled %d, want 10", got)
	}
	if got := w.behind.Load(); got != 9 {
		t.Errorf("behind schedule %d, want 9 (all but the first)", got)
	}
	if got := time.Duration(w.maxLag.Load()); got != ms64(135) {
		t.Errorf("max lag %v, want 135ms (submit 9: due at 90 ms, written at 225 ms)", got)
	}
	if got := w.acked.Load(); got != 3 {
		t.Errorf("acked in the window %d, want 3 (at 25, 50 and 75 ms)", got)
	}
	if got := ack.Quantile(0.99); got != ms64(160) {
		t.Errorf("p99 %v, want 160ms", got)
	}
}

// A server faster than the offered rate, several connections: every
// submit is written on time and timed by its service alone; only those
// scheduled inside the window count.
func TestOpenLoopOnSchedule(t *testing.T) {
	const conns = 3
	w := newWindow(t0, ms64(30), ms64(300), conns) // window [30 ms, 330 ms)
	s := schedule{start: t0, conns: conns, rate: 300}
	for i := range conns {
		// Connections are independent: each gets its own server and
		// clock, so that one's clock cannot run ahead of another's.
		clk := &fakeClock{now: t0}
		srv := newFakeServer(clk, ms64(2))
		if err := openLoop(i, s, w, 4, clk, srv.send); err != nil {
			t.Fatal(err)
		}
	}
	ack, _ := w.latencies()
	// Due every 10/3 ms from 0 until 330 ms: 99 submits, of which those due
	// in [30 ms, 330 ms) are the 90 from number 9.
	if got := w.scheduled.Load(); got != 90 {
		t.Errorf("scheduled in the window %d, want 90", got)
	}
	if len(ack) != 90 {
		t.Errorf("%d ack latencies, want 90", len(ack))
	}
	for _, l := range ack {
		if l != ms64(2) {
			t.Fatalf("ack latency %v, want 2ms", l)
		}
	}
	if got := w.behind.Load(); got != 0 {
		t.Errorf("behind schedule %d, want 0", got)
	}
}

func TestWindowCounts(t *testing.T) {
	w := newWindow(t0, ms64(10), ms64(100), 1) // [10 ms, 110 ms)
	at := func(n int) time.Time { return t0.Add(ms64(n)) }
	w.ack(0, at(5), at(12))    // made in the warm-up: acked in the window, no latency
	w.ack(0, at(20), at(25))   // in the window
	w.ack(0, at(105), at(115)) // made in the window, acked after it
	body := make([]byte, 16)
	stampBody(body, at(50))
	w.deliver(0, body, at(53))
	stampBody(body, at(5))
	w.deliver(0, body, at(60)) // made in the warm-up
	w.deliver(0, []byte{1}, at(60))
	ack, del := w.latencies()
	if want := []time.Duration{ms64(5), ms64(10)}; !slices.Equal(durations(ack), want) {
		t.Errorf("ack latencies %v, want %v", ack, want)
	}
	if got := w.acked.Load(); got != 2 {
		t.Errorf("acked in the window %d, want 2", got)
	}
	if want := []time.Duration{ms64(3)}; !slices.Equal(durations(del), want) || w.delivered.Load() != 1 {
		t.Errorf("delivery latencies %v (%d counted), want %v", del, w.delivered.Load(), want)
	}
}
