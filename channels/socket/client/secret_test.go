package client_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/internal/fakeclock"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

func secretEvent(t *testing.T, c *client.Client, chat, event string) *client.SecretEvent {
	t.Helper()
	return nextWhere(t, c, "secret event "+event, func(e client.Entry) bool {
		return e.Secret != nil && e.Secret.Chat == chat && e.Secret.Event == event
	}).Secret
}

// TestSecretChatThroughTheClient: CreateChat, SendChat, the recipient's
// Message with its secret fields, and the Burn entry on both sides after
// the read and the burn delay.
func TestSecretChatThroughTheClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	clock := fakeclock.New(time.Date(2030, 1, 7, 10, 0, 0, 0, time.UTC))
	n := nodetest.Start(t, node.Config{Clock: clock})
	nodetest.AddUsers(t, n, "ana", "bo")
	ana := nodetest.Dial(t, n, "ana", "web", nil)
	bo := nodetest.Dial(t, n, "bo", "phone", nil)

	chat, err := ana.CreateChat(ctx, "bo", 2, 0)
	if err != nil || len(chat) != 26 {
		t.Fatalf("create chat: %q, %v", chat, err)
	}
	ac, bc := secretEvent(t, ana, chat, "created"), secretEvent(t, bo, chat, "created")
	if ac.You != bc.Peer || ac.Peer != bc.You || ac.By != ac.You || bc.By != ac.You || ac.Level != 2 ||
		ac.BurnAfter != 30*time.Second || !strings.HasPrefix(ac.You, "anon-") || !ac.At.Equal(clock.Now()) {
		t.Fatalf("created events: %+v and %+v", ac, bc)
	}

	res, err := ana.SendChat(ctx, chat, []byte("burn after reading"))
	if err != nil {
		t.Fatal(err)
	}
	e := nextWhere(t, bo, "the secret message", func(e client.Entry) bool { return e.Message != nil })
	m := e.Message
	if m.ID != res.ID || m.Chat != chat || m.From != ac.You || len(m.To) != 1 || m.To[0] != bc.You || m.Level != 2 ||
		m.BurnAfter != 30*time.Second || !m.NoCopy || !m.NoForward || m.Watermark != bc.You || string(m.Body) != "burn after reading" {
		t.Fatalf("recipient got %+v", m)
	}
	rs, err := ana.Receipts(ctx, res.ID)
	if err != nil || len(rs) != 1 || rs[0].User != bc.You {
		t.Fatalf("sender's receipts %v (%v), want one naming %s", rs, err, bc.You)
	}
	if _, err := bo.Receipts(ctx, res.ID); !isCode(err, pb.Code_FORBIDDEN) {
		t.Fatalf("recipient's receipts query: %v, want FORBIDDEN", err)
	}
	if _, err := bo.Send(ctx, []string{"ana"}, []byte("x"), client.WithForwardOf(res.ID)); !isCode(err, pb.Code_NO_FORWARD) {
		t.Fatalf("forward of a secret message: %v, want NO_FORWARD", err)
	}
	if _, err := bo.Send(ctx, []string{"ana"}, []byte("x"), client.WithQuoteOf(res.ID)); !isCode(err, pb.Code_NO_FORWARD) {
		t.Fatalf("quote of a secret message: %v, want NO_FORWARD", err)
	}

	bo.Ack(e.Seq)
	if err := bo.Read(ctx, res.ID); err != nil {
		t.Fatal(err)
	}
	clock.Advance(30 * time.Second)
	for _, c := range []*client.Client{ana, bo} {
		b := nextWhere(t, c, "the burn", func(e client.Entry) bool { return e.Burn != nil })
		if b.Burn.ID != res.ID || b.Burn.Seq != b.Seq || b.Message != nil {
			t.Fatalf("burn entry %+v", b)
		}
	}
}

// TestScreenshotAndForwardThroughTheClient: Screenshot in a level-3 chat
// reaches the peer, and in a level-1 chat fails with BAD_CHAT; an ordinary
// message forwarded with WithForwardOf arrives with ForwardOf.
func TestScreenshotAndForwardThroughTheClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, "ana", "bo", "cy")
	ana := nodetest.Dial(t, n, "ana", "web", nil)
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	cy := nodetest.Dial(t, n, "cy", "phone", nil)

	chat3, err := ana.CreateChat(ctx, "bo", 3, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	bc := secretEvent(t, bo, chat3, "created")
	if bc.Level != 3 || bc.BurnAfter != 5*time.Second {
		t.Fatalf("level-3 chat created as %+v", bc)
	}
	res, err := ana.SendChat(ctx, chat3, []byte("quick"))
	if err != nil {
		t.Fatal(err)
	}
	if err := bo.Screenshot(ctx, chat3, res.ID); err != nil {
		t.Fatal(err)
	}
	shot := secretEvent(t, ana, chat3, "screenshot")
	if shot.By != bc.You || shot.ID != res.ID || shot.Level != 3 {
		t.Fatalf("screenshot event %+v, want by %s of %s", shot, bc.You, res.ID)
	}
	if err := cy.Screenshot(ctx, chat3, ""); !isCode(err, pb.Code_NOT_MEMBER) {
		t.Fatalf("outsider's screenshot: %v, want NOT_MEMBER", err)
	}
	if _, err := cy.SendChat(ctx, chat3, []byte("let me in")); !isCode(err, pb.Code_NOT_MEMBER) {
		t.Fatalf("outsider's send in the chat: %v, want NOT_MEMBER", err)
	}
	chat1, err := ana.CreateChat(ctx, "bo", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := bo.Screenshot(ctx, chat1, ""); !isCode(err, pb.Code_BAD_CHAT) {
		t.Fatalf("screenshot in a level-1 chat: %v, want BAD_CHAT", err)
	}
	if _, err := ana.CreateChat(ctx, "bo", 1, 10*time.Second); !isCode(err, pb.Code_BAD_CHAT) {
		t.Fatalf("a level-1 chat with a burn delay: %v, want BAD_CHAT", err)
	}

	plain := send(t, ana, "agenda", "bo")
	fwd, err := bo.Send(ctx, []string{"cy"}, []byte("fyi"), client.WithForwardOf(plain.ID))
	if err != nil {
		t.Fatal(err)
	}
	m := nextMessage(t, cy).Message
	if m.ID != fwd.ID || m.ForwardOf != plain.ID || m.QuoteOf != "" || m.Chat != "" || m.NoForward {
		t.Fatalf("forward delivered as %+v", m)
	}
}
