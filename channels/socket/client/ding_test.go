package client_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// TestConfirmDing: the recipient's app shows a DING with its choices and
// confirms it; the sender's app follows it through DING events and a
// CONFIRMED receipt.
func TestConfirmDing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, "ana", "bo", "cy")
	ana := nodetest.Dial(t, n, "ana", "web", nil)
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	cy := nodetest.Dial(t, n, "cy", "phone", nil)
	res, err := n.Engine().Ding(ctx, engine.DingRequest{
		From: "ana", To: []string{"bo"}, Text: "server room flooded", Policy: "inapp", Choices: []string{"on my way", "can't"},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := res.ID.String()

	e := nextMessage(t, bo)
	if m := e.Message; m.ID != id || m.Kind != pb.Kind_DING || string(m.Body) != "server room flooded" ||
		!slices.Equal(m.Choices, []string{"on my way", "can't"}) {
		t.Fatalf("recipient got %+v", m)
	}
	bo.Ack(e.Seq)

	// Refusals are errors for the caller; the client stays connected.
	plain := send(t, ana, "just text", "bo")
	for _, c := range []struct {
		name   string
		c      *client.Client
		id     string
		answer int
		code   pb.Code
	}{
		{"unknown id", bo, "01M8K8F2K5C97AM15Z94XS9NY4", 1, pb.Code_NOT_FOUND},
		{"plain message", bo, plain.ID, 0, pb.Code_NOT_DING},
		{"not a recipient", cy, id, 1, pb.Code_NOT_RECIPIENT},
		{"answer out of range", bo, id, 5, pb.Code_BAD_ANSWER},
	} {
		if err := c.c.Confirm(ctx, c.id, c.answer); !isCode(err, c.code) {
			t.Errorf("%s: %v, want %v", c.name, err, c.code)
		}
	}
	if err := bo.Confirm(ctx, id, -1); err == nil {
		t.Error("negative answer: no error")
	}
	if _, err := ana.Send(ctx, []string{"bo"}, []byte("x"), client.WithKind(pb.Kind_DING)); !isCode(err, pb.Code_BAD_REQUEST) {
		t.Errorf("sending kind DING: %v, want BAD_REQUEST", err)
	}

	if err := bo.Confirm(ctx, id, 1); err != nil {
		t.Fatalf("confirm: %v", err)
	}
	var events []*client.DingEvent
	for {
		e := next(t, ana)
		if e.Ding != nil {
			events = append(events, e.Ding)
			continue
		}
		if r := e.Receipt; r != nil && r.State == pb.State_CONFIRMED {
			if r.User != "bo" || !slices.Equal(r.IDs, []string{id}) {
				t.Fatalf("sender's receipt %+v", r)
			}
			break
		}
	}
	var kinds []string
	for _, ev := range events {
		kinds = append(kinds, ev.Event)
	}
	if !slices.Equal(kinds, []string{"delivered", "confirmed"}) {
		t.Fatalf("sender's ding events %v, want delivered, confirmed", kinds)
	}
	if c := events[1]; c.ID != id || c.Recipient != "bo" || c.Channel != "inapp" || c.Detail != "1 on my way" || c.At.IsZero() {
		t.Fatalf("confirmed event %+v", c)
	}
	rs, err := ana.Receipts(ctx, id)
	if err != nil || len(rs) != 1 || rs[0].State != pb.State_CONFIRMED || rs[0].ConfirmedMs == 0 {
		t.Fatalf("receipts = %v, %v", rs, err)
	}
	for _, c := range []*client.Client{ana, bo, cy} {
		if err := c.Err(); err != nil {
			t.Fatalf("a client stopped: %v", err)
		}
	}
}
