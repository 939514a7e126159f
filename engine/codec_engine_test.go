package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
)

// Data directories written before the binary codecs hold their DING,
// secret chat, announcement and fanout records as JSON. These tests write
// records with the engine, rewrite them as JSON behind its back
// (engine.RewriteAsJSON), restart it, and carry on.

func rewriteAsJSON(t testing.TB, st store.Store) {
	t.Helper()
	n, err := engine.RewriteAsJSON(st)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no record to rewrite as JSON")
	}
}

func stateIsJSON(t testing.TB, st store.Store, id engine.ID, idx int) bool {
	t.Helper()
	old, err := engine.RecipientStateIsJSON(st, id, idx)
	if err != nil {
		t.Fatal(err)
	}
	return old
}

func TestDingWrittenAsJSONKeepsEscalating(t *testing.T) {
	st := memstore.New()
	env := newDingEnv(t, st, nil)
	res := env.ding(t, engine.DingRequest{To: []string{"bo", "cy", outside}, Policy: "inapp,sms@1m,voice@10m", Choices: []string{"attend", "decline"}})
	env.clock.Advance(time.Minute)
	for idx := range 3 {
		waitLedger(t, env.e, res.ID, idx, engine.LedgerSMSQueued)
	}
	env.barrier(t)
	before, _ := json.Marshal(status(t, env.e, res.ID))
	env.e.Close()
	rewriteAsJSON(t, st)
	env.open(t)

	if after, _ := json.Marshal(status(t, env.e, res.ID)); !bytes.Equal(after, before) {
		t.Fatalf("status from JSON records:\n%s\nwant\n%s", after, before)
	}
	ds := status(t, env.e, res.ID)
	out, bo, cy := index(ds, outside), index(ds, "bo"), index(ds, "cy")
	if err := env.e.Confirm(context.Background(), "bo", res.ID, 2); err != nil {
		t.Fatal(err)
	}
	if err := env.e.InboundSMS(context.Background(), outside, "1"); err != nil {
		t.Fatal(err)
	}
	if stateIsJSON(t, st, res.ID, bo) || stateIsJSON(t, st, res.ID, out) || !stateIsJSON(t, st, res.ID, cy) {
		t.Fatal("want the changed states rewritten as binary, and only them")
	}
	env.clock.Advance(9 * time.Minute) // cy's call
	env.n.waitFor(t, func(s []sent) bool { return countTo(s, cyPhone) == 2 })
	env.barrier(t)

	ds = status(t, env.e, res.ID)
	if r := ds.Recipients[bo]; r.Status != engine.StatusConfirmed || r.Choice != "decline" || r.ReachedBy != "inapp" {
		t.Fatalf("bo: %+v", r)
	}
	if r := ds.Recipients[out]; r.Status != engine.StatusConfirmed || r.Choice != "attend" || r.ReachedBy != "sms" {
		t.Fatalf("the phone number: %+v", r)
	}
	if r := ds.Recipients[cy]; r.Status != engine.StatusPending || !slices.Contains(events(r), engine.LedgerCallInitiated) {
		t.Fatalf("cy: %v", events(r))
	}
	if n, m := len(env.n.to(boPhone)), len(env.n.to(outside)); n != 1 || m != 1 {
		t.Fatalf("%d sends to bo, %d to the phone number after they confirmed; want their one SMS each", n, m)
	}
	if p := env.e.PendingSteps(); p != 0 {
		t.Fatalf("%d pending steps after the last one", p)
	}
	list, err := env.e.Dings("ana", engine.ID{}, 10)
	if err != nil || len(list) != 1 || list[0].ID != res.ID || list[0].Recipients != 3 {
		t.Fatalf("Dings = %+v, %v", list, err)
	}
}

func TestSecretChatWrittenAsJSONKeepsBurning(t *testing.T) {
	env := newSecretEnv(t, true, nil)
	ch := env.chat(t, engine.Level1, 0)
	ch3 := env.chat(t, engine.Level3, 0)
	id := env.send(t, ch, alice, "read me once")
	kept := env.send(t, ch, alice, "left unread")
	id3 := env.send(t, ch3, alice, "gone at the restart")
	env.e.Close()
	rewriteAsJSON(t, env.db)
	env.restart(t)

	if got, err := env.e.Chat(ch.ID); err != nil || !jsonEqual(got, ch) {
		t.Fatalf("chat from its JSON record: %+v (%v), want %+v", got, err, ch)
	}
	env.waitBurn(t, alice, id3) // level 3: its key died with the process
	chats, err := env.e.Chats(alice)
	if err != nil || len(chats) != 2 {
		t.Fatalf("Chats = %+v, %v", chats, err)
	}
	for _, c := range chats {
		if want := map[engine.ID]int{ch.ID: 2, ch3.ID: 0}[c.ID]; c.Live != want {
			t.Fatalf("chat level %d has %d live messages, want %d", c.Level, c.Live, want)
		}
	}
	if err := env.e.Read(context.Background(), bob, id); err != nil {
		t.Fatal(err)
	}
	env.burnsAt(t, id, ch.BurnAfter)

	// The keys lost (a store restored without its keyring): the start-up
	// scan of the secret states reads the JSON one left.
	env.close()
	if err := os.Remove(filepath.Join(env.data, "secret.keys")); err != nil {
		t.Fatal(err)
	}
	env.open(t)
	env.waitBurn(t, alice, kept)
	if n := env.e.LiveSecrets(); n != 0 {
		t.Fatalf("%d live secret messages, want none", n)
	}
}

func jsonEqual(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func TestAnnouncementWrittenAsJSONKeepsCounting(t *testing.T) {
	st := memstore.New()
	o := newOrg(5000)
	e, _ := openOrg(t, st, o, 100)
	ctx := context.Background()
	res, err := e.Announce(ctx, engine.Announcement{From: "ana", To: []string{engine.AllStaff}, Text: "office closed friday", Confirm: true})
	if err != nil {
		t.Fatal(err)
	}
	e.Close() // most likely mid-fanout, with its job record: 50 chunks
	pending, err := e.PendingFanout(res.ID)
	if err != nil {
		t.Fatal(err)
	}
	rewriteAsJSON(t, st)
	e, _ = openOrg(t, st, o, 100)
	waitFanout(t, e, res.ID)
	for i := 0; i < len(o.users); i += 97 {
		if h, err := e.Head(o.users[i]); err != nil || h != 1 {
			t.Fatalf("%s has %d entries (%v), want exactly 1", o.users[i], h, err)
		}
	}
	for _, u := range o.users[:10] {
		if err := e.Confirm(ctx, u, res.ID, 0); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	stats, err := e.AdminStats(engine.StatsQuery{From: now.Add(-24 * time.Hour), To: now.Add(24 * time.Hour)})
	if err != nil || len(stats.Announcements) != 1 {
		t.Fatalf("AdminStats: %+v, %v", stats, err)
	}
	if a := stats.Announcements[0]; a.ID != res.ID || a.From != "ana" || a.Total != uint64(len(o.users)) || a.Delivered != 10 || a.Read != 10 || a.Confirmed != 10 || !a.Confirm {
		t.Fatalf("announcement counts %+v", a)
	}
	if pending == 0 {
		t.Log("the fanout finished before Close: its job record was not read as JSON")
	}
}
