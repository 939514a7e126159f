package engine_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// sweep runs one retention sweep and checks the store's invariants after
// it.
func (env *dingEnv) sweep(t *testing.T) engine.SweepReport {
	t.Helper()
	r, err := env.e.Sweep(context.Background())
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	rep, err := engine.Check(env.st)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("store check after sweep: %v", rep.Problems)
	}
	return r
}

func seqs(es []engine.Entry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Seq
	}
	return out
}

func retentionEnv(t *testing.T, ret engine.Retention) *dingEnv {
	ret.Interval = -1 // the tests sweep themselves
	return newDingEnv(t, stores(t)["pebble"](t), func(c *engine.Config) { c.Retention = ret })
}

func TestRetentionDeletesOldEntriesAndMessages(t *testing.T) {
	env := retentionEnv(t, engine.Retention{MaxAge: time.Hour})
	var old []engine.ID
	for range 50 {
		old = append(old, send(t, env.e, "ana", "old", "bo").ID)
	}
	oldCy := send(t, env.e, "ana", "only one", "cy").ID
	if r := env.sweep(t); r.Entries != 0 || r.Messages != 0 {
		t.Fatalf("a sweep within the age deleted %+v", r)
	}
	env.clock.Advance(2 * time.Hour)
	var fresh []engine.ID
	for range 10 {
		fresh = append(fresh, send(t, env.e, "ana", "new", "bo").ID)
	}
	r := env.sweep(t)
	// bo: 50 old entries go; cy: its only entry is its head and stays,
	// but the message goes.
	if r.Entries != 50 || r.Messages != 51 {
		t.Fatalf("sweep deleted %d entries and %d messages, want 50 and 51", r.Entries, r.Messages)
	}
	got := rangeAll(t, env.e, "bo")
	if len(got) != 10 || got[0].Seq != 51 || got[0].Message.ID != fresh[0] {
		t.Fatalf("bo's stream after the sweep: seqs %v", seqs(got))
	}
	for _, id := range append(old, oldCy) {
		if _, err := env.e.Message(id); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("message %s past retention: %v", id, err)
		}
	}
	if from, _ := env.e.ResumeFrom("bo", 0); from != 51 {
		t.Fatalf("a device with no cursor resumes at %d, want 51", from)
	}
	if from, _ := env.e.ResumeFrom("bo", 55); from != 56 {
		t.Fatalf("a device past the trim resumes at %d, want 56", from)
	}
	// cy's head survived: the next entry continues the stream.
	if h, _ := env.e.Head("cy"); h != 1 {
		t.Fatalf("cy's head after the sweep = %d, want 1", h)
	}
	if es := rangeAll(t, env.e, "cy"); len(es) != 0 {
		t.Fatalf("cy's stream shows %v: its message is gone", seqs(es))
	}
	send(t, env.e, "ana", "again", "cy")
	if es := rangeAll(t, env.e, "cy"); len(es) != 1 || es[0].Seq != 2 {
		t.Fatalf("cy's stream after a new message: seqs %v, want [2]", seqs(es))
	}
	// A device acknowledging across the trimmed part is fine.
	if err := env.e.Ack(context.Background(), "bo", "phone", 60); err != nil {
		t.Fatal(err)
	}
	// A second sweep takes cy's old head, no longer its last entry, and
	// nothing else.
	if r := env.sweep(t); r.Entries != 1 || r.Messages != 0 {
		t.Fatalf("second sweep deleted %+v, want cy's old entry only", r)
	}
}

func TestRetentionHoldsUnsettledDingsAndConfirmations(t *testing.T) {
	env := retentionEnv(t, engine.Retention{MaxAge: time.Hour})
	send(t, env.e, "ana", "before", "bo")
	d := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,sms@3h"})
	ann, err := env.e.Announce(context.Background(), engine.Announcement{From: "ana", To: []string{"bo", "cy"}, Text: "sign the policy", Confirm: true})
	if err != nil {
		t.Fatal(err)
	}
	send(t, env.e, "ana", "after", "bo")
	if err := env.e.Confirm(context.Background(), "cy", ann.ID, 0); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(2 * time.Hour) // the DING's SMS is due at 3h: still escalating
	send(t, env.e, "ana", "new", "bo")
	env.sweep(t)
	bo := rangeAll(t, env.e, "bo")
	var kept []engine.ID
	for _, e := range bo {
		if e.Kind == engine.EntryMessage {
			kept = append(kept, e.Message.ID)
		}
	}
	if len(kept) != 3 || kept[0] != d.ID || kept[1] != ann.ID {
		t.Fatalf("bo's messages after the sweep: %v; want the DING, the announcement and the new one", kept)
	}
	if _, err := env.e.Message(d.ID); err != nil {
		t.Fatalf("the escalating DING's message: %v", err)
	}
	// cy confirmed the announcement: its entry went; the record stays
	// while bo has not confirmed.
	for _, e := range rangeAll(t, env.e, "cy") {
		if e.Kind == engine.EntryMessage {
			t.Fatalf("cy's confirmed announcement is still in its stream at %d", e.Seq)
		}
	}
	if _, err := env.e.Message(ann.ID); err != nil {
		t.Fatalf("the announcement bo has not confirmed: %v", err)
	}
	// Both settle: the next sweep takes them.
	if err := env.e.Confirm(context.Background(), "bo", d.ID, 0); err != nil {
		t.Fatal(err)
	}
	if err := env.e.Confirm(context.Background(), "bo", ann.ID, 0); err != nil {
		t.Fatal(err)
	}
	r := env.sweep(t)
	if r.Dings != 1 || r.Held != 0 {
		t.Fatalf("sweep after settling: %+v, want the DING deleted and nothing held", r)
	}
	for _, id := range []engine.ID{d.ID, ann.ID} {
		if _, err := env.e.Message(id); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("settled message %s past retention: %v", id, err)
		}
	}
	if _, err := env.e.DingStatus(d.ID); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("settled DING's status past retention: %v", err)
	}
}

func TestRetentionMaxEntries(t *testing.T) {
	env := retentionEnv(t, engine.Retention{MaxEntries: 100})
	for range 250 {
		send(t, env.e, "ana", "x", "bo")
	}
	r := env.sweep(t)
	if r.Entries != 150 || r.Messages != 0 {
		t.Fatalf("sweep: %+v, want 150 entries and no messages (messages go by age)", r)
	}
	got := rangeAll(t, env.e, "bo")
	if len(got) != 100 || got[0].Seq != 151 || got[99].Seq != 250 {
		t.Fatalf("bo's stream: %d entries from %d", len(got), got[0].Seq)
	}
	// A range that starts in the trimmed part and is bounded still fills.
	if es, _ := env.e.Range("bo", 1, 10); len(es) != 10 || es[0].Seq != 151 {
		t.Fatalf("Range from 1, 10 entries: seqs %v", seqs(es))
	}
}

func TestRetentionDedupeWindow(t *testing.T) {
	env := retentionEnv(t, engine.Retention{}) // the default window: 7 days
	sub := engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("hi"), ClientID: "c1"}
	first, err := env.e.Submit(context.Background(), sub)
	if err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(6 * 24 * time.Hour)
	if r := env.sweep(t); r.Dedupe != 0 {
		t.Fatalf("sweep within the window deleted %d dedupe keys", r.Dedupe)
	}
	if again, _ := env.e.Submit(context.Background(), sub); !again.Duplicate || again.ID != first.ID {
		t.Fatalf("retry within the window: %+v", again)
	}
	env.clock.Advance(2 * 24 * time.Hour)
	if r := env.sweep(t); r.Dedupe != 1 {
		t.Fatalf("sweep past the window deleted %d dedupe keys, want 1", r.Dedupe)
	}
	if again, _ := env.e.Submit(context.Background(), sub); again.Duplicate {
		t.Fatalf("retry past the window is still a duplicate")
	}
	// Streams and messages are kept by default.
	if es := rangeAll(t, env.e, "bo"); len(es) != 2 {
		t.Fatalf("bo's stream has %d entries, want 2", len(es))
	}
}

func TestRetentionRefusesUnsafeSettings(t *testing.T) {
	for _, ret := range []engine.Retention{{MaxAge: 30 * time.Second}, {MaxEntries: 5}, {MaxAge: -time.Hour}, {DedupeWindow: time.Second}} {
		if _, err := engine.Open(engine.Config{Store: stores(t)["mem"](t), Retention: ret}); err == nil {
			t.Fatalf("Open accepted retention %+v", ret)
		}
	}
}

var (
	flatWindows   = flag.Int("retention.windows", 6, "TestRetentionKeepsTheStoreFlat: retention windows (hours) to send")
	flatPerWindow = flag.Int("retention.per-window", 2000, "TestRetentionKeepsTheStoreFlat: messages sent in each window")
)

// TestRetentionKeepsTheStoreFlat sends -retention.windows hours of
// traffic, -retention.per-window 1:1 messages an hour among 50 users,
// with one hour of retention and a sweep each hour, on Pebble and the
// fake clock: after each sweep the store holds exactly the last hour's
// messages and at most that hour's entries plus one head per stream,
// however many hours went before. It logs Pebble's disk usage per hour;
// a long run of it is in bench/RESULTS.md ("Retention").
func TestRetentionKeepsTheStoreFlat(t *testing.T) {
	db, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	users := fixedUsers{}
	for i := range 50 {
		users[fmt.Sprintf("u%02d", i)] = true
	}
	env := newDingEnv(t, db, func(c *engine.Config) {
		// Client message ids expire after an hour too (7 days by default),
		// so that everything the traffic writes is under retention.
		c.Retention = engine.Retention{MaxAge: time.Hour, DedupeWindow: time.Hour, Interval: -1}
		c.Recipients = users
	})
	count := func(prefix byte) int {
		n := 0
		db.Scan([]byte{prefix}, []byte{prefix + 1}, func(_, _ []byte) bool { n++; return true })
		return n
	}
	rng := rand.New(rand.NewPCG(1, 2))
	body := bytes.Repeat([]byte("x"), 200)
	for w := range *flatWindows {
		var wg sync.WaitGroup
		errs := make(chan error, *flatPerWindow)
		for i := range *flatPerWindow {
			from, to := rng.IntN(50), rng.IntN(50)
			if to == from {
				to = (to + 1) % 50
			}
			wg.Add(1)
			env.e.SubmitAsync(engine.Submission{From: fmt.Sprintf("u%02d", from), To: []string{fmt.Sprintf("u%02d", to)},
				Kind: engine.KindText, Body: body, ClientID: fmt.Sprintf("w%d-%d", w, i)},
				func(_ engine.SubmitResult, err error) {
					if err != nil {
						errs <- err
					}
					wg.Done()
				})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		env.clock.Advance(time.Hour)
		r := env.sweep(t)
		msgs, entries := count('m'), count('i')
		if err := db.Flush(); err != nil {
			t.Fatal(err)
		}
		t.Logf("hour %d: deleted %d messages, %d entries, %d dedupe keys; store holds %d messages, %d entries; Pebble disk usage %.1f MiB",
			w+1, r.Messages, r.Entries, r.Dedupe, msgs, entries, float64(db.DiskUsage())/(1<<20))
		if d := count('d'); d > *flatPerWindow {
			t.Fatalf("hour %d: %d client message id keys stored, want at most the last hour's %d", w+1, d, *flatPerWindow)
		}
		if msgs != *flatPerWindow {
			t.Fatalf("hour %d: %d messages stored, want the last hour's %d", w+1, msgs, *flatPerWindow)
		}
		if entries > *flatPerWindow+50 {
			t.Fatalf("hour %d: %d entries stored, want at most the last hour's %d and 50 heads", w+1, entries, *flatPerWindow)
		}
	}
}

// TestRetentionDoesNotWaitForRemovedUsers: a must-confirm announcement
// is held past retention while a recipient has not confirmed, but not
// for a recipient who was offboarded: they never will, and it would be
// kept forever.
func TestRetentionDoesNotWaitForRemovedUsers(t *testing.T) {
	dir := newDirectory("ana", "bo", "cy")
	env := newDingEnv(t, stores(t)["pebble"](t), func(c *engine.Config) {
		c.Retention = engine.Retention{MaxAge: time.Hour, Interval: -1}
		c.Recipients = dir
	})
	ctx := context.Background()
	ann, err := env.e.Announce(ctx, engine.Announcement{From: "ana", To: []string{"bo", "cy"}, Text: "sign the policy", Confirm: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.e.Confirm(ctx, "cy", ann.ID, 0); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(2 * time.Hour)
	send(t, env.e, "ana", "new", "bo", "cy")
	if r := env.sweep(t); r.Held == 0 {
		t.Fatalf("sweep with bo's confirmation missing: %+v, want the announcement held", r)
	}
	if _, err := env.e.Message(ann.ID); err != nil {
		t.Fatalf("the announcement bo has not confirmed: %v", err)
	}
	if _, err := env.e.Offboard(ctx, "bo", engine.Change{Applied: func() { dir.remove("bo") }}); err != nil {
		t.Fatal(err)
	}
	if r := env.sweep(t); r.Held != 0 {
		t.Fatalf("sweep after bo's removal: %+v, want nothing held", r)
	}
	if _, err := env.e.Message(ann.ID); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("the announcement past retention, its one unconfirmed recipient removed: %v, want it deleted", err)
	}
}

// TestRetentionSweepsWhileWritesAreRefused: while the engine refuses
// writes (the disk guard's SetReadOnly: the disk is nearly full), a
// submit is refused with ErrReadOnly, but a retention sweep still deletes
// what is past retention: deleting is how a full disk is freed.
func TestRetentionSweepsWhileWritesAreRefused(t *testing.T) {
	env := retentionEnv(t, engine.Retention{MaxAge: time.Hour})
	old := send(t, env.e, "ana", "old", "bo")
	env.clock.Advance(2 * time.Hour)
	send(t, env.e, "ana", "new", "bo")
	env.e.SetReadOnly(errors.New("the disk is nearly full"))
	if _, err := env.e.Submit(context.Background(), engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("refused")}); !errors.Is(err, engine.ErrReadOnly) {
		t.Fatalf("a submit while writes are refused: %v, want ErrReadOnly", err)
	}
	r := env.sweep(t)
	if r.Messages == 0 || r.Entries == 0 {
		t.Fatalf("sweep while writes are refused: %+v, want the old message and entry deleted", r)
	}
	if _, err := env.e.Message(old.ID); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("the message past retention after the sweep: %v, want deleted", err)
	}
}
