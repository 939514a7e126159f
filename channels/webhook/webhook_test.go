package webhook_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/dingmq/ding/channels/webhook"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/fakeclock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// delivery is one request a receiver got.
type delivery struct {
	ID, Timestamp, Signature string
	Body                     []byte
	Event                    struct {
		ID   string         `json:"id"`
		Type string         `json:"type"`
		Data map[string]any `json:"data"`
	}
}

// receiver is a real HTTP server on loopback whose answers a test
// scripts: answer is called for each request (under no lock) and
// returns the status, or 0 to hang until the request's context ends.
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []delivery // every request, in arrival order; guarded by mu
	ok     []delivery // those answered 2xx; guarded by mu
	answer func(n int) int
	more   chan struct{} // signalled after each request
}

func newReceiver(t testing.TB, answer func(n int) int) *receiver {
	t.Helper()
	r := &receiver{answer: answer, more: make(chan struct{}, 1)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		d := delivery{ID: req.Header.Get("webhook-id"), Timestamp: req.Header.Get("webhook-timestamp"),
			Signature: req.Header.Get("webhook-signature"), Body: body}
		if err := json.Unmarshal(body, &d.Event); err != nil {
			w.WriteHeader(400)
			return
		}
		r.mu.Lock()
		r.got = append(r.got, d)
		n := len(r.got)
		r.mu.Unlock()
		status := 200
		if r.answer != nil {
			status = r.answer(n)
		}
		if status == 0 {
			<-req.Context().Done()
			r.signal()
			return
		}
		if status < 300 {
			r.mu.Lock()
			r.ok = append(r.ok, d)
			r.mu.Unlock()
		}
		w.WriteHeader(status)
		r.signal()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) signal() {
	select {
	case r.more <- struct{}{}:
	default:
	}
}

func (r *receiver) delivered() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.ok...)
}

// waitOK waits until the receiver answered 2xx to n requests.
func (r *receiver) waitOK(t testing.TB, n int) []delivery {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if d := r.delivered(); len(d) >= n {
			return d
		}
		select {
		case <-r.more:
		case <-deadline:
			t.Fatalf("receiver got %d deliveries, want %d", len(r.delivered()), n)
		}
	}
}

type harness struct {
	eng  *engine.Engine
	clk  *fakeclock.Clock // the dispatcher's: backoffs and the horizon
	reg  *prometheus.Registry
	disp *webhook.Dispatcher
}

// open starts an engine on Pebble in a temp dir and a dispatcher on it
// whose fake clock an auto-advancer moves by step whenever the
// dispatcher waits (a backoff), so retries run at once.
func open(t *testing.T, cfg webhook.Config, step time.Duration) *harness {
	t.Helper()
	eng := openEngine(t) // closed after this cleanup's dispatcher
	h := &harness{eng: eng, clk: fakeclock.New(time.Now()), reg: prometheus.NewRegistry()}
	cfg.Sources = []webhook.Source{eng}
	cfg.Clock, cfg.Registerer = h.clk, h.reg
	var err error
	if h.disp, err = webhook.New(cfg); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			n, changed := h.clk.Waiters()
			if n > 0 && step > 0 {
				h.clk.Advance(step)
				continue
			}
			select {
			case <-changed:
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		h.disp.Close()
	})
	return h
}

// addUsers commits a directory change adding users: one user.added
// event each, in order.
func (h *harness) addUsers(t testing.TB, users ...string) {
	t.Helper()
	for _, u := range users {
		if err := h.eng.Commit(context.Background(), engine.Change{Write: func(engine.Writer) error { return nil }, Added: []string{u}}); err != nil {
			t.Fatal(err)
		}
	}
}

func (h *harness) subscribe(t testing.TB, url string, events ...string) engine.Webhook {
	t.Helper()
	w, err := h.eng.AddWebhook(context.Background(), engine.Webhook{URL: url, Events: events})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// verify checks a delivery's signature the way a receiver written from
// the Standard Webhooks spec does, without this package's code.
func verify(t testing.TB, secret string, d delivery) {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil || !strings.HasPrefix(secret, "whsec_") {
		t.Fatalf("secret %q is not whsec_<base64>", secret)
	}
	mac := hmac.New(sha256.New, key)
	fmt.Fprintf(mac, "%s.%s.%s", d.ID, d.Timestamp, d.Body)
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(want), []byte(d.Signature)) {
		t.Fatalf("delivery %s: signature %q, want %q", d.ID, d.Signature, want)
	}
	if d.ID != d.Event.ID {
		t.Fatalf("webhook-id %q, body id %q", d.ID, d.Event.ID)
	}
	if err := webhook.Verify(secret, d.ID, d.Timestamp, d.Signature, d.Body, time.Unix(mustInt(t, d.Timestamp), 0), time.Minute); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func mustInt(t testing.TB, s string) int64 {
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("timestamp %q: %v", s, err)
	}
	return n
}

// TestFailHangRecoverInOrder: a receiver that fails (500), hangs (past
// the timeout) and recovers gets every event once delivered, in order,
// each with a valid signature and the same id across its retries.
func TestFailHangRecoverInOrder(t *testing.T) {
	rcv := newReceiver(t, func(n int) int {
		switch {
		case n <= 3:
			return 500
		case n <= 5:
			return 0 // hang
		case n%3 == 0:
			return 503
		}
		return 204
	})
	h := open(t, webhook.Config{Timeout: 200 * time.Millisecond, MinBackoff: time.Second, MaxBackoff: time.Second}, time.Second)
	sub := h.subscribe(t, rcv.srv.URL, "user.*")
	var users []string
	for i := range 20 {
		users = append(users, fmt.Sprintf("u%02d", i))
	}
	h.addUsers(t, users...)
	got := rcv.waitOK(t, len(users))
	seen := map[string]bool{}
	for i, d := range got {
		verify(t, sub.Secret, d)
		if d.Event.Type != engine.HookUserAdded || d.Event.Data["user"] != users[i] {
			t.Fatalf("delivery %d: %s %v, want user.added %s", i, d.Event.Type, d.Event.Data, users[i])
		}
		if seen[d.ID] {
			t.Fatalf("event %s delivered twice with 2xx", d.ID)
		}
		seen[d.ID] = true
	}
	// Retries carry the id of the event they retry.
	rcv.mu.Lock()
	first := rcv.got[0].ID
	retried := 0
	for _, d := range rcv.got[:5] {
		if d.ID == first {
			retried++
		}
	}
	rcv.mu.Unlock()
	if retried != 5 {
		t.Fatalf("the first 5 attempts (3 failures, 2 hangs) should all be the first event %s; %d were", first, retried)
	}
	waitFor(t, func() bool { return counter(t, h.reg, "delivered") == float64(len(users)) })
	if v := counter(t, h.reg, "failed"); v < 5 {
		t.Fatalf("failed counter %v, want at least 5", v)
	}
	// Everything was acknowledged: the cursor is at the last event.
	waitFor(t, func() bool {
		w, err := h.eng.Webhook(sub.ID)
		return err == nil && w.Cursor == h.eng.WebhookDurable()
	})
}

// counter reads ding_webhook_deliveries_total{outcome}.
func counter(t testing.TB, reg *prometheus.Registry, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ding_webhook_deliveries_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no ding_webhook_deliveries_total{outcome=%q}", outcome)
	return 0
}

// waitFor polls cond until it holds or 20s pass.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 20s")
		}
		time.Sleep(time.Millisecond) // a poll interval, not a synchronisation
	}
}

// TestSlowReceiverIsolated: a subscription whose receiver hangs holds up
// neither another subscription nor the commit loop: commits are answered
// and the other receiver gets every event while the first request hangs.
func TestSlowReceiverIsolated(t *testing.T) {
	release := make(chan struct{})
	slow := newReceiver(t, func(int) int { <-release; return 200 })
	fast := newReceiver(t, nil)
	h := open(t, webhook.Config{Timeout: time.Hour}, 0)
	h.subscribe(t, slow.srv.URL, "*")
	h.subscribe(t, fast.srv.URL, engine.HookUserAdded)
	h.addUsers(t, "first")
	waitFor(t, func() bool { slow.mu.Lock(); defer slow.mu.Unlock(); return len(slow.got) == 1 }) // hanging now
	for i := range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := h.eng.Commit(ctx, engine.Change{Write: func(engine.Writer) error { return nil }, Added: []string{fmt.Sprint("v", i)}})
		cancel()
		if err != nil {
			t.Fatalf("commit %d while a receiver hangs: %v", i, err)
		}
	}
	fast.waitOK(t, 51)
	if n := len(slow.delivered()); n != 0 {
		t.Fatalf("the slow receiver answered %d", n)
	}
	close(release)
	slow.waitOK(t, 51)
}

// TestDingConfirmedCarriesAnswer: a DING confirmed in the app gives
// ding.confirmed with the answer and the choice; a phone recipient is
// never named.
func TestDingConfirmedCarriesAnswer(t *testing.T) {
	rcv := newReceiver(t, nil)
	h := open(t, webhook.Config{}, 0)
	sub := h.subscribe(t, rcv.srv.URL, "ding.*")
	res, err := h.eng.Ding(context.Background(), engine.DingRequest{From: "ops", To: []string{"ana", "+15550100"}, Text: "db down",
		Choices: []string{"on my way", "cannot"}, Policy: "inapp,sms"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.eng.Confirm(context.Background(), "ana", res.ID, 1); err != nil {
		t.Fatal(err)
	}
	var confirmed *delivery
	for n := 1; confirmed == nil; n++ {
		got := rcv.waitOK(t, n)
		d := got[n-1]
		verify(t, sub.Secret, d)
		if strings.Contains(string(d.Body), "555") || strings.Contains(string(d.Body), "db down") {
			t.Fatalf("event leaks a phone number or the text: %s", d.Body)
		}
		if d.Event.Data["ding"] != res.ID.String() || d.Event.Data["from"] != "ops" {
			t.Fatalf("event %s", d.Body)
		}
		if d.Event.Type == "ding.confirmed" {
			confirmed = &d
		}
	}
	c := confirmed.Event.Data
	if c["recipient"] != "ana" || c["answer"] != float64(1) || c["choice"] != "on my way" || c["channel"] != "inapp" {
		t.Fatalf("ding.confirmed data %v", c)
	}
}

// TestDeadLetterAfterHorizonAndReplay: a receiver failing past the
// horizon gets its event parked (the worker moves on to the next), the
// dead letter lists it, and a replay once the receiver is back delivers
// it with its original id and drops the dead letter.
func TestDeadLetterAfterHorizonAndReplay(t *testing.T) {
	var mu sync.Mutex
	down := true
	rcv := newReceiver(t, func(int) int {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return 500
		}
		return 200
	})
	h := open(t, webhook.Config{Horizon: time.Hour, MinBackoff: time.Minute, MaxBackoff: 10 * time.Minute}, 10*time.Minute)
	sub := h.subscribe(t, rcv.srv.URL, "user.added")
	h.addUsers(t, "a", "b")
	var dls []engine.DeadLetter
	waitFor(t, func() bool {
		var err error
		dls, err = h.eng.WebhookDeadLetters(sub.ID, 0, 10, false)
		return err == nil && len(dls) == 2
	})
	if dls[0].Event.Type != engine.HookUserAdded || dls[0].Attempts < 2 || dls[0].LastError != "status 500" || dls[0].Replay {
		t.Fatalf("dead letter %+v", dls[0])
	}
	if v := counter(t, h.reg, "dead_lettered"); v != 2 {
		t.Fatalf("dead_lettered %v", v)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	h.addUsers(t, "c") // a new event goes straight through
	got := rcv.waitOK(t, 1)
	if got[0].Event.Data["user"] != "c" {
		t.Fatalf("got %v", got[0].Event)
	}
	n, err := h.eng.ReplayWebhookDeadLetters(context.Background(), sub.ID, nil)
	if err != nil || n != 2 {
		t.Fatalf("replay: %d, %v", n, err)
	}
	got = rcv.waitOK(t, 3)
	if got[1].ID != engine.WebhookEventID("0", dls[0].Event.Seq) || got[2].ID != engine.WebhookEventID("0", dls[1].Event.Seq) {
		t.Fatalf("replayed ids %s %s, want the originals", got[1].ID, got[2].ID)
	}
	for _, d := range got {
		verify(t, sub.Secret, d)
	}
	waitFor(t, func() bool {
		dls, err := h.eng.WebhookDeadLetters(sub.ID, 0, 10, false)
		return err == nil && len(dls) == 0
	})
}

// TestEventsSurviveRestart: events committed while no dispatcher runs
// (a crash between the commit and the delivery) are delivered by the
// next one, with their ids, and nothing before the subscription is.
func TestEventsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.Open(engine.Config{Store: db})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	add := func(u string) {
		if err := eng.Commit(ctx, engine.Change{Write: func(engine.Writer) error { return nil }, Added: []string{u}}); err != nil {
			t.Fatal(err)
		}
	}
	rcv := newReceiver(t, nil)
	add("before")
	sub, err := eng.AddWebhook(ctx, engine.Webhook{URL: rcv.srv.URL, Events: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	add("x")
	add("y")
	eng.Close()
	db.Close()
	db, err = pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	eng, err = engine.Open(engine.Config{Store: db})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	d, err := webhook.New(webhook.Config{Sources: []webhook.Source{eng}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got := rcv.waitOK(t, 2)
	if got[0].Event.Data["user"] != "x" || got[1].Event.Data["user"] != "y" {
		t.Fatalf("got %v %v", got[0].Event, got[1].Event)
	}
	verify(t, sub.Secret, got[0])
	// Acknowledged events leave the outbox.
	waitFor(t, func() bool {
		evs, err := eng.WebhookEvents(0, 10)
		return err == nil && len(evs) == 0
	})
	if r, err := engine.Check(db); err != nil || !r.OK() {
		t.Fatalf("check: %v %v", r.Problems, err)
	}
}

func TestAddWebhookRefusesBadInput(t *testing.T) {
	h := open(t, webhook.Config{}, 0)
	for _, tc := range []struct {
		name, url string
		events    []string
		want      string
	}{
		{"scheme", "ftp://example.com/x", []string{"*"}, `scheme "ftp"`},
		{"no host", "http:///x", []string{"*"}, "no host"},
		{"relative", "/hook", []string{"*"}, `scheme ""`},
		{"user info", "https://u:p@example.com/", []string{"*"}, "user info"},
		{"unknown event", "https://example.com/", []string{"ding.nosuch"}, `unknown event type "ding.nosuch"`},
		{"bad wildcard", "https://example.com/", []string{"nosuch.*"}, `no event type matches "nosuch.*"`},
		{"no events", "https://example.com/", nil, "no event types"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.eng.AddWebhook(context.Background(), engine.Webhook{URL: tc.url, Events: tc.events})
			if err == nil || !strings.Contains(err.Error(), tc.want) || engine.CodeOf(err) != engine.CodeBadRequest {
				t.Fatalf("err %v, want a bad request naming %s", err, tc.want)
			}
		})
	}
}

// TestRateBoundsASubscription: with Rate 1, the second event waits for
// the clock to pass a second after the first attempt.
func TestRateBoundsASubscription(t *testing.T) {
	rcv := newReceiver(t, nil)
	h := open(t, webhook.Config{Rate: 1}, 0) // the test moves the clock
	h.subscribe(t, rcv.srv.URL, "user.added")
	h.addUsers(t, "a", "b", "c")
	rcv.waitOK(t, 1)
	for want := 2; want <= 3; want++ {
		waitFor(t, func() bool { n, _ := h.clk.Waiters(); return n > 0 }) // pacing
		if n := len(rcv.delivered()); n != want-1 {
			t.Fatalf("%d delivered before the clock moved, want %d", n, want-1)
		}
		h.clk.Advance(time.Second)
		rcv.waitOK(t, want)
	}
}

// TestPauseHoldsResumeDelivers: a paused subscription's events stay in
// the outbox (its backlog); resumed, it gets them all, in order.
func TestPauseHoldsResumeDelivers(t *testing.T) {
	rcv := newReceiver(t, nil)
	h := open(t, webhook.Config{}, 0)
	sub := h.subscribe(t, rcv.srv.URL, "user.added")
	ctx := context.Background()
	if _, err := h.eng.PauseWebhook(ctx, sub.ID, true); err != nil {
		t.Fatal(err)
	}
	h.addUsers(t, "a", "b", "c")
	if evs, err := h.eng.WebhookEvents(0, 10); err != nil || len(evs) != 3 {
		t.Fatalf("outbox while paused: %d events, %v", len(evs), err)
	}
	if n := len(rcv.delivered()); n != 0 {
		t.Fatalf("%d delivered while paused", n)
	}
	if _, err := h.eng.PauseWebhook(ctx, sub.ID, false); err != nil {
		t.Fatal(err)
	}
	got := rcv.waitOK(t, 3)
	for i, u := range []string{"a", "b", "c"} {
		if got[i].Event.Data["user"] != u {
			t.Fatalf("delivery %d: %v", i, got[i].Event.Data)
		}
	}
	waitFor(t, func() bool { evs, err := h.eng.WebhookEvents(0, 10); return err == nil && len(evs) == 0 })
}

// TestRedirectIsAFailure: a 3xx is not followed; it is a failed attempt,
// retried at the subscription's own URL.
func TestRedirectIsAFailure(t *testing.T) {
	var mu sync.Mutex
	paths := []string{}
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		n := len(paths)
		mu.Unlock()
		if n == 1 {
			http.Redirect(w, r, srv.URL+"/elsewhere", http.StatusTemporaryRedirect)
			return
		}
	}))
	defer srv.Close()
	h := open(t, webhook.Config{MinBackoff: time.Second, MaxBackoff: time.Second}, time.Second)
	h.subscribe(t, srv.URL+"/hook", "user.added")
	h.addUsers(t, "a")
	waitFor(t, func() bool { return counter(t, h.reg, "delivered") == 1 })
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(paths, ",") != "/hook,/hook" || counter(t, h.reg, "failed") != 1 {
		t.Fatalf("requests %v, failed %v", paths, counter(t, h.reg, "failed"))
	}
}

// TestDetachHandsTheOutboxOver: a source attached at run time is
// delivered; detached while a request hangs, the request is abandoned
// and Detach returns; attached to another dispatcher (a partition's new
// owner), it goes on from the durable cursor: the abandoned event again
// under the same id, then the newer ones, in order.
func TestDetachHandsTheOutboxOver(t *testing.T) {
	var hang sync.Once
	hung := make(chan struct{})
	rcv := newReceiver(t, func(n int) int {
		if n == 3 {
			hang.Do(func() { close(hung) })
			return 0 // hang until the dispatcher gives the request up
		}
		return 200
	})
	eng := openEngine(t)
	h := &harness{eng: eng}
	d1, err := webhook.New(webhook.Config{}) // no sources yet
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	if err := d1.Attach(eng); err != nil {
		t.Fatal(err)
	}
	if err := d1.Attach(eng); err == nil {
		t.Fatal("a second source of the same name was attached")
	}
	h.subscribe(t, rcv.srv.URL, "user.added")
	h.addUsers(t, "a", "b")
	rcv.waitOK(t, 2)
	h.addUsers(t, "c")
	<-hung
	if !d1.Detach(eng.WebhookSource()) {
		t.Fatal("Detach: the source was not attached")
	}
	if d1.Detach(eng.WebhookSource()) {
		t.Fatal("Detach twice reported the source attached twice")
	}
	h.addUsers(t, "d")
	d2, err := webhook.New(webhook.Config{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Attach(eng); err != nil {
		t.Fatal(err)
	}
	got := rcv.waitOK(t, 4)
	d2.Close()
	if err := d2.Attach(eng); !errors.Is(err, webhook.ErrClosed) {
		t.Fatalf("Attach after Close: %v, want ErrClosed", err)
	}
	var users []string
	for _, d := range got {
		users = append(users, d.Event.Data["user"].(string))
	}
	if strings.Join(users, ",") != "a,b,c,d" {
		t.Fatalf("delivered %v, want a,b,c,d in order", users)
	}
	rcv.mu.Lock()
	abandoned := rcv.got[2].ID
	rcv.mu.Unlock()
	if got[2].ID != abandoned {
		t.Fatalf("the abandoned event came again as %s, was %s", got[2].ID, abandoned)
	}
}

// openEngine opens an engine on Pebble in a temp dir, closed when the
// test ends, after its defers and the cleanups registered later (a
// dispatcher on it is closed first).
func openEngine(t *testing.T) *engine.Engine {
	t.Helper()
	db, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	eng, err := engine.Open(engine.Config{Store: db})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

// holdingSource is an engine's outbox whose first asynchronous
// acknowledgement is held until release forwards it, and which tells
// (asked) when the worker asks for the events after seq last.
type holdingSource struct {
	webhook.Source
	last  uint64
	asked chan struct{} // closed at the first WebhookEvents after last

	mu      sync.Mutex
	askOnce sync.Once
	held    func() // forwards the held acknowledgement; nil until one is
}

func (s *holdingSource) WebhookEvents(after uint64, max int) ([]engine.WebhookEvent, error) {
	if after >= s.last {
		s.askOnce.Do(func() { close(s.asked) })
	}
	return s.Source.WebhookEvents(after, max)
}

func (s *holdingSource) AckWebhookAsync(id string, through uint64, done func(error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held = func() { s.Source.AckWebhookAsync(id, through, done) }
		return
	}
	s.Source.AckWebhookAsync(id, through, done)
}

func (s *holdingSource) release() {
	s.mu.Lock()
	f := s.held
	s.mu.Unlock()
	f()
}

// A worker that stops (Detach) while the acknowledgement of one event is
// in flight and the next event's waits behind it makes both durable
// before it ends, so the next dispatcher does not deliver the second
// again: the first's outcome is held until the worker is stopping (it
// then waits, on the dispatcher's clock, for at most flushWait).
func TestStoppingWorkerAcknowledgesWhatItDelivered(t *testing.T) {
	rcv := newReceiver(t, func(int) int { return 200 })
	eng := openEngine(t)
	h := &harness{eng: eng}
	sub := h.subscribe(t, rcv.srv.URL, "user.added")
	h.addUsers(t, "a", "b")
	evs, err := eng.WebhookEvents(0, 100)
	if err != nil || len(evs) == 0 {
		t.Fatalf("events %v, %v", evs, err)
	}
	src := &holdingSource{Source: eng, last: evs[len(evs)-1].Seq, asked: make(chan struct{})}
	clk := fakeclock.New(time.Now())
	d, err := webhook.New(webhook.Config{Clock: clk, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Attach(src); err != nil {
		t.Fatal(err)
	}
	rcv.waitOK(t, 2)
	select {
	case <-src.asked: // both delivered: a's acknowledgement held, b's pending behind it
	case <-time.After(10 * time.Second):
		t.Fatal("the worker never asked for the events after b's")
	}
	detached := make(chan struct{})
	go func() {
		d.Detach(eng.WebhookSource())
		close(detached)
	}()
	for {
		n, changed := clk.Waiters()
		if n > 0 {
			break
		}
		select {
		case <-changed:
		case <-detached:
			t.Fatal("Detach returned without waiting for the acknowledgement in flight")
		case <-time.After(10 * time.Second):
			t.Fatal("the stopping worker never waited for its acknowledgements")
		}
	}
	src.release()
	select {
	case <-detached:
	case <-time.After(10 * time.Second):
		t.Fatal("Detach did not return once the acknowledgement came")
	}
	subs, err := eng.Webhooks()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range subs {
		if s.ID == sub.ID && s.Cursor != src.last {
			t.Fatalf("the subscription's cursor is %d after Detach, want %d (b's event): the next dispatcher delivers it again", s.Cursor, src.last)
		}
	}
}
