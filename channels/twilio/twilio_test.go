package twilio_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/channels/twilio/twiliotest"
	"github.com/dingmq/ding/engine"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testSID   = "AC0123456789abcdef0123456789abcdef"
	testToken = "0123456789abcdef0123456789abcdef"
	testFrom  = "+15005550006"
	testTo    = "+15551234567"
)

// report is one call the webhooks made to fakeReports.
type report struct {
	method string // "status", "digits" or "inbound"
	ref    string
	ev     engine.ProviderEvent
	detail string
	digits string
	from   string
	body   string
}

// fakeReports records reports and answers err.
type fakeReports struct {
	mu      sync.Mutex
	reports []report // guarded by mu
	err     error    // guarded by mu
}

func (f *fakeReports) add(r report) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = append(f.reports, r)
	return f.err
}

func (f *fakeReports) ProviderStatus(_ context.Context, ref string, ev engine.ProviderEvent, detail string) error {
	return f.add(report{method: "status", ref: ref, ev: ev, detail: detail})
}

func (f *fakeReports) ProviderDigits(_ context.Context, ref, digits string) error {
	return f.add(report{method: "digits", ref: ref, digits: digits})
}

func (f *fakeReports) InboundSMS(_ context.Context, from, body string) error {
	return f.add(report{method: "inbound", from: from, body: body})
}

func (f *fakeReports) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// take returns and forgets the reports so far.
func (f *fakeReports) take() []report {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.reports
	f.reports = nil
	return r
}

// env is a Notifier talking to a fake Twilio, with its webhooks served on
// loopback at PublicURL.
type env struct {
	tw     *twiliotest.Server
	n      *twilio.Notifier
	rep    *fakeReports
	public string // the webhooks' base URL
	reg    *prometheus.Registry
	client *http.Client // for hand-made webhook requests
}

func newEnv(t testing.TB, mod func(*twilio.Config)) *env {
	t.Helper()
	tw := twiliotest.NewServer(testSID, testToken)
	t.Cleanup(tw.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	mux := http.NewServeMux()
	hook := httptest.NewServer(mux)
	t.Cleanup(hook.Close)

	e := &env{tw: tw, rep: &fakeReports{}, public: hook.URL, reg: prometheus.NewRegistry(), client: &http.Client{Transport: tr}}
	cfg := twilio.Config{
		AccountSID: testSID,
		AuthToken:  testToken,
		From:       testFrom,
		PublicURL:  hook.URL + "/",
		APIURL:     tw.URL(),
		Timeout:    2 * time.Second,
		HTTPClient: &http.Client{Transport: tr},
		Registerer: e.reg,
	}
	if mod != nil {
		mod(&cfg)
	}
	n, err := twilio.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.n = n
	mux.Handle("/twilio/", n.Handler(e.rep))
	return e
}

func outbound(ch engine.Channel, text string, choices ...string) engine.Outbound {
	return engine.Outbound{Attempt: 1, Channel: ch, To: testTo, Text: text, Choices: choices}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// counter returns the value of the counter name with the labels.
func counter(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m, labels) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func matches(m *dto.Metric, labels map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := labels[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(labels)
}

func TestSendSMS(t *testing.T) {
	for _, tc := range []struct {
		name    string
		text    string
		choices []string
		want    string
	}{
		{"confirm", "Server room is on fire", nil, "Server room is on fire\nReply 1 or OK to confirm."},
		{"menu", "Standup at 10?", []string{"attend", "decline"}, "Standup at 10?\nReply 1 for attend, 2 for decline."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			ref, err := e.n.Send(ctxT(t), outbound(engine.ChannelSMS, tc.text, tc.choices...))
			if err != nil {
				t.Fatal(err)
			}
			reqs := e.tw.Requests()
			if len(reqs) != 1 {
				t.Fatalf("fake saw %d requests", len(reqs))
			}
			r := reqs[0]
			if r.Kind != "sms" || r.SID != ref || !strings.HasPrefix(ref, "SM") || r.To != testTo || r.From != testFrom {
				t.Fatalf("ref %q, request %+v", ref, r)
			}
			if r.Body != tc.want {
				t.Fatalf("body %q, want %q", r.Body, tc.want)
			}
			if r.StatusCallback != e.public+"/twilio/sms/status" {
				t.Fatalf("StatusCallback %q", r.StatusCallback)
			}
			if got := counter(t, e.reg, "ding_twilio_requests_total", map[string]string{"kind": "sms", "status": "ok"}); got != 1 {
				t.Fatalf("requests ok = %v", got)
			}
		})
	}
}

func TestPlaceCall(t *testing.T) {
	for _, tc := range []struct {
		name    string
		text    string
		choices []string
		say     string // as it appears in the TwiML
	}{
		{"confirm", `Fire & "smoke" in <rack 4>`, nil,
			`<Say>Fire &amp; &#34;smoke&#34; in &lt;rack 4&gt;. Press 1 to confirm.</Say>`},
		{"menu", "Standup at 10?", []string{"attend", "decline"},
			`<Say>Standup at 10? Press 1 for attend. Press 2 for decline.</Say>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			ref, err := e.n.Send(ctxT(t), outbound(engine.ChannelVoice, tc.text, tc.choices...))
			if err != nil {
				t.Fatal(err)
			}
			r, ok := e.tw.Lookup(ref)
			if !ok || r.Kind != "call" || !strings.HasPrefix(ref, "CA") || r.To != testTo || r.From != testFrom {
				t.Fatalf("ref %q, request %+v", ref, r)
			}
			want := `<Response><Gather numDigits="1" timeout="10" action="` + e.public + `/twilio/voice/gather" method="POST">` +
				tc.say + `</Gather><Say>No answer was recorded. Goodbye.</Say></Response>`
			if r.Twiml != want {
				t.Fatalf("twiml\n%s\nwant\n%s", r.Twiml, want)
			}
			if r.GatherAction != e.public+"/twilio/voice/gather" || r.StatusCallback != e.public+"/twilio/voice/status" {
				t.Fatalf("gather %q, status callback %q", r.GatherAction, r.StatusCallback)
			}
			if got := strings.Join(r.StatusCallbackEvents, ","); got != "initiated,ringing,answered,completed" {
				t.Fatalf("StatusCallbackEvent %q", got)
			}
		})
	}
}

func TestSendErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mod      func(*twilio.Config)
		fail     int // FailNext status; 0 for none
		ch       engine.Channel
		text     string
		to       string
		rejected bool
		sent     bool // whether the request reached the fake
	}{
		{name: "500", fail: 500, ch: engine.ChannelSMS, sent: true},
		{name: "503 call", fail: 503, ch: engine.ChannelVoice, sent: true},
		{name: "429", fail: 429, ch: engine.ChannelSMS, sent: true},
		{name: "408", fail: 408, ch: engine.ChannelVoice, sent: true},
		{name: "400", fail: 400, ch: engine.ChannelSMS, sent: true, rejected: true},
		{name: "400 call", fail: 400, ch: engine.ChannelVoice, sent: true, rejected: true},
		{name: "404", fail: 404, ch: engine.ChannelSMS, sent: true, rejected: true},
		{name: "wrong token", mod: func(c *twilio.Config) { c.AuthToken = "wrong" }, ch: engine.ChannelSMS, sent: true, rejected: true},
		{name: "number not E.164", ch: engine.ChannelSMS, to: "5551234567", rejected: true},
		{name: "nothing listening", mod: func(c *twilio.Config) { c.APIURL = "http://127.0.0.1:1" }, ch: engine.ChannelSMS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.mod)
			if tc.fail != 0 {
				e.tw.FailNext(1, tc.fail)
			}
			o := outbound(tc.ch, "secret text")
			if tc.text != "" {
				o.Text = tc.text
			}
			if tc.to != "" {
				o.To = tc.to
			}
			ref, err := e.n.Send(ctxT(t), o)
			if err == nil {
				t.Fatalf("sent as %q", ref)
			}
			if errors.Is(err, engine.ErrRejected) != tc.rejected || errors.Is(err, engine.ErrNotConfigured) {
				t.Fatalf("err %v: rejected = %v, want %v", err, errors.Is(err, engine.ErrRejected), tc.rejected)
			}
			if strings.Contains(err.Error(), o.To) || strings.Contains(err.Error(), "secret") {
				t.Fatalf("error reveals the number or the text: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "twilio: ") {
				t.Fatalf("error %q does not name its operation", err)
			}
			if e.tw.Count("") != 0 {
				t.Fatalf("fake accepted a request")
			}
			status := "error"
			if tc.rejected {
				status = "rejected"
			}
			kind := map[engine.Channel]string{engine.ChannelSMS: "sms", engine.ChannelVoice: "call"}[tc.ch]
			if got := counter(t, e.reg, "ding_twilio_requests_total", map[string]string{"kind": kind, "status": status}); got != 1 {
				t.Fatalf("requests_total{%s,%s} = %v", kind, status, got)
			}
		})
	}
}

// TestTwilioErrorHidesNumber: Twilio's own messages quote the number; the
// error keeps the status and code only.
func TestTwilioErrorHidesNumber(t *testing.T) {
	e := newEnv(t, nil)
	e.tw.FailNext(1, 400)
	_, err := e.n.Send(ctxT(t), outbound(engine.ChannelSMS, "x"))
	if err == nil || !strings.Contains(err.Error(), "HTTP 400") || !strings.Contains(err.Error(), "21211") || strings.Contains(err.Error(), "injected") {
		t.Fatalf("err = %v", err)
	}
}

func TestSendTimeout(t *testing.T) {
	t.Run("Config.Timeout", func(t *testing.T) {
		e := newEnv(t, func(c *twilio.Config) { c.Timeout = 200 * time.Millisecond })
		e.tw.HangNext(1)
		_, err := e.n.Send(ctxT(t), outbound(engine.ChannelVoice, "x"))
		if err == nil || errors.Is(err, engine.ErrRejected) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want a deadline that is not a rejection", err)
		}
		// The fake answers again once the hang is used up.
		if _, err := e.n.Send(ctxT(t), outbound(engine.ChannelVoice, "x")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("caller's context", func(t *testing.T) {
		e := newEnv(t, nil)
		e.tw.HangNext(1)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := e.n.Send(ctx, outbound(engine.ChannelSMS, "x"))
		if err == nil || errors.Is(err, engine.ErrRejected) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the caller's deadline", err)
		}
	})
}

func TestNotConfigured(t *testing.T) {
	e := newEnv(t, func(c *twilio.Config) { c.AccountSID, c.AuthToken = "", "" })
	if e.n.Configured() {
		t.Fatal("Configured with no credentials")
	}
	for _, ch := range []engine.Channel{engine.ChannelSMS, engine.ChannelVoice, engine.ChannelInApp} {
		if _, err := e.n.Send(ctxT(t), outbound(ch, "x")); !errors.Is(err, engine.ErrNotConfigured) {
			t.Fatalf("%s: err = %v, want ErrNotConfigured", ch, err)
		}
	}
	status, _, err := e.tw.Post(ctxT(t), e.public+"/twilio/sms/inbound", url.Values{"From": {testTo}, "Body": {"1"}})
	if err != nil || status != http.StatusNotFound {
		t.Fatalf("webhook: %d, %v; want 404", status, err)
	}
	if r := e.rep.take(); len(r) != 0 {
		t.Fatalf("reported %+v", r)
	}
	if e.tw.Count("") != 0 {
		t.Fatal("fake saw a request")
	}
}

func TestInAppIsNotTwilios(t *testing.T) {
	e := newEnv(t, nil)
	if _, err := e.n.Send(ctxT(t), outbound(engine.ChannelInApp, "x")); !errors.Is(err, engine.ErrNotConfigured) {
		t.Fatalf("err = %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	good := twilio.Config{AccountSID: testSID, AuthToken: testToken, From: testFrom, PublicURL: "https://ding.example.com"}
	for _, tc := range []struct {
		name string
		mod  func(*twilio.Config)
		ok   bool
	}{
		{"good", func(*twilio.Config) {}, true},
		{"not configured", func(c *twilio.Config) { *c = twilio.Config{} }, true},
		{"trailing slash", func(c *twilio.Config) { c.PublicURL += "/" }, true},
		{"api url", func(c *twilio.Config) { c.APIURL = "http://127.0.0.1:8080" }, true},
		{"token alone", func(c *twilio.Config) { c.AccountSID = "" }, false},
		{"sid alone", func(c *twilio.Config) { c.AuthToken = "" }, false},
		{"token with symbols", func(c *twilio.Config) { c.AuthToken = "a:b" }, false},
		{"from without plus", func(c *twilio.Config) { c.From = "15005550006" }, false},
		{"from too short", func(c *twilio.Config) { c.From = "+12345" }, false},
		{"no public url", func(c *twilio.Config) { c.PublicURL = "" }, false},
		{"relative public url", func(c *twilio.Config) { c.PublicURL = "/hooks" }, false},
		{"ftp public url", func(c *twilio.Config) { c.PublicURL = "ftp://ding.example.com" }, false},
		{"public url with path", func(c *twilio.Config) { c.PublicURL = "https://ding.example.com/ding" }, false},
		{"api url with path", func(c *twilio.Config) { c.APIURL = "http://127.0.0.1:8080/v1" }, false},
		{"negative timeout", func(c *twilio.Config) { c.Timeout = -1 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mod(&c)
			err := c.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if _, err := twilio.New(c); (err == nil) != tc.ok {
				t.Fatalf("New() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestMetricsRegisterOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := twilio.Config{Registerer: reg}
	if _, err := twilio.New(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := twilio.New(cfg); err == nil {
		t.Fatal("second New on the same registry registered the same metrics")
	}
}

// A long DING text is shortened to fit Twilio's limits, not refused: the
// DING must still escalate.
func TestLongTextIsShortenedToFit(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	for _, ch := range []engine.Channel{engine.ChannelSMS, engine.ChannelVoice} {
		o := outbound(ch, strings.Repeat("&ü", 3000))
		if _, err := e.n.Send(ctx, o); err != nil {
			t.Fatalf("%v: %v", ch, err)
		}
	}
	rs := e.tw.Requests()
	if len(rs) != 2 {
		t.Fatalf("%d requests", len(rs))
	}
	if n := utf8.RuneCountInString(rs[0].Body); n > 1600 || !strings.Contains(rs[0].Body, "…\nReply") {
		t.Fatalf("sms body has %d runes: %.80q…", n, rs[0].Body)
	}
	if n := len(rs[1].Twiml); n > 4000 || !strings.Contains(rs[1].Twiml, "…") || !strings.Contains(rs[1].Twiml, "Press 1") {
		t.Fatalf("twiml has %d runes", n)
	}
}
