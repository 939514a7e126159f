package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
)

// hookEvents returns the outbox's durable events after seq after, as
// "type k=v k=v" lines (data in the order written).
func hookEvents(t testing.TB, e *engine.Engine, after uint64) ([]string, uint64) {
	t.Helper()
	evs, err := e.WebhookEvents(after, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range evs {
		var b strings.Builder
		b.WriteString(ev.Type)
		for _, a := range ev.Data {
			if a.IsInt {
				fmt.Fprintf(&b, " %s=%d", a.Key, a.Int)
			} else {
				fmt.Fprintf(&b, " %s=%s", a.Key, a.Value)
			}
		}
		out = append(out, b.String())
		after = ev.Seq
	}
	return out, after
}

func wantEvents(t testing.TB, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestWebhookEventsOfEachFeature: each feature's change writes its event
// in its own batch (durable as soon as the op is answered): receipts of a
// message, an announcement's publication, read ratios and confirmations,
// a secret chat (metadata only) and a removal. Nothing is written while
// no subscription wants it, and the outbox passes Check.
func TestWebhookEventsOfEachFeature(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			st := open(t)
			e, _ := openEngine(t, st)
			ctx := context.Background()
			send(t, e, "ana", "before any subscription", "bo")
			if got, _ := hookEvents(t, e, 0); len(got) != 0 || e.WebhookDurable() != 0 {
				t.Fatalf("events without a subscription: %v", got)
			}
			w, err := e.AddWebhook(ctx, engine.Webhook{URL: "http://127.0.0.1:9/hook", Events: []string{"message.*", "announcement.*", "secret.*", "user.removed"}})
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(w.Secret, "whsec_") || !strings.HasPrefix(w.ID, "wh_") || w.Cursor != 0 {
				t.Fatalf("subscription %+v", w)
			}

			// A message through the admin API (ViaAPI) is reported; a
			// person's message (the first, and "people talk") is not.
			m, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("lunch?"), ViaAPI: true})
			if err != nil {
				t.Fatal(err)
			}
			person := send(t, e, "ana", "people talk", "bo")
			head, err := e.Head("bo")
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Ack(ctx, "bo", "phone", head); err != nil {
				t.Fatal(err)
			}
			if err := e.Read(ctx, "bo", m.ID, person.ID); err != nil {
				t.Fatal(err)
			}
			got, seq := hookEvents(t, e, 0)
			wantEvents(t, got,
				"message.delivered message="+m.ID.String()+" from=ana recipient=bo",
				"message.read message="+m.ID.String()+" from=ana recipient=bo")

			a, err := e.Announce(ctx, engine.Announcement{From: "cy", To: []string{"ana", "bo"}, Text: "fire drill", Confirm: true})
			if err != nil {
				t.Fatal(err)
			}
			readSoon(t, e, "bo", a.ID)
			got, seq = hookEvents(t, e, seq)
			wantEvents(t, got,
				"announcement.published announcement="+a.ID.String()+" from=cy to=ana,bo recipients=2 confirm=1",
				"announcement.read_ratio announcement="+a.ID.String()+" from=cy percent=50 read=1 recipients=2")
			readSoon(t, e, "ana", a.ID)
			if err := e.Confirm(ctx, "ana", a.ID, 0); err != nil {
				t.Fatal(err)
			}
			got, seq = hookEvents(t, e, seq)
			wantEvents(t, got,
				"announcement.read_ratio announcement="+a.ID.String()+" from=cy percent=90 read=2 recipients=2",
				"announcement.read_ratio announcement="+a.ID.String()+" from=cy percent=100 read=2 recipients=2",
				"announcement.confirmed announcement="+a.ID.String()+" from=cy confirmed=1 recipients=2")

			ch, err := e.CreateChat(ctx, engine.ChatRequest{From: "ana", To: "bo", Level: engine.Level1})
			if err != nil {
				t.Fatal(err)
			}
			got, seq = hookEvents(t, e, seq)
			wantEvents(t, got, "secret.chat_created chat="+ch.ID.String()+" level=1")

			if _, err := e.Offboard(ctx, "cy", engine.Change{Removed: []string{"cy"}}); err != nil {
				t.Fatal(err)
			}
			// A retry of a removal already made (Removes only) says nothing.
			if _, err := e.Offboard(ctx, "cy", engine.Change{}); err != nil {
				t.Fatal(err)
			}
			got, _ = hookEvents(t, e, seq)
			wantEvents(t, got, "user.removed user=cy")

			// Acknowledging everything empties the outbox.
			if err := e.AckWebhook(ctx, w.ID, e.WebhookDurable()); err != nil {
				t.Fatal(err)
			}
			if got, _ := hookEvents(t, e, 0); len(got) != 0 {
				t.Fatalf("after the ack the outbox holds %v", got)
			}
			if r, err := engine.Check(st); err != nil || !r.OK() {
				t.Fatalf("check: %v %v", r.Problems, err)
			}
		})
	}
}

func firstID(t testing.TB, e *engine.Engine, user string) string {
	t.Helper()
	ents, err := e.Range(user, 0, 1)
	if err != nil || len(ents) == 0 || ents[0].Message == nil {
		t.Fatalf("range %s: %v", user, err)
	}
	return ents[0].Message.ID.String()
}

// readSoon reads id as user once the announcement's fanout reached them.
func readSoon(t testing.TB, e *engine.Engine, user string, id engine.ID) {
	t.Helper()
	for i := 0; ; i++ {
		err := e.Read(context.Background(), user, id)
		if err == nil {
			return
		}
		if !errors.Is(err, engine.ErrNotRecipient) || i > 10000 {
			t.Fatalf("read %s: %v", user, err)
		}
	}
}

// TestWebhookCursorsAndDeadLetters: a cursor moves only forward, the
// outbox keeps what the slowest subscription has not passed, a parked
// event is a dead letter that a replay marks, and removing a subscription
// lets its events and dead letters go; Check holds at each step.
func TestWebhookCursorsAndDeadLetters(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			st := open(t)
			e, _ := openEngine(t, st)
			ctx := context.Background()
			check := func() {
				t.Helper()
				if r, err := engine.Check(st); err != nil || !r.OK() {
					t.Fatalf("check: %v %v", r.Problems, err)
				}
			}
			fast, err := e.AddWebhook(ctx, engine.Webhook{URL: "https://a.example/", Events: []string{"user.*"}})
			if err != nil {
				t.Fatal(err)
			}
			slow, err := e.AddWebhook(ctx, engine.Webhook{URL: "https://b.example/", Events: []string{"*"}})
			if err != nil {
				t.Fatal(err)
			}
			for _, u := range []string{"u1", "u2", "u3"} {
				if err := e.Commit(ctx, engine.Change{Write: func(engine.Writer) error { return nil }, Added: []string{u}}); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.AckWebhook(ctx, fast.ID, 3); err != nil {
				t.Fatal(err)
			}
			if err := e.AckWebhook(ctx, fast.ID, 1); err != nil { // backwards: no change
				t.Fatal(err)
			}
			if w, _ := e.Webhook(fast.ID); w.Cursor != 3 {
				t.Fatalf("cursor %d", w.Cursor)
			}
			if err := e.AckWebhook(ctx, fast.ID, 4); !errors.Is(err, engine.ErrWebhookCursor) {
				t.Fatalf("ack beyond the durable events: %v", err)
			}
			if got, _ := hookEvents(t, e, 0); len(got) != 3 {
				t.Fatalf("the slow subscription's events: %v", got)
			}
			check()
			evs, _ := e.WebhookEvents(0, 1)
			if err := e.ParkWebhookEvent(ctx, slow.ID, engine.DeadLetter{Event: evs[0], Attempts: 7, LastError: "status 500"}); err != nil {
				t.Fatal(err)
			}
			if got, _ := hookEvents(t, e, 0); len(got) != 2 {
				t.Fatalf("after parking event 1: %v", got)
			}
			dls, err := e.WebhookDeadLetters(slow.ID, 0, 10, false)
			if err != nil || len(dls) != 1 || dls[0].Event.Seq != 1 || dls[0].Attempts != 7 || dls[0].Replay || dls[0].Event.Data[0].Value != "u1" {
				t.Fatalf("dead letters %+v %v", dls, err)
			}
			if n, err := e.ReplayWebhookDeadLetters(ctx, slow.ID, nil); err != nil || n != 1 {
				t.Fatalf("replay: %d %v", n, err)
			}
			if dls, _ := e.WebhookDeadLetters(slow.ID, 0, 10, true); len(dls) != 1 || !dls[0].Replay {
				t.Fatalf("marked for replay: %+v", dls)
			}
			check()
			if _, err := e.PauseWebhook(ctx, slow.ID, true); err != nil {
				t.Fatal(err)
			}
			if w, _ := e.Webhook(slow.ID); !w.Paused {
				t.Fatal("not paused")
			}
			if err := e.RemoveWebhook(ctx, slow.ID); err != nil {
				t.Fatal(err)
			}
			if got, _ := hookEvents(t, e, 0); len(got) != 0 {
				t.Fatalf("the removed subscription's events stay: %v", got)
			}
			if err := e.RemoveWebhook(ctx, slow.ID); !errors.Is(err, engine.ErrNoWebhook) {
				t.Fatalf("remove again: %v", err)
			}
			ws, err := e.Webhooks()
			if err != nil || len(ws) != 1 || ws[0].ID != fast.ID {
				t.Fatalf("webhooks %+v %v", ws, err)
			}
			check()
		})
	}
}

// TestWebhookOpsBudget: the day's SMS budget reaching 80% and 100% is an
// ops.budget event each, in the batch of the send that reached it; the
// DINGs' own events name no phone number.
func TestWebhookOpsBudget(t *testing.T) {
	env := newDingEnv(t, memstore.New(), func(c *engine.Config) { c.Quotas.SMSPerDay, c.Quotas.RecipientInterval = 5, -1 })
	if _, err := env.e.AddWebhook(context.Background(), engine.Webhook{URL: "http://127.0.0.1:9/", Events: []string{"ops.*", "ding.sending"}}); err != nil {
		t.Fatal(err)
	}
	env.ding(t, engine.DingRequest{To: []string{"ana", "bo", "cy"}, Policy: "sms"})
	env.ding(t, engine.DingRequest{To: []string{"ana", "bo", "cy"}, Policy: "sms", Text: "again"})
	env.n.waitSends(t, 5)
	got, _ := hookEvents(t, env.e, 0)
	var ops []string
	for _, g := range got {
		if strings.Contains(g, "+") {
			t.Fatalf("an event names a phone number: %s", g)
		}
		if strings.HasPrefix(g, "ops.") {
			ops = append(ops, g)
		}
	}
	wantEvents(t, ops,
		"ops.budget channel=sms percent=80 used=4 limit=5",
		"ops.budget channel=sms percent=100 used=5 limit=5")
}
