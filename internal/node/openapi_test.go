package node_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/email"
	"github.com/dingmq/ding/channels/httpapi/openapitest"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// TestClusterRoutesMatchOpenAPI: the cluster members' own routes
// (httpapi.ClusterRoutes) answer as the API's OpenAPI document says, on
// an owner and on its standby, each answer validated against the
// document the owner serves (channels/httpapi/openapitest). A handover
// that is accepted (202) is left out: it moves the partition.
func TestClusterRoutesMatchOpenAPI(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	ctx, runMember, stopMembers := memberRunner(t, true)
	defer stopMembers()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	run := func(id string, started chan<- *node.Node) string {
		addr := nodetest.FreeAddr(t)
		mc := node.MemberConfig{
			Node:  node.Config{DataDir: t.TempDir(), SocketAddr: nodetest.FreeAddr(t), HTTPAddr: addr, Logger: quiet},
			Coord: coord, ID: id, Advertise: "http://" + addr, Secret: "s", LeaseTTL: time.Second,
			Started: func(n *node.Node) {
				if started != nil {
					started <- n
				}
			},
		}
		runMember(mc)
		return "http://" + addr
	}
	startedA := make(chan *node.Node, 1)
	owner := run("a", startedA)
	a := <-startedA
	tok := a.AdminToken()
	c := openapitest.New(t, owner)

	// The owner alone: no standby to hand over to.
	c.Call(t, "POST /v1/cluster/handover", "/v1/cluster/handover", tok, nil, 409)
	c.Call(t, "POST /v1/cluster/drain", "/v1/cluster/drain", tok, nil, 409)
	c.Call(t, "GET /v1/cluster", "/v1/cluster", tok, nil, 200)
	c.Call(t, "GET /v1/cluster", "/v1/cluster", "", nil, 401)
	c.Call(t, "POST /v1/cluster/forget", "/v1/cluster/forget?member=zz", tok, nil, 200)
	c.Call(t, "POST /v1/cluster/forget", "/v1/cluster/forget", tok, nil, 400)

	// Its standby, which asks the owner who the caller is.
	standby := run("b", nil)
	nodetest.WaitFor(t, "b to become the standby", 20*time.Second, func() bool {
		sb, _ := coord.Standby(ctx, 0)
		return sb == "b"
	})
	c.Base = standby
	if out := c.Call(t, "GET /v1/cluster", "/v1/cluster", tok, nil, 200); out["member"] != "b" || out["owner"] != "a" {
		t.Errorf("the standby's status: %v, want member b, owner a", out)
	}
	c.Call(t, "POST /v1/cluster/forget", "/v1/cluster/forget?member=zz", tok, nil, 200)
	c.Call(t, "POST /v1/cluster/drain", "/v1/cluster/drain", "", nil, 401)
	c.Call(t, "POST /v1/cluster/drain", "/v1/cluster/drain", tok, nil, 202)

	validated, succeeded := c.Coverage()
	for _, op := range []string{"GET /v1/cluster", "POST /v1/cluster/drain", "POST /v1/cluster/forget", "POST /v1/cluster/handover"} {
		if validated[op] == 0 || (op != "POST /v1/cluster/handover" && !succeeded[op]) {
			t.Errorf("%s: %d answers validated, a success %v", op, validated[op], succeeded[op])
		}
	}
	t.Logf("validated %d answers of the cluster routes", len(c.Answers))
}

// TestOpenAPIEmailLinks: the e-mail recipients' confirmation links
// (email.Routes), on a node with e-mail configured against a fake SMTP
// server on loopback and the fake clock, answer as the API's OpenAPI
// document says: the page of a link as HTML and as JSON, its
// confirmation, a second use, a forged token, no token, an unreadable
// form, an offboarded recipient's link and an expired one; each answer
// validated against the document the node serves. Then the same answers
// fail against a document wrong in a code or a field.
func TestOpenAPIEmailLinks(t *testing.T) {
	d := startEmailNode(t, func(c *node.Config) { c.Email.LinkTTL = time.Hour })
	if _, err := d.n.Directory().PutUser(fanout.User{ID: "eve", Name: "Eve", Email: "eve@example.com"}); err != nil {
		t.Fatal(err)
	}
	id := d.ding(t, map[string]any{"to": []string{"dee", "eve"}, "text": "Deploy is stuck", "policy": "email", "choices": []string{"attend", "decline"}})
	tokens := map[string][]string{} // by address: the token of each choice's link
	for _, m := range d.waitMails(t, 2) {
		_, links := mailLinks(t, m)
		if len(m.To) != 1 || len(links) != 2 {
			t.Fatalf("mail to %v with links %v: want one recipient, 2 links", m.To, links)
		}
		for _, l := range links {
			u, err := url.Parse(l)
			if err != nil || u.Host != strings.TrimPrefix(d.public, "http://") || u.Path != email.PathConfirm {
				t.Fatalf("link %s (%v): want %s%s", l, err, d.public, email.PathConfirm)
			}
			tokens[m.To[0]] = append(tokens[m.To[0]], u.Query().Get("t"))
		}
	}
	dee, eve := tokens["dee@example.com"], tokens["eve@example.com"]
	if len(dee) != 2 || len(eve) != 2 {
		t.Fatalf("tokens %v: want 2 for dee and eve", tokens)
	}
	forged := dee[0][:len(dee[0])-22] + dee[1][len(dee[1])-22:] // another answer, the tag kept

	c := openapitest.New(t, d.public)
	// link sends a request for op with token t (as the query for GET, the
	// form for POST; a raw form when raw is set) and, when asJSON, Accept:
	// application/json. It checks the answer's type and error code.
	link := func(op, tok string, asJSON bool, raw string, want int, code string) map[string]any {
		t.Helper()
		method, path, _ := strings.Cut(op, " ")
		var req *http.Request
		var body []byte
		if method == http.MethodGet {
			req, _ = http.NewRequest(method, d.public+path+"?t="+url.QueryEscape(tok), nil)
		} else {
			body = []byte(url.Values{"t": {tok}}.Encode())
			if raw != "" {
				body = []byte(raw)
			}
			req, _ = http.NewRequest(method, d.public+path, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		ctype := "text/html; charset=utf-8"
		if asJSON {
			req.Header.Set("Accept", "application/json")
			ctype = "application/json"
		}
		out := c.Send(t, op, req, body, want)
		a := c.Answers[len(c.Answers)-1]
		if got := a.Header.Get("Content-Type"); got != ctype {
			t.Errorf("%s: Content-Type %q, want %q", op, got, ctype)
		}
		if a.Header.Get("Cache-Control") != "no-store" || a.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("%s: Cache-Control %q, Referrer-Policy %q", op, a.Header.Get("Cache-Control"), a.Header.Get("Referrer-Policy"))
		}
		if asJSON && code != "" {
			if e, _ := out["error"].(map[string]any); e["code"] != code {
				t.Errorf("%s: %v, want the code %s", op, out, code)
			}
		}
		return out
	}
	const show, confirm = "GET " + email.PathConfirm, "POST " + email.PathConfirm

	// The page, and what it would confirm; nothing recorded.
	link(show, dee[1], false, "", 200, "")
	if out := link(show, dee[1], true, "", 200, ""); out["ding"] != id || out["answer"] != 2.0 || out["choice"] != "decline" || out["expires"] != t0.Add(time.Hour).Format(time.RFC3339) {
		t.Errorf("GET JSON: %v", out)
	}
	if st, _, _ := d.recipient(t, id, 0); st != engine.StatusPending {
		t.Fatalf("GET moved dee to %s", st)
	}
	link(show, "", true, "", 400, "BAD_REQUEST")
	link(show, "", false, "", 400, "")
	link(show, forged, true, "", 403, "LINK_FORGED")
	link(show, forged, false, "", 403, "")

	// Refusals of the form; then the confirmation, once.
	link(confirm, forged, true, "", 403, "LINK_FORGED")
	link(confirm, "", true, "", 400, "BAD_REQUEST")
	link(confirm, "", true, "t="+strings.Repeat("x", 5<<10), 400, "BAD_REQUEST") // over the form's 4 KiB
	link(confirm, "", false, "t=%zz", 400, "")                                   // malformed
	if out := link(confirm, dee[1], true, "", 200, ""); out["ding"] != id || out["answer"] != 2.0 || out["choice"] != "decline" || out["confirmed"] == nil {
		t.Errorf("POST JSON: %v", out)
	}
	if st, _, raw := d.recipient(t, id, 0); st != engine.StatusConfirmed || raw["reached_by"] != "email" {
		t.Fatalf("dee = %v", raw)
	}
	link(confirm, dee[1], true, "", 410, "LINK_USED")
	link(confirm, dee[0], false, "", 410, "")
	link(show, dee[0], true, "", 200, "") // a used link still shows its page

	// An offboarded recipient's link confirms nothing: 404. Then, an hour
	// on, every link has expired.
	if code, out, _ := d.api(t, "DELETE", "/v1/users/eve", nil); code != http.StatusOK {
		t.Fatalf("DELETE /v1/users/eve: %d %v", code, out)
	}
	link(confirm, eve[0], true, "", 404, "NOT_FOUND")
	link(confirm, eve[0], false, "", 404, "")
	link(confirm, "", false, "", 400, "") // HTML, for the coverage of both
	d.clock.Advance(time.Hour + time.Second)
	link(show, eve[1], true, "", 410, "LINK_EXPIRED")
	link(show, eve[1], false, "", 410, "")
	link(confirm, dee[0], true, "", 410, "LINK_EXPIRED")
	if st, _, raw := d.recipient(t, id, 0); st != engine.StatusConfirmed || raw["choice"] != "decline" {
		t.Fatalf("a refused link changed dee: %v", raw)
	}

	validated, succeeded := c.Coverage()
	for _, op := range email.Routes() {
		if validated[op] == 0 || !succeeded[op] {
			t.Errorf("%s: %d answers validated, a success %v", op, validated[op], succeeded[op])
		}
	}
	if len(validated) != len(email.Routes()) {
		t.Errorf("validated %v, want only email.Routes()", validated)
	}
	t.Logf("validated %d real answers of the e-mail links against openapi.json", len(c.Answers))
	if t.Failed() {
		return
	}

	// The validation can fail: the same answers against a document wrong
	// in one code or one field do not pass.
	resp, err := http.Get(d.public + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wrong := func(name string, mutate func(schemas map[string]any), failing string, status int) {
		t.Run(name, func(t *testing.T) {
			var m map[string]any
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			mutate(m["components"].(map[string]any)["schemas"].(map[string]any))
			b, _ := json.Marshal(m)
			doc := openapitest.Load(t, b)
			for _, a := range c.Answers {
				if a.Op == failing && a.Status == status && strings.HasPrefix(a.Header.Get("Content-Type"), "application/json") {
					if err := openapitest.Validate(doc, a); err != nil {
						return
					}
				}
			}
			t.Fatalf("every JSON answer %d of %s passed against the wrong document", status, failing)
		})
	}
	props := func(s map[string]any, path ...string) map[string]any {
		for _, p := range path {
			s = s[p].(map[string]any)
		}
		return s
	}
	wrong("no LINK_USED", func(s map[string]any) {
		code := props(s, "EmailLinkError", "properties", "error", "properties", "code")
		code["enum"] = slices.DeleteFunc(code["enum"].([]any), func(v any) bool { return v == "LINK_USED" })
	}, confirm, 410)
	wrong("a confirmation without its time", func(s map[string]any) {
		delete(props(s, "EmailLinkConfirmed", "properties"), "confirmed")
	}, confirm, 200)
	wrong("a link's answer as a string", func(s map[string]any) {
		props(s, "EmailLinkShown", "properties")["answer"] = map[string]any{"type": "string"}
	}, show, 200)
}
