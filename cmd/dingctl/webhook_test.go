package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/webhook"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// TestWebhookCommands: webhook add prints the id and the secret once; a
// user added then reaches the receiver as user.added, signed with that
// secret; list shows the subscription without its secret; pause, resume,
// deliveries, replay and remove answer; bad input gets one precise line.
func TestWebhookCommands(t *testing.T) {
	type got struct {
		id, ts, sig string
		body        []byte
	}
	deliveries := make(chan got, 16)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		deliveries <- got{r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), b}
	}))
	defer rcv.Close()
	n := nodetest.Start(t, node.Config{})
	out, err := ctl(t, n, "webhook", "add", rcv.URL+"/ding", "--events", "user.added,ding.*", "--description", "crm")
	if err != nil {
		t.Fatal(err)
	}
	var id, secret string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 1 && f[0] == "webhook":
			id = f[1]
		case len(f) > 1 && f[0] == "secret":
			secret = f[1]
		}
	}
	if !strings.HasPrefix(id, "wh_") || !strings.HasPrefix(secret, "whsec_") {
		t.Fatalf("webhook add printed %q", out)
	}
	if _, err := ctl(t, n, "user", "add", "ana", "--name", "Ana"); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-deliveries:
		if err := webhook.Verify(secret, d.id, d.ts, d.sig, d.body, time.Now(), time.Minute); err != nil {
			t.Fatalf("signature: %v", err)
		}
		var ev struct {
			Type string            `json:"type"`
			Data map[string]string `json:"data"`
		}
		if err := json.Unmarshal(d.body, &ev); err != nil || ev.Type != "user.added" || ev.Data["user"] != "ana" {
			t.Fatalf("event %s (%v)", d.body, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery")
	}
	out, err = ctl(t, n, "webhook", "list")
	if err != nil || !strings.Contains(out, id) || strings.Contains(out, secret) || !strings.Contains(out, "ding.unanswered") {
		t.Fatalf("webhook list: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"pause", id}, {"resume", id}, {"deliveries", id}, {"get", id}} {
		if out, err := ctl(t, n, append([]string{"webhook"}, args...)...); err != nil || !strings.Contains(out, id) && args[0] != "deliveries" {
			t.Fatalf("webhook %v: %v\n%s", args, err, out)
		}
	}
	if out, err := ctl(t, n, "webhook", "replay", id); err != nil || !strings.Contains(out, "replaying 0") {
		t.Fatalf("webhook replay: %v %s", err, out)
	}
	checkErrors(t, n, []ctlErr{
		{[]string{"webhook", "add", "ftp://x.example/", "--events", "*"}, `url scheme "ftp": only http and https`, 1},
		{[]string{"webhook", "add", "http://x.example/", "--events", "ding.nosuch"}, `unknown event type "ding.nosuch"`, 1},
		{[]string{"webhook", "add", "http://x.example/"}, "want URL --events", 2},
		{[]string{"webhook", "get", "wh_nosuch"}, "no such webhook subscription", 1},
		{[]string{"webhook", "replay", id, "--ids", "x"}, `event id "x" is not evt_SOURCE_SEQ`, 1},
	})
	if _, err := ctl(t, n, "webhook", "remove", id); err != nil {
		t.Fatal(err)
	}
	if out, _ := ctl(t, n, "webhook", "list"); strings.Contains(out, id) {
		t.Fatalf("removed webhook still listed:\n%s", out)
	}
}
