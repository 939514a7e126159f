package engine_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// org is a directory fake: users u00000..., groups, and removed users.
type org struct {
	mu      sync.Mutex
	users   []string
	groups  map[string][]string
	removed map[string]bool
}

func newOrg(n int) *org {
	o := &org{groups: map[string][]string{}, removed: map[string]bool{}}
	for i := range n {
		o.users = append(o.users, fmt.Sprintf("u%05d", i))
	}
	o.users = append(o.users, "ana", "bo")
	slices.Sort(o.users)
	return o
}

func (o *org) Resolve(to []string) ([]string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for _, t := range to {
		switch {
		case t == engine.AllStaff:
			for _, u := range o.users {
				if !o.removed[u] {
					out = append(out, u)
				}
			}
		case len(t) > 6 && t[:6] == "group:":
			m, ok := o.groups[t[6:]]
			if !ok {
				return nil, fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, t)
			}
			out = append(out, m...)
		default:
			if _, ok := slices.BinarySearch(o.users, t); !ok || o.removed[t] {
				return nil, fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, t)
			}
			out = append(out, t)
		}
	}
	return out, nil
}

func (o *org) Active(u string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return !o.removed[u]
}

func openOrg(t testing.TB, st store.Store, o *org, chunk int) (*engine.Engine, *recorder) {
	t.Helper()
	e, err := engine.Open(engine.Config{Store: st, Recipients: o, FanoutChunk: chunk})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	e.SetSink(rec)
	t.Cleanup(func() { e.Close() })
	return e, rec
}

func waitFanout(t testing.TB, e *engine.Engine, id engine.ID) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		n, err := e.PendingFanout(id)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			// The last chunk is in the store; its heads are published
			// once the commit loop takes the next op.
			if err := e.Barrier(context.Background()); err != nil {
				t.Fatal(err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d recipients still pending", n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestAnnouncementReachesEveryoneAndCountsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	o := newOrg(10_000)
	o.removed["u00007"] = true
	e, sink := openOrg(t, db, o, 1000)
	ctx := context.Background()
	res, err := e.Announce(ctx, engine.Announcement{From: "ana", To: []string{engine.AllStaff}, Text: "office closed friday", Confirm: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFanout(t, e, res.ID)
	members := len(o.users) - 1
	for i, u := range o.users {
		if i%997 != 0 && u != "bo" {
			continue
		}
		got := sink.wait(t, u, 1)
		if m := got[0].Message; m == nil || m.ID != res.ID || m.Kind != engine.KindAnnouncement || m.Flags&engine.FlagConfirm == 0 {
			t.Fatalf("%s got %+v", u, got[0])
		}
	}
	if h, _ := e.Head("u00007"); h != 0 {
		t.Fatalf("a removed user got %d entries", h)
	}
	// Some read, some confirm, some only receive.
	for i, u := range o.users {
		switch {
		case u == "u00007":
		case i%10 == 0:
			if err := e.Confirm(ctx, u, res.ID, 0); err != nil {
				t.Fatal(err)
			}
		case i%4 == 0:
			if err := e.Read(ctx, u, res.ID); err != nil {
				t.Fatal(err)
			}
		case i%2 == 0:
			if err := e.Ack(ctx, u, "phone", 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.Confirm(ctx, "u00001", res.ID, 1); !errors.Is(err, engine.ErrBadAnswer) {
		t.Fatalf("answer 1 to a confirm-only announcement: %v", err)
	}
	if err := e.Confirm(ctx, "u00007", res.ID, 0); !errors.Is(err, engine.ErrNotRecipient) {
		t.Fatalf("confirm by a removed user: %v", err)
	}
	want, err := e.Stats(res.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	var wantConfirmed, wantRead, wantDelivered int
	for i, u := range o.users {
		if u == "u00007" {
			continue
		}
		switch {
		case i%10 == 0:
			wantConfirmed++
			wantRead++
			wantDelivered++
		case i%4 == 0:
			wantRead++
			wantDelivered++
		case i%2 == 0:
			wantDelivered++
		}
	}
	if want.Total != members || want.Pending != 0 || want.Confirmed != wantConfirmed || want.Read != wantRead || want.Delivered != wantDelivered ||
		len(want.Unread) != members-wantRead || len(want.Unconfirmed) != members-wantConfirmed {
		t.Fatalf("stats = total %d pending %d delivered %d read %d confirmed %d unread %d unconfirmed %d; want %d, 0, %d, %d, %d, %d, %d",
			want.Total, want.Pending, want.Delivered, want.Read, want.Confirmed, len(want.Unread), len(want.Unconfirmed),
			members, wantDelivered, wantRead, wantConfirmed, members-wantRead, members-wantConfirmed)
	}
	if len(want.OverTime) == 0 || want.OverTime[len(want.OverTime)-1].Read != wantRead {
		t.Fatalf("read over time = %v", want.OverTime)
	}
	// The sender's stream got no receipt event about other recipients
	// (only her own copy, as a member of all staff, and her own confirmation).
	for _, ent := range sink.entries("ana") {
		if ent.Kind == engine.EntryReceipt && ent.Receipt.User != "ana" {
			t.Fatalf("the sender got a receipt event: %+v", ent.Receipt)
		}
	}

	e.Close()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e, _ = openOrg(t, db, o, 1000)
	got, err := e.Stats(res.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	if got.Total != want.Total || got.Read != want.Read || got.Confirmed != want.Confirmed || got.Delivered != want.Delivered ||
		!slices.Equal(got.Unread, want.Unread) || !slices.Equal(got.Unconfirmed, want.Unconfirmed) {
		t.Fatal("stats differ after a restart")
	}
}

func TestFanoutResumesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	o := newOrg(5000)
	e, _ := openOrg(t, db, o, 100)
	res, err := e.Announce(context.Background(), engine.Announcement{From: "ana", To: []string{engine.AllStaff}, Text: "x"})
	if err != nil {
		t.Fatal(err)
	}
	e.Close() // most likely mid-fanout: 50 chunks
	pending, err := e.PendingFanout(res.ID)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e, _ = openOrg(t, db, o, 100)
	waitFanout(t, e, res.ID)
	for _, u := range o.users {
		if h, err := e.Head(u); err != nil || h != 1 {
			t.Fatalf("%s has %d entries (%v), want exactly 1", u, h, err)
		}
	}
	if pending == 0 {
		t.Fatal("the fanout finished before Close: the restart had nothing to resume")
	}
	t.Logf("%d of %d recipients were pending at the restart", pending, len(o.users))
}

// A message to one person is not queued behind a big fanout: its durable
// ack comes while the fanout is still being written.
func TestBigFanoutDoesNotHoldUpOneToOne(t *testing.T) {
	db, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	o := newOrg(30_000) // 15 chunks of 2048
	e, sink := openOrg(t, db, o, 2048)
	ctx := context.Background()
	res, err := e.Announce(ctx, engine.Announcement{From: "ana", To: []string{engine.AllStaff}, Text: "all hands"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	one := send(t, e, "bo", "are you coming?", "ana")
	took := time.Since(start)
	pending, err := e.PendingFanout(res.ID)
	if err != nil {
		t.Fatal(err)
	}
	if pending == 0 {
		t.Fatalf("the 1:1 message (%v) waited for the whole fanout", took)
	}
	got := sink.wait(t, "ana", 1)
	if got[0].Message.ID != one.ID {
		// ana's own copy of the announcement may be written first, if
		// her chunk came first; the 1:1 message must still be there.
		got = sink.wait(t, "ana", 2)
		if got[1].Message.ID != one.ID {
			t.Fatalf("ana's stream: %+v", got)
		}
	}
	t.Logf("1:1 acked in %v with %d of %d announcement recipients still pending", took, pending, len(o.users))
	waitFanout(t, e, res.ID)
}

func TestGroupTargets(t *testing.T) {
	o := newOrg(10)
	o.groups["team"] = []string{"u00001", "u00002", "bo"}
	e, sink := openOrg(t, memstore.New(), o, 0)
	ctx := context.Background()
	res, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{"group:team", "u00002"}, Kind: engine.KindText, Body: []byte("standup")})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"u00001", "u00002", "bo"} {
		got := sink.wait(t, u, 1)
		if m := got[0].Message; !slices.Equal(m.To, []string{"group:team", "u00002"}) {
			t.Fatalf("%s: To = %v", u, m.To)
		}
	}
	rs, _ := e.Receipts(res.ID)
	if len(rs) != 3 {
		t.Fatalf("%d receipts, want one per member", len(rs))
	}
	for _, tc := range []struct {
		to   string
		want error
	}{
		{engine.AllStaff, engine.ErrBadName},
		{"group:nope", engine.ErrUnknownRecipient},
		{"club:x", engine.ErrBadName},
	} {
		if _, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{tc.to}, Kind: engine.KindText, Body: []byte("x")}); !errors.Is(err, tc.want) {
			t.Errorf("to %q: %v, want %v", tc.to, err, tc.want)
		}
	}
	// A plain announcement cannot be confirmed.
	a, err := e.Announce(ctx, engine.Announcement{From: "ana", To: []string{"group:team"}, Text: "fyi"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Confirm(ctx, "bo", a.ID, 0); !errors.Is(err, engine.ErrNotDing) {
		t.Fatalf("confirming a plain announcement: %v", err)
	}
}

func TestOffboardingStopsPendingDings(t *testing.T) {
	env := newDingEnv(t, memstore.New(), nil)
	ctx := context.Background()
	res := env.ding(t, engine.DingRequest{To: []string{"bo", "cy"}, Policy: "inapp,sms@1m"})
	n, err := env.e.StopUser(ctx, "bo")
	if err != nil || n != 1 {
		t.Fatalf("StopUser = %d, %v", n, err)
	}
	env.clock.Advance(time.Minute)
	env.n.waitFor(t, func(s []sent) bool { return countTo(s, cyPhone) == 1 })
	env.barrier(t)
	if len(env.n.to(boPhone)) != 0 {
		t.Fatal("an offboarded recipient was escalated to")
	}
	ds := status(t, env.e, res.ID)
	if rs := ds.Recipients[index(ds, "bo")]; rs.Status != engine.StatusRemoved || !slices.Contains(events(rs), engine.LedgerRemoved) {
		t.Fatalf("bo = %+v", rs)
	}
	if n, _ := env.e.StopUser(ctx, "bo"); n != 0 {
		t.Fatalf("second StopUser stopped %d", n)
	}
}

// A user removed after a DING was checked but before it was committed is
// refused in the commit loop (offboarding races nothing through).
func TestDingToAUserRemovedMeanwhileIsRefused(t *testing.T) {
	o := newOrg(0)
	o.removed["bo"] = true // the directory already says removed; the contact lookup (checked first) still answers
	env := newDingEnv(t, memstore.New(), func(c *engine.Config) { c.Recipients = o })
	if _, err := env.e.Ding(context.Background(), engine.DingRequest{From: "ana", To: []string{"bo"}, Text: "x"}); !errors.Is(err, engine.ErrUnknownRecipient) {
		t.Fatalf("DING to a removed user: %v", err)
	}
}
