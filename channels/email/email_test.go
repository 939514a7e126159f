package email_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/channels/email"
	"github.com/dingmq/ding/channels/email/emailtest"
	"github.com/dingmq/ding/engine"
)

var (
	key   = []byte("0123456789abcdef0123456789abcdef")
	t0    = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	dingA = engine.ID{0xa}
)

func startSMTP(t *testing.T, cfg emailtest.Config) *emailtest.Server {
	t.Helper()
	s, err := emailtest.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newNotifier(t *testing.T, srv *emailtest.Server, mod func(*email.Config)) (*email.Notifier, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := email.Config{
		Addr: srv.Addr(), TLS: email.TLSNone, From: "Ding <ding@example.com>",
		PublicURL: "https://ding.example.com", Key: key, Registerer: reg,
		Now: func() time.Time { return t0 }, Timeout: 5 * time.Second,
	}
	if roots := srv.RootCAs(); roots != nil {
		cfg.TLSConfig = &tls.Config{RootCAs: roots}
	}
	if mod != nil {
		mod(&cfg)
	}
	n, err := email.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n, reg
}

func outbound() engine.Outbound {
	return engine.Outbound{
		Ding: dingA, Recipient: 3, Attempt: 1, Channel: engine.ChannelEmail, To: "bo@example.com",
		Text: "DING from Ana: server room on fire", Sender: "Ana", Choices: []string{"coming", "can't"},
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

var linkRE = regexp.MustCompile(`https://ding\.example\.com/email/confirm\?t=[A-Za-z0-9_-]+`)

// textPart returns the plain-text part of a multipart/alternative message.
func textPart(t *testing.T, m emailtest.Message) (subject, text string) {
	t.Helper()
	pm, err := m.Parse()
	if err != nil {
		t.Fatal(err)
	}
	ct := pm.Header.Get("Content-Type")
	_, params, _ := strings.Cut(ct, "boundary=")
	boundary := strings.Trim(strings.SplitN(params, ";", 2)[0], `"`)
	mr := multipart.NewReader(pm.Body, boundary)
	for {
		p, err := mr.NextPart()
		if err != nil {
			t.Fatalf("no text/plain part in %q: %v", ct, err)
		}
		if strings.HasPrefix(p.Header.Get("Content-Type"), "text/plain") {
			b, _ := io.ReadAll(p) // multipart.Reader decodes quoted-printable
			dec := new(strings.Builder)
			dec.Write(b)
			return pm.Header.Get("Subject"), dec.String()
		}
	}
}

func TestSendOverSTARTTLSWithAuth(t *testing.T) {
	srv := startSMTP(t, emailtest.Config{Username: "ding", Password: "s3cret", STARTTLS: true})
	n, reg := newNotifier(t, srv, func(c *email.Config) { c.TLS, c.Username, c.Password = email.TLSStartTLS, "ding", "s3cret" })
	ref, err := n.Send(ctx(t), outbound())
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := srv.Wait(ctx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	if !m.TLS || m.User != "ding" || m.From != "ding@example.com" || len(m.To) != 1 || m.To[0] != "bo@example.com" {
		t.Fatalf("message %+v", m)
	}
	subj, text := textPart(t, m)
	if subj != "DING from Ana: server room on fire" {
		t.Fatalf("subject %q", subj)
	}
	pm, _ := m.Parse()
	if got := pm.Header.Get("Message-Id"); got != ref || !strings.HasSuffix(ref, "@example.com>") {
		t.Fatalf("Message-ID %q, ref %q", got, ref)
	}
	links := linkRE.FindAllString(text, -1)
	if len(links) != 2 || !strings.Contains(text, "coming") || !strings.Contains(text, "server room on fire") {
		t.Fatalf("text:\n%s", text)
	}
	for i, l := range links {
		u, _ := url.Parse(l)
		got, err := email.VerifyLink(key, u.Query().Get("t"), t0)
		if err != nil || got.Ding != dingA || got.Recipient != 3 || got.Answer != i+1 || !got.Expires.Equal(t0.Add(engine.MaxPolicySpan)) {
			t.Fatalf("link %d: %+v, %v", i, got, err)
		}
	}
	if strings.Contains(string(m.Data), string(key)) || strings.Contains(string(m.Data), "s3cret") {
		t.Fatal("the mail holds the link key or the password")
	}
	if v := sentTotal(t, reg, "ok"); v != 1 {
		t.Fatalf("ding_email_sent_total{outcome=ok} = %v", v)
	}
}

// sentTotal reads ding_email_sent_total{outcome}.
func sentTotal(t *testing.T, reg *prometheus.Registry, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == "ding_email_sent_total" && m.GetLabel()[0].GetValue() == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestSendOverImplicitTLS(t *testing.T) {
	srv := startSMTP(t, emailtest.Config{ImplicitTLS: true})
	n, _ := newNotifier(t, srv, func(c *email.Config) { c.TLS = email.TLSImplicit })
	if _, err := n.Send(ctx(t), outbound()); err != nil {
		t.Fatal(err)
	}
	if msgs, err := srv.Wait(ctx(t), 1); err != nil || !msgs[0].TLS {
		t.Fatalf("%+v, %v", msgs, err)
	}
}

func TestStartTLSIsRequired(t *testing.T) {
	srv := startSMTP(t, emailtest.Config{}) // offers no STARTTLS
	n, _ := newNotifier(t, srv, func(c *email.Config) { c.TLS = email.TLSStartTLS })
	_, err := n.Send(ctx(t), outbound())
	var se *email.SendError
	if !errors.As(err, &se) || se.Permanent || errors.Is(err, engine.ErrRejected) {
		t.Fatalf("err %v; want a temporary SendError", err)
	}
	if len(srv.Messages()) != 0 {
		t.Fatal("sent in the clear")
	}
}

func TestSendErrors(t *testing.T) {
	t.Run("4xx is temporary", func(t *testing.T) {
		srv := startSMTP(t, emailtest.Config{})
		n, _ := newNotifier(t, srv, nil)
		srv.FailNext(451, 1)
		_, err := n.Send(ctx(t), outbound())
		var se *email.SendError
		if !errors.As(err, &se) || se.Code != 451 || se.Permanent || errors.Is(err, engine.ErrRejected) || se.ProviderDetail() != "smtp 451" {
			t.Fatalf("err %v (%+v)", err, se)
		}
		if strings.Contains(err.Error(), "bo@example.com") {
			t.Fatalf("error text has the address: %v", err)
		}
		if _, err := n.Send(ctx(t), outbound()); err != nil {
			t.Fatalf("after the 451: %v", err)
		}
	})
	t.Run("5xx is permanent", func(t *testing.T) {
		srv := startSMTP(t, emailtest.Config{})
		n, _ := newNotifier(t, srv, nil)
		srv.FailNext(550, 1)
		_, err := n.Send(ctx(t), outbound())
		var se *email.SendError
		if !errors.As(err, &se) || se.Code != 550 || !se.Permanent || !errors.Is(err, engine.ErrRejected) {
			t.Fatalf("err %v", err)
		}
		if strings.Contains(err.Error(), "bo@example.com") {
			t.Fatalf("error text has the address: %v", err)
		}
	})
	t.Run("a wrong password is permanent", func(t *testing.T) {
		srv := startSMTP(t, emailtest.Config{Username: "ding", Password: "right"})
		n, _ := newNotifier(t, srv, func(c *email.Config) { c.Username, c.Password = "ding", "wrong" })
		_, err := n.Send(ctx(t), outbound())
		var se *email.SendError
		if !errors.As(err, &se) || se.Code != 535 || !se.Permanent {
			t.Fatalf("err %v", err)
		}
		if strings.Contains(err.Error(), "wrong") {
			t.Fatalf("error text has the password: %v", err)
		}
	})
	t.Run("connection refused is temporary", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		n, err := email.New(email.Config{Addr: addr, TLS: email.TLSNone, From: "ding@example.com", PublicURL: "http://127.0.0.1", Key: key})
		if err != nil {
			t.Fatal(err)
		}
		_, err = n.Send(ctx(t), outbound())
		var se *email.SendError
		if !errors.As(err, &se) || se.Code != 0 || se.Permanent || se.ProviderDetail() != "mail server unreachable" {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("not configured", func(t *testing.T) {
		n, err := email.New(email.Config{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.Send(ctx(t), outbound()); !errors.Is(err, engine.ErrNotConfigured) {
			t.Fatalf("err %v", err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	ok := email.Config{Addr: "smtp.example.com:587", From: "Ding <ding@example.com>", PublicURL: "https://ding.example.com", Key: key}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*email.Config){
		"no port":              func(c *email.Config) { c.Addr = "smtp.example.com" },
		"plain text off-host":  func(c *email.Config) { c.TLS = email.TLSNone },
		"unknown TLS mode":     func(c *email.Config) { c.TLS = "ssl" },
		"bad from":             func(c *email.Config) { c.From = "ding" },
		"public URL with path": func(c *email.Config) { c.PublicURL = "https://ding.example.com/x" },
		"short key":            func(c *email.Config) { c.Key = key[:8] },
		"password alone":       func(c *email.Config) { c.Password = "x" },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
}

func TestLinks(t *testing.T) {
	l := email.Link{Ding: dingA, Recipient: 7, Answer: 2, Expires: t0}
	tok := email.SignLink(key, l)
	if got, err := email.VerifyLink(key, tok, t0); err != nil || got != l {
		t.Fatalf("%+v, %v", got, err)
	}
	if _, err := email.VerifyLink(key, tok, t0.Add(time.Second)); !errors.Is(err, email.ErrExpiredLink) {
		t.Fatalf("expired: %v", err)
	}
	other := []byte("another key, also thirty-two byt")
	b := []byte(tok)
	b[5] ^= 1
	for name, bad := range map[string]string{
		"other key": email.SignLink(other, l), "altered": string(b), "cut": tok[:len(tok)-2], "empty": "", "junk": "!!",
		"other answer": swapAnswer(tok),
	} {
		if _, err := email.VerifyLink(key, bad, t0); !errors.Is(err, email.ErrForgedLink) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// swapAnswer changes a token's answer and keeps its tag.
func swapAnswer(tok string) string {
	other := email.SignLink(key, email.Link{Ding: dingA, Recipient: 7, Answer: 1, Expires: t0})
	return other[:len(other)-22] + tok[len(tok)-22:]
}

func TestKeyFile(t *testing.T) {
	p := t.TempDir() + "/email-link.key"
	k1, err := email.LoadOrCreateKey(p)
	if err != nil || len(k1) != email.KeySize {
		t.Fatalf("%d bytes, %v", len(k1), err)
	}
	k2, err := email.LoadOrCreateKey(p)
	if err != nil || string(k1) != string(k2) {
		t.Fatal("the key changed when read again")
	}
}

// fakeConfirmer records confirmations as the engine would: once.
type fakeConfirmer struct {
	mu        sync.Mutex
	confirmed map[int]int // recipient -> answer
}

func (f *fakeConfirmer) ConfirmByLink(_ context.Context, id engine.ID, rcpt, answer int) (engine.ConfirmResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id != dingA {
		return engine.ConfirmResult{}, engine.ErrNotFound
	}
	if a, ok := f.confirmed[rcpt]; ok {
		return engine.ConfirmResult{Already: true, Answer: a, By: engine.ChannelEmail}, nil
	}
	f.confirmed[rcpt] = answer
	return engine.ConfirmResult{Answer: answer, Choice: []string{"", "coming", "can't"}[answer], By: engine.ChannelEmail, At: t0}, nil
}

func (f *fakeConfirmer) Message(id engine.ID) (*engine.Message, error) {
	if id != dingA {
		return nil, engine.ErrNotFound
	}
	return &engine.Message{ID: id, Kind: engine.KindDing, Choices: []string{"coming", "can't"}}, nil
}

func TestHandler(t *testing.T) {
	srv := startSMTP(t, emailtest.Config{})
	n, _ := newNotifier(t, srv, nil)
	fc := &fakeConfirmer{confirmed: map[int]int{}}
	h := n.Handler(fc)
	tok := email.SignLink(key, email.Link{Ding: dingA, Recipient: 3, Answer: 2, Expires: t0.Add(time.Hour)})
	do := func(method, token string, asJSON bool) (int, map[string]any, string) {
		var r *http.Request
		if method == http.MethodGet {
			r = httptest.NewRequest(method, email.PathConfirm+"?t="+url.QueryEscape(token), nil)
		} else {
			r = httptest.NewRequest(method, email.PathConfirm, strings.NewReader(url.Values{"t": {token}}.Encode()))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		if asJSON {
			r.Header.Set("Accept", "application/json")
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		var body map[string]any
		if asJSON {
			json.Unmarshal(w.Body.Bytes(), &body)
		}
		return w.Code, body, w.Body.String()
	}
	// GET shows a page and records nothing.
	code, _, page := do(http.MethodGet, tok, false)
	if code != 200 || !strings.Contains(page, `<form method="post"`) || !strings.Contains(page, "can&#39;t") || len(fc.confirmed) != 0 {
		t.Fatalf("GET: %d %s (confirmed %v)", code, page, fc.confirmed)
	}
	// POST confirms, once.
	code, body, _ := do(http.MethodPost, tok, true)
	if code != 200 || body["answer"] != 2.0 || body["choice"] != "can't" || fc.confirmed[3] != 2 {
		t.Fatalf("POST: %d %v", code, body)
	}
	code, body, _ = do(http.MethodPost, tok, true)
	if code != http.StatusGone || body["error"].(map[string]any)["code"] != "LINK_USED" {
		t.Fatalf("second POST: %d %v", code, body)
	}
	code, _, page = do(http.MethodPost, tok, false)
	if code != http.StatusGone || !strings.Contains(page, "Already answered") {
		t.Fatalf("second POST, HTML: %d %s", code, page)
	}
	forged := email.SignLink([]byte("another key, also thirty-two byt"), email.Link{Ding: dingA, Recipient: 4, Answer: 1, Expires: t0.Add(time.Hour)})
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		code, body, _ = do(m, forged, true)
		if code != http.StatusForbidden || body["error"].(map[string]any)["code"] != "LINK_FORGED" {
			t.Fatalf("%s forged: %d %v", m, code, body)
		}
	}
	expired := email.SignLink(key, email.Link{Ding: dingA, Recipient: 4, Answer: 1, Expires: t0.Add(-time.Second)})
	code, body, _ = do(http.MethodPost, expired, true)
	if code != http.StatusGone || body["error"].(map[string]any)["code"] != "LINK_EXPIRED" {
		t.Fatalf("expired: %d %v", code, body)
	}
	gone := email.SignLink(key, email.Link{Ding: engine.ID{0xb}, Recipient: 4, Answer: 1, Expires: t0.Add(time.Hour)})
	code, body, _ = do(http.MethodPost, gone, true)
	if code != http.StatusNotFound {
		t.Fatalf("unknown DING: %d %v", code, body)
	}
	if _, ok := fc.confirmed[4]; ok {
		t.Fatal("a refused link confirmed")
	}
	code, _, _ = do(http.MethodGet, "", true)
	if code != http.StatusBadRequest {
		t.Fatalf("no token: %d", code)
	}
}
