package main

// Browser tests of the admin console (/console, channels/web/console): one
// dingd with the fake Twilio and one headless Chromium for all of them
// (startWebRig), a browser context per page. The console pages sign in
// with the admin token; the recipients' /app pages with their own tokens.
// Screenshots go to channels/web/console/screenshots with DING_SCREENSHOTS=1.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/dingmq/ding/channels/web/webtest"
)

const consoleShots = "../../channels/web/console/screenshots"

// consoleURL is the console on dingd's HTTP port, at a route.
func (r *webRig) consoleURL(route string) string { return "http://" + r.p.http + "/console/" + route }

// adminToken is the token dingd wrote on its first start.
func (r *webRig) adminToken(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.p.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// signInConsole opens the console in a new page and signs in with the
// admin token; it returns once the console shows the admin's name.
func (r *webRig) signInConsole(t *testing.T, name string) *webtest.Page {
	t.Helper()
	pg := r.browser.NewPage(t, name)
	pg.Run(chromedp.Navigate(r.consoleURL("")), chromedp.WaitVisible(chromedp.ID("admin-token")))
	// Whatever the console does after this (charts included) must keep to its CSP.
	webtest.Eval[bool](pg, `(window.cspViolations = [], document.addEventListener("securitypolicyviolation", e => window.cspViolations.push(e.violatedDirective + " " + e.blockedURI)), true)`)
	t.Cleanup(func() {
		if v := webtest.Eval[[]string](pg, `window.cspViolations ?? []`); len(v) > 0 {
			t.Errorf("page %s broke its Content-Security-Policy: %q", name, v)
		}
	})
	setInput(pg, "admin-token", r.adminToken(t))
	pg.Run(chromedp.Click(chromedp.CSS(`.login button[type=submit]`)))
	pg.WaitFor(`document.querySelector("[data-testid=me]")?.innerText.length > 0`)
	return pg
}

// setInput replaces the value of the field with this id, as typing would
// (Preact's inputs listen to input events).
func setInput(pg *webtest.Page, id, value string) {
	pg.Run(chromedp.SetValue(chromedp.ID(id), value))
	webtest.Eval[bool](pg, fmt.Sprintf(`(() => { const e = document.getElementById(%q); e.dispatchEvent(new Event("input", {bubbles: true})); return true })()`, id))
}

// goTo follows the console's link to route (no reload: the hash changes).
func goTo(pg *webtest.Page, route string) {
	pg.Run(chromedp.Click(chromedp.CSS(fmt.Sprintf(`.tabs a[href="#/%s"]`, route))))
}

// sendDing fills the console's Send form (to: recipients, comma-separated)
// and submits it; it returns the DING's id once the console shows the
// DING's page.
func sendDing(pg *webtest.Page, from, to, text, policy, choices string) string {
	goTo(pg, "send")
	pg.WaitFor(`document.getElementById("send-from")`)
	setInput(pg, "send-from", from)
	pg.Run(chromedp.SendKeys(chromedp.ID("send-to"), to+kb.Enter))
	for _, rc := range strings.Split(to, ",") {
		pg.WaitFor(fmt.Sprintf(`document.querySelector('.chips li[data-recipient=%q]')`, rc))
	}
	setInput(pg, "send-text", text)
	setInput(pg, "policy-text", policy)
	if choices != "" {
		setInput(pg, "send-choices", choices)
	}
	pg.WaitFor(`!document.querySelector("#policy-err")?.innerText`)
	pg.Run(chromedp.Click(chromedp.ID("send-submit")))
	pg.WaitFor(`location.hash.startsWith("#/ding/") && document.querySelector(".recipient")`)
	return strings.TrimPrefix(webtest.Eval[string](pg, `location.hash`), "#/ding/")
}

// events is the ledger of recipient on the console's DING page, in order.
func events(pg *webtest.Page, recipient string) []string {
	return webtest.Eval[[]string](pg, fmt.Sprintf(`Array.from(document.querySelectorAll('.recipient[data-recipient=%q] .ledger li'), l => l.dataset.event)`, recipient))
}

func TestWebConsole(t *testing.T) {
	// No re-DING interval: cy is DINGed in one subtest and re-DINGed in another.
	r := startWebRig(t, "--ding-recipient-interval=-1s")
	r.addUser(t, "ana", "")
	r.addUser(t, "bo", "+14155550100")
	r.addUser(t, "cy", "+14155550101")

	// (a) A DING sent from the console; bo confirms it in /app; the
	// console's timeline shows it without a reload, and no SMS went out.
	t.Run("DingConfirmedInAppShowsLive", func(t *testing.T) {
		con := r.signInConsole(t, "console")
		bo := r.signIn(t, "bo")
		id := sendDing(con, "ana", "bo", "Server room is flooding", "inapp,sms@30s until=confirmed", "attend, decline")
		// The builder showed the plan on its timeline before sending.
		con.WaitFor(`document.querySelector('.recipient[data-recipient="bo"]')?.dataset.status === "pending"`)
		if got := con.Text(`[data-testid=ding-policy]`); got != "inapp,sms@30s until=confirmed" {
			t.Fatalf("the DING's policy on its page: %q", got)
		}
		webtest.Eval[bool](con, `(window.notReloaded = true)`)
		webtest.Screenshot(t, con, consoleShots, "ding-pending")

		openConv(bo, `[data-conv="ana"]`)
		card := fmt.Sprintf(`li.msg.ding[data-id=%q]`, id)
		bo.WaitFor(fmt.Sprintf(`document.querySelector('%s .card h3')`, card))
		bo.Run(chromedp.Click(chromedp.CSS(card+` input[value="1"]`)), chromedp.Click(chromedp.CSS(card+` button[type=submit]`)))
		bo.WaitFor(fmt.Sprintf(`document.querySelector('%s .confirmed')?.innerText === "Confirmed: attend"`, card))

		con.WaitFor(`document.querySelector('.recipient[data-recipient="bo"]')?.dataset.status === "confirmed"`)
		con.WaitFor(`document.querySelector('.recipient[data-recipient="bo"] .ledger li[data-event=confirmed]')`)
		if !webtest.Eval[bool](con, `window.notReloaded === true`) {
			t.Fatal("the console's DING page was reloaded")
		}
		if got := con.Text(`.recipient[data-recipient="bo"] .hint`); !strings.Contains(got, "Answer: 1 (attend)") {
			t.Fatalf("bo's answer on the console: %q", got)
		}
		webtest.Screenshot(t, con, consoleShots, "ding-confirmed")
		// The confirmation cancelled the SMS step: none pending, none sent.
		for deadline := time.Now().Add(10 * time.Second); r.p.pendingSteps(t) != 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d escalation steps still pending after the confirmation", r.p.pendingSteps(t))
			}
		}
		if n := r.twilio.Count("sms"); n != 0 {
			t.Fatalf("the fake Twilio got %d SMS", n)
		}
	})

	// (b) Nobody answers: the console's timeline shows the SMS and then the
	// call that the fake Twilio received, as they happen.
	t.Run("UnconfirmedDingShowsSMSAndCall", func(t *testing.T) {
		con := r.signInConsole(t, "console")
		// cy, and someone outside the app by a bare number.
		const outsider = "+14155550199"
		id := sendDing(con, "ana", "cy,"+outsider, "Pager duty: disk full on db-3", "inapp,sms@1s,voice@2s", "")
		// The policy builder's timeline is where the DING came from; its page shows the escalation.
		con.WaitForWithin(`document.querySelector('.recipient[data-recipient="cy"] .ledger li[data-event^=sms_]')`, 20*time.Second)
		con.WaitForWithin(`document.querySelector('.recipient[data-recipient="cy"] .ledger li[data-event^=call_]')`, 20*time.Second)
		evs := events(con, "cy")
		sms, call := slices.IndexFunc(evs, func(e string) bool { return strings.HasPrefix(e, "sms_") }), slices.IndexFunc(evs, func(e string) bool { return strings.HasPrefix(e, "call_") })
		if sms < 0 || call < sms {
			t.Fatalf("cy's ledger on the console %q: want SMS events before call events", evs)
		}
		con.WaitForWithin(fmt.Sprintf(`document.querySelector('.recipient[data-recipient=%q] .ledger li[data-event^=call_]')`, outsider), 20*time.Second)
		if r.twilio.Count("sms") < 2 || r.twilio.Count("call") < 2 {
			t.Fatalf("the fake Twilio got %d SMS and %d calls", r.twilio.Count("sms"), r.twilio.Count("call"))
		}
		webtest.Screenshot(t, con, consoleShots, "ding-escalated")
		// The DINGs list has it first (newest first).
		goTo(con, "dings")
		con.WaitFor(`document.querySelectorAll(".list li a").length > 0`)
		if got := webtest.Eval[string](con, `document.querySelector(".list li a").getAttribute("href")`); got != "#/ding/"+id {
			t.Fatalf("the newest DING in the list links to %q, want %q", got, "#/ding/"+id)
		}
		con.Run(chromedp.Click(chromedp.CSS(`.list li a`)))
		con.WaitFor(`document.querySelector('.recipient[data-recipient="cy"]')`)
		con.Run(chromedp.EmulateViewport(390, 760))
		webtest.Screenshot(t, con, consoleShots, "ding-phone")
	})

	// (c) An announcement published from the console: its unread list and
	// its charts follow bo reading it in /app.
	t.Run("AnnouncementReadChartFollowsReaders", func(t *testing.T) {
		con := r.signInConsole(t, "console")
		bo := r.signIn(t, "bo")
		goTo(con, "announcements")
		setInput(con, "ann-to", "all")
		setInput(con, "ann-from", "ana")
		setInput(con, "ann-text", "The office is closed on Friday")
		con.Run(chromedp.Click(chromedp.CSS(`form.card button[type=submit]`)))
		con.WaitFor(`location.hash.startsWith("#/announcement/") && document.querySelector("[data-testid=unread] li")`)
		con.WaitFor(`Array.from(document.querySelectorAll("[data-testid=unread] li"), l => l.innerText).includes("bo")`)
		readBefore := webtest.Eval[string](con, `document.querySelector("[data-count=read]").innerText`)
		funnel := `JSON.parse(document.querySelector("[data-testid=ann-funnel]").dataset.values)[0][1]`
		if got := webtest.Eval[int](con, funnel); fmt.Sprint(got) != readBefore {
			t.Fatalf("the chart's read bar %d, the count %s", got, readBefore)
		}

		openConv(bo, `[data-conv="announcements"]`)
		bo.WaitFor(`Array.from(document.querySelectorAll("li.msg.announcement .body")).some(b => b.innerText === "The office is closed on Friday")`)
		con.WaitFor(`!Array.from(document.querySelectorAll("[data-testid=unread] li"), l => l.innerText).includes("bo")`)
		con.WaitFor(fmt.Sprintf(`document.querySelector("[data-count=read]").innerText === "%d"`, atoi(t, readBefore)+1))
		con.WaitFor(fmt.Sprintf(`%s === %d`, funnel, atoi(t, readBefore)+1))
		con.WaitFor(`document.querySelector("[data-testid=ann-ratio] figcaption").innerText.startsWith("Read ratio")`)
		webtest.Screenshot(t, con, consoleShots, "announcement")

		// The unread as CSV, fetched with the admin token and handed to the browser as a download.
		webtest.Eval[bool](con, `(window.csv = [], URL.createObjectURL = (orig => b => (b.text().then(t => window.csv.push(t)), orig(b)))(URL.createObjectURL), true)`)
		con.Run(chromedp.Click(chromedp.CSS(`button.export-unread`)))
		con.WaitFor(`window.csv.length === 1`)
		csv := webtest.Eval[string](con, `window.csv[0]`)
		if !strings.Contains(csv, "\ncy,") || strings.Contains(csv, "\nbo,") {
			t.Fatalf("the unread CSV:\n%s", csv)
		}

		// Re-DING who has not read it, in the app only (the sender, ana, is not DINGed).
		var before struct{ Dings []struct{ ID string } }
		r.p.admin(t, "GET", "/v1/dings?limit=1000", nil, &before)
		setInput(con, "reding-policy", "inapp")
		con.Run(chromedp.Click(chromedp.CSS(`button.reding`)))
		con.WaitFor(`document.querySelector("[role=status]")?.innerText.startsWith("Re-DINGed 1 recipient.")`)
		var after struct{ Dings []struct{ ID string } }
		if r.p.admin(t, "GET", "/v1/dings?limit=1000", nil, &after); len(after.Dings) <= len(before.Dings) {
			t.Fatalf("DINGs before the re-DING %d, after %d", len(before.Dings), len(after.Dings))
		}
	})

	// (d) The directory: add a user; import a CSV, see the dry run's diff
	// (nothing written yet), apply it; offboard with a confirmation.
	t.Run("DirectoryAddImportOffboard", func(t *testing.T) {
		con := r.signInConsole(t, "console")
		con.WaitFor(`document.querySelector('tr[data-user="ana"]')`)
		setInput(con, "new-id", "dan")
		setInput(con, "new-name", "Dan")
		setInput(con, "new-phone", "+14155550102")
		con.Run(chromedp.Click(chromedp.CSS(`form.card.grid button[type=submit]`)))
		con.WaitFor(`document.querySelector('tr[data-user="dan"]')?.innerText.includes("+14155550102")`)

		// Edit dan's quiet hours in place.
		con.Run(chromedp.Click(chromedp.CSS(`button[aria-label="Edit dan"]`)))
		setInput(con, "quiet-dan", "22:00-07:00")
		con.Run(chromedp.Click(chromedp.CSS(`tr[data-user="dan"] form button[type=submit]`)))
		con.WaitFor(`document.querySelector('tr[data-user="dan"]')?.innerText.includes("22:00-07:00")`)

		setInput(con, "import-text", "id,name,phone,department_path\neve,Eve,+14155550103,Ops\nfay,Fay,,Ops/Night\n")
		con.Run(chromedp.Click(chromedp.ID("import-preview")))
		con.WaitFor(`document.querySelector("[data-testid=import-preview]")`)
		added := con.Texts(`[data-testid=import-preview] [data-diff="Users added"] li`)
		if !slices.Equal(added, []string{"eve", "fay"}) {
			t.Fatalf("the dry run's users added: %q", added)
		}
		var u struct{ Status string }
		if code := r.p.admin(t, "GET", "/v1/users/eve", nil, &u); code != 404 {
			t.Fatalf("after the dry run, GET eve: %d %+v (want 404: nothing written)", code, u)
		}
		webtest.Screenshot(t, con, consoleShots, "import-preview")
		con.Run(chromedp.Click(chromedp.ID("import-apply")))
		con.WaitFor(`document.querySelector("[data-testid=import-applied]")`)
		con.WaitFor(`document.querySelector('tr[data-user="eve"]') && document.querySelector('tr[data-user="fay"]')`)
		con.WaitFor(`document.querySelector('.tree button[data-dept]')`)

		// A department and a group made in the console.
		setInput(con, "dept-form-id", "eng")
		setInput(con, "dept-form-name", "Engineering")
		con.Run(chromedp.Click(chromedp.CSS(`form[aria-labelledby="dept-form-h"] button[type=submit]`)))
		con.WaitFor(`document.querySelector('.tree button[data-dept="eng"]')?.innerText.startsWith("Engineering")`)
		setInput(con, "group-form-id", "oncall")
		setInput(con, "group-form-members", "dan, fay")
		con.Run(chromedp.Click(chromedp.CSS(`form[aria-labelledby="group-form-h"] button[type=submit]`)))
		con.WaitFor(`document.querySelector('[data-group="oncall"]')?.innerText.includes("dan, fay")`)
		webtest.Eval[bool](con, `(window.scrollTo(0, 0), true)`)
		webtest.Screenshot(t, con, consoleShots, "directory")
		webtest.Screenshot(t, con, consoleShots, "directory")

		con.Run(chromedp.Click(chromedp.CSS(`button[aria-label="Offboard eve"]`)))
		con.WaitFor(`document.querySelector("dialog.confirm")?.open && document.querySelector("#offboard-h").innerText === "Offboard eve?"`)
		if code := r.p.admin(t, "GET", "/v1/users/eve", nil, &u); code != 200 || u.Status != "active" {
			t.Fatalf("eve before the confirmation: %d %+v", code, u)
		}
		con.Run(chromedp.Click(chromedp.ID("offboard-confirm")))
		con.WaitFor(`!document.querySelector('tr[data-user="eve"]') && !document.querySelector("dialog.confirm").open`)
		if code := r.p.admin(t, "GET", "/v1/users/eve", nil, &u); code != 200 || u.Status != "removed" {
			t.Fatalf("eve after offboarding: %d %+v", code, u)
		}
		con.Run(chromedp.EmulateViewport(390, 760))
		webtest.Eval[bool](con, `(window.scrollTo(0, 0), true)`)
		webtest.Screenshot(t, con, consoleShots, "directory-phone")
	})

	// (e) A bad admin token is refused with the API's code and reason, by
	// keyboard alone; then the other screens render for a good one.
	t.Run("BadTokenRefused", func(t *testing.T) {
		pg := r.browser.NewPage(t, "intruder")
		pg.Run(chromedp.Navigate(r.consoleURL("")), chromedp.WaitVisible(chromedp.ID("admin-token")))
		if got := webtest.Eval[string](pg, `document.querySelector("label[for=admin-token]")?.innerText ?? ""`); got != "Admin token" {
			t.Fatalf("the token field's label is %q", got)
		}
		pg.Run(chromedp.SendKeys(chromedp.ID("admin-token"), "not-an-admin-token"+kb.Enter))
		pg.WaitFor(`document.querySelector("[role=alert]")?.innerText.includes("UNAUTHENTICATED: admin token invalid")`)
		if webtest.Eval[bool](pg, `!!document.querySelector("[data-testid=me]") || !!sessionStorage.getItem("ding.console.token")`) {
			t.Fatal("the console signed in with a bad token")
		}
		webtest.Screenshot(t, pg, consoleShots, "bad-token")
	})

	t.Run("StatsAndOperations", func(t *testing.T) {
		con := r.signInConsole(t, "console")
		goTo(con, "stats")
		con.WaitFor(`document.querySelector('[data-testid=stats-volume]') && document.querySelector('tr[data-dept="Total"]')`)
		webtest.Screenshot(t, con, consoleShots, "stats")
		// A window that ends before it starts: the API's refusal, on the page.
		webtest.Eval[bool](con, `[["stats-from", "2030-01-02"], ["stats-to", "2030-01-01"]].every(([id, v]) => { const e = document.getElementById(id); e.value = v; return e.dispatchEvent(new Event("change", {bubbles: true})) })`)
		con.WaitFor(`document.querySelector("[role=alert]")?.innerText.startsWith("BAD_REQUEST: ")`)
		goTo(con, "ops")
		con.WaitFor(`document.querySelector("[data-health=ok]") && document.querySelector("[data-ready=ok]")`)
		con.WaitFor(`/^\d+(\.\d+)? ms/.test(document.querySelector("[data-testid=commit-latency]")?.innerText ?? "")`)
		webtest.Screenshot(t, con, consoleShots, "operations")
		goTo(con, "send")
		con.WaitFor(`document.getElementById("policy-text")`)
		setInput(con, "policy-text", "inapp,sms@5m,voice@15m*3/10m until=confirmed")
		con.WaitFor(`document.querySelectorAll(".timeline li.step").length === 5`)
		if got := webtest.Eval[[]string](con, `Array.from(document.querySelectorAll(".timeline li.step"), l => l.dataset.step)`); !slices.Equal(got, []string{"inapp@0", "sms@300", "voice@900", "voice@1500", "voice@2100"}) {
			t.Fatalf("the policy's timeline %q", got)
		}
		setInput(con, "policy-text", "inapp,fax@1m")
		con.WaitFor(`document.querySelector("#policy-err")?.innerText.includes('unknown channel "fax"')`)
		setInput(con, "policy-text", "inapp,sms@5m,voice@15m*3/10m until=confirmed")
		webtest.Eval[bool](con, `(document.querySelector("fieldset.policy").scrollIntoView(), true)`)
		webtest.Screenshot(t, con, consoleShots, "send")
	})
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}
