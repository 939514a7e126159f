package engine_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/internal/fakeclock"
)

// Stage 2 of the relay: receipts, announcement counts and DINGs across
// partitions (RelayReceipt).

const (
	bobPhone = "+15550000101"
	c0Phone  = "+15550000102"
)

// dingNodes opens partitions 0..2 on memstores, sharing a fake clock,
// each with its own fake notifier (only a DING's home sends).
func dingNodes(t testing.TB) ([]*relayNode, *fakeclock.Clock, []*fakeNotifier) {
	t.Helper()
	return dingNodesOn(t, func(testing.TB) store.Store { return memstore.New() })
}

// dingNodesOn is dingNodes on the stores open makes.
func dingNodesOn(t testing.TB, open func(testing.TB) store.Store) ([]*relayNode, *fakeclock.Clock, []*fakeNotifier) {
	t.Helper()
	clock := fakeclock.New(t0)
	var ns []*fakeNotifier
	nodes := make([]*relayNode, 3)
	for p := range nodes {
		n := &fakeNotifier{}
		ns = append(ns, n)
		nodes[p] = openRelayNode(t, open(t), uint32(p), func(c *engine.Config) {
			c.Clock, c.Notifier = clock, n
			c.Contacts = contacts{
				"alice": {Name: "Alice"},
				"bob":   {Name: "Bob", Phone: bobPhone},
				"dave":  {Name: "Dave"},
				"c0":    {Name: "C0", Phone: c0Phone},
			}
		})
	}
	return nodes, clock, ns
}

// settle is dingEnv.barrier for a relay node: every due timer has fired,
// every decided send has its outcome, and the sink has it all.
func settle(t testing.TB, n *relayNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.e.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.e.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRelayDingReadStopsEscalation: alice DINGs bob (partition 1) and c0
// (partition 2) until read; bob's read on B, relayed back, stops his
// escalation at A before the SMS step; c0, who did not read, gets the
// SMS.
func TestRelayDingReadStopsEscalation(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) { testRelayDingReadStopsEscalation(t, open) })
	}
}

func testRelayDingReadStopsEscalation(t *testing.T, open func(testing.TB) store.Store) {
	ctx := context.Background()
	nodes, clock, ns := dingNodesOn(t, open)
	a, b, c := nodes[0], nodes[1], nodes[2]
	res, err := a.e.Ding(ctx, engine.DingRequest{From: "alice", To: []string{"bob", "c0"}, Text: "server room", Policy: "inapp,inapp@1m,sms@5m until=read"})
	if err != nil {
		t.Fatal(err)
	}
	if h := headOf(t, a.e, "bob"); h != 0 {
		t.Fatalf("A.Head(bob) = %d: the DING was written on A", h)
	}
	pump(t, nodes...)
	for _, x := range []struct {
		n    *relayNode
		user string
	}{{b, "bob"}, {c, "c0"}} {
		got := x.n.rec.wait(t, x.user, 1)
		if m := got[0].Message; m == nil || m.ID != res.ID || m.Kind != engine.KindDing {
			t.Fatalf("%s's first entry = %+v, want the DING", x.user, got[0])
		}
	}
	// The reminder fires at A and reaches bob and c0 through the relay.
	clock.Advance(time.Minute)
	settle(t, a)
	pump(t, nodes...)
	for _, x := range []struct {
		n    *relayNode
		user string
	}{{b, "bob"}, {c, "c0"}} {
		got := x.n.rec.wait(t, x.user, 2)
		if ev := got[1].Ding; got[1].Kind != engine.EntryDing || ev.Event != engine.LedgerReminder || ev.ID != res.ID || ev.Recipient != x.user {
			t.Fatalf("%s's second entry = %+v, want the reminder", x.user, got[1])
		}
	}
	if err := b.e.Ack(ctx, "bob", "phone", 2); err != nil {
		t.Fatal(err)
	}
	if err := b.e.Read(ctx, "bob", res.ID); err != nil {
		t.Fatal(err)
	}
	pump(t, nodes...)
	ds := status(t, a.e, res.ID)
	bob := ds.Recipients[index(ds, "bob")]
	if bob.Status != engine.StatusRead || bob.ReachedBy != "inapp" || bob.NextStep != nil {
		t.Fatalf("bob at A = %+v, want read in the app and no next step", bob)
	}
	if evs := events(bob); !slices.Contains(evs, engine.LedgerDelivered) || !slices.Contains(evs, engine.LedgerRead) {
		t.Fatalf("bob's ledger at A = %v, want delivered and read", evs)
	}
	for _, ev := range bob.Events {
		if ev.Event == engine.LedgerDelivered && ev.Device != "phone" {
			t.Fatalf("delivered to %q, want phone", ev.Device)
		}
	}
	if r := receiptOf(t, a.e, res.ID, "bob"); r.State != engine.StateRead {
		t.Fatalf("bob's receipt at A is %v, want read", r.State)
	}

	clock.Advance(4 * time.Minute)
	ns[0].waitFor(t, func(s []sent) bool { return countTo(s, c0Phone) == 1 })
	settle(t, a)
	if n := countTo(ns[0].all(), bobPhone); n != 0 {
		t.Fatalf("bob read the DING on B and still got %d sends", n)
	}
	for p := 1; p < 3; p++ {
		if n := len(ns[p].all()); n != 0 {
			t.Fatalf("partition %d sent %d times: a DING sends from its home only", p, n)
		}
	}
	// Alice got bob's receipt events, and the DING's ledger events, at A.
	var states []engine.State
	for _, ent := range a.rec.entries("alice") {
		if ent.Kind == engine.EntryReceipt && ent.Receipt.User == "bob" {
			states = append(states, ent.Receipt.State)
		}
	}
	if !slices.Equal(states, []engine.State{engine.StateDelivered, engine.StateRead}) {
		t.Fatalf("alice's receipt events for bob = %v", states)
	}
	checkStores(t, nodes...)
}

// TestRelayDingConfirmCarriesTheAnswer: c0 confirms on C with a choice;
// A records the answer, stops c0's escalation and sends bob's SMS only.
func TestRelayDingConfirmCarriesTheAnswer(t *testing.T) {
	ctx := context.Background()
	nodes, clock, ns := dingNodes(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	res, err := a.e.Ding(ctx, engine.DingRequest{From: "alice", To: []string{"bob", "c0"}, Text: "meeting", Policy: "inapp,sms@5m",
		Choices: []string{"attend", "decline"}})
	if err != nil {
		t.Fatal(err)
	}
	pump(t, nodes...)
	c.rec.wait(t, "c0", 1)
	for _, x := range []struct {
		name   string
		n      *relayNode
		user   string
		answer int
		want   error
	}{
		{"answer out of range", c, "c0", 3, engine.ErrBadAnswer},
		{"not a recipient", b, "dave", 1, engine.ErrNotRecipient},
	} {
		if err := x.n.e.Confirm(ctx, x.user, res.ID, x.answer); !errors.Is(err, x.want) {
			t.Fatalf("%s: %v, want %v", x.name, err, x.want)
		}
	}
	done := make(chan engine.ConfirmResult, 1)
	c.e.ConfirmAsync("c0", res.ID, 2, func(r engine.ConfirmResult, err error) {
		if err != nil {
			r.Choice = err.Error()
		}
		done <- r
	})
	if r := <-done; r.Already || r.Answer != 2 || r.Choice != "decline" {
		t.Fatalf("C.Confirm = %+v", r)
	}
	pump(t, nodes...)
	ds := status(t, a.e, res.ID)
	c0 := ds.Recipients[index(ds, "c0")]
	if c0.Status != engine.StatusConfirmed || c0.Answer != 2 || c0.Choice != "decline" || c0.ReachedBy != "inapp" {
		t.Fatalf("c0 at A = %+v, want confirmed with decline", c0)
	}
	if r := receiptOf(t, a.e, res.ID, "c0"); r.State != engine.StateConfirmed {
		t.Fatalf("c0's receipt at A is %v", r.State)
	}
	if r := receiptOf(t, c.e, res.ID, "c0"); r.State != engine.StateConfirmed {
		t.Fatalf("c0's receipt at C is %v", r.State)
	}
	// c0's devices learn it: the event comes back from A.
	got := c.rec.wait(t, "c0", 2)
	if ev := got[1].Receipt; got[1].Kind != engine.EntryReceipt || ev.User != "c0" || ev.State != engine.StateConfirmed {
		t.Fatalf("c0's stream on C = %+v", got)
	}
	// Again: nothing changes, and C says so.
	if err := c.e.Confirm(ctx, "c0", res.ID, 1); err != nil {
		t.Fatal(err)
	}
	pump(t, nodes...)
	if c0 := status(t, a.e, res.ID).Recipients[index(ds, "c0")]; c0.Answer != 2 {
		t.Fatalf("a second confirmation changed the answer: %+v", c0)
	}

	clock.Advance(5 * time.Minute)
	ns[0].waitFor(t, func(s []sent) bool { return countTo(s, bobPhone) == 1 })
	settle(t, a)
	if n := countTo(ns[0].all(), c0Phone); n != 0 {
		t.Fatalf("c0 confirmed and still got %d sends", n)
	}
	st, err := a.e.Stats(res.ID, false)
	if err != nil || st.Total != 2 || st.Sent != 2 || st.Confirmed != 1 || st.Read != 1 {
		t.Fatalf("A.Stats = %+v, %v", st, err)
	}

	// bob answers the SMS, at A: his receipt on B follows, and B then
	// says he has confirmed.
	if err := a.e.InboundSMS(ctx, bobPhone, "1"); err != nil {
		t.Fatal(err)
	}
	pump(t, nodes...)
	if bob := status(t, a.e, res.ID).Recipients[index(ds, "bob")]; bob.Status != engine.StatusConfirmed || bob.Choice != "attend" || bob.ReachedBy != "sms" {
		t.Fatalf("bob at A = %+v", bob)
	}
	if r := receiptOf(t, b.e, res.ID, "bob"); r.State != engine.StateConfirmed {
		t.Fatalf("bob's receipt at B is %v after his SMS answer", r.State)
	}
	b.e.ConfirmAsync("bob", res.ID, 2, func(r engine.ConfirmResult, err error) {
		if err != nil {
			r.Choice = err.Error()
		}
		done <- r
	})
	if r := <-done; !r.Already {
		t.Fatalf("B.Confirm after the SMS answer = %+v, want Already", r)
	}
	if st, err := a.e.Stats(res.ID, false); err != nil || st.Confirmed != 2 {
		t.Fatalf("A.Stats = %+v, %v", st, err)
	}
	checkStores(t, nodes...)
}

// statsScenario is what recipients do with one message, the same on one
// engine and on three partitions.
type statsScenario struct {
	name     string
	announce bool
	ding     bool // a DING, until confirmed
	confirm  bool
	chunk    int // Config.FanoutChunk
	to       []string
	acks     []string // acknowledge the message (seq 1) on "phone"
	reads    []string
	confirms []string
}

// run sends the message from a0 and applies the scenario; on returns the
// engine of a user, and sync moves what is in flight (the relay).
func (sc statsScenario) run(t *testing.T, clock *fakeclock.Clock, origin *engine.Engine, on func(string) *engine.Engine, sync func()) engine.ID {
	t.Helper()
	ctx := context.Background()
	var id engine.ID
	if sc.ding {
		res, err := origin.Ding(ctx, engine.DingRequest{From: "a0", To: sc.to, Text: "fire", Policy: "inapp,inapp@1h"})
		if err != nil {
			t.Fatal(err)
		}
		id = res.ID
	} else if sc.announce {
		res, err := origin.Announce(ctx, engine.Announcement{From: "a0", To: sc.to, Text: "notice", Confirm: sc.confirm})
		if err != nil {
			t.Fatal(err)
		}
		id = res.ID
	} else {
		id = send(t, origin, "a0", "hello", sc.to...).ID
	}
	sync()
	for _, u := range sc.to {
		waitFanout(t, on(u), id)
	}
	clock.Advance(time.Minute)
	for _, u := range sc.acks {
		if err := on(u).Ack(ctx, u, "phone", 1); err != nil {
			t.Fatalf("ack by %s: %v", u, err)
		}
	}
	sync()
	clock.Advance(time.Minute)
	for _, u := range sc.reads {
		if err := on(u).Read(ctx, u, id); err != nil {
			t.Fatalf("read by %s: %v", u, err)
		}
	}
	sync()
	clock.Advance(time.Minute)
	for _, u := range sc.confirms {
		if err := on(u).Confirm(ctx, u, id, 0); err != nil {
			t.Fatalf("confirm by %s: %v", u, err)
		}
	}
	sync()
	return id
}

// statsView is what a sender's statistics say (the read ratio over time
// included), less the message's id.
type statsView struct {
	Stats engine.MessageStats
	Ann   []engine.AnnouncementCounts
	Total engine.DepartmentStats
	Ding  *engine.DingStatus // for a DING: every recipient's state and ledger
}

func viewStats(t *testing.T, e *engine.Engine, id engine.ID) statsView {
	t.Helper()
	if err := e.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	st, err := e.Stats(id, true)
	if err != nil {
		t.Fatal(err)
	}
	st.ID = engine.ID{}
	as, err := e.AdminStats(engine.StatsQuery{From: t0.Add(-24 * time.Hour), To: t0.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	v := statsView{Stats: *st, Total: as.Total}
	if ds, err := e.DingStatus(id); err == nil {
		ds.ID = engine.ID{}
		v.Ding = ds
	} else if !errors.Is(err, engine.ErrNotFound) {
		t.Fatal(err)
	}
	for _, a := range as.Announcements {
		a.AnnouncementCounts.Created = 0
		v.Ann = append(v.Ann, a.AnnouncementCounts)
	}
	return v
}

// TestRelayStatsEqualOneEngine: the sender's Stats, announcement counts
// and rollups on the origin of three partitions equal those of one
// engine (no Placement) after the same scenario.
func TestRelayStatsEqualOneEngine(t *testing.T) {
	all := []string{"a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"}
	for _, sc := range []statsScenario{
		{name: "group message", to: all, acks: []string{"a1", "b0", "b1", "c2"}, reads: []string{"a1", "b1", "c0"}},
		{name: "announcement", announce: true, chunk: 2, to: all, acks: []string{"a2", "b0", "c0", "c1"}, reads: []string{"a2", "b2", "c0"}},
		{name: "announcement to confirm", announce: true, confirm: true, to: all, acks: []string{"b0", "c1"},
			reads: []string{"b0", "a1"}, confirms: []string{"b0", "c2", "a2"}},
		{name: "one to one", to: []string{"b1"}, acks: []string{"b1"}, reads: []string{"b1"}},
		{name: "ding", ding: true, to: []string{"a1", "b0", "b1", "c0", "c1"}, acks: []string{"a1", "b0", "c1"},
			reads: []string{"b0", "c0"}, confirms: []string{"c1", "a1", "b0"}},
	} {
		t.Run(sc.name, func(t *testing.T) {
			var clock *fakeclock.Clock // each run's, shared by its engines
			mod := func(c *engine.Config) {
				c.Clock = clock
				if sc.chunk > 0 {
					c.FanoutChunk = sc.chunk
				}
			}
			clock = fakeclock.New(t0)
			one := openRelayNode(t, memstore.New(), 0, func(c *engine.Config) { mod(c); c.Placement = nil })
			id1 := sc.run(t, clock, one.e, func(string) *engine.Engine { return one.e }, func() {})
			want := viewStats(t, one.e, id1)
			if o := want.Stats.OverTime; len(sc.reads) > 0 && (len(o) == 0 || !o[len(o)-1].At.After(want.Stats.Created)) {
				t.Fatalf("one engine's read ratio over time = %+v: the reads should come after the send", o)
			}
			if sc.ding && (want.Ding == nil || want.Ding.Recipients[0].Status != engine.StatusConfirmed) {
				t.Fatalf("one engine's DING status = %+v", want.Ding)
			}

			clock = fakeclock.New(t0)
			nodes := memNodes(t, 3, mod)
			id3 := sc.run(t, clock, nodes[0].e, func(u string) *engine.Engine { return nodes[placeUser(u)].e }, func() { pump(t, nodes...) })
			got := viewStats(t, nodes[0].e, id3)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("on three partitions:\n%+v\none engine:\n%+v", got, want)
			}
			for p := 1; p < 3; p++ {
				as, err := nodes[p].e.AdminStats(engine.StatsQuery{From: t0.Add(-24 * time.Hour), To: t0.Add(24 * time.Hour)})
				if err != nil {
					t.Fatal(err)
				}
				if r := as.Total.Totals; r.MessagesDelivered != 0 || r.MessagesRead != 0 || r.DingRecipients != 0 || len(r.Outcomes) != 0 || len(as.Announcements) != 0 {
					t.Fatalf("partition %d counted %+v, %+v: only the origin counts", p, r, as.Announcements)
				}
			}
			checkStores(t, nodes...)
		})
	}
}

// TestRelayStatsCountRemotePending: until a RelayMessage is acknowledged,
// the origin's Stats count its users as pending; after, as sent.
func TestRelayStatsCountRemotePending(t *testing.T) {
	nodes := memNodes(t, 3, nil)
	m := send(t, nodes[0].e, "a0", "x", "a1", "b0", "b1", "c0")
	st, err := nodes[0].e.Stats(m.ID, true)
	if err != nil || st.Total != 4 || st.Pending != 3 || st.Sent != 1 || fmt.Sprint(st.Unread) != "[a1 b0 b1 c0]" {
		t.Fatalf("Stats before the relay = %+v, %v", st, err)
	}
	if n, err := nodes[0].e.PendingFanout(m.ID); err != nil || n != 0 {
		t.Fatalf("PendingFanout = %d, %v: it counts this engine's fanout only", n, err)
	}
	pump(t, nodes...)
	st, err = nodes[0].e.Stats(m.ID, false)
	if err != nil || st.Total != 4 || st.Pending != 0 || st.Sent != 4 {
		t.Fatalf("Stats after the relay = %+v, %v", st, err)
	}
	rs, err := nodes[0].e.Receipts(m.ID)
	if err != nil || len(rs) != 4 {
		t.Fatalf("Receipts at the origin = %+v, %v", rs, err)
	}
	checkStores(t, nodes...)
}

// TestRelayReceiptsMonotonic: receipts relayed again, late or out of
// order leave the origin's receipts where the furthest put them and its
// counts unchanged.
func TestRelayReceiptsMonotonic(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) { testRelayReceiptsMonotonic(t, open) })
	}
}

func testRelayReceiptsMonotonic(t *testing.T, open func(testing.TB) store.Store) {
	ctx := context.Background()
	mod := func(c *engine.Config) { c.Clock = fakeclock.New(t0) }
	a, b := openRelayNode(t, open(t), 0, mod), openRelayNode(t, open(t), 1, mod)
	ann, err := a.e.Announce(ctx, engine.Announcement{From: "alice", To: []string{"bob", "dave"}, Text: "notice"})
	if err != nil {
		t.Fatal(err)
	}
	m := send(t, a.e, "alice", "hi", "bob")
	pump(t, a, b)
	if err := b.e.Ack(ctx, "bob", "phone", 2); err != nil {
		t.Fatal(err)
	}
	if err := b.e.Read(ctx, "bob", ann.ID, m.ID); err != nil {
		t.Fatal(err)
	}
	out, err := b.e.Outbox(0, 0, 10)
	if err != nil || len(out.Records) != 2 || out.Records[0].State != engine.StateDelivered || out.Records[1].State != engine.StateRead {
		t.Fatalf("B.Outbox(0) = %+v, %v; want a delivered and a read receipt", out, err)
	}
	// Out of order: the read first, then the delivery.
	swapped := out
	swapped.Records = []engine.RelayRecord{out.Records[1], out.Records[0]}
	swapped.Records[0].Seq, swapped.Records[1].Seq = 1, 2
	if through, err := a.e.ApplyRelay(ctx, swapped); err != nil || through != 2 {
		t.Fatalf("ApplyRelay: %d, %v", through, err)
	}
	want := viewStats(t, a.e, ann.ID)
	wantMsg, err := a.e.Stats(m.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if s := want.Stats; s.Delivered != 1 || s.Read != 1 || s.Sent != 2 || len(want.Ann) != 1 || want.Ann[0].Delivered != 1 || want.Ann[0].Read != 1 {
		t.Fatalf("after the receipts: %+v", want)
	}
	if want.Total.Totals.MessagesDelivered != 1 || want.Total.Totals.MessagesRead != 1 {
		t.Fatalf("rollups after the receipts: %+v", want.Total)
	}
	for _, id := range []engine.ID{ann.ID, m.ID} {
		if r := receiptOf(t, a.e, id, "bob"); r.State != engine.StateRead || r.Read.IsZero() || r.Delivered.IsZero() {
			t.Fatalf("bob's receipt of %s at A = %+v", id, r)
		}
	}
	head := headOf(t, a.e, "alice")

	// The same batch again (the pump resent it): skipped by the
	// watermark. Then the same receipts under new seqs, in either order.
	if through, err := a.e.ApplyRelay(ctx, out); err != nil || through != 2 {
		t.Fatalf("ApplyRelay again: %d, %v", through, err)
	}
	again := out
	again.Records = []engine.RelayRecord{out.Records[0], out.Records[1], out.Records[0]}
	for i := range again.Records {
		again.Records[i].Seq = uint64(3 + i)
	}
	if through, err := a.e.ApplyRelay(ctx, again); err != nil || through != 5 {
		t.Fatalf("ApplyRelay of the receipts under new seqs: %d, %v", through, err)
	}
	if got := viewStats(t, a.e, ann.ID); !reflect.DeepEqual(got, want) {
		t.Fatalf("receipts applied again changed the counts:\n%+v\nwant\n%+v", got, want)
	}
	if got, err := a.e.Stats(m.ID, false); err != nil || got.Read != wantMsg.Read || got.Delivered != wantMsg.Delivered {
		t.Fatalf("message stats = %+v, %v", got, err)
	}
	if r := receiptOf(t, a.e, m.ID, "bob"); r.State != engine.StateRead {
		t.Fatalf("bob's receipt went back to %v", r.State)
	}
	if h := headOf(t, a.e, "alice"); h != head {
		t.Fatalf("alice's head moved from %d to %d: events repeated", head, h)
	}
	if r, err := engine.Check(b.st); err != nil || !r.OK() || r.Outbox != 2 {
		t.Fatalf("Check of B with its receipt records = %+v, %v", r, err)
	}
	if err := b.e.AckRelay(ctx, 0, 2); err != nil {
		t.Fatal(err)
	}
	checkStores(t, a, b)
}

// TestRelayForgetStopsRemoteDings: bob (partition 1) is removed; his
// own partition has no DING of alice's to stop, her partition (the
// DING's home) stops his escalation with Forget, once per audit seq.
func TestRelayForgetStopsRemoteDings(t *testing.T) {
	ctx := context.Background()
	nodes, clock, ns := dingNodes(t)
	a, b := nodes[0], nodes[1]
	res, err := a.e.Ding(ctx, engine.DingRequest{From: "alice", To: []string{"bob", "c0"}, Text: "fire", Policy: "inapp,sms@5m"})
	if err != nil {
		t.Fatal(err)
	}
	pump(t, nodes...)
	if got, err := b.e.Forget(ctx, "bob", 7); err != nil || got.DingsStopped != 0 {
		t.Fatalf("B.Forget = %+v, %v; want nothing stopped: the DING lives at A", got, err)
	}
	if got, err := a.e.Forget(ctx, "bob", 7); err != nil || got.DingsStopped != 1 {
		t.Fatalf("A.Forget = %+v, %v; want bob's escalation stopped", got, err)
	}
	for _, n := range nodes[:2] {
		if seq, err := n.e.ForgottenThrough(); err != nil || seq != 7 {
			t.Fatalf("ForgottenThrough = %d, %v; want 7", seq, err)
		}
	}
	// Replayed (a restart, a takeover): nothing more happens.
	if got, err := a.e.Forget(ctx, "bob", 7); err != nil || got.DingsStopped != 0 {
		t.Fatalf("A.Forget replayed = %+v, %v", got, err)
	}
	if got, err := a.e.Forget(ctx, "bob", 6); err != nil || got != (engine.Offboarded{}) {
		t.Fatalf("A.Forget of an older removal = %+v, %v", got, err)
	}
	if seq, err := a.e.ForgottenThrough(); err != nil || seq != 7 {
		t.Fatalf("ForgottenThrough after an older removal = %d, %v", seq, err)
	}
	ds := status(t, a.e, res.ID)
	if bob := ds.Recipients[index(ds, "bob")]; bob.Status != engine.StatusRemoved || !slices.Contains(events(bob), engine.LedgerRemoved) {
		t.Fatalf("bob at A = %+v", bob)
	}
	clock.Advance(5 * time.Minute)
	ns[0].waitFor(t, func(s []sent) bool { return countTo(s, c0Phone) == 1 })
	settle(t, a)
	if n := countTo(ns[0].all(), bobPhone); n != 0 {
		t.Fatalf("bob was removed and still got %d sends", n)
	}
	if _, err := a.e.Forget(ctx, "", 8); !errors.Is(err, engine.ErrBadName) {
		t.Fatalf("Forget of no one: %v", err)
	}
	checkStores(t, nodes...)
}
