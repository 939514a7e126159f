package node_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/webhook"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// TestPartitionsWebhooks: with 4 partitions, one subscription made
// through the API is on every engine; users added reach it from the
// directory's outbox (evt_dir_*), a read of a message from ana
// (partition 2) by bo (partition 0) from the origin's (evt_2_*), each
// signed with the one secret; removing it removes it everywhere.
func TestPartitionsWebhooks(t *testing.T) {
	d, _ := startPartitioned(t, t.TempDir())
	type got struct{ id, typ, user string }
	var mu sync.Mutex
	var secret string
	var events []got
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if err := webhook.Verify(secret, r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), body, time.Now(), time.Minute); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev struct {
			ID, Type string
			Data     map[string]any
		}
		json.Unmarshal(body, &ev)
		u, _ := ev.Data["user"].(string)
		if ev.Type == "message.read" {
			u, _ = ev.Data["recipient"].(string)
		}
		events = append(events, got{ev.ID, ev.Type, u})
	}))
	defer rcv.Close()
	code, out, _ := d.api(t, "POST", "/v1/webhooks", map[string]any{"url": rcv.URL, "events": []string{"user.added", "message.read"}})
	id, _ := out["id"].(string)
	mu.Lock()
	secret, _ = out["secret"].(string)
	mu.Unlock()
	if code != http.StatusCreated || secret == "" {
		t.Fatalf("POST /v1/webhooks: %d %v", code, out)
	}
	for _, e := range d.n.Engines() {
		if w, err := e.Webhook(id); err != nil || w.Secret != secret {
			t.Fatalf("partition %s: %v %v", e.WebhookSource(), w, err)
		}
	}
	for _, u := range []string{"ana", "bo", "cy", "eve"} {
		if code, out, _ := d.api(t, "POST", "/v1/users", map[string]any{"id": u, "name": u}); code != http.StatusCreated {
			t.Fatalf("add %s: %d %v", u, code, out)
		}
	}
	code, out, _ = d.api(t, "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "hi"})
	if code != http.StatusCreated && code != http.StatusOK {
		t.Fatalf("send: %d %v", code, out)
	}
	msg, _ := out["id"].(string)
	bo := nodetest.Dial(t, d.n, "bo", "phone", nil)
	if m := firstDeliver(t, bo, msg); m == nil { // relayed to bo's partition
		t.FailNow()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := bo.Read(ctx, msg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(events)
		mu.Unlock()
		if n >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %v", events)
		}
		time.Sleep(5 * time.Millisecond) // a poll interval
	}
	mu.Lock()
	var users []string
	for _, e := range events {
		switch {
		case e.typ == "user.added" && strings.HasPrefix(e.id, "evt_dir_"):
			users = append(users, e.user)
		case e.typ == "message.read" && strings.HasPrefix(e.id, "evt_2_") && e.user == "bo":
		default:
			t.Errorf("unexpected event %+v", e)
		}
	}
	mu.Unlock()
	if strings.Join(users, ",") != "ana,bo,cy,eve" {
		t.Fatalf("user.added in order from the directory's outbox: %v", users)
	}
	if code, _, _ := d.api(t, "DELETE", "/v1/webhooks/"+id, nil); code != http.StatusOK {
		t.Fatalf("delete: %d", code)
	}
	for _, e := range d.n.Engines() {
		if ws, err := e.Webhooks(); err != nil || len(ws) != 0 {
			t.Fatalf("partition %s still has %v (%v)", e.WebhookSource(), ws, err)
		}
	}
}
