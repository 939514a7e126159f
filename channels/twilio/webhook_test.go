package twilio_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/dingmq/ding/channels/twilio/twiliotest"
	"github.com/dingmq/ding/engine"
)

func (e *env) webhooks(t testing.TB, endpoint, result string) float64 {
	t.Helper()
	return counter(t, e.reg, "ding_twilio_webhooks_total", map[string]string{"endpoint": endpoint, "result": result})
}

func (e *env) send(t testing.TB, ch engine.Channel) string {
	t.Helper()
	ref, err := e.n.Send(ctxT(t), outbound(ch, "x"))
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func TestSMSStatusWebhook(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.send(t, engine.ChannelSMS)
	for _, tc := range []struct {
		status, code string
		want         engine.ProviderEvent // 0: ignored
	}{
		{"queued", "", engine.ProviderSMSQueued},
		{"accepted", "", engine.ProviderSMSQueued},
		{"sending", "", engine.ProviderSMSQueued},
		{"sent", "", engine.ProviderSMSSent},
		{"delivered", "", engine.ProviderSMSDelivered},
		{"undelivered", "30003", engine.ProviderSMSFailed},
		{"failed", "30008", engine.ProviderSMSFailed},
		{"canceled", "", engine.ProviderSMSFailed},
		{"received", "", 0},
		{"read", "", 0},
	} {
		t.Run(tc.status, func(t *testing.T) {
			status, body, err := e.tw.SMSStatus(ctxT(t), ref, tc.status, tc.code)
			if err != nil || status != http.StatusOK {
				t.Fatalf("answered %d %q, %v", status, body, err)
			}
			got := e.rep.take()
			if tc.want == 0 {
				if len(got) != 0 {
					t.Fatalf("reported %+v", got)
				}
				return
			}
			if want := (report{method: "status", ref: ref, ev: tc.want, detail: tc.code}); len(got) != 1 || got[0] != want {
				t.Fatalf("reported %+v, want %+v", got, want)
			}
		})
	}
	if got := e.webhooks(t, "sms_status", "ok"); got != 10 {
		t.Fatalf("webhooks ok = %v", got)
	}
}

func TestCallStatusWebhook(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.send(t, engine.ChannelVoice)
	for _, tc := range []struct {
		status string
		want   engine.ProviderEvent
	}{
		{"queued", engine.ProviderCallInitiated},
		{"initiated", engine.ProviderCallInitiated},
		{"ringing", engine.ProviderCallRinging},
		{"in-progress", engine.ProviderCallAnswered},
		{"completed", engine.ProviderCallCompleted},
		{"busy", engine.ProviderCallBusy},
		{"no-answer", engine.ProviderCallNoAnswer},
		{"failed", engine.ProviderCallFailed},
		{"canceled", engine.ProviderCallFailed},
		{"something-new", 0},
	} {
		t.Run(tc.status, func(t *testing.T) {
			status, body, err := e.tw.CallStatus(ctxT(t), ref, tc.status)
			if err != nil || status != http.StatusOK {
				t.Fatalf("answered %d %q, %v", status, body, err)
			}
			got := e.rep.take()
			if tc.want == 0 {
				if len(got) != 0 {
					t.Fatalf("reported %+v", got)
				}
				return
			}
			if want := (report{method: "status", ref: ref, ev: tc.want}); len(got) != 1 || got[0] != want {
				t.Fatalf("reported %+v, want %+v", got, want)
			}
		})
	}
}

func TestGatherWebhook(t *testing.T) {
	for _, tc := range []struct {
		name    string
		digits  string
		err     error
		say     string
		reports int
		result  string
	}{
		{"pressed", "2", nil, "Thank you. Your answer is recorded.", 1, "ok"},
		{"no digits", "", nil, "No answer was recorded. Goodbye.", 0, "ok"},
		{"unknown call", "1", fmt.Errorf("ding: %w", engine.ErrNotFound), "Sorry, that answer was not recorded. Goodbye.", 1, "unknown"},
		{"engine failed", "1", errors.New("store closed"), "Sorry, that answer was not recorded. Goodbye.", 1, "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			ref := e.send(t, engine.ChannelVoice)
			e.rep.setErr(tc.err)
			status, body, err := e.tw.Press(ctxT(t), ref, tc.digits)
			if err != nil || status != http.StatusOK {
				t.Fatalf("answered %d %q, %v", status, body, err)
			}
			if want := "<Response><Say>" + tc.say + "</Say></Response>"; body != want {
				t.Fatalf("answered %q, want %q", body, want)
			}
			got := e.rep.take()
			if len(got) != tc.reports || (tc.reports == 1 && got[0] != report{method: "digits", ref: ref, digits: tc.digits}) {
				t.Fatalf("reported %+v", got)
			}
			if n := e.webhooks(t, "gather", tc.result); n != 1 {
				t.Fatalf("webhooks{gather,%s} = %v", tc.result, n)
			}
		})
	}
}

func TestInboundWebhook(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		status int
		body   string
		result string
	}{
		{"reported", nil, 200, "<Response/>", "ok"},
		{"nothing pending", fmt.Errorf("reply: %w", engine.ErrNotFound), 200, "<Response/>", "unknown"},
		{"engine failed", errors.New("store closed"), 500, "internal error\n", "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.rep.setErr(tc.err)
			inbound := e.public + "/twilio/sms/inbound"
			status, body, err := e.tw.Reply(ctxT(t), inbound, testTo, testFrom, "1 ok")
			if err != nil || status != tc.status || body != tc.body {
				t.Fatalf("answered %d %q, %v; want %d %q", status, body, err, tc.status, tc.body)
			}
			if got := e.rep.take(); len(got) != 1 || got[0] != (report{method: "inbound", from: testTo, body: "1 ok"}) {
				t.Fatalf("reported %+v", got)
			}
			if n := e.webhooks(t, "inbound_sms", tc.result); n != 1 {
				t.Fatalf("webhooks{inbound_sms,%s} = %v", tc.result, n)
			}
		})
	}
}

func TestInboundAnswersXML(t *testing.T) {
	e := newEnv(t, nil)
	inbound := e.public + "/twilio/sms/inbound"
	p := url.Values{"From": {testTo}, "To": {testFrom}, "Body": {"OK"}}
	req, _ := http.NewRequestWithContext(ctxT(t), http.MethodPost, inbound, strings.NewReader(p.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Twilio-Signature", twiliotest.Sign(testToken, inbound, p))
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || !strings.HasPrefix(ct, "text/xml") {
		t.Fatalf("answered %d %q", resp.StatusCode, ct)
	}
}

func TestStatusReportErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		status int
		result string
	}{
		{"unknown sid", fmt.Errorf("status: %w", engine.ErrNotFound), 200, "unknown"},
		{"engine failed", errors.New("store closed"), 500, "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			sms, call := e.send(t, engine.ChannelSMS), e.send(t, engine.ChannelVoice)
			e.rep.setErr(tc.err)
			if status, _, err := e.tw.SMSStatus(ctxT(t), sms, "delivered", ""); err != nil || status != tc.status {
				t.Fatalf("sms status answered %d, %v; want %d", status, err, tc.status)
			}
			if status, _, err := e.tw.CallStatus(ctxT(t), call, "completed"); err != nil || status != tc.status {
				t.Fatalf("call status answered %d, %v; want %d", status, err, tc.status)
			}
			if n := e.webhooks(t, "sms_status", tc.result) + e.webhooks(t, "call_status", tc.result); n != 2 {
				t.Fatalf("webhooks{%s} = %v", tc.result, n)
			}
		})
	}
}

// TestForgedWebhooks: every endpoint refuses a request not signed by
// Twilio for its URL and parameters, and reports nothing.
func TestForgedWebhooks(t *testing.T) {
	e := newEnv(t, nil)
	call := e.send(t, engine.ChannelVoice)
	endpoints := []struct {
		name, path string
		params     url.Values
	}{
		{"sms_status", "/twilio/sms/status", url.Values{"MessageSid": {"SM0123"}, "MessageStatus": {"delivered"}}},
		{"call_status", "/twilio/voice/status", url.Values{"CallSid": {call}, "CallStatus": {"completed"}}},
		{"gather", "/twilio/voice/gather", url.Values{"CallSid": {call}, "Digits": {"1"}}},
		{"inbound_sms", "/twilio/sms/inbound", url.Values{"From": {testTo}, "Body": {"1"}}},
	}
	forgeries := []struct {
		name string
		sign func(u string, p url.Values) (string, url.Values)
	}{
		{"unsigned", func(string, url.Values) (string, url.Values) { return "", nil }},
		{"wrong token", func(u string, p url.Values) (string, url.Values) {
			return twiliotest.Sign("0123456789abcdef0123456789abcdee", u, p), nil
		}},
		{"other url", func(u string, p url.Values) (string, url.Values) {
			return twiliotest.Sign(testToken, u+"?x=1", p), nil
		}},
		{"tampered", func(u string, p url.Values) (string, url.Values) {
			sig := twiliotest.Sign(testToken, u, p)
			q := url.Values{}
			for k, v := range p {
				q[k] = v
			}
			q.Set("Extra", "1")
			return sig, q
		}},
		{"garbage", func(string, url.Values) (string, url.Values) { return "not base64!", nil }},
	}
	for _, ep := range endpoints {
		for _, f := range forgeries {
			t.Run(ep.name+"/"+f.name, func(t *testing.T) {
				u := e.public + ep.path
				sig, sent := f.sign(u, ep.params)
				if sent == nil {
					sent = ep.params
				}
				status, body, err := e.tw.PostSigned(ctxT(t), u, sent, sig)
				if err != nil || status != http.StatusForbidden {
					t.Fatalf("answered %d %q, %v; want 403", status, body, err)
				}
				if len(body) > 64 {
					t.Fatalf("long 403 body %q", body)
				}
				if got := e.rep.take(); len(got) != 0 {
					t.Fatalf("reported %+v", got)
				}
			})
		}
		if n := e.webhooks(t, ep.name, "forged"); n != float64(len(forgeries)) {
			t.Fatalf("webhooks{%s,forged} = %v", ep.name, n)
		}
	}
}

func TestMalformedWebhooks(t *testing.T) {
	e := newEnv(t, nil)
	status := e.public + "/twilio/sms/status"
	for _, tc := range []struct {
		name        string
		contentType string
		body        string
		signed      url.Values // signed over these params when not nil
	}{
		{"bad escape", "application/x-www-form-urlencoded", "MessageSid=%zz", nil},
		{"too big", "application/x-www-form-urlencoded", "Body=" + strings.Repeat("x", 65<<10), nil},
		{"json", "application/json", `{"MessageSid":"SM1"}`, nil},
		{"no content type", "", "MessageSid=SM1", nil},
		{"signed without sid", "application/x-www-form-urlencoded", "MessageStatus=sent", url.Values{"MessageStatus": {"sent"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctxT(t), http.MethodPost, status, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			if tc.signed != nil {
				req.Header.Set("X-Twilio-Signature", twiliotest.Sign(testToken, status, tc.signed))
			}
			resp, err := e.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("answered %d, want 400", resp.StatusCode)
			}
			if got := e.rep.take(); len(got) != 0 {
				t.Fatalf("reported %+v", got)
			}
		})
	}
	if n := e.webhooks(t, "sms_status", "bad_request"); n != 5 {
		t.Fatalf("webhooks{sms_status,bad_request} = %v", n)
	}
}

func TestWebhookMethod(t *testing.T) {
	e := newEnv(t, nil)
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, e.public+"/twilio/sms/status", nil)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET answered %d", resp.StatusCode)
	}
}
