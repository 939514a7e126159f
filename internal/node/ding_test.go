package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/channels/twilio/twiliotest"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/fakeclock"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, nodetest.GoleakOptions...) }

const (
	sid      = "AC00000000000000000000000000000001"
	token    = "secret0token0for0tests"
	fromNum  = "+15005550006"
	boPhone  = "+15550000002"
	stranger = "+15550000099"
)

var t0 = time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)

// dingNode is a node whose SMS and calls go through the real twilio-go
// client to a fake Twilio on loopback, which signs its webhooks back.
type dingNode struct {
	n      *node.Node
	cfg    node.Config
	clock  *fakeclock.Clock
	twilio *twiliotest.Server
	public string
}

func startDingNode(t *testing.T, mod func(*node.Config)) *dingNode {
	t.Helper()
	fake := twiliotest.NewServer(sid, token)
	t.Cleanup(fake.Close)
	addr := nodetest.FreeAddr(t)
	d := &dingNode{clock: fakeclock.New(t0), twilio: fake, public: "http://" + addr}
	d.cfg = node.Config{
		DataDir: t.TempDir(), HTTPAddr: addr, Clock: d.clock,
		Twilio: twilio.Config{AccountSID: sid, AuthToken: token, From: fromNum, PublicURL: d.public, APIURL: fake.URL(), Timeout: 300 * time.Millisecond},
		Quotas: engine.Quotas{RecipientInterval: -1},
	}
	if mod != nil {
		mod(&d.cfg)
	}
	d.start(t)
	for _, u := range []fanout.User{{ID: "ana", Name: "Ana"}, {ID: "bo", Name: "Bo", Phone: boPhone}} {
		if _, err := d.n.Directory().PutUser(u); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func (d *dingNode) start(t *testing.T) {
	t.Helper()
	d.n = nodetest.Start(t, d.cfg)
}

// api calls the admin API and decodes the JSON answer.
func (d *dingNode) api(t *testing.T, method, path string, body any) (int, map[string]any, http.Header) {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, "http://"+d.n.HTTPAddr()+path, rd)
	req.Header.Set("Authorization", "Bearer "+d.n.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out, resp.Header
}

func (d *dingNode) ding(t *testing.T, body map[string]any) string {
	t.Helper()
	body["from"] = "ana"
	code, out, _ := d.api(t, "POST", "/v1/dings", body)
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/dings: %d %v", code, out)
	}
	return out["id"].(string)
}

// recipient returns recipient i of a DING as the API shows it.
func (d *dingNode) recipient(t *testing.T, id string, i int) (status string, events []string, raw map[string]any) {
	t.Helper()
	code, out, _ := d.api(t, "GET", "/v1/dings/"+id, nil)
	if code != http.StatusOK {
		t.Fatalf("GET ding: %d %v", code, out)
	}
	r := out["recipients"].([]any)[i].(map[string]any)
	for _, ev := range r["events"].([]any) {
		events = append(events, ev.(map[string]any)["event"].(string))
	}
	return r["status"].(string), events, r
}

func (d *dingNode) waitEvent(t *testing.T, id string, i int, ev string) []string {
	t.Helper()
	var got []string
	nodetest.WaitFor(t, "ledger event "+ev, 5*time.Second, func() bool {
		_, got, _ = d.recipient(t, id, i)
		return slices.Contains(got, ev)
	})
	return got
}

func (d *dingNode) waitRequests(t *testing.T, kind string, n int) []twiliotest.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rs, err := d.twilio.WaitFor(ctx, kind, n)
	if err != nil {
		t.Fatalf("waiting for %d %s requests (have %d): %v", n, kind, d.twilio.Count(kind), err)
	}
	return rs
}

func TestDingThroughTwilioEndToEnd(t *testing.T) {
	d := startDingNode(t, nil)
	ctx := context.Background()
	id := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "Deploy is stuck", "policy": "inapp,sms@5m,voice@15m", "choices": []string{"attend", "decline"}})

	d.clock.Advance(5 * time.Minute)
	sms := d.waitRequests(t, "sms", 1)[0]
	if sms.To != boPhone || sms.From != fromNum || !strings.Contains(sms.Body, "Deploy is stuck") || !strings.Contains(sms.Body, "Ana") ||
		!strings.Contains(sms.Body, "2 for decline") {
		t.Fatalf("sms = %+v", sms)
	}
	if code, _, err := d.twilio.SMSStatus(ctx, sms.SID, "delivered", ""); err != nil || code != 200 {
		t.Fatalf("sms status webhook: %d %v", code, err)
	}
	d.waitEvent(t, id, 0, "sms_delivered")

	d.clock.Advance(10 * time.Minute)
	call := d.waitRequests(t, "call", 1)[0]
	if call.To != boPhone || !strings.Contains(call.Twiml, "Deploy is stuck") || !strings.HasPrefix(call.GatherAction, d.public+"/twilio/") {
		t.Fatalf("call = %+v", call)
	}
	for _, st := range []string{"ringing", "in-progress"} {
		if code, _, err := d.twilio.CallStatus(ctx, call.SID, st); err != nil || code != 200 {
			t.Fatalf("call status %s: %d %v", st, code, err)
		}
	}
	// A forged keypress changes nothing.
	gather := url.Values{"CallSid": {call.SID}, "Digits": {"1"}, "AccountSid": {sid}}
	if code, _, err := d.twilio.PostSigned(ctx, call.GatherAction, gather, twiliotest.Sign("not-the-token", call.GatherAction, gather)); err != nil || code != http.StatusForbidden {
		t.Fatalf("forged gather: %d %v", code, err)
	}
	if code, _, err := d.twilio.PostSigned(ctx, call.GatherAction, gather, ""); err != nil || code != http.StatusForbidden {
		t.Fatalf("unsigned gather: %d %v", code, err)
	}
	if st, _, _ := d.recipient(t, id, 0); st != engine.StatusPending {
		t.Fatalf("a forged webhook moved bo to %s", st)
	}
	code, body, err := d.twilio.Press(ctx, call.SID, "2")
	if err != nil || code != 200 || !strings.Contains(body, "recorded") {
		t.Fatalf("press: %d %q %v", code, body, err)
	}
	st, evs, raw := d.recipient(t, id, 0)
	if st != engine.StatusConfirmed || raw["choice"] != "decline" || raw["reached_by"] != "voice" {
		t.Fatalf("bo = %v", raw)
	}
	for _, want := range []string{"sent", "sending", "sms_queued", "sms_delivered", "call_initiated", "call_ringing", "call_answered", "digits", "confirmed"} {
		if !slices.Contains(evs, want) {
			t.Fatalf("ledger %v lacks %s", evs, want)
		}
	}
	// Nothing after the confirmation.
	d.clock.Advance(time.Hour)
	if code, _, err := d.twilio.CallStatus(ctx, call.SID, "completed"); err != nil || code != 200 {
		t.Fatalf("completed: %d %v", code, err)
	}
	d.waitEvent(t, id, 0, "call_completed")
	if n := d.twilio.Count(""); n != 2 {
		t.Fatalf("%d Twilio requests, want 2", n)
	}
	// The metrics tell the same story.
	resp, err := http.Get("http://" + d.n.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw2, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`ding_escalation_steps_total{channel="sms",outcome="sent"} 1`,
		`ding_escalation_steps_total{channel="voice",outcome="sent"} 1`,
		`ding_ding_time_to_confirm_seconds_count{channel="voice"} 1`,
		`ding_escalation_pending_steps 0`,
		`ding_escalation_timer_lateness_seconds_count 2`,
		`ding_dings_total{result="created"} 1`,
		`ding_twilio_requests_total{kind="sms",status="ok"} 1`,
		`ding_twilio_webhooks_total{endpoint="gather",result="forged"} 2`,
	} {
		if !strings.Contains(string(raw2), want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The receipts API shows the confirmation.
	code, out, _ := d.api(t, "GET", "/v1/messages/"+id+"/receipts", nil)
	if code != 200 || out["counts"].(map[string]any)["confirmed"].(float64) != 1 {
		t.Fatalf("receipts: %d %v", code, out)
	}
}

func TestSMSReplyConfirmsAndBusyFallsBack(t *testing.T) {
	d := startDingNode(t, nil)
	ctx := context.Background()
	// A bare number outside the app: reached by voice; busy falls back to SMS.
	id := d.ding(t, map[string]any{"to": []string{stranger}, "text": "Gas leak on floor 3", "policy": "voice,voice@10m"})
	call := d.waitRequests(t, "call", 1)[0]
	if code, _, err := d.twilio.CallStatus(ctx, call.SID, "busy"); err != nil || code != 200 {
		t.Fatalf("busy: %d %v", code, err)
	}
	d.waitEvent(t, id, 0, "fallback")
	sms := d.waitRequests(t, "sms", 1)[0]
	if sms.To != stranger {
		t.Fatalf("fallback SMS to %s", sms.To)
	}
	d.waitEvent(t, id, 0, "sms_queued")
	// An unclear reply is recorded, and does not confirm.
	inbound := d.public + "/twilio/sms/inbound"
	if code, _, err := d.twilio.Reply(ctx, inbound, stranger, fromNum, "who is this?"); err != nil || code != 200 {
		t.Fatalf("reply: %d %v", code, err)
	}
	if st, evs, _ := d.recipient(t, id, 0); st != engine.StatusPending || !slices.Contains(evs, "reply") {
		t.Fatalf("after an unclear reply: %s %v", st, evs)
	}
	if code, _, err := d.twilio.Reply(ctx, inbound, stranger, fromNum, "收到"); err != nil || code != 200 {
		t.Fatalf("reply: %d %v", code, err)
	}
	st, _, raw := d.recipient(t, id, 0)
	if st != engine.StatusConfirmed || raw["reached_by"] != "sms" {
		t.Fatalf("stranger = %v", raw)
	}
	d.clock.Advance(time.Hour)
	id2 := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "barrier", "policy": "sms"})
	d.waitRequests(t, "sms", 2)
	d.waitEvent(t, id2, 0, "sms_queued")
	if n := d.twilio.Count("call"); n != 1 {
		t.Fatalf("%d calls; the second step must not fire after the SMS confirmation", n)
	}
	// A reply from a phone with nothing pending is answered and ignored.
	if code, _, err := d.twilio.Reply(ctx, inbound, "+15550000123", fromNum, "OK"); err != nil || code != 200 {
		t.Fatalf("reply with nothing pending: %d %v", code, err)
	}
}

// "exhausted" comes when the policy has nothing more to try, after the
// last call's status webhooks, not when the call is placed (issue 12).
func TestDingExhaustedAfterTheLastCallEnds(t *testing.T) {
	d := startDingNode(t, nil)
	ctx := context.Background()
	id := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "Disk full", "policy": "inapp,voice@1m"})
	d.clock.Advance(time.Minute)
	call := d.waitRequests(t, "call", 1)[0]
	d.waitEvent(t, id, 0, "call_initiated")
	for _, st := range []string{"ringing", "in-progress"} {
		if code, _, err := d.twilio.CallStatus(ctx, call.SID, st); err != nil || code != 200 {
			t.Fatalf("call status %s: %d %v", st, code, err)
		}
	}
	if _, evs, _ := d.recipient(t, id, 0); slices.Contains(evs, "exhausted") {
		t.Fatalf("exhausted while the call is in progress: %v", evs)
	}
	if code, _, err := d.twilio.CallStatus(ctx, call.SID, "completed"); err != nil || code != 200 {
		t.Fatalf("completed: %d %v", code, err)
	}
	evs := d.waitEvent(t, id, 0, "exhausted")
	want := []string{"sent", "sending", "call_initiated", "call_ringing", "call_answered", "call_completed", "exhausted"}
	if !slices.Equal(evs, want) {
		t.Fatalf("ledger %v, want %v", evs, want)
	}
}

func TestTwilioErrorsAreRetried(t *testing.T) {
	d := startDingNode(t, nil)
	d.twilio.FailNext(1, 503)
	id := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "retry me", "policy": "sms"})
	d.waitEvent(t, id, 0, "retry")
	d.twilio.HangNext(1) // the second attempt times out
	d.clock.Advance(5 * time.Second)
	nodetest.WaitFor(t, "second retry", 5*time.Second, func() bool {
		_, evs, _ := d.recipient(t, id, 0)
		return strings.Count(strings.Join(evs, " "), "retry") == 2
	})
	d.clock.Advance(30 * time.Second)
	d.waitEvent(t, id, 0, "sms_queued")
	if _, evs, _ := d.recipient(t, id, 0); strings.Count(strings.Join(evs, " "), "sending") != 3 {
		t.Fatalf("ledger %v, want three attempts", evs)
	}
}

func TestEscalationSurvivesRestart(t *testing.T) {
	d := startDingNode(t, nil)
	id := d.ding(t, map[string]any{"to": []string{"bo", stranger}, "text": "restart me", "policy": "sms@5m,voice@15m"})
	d.clock.Advance(5 * time.Minute)
	d.waitRequests(t, "sms", 2)
	d.waitEvent(t, id, 0, "sms_queued")
	d.waitEvent(t, id, 1, "sms_queued")
	nodetest.Stop(t, d.n)

	d.start(t)
	d.clock.Advance(10 * time.Minute)
	d.waitRequests(t, "call", 2)
	d.waitEvent(t, id, 0, "call_initiated")
	d.waitEvent(t, id, 1, "call_initiated")
	if s, c := d.twilio.Count("sms"), d.twilio.Count("call"); s != 2 || c != 2 {
		t.Fatalf("after restart: %d SMS, %d calls; want 2 and 2", s, c)
	}
}

func TestDingAPIRefusesWithClearErrors(t *testing.T) {
	d := startDingNode(t, func(c *node.Config) { c.Quotas = engine.Quotas{} })
	if _, err := d.n.Directory().PutUser(fanout.User{ID: "cy", Name: "Cy", QuietHours: "09:00-17:00"}); err != nil {
		t.Fatal(err)
	}
	d.ding(t, map[string]any{"to": []string{"bo"}, "text": "first"})
	for _, tc := range []struct {
		name   string
		body   map[string]any
		status int
		code   string
		reason string
	}{
		{"re-DING within the interval", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "again"}, 429, "QUOTA_EXCEEDED", "recipient_interval"},
		{"quiet hours", map[string]any{"from": "ana", "to": []string{"cy"}, "text": "now"}, 429, "QUOTA_EXCEEDED", "quiet_hours"},
		{"unknown recipient", map[string]any{"from": "ana", "to": []string{"zed"}, "text": "x"}, 422, "UNKNOWN_RECIPIENT", ""},
		{"unknown sender", map[string]any{"from": "zed", "to": []string{"bo"}, "text": "x"}, 422, "UNKNOWN_SENDER", ""},
		{"bad policy", map[string]any{"from": "ana", "to": []string{stranger}, "text": "x", "policy": "pigeon@1m"}, 400, "BAD_POLICY", ""},
		{"bad phone", map[string]any{"from": "ana", "to": []string{"+12"}, "text": "x"}, 400, "BAD_REQUEST", ""},
		{"no text", map[string]any{"from": "ana", "to": []string{stranger}}, 400, "BAD_REQUEST", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, h := d.api(t, "POST", "/v1/dings", tc.body)
			e, _ := out["error"].(map[string]any)
			if code != tc.status || e["code"] != tc.code || (tc.reason != "" && e["reason"] != tc.reason) {
				t.Fatalf("got %d %v", code, out)
			}
			if code == 429 && h.Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
		})
	}
	// Critical overrides quiet hours.
	d.ding(t, map[string]any{"to": []string{"cy"}, "text": "fire", "critical": true})
	if code, out, _ := d.api(t, "GET", "/v1/dings/"+engine.ID{}.String(), nil); code != 404 {
		t.Fatalf("unknown ding: %d %v", code, out)
	}
	if code, out, _ := d.api(t, "PUT", "/v1/policies/quick", map[string]any{"policy": "sms@1s*3/10s until=read"}); code != 200 || out["policy"] != "sms@1s*3/10s until=read" {
		t.Fatalf("put policy: %d %v", code, out)
	}
	if code, out, _ := d.api(t, "GET", "/v1/policies", nil); code != 200 || fmt.Sprint(out["policies"]) != "map[quick:sms@1s*3/10s until=read]" {
		t.Fatalf("policies: %d %v", code, out)
	}
}
