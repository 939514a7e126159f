package push_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/dingmq/ding/channels/push"
	"github.com/dingmq/ding/channels/push/pushtest"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/internal/fakeclock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	apnsTok = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
	fcmTok  = "fcm-token-0123456789:bo-pixel"
	secret  = "the launch code is 0000" // a body that must never reach a provider
)

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

// recorder is the hub's place in the tests: it records deliveries, and
// waiting on it means the Pusher has noted them too (Sink notes first).
type recorder struct {
	mu  sync.Mutex
	got map[string]int
	ch  chan struct{}
}

func (r *recorder) Deliver(user string, es []engine.Entry) {
	r.mu.Lock()
	r.got[user] += len(es)
	close(r.ch)
	r.ch = make(chan struct{})
	r.mu.Unlock()
}

func (r *recorder) wait(t testing.TB, user string, n int) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		r.mu.Lock()
		have, ch := r.got[user], r.ch
		r.mu.Unlock()
		if have >= n {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("sink has %d entries for %s, want %d", have, user, n)
		}
	}
}

type presence struct {
	mu sync.Mutex
	on map[string][]string
}

func (p *presence) Devices(user string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.on[user]
}

type env struct {
	srv   *pushtest.Server
	e     *engine.Engine
	p     *push.Pusher
	clock *fakeclock.Clock
	sink  *recorder
	pres  *presence
	reg   *prometheus.Registry
	waits []time.Duration
	mu    sync.Mutex
}

func newEnv(t *testing.T, mod func(*push.Config)) *env {
	t.Helper()
	srv, err := pushtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	keyFile, err := srv.WriteAPNsKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	saFile, err := srv.WriteServiceAccount(dir)
	if err != nil {
		t.Fatal(err)
	}
	v := &env{srv: srv, clock: fakeclock.New(t0), sink: &recorder{got: map[string]int{}, ch: make(chan struct{})},
		pres: &presence{on: map[string][]string{}}, reg: prometheus.NewRegistry()}
	if v.e, err = engine.Open(engine.Config{Store: memstore.New(), Clock: v.clock}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.e.Close() })
	cfg := push.Config{
		APNsKeyFile: keyFile, APNsKeyID: srv.KeyID, APNsTeamID: srv.TeamID, APNsEndpoint: srv.APNsURL(),
		FCMCredentialsFile: saFile, FCMEndpoint: srv.FCMURL(), TLSConfig: srv.TLSConfig(),
		Coalesce: 10 * time.Second, Workers: 4, Clock: v.clock, Registerer: v.reg,
		Wait: func(ctx context.Context, d time.Duration) error {
			v.mu.Lock()
			v.waits = append(v.waits, d)
			v.mu.Unlock()
			return nil
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	names := map[string]string{"ana": "Ana Lima", "bo": "Bo"}
	if v.p, err = push.New(cfg, push.Deps{Tokens: v.e, Presence: v.pres, Streams: v.e, Name: func(u string) string { return names[u] }}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.p.Close)
	v.e.SetSink(v.p.Sink(v.sink))
	return v
}

func (v *env) register(t *testing.T, user string, tok engine.PushToken) {
	t.Helper()
	if _, err := v.e.RegisterPushToken(context.Background(), user, tok); err != nil {
		t.Fatal(err)
	}
}

func (v *env) bothDevices(t *testing.T) {
	v.register(t, "bo", engine.PushToken{Device: "iphone", Provider: engine.PushAPNs, Token: apnsTok, Topic: "com.example.ding"})
	v.register(t, "bo", engine.PushToken{Device: "pixel", Provider: engine.PushFCM, Token: fcmTok})
}

func (v *env) send(t *testing.T, from, to, body string) {
	t.Helper()
	if _, err := v.e.Submit(context.Background(), engine.Submission{From: from, To: []string{to}, Kind: engine.KindText, Body: []byte(body)}); err != nil {
		t.Fatal(err)
	}
}

// settle waits until the Pusher has nothing queued or in flight.
func (v *env) settle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !v.p.Idle() {
		if time.Now().After(deadline) {
			t.Fatal("pusher never idle")
		}
		time.Sleep(time.Millisecond) // polling with a deadline, not a wait for time to pass
	}
}

func (v *env) waitReqs(t *testing.T, n int) []pushtest.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := v.srv.Wait(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type apnsBody struct {
	Aps struct {
		Alert struct {
			Title string `json:"title"`
			Body  string `json:"body"`
		} `json:"alert"`
		Badge             *int   `json:"badge"`
		Category          string `json:"category"`
		InterruptionLevel string `json:"interruption-level"`
	} `json:"aps"`
	Ding *struct {
		ID      string   `json:"id"`
		Choices []string `json:"choices"`
		Actions []string `json:"actions"`
	} `json:"ding"`
}

type fcmBody struct {
	Message struct {
		Token        string                       `json:"token"`
		Notification struct{ Title, Body string } `json:"notification"`
		Data         map[string]string            `json:"data"`
		Android      struct {
			Priority     string `json:"priority"`
			Notification struct {
				ClickAction       string `json:"click_action"`
				NotificationCount int    `json:"notification_count"`
			} `json:"notification"`
		} `json:"android"`
	} `json:"message"`
}

func byProvider(reqs []pushtest.Request, p string) []pushtest.Request {
	var out []pushtest.Request
	for _, r := range reqs {
		if r.Provider == p {
			out = append(out, r)
		}
	}
	return out
}

// A message to a user whose devices are offline pushes once to each, with
// no text and the sender's name; a burst is coalesced into one more push
// per device at the window's end; a connected device gets none.
func TestOfflineMessagePushOnceCoalesceBurstOnlineNone(t *testing.T) {
	v := newEnv(t, nil)
	v.bothDevices(t)
	v.send(t, "ana", "bo", secret)
	v.sink.wait(t, "bo", 1)
	reqs := v.waitReqs(t, 2)
	v.settle(t)
	var a apnsBody
	if err := byProvider(reqs, pushtest.APNs)[0].JSON(&a); err != nil {
		t.Fatal(err)
	}
	if a.Aps.Alert.Title != "New message from Ana Lima" || a.Aps.Alert.Body != "" || a.Aps.Badge == nil || *a.Aps.Badge != 1 {
		t.Fatalf("APNs payload %s", byProvider(reqs, pushtest.APNs)[0].Body)
	}
	h := byProvider(reqs, pushtest.APNs)[0].Header
	if h.Get("apns-topic") != "com.example.ding" || h.Get("apns-push-type") != "alert" {
		t.Fatalf("APNs headers %v", h)
	}
	var f fcmBody
	if err := byProvider(reqs, pushtest.FCM)[0].JSON(&f); err != nil {
		t.Fatal(err)
	}
	if f.Message.Token != fcmTok || f.Message.Notification.Title != "New message from Ana Lima" || f.Message.Notification.Body != "" {
		t.Fatalf("FCM payload %s", byProvider(reqs, pushtest.FCM)[0].Body)
	}
	for _, r := range reqs {
		if bytes.Contains(r.Body, []byte(secret)) {
			t.Fatalf("%s request carries the text without --push-preview", r.Provider)
		}
	}

	// A burst within the window: nothing at once, one push per device at its end.
	for range 9 {
		v.send(t, "ana", "bo", "more")
	}
	v.sink.wait(t, "bo", 10)
	v.settle(t)
	if n := len(v.srv.Requests()); n != 2 {
		t.Fatalf("%d requests during the window, want the first 2 only", n)
	}
	if v.p.Pending() != 1 {
		t.Fatalf("pending flushes %d, want 1", v.p.Pending())
	}
	v.clock.Advance(10 * time.Second)
	reqs = v.waitReqs(t, 4)
	v.settle(t)
	if n := len(v.srv.Requests()); n != 4 {
		t.Fatalf("%d requests after the window, want 4", n)
	}
	if err := byProvider(reqs, pushtest.APNs)[1].JSON(&a); err != nil {
		t.Fatal(err)
	}
	if a.Aps.Alert.Title != "9 new messages" || a.Aps.Badge == nil || *a.Aps.Badge != 10 {
		t.Fatalf("coalesced APNs payload %s", byProvider(reqs, pushtest.APNs)[1].Body)
	}
	if got := metricValue(t, v.reg, "ding_push_coalesced_total", nil); got != 8*2 {
		t.Fatalf("coalesced %v, want 16 (8 folded per device)", got)
	}

	// The iPhone connects: only the Pixel is pushed.
	v.pres.mu.Lock()
	v.pres.on["bo"] = []string{"iphone"}
	v.pres.mu.Unlock()
	v.clock.Advance(time.Minute)
	v.send(t, "ana", "bo", "hi")
	v.sink.wait(t, "bo", 11)
	reqs = v.waitReqs(t, 5)
	v.settle(t)
	if n := len(v.srv.Requests()); n != 5 || reqs[4].Provider != pushtest.FCM {
		t.Fatalf("requests %d, last %s; want one more, to FCM", n, reqs[len(reqs)-1].Provider)
	}
	// The iPhone, connected, acknowledges: it is not pushed after the grace.
	head, err := v.e.Head("bo")
	if err != nil {
		t.Fatal(err)
	}
	if err := v.e.Ack(context.Background(), "bo", "iphone", head); err != nil {
		t.Fatal(err)
	}
	v.clock.Advance(5 * time.Second)
	v.settle(t)
	if n := len(v.srv.Requests()); n != 5 {
		t.Fatalf("%d requests after the grace of an acknowledging device, want 5", n)
	}
	// A connected device that does not acknowledge is pushed once the
	// grace (5s) has passed since the message; the Pixel's window (10s
	// from its last push) ends at the same time.
	v.send(t, "ana", "bo", "asleep?")
	v.sink.wait(t, "bo", 12)
	v.settle(t)
	if n := len(v.srv.Requests()); n != 5 {
		t.Fatalf("%d requests before the grace, want 5", n)
	}
	v.clock.Advance(5 * time.Second)
	reqs = v.waitReqs(t, 7)
	v.settle(t)
	if n := len(v.srv.Requests()); n != 7 || len(byProvider(reqs[5:], pushtest.APNs)) != 1 {
		t.Fatalf("%d requests after the grace, want 7 with one to the iPhone", n)
	}

	// A DING (it has its own push step) is no message notification.
	v.clock.Advance(time.Minute)
	if _, err := v.e.Ding(context.Background(), engine.DingRequest{From: "ana", To: []string{"bo"}, Text: "fire", Policy: "inapp"}); err != nil {
		t.Fatal(err)
	}
	v.sink.wait(t, "bo", 13)
	v.settle(t)
	if n := len(v.srv.Requests()); n != 7 {
		t.Fatalf("%d requests after a DING, want no more", n)
	}
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue next
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

// A secret chat's message: "New secret message", and nothing of the
// sender or the text, byte for byte, in either provider's request.
func TestSecretMessagePushCarriesNoContentOrSender(t *testing.T) {
	v := newEnv(t, func(c *push.Config) { c.Preview = true })
	v.bothDevices(t)
	chat, err := v.e.CreateChat(context.Background(), engine.ChatRequest{From: "ana", To: "bo", Level: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.e.Submit(context.Background(), engine.Submission{From: "ana", Chat: chat.ID, Kind: engine.KindText, Body: []byte(secret)}); err != nil {
		t.Fatal(err)
	}
	reqs := v.waitReqs(t, 2)
	v.settle(t)
	for _, r := range reqs {
		for _, leak := range []string{secret, "ana", "Ana", "Lima"} {
			if bytes.Contains(r.Body, []byte(leak)) {
				t.Fatalf("%s request carries %q: %s", r.Provider, leak, r.Body)
			}
		}
		if !bytes.Contains(r.Body, []byte(`"New secret message"`)) {
			t.Fatalf("%s request: %s", r.Provider, r.Body)
		}
	}
	// A plain message, with --push-preview, shows its text.
	v.clock.Advance(time.Minute)
	v.send(t, "ana", "bo", "lunch at 1?")
	reqs = v.waitReqs(t, 4)
	if !bytes.Contains(reqs[2].Body, []byte("lunch at 1?")) || !bytes.Contains(reqs[3].Body, []byte("lunch at 1?")) {
		t.Fatalf("preview missing: %s / %s", reqs[2].Body, reqs[3].Body)
	}
}

// A DING's push step, through the real clients: to every device, urgent,
// with the choices as actions; the reference names both.
func TestDingPushPayload(t *testing.T) {
	v := newEnv(t, nil)
	v.bothDevices(t)
	id := engine.ID{1, 2, 3}
	ref, err := v.p.Send(context.Background(), engine.Outbound{Ding: id, Channel: engine.ChannelPush, To: "bo", Sender: "Ana Lima",
		Text: "DING from Ana Lima: " + secret, Choices: []string{"coming", "can't"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ref, "2 of 2 devices") {
		t.Fatalf("ref %q", ref)
	}
	reqs := v.srv.Requests()
	var a apnsBody
	if err := byProvider(reqs, pushtest.APNs)[0].JSON(&a); err != nil {
		t.Fatal(err)
	}
	if a.Aps.Category != "ding.2" || a.Aps.InterruptionLevel != "time-sensitive" || a.Ding == nil || a.Ding.ID != id.String() ||
		strings.Join(a.Ding.Actions, ",") != push.ActionID(1)+","+push.ActionID(2) || a.Aps.Alert.Title != "DING from Ana Lima" {
		t.Fatalf("APNs DING payload %s", byProvider(reqs, pushtest.APNs)[0].Body)
	}
	if h := byProvider(reqs, pushtest.APNs)[0].Header; h.Get("apns-priority") != "10" {
		t.Fatalf("apns-priority %q", h.Get("apns-priority"))
	}
	var f fcmBody
	if err := byProvider(reqs, pushtest.FCM)[0].JSON(&f); err != nil {
		t.Fatal(err)
	}
	if f.Message.Android.Priority != "HIGH" || f.Message.Data["ding"] != id.String() || f.Message.Data["choices"] != `["coming","can't"]` {
		t.Fatalf("FCM DING payload %s", byProvider(reqs, pushtest.FCM)[0].Body)
	}
	for _, r := range reqs {
		if bytes.Contains(r.Body, []byte(secret)) {
			t.Fatalf("DING text in a push without --push-preview")
		}
	}
	if v.srv.AccessTokensIssued() != 1 {
		t.Fatalf("FCM access tokens issued %d", v.srv.AccessTokensIssued())
	}
}

// Dead tokens (APNs 410 Unregistered, FCM UNREGISTERED) are removed and
// counted; a DING's push to only dead tokens is ErrUnregistered.
func TestDeadTokensRemoved(t *testing.T) {
	v := newEnv(t, nil)
	v.bothDevices(t)
	v.srv.Fail(pushtest.Failure{Provider: pushtest.APNs, Status: 410, Reason: "Unregistered"})
	v.srv.Fail(pushtest.Failure{Provider: pushtest.FCM, Status: 404, Reason: "UNREGISTERED"})
	_, err := v.p.Send(context.Background(), engine.Outbound{Ding: engine.ID{9}, Channel: engine.ChannelPush, To: "bo", Sender: "Ana"})
	if !errors.Is(err, engine.ErrUnregistered) {
		t.Fatalf("err %v, want ErrUnregistered", err)
	}
	if toks, _ := v.e.PushTokens("bo"); len(toks) != 0 {
		t.Fatalf("tokens left %+v", toks)
	}
	if n := len(v.srv.Requests()); n != 2 {
		t.Fatalf("%d requests: a dead token is not retried", n)
	}
	for _, p := range []string{"apns", "fcm"} {
		if got := metricValue(t, v.reg, "ding_push_dead_tokens_removed_total", map[string]string{"provider": p}); got != 1 {
			t.Fatalf("%s dead removals %v", p, got)
		}
	}
	if got := metricValue(t, v.reg, "ding_push_registered_tokens", nil); got != 0 {
		t.Fatalf("registered tokens gauge %v", got)
	}
	// FCM's INVALID_ARGUMENT about the token is a dead token too.
	v.register(t, "bo", engine.PushToken{Device: "pixel", Provider: engine.PushFCM, Token: fcmTok})
	v.srv.Fail(pushtest.Failure{Provider: pushtest.FCM, Status: 400, Reason: "INVALID_ARGUMENT"})
	v.send(t, "ana", "bo", "hi")
	v.waitReqs(t, 3)
	v.settle(t)
	if toks, _ := v.e.PushTokens("bo"); len(toks) != 0 {
		t.Fatalf("tokens left after INVALID_ARGUMENT %+v", toks)
	}
}

// 5xx and 429 are retried (Retry-After honoured); a 4xx is not.
func TestRetries(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fail     pushtest.Failure
		requests int
		ok       bool
		wait     time.Duration // the first wait, when known
	}{
		{"apns 500", pushtest.Failure{Provider: pushtest.APNs, Status: 500, Reason: "InternalServerError"}, 2, true, 0},
		{"apns 429", pushtest.Failure{Provider: pushtest.APNs, Status: 429, Reason: "TooManyRequests"}, 2, true, 0},
		{"fcm 503 retry-after", pushtest.Failure{Provider: pushtest.FCM, Status: 503, Reason: "UNAVAILABLE", RetryAfter: 7 * time.Second}, 2, true, 7 * time.Second},
		{"fcm 429 retry-after", pushtest.Failure{Provider: pushtest.FCM, Status: 429, Reason: "QUOTA_EXCEEDED", RetryAfter: 3 * time.Second}, 2, true, 3 * time.Second},
		{"fcm 500 every time", pushtest.Failure{Provider: pushtest.FCM, Status: 500, Reason: "INTERNAL", Times: -1}, 3, false, 0},
		{"apns 400", pushtest.Failure{Provider: pushtest.APNs, Status: 400, Reason: "BadPriority"}, 1, false, 0},
		{"fcm 403", pushtest.Failure{Provider: pushtest.FCM, Status: 403, Reason: "SENDER_ID_MISMATCH"}, 1, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newEnv(t, nil)
			if tc.fail.Provider == pushtest.APNs {
				v.register(t, "bo", engine.PushToken{Device: "iphone", Provider: engine.PushAPNs, Token: apnsTok, Topic: "com.example.ding"})
			} else {
				v.register(t, "bo", engine.PushToken{Device: "pixel", Provider: engine.PushFCM, Token: fcmTok})
			}
			v.srv.Fail(tc.fail)
			_, err := v.p.Send(context.Background(), engine.Outbound{Ding: engine.ID{7}, Channel: engine.ChannelPush, To: "bo", Sender: "Ana"})
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, want ok %v", err, tc.ok)
			}
			if !tc.ok && tc.requests == 1 && !errors.Is(err, engine.ErrRejected) {
				t.Fatalf("a 4xx: err %v, want ErrRejected", err)
			}
			if !tc.ok && tc.requests > 1 && (errors.Is(err, engine.ErrRejected) || errors.Is(err, engine.ErrUnregistered)) {
				t.Fatalf("5xx every time: err %v, want an unknown outcome (the engine retries the step)", err)
			}
			if n := len(v.srv.Requests()); n != tc.requests {
				t.Fatalf("%d requests, want %d", n, tc.requests)
			}
			v.mu.Lock()
			waits := append([]time.Duration(nil), v.waits...)
			v.mu.Unlock()
			if len(waits) != tc.requests-1 {
				t.Fatalf("waits %v", waits)
			}
			if tc.wait > 0 && waits[0] != tc.wait {
				t.Fatalf("waited %v, want the Retry-After %v", waits[0], tc.wait)
			}
			if toks, _ := v.e.PushTokens("bo"); len(toks) != 1 {
				t.Fatal("a failure that is no dead token removed the token")
			}
		})
	}
}

// Offboarding removes the tokens: nothing more is pushed to the user.
func TestOffboardingStopsPushes(t *testing.T) {
	v := newEnv(t, nil)
	v.bothDevices(t)
	if _, err := v.e.Offboard(context.Background(), "bo", engine.Change{}); err != nil {
		t.Fatal(err)
	}
	_, err := v.p.Send(context.Background(), engine.Outbound{Ding: engine.ID{5}, Channel: engine.ChannelPush, To: "bo", Sender: "Ana"})
	if err == nil || !errors.Is(err, engine.ErrRejected) {
		t.Fatalf("err %v", err)
	}
	if n := len(v.srv.Requests()); n != 0 {
		t.Fatalf("%d requests after offboarding", n)
	}
}

// Bad configurations are refused with a clear error, and a credentials
// file's content never appears in it.
func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := dir + "/sa.json"
	if err := writeFile(bad, `{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----SECRETKEY"}`); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  push.Config
		want string
	}{
		{"apns without ids", push.Config{APNsKeyFile: "k.p8"}, "key id and team id"},
		{"apns key missing", push.Config{APNsKeyFile: dir + "/none.p8", APNsKeyID: "K", APNsTeamID: "T"}, "APNs key"},
		{"fcm not a service account", push.Config{FCMCredentialsFile: bad}, "not a service-account JSON file"},
		{"bad endpoint", push.Config{FCMCredentialsFile: bad, FCMEndpoint: "ftp://x"}, "not an http(s) URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := push.New(tc.cfg, push.Deps{})
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "SECRETKEY") {
				t.Fatalf("err %v, want one saying %q", err, tc.want)
			}
		})
	}
	p, err := push.New(push.Config{}, push.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Send(context.Background(), engine.Outbound{Channel: engine.ChannelPush, To: "bo"}); !errors.Is(err, engine.ErrNotConfigured) {
		t.Fatalf("unconfigured: %v", err)
	}
}

func writeFile(p, s string) error { return os.WriteFile(p, []byte(s), 0o600) }

// The org's rate limit spaces requests: 5 at 50/s take at least 80ms.
func TestRateLimit(t *testing.T) {
	v := newEnv(t, func(c *push.Config) { c.Rate = 50 })
	for i := range 5 {
		v.register(t, "bo", engine.PushToken{Device: "d" + string(rune('a'+i)), Provider: engine.PushFCM, Token: fcmTok + string(rune('a'+i))})
	}
	start := time.Now()
	if _, err := v.p.Send(context.Background(), engine.Outbound{Ding: engine.ID{3}, Channel: engine.ChannelPush, To: "bo", Sender: "Ana"}); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 80*time.Millisecond {
		t.Fatalf("5 requests at 50/s took %v, want at least 80ms", el)
	}
	if n := len(v.srv.Requests()); n != 5 {
		t.Fatalf("%d requests", n)
	}
}
