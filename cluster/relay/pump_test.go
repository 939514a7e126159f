package relay_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/dingmq/ding/cluster/relay"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/fakeclock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// place puts a user in the partition their first letter names: a0 and
// a1 in 0, b0 in 1, c0 in 2.
func place(user string) uint32 { return uint32(user[0] - 'a') }

// usersOf returns the users of partitions 0..parts-1, perUser each.
func usersOf(parts, per int) []string {
	var out []string
	for p := range parts {
		for i := range per {
			out = append(out, fmt.Sprintf("%c%d", 'a'+p, i))
		}
	}
	return out
}

type discard struct{}

func (discard) Deliver(string, []engine.Entry) {}

// node is one partition's engine on its store; a node on Pebble can be
// restarted.
type node struct {
	p      uint32
	e      *engine.Engine
	st     store.Store
	dir    string              // "": memstore
	shared *pebblestore.Shared // on Pebble: the caches, if shared
	close  func()
}

func openNode(t testing.TB, p uint32, dir string, shared *pebblestore.Shared) *node {
	t.Helper()
	n := &node{p: p, dir: dir, shared: shared}
	var db *pebblestore.DB
	if dir == "" {
		n.st = memstore.New()
	} else {
		var err error
		if db, err = pebblestore.Open(dir, pebblestore.Options{Shared: shared}); err != nil {
			t.Fatal(err)
		}
		n.st = db
	}
	e, err := engine.Open(engine.Config{Store: n.st, Partition: p, Placement: place, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	e.SetSink(discard{})
	n.e = e
	var once sync.Once
	n.close = func() {
		once.Do(func() {
			if err := e.Close(); err != nil {
				t.Errorf("partition %d: close: %v", p, err)
			}
			if db != nil {
				db.Close()
			}
		})
	}
	t.Cleanup(n.close)
	return n
}

// openNodes opens partitions 0..parts-1 on memstores or, with pebble, in
// t.TempDir, sharing one block cache (pebblestore.Shared, as a node with
// P partitions does).
func openNodes(t testing.TB, parts int, pebble bool) []*node {
	t.Helper()
	var shared *pebblestore.Shared
	if pebble {
		shared = pebblestore.NewShared(4<<20, parts, 1<<20)
		t.Cleanup(shared.Close) // after the stores close: either order is fine
	}
	nodes := make([]*node, parts)
	for p := range nodes {
		dir := ""
		if pebble {
			dir = t.TempDir()
		}
		nodes[p] = openNode(t, uint32(p), dir, shared)
	}
	return nodes
}

// restart closes a Pebble node's engine and store and opens them again.
func (n *node) restart(t testing.TB) *node {
	t.Helper()
	n.close()
	return openNode(t, n.p, n.dir, n.shared)
}

// config is a pump's configuration over nodes, with dests replacing
// some destinations.
func config(nodes []*node, reg prometheus.Registerer, dests map[uint32]relay.Dest) relay.Config {
	cfg := relay.Config{Origins: map[uint32]relay.Origin{}, Dests: map[uint32]relay.Dest{}, Registerer: reg}
	for _, n := range nodes {
		cfg.Origins[n.p] = n.e
		cfg.Dests[n.p] = n.e
	}
	for p, d := range dests {
		cfg.Dests[p] = d
	}
	return cfg
}

func startPump(t testing.TB, cfg relay.Config) *relay.Pump {
	t.Helper()
	p, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close) // before the engines close
	return p
}

// submitSeveral submits n messages from a0 to users to on e, their
// bodies "0", "1", …, and returns what each recipient is to get.
func submitSeveral(t *testing.T, e *engine.Engine, n int, to ...string) sent {
	t.Helper()
	want := sent{}
	for i := range n {
		id, err := submit(e, "a0", fmt.Sprint(i), to...)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range to {
			want[u] = append(want[u], id)
		}
	}
	return want
}

func submit(e *engine.Engine, from, body string, to ...string) (engine.ID, error) {
	r, err := e.Submit(context.Background(), engine.Submission{From: from, To: to, Kind: engine.KindText, Body: []byte(body)})
	return r.ID, err
}

// eventually polls cond until it holds, failing t after a deadline.
func eventually(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened: %s", what, state)
		}
		time.Sleep(time.Millisecond)
	}
}

// sent is what each recipient must hold: message ids by user.
type sent map[string][]engine.ID

// waitDelivered waits until every recipient's head is the number of
// messages sent to them, then checks that their stream holds each of
// those messages exactly once.
func waitDelivered(t testing.TB, nodes []*node, want sent) {
	t.Helper()
	for u, ids := range want {
		e := nodes[place(u)].e
		eventually(t, u+"'s head reaching "+fmt.Sprint(len(ids)), func() (bool, string) {
			h, err := e.Head(u)
			return err == nil && h >= uint64(len(ids)), fmt.Sprintf("head %d, %v", h, err)
		})
	}
	for u, ids := range want {
		e := nodes[place(u)].e
		if h, err := e.Head(u); err != nil || h != uint64(len(ids)) {
			t.Fatalf("%s's head is %d (%v), want %d", u, h, err, len(ids))
		}
		es, err := e.Range(u, 1, len(ids)+10)
		if err != nil {
			t.Fatal(err)
		}
		got := map[engine.ID]int{}
		for _, en := range es {
			if en.Kind != engine.EntryMessage || en.Message == nil {
				t.Fatalf("%s's stream holds a %v entry", u, en.Kind)
			}
			got[en.Message.ID]++
		}
		for _, id := range ids {
			if got[id] != 1 {
				t.Fatalf("%s's stream holds message %s %d times, want once", u, id, got[id])
			}
		}
		if len(es) != len(ids) {
			t.Fatalf("%s's stream holds %d entries, want %d", u, len(es), len(ids))
		}
	}
}

// waitOutboxesEmpty waits until no origin holds a record.
func waitOutboxesEmpty(t testing.TB, nodes []*node) {
	t.Helper()
	for _, n := range nodes {
		eventually(t, fmt.Sprintf("partition %d's outbox emptying", n.p), func() (bool, string) {
			dests, err := n.e.OutboxDests()
			return err == nil && len(dests) == 0, fmt.Sprintf("records for %v (%v)", dests, err)
		})
	}
}

// check closes the engines and runs engine.Check on their stores.
func check(t testing.TB, nodes []*node) {
	t.Helper()
	for _, n := range nodes {
		if err := n.e.Close(); err != nil {
			t.Fatal(err)
		}
		r, err := engine.Check(n.st)
		if err != nil || !r.OK() {
			t.Fatalf("partition %d: Check: %+v, %v", n.p, r, err)
		}
	}
}

// metric returns the sum of the samples of name whose labels include
// want.
func metric(t testing.TB, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// sendAll has every user send n messages to every other user, all
// partitions at once, and returns what each must receive and how many
// relay records that makes (one per message and other partition).
func sendAll(t testing.TB, nodes []*node, users []string, n int) (sent, int) {
	t.Helper()
	want := sent{}
	records := 0
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, len(users))
	for _, from := range users {
		to := slices.DeleteFunc(slices.Clone(users), func(u string) bool { return u == from })
		parts := map[uint32]bool{}
		for _, u := range to {
			if place(u) != place(from) {
				parts[place(u)] = true
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				id, err := submit(nodes[place(from)].e, from, fmt.Sprintf("%s %d", from, i), to...)
				if err != nil {
					errs <- fmt.Errorf("%s: submit %d: %w", from, i, err)
					return
				}
				mu.Lock()
				for _, u := range to {
					want[u] = append(want[u], id)
				}
				records += len(parts)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return want, records
}

// TestPumpDeliversOnce: two and three partitions whose users all send to
// one another at once, with the pump running: every recipient gets each
// message exactly once, every outbox empties, and the metrics count
// every record once.
func TestPumpDeliversOnce(t *testing.T) {
	for _, c := range []struct {
		name   string
		parts  int
		pebble bool
	}{
		{"two on memstore", 2, false},
		{"three on memstore", 3, false},
		{"two on pebble", 2, true},
		{"three on pebble", 3, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			nodes := openNodes(t, c.parts, c.pebble)
			reg := prometheus.NewRegistry()
			cfg := config(nodes, reg, nil)
			cfg.Batch = 7 // several batches per destination
			startPump(t, cfg)
			users := usersOf(c.parts, 2)
			want, records := sendAll(t, nodes, users, 10)
			waitDelivered(t, nodes, want)
			waitOutboxesEmpty(t, nodes)
			eventually(t, "the metrics counting every record", func() (bool, string) {
				got := metric(t, reg, "ding_relay_records_total", nil)
				return got == float64(records), fmt.Sprintf("%v of %d", got, records)
			})
			if got := metric(t, reg, "ding_relay_backlog_records", nil); got != 0 {
				t.Fatalf("backlog %v after everything was relayed", got)
			}
			if got := metric(t, reg, "ding_relay_apply_errors_total", nil); got != 0 {
				t.Fatalf("%v apply errors", got)
			}
			check(t, nodes)
		})
	}
}

// flaky is a destination that fails its first n ApplyRelay calls with a
// retryable error, then is the real one. It records the first seq of
// each batch it was given.
type flaky struct {
	relay.Dest
	mu     sync.Mutex
	n      int
	err    error
	starts []uint64
	// calls, if set, receives the first seq of each batch as it arrives.
	calls chan uint64
	// hang: a failing call never answers, but returns when its context
	// ends (a frozen node: paused, or behind a network dropping packets).
	hang bool
}

func (f *flaky) ApplyRelay(ctx context.Context, b engine.RelayBatch) (uint64, error) {
	f.mu.Lock()
	if len(b.Records) > 0 {
		f.starts = append(f.starts, b.Records[0].Seq)
	}
	fail := f.n > 0
	if fail {
		f.n--
	}
	f.mu.Unlock()
	if f.calls != nil && len(b.Records) > 0 {
		f.calls <- b.Records[0].Seq
	}
	if fail && f.hang {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	if fail {
		return 0, f.err
	}
	return f.Dest.ApplyRelay(ctx, b)
}

func (f *flaky) batches() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.starts)
}

// waitParked waits until something waits on the fake clock (the pump,
// backing off).
func waitParked(t testing.TB, clk *fakeclock.Clock) {
	t.Helper()
	for {
		n, changed := clk.Waiters()
		if n > 0 {
			return
		}
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatal("the pump never waited on the clock")
		}
	}
}

// TestPumpRetriesAFailingDestination: a destination that fails N times
// is retried after growing backoffs (on a fake clock, so the test only
// advances it) and then gets everything once; traffic to another
// destination does not wait for it.
func TestPumpRetriesAFailingDestination(t *testing.T) {
	const failures = 4
	nodes := openNodes(t, 3, false)
	want := submitSeveral(t, nodes[0].e, 5, "b0", "c0")
	down := fmt.Errorf("destination down: %w", engine.NewError(engine.CodeUnavailable, "test: unavailable"))
	f := &flaky{Dest: nodes[1].e, n: failures, err: down}
	clk := fakeclock.New(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	cfg := config(nodes, reg, map[uint32]relay.Dest{1: f})
	cfg.Clock, cfg.MinBackoff, cfg.MaxBackoff = clk, time.Second, 4*time.Second
	p := startPump(t, cfg)
	// Partition 2 is not held up while 1 fails.
	waitDelivered(t, nodes, sent{"c0": want["c0"]})
	start := clk.Now()
	for range failures {
		waitParked(t, clk)
		clk.Advance(cfg.MaxBackoff)
	}
	waitDelivered(t, nodes, want)
	waitOutboxesEmpty(t, nodes)
	if got := metric(t, reg, "ding_relay_apply_errors_total", map[string]string{"from": "0", "to": "1", "reason": "unavailable"}); got != failures {
		t.Fatalf("%v apply errors counted, want %d", got, failures)
	}
	if got := f.batches(); len(got) != failures+1 || slices.ContainsFunc(got, func(s uint64) bool { return s != 1 }) {
		t.Fatalf("batches started at %v: want %d, each from seq 1", got, failures+1)
	}
	if d := clk.Now().Sub(start); d != failures*cfg.MaxBackoff {
		t.Fatalf("the clock moved %v", d)
	}
	for n, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		if got := p.Backoff(n + 1); got != want {
			t.Fatalf("backoff after %d failures: %v, want %v", n+1, got, want)
		}
	}
	check(t, nodes)
}

// TestPumpWakeEndsTheBackoff: a destination that answers
// wrong_partition (its partition is moving) is tried again as soon as
// Wake names it, not after the backoff: the fake clock never moves, and
// the backoff is an hour.
func TestPumpWakeEndsTheBackoff(t *testing.T) {
	const failures = 3
	nodes := openNodes(t, 3, false)
	want := submitSeveral(t, nodes[0].e, 4, "b0", "c0")
	moving := fmt.Errorf("%w: test: partition 1 is moving", engine.ErrWrongPartition)
	f := &flaky{Dest: nodes[1].e, n: failures, err: moving, calls: make(chan uint64, failures+2)}
	clk := fakeclock.New(time.Date(2026, 12, 5, 2, 0, 0, 0, time.UTC))
	start := clk.Now()
	reg := prometheus.NewRegistry()
	cfg := config(nodes, reg, map[uint32]relay.Dest{1: f})
	cfg.Clock, cfg.MinBackoff, cfg.MaxBackoff = clk, time.Hour, time.Hour
	p := startPump(t, cfg)
	next := func() {
		t.Helper()
		select {
		case <-f.calls:
		case <-time.After(10 * time.Second):
			t.Fatal("the pump did not try partition 1 again")
		}
	}
	next() // the first try, which fails: an hour's backoff
	for range failures {
		p.Wake(1)
		next()
	}
	waitDelivered(t, nodes, want)
	waitOutboxesEmpty(t, nodes)
	if got := len(f.batches()); got != failures+1 {
		t.Fatalf("%d batches sent to partition 1, want %d", got, failures+1)
	}
	if got := metric(t, reg, "ding_relay_apply_errors_total", map[string]string{"from": "0", "to": "1", "reason": "wrong_partition"}); got != failures {
		t.Fatalf("%v wrong_partition answers counted, want %d", got, failures)
	}
	if !clk.Now().Equal(start) {
		t.Fatalf("the clock moved to %v", clk.Now())
	}
	p.Wake(7) // no link to it: nothing
	check(t, nodes)
}

// TestPumpResendsAfterAGap: a destination that answers ErrRelayGap gets
// the outbox again from its oldest record, at once (the fake clock never
// moves).
func TestPumpResendsAfterAGap(t *testing.T) {
	nodes := openNodes(t, 2, false)
	want := submitSeveral(t, nodes[0].e, 3, "b0")
	// One batch of one record goes through; the second is refused as
	// if the destination had lost its place.
	f := &gapOnce{flaky: flaky{Dest: nodes[1].e}, at: 2}
	reg := prometheus.NewRegistry()
	cfg := config(nodes, reg, map[uint32]relay.Dest{1: f})
	cfg.Batch, cfg.Clock = 1, fakeclock.New(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
	startPump(t, cfg)
	waitDelivered(t, nodes, want)
	waitOutboxesEmpty(t, nodes)
	if got := f.batches(); fmt.Sprint(got) != "[1 2 2 3]" {
		t.Fatalf("batches started at %v, want [1 2 2 3]", got)
	}
	if got := metric(t, reg, "ding_relay_apply_errors_total", map[string]string{"reason": "gap"}); got != 1 {
		t.Fatalf("%v gaps counted, want 1", got)
	}
	check(t, nodes)
}

// gapOnce refuses, once, the batch that starts at seq at with ErrRelayGap.
type gapOnce struct {
	flaky
	at   uint64
	done bool
}

func (g *gapOnce) ApplyRelay(ctx context.Context, b engine.RelayBatch) (uint64, error) {
	g.mu.Lock()
	g.starts = append(g.starts, b.Records[0].Seq)
	refuse := !g.done && b.Records[0].Seq == g.at
	g.done = g.done || refuse
	g.mu.Unlock()
	if refuse {
		return 0, fmt.Errorf("%w: test", engine.ErrRelayGap)
	}
	return g.flaky.Dest.ApplyRelay(ctx, b)
}

// TestPumpDrainsAfterARestart: records an origin wrote while no pump ran
// are in its outbox when it opens again, and a pump started then drains
// them without any new write to wake it.
func TestPumpDrainsAfterARestart(t *testing.T) {
	nodes := openNodes(t, 3, true)
	users := usersOf(3, 1)
	want, _ := sendAll(t, nodes, users, 4)
	for i := range nodes {
		nodes[i] = nodes[i].restart(t)
	}
	for _, n := range nodes {
		if dests, err := n.e.OutboxDests(); err != nil || len(dests) != 2 {
			t.Fatalf("partition %d's outbox after the restart holds records for %v (%v), want 2 partitions", n.p, dests, err)
		}
	}
	startPump(t, config(nodes, nil, nil))
	waitDelivered(t, nodes, want)
	waitOutboxesEmpty(t, nodes)
	check(t, nodes)
}

// stuck is a destination whose ApplyRelay blocks until its context ends,
// having applied the batch first (the answer is lost) or not.
type stuck struct {
	relay.Dest
	applyFirst bool
	entered    chan struct{} // closed on the first call
	once       sync.Once
	calls      atomic.Int32
}

func (s *stuck) ApplyRelay(ctx context.Context, b engine.RelayBatch) (uint64, error) {
	s.calls.Add(1)
	if s.applyFirst {
		if _, err := s.Dest.ApplyRelay(context.Background(), b); err != nil {
			return 0, err
		}
	}
	s.once.Do(func() { close(s.entered) })
	<-ctx.Done()
	return 0, ctx.Err()
}

// TestPumpCloseInFlight: a pump closed while an ApplyRelay is in flight
// (before or after the destination applied it) stops, the records stay
// in the outbox, and a new pump on the same engines delivers everything
// exactly once.
func TestPumpCloseInFlight(t *testing.T) {
	for _, c := range []struct {
		name       string
		applyFirst bool
		pebble     bool
	}{
		{"before the apply, memstore", false, false},
		{"after the apply, memstore", true, false},
		{"after the apply, pebble", true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			nodes := openNodes(t, 2, c.pebble)
			users := usersOf(2, 2)
			want, _ := sendAll(t, nodes, users, 3)
			s := &stuck{Dest: nodes[1].e, applyFirst: c.applyFirst, entered: make(chan struct{})}
			reg := prometheus.NewRegistry()
			p, err := relay.New(config(nodes, reg, map[uint32]relay.Dest{1: s}))
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-s.entered:
			case <-time.After(10 * time.Second):
				p.Close()
				t.Fatal("the pump never sent to partition 1")
			}
			p.Close()
			p.Close() // idempotent
			if s.calls.Load() != 1 {
				t.Fatalf("%d calls to the stuck destination", s.calls.Load())
			}
			if dests, err := nodes[0].e.OutboxDests(); err != nil || fmt.Sprint(dests) != "[1]" {
				t.Fatalf("partition 0's outbox after the close holds records for %v (%v), want [1]", dests, err)
			}
			if got := metric(t, reg, "ding_relay_apply_errors_total", nil); got != 0 {
				t.Fatalf("the close counted %v apply errors", got)
			}
			// The same registry: Close unregistered the metrics.
			startPump(t, config(nodes, reg, nil))
			waitDelivered(t, nodes, want)
			waitOutboxesEmpty(t, nodes)
			check(t, nodes)
		})
	}
}

// TestPumpWithoutADestination: records for a partition the pump has no
// destination for stay in the outbox, counted; the others move.
func TestPumpWithoutADestination(t *testing.T) {
	nodes := openNodes(t, 3, false)
	id, err := submit(nodes[0].e, "a0", "x", "b0", "c0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := config(nodes[:2], reg, nil) // partition 2 is not in the pump
	startPump(t, cfg)
	waitDelivered(t, nodes, sent{"b0": {id}})
	eventually(t, "the missing destination counted", func() (bool, string) {
		got := metric(t, reg, "ding_relay_apply_errors_total", map[string]string{"to": "2", "reason": "no_destination"})
		return got >= 1, fmt.Sprint(got)
	})
	if dests, err := nodes[0].e.OutboxDests(); err != nil || fmt.Sprint(dests) != "[2]" {
		t.Fatalf("partition 0's outbox holds records for %v (%v), want [2]", dests, err)
	}
	if h, _ := nodes[2].e.Head("c0"); h != 0 {
		t.Fatalf("c0's head is %d", h)
	}
	check(t, nodes)
}

func TestConfigValidate(t *testing.T) {
	e := &engine.Engine{}
	for _, c := range []struct {
		name string
		cfg  relay.Config
	}{
		{"nil origin", relay.Config{Origins: map[uint32]relay.Origin{0: nil}}},
		{"nil destination", relay.Config{Origins: map[uint32]relay.Origin{0: e}, Dests: map[uint32]relay.Dest{1: nil}}},
		{"negative batch", relay.Config{Origins: map[uint32]relay.Origin{0: e}, Batch: -1}},
		{"backoff upside down", relay.Config{Origins: map[uint32]relay.Origin{0: e}, MinBackoff: time.Second, MaxBackoff: time.Millisecond}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := relay.New(c.cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// TestPumpCarriesReceiptsBack: the pump moves records both ways: a
// message to another partition, and the receipt events its reader's
// partition owes the sender, each once.
func TestPumpCarriesReceiptsBack(t *testing.T) {
	ctx := context.Background()
	nodes := openNodes(t, 2, false)
	startPump(t, config(nodes, nil, nil))
	id, err := submit(nodes[0].e, "a0", "hi", "b0")
	if err != nil {
		t.Fatal(err)
	}
	waitDelivered(t, nodes, sent{"b0": {id}})
	if err := nodes[1].e.Ack(ctx, "b0", "phone", 1); err != nil {
		t.Fatal(err)
	}
	if err := nodes[1].e.Read(ctx, "b0", id); err != nil {
		t.Fatal(err)
	}
	a := nodes[0].e
	eventually(t, "a0 getting both receipt events", func() (bool, string) {
		h, err := a.Head("a0")
		return err == nil && h >= 2, fmt.Sprintf("head %d, %v", h, err)
	})
	waitOutboxesEmpty(t, nodes)
	es, err := a.Range("a0", 1, 10)
	if err != nil || len(es) != 2 {
		t.Fatalf("a0's stream = %+v, %v; want two receipt events", es, err)
	}
	for i, want := range []engine.State{engine.StateDelivered, engine.StateRead} {
		if r := es[i].Receipt; es[i].Kind != engine.EntryReceipt || r == nil || r.User != "b0" || r.State != want {
			t.Fatalf("a0's entry %d = %+v, want b0's %v", i+1, es[i], want)
		}
	}
	check(t, nodes)
}

// TestPumpBacklogCountsEveryWaitingRecord: ding_relay_backlog_records is
// every durable record the destination has not acknowledged, not only the
// batch the pump read (here one record a batch, the destination down).
func TestPumpBacklogCountsEveryWaitingRecord(t *testing.T) {
	nodes := openNodes(t, 2, false)
	for i := range 5 {
		if _, err := submit(nodes[0].e, "a0", fmt.Sprint(i), "b0"); err != nil {
			t.Fatal(err)
		}
	}
	down := fmt.Errorf("destination down: %w", engine.NewError(engine.CodeUnavailable, "test: unavailable"))
	clk := fakeclock.New(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	cfg := config(nodes, reg, map[uint32]relay.Dest{1: &flaky{Dest: nodes[1].e, n: 1 << 30, err: down}})
	cfg.Batch, cfg.Clock = 1, clk
	startPump(t, cfg)
	waitParked(t, clk) // it tried once and backs off
	if got := metric(t, reg, "ding_relay_backlog_records", map[string]string{"from": "0", "to": "1"}); got != 5 {
		t.Fatalf("backlog %v, want the 5 records waiting", got)
	}
}

// countingDest counts the batches offered to a destination.
type countingDest struct {
	relay.Dest
	calls atomic.Int64
}

func (c *countingDest) ApplyRelay(ctx context.Context, b engine.RelayBatch) (uint64, error) {
	c.calls.Add(1)
	return c.Dest.ApplyRelay(ctx, b)
}

// TestPumpBacksOffAGapThatStays: a destination whose watermark is below
// the oldest record the origin still holds (it lost its store: a restore,
// a lossy failover) cannot be served from this outbox. The pump must back
// off (it waits on the fake clock, which never moves), not resend in a
// hot loop (it did, once it learnt where the outbox starts: found in
// review).
func TestPumpBacksOffAGapThatStays(t *testing.T) {
	nodes := openNodes(t, 2, false)
	if _, err := submit(nodes[0].e, "a0", "one", "b0"); err != nil {
		t.Fatal(err)
	}
	first := startPump(t, config(nodes, nil, nil))
	waitOutboxesEmpty(t, nodes)
	first.Close()
	nodes[1].close()
	nodes[1] = openNode(t, 1, "", nil) // B comes back on a fresh store
	if _, err := submit(nodes[0].e, "a0", "two", "b0"); err != nil {
		t.Fatal(err)
	}
	d := &countingDest{Dest: nodes[1].e}
	clk := fakeclock.New(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	cfg := config(nodes, reg, map[uint32]relay.Dest{1: d})
	cfg.Clock = clk
	startPump(t, cfg)
	waitParked(t, clk)
	if n := d.calls.Load(); n > 2 {
		t.Fatalf("%d batches offered before the pump backed off, want at most 2", n)
	}
}

// TestPumpAttachAndDetach: a partition's outbox is drained only while it
// is attached (cluster mode attaches an engine while its node owns the
// partition): records of an unattached origin wait, and go once it is
// attached; a detached origin's new records wait while another's keep
// moving, and go once it is attached again; its engine may be closed
// once Detach returned. Attaching twice, or to a closed pump, is refused.
func TestPumpAttachAndDetach(t *testing.T) {
	nodes := openNodes(t, 3, true)
	cfg := config(nodes, prometheus.NewRegistry(), nil)
	cfg.Origins = map[uint32]relay.Origin{0: nodes[0].e}
	p := startPump(t, cfg)

	fromB, err := submit(nodes[1].e, "b0", "from an unattached partition", "c0")
	if err != nil {
		t.Fatal(err)
	}
	fromA, err := submit(nodes[0].e, "a0", "from an attached one", "c0")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a0's message reaching c0", func() (bool, string) {
		h, _ := nodes[2].e.Head("c0")
		return h == 1, fmt.Sprint(h)
	})
	if dests, _ := nodes[1].e.OutboxDests(); !slices.Equal(dests, []uint32{2}) {
		t.Fatalf("partition 1's outbox holds records for %v while unattached, want [2]", dests)
	}
	if err := p.Attach(1, nodes[1].e); err != nil {
		t.Fatal(err)
	}
	waitDelivered(t, nodes, sent{"c0": {fromA, fromB}})
	if err := p.Attach(1, nodes[1].e); err == nil {
		t.Fatal("attached partition 1 twice")
	}

	p.Detach(0)
	waiting, err := submit(nodes[0].e, "a1", "while detached", "c1")
	if err != nil {
		t.Fatal(err)
	}
	moving, err := submit(nodes[1].e, "b1", "from the attached one", "c1")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "b1's message reaching c1", func() (bool, string) {
		h, _ := nodes[2].e.Head("c1")
		return h == 1, fmt.Sprint(h)
	})
	if dests, _ := nodes[0].e.OutboxDests(); !slices.Equal(dests, []uint32{2}) {
		t.Fatalf("partition 0's outbox holds records for %v while detached, want [2]", dests)
	}
	nodes[0] = nodes[0].restart(t) // nothing of the pump uses the old engine
	if err := p.Attach(0, nodes[0].e); err != nil {
		t.Fatal(err)
	}
	waitDelivered(t, nodes, sent{"c0": {fromA, fromB}, "c1": {moving, waiting}})
	waitOutboxesEmpty(t, nodes)
	p.Close()
	if err := p.Attach(0, nodes[0].e); !errors.Is(err, relay.ErrClosed) {
		t.Fatalf("attach to a closed pump: %v, want ErrClosed", err)
	}
	check(t, nodes)
}

// TestPumpWakeAbandonsTheBatchInFlight: a batch in flight to a frozen
// destination is abandoned when Wake says the partition has a new owner,
// and sent again at once, from the same record (the fake clock never
// moves, and there is no timeout: without Wake the link would wait for
// the frozen node for ever); nothing is lost or delivered twice.
func TestPumpWakeAbandonsTheBatchInFlight(t *testing.T) {
	nodes := openNodes(t, 2, false)
	want := submitSeveral(t, nodes[0].e, 3, "b0")
	f := &flaky{Dest: nodes[1].e, n: 1, hang: true, calls: make(chan uint64, 4)} // the first batch: frozen
	clk := fakeclock.New(time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	cfg := config(nodes, reg, map[uint32]relay.Dest{1: f})
	cfg.Clock, cfg.MinBackoff, cfg.MaxBackoff = clk, time.Hour, time.Hour
	p := startPump(t, cfg)
	var first uint64
	select {
	case first = <-f.calls:
	case <-time.After(10 * time.Second):
		t.Fatal("the pump sent nothing to partition 1")
	}
	p.Wake(1)
	select {
	case again := <-f.calls:
		if again != first {
			t.Fatalf("the batch sent again starts at seq %d, the abandoned one at %d", again, first)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the batch in flight to the frozen node was not sent again after Wake")
	}
	waitDelivered(t, nodes, want)
	waitOutboxesEmpty(t, nodes)
	if got := metric(t, reg, "ding_relay_apply_errors_total", map[string]string{"from": "0", "to": "1", "reason": "abandoned"}); got != 1 {
		t.Fatalf("%v abandoned batches counted, want 1", got)
	}
	check(t, nodes)
}
