package main

// Browser tests of the web app (/app, channels/web/app): a real headless
// Chromium (channels/web/webtest) against real dingd processes on
// loopback, and the fake Twilio where SMS matter. Screenshots of the
// app's pages go to channels/web/app/screenshots with DING_SCREENSHOTS=1.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/dingmq/ding/channels/twilio/twiliotest"
	"github.com/dingmq/ding/channels/web"
	"github.com/dingmq/ding/channels/web/webtest"
)

const screenshotDir = "../../channels/web/app/screenshots"

// webRig is a dingd (with a fake Twilio behind its SMS and voice steps)
// and a headless Chromium whose pages are separate browsers. The admin
// console's tests (console_test.go) start from it too.
type webRig struct {
	p       *proc
	twilio  *twiliotest.Server
	browser *webtest.Browser
}

// startWebRig starts dingd with the fake Twilio and extra flags, and a browser.
func startWebRig(t *testing.T, extra ...string) *webRig {
	t.Helper()
	const sid, tok = "AC00000000000000000000000000000002", "web0token0for0tests"
	fake := twiliotest.NewServer(sid, tok)
	t.Cleanup(fake.Close)
	p := newProc(t, t.TempDir())
	p.env = []string{"TWILIO_AUTH_TOKEN=" + tok}
	flags := append([]string{"--twilio-account-sid", sid, "--twilio-from", "+15005550006",
		"--public-url", "http://{http}", "--twilio-api-url", fake.URL()}, extra...)
	p.start(t, p.args(flags...)...)
	return &webRig{p: p, twilio: fake, browser: webtest.Start(t)}
}

// addUser creates a user (phone may be empty).
func (r *webRig) addUser(t *testing.T, id, phone string) {
	t.Helper()
	body := map[string]string{"id": id, "name": strings.ToUpper(id[:1]) + id[1:]}
	if phone != "" {
		body["phone"] = phone
	}
	if code := r.p.admin(t, "POST", "/v1/users", body, nil); code != 201 {
		t.Fatalf("create %s: %d", id, code)
	}
}

// appURL is the web app on dingd's HTTP port.
func (r *webRig) appURL() string { return "http://" + r.p.http + "/app/" }

// signIn opens the app in a new page (a browser of its own) and signs in
// with a fresh token of user's device "web"; it returns once the page is
// online.
func (r *webRig) signIn(t *testing.T, user string) *webtest.Page {
	t.Helper()
	pg := r.browser.NewPage(t, user)
	pg.Run(chromedp.Navigate(r.appURL()), chromedp.WaitVisible(chromedp.ID("token")))
	typeToken(pg, r.p.token(t, user, "web"))
	pg.WaitFor(`document.querySelector("[data-status=online]")`)
	if got := pg.Text(`[data-testid=me]`); got != user {
		t.Fatalf("page %s: signed in as %q", user, got)
	}
	return pg
}

// typeToken puts tok in the token field and submits the form. (SetValue,
// not key presses: a JWT is long, and its characters are not what is tested.)
func typeToken(pg *webtest.Page, tok string) {
	pg.Run(chromedp.SetValue(chromedp.ID("token"), tok))
	webtest.Eval[bool](pg, `(() => { const e = document.getElementById("token"); e.dispatchEvent(new Event("input", {bubbles: true})); return true })()`)
	pg.Run(chromedp.Click(chromedp.CSS(`.login button[type=submit]`)))
}

// openChat opens the direct conversation with peer from the "Chat with" form.
func openChat(pg *webtest.Page, peer string) {
	pg.Run(chromedp.SendKeys(chromedp.ID("newchat-to"), peer), chromedp.Click(chromedp.CSS(`.newchat button[type=submit]`)))
	pg.WaitFor(fmt.Sprintf(`document.querySelector('#conv-title')?.innerText === %q`, peer))
}

// openConv clicks a conversation in the list once it is there.
func openConv(pg *webtest.Page, selector string) {
	pg.WaitFor(fmt.Sprintf(`document.querySelector(%q)`, selector))
	pg.Run(chromedp.Click(chromedp.CSS(selector)))
}

// say sends text from the open conversation's composer.
func say(pg *webtest.Page, text string) {
	pg.Run(chromedp.SendKeys(chromedp.ID("composer-text"), text), chromedp.Click(chromedp.CSS(`.composer button[type=submit]`)))
}

// bodies is the text of every message in the open conversation, in order.
func bodies(pg *webtest.Page) []string { return pg.Texts(`.messages li.msg .body`) }

// tickOf is the JavaScript for the tick of the page's own message with this body.
func tickOf(body string) string {
	return fmt.Sprintf(`Array.from(document.querySelectorAll("li.msg.mine")).find(l => l.querySelector(".body")?.innerText === %q)?.querySelector(".tick")?.dataset.tick`, body)
}

// Two users in two browsers chat; each sees the other's message arrive,
// its own message go from sent to delivered (the other's page has it but
// has not opened the conversation) to read (it opened it), live.
func TestWebTwoUsersChatAndSeeReadTicks(t *testing.T) {
	r := startWebRig(t)
	r.addUser(t, "ana", "")
	r.addUser(t, "bo", "")
	ana, bo := r.signIn(t, "ana"), r.signIn(t, "bo")

	openChat(ana, "bo")
	say(ana, "lunch at noon?")
	ana.WaitFor(tickOf("lunch at noon?") + ` === "delivered"`)
	// bo has it, unread: a badge on the conversation, and still no read tick on ana's side.
	bo.WaitFor(`document.querySelector('[data-conv="ana"] .badge')?.innerText === "1"`)
	if got := webtest.Eval[string](ana, tickOf("lunch at noon?")); got != "delivered" {
		t.Fatalf("ana's tick before bo opened the chat: %q", got)
	}
	webtest.Screenshot(t, bo, screenshotDir, "conversations")

	openConv(bo, `[data-conv="ana"]`)
	bo.WaitFor(`document.querySelector(".messages li.msg.theirs .body")?.innerText === "lunch at noon?"`)
	ana.WaitFor(tickOf("lunch at noon?") + ` === "read"`)
	bo.WaitFor(`!document.querySelector('[data-conv="ana"] .badge')`)

	say(bo, "yes, at the usual place")
	ana.WaitFor(`Array.from(document.querySelectorAll(".messages li.msg.theirs .body")).some(b => b.innerText === "yes, at the usual place")`)
	bo.WaitFor(tickOf("yes, at the usual place") + ` === "read"`) // ana's conversation is open
	if got, want := bodies(ana), []string{"lunch at noon?", "yes, at the usual place"}; !slices.Equal(got, want) {
		t.Fatalf("ana's page shows %q, want %q", got, want)
	}
	if got, want := bodies(bo), []string{"lunch at noon?", "yes, at the usual place"}; !slices.Equal(got, want) {
		t.Fatalf("bo's page shows %q, want %q", got, want)
	}
	webtest.Screenshot(t, ana, screenshotDir, "chat")
	ana.Run(chromedp.EmulateViewport(390, 760))
	webtest.Screenshot(t, ana, screenshotDir, "chat-phone")
}

// dingd is killed (SIGKILL) mid-conversation and started again on the
// same data and addresses: both pages say they are offline, a message
// typed meanwhile is sent once the server is back, and each page ends
// with every message exactly once, in order, with read ticks. Then a
// reload of a page rebuilds it from the server.
func TestWebResumesAfterKill9(t *testing.T) {
	r := startWebRig(t)
	r.addUser(t, "ana", "")
	r.addUser(t, "bo", "")
	ana, bo := r.signIn(t, "ana"), r.signIn(t, "bo")
	openChat(ana, "bo")
	say(ana, "one")
	openConv(bo, `[data-conv="ana"]`)
	say(ana, "two")
	say(bo, "three")
	want := []string{"one", "two", "three"}
	for _, pg := range []*webtest.Page{ana, bo} {
		pg.WaitFor(fmt.Sprintf(`JSON.stringify(Array.from(document.querySelectorAll(".messages li.msg .body"), b => b.innerText)) === %q`, mustJSON(want)))
	}
	ana.WaitFor(tickOf("two") + ` === "read"`)

	if err := r.p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	r.p.wait(t, 10*time.Second)
	for _, pg := range []*webtest.Page{ana, bo} {
		pg.WaitFor(`document.querySelector("[data-status=reconnecting]")`)
	}
	say(ana, "four, typed while the server was down")
	if got := webtest.Eval[string](ana, tickOf("four, typed while the server was down")); got != "sending" {
		t.Fatalf("a message typed while dingd is down shows %q, want sending", got)
	}

	r.p.start(t, r.p.args("--twilio-account-sid", "AC00000000000000000000000000000002", "--twilio-from", "+15005550006",
		"--public-url", "http://{http}", "--twilio-api-url", r.twilio.URL())...)
	for _, pg := range []*webtest.Page{ana, bo} {
		pg.WaitFor(`document.querySelector("[data-status=online]")`)
	}
	ana.WaitFor(tickOf("four, typed while the server was down") + ` === "read"`)
	say(bo, "five")
	want = append(want, "four, typed while the server was down", "five")
	for _, pg := range []*webtest.Page{ana, bo} {
		pg.WaitFor(fmt.Sprintf(`JSON.stringify(Array.from(document.querySelectorAll(".messages li.msg .body"), b => b.innerText)) === %q`, mustJSON(want)))
	}
	bo.WaitFor(tickOf("five") + ` === "read"`) // acknowledged, and read on ana's open page
	// Nothing twice: each id once on each page.
	for _, pg := range []*webtest.Page{ana, bo} {
		ids := webtest.Eval[[]string](pg, `Array.from(document.querySelectorAll(".messages li.msg"), l => l.dataset.id)`)
		seen := map[string]bool{}
		for _, id := range ids {
			if seen[id] || strings.HasPrefix(id, "local:") {
				t.Fatalf("page %s: ids %q: a repeat or an unacknowledged send", pg.Name, ids)
			}
			seen[id] = true
		}
	}

	// A reload rebuilds the page from bo's stream (the app stores no
	// message in the browser): what bo received, once each, already read.
	// What bo sent is not in his stream (PROTOCOL.md §5), so it is not shown.
	bo.Run(chromedp.Reload())
	bo.WaitFor(`document.querySelector("[data-status=online]")`)
	openConv(bo, `[data-conv="ana"]`)
	received := []string{"one", "two", "four, typed while the server was down"}
	bo.WaitFor(fmt.Sprintf(`JSON.stringify(Array.from(document.querySelectorAll(".messages li.msg .body"), b => b.innerText)) === %q`, mustJSON(received)))
	if badge := bo.Text(`[data-conv="ana"] .badge`); badge != "" {
		t.Fatalf("after a reload, %s unread in a conversation read before", badge)
	}
}

// A DING sent through the admin API appears on the recipient's page as a
// card with its choices; confirming from the page records the answer,
// cancels the SMS step (no escalation step is left), and the fake Twilio
// received no SMS. A must-confirm announcement is confirmed the same way.
func TestWebDingCardConfirmSendsNoSMS(t *testing.T) {
	r := startWebRig(t)
	r.addUser(t, "ana", "")
	r.addUser(t, "bo", "+14155550100")
	bo := r.signIn(t, "bo")

	var sent struct{ ID string }
	if code := r.p.admin(t, "POST", "/v1/dings", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "Server room is flooding",
		"choices": []string{"attend", "decline"}, "policy": "inapp,sms@30s"}, &sent); code != 201 || sent.ID == "" {
		t.Fatalf("ding: %d %+v", code, sent)
	}
	if n := r.p.pendingSteps(t); n < 1 {
		t.Fatalf("%d escalation steps pending after the DING, want its SMS step", n)
	}
	openConv(bo, `[data-conv="ana"]`)
	card := fmt.Sprintf(`li.msg.ding[data-id=%q]`, sent.ID)
	bo.WaitFor(fmt.Sprintf(`document.querySelector('%s .card h3')?.innerText === "DING from ana"`, card))
	if got := bo.Texts(card + ` .choice`); !slices.Equal(got, []string{"attend", "decline"}) {
		t.Fatalf("choices %q", got)
	}
	webtest.Screenshot(t, bo, screenshotDir, "ding-card")
	bo.Run(chromedp.Click(chromedp.CSS(card+` input[value="2"]`)), chromedp.Click(chromedp.CSS(card+` button[type=submit]`)))
	bo.WaitFor(fmt.Sprintf(`document.querySelector('%s .confirmed')?.innerText === "Confirmed: decline"`, card))

	var st struct {
		Recipients []struct {
			Recipient, Status string
			Answer            int
		}
	}
	if code := r.p.admin(t, "GET", "/v1/dings/"+sent.ID, nil, &st); code != 200 || len(st.Recipients) != 1 {
		t.Fatalf("ding status: %d %+v", code, st)
	}
	if rc := st.Recipients[0]; rc.Recipient != "bo" || rc.Status != "confirmed" || rc.Answer != 2 {
		t.Fatalf("bo's status %+v, want confirmed with answer 2", rc)
	}
	// The SMS step is cancelled by the confirmation (the gauge follows the commit).
	for deadline := time.Now().Add(10 * time.Second); r.p.pendingSteps(t) != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d escalation steps still pending 10s after the confirmation", r.p.pendingSteps(t))
		}
	}
	if n := r.twilio.Count("sms"); n != 0 {
		t.Fatalf("the fake Twilio got %d SMS", n)
	}

	var ann struct{ ID string }
	if code := r.p.admin(t, "POST", "/v1/announcements", map[string]any{"from": "ana", "to": "all", "text": "Office closed Friday", "confirm": true}, &ann); code != 201 {
		t.Fatalf("announcement: %d", code)
	}
	openConv(bo, `[data-conv="announcements"]`)
	a := fmt.Sprintf(`li.msg.announcement[data-id=%q]`, ann.ID)
	bo.WaitFor(fmt.Sprintf(`document.querySelector('%s button[type=submit]')?.innerText === "Confirm I have read this"`, a))
	webtest.Screenshot(t, bo, screenshotDir, "announcement")
	bo.Run(chromedp.Click(chromedp.CSS(a + ` button[type=submit]`)))
	bo.WaitFor(fmt.Sprintf(`document.querySelector('%s .confirmed')?.innerText === "Confirmed"`, a))
}

// A level-2 secret chat opened from ana's page: bo's page shows the
// message under ana's pseudonym, never her name, watermarked with his; once bo's page has read it, both pages
// show the burn countdown, and both lose the message when it burns
// (dingd --burn-after 5s, the shortest allowed).
func TestWebSecretMessageBurnsOnBothPages(t *testing.T) {
	r := startWebRig(t, "--burn-after", "5s")
	r.addUser(t, "ana", "")
	r.addUser(t, "bo", "")
	ana, bo := r.signIn(t, "ana"), r.signIn(t, "bo")

	ana.Run(chromedp.SetValue(chromedp.ID("secret-level"), "2"))
	webtest.Eval[bool](ana, `(() => { document.getElementById("secret-level").dispatchEvent(new Event("change", {bubbles: true})); return true })()`)
	ana.Run(chromedp.SendKeys(chromedp.ID("newchat-to"), "bo"), chromedp.Click(chromedp.CSS(`.newchat button[type=button]`)))
	ana.WaitFor(`document.querySelector('#conv-title')?.innerText.startsWith("Secret chat with anon-")`)
	say(ana, "the door code is 4711")
	const mine = `li.msg.mine.secret`
	ana.WaitFor(`document.querySelector('li.msg.mine.secret .tick')?.dataset.tick === "delivered"`)
	if got := ana.Text(mine + ` .burn`); got != "" {
		t.Fatalf("a countdown before the message was read: %q", got)
	}

	openConv(bo, `button.conv.secret`)
	bo.WaitFor(`document.querySelector("li.msg.theirs.secret .body")?.innerText === "the door code is 4711"`)
	from := bo.Text(`li.msg.theirs.secret .from`)
	if !strings.HasPrefix(from, "anon-") || strings.Contains(bo.Text(`.pane`), "ana") {
		t.Fatalf("bo's page names the sender %q; the pane: %q", from, bo.Text(`.pane`))
	}
	// Level 2: bo's pseudonym as a watermark over the message.
	you := bo.Text(`.secret-terms strong`)
	if wm := webtest.Eval[string](bo, `document.querySelector("li.msg.theirs.secret .watermark")?.textContent ?? ""`); wm == "" || wm != you {
		t.Fatalf("watermark %q, want bo's pseudonym %q", wm, you)
	}
	for _, pg := range []*webtest.Page{ana, bo} {
		pg.WaitFor(`/^Burns in [1-5] s$/.test(document.querySelector("li.msg.secret .burn")?.innerText ?? "")`)
	}
	webtest.Screenshot(t, bo, screenshotDir, "secret-countdown")
	for _, pg := range []*webtest.Page{ana, bo} {
		pg.WaitForWithin(`document.querySelector(".messages") && !document.querySelector("li.msg.secret")`, 20*time.Second)
	}
}

// A bad token is refused with the server's reason on the page; something
// that is no token at all is refused before any connection; and the app
// served by another origin (a look-alike site) cannot use dingd's /ws:
// the upgrade is refused (403) and the page says so.
func TestWebRefusesBadTokenAndForeignOrigin(t *testing.T) {
	r := startWebRig(t)
	r.addUser(t, "bo", "")

	pg := r.browser.NewPage(t, "intruder")
	pg.Run(chromedp.Navigate(r.appURL()), chromedp.WaitVisible(chromedp.ID("token")))
	// By keyboard alone: the field is focused by its label's target, Enter submits.
	pg.Run(chromedp.SendKeys(chromedp.ID("token"), "not a token"+kb.Enter))
	pg.WaitFor(`document.querySelector("[role=alert]")?.innerText.includes("not a Ding token")`)
	if got := webtest.Eval[string](pg, `document.querySelector("label[for=token]")?.innerText ?? ""`); got != "User token" {
		t.Fatalf("the token field's label is %q", got)
	}

	tok := r.p.token(t, "bo", "web")
	forged := tok[:strings.LastIndex(tok, ".")+1] + "AAAA" + tok[strings.LastIndex(tok, ".")+5:]
	typeToken(pg, forged)
	pg.WaitFor(`document.querySelector("[role=alert]")?.innerText.includes("BAD_TOKEN")`)
	if webtest.Eval[bool](pg, `!!document.querySelector("[data-status]")`) {
		t.Fatal("the page signed in with a forged token")
	}
	webtest.Screenshot(t, pg, screenshotDir, "bad-token")

	// The same app, from another origin, pointed at dingd's /ws.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	other := httptest.NewUnstartedServer(web.App("ws://" + r.p.http))
	other.Listener.Close()
	other.Listener = ln
	other.Start()
	t.Cleanup(other.Close)
	evil := r.browser.NewPage(t, "other-origin")
	evil.Run(chromedp.Navigate(other.URL+"/app/"), chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.Click(chromedp.CSS("details summary")), chromedp.SetValue(chromedp.ID("server"), "ws://"+r.p.http+"/ws"))
	webtest.Eval[bool](evil, `(() => { const e = document.getElementById("server"); e.dispatchEvent(new Event("input", {bubbles: true})); return true })()`)
	typeToken(evil, tok)
	evil.WaitFor(`document.querySelector("[role=alert]")?.innerText.includes("refused this page's origin")`)
	if webtest.Eval[bool](evil, `!!document.querySelector("[data-status]")`) {
		t.Fatal("a page from another origin signed in")
	}

	// What the browser was refused, seen from Go: the upgrade with that Origin gets 403.
	req, _ := http.NewRequest("GET", "http://"+r.p.http+"/ws", nil)
	for k, v := range map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
		"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": other.URL} {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("upgrade from origin %s: %d, want 403", other.URL, resp.StatusCode)
	}
	// And dingd's own page carries its CSP.
	resp, err = http.Get(r.appURL())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "connect-src 'self';") || !strings.Contains(csp, "script-src 'self'") {
		t.Fatalf("/app/ CSP %q", csp)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
