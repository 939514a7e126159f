package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// A second confirmation, from another device, changes nothing, and
// ConfirmCheck says so with the one that stands (issue 12).
func TestConfirmCheckSaysWhenTheAnswerIsIgnored(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, "ana", "bo")
	phone := nodetest.Dial(t, n, "bo", "phone", nil)
	laptop := nodetest.Dial(t, n, "bo", "laptop", nil)
	res, err := n.Engine().Ding(ctx, engine.DingRequest{
		From: "ana", To: []string{"bo"}, Text: "db down", Policy: "inapp", Choices: []string{"on it", "can't"},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := res.ID.String()
	if earlier, err := phone.ConfirmCheck(ctx, id, 1); err != nil || earlier != nil {
		t.Fatalf("first confirmation: %+v, %v; want it recorded", earlier, err)
	}
	earlier, err := laptop.ConfirmCheck(ctx, id, 2)
	if err != nil || earlier == nil || earlier.Answer != 1 || earlier.Choice != "on it" || earlier.Channel != "inapp" || earlier.At.IsZero() {
		t.Fatalf("second confirmation: %+v, %v; want the first one, which stands", earlier, err)
	}
	ds, err := n.Engine().DingStatus(res.ID)
	if err != nil || ds.Recipients[0].Answer != 1 || !ds.Recipients[0].Ended.Equal(earlier.At) {
		t.Fatalf("status %+v (%v): want answer 1 confirmed at %v", ds.Recipients[0], err, earlier.At)
	}

	// A must-confirm announcement likewise.
	a, err := n.Engine().Announce(ctx, engine.Announcement{From: "ana", To: []string{"bo"}, Text: "fire drill", Confirm: true})
	if err != nil {
		t.Fatal(err)
	}
	nextWhere(t, phone, "the announcement", func(e client.Entry) bool { return e.Message != nil && e.Message.ID == a.ID.String() })
	if earlier, err := phone.ConfirmCheck(ctx, a.ID.String(), 0); err != nil || earlier != nil {
		t.Fatalf("first confirmation of the announcement: %+v, %v; want it recorded", earlier, err)
	}
	if earlier, err := laptop.ConfirmCheck(ctx, a.ID.String(), 0); err != nil || earlier == nil || earlier.Answer != 0 || earlier.Channel != "inapp" || earlier.At.IsZero() {
		t.Fatalf("second confirmation of the announcement: %+v, %v; want the first one", earlier, err)
	}
}
