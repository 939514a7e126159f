package node_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/email"
	"github.com/dingmq/ding/channels/email/emailtest"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// The e-mail step end to end: a real node (Pebble in a temp dir, the
// fake clock), the real go-mail client, and a fake SMTP server on
// loopback (channels/email/emailtest) asking for STARTTLS and AUTH PLAIN.

type emailNode struct {
	*dingNode
	smtp *emailtest.Server
}

func startEmailNode(t *testing.T, mod func(*node.Config)) *emailNode {
	t.Helper()
	srv, err := emailtest.Start(emailtest.Config{Username: "ding", Password: "smtp-pw", STARTTLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	d := startDingNode(t, func(c *node.Config) {
		c.Email = email.Config{
			Addr: srv.Addr(), TLS: email.TLSStartTLS, Username: "ding", Password: "smtp-pw",
			From: "Ding <ding@example.com>", PublicURL: "http://" + c.HTTPAddr,
			TLSConfig: &tls.Config{RootCAs: srv.RootCAs()}, Timeout: 5 * time.Second,
		}
		if mod != nil {
			mod(c)
		}
	})
	for _, u := range []fanout.User{{ID: "cy", Name: "Cy"}, {ID: "dee", Name: "Dee", Email: "dee@example.com"}} {
		if _, err := d.n.Directory().PutUser(u); err != nil {
			t.Fatal(err)
		}
	}
	return &emailNode{d, srv}
}

func (d *emailNode) waitMails(t *testing.T, n int) []emailtest.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msgs, err := d.smtp.Wait(ctx, n)
	if err != nil {
		t.Fatalf("waiting for %d mails: %v", n, err)
	}
	return msgs
}

var confirmLinkRE = regexp.MustCompile(`http://[0-9.:]+/email/confirm\?t=[A-Za-z0-9_-]+`)

// mailLinks returns a mail's subject and its confirmation links, from its
// plain-text part.
func mailLinks(t *testing.T, m emailtest.Message) (string, []string) {
	t.Helper()
	pm, err := m.Parse()
	if err != nil {
		t.Fatal(err)
	}
	_, params, err := mime.ParseMediaType(pm.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	mr := multipart.NewReader(pm.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err != nil {
			t.Fatalf("no text part: %v", err)
		}
		if strings.HasPrefix(p.Header.Get("Content-Type"), "text/plain") {
			b, _ := io.ReadAll(p)
			return pm.Header.Get("Subject"), confirmLinkRE.FindAllString(string(b), -1)
		}
	}
}

// follow requests a link as a browser would (GET) or submits its form
// (POST), asking for JSON when asJSON.
func follow(t *testing.T, method, link string, asJSON bool) (int, map[string]any, string) {
	t.Helper()
	var req *http.Request
	if method == http.MethodGet {
		req, _ = http.NewRequest(method, link, nil)
	} else {
		u, _ := url.Parse(link)
		form := url.Values{"t": {u.Query().Get("t")}}
		u.RawQuery = ""
		req, _ = http.NewRequest(method, u.String(), strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if asJSON {
		req.Header.Set("Accept", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if asJSON {
		json.Unmarshal(b, &out)
	}
	return resp.StatusCode, out, string(b)
}

func linkErr(out map[string]any) any {
	e, _ := out["error"].(map[string]any)
	return e["code"]
}

func TestDingByEmailEndToEnd(t *testing.T) {
	d := startEmailNode(t, func(c *node.Config) { c.Email.LinkTTL = time.Hour })
	// The address is set through the API, checked first.
	if code, out, _ := d.api(t, "PATCH", "/v1/users/bo", map[string]any{"email": "Bo <bo@example.com>"}); code != http.StatusBadRequest ||
		!strings.Contains(out["error"].(map[string]any)["detail"].(string), "like ana@example.com") {
		t.Fatalf("PATCH a bad address: %d %v", code, out)
	}
	if code, out, _ := d.api(t, "PATCH", "/v1/users/bo", map[string]any{"email": "bo@example.com"}); code != http.StatusOK || out["email"] != "bo@example.com" {
		t.Fatalf("PATCH email: %d %v", code, out)
	}
	id := d.ding(t, map[string]any{"to": []string{"bo", "dee"}, "text": "Deploy is stuck", "policy": "inapp,email@1m,sms@5m", "choices": []string{"attend", "decline"}})
	_, _, raw := d.recipient(t, id, 0)
	if raw["next_step"] != t0.Add(time.Minute).Format(time.RFC3339) {
		t.Fatalf("bo's next step at %v, want the e-mail step at %v", raw["next_step"], t0.Add(time.Minute))
	}
	d.clock.Advance(59 * time.Second)
	if n := len(d.smtp.Messages()); n != 0 {
		t.Fatalf("%d mails before the step's time", n)
	}
	d.clock.Advance(time.Second)
	msgs := d.waitMails(t, 2)
	d.waitEvent(t, id, 0, "email_sent")
	d.waitEvent(t, id, 1, "email_sent")
	byTo := map[string]emailtest.Message{}
	for _, m := range msgs {
		if len(m.To) != 1 || !m.TLS || m.User != "ding" {
			t.Fatalf("mail %+v: want one recipient, over TLS, authenticated", m)
		}
		if strings.Contains(string(m.Data), "dee@example.com") && strings.Contains(string(m.Data), "bo@example.com") {
			t.Fatal("a mail names the other recipient")
		}
		byTo[m.To[0]] = m
	}
	subject, links := mailLinks(t, byTo["bo@example.com"])
	if subject != "DING from Ana: Deploy is stuck" || len(links) != 2 {
		t.Fatalf("subject %q, links %v", subject, links)
	}
	_, deeLinks := mailLinks(t, byTo["dee@example.com"])

	// The link shows a page and records nothing; its form confirms.
	code, _, page := follow(t, http.MethodGet, links[1], false)
	if code != 200 || !strings.Contains(page, "decline") || !strings.Contains(page, `method="post"`) {
		t.Fatalf("GET link: %d %s", code, page)
	}
	if st, _, _ := d.recipient(t, id, 0); st != engine.StatusPending {
		t.Fatalf("GET moved bo to %s", st)
	}
	// A forged link (another answer, the tag kept) changes nothing.
	forged := links[0][:len(links[0])-22] + links[1][len(links[1])-22:]
	if code, out, _ := follow(t, http.MethodPost, forged, true); code != http.StatusForbidden || linkErr(out) != "LINK_FORGED" {
		t.Fatalf("forged link: %d %v", code, out)
	}
	code, out, _ := follow(t, http.MethodPost, links[1], true)
	if code != 200 || out["choice"] != "decline" || out["answer"] != 2.0 {
		t.Fatalf("POST link: %d %v", code, out)
	}
	st, evs, raw := d.recipient(t, id, 0)
	if st != engine.StatusConfirmed || raw["choice"] != "decline" || raw["reached_by"] != "email" || raw["next_step"] != nil {
		t.Fatalf("bo = %v", raw)
	}
	if want := []string{"sent", "sending", "email_sent", "confirmed"}; !slices.Equal(evs, want) {
		t.Fatalf("bo's ledger %v, want %v", evs, want)
	}
	// Used: a second use, of this link or the other, is refused and
	// changes nothing.
	for _, l := range links {
		if code, out, _ := follow(t, http.MethodPost, l, true); code != http.StatusGone || linkErr(out) != "LINK_USED" {
			t.Fatalf("second use: %d %v", code, out)
		}
	}
	if code, _, page := follow(t, http.MethodPost, links[0], false); code != http.StatusGone || !strings.Contains(page, "Already answered") {
		t.Fatalf("second use, HTML: %d %s", code, page)
	}
	if _, _, raw := d.recipient(t, id, 0); raw["choice"] != "decline" {
		t.Fatalf("a used link changed the answer: %v", raw)
	}

	// The SMS step after bo's confirmation is not sent; dee's is (dee has
	// no phone: no_phone), and dee's link has expired an hour on.
	d.clock.Advance(5 * time.Minute)
	d.waitEvent(t, id, 1, "no_phone")
	if n := d.twilio.Count(""); n != 0 {
		t.Fatalf("%d Twilio requests; bo confirmed before the SMS step", n)
	}
	d.clock.Advance(time.Hour)
	if code, out, _ := follow(t, http.MethodPost, deeLinks[0], true); code != http.StatusGone || linkErr(out) != "LINK_EXPIRED" {
		t.Fatalf("expired link: %d %v", code, out)
	}
	if st, _, _ := d.recipient(t, id, 1); st != engine.StatusPending {
		t.Fatalf("an expired link moved dee to %s", st)
	}
	if n := len(d.smtp.Messages()); n != 2 {
		t.Fatalf("%d mails, want exactly 2", n)
	}
	metrics := scrape(t, d.dingNode)
	for _, want := range []string{
		`ding_email_sent_total{outcome="ok"} 2`,
		`ding_escalation_steps_total{channel="email",outcome="sent"} 2`,
		`ding_email_links_total{result="confirmed"} 1`,
		`ding_email_links_total{result="used"} 3`,
		`ding_email_links_total{result="forged"} 1`,
		`ding_email_links_total{result="expired"} 1`,
		`ding_ding_time_to_confirm_seconds_count{channel="email"} 1`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func scrape(t *testing.T, d *dingNode) string {
	t.Helper()
	resp, err := http.Get("http://" + d.n.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestReadBeforeTheEmailStepStopsIt(t *testing.T) {
	d := startEmailNode(t, nil)
	id := d.ding(t, map[string]any{"to": []string{"dee"}, "text": "Standup moved", "policy": "inapp,email@1m until=read"})
	if err := d.n.Engine().Read(context.Background(), "dee", mustID(t, id)); err != nil {
		t.Fatal(err)
	}
	d.waitEvent(t, id, 0, "read")
	if st, _, raw := d.recipient(t, id, 0); st != engine.StatusRead || raw["next_step"] != nil {
		t.Fatalf("dee = %v", raw)
	}
	if n := d.n.Engine().PendingSteps(); n != 0 {
		t.Fatalf("%d steps pending after the read", n)
	}
	d.clock.Advance(2 * time.Minute)
	if n := len(d.smtp.Messages()); n != 0 {
		t.Fatalf("%d mails after the read", n)
	}
}

func TestEmailFailuresInTheLedger(t *testing.T) {
	d := startEmailNode(t, nil)
	// A 4xx is retried with backoff.
	d.smtp.FailNext(451, 1)
	id := d.ding(t, map[string]any{"to": []string{"dee"}, "text": "Backup failed", "policy": "email"})
	evs := d.waitEvent(t, id, 0, "retry")
	_, _, raw := d.recipient(t, id, 0)
	failed := raw["events"].([]any)[2].(map[string]any)
	if failed["event"] != "email_failed" || failed["detail"] != "smtp 451; temporary" {
		t.Fatalf("ledger %v: %v", evs, failed)
	}
	d.clock.Advance(5 * time.Second)
	evs = d.waitEvent(t, id, 0, "email_sent")
	if want := []string{"sent", "sending", "email_failed", "retry", "sending", "email_sent"}; !slices.Equal(evs, want) {
		t.Fatalf("ledger %v, want %v", evs, want)
	}
	if n, r := len(d.waitMails(t, 1)), d.smtp.Refused(); n != 1 || r != 1 {
		t.Fatalf("%d mails accepted, %d refused", n, r)
	}

	// A 5xx is final.
	d.smtp.FailNext(550, 1)
	id2 := d.ding(t, map[string]any{"to": []string{"dee"}, "text": "Disk full", "policy": "email"})
	d.waitEvent(t, id2, 0, "email_failed")
	_, evs, raw = d.recipient(t, id2, 0)
	last := raw["events"].([]any)[len(evs)-1].(map[string]any)
	if last["detail"] != "smtp 550; permanent, not retried" || raw["next_step"] != nil {
		t.Fatalf("ledger %v, last %v, next step %v", evs, last, raw["next_step"])
	}

	// No address: said in the ledger, nothing sent.
	id3 := d.ding(t, map[string]any{"to": []string{"cy"}, "text": "Fire drill", "policy": "inapp,email"})
	d.waitEvent(t, id3, 0, "no_email")
	if n := len(d.smtp.Messages()); n != 1 {
		t.Fatalf("%d mails, want the first DING's only", n)
	}
	if !strings.Contains(scrape(t, d.dingNode), `ding_email_sent_total{outcome="rejected"} 1`+"\n") {
		t.Error("/metrics lacks the rejected send")
	}

	// The server gone (connection refused): temporary, retried.
	if err := d.smtp.Close(); err != nil {
		t.Fatal(err)
	}
	id4 := d.ding(t, map[string]any{"to": []string{"dee"}, "text": "Mail is down", "policy": "email"})
	d.waitEvent(t, id4, 0, "retry")
	_, _, raw = d.recipient(t, id4, 0)
	if ev := raw["events"].([]any)[2].(map[string]any); ev["event"] != "email_failed" || ev["detail"] != "mail server unreachable; temporary" {
		t.Fatalf("after a refused connection: %v", ev)
	}
}

// With partitions, a link reaches the DING's home (the sender's
// partition) although it is served by any; the confirmation is relayed to
// the recipient's partition like any other.
func TestPartitionsEmailLinkFindsTheHome(t *testing.T) {
	d := startEmailNode(t, func(c *node.Config) { c.Partitions = testPartitions })
	wantPartitions(t, d.n, map[string]int{"ana": 2, "bo": 0})
	if code, out, _ := d.api(t, "PATCH", "/v1/users/bo", map[string]any{"email": "bo@example.com"}); code != http.StatusOK {
		t.Fatalf("PATCH email: %d %v", code, out)
	}
	id := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "Deploy is stuck", "policy": "email,sms@5m", "choices": []string{"attend", "decline"}})
	_, links := mailLinks(t, d.waitMails(t, 1)[0])
	if code, out, _ := follow(t, http.MethodPost, links[0], true); code != http.StatusOK || out["choice"] != "attend" {
		t.Fatalf("POST link: %d %v", code, out)
	}
	if st, _, raw := d.recipient(t, id, 0); st != engine.StatusConfirmed || raw["reached_by"] != "email" {
		t.Fatalf("bo = %v", raw)
	}
	if code, out, _ := follow(t, http.MethodPost, links[1], true); code != http.StatusGone || linkErr(out) != "LINK_USED" {
		t.Fatalf("second use: %d %v", code, out)
	}
	home := d.n.Engines()[2]
	nodetest.WaitFor(t, "bo's receipt confirmed in his partition", 5*time.Second, func() bool {
		rs, err := d.n.Engines()[0].Receipts(mustID(t, id))
		return err == nil && len(rs) == 1 && rs[0].State == engine.StateConfirmed
	})
	d.clock.Advance(10 * time.Minute)
	if n := home.PendingSteps(); n != 0 {
		t.Fatalf("%d steps pending at the home after the confirmation", n)
	}
	if n := d.twilio.Count(""); n != 0 {
		t.Fatalf("%d Twilio requests after the confirmation", n)
	}
}

// Re-DINGing an announcement with an email step reaches those without
// the app by mail, each mail naming only its recipient.
func TestAnnouncementRedingByEmail(t *testing.T) {
	d := startEmailNode(t, nil)
	code, out, _ := d.api(t, "POST", "/v1/announcements", map[string]any{"from": "ana", "to": "all", "text": "Office closed Friday", "confirm": true})
	if code != http.StatusCreated {
		t.Fatalf("announce: %d %v", code, out)
	}
	code, out, _ = d.api(t, "POST", "/v1/announcements/"+out["id"].(string)+"/reding", map[string]any{"from": "ana", "policy": "inapp,email@1m"})
	if code != http.StatusOK || len(out["dings"].([]any)) != 1 {
		t.Fatalf("reding: %d %v", code, out)
	}
	id := out["dings"].([]any)[0].(string)
	d.clock.Advance(time.Minute)
	m := d.waitMails(t, 1)[0]
	if len(m.To) != 1 || m.To[0] != "dee@example.com" {
		t.Fatalf("mail to %v", m.To)
	}
	subject, links := mailLinks(t, m)
	if !strings.Contains(subject, "Office closed Friday") || len(links) != 1 {
		t.Fatalf("subject %q, links %v", subject, links)
	}
	if _, text, err := m.Text(); err != nil || regexp.MustCompile(`\b(bo|cy|Bo|Cy)\b`).MatchString(text) {
		t.Fatalf("the mail names another recipient (%v):\n%s", err, text)
	}
	if code, out, _ := follow(t, http.MethodPost, links[0], true); code != http.StatusOK {
		t.Fatalf("POST link: %d %v", code, out)
	}
	code, ds, _ := d.api(t, "GET", "/v1/dings/"+id, nil)
	if code != http.StatusOK {
		t.Fatalf("GET ding: %d %v", code, ds)
	}
	for _, r := range ds["recipients"].([]any) {
		r := r.(map[string]any)
		var evs []string
		for _, ev := range r["events"].([]any) {
			evs = append(evs, ev.(map[string]any)["event"].(string))
		}
		switch r["recipient"] {
		case "dee":
			if r["status"] != engine.StatusConfirmed || r["reached_by"] != "email" {
				t.Fatalf("dee = %v", r)
			}
		default: // bo and cy have no address
			if !slices.Contains(evs, "no_email") {
				t.Fatalf("%v: ledger %v, want no_email", r["recipient"], evs)
			}
		}
	}
}
