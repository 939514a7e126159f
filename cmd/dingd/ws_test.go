package main

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// dingd --ws serves the WebSocket gateway on its own port and /ws on the
// HTTP port, with --ws-origins' origins allowed beside the same origin:
// a browser-like client from an allowed origin chats with one on the
// other endpoint, and a page of another site is refused with 403.
func TestWSListener(t *testing.T) {
	wsAddr := nodetest.FreeAddr(t)
	p := startDingd(t, t.TempDir(), "--ws", wsAddr, "--ws-origins", "https://app.example.com, https://admin.example.com")
	for _, u := range []string{"ana", "bo"} {
		if code := p.admin(t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil); code != 201 {
			t.Fatalf("create %s: %d", u, code)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(user, addr, origin string) *client.Client {
		t.Helper()
		c, err := client.Dial(ctx, client.Config{Addr: addr, Token: p.token(t, user, "web"), Device: "web",
			Dial: (&client.WebSocket{Origin: origin}).Dial, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatalf("%s over WebSocket at %s: %v", user, addr, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ana := dial("ana", wsAddr, "https://app.example.com")
	bo := dial("bo", p.http, "https://admin.example.com")
	res, err := ana.Send(ctx, []string{"bo"}, []byte("over two WebSockets"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case e := <-bo.Entries():
			if e.Message == nil || e.Message.ID != res.ID {
				continue
			}
			if string(e.Message.Body) != "over two WebSockets" {
				t.Fatalf("body %q", e.Message.Body)
			}
		case <-ctx.Done():
			t.Fatal("bo never got ana's message")
		}
		break
	}
	for _, addr := range []string{wsAddr, p.http} {
		_, _, _, err := ws.Dialer{Header: ws.HandshakeHeaderHTTP(http.Header{"Origin": {"https://evil.example.com"}})}.Dial(ctx, "ws://"+addr+"/ws")
		var rej ws.StatusError
		if !errors.As(err, &rej) || int(rej) != http.StatusForbidden {
			t.Fatalf("a forged origin at %s: %v, want 403", addr, err)
		}
	}
}
