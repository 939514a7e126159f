package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/webhook"
)

// TestKill9LosesNoWebhookEvent, through the real binary: a subscription
// gets user.added for users added through the API. Its receiver answers
// the first deliveries, then hangs, so that at the kill -9 one event is
// in flight and the rest are committed (each user's add was answered,
// so durable) but not delivered. After a restart every event reaches the
// recovered receiver, in order, under the ids the first attempts had,
// signed with the secret given at creation.
func TestKill9LosesNoWebhookEvent(t *testing.T) {
	const users, answered = 40, 10
	hr := newHoldingReceiver(t, answered)

	data := t.TempDir()
	p := startDingd(t, data, "--webhook-max-backoff", "1s", "--webhook-timeout", "1m")
	var sub struct{ ID, Secret string }
	if code := p.admin(t, "POST", "/v1/webhooks", map[string]any{"url": hr.srv.URL, "events": []string{"user.*"}}, &sub); code != http.StatusCreated || sub.Secret == "" {
		t.Fatalf("POST /v1/webhooks: %d %+v", code, sub)
	}
	hr.setSecret(sub.Secret)
	for i := range users {
		if code := p.admin(t, "POST", "/v1/users", map[string]any{"id": fmt.Sprintf("u%02d", i), "name": "U"}, nil); code != http.StatusCreated {
			t.Fatalf("add user %d: %d", i, code)
		}
	}
	select {
	case <-hr.hung: // answered events 1..10; the 11th is in flight, 29 wait
	case <-time.After(30 * time.Second):
		t.Fatal("the receiver never got the delivery it hangs on")
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	hr.mu.Lock()
	inFlight := ""
	for id, u := range hr.tried {
		if u == fmt.Sprintf("u%02d", answered) {
			inFlight = id
		}
	}
	hr.mu.Unlock()
	hr.recover()
	p = startDingd(t, data, "--webhook-max-backoff", "1s")
	deadline := time.Now().Add(60 * time.Second)
	for {
		hr.mu.Lock()
		n := len(hr.ok)
		hr.mu.Unlock()
		if n >= users {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events delivered a minute after the restart\n%s", n, users, p.stderr)
		}
		time.Sleep(10 * time.Millisecond) // a poll interval
	}
	hr.mu.Lock()
	defer hr.mu.Unlock()
	// In order, each once answered (the one in flight at the kill may be
	// answered twice: at least once), and the in-flight one kept its id.
	next := 0
	for _, g := range hr.ok {
		want := fmt.Sprintf("u%02d", next)
		switch {
		case g.user == want:
			next++
		case next > 0 && g.user == fmt.Sprintf("u%02d", next-1):
			// a redelivery of the one before: allowed
		default:
			t.Fatalf("deliveries out of order: got %s, want %s (all: %v)", g.user, want, hr.ok)
		}
		if g.user == fmt.Sprintf("u%02d", answered) && g.id != inFlight {
			t.Fatalf("the event in flight at the kill came back as %s, was %s", g.id, inFlight)
		}
	}
	if next != users {
		t.Fatalf("delivered %d distinct events in order, want %d: %v", next, users, hr.ok)
	}
	t.Logf("%d events: %d answered before kill -9, 1 in flight, %d committed and undelivered; all delivered in order after the restart", users, answered, users-answered-1)
}

// holdingReceiver is a webhook receiver on loopback for kill tests: it
// verifies each delivery's signature with the subscription's secret
// (setSecret), answers the first answered deliveries of user.added, then
// holds the next one until recover (telling hung once it does), so that
// when the node is killed one event is in flight and the rest wait in the
// outbox. It records every attempt's id (tried) and the deliveries it
// answered 2xx, in order (ok).
type holdingReceiver struct {
	srv     *httptest.Server
	mu      sync.Mutex
	ok      []hookGot         // guarded by mu
	tried   map[string]string // every attempt's id -> user; guarded by mu
	hanging chan struct{}     // closed by recover: stop holding
	hung    chan struct{}     // signalled when a delivery is held
	secret  string            // guarded by mu
	back    bool              // recovered: no more holding; guarded by mu
	dedup   bool              // keep one delivery per id in ok
}

// hookGot is one delivery a holdingReceiver answered.
type hookGot struct{ id, user string }

func newHoldingReceiver(t *testing.T, answered int) *holdingReceiver {
	hr := &holdingReceiver{tried: map[string]string{}, hanging: make(chan struct{}), hung: make(chan struct{}, 1)}
	hr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		hr.mu.Lock()
		sec := hr.secret
		hr.mu.Unlock()
		if err := webhook.Verify(sec, r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), body, time.Now(), 5*time.Minute); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev struct {
			ID   string            `json:"id"`
			Type string            `json:"type"`
			Data map[string]string `json:"data"`
		}
		if json.Unmarshal(body, &ev) != nil || ev.Type != "user.added" || ev.ID != r.Header.Get("webhook-id") {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		hr.mu.Lock()
		hr.tried[ev.ID] = ev.Data["user"]
		n, recovered := len(hr.ok), hr.back
		hr.mu.Unlock()
		if n >= answered && !recovered {
			select {
			case hr.hung <- struct{}{}:
			default:
			}
			select {
			case <-hr.hanging:
			case <-r.Context().Done():
				return
			}
		}
		hr.mu.Lock()
		if !hr.dedup || !slices.ContainsFunc(hr.ok, func(g hookGot) bool { return g.id == ev.ID }) {
			hr.ok = append(hr.ok, hookGot{ev.ID, ev.Data["user"]})
		}
		hr.mu.Unlock()
	}))
	t.Cleanup(hr.srv.Close)
	return hr
}

func (hr *holdingReceiver) setSecret(s string) {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	hr.secret = s
}

// recover stops holding deliveries: the held one and the rest are
// answered.
func (hr *holdingReceiver) recover() {
	hr.mu.Lock()
	hr.back = true
	hr.mu.Unlock()
	close(hr.hanging)
}
