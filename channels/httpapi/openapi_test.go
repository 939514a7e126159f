package httpapi_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/codes"
	"github.com/dingmq/ding/channels/email"
	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/channels/httpapi/openapitest"
	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/channels/twilio/twiliotest"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
	"github.com/dingmq/ding/internal/ratelimit"
)

func get(tb testing.TB, url string) (*http.Response, []byte) {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp, b
}

// TestOpenAPIListsEveryRoute: the document served at /openapi.json (the
// committed openapi.json) is valid OpenAPI 3.1, and it has exactly the
// server's routes: every route the API registers (Routes, PublicRoutes),
// the cluster members' own (ClusterRoutes), Twilio's webhooks and the
// e-mail recipients' confirmation links (channels/email), each with the
// permission it is registered with; nothing more. Its error codes are
// those the code can answer: the one table's (channels/codes) and every
// code a handler of this package writes itself, and the links' own
// (EmailLinkError) channels/email's; its enums of
// roles, permissions, DING statuses, ledger events and webhook event
// types are the code's.
// (The members' own /cluster/ routes, fence, snapshot and relay, are
// between members, under the cluster secret: not the admin API.)
func TestOpenAPIListsEveryRoute(t *testing.T) {
	n := nodetest.Start(t, node.Config{MetricsAuth: true})
	resp, served := get(t, "http://"+n.HTTPAddr()+"/openapi.json")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || !bytes.Equal(served, httpapi.OpenAPI()) {
		t.Fatalf("GET /openapi.json: %d %q, %d bytes; want 200, application/json, the committed document", resp.StatusCode, resp.Header.Get("Content-Type"), len(served))
	}
	committed, err := os.ReadFile("openapi.json")
	if err != nil || !bytes.Equal(committed, served) {
		t.Fatalf("the served document is not openapi.json (%v)", err)
	}
	doc := openapitest.Load(t, served)
	if !doc.IsOpenAPI31OrLater() || doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi %q, want 3.1.0", doc.OpenAPI)
	}

	type want struct {
		perm string // "" for a route without an admin's permission
		kind string // admin, public, cluster, twilio, email
	}
	routes := map[string]want{}
	for _, rt := range n.API().Routes() {
		routes[rt.Pattern] = want{string(rt.Permission), "admin"}
	}
	for _, rt := range httpapi.ClusterRoutes {
		routes[rt.Pattern] = want{string(rt.Permission), "cluster"}
	}
	for _, p := range n.API().PublicRoutes() {
		routes[p] = want{"", "public"}
	}
	for _, p := range twilio.Routes() {
		routes[p] = want{"", "twilio"}
	}
	for _, p := range email.Routes() {
		routes[p] = want{"", "email"}
	}
	if len(email.Routes()) != 2 {
		t.Fatalf("email.Routes() = %v, want GET and POST /email/confirm", email.Routes())
	}
	if len(routes) < 55 || len(n.API().PublicRoutes()) < 4 {
		t.Fatalf("only %d routes (%d public): the listing is broken", len(routes), len(n.API().PublicRoutes()))
	}
	ops := openapitest.Operations(doc)
	for pattern, w := range routes {
		op := ops[pattern]
		if op == nil {
			t.Errorf("openapi.json lacks the route %s", pattern)
			continue
		}
		perm, _ := op.Extensions["x-ding-permission"].(string)
		public := w.kind == "public" || w.kind == "email" // a link's token is its own authentication
		switch {
		case public && (op.Security == nil || len(*op.Security) != 0):
			t.Errorf("%s is public; its operation must say security: []", pattern)
		case public && perm != "":
			t.Errorf("%s is public; its operation names the permission %q", pattern, perm)
		case w.kind == "admin" || w.kind == "cluster":
			if perm != w.perm {
				t.Errorf("%s: x-ding-permission %q, want %q", pattern, perm, w.perm)
			}
			if op.Security != nil && len(*op.Security) == 0 {
				t.Errorf("%s needs an admin; its operation says security: []", pattern)
			}
		}
		if cl, _ := op.Extensions["x-ding-cluster-only"].(bool); cl != (w.kind == "cluster") {
			t.Errorf("%s: x-ding-cluster-only %v, want %v", pattern, cl, w.kind == "cluster")
		}
		if op.OperationID == "" || op.Summary == "" {
			t.Errorf("%s has no operationId or summary", pattern)
		}
		if w.kind == "email" && (len(op.Tags) != 1 || op.Tags[0] != "email" || !strings.Contains(op.Description, "not for integrations")) {
			t.Errorf("%s: tags %v; want the tag email, and a description that says it is not for integrations", pattern, op.Tags)
		}
	}
	for pattern := range ops {
		if _, ok := routes[pattern]; !ok {
			t.Errorf("openapi.json documents %s, which is no route", pattern)
		}
	}
	// GET /metrics is public on a node without MetricsAuth: the document
	// names its permission, for when it is not.
	if op := ops["GET /metrics"]; op == nil || op.Extensions["x-ding-permission"] != string(httpapi.PermMetrics) {
		t.Errorf("GET /metrics: want x-ding-permission %q", httpapi.PermMetrics)
	}

	// The error codes: the table's and the handlers' own, no more.
	var documented []string
	for _, v := range doc.Components.Schemas["ErrorCode"].Value.Enum {
		documented = append(documented, v.(string))
	}
	answered := codes.HTTPCodes()
	answered = append(answered, codesIn(t, "*.go", `errf\(http\.Status\w+,\s*"([A-Z_]+)"`)...)
	// The cluster's own routes and refusals (internal/node's writeErr).
	nodeCodes := codesIn(t, "../../internal/node/*.go", `writeErr\(w, http\.Status\w+, .*, "([A-Z_]+)"\)`)
	if len(nodeCodes) < 10 {
		t.Fatalf("found only %d codes in internal/node's writeErr calls: the search is broken", len(nodeCodes))
	}
	answered = append(answered, nodeCodes...)
	if len(answered) < 40 {
		t.Fatalf("found only %d codes in the code: the search is broken", len(answered))
	}
	for _, c := range answered {
		if !slices.Contains(documented, c) {
			t.Errorf("the API can answer the code %s, which ErrorCode in openapi.json does not list", c)
		}
	}
	for _, c := range documented {
		if !slices.Contains(answered, c) {
			t.Errorf("openapi.json's ErrorCode lists %s, which no code answers", c)
		}
	}

	// The e-mail links' codes (EmailLinkError, not ErrorCode): those
	// channels/email's handler answers, no more.
	var linkDocumented, linkAnswered []string
	for _, v := range doc.Components.Schemas["EmailLinkError"].Value.Properties["error"].Value.Properties["code"].Value.Enum {
		linkDocumented = append(linkDocumented, v.(string))
	}
	src, err := os.ReadFile("../email/handler.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`linkError\{http\.Status\w+,\s*"([A-Z_]+)"`).FindAllStringSubmatch(string(src), -1) {
		linkAnswered = append(linkAnswered, m[1])
	}
	slices.Sort(linkDocumented)
	slices.Sort(linkAnswered)
	if linkAnswered = slices.Compact(linkAnswered); len(linkAnswered) < 5 || !slices.Equal(linkDocumented, linkAnswered) {
		t.Errorf("openapi.json's EmailLinkError codes are %v; channels/email answers %v", linkDocumented, linkAnswered)
	}

	// The enums follow the code: roles, permissions, a DING recipient's
	// statuses and ledger events (the engine's constants), webhook event
	// types (the engine's list).
	var roles, perms []string
	for _, r := range httpapi.Roles() {
		roles = append(roles, r.Name)
		for _, p := range r.Permissions {
			if !slices.Contains(perms, string(p)) {
				perms = append(perms, string(p))
			}
		}
	}
	perms = append(perms, string(httpapi.PermAnyAdmin))
	for _, e := range []struct {
		what string
		enum []any
		code []string
	}{
		{"Admin.role", doc.Components.Schemas["Admin"].Value.Properties["role"].Value.Enum, roles},
		{"Permission", doc.Components.Schemas["Permission"].Value.Enum, perms},
		{"RecipientStatus.status", doc.Components.Schemas["RecipientStatus"].Value.Properties["status"].Value.Enum,
			codesIn(t, "../../engine/*.go", `(?m)^\s+Status[A-Z][a-z]+\s+= "([a-z]+)" +// `)},
		{"LedgerEvent.event", doc.Components.Schemas["LedgerEvent"].Value.Properties["event"].Value.Enum,
			codesIn(t, "../../engine/*.go", `LedgerKind = "([a-z_]+)"`)},
		{"WebhookEventType", doc.Components.Schemas["WebhookEventType"].Value.Enum, engine.WebhookEventTypes()},
	} {
		var enum []string
		for _, v := range e.enum {
			enum = append(enum, v.(string))
		}
		slices.Sort(enum)
		code := slices.Clone(e.code)
		slices.Sort(code)
		if len(code) < 2 || !slices.Equal(enum, slices.Compact(code)) {
			t.Errorf("openapi.json's %s lists %v; the code has %v", e.what, enum, code)
		}
	}
}

// TestOpenAPIMatchesRealAnswers drives every route of the document but
// the cluster's (internal/node's TestClusterRoutesMatchOpenAPI) through
// real HTTP against a real node (Pebble in a temp dir, 127.0.0.1), in
// successes and typical refusals, and validates each answer against the
// document (channels/httpapi/openapitest); then it checks that every
// operation was validated (each /v1 one with a success), and that a
// document wrong in one field or one status fails the same answers.
func TestOpenAPIMatchesRealAnswers(t *testing.T) {
	// One client token mint per admin per hour, to see the 429.
	// Webhook events given up on after a failed attempt past a horizon of
	// 1ms, to see a real dead letter.
	n := nodetest.Start(t, node.Config{MaxBody: 1024, Limits: ratelimit.Config{TokenMints: ratelimit.Rate{N: 1, Per: time.Hour}},
		Webhooks: node.WebhooksConfig{Horizon: time.Millisecond, Timeout: 2 * time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}})
	base := "http://" + n.HTTPAddr()
	_, raw := get(t, base+"/openapi.json")
	c := openapitest.New(t, base)
	T := n.AdminToken()

	// Public routes; Twilio's webhooks without Twilio configured, and the
	// e-mail links without e-mail (internal/node's TestOpenAPIEmailLinks
	// runs them configured).
	c.Call(t, "GET /healthz", "/healthz", "", nil, 200)
	c.Call(t, "GET /readyz", "/readyz", "", nil, 200)
	c.Call(t, "GET /metrics", "/metrics", "", nil, 200)
	c.Call(t, "GET /openapi.json", "/openapi.json", "", nil, 200)
	c.Call(t, "GET /docs", "/docs", "", nil, 200)
	for _, p := range twilio.Routes() {
		c.Call(t, p, strings.TrimPrefix(p, "POST "), "", openapitest.Form("MessageSid=SM1&MessageStatus=sent"), 404)
	}
	c.Call(t, "GET /email/confirm", "/email/confirm?t=x", "", nil, 404)
	c.Call(t, "POST /email/confirm", "/email/confirm", "", openapitest.Form("t=x"), 404)

	// Admins.
	c.Call(t, "GET /v1/admins/me", "/v1/admins/me", T, nil, 200)
	crm := c.Call(t, "POST /v1/admins", "/v1/admins", T, map[string]any{"name": "crm", "role": "sender", "ttl_seconds": 3600}, 201)["token"].(string)
	c.Call(t, "POST /v1/admins", "/v1/admins", T, map[string]any{"name": "crm", "role": "sender"}, 409)
	c.Call(t, "POST /v1/admins", "/v1/admins", T, map[string]any{"name": "x", "role": "king"}, 400)
	c.Call(t, "POST /v1/admins", "/v1/admins", T, map[string]any{"name": "lead", "role": "dept-admin", "dept": "nosuch"}, 422)
	c.Call(t, "GET /v1/admins", "/v1/admins", T, nil, 200)
	c.Call(t, "GET /v1/users", "/v1/users", "", nil, 401)
	c.Call(t, "GET /v1/audit", "/v1/audit", crm, nil, 403)

	// The org and users.
	c.Call(t, "PUT /v1/departments/{id}", "/v1/departments/eng", T, map[string]any{"name": "Engineering"}, 201)
	c.Call(t, "PUT /v1/departments/{id}", "/v1/departments/sre", T, map[string]any{"name": "SRE", "parent": "eng"}, 201)
	c.Call(t, "PUT /v1/departments/{id}", "/v1/departments/eng", T, map[string]any{"name": "Eng"}, 200)
	c.Call(t, "PUT /v1/departments/{id}", "/v1/departments/eng", T, map[string]any{"name": "Eng", "parent": "sre"}, 409)
	c.Call(t, "PUT /v1/departments/{id}", "/v1/departments/web", T, map[string]any{"name": "Web", "parent": "nosuch"}, 422)
	c.Call(t, "GET /v1/departments", "/v1/departments", T, nil, 200)
	c.Call(t, "GET /v1/departments/{id}", "/v1/departments/eng", T, nil, 200)
	c.Call(t, "GET /v1/departments/{id}", "/v1/departments/nosuch", T, nil, 404)
	c.Call(t, "POST /v1/users", "/v1/users", T, map[string]any{"id": "ana", "name": "Ana", "department": "sre"}, 201)
	c.Call(t, "POST /v1/users", "/v1/users", T, map[string]any{"id": "ana", "name": "Ana"}, 409)
	c.Call(t, "POST /v1/users", "/v1/users", T, `{"id": "x", "nme": "typo"}`, 400)
	c.Call(t, "POST /v1/users", "/v1/users", T, map[string]any{"id": "bo", "name": "Bo", "phone": "+14155550100", "quiet_hours": "22:00-07:00"}, 201)
	c.Call(t, "PUT /v1/users/{id}", "/v1/users/cy", T, map[string]any{"name": "C", "phone": "", "quiet_hours": "", "department": "eng"}, 201)
	c.Call(t, "PUT /v1/users/{id}", "/v1/users/cy", T, map[string]any{"name": "C"}, 400)
	c.Call(t, "PATCH /v1/users/{id}", "/v1/users/cy", T, map[string]any{"name": "Cy"}, 200)
	c.Call(t, "PATCH /v1/users/{id}", "/v1/users/nosuch", T, map[string]any{"name": "X"}, 404)
	c.Call(t, "POST /v1/users/batch", "/v1/users/batch", T, map[string]any{"users": []map[string]any{{"id": "dan", "name": "Dan"}, {"id": "eve", "name": "Eve"}}}, 200)
	c.Call(t, "GET /v1/users", "/v1/users", T, nil, 200)
	c.Call(t, "GET /v1/users", "/v1/users?status=all", T, nil, 200)
	c.Call(t, "GET /v1/users", "/v1/users?status=bogus", T, nil, 400)
	c.Call(t, "GET /v1/users/{id}", "/v1/users/ana", T, nil, 200)
	c.Call(t, "GET /v1/users/{id}", "/v1/users/nosuch", T, nil, 404)
	c.Call(t, "POST /v1/tokens", "/v1/tokens", T, map[string]any{"user": "bo", "device": "phone", "ttl_seconds": 600}, 200)
	c.Call(t, "POST /v1/tokens", "/v1/tokens", T, map[string]any{"user": "zed", "device": "phone"}, 404)
	if e := c.Call(t, "POST /v1/tokens", "/v1/tokens", T, map[string]any{"user": "bo", "device": "tablet"}, 429); errCode(e) != "RATE_LIMITED" || c.Answers[len(c.Answers)-1].Header.Get("Retry-After") == "" {
		t.Errorf("a second mint within the hour: %v, want RATE_LIMITED with Retry-After", e)
	}
	nodetest.Dial(t, n, "bo", "laptop", nil)
	c.Call(t, "GET /v1/users/{id}/devices", "/v1/users/bo/devices", T, nil, 200)
	c.Call(t, "GET /v1/users/{id}/devices", "/v1/users/nosuch/devices", T, nil, 404)
	const apnsToken = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
	c.Call(t, "PUT /v1/users/{id}/push/{device}", "/v1/users/bo/push/phone", T, map[string]any{"provider": "apns", "token": apnsToken, "topic": "com.example.ding", "sandbox": true}, 200)
	c.Call(t, "PUT /v1/users/{id}/push/{device}", "/v1/users/bo/push/pixel", T, map[string]any{"provider": "fcm", "token": "fcm-token-0123456789:x", "mute": true}, 200)
	if e := c.Call(t, "PUT /v1/users/{id}/push/{device}", "/v1/users/bo/push/phone", T, map[string]any{"provider": "apns", "token": "abc"}, 400); !strings.Contains(fmt.Sprint(e), "64 or more hex digits") {
		t.Errorf("a short APNs token: %v, want an error that says what a token is", e)
	}
	c.Call(t, "PUT /v1/users/{id}/push/{device}", "/v1/users/zed/push/phone", T, map[string]any{"provider": "fcm", "token": "fcm-token-0123456789"}, 404)
	if pr := c.Call(t, "GET /v1/users/{id}/push", "/v1/users/bo/push", T, nil, 200); strings.Contains(fmt.Sprint(pr), apnsToken) || len(pr["devices"].([]any)) != 2 {
		t.Errorf("GET push registrations: %v, want two, without tokens", pr)
	}
	c.Call(t, "DELETE /v1/users/{id}/push/{device}", "/v1/users/bo/push/pixel", T, nil, 200)
	c.Call(t, "GET /v1/users/{id}/push", "/v1/users/nosuch/push", T, nil, 404)
	c.Call(t, "PUT /v1/groups/{id}", "/v1/groups/oncall", T, map[string]any{"name": "On call", "members": []string{"bo", "cy"}}, 201)
	c.Call(t, "PUT /v1/groups/{id}", "/v1/groups/oncall", T, map[string]any{"name": "On call", "members": []string{"bo"}}, 200)
	c.Call(t, "PUT /v1/groups/{id}", "/v1/groups/x", T, map[string]any{"name": "X", "members": []string{"zed"}}, 422)
	c.Call(t, "POST /v1/groups/{id}/members", "/v1/groups/oncall/members", T, map[string]any{"add": []string{"ana", "cy"}}, 200)
	c.Call(t, "POST /v1/groups/{id}/members", "/v1/groups/nosuch/members", T, map[string]any{"add": []string{"ana"}}, 404)
	c.Call(t, "GET /v1/groups", "/v1/groups", T, nil, 200)
	c.Call(t, "GET /v1/groups/{id}", "/v1/groups/oncall", T, nil, 200)
	c.Call(t, "GET /v1/groups/{id}", "/v1/groups/all", T, nil, 200)
	c.Call(t, "GET /v1/groups/{id}", "/v1/groups/dept:eng", T, nil, 200)
	c.Call(t, "GET /v1/groups/{id}", "/v1/groups/nosuch", T, nil, 404)

	// Messages, receipts, statistics.
	send := map[string]any{"from": "ana", "to": []string{"bo", "group:oncall"}, "text": "lunch?", "client_msg_id": "m1"}
	msg := c.Call(t, "POST /v1/messages", "/v1/messages", T, send, 200)["id"].(string)
	if again := c.Call(t, "POST /v1/messages", "/v1/messages", T, send, 200); again["id"] != msg || again["duplicate"] != true {
		t.Fatalf("a retried send: %v, want the id %s and duplicate", again, msg)
	}
	c.Call(t, "POST /v1/messages", "/v1/messages", T, map[string]any{"from": "zed", "to": []string{"bo"}, "text": "x"}, 422)
	c.Call(t, "POST /v1/messages", "/v1/messages", T, map[string]any{"from": "ana", "to": []string{"zed"}, "text": "x"}, 422)
	c.Call(t, "POST /v1/messages", "/v1/messages", T, map[string]any{"from": "ana", "to": []string{"bo"}, "text": strings.Repeat("x", 2000)}, 413)
	c.Call(t, "POST /v1/messages", "/v1/messages", T, map[string]any{"from": "ana", "to": []string{"bo"}, "kind": "video"}, 400)
	c.Call(t, "POST /v1/messages", "/v1/messages", T, `{"from": "ana", "to": [`, 400)
	c.Call(t, "POST /v1/messages", "/v1/messages", T, map[string]any{"from": "ana", "to": []string{"bo"}, "text": "x", "forward_of": "01KBMA4Q7ZQ0000000000A1B2C"}, 404)
	c.Call(t, "GET /v1/messages/{id}/receipts", "/v1/messages/"+msg+"/receipts", T, nil, 200)
	c.Call(t, "GET /v1/messages/{id}/receipts", "/v1/messages/bad/receipts", T, nil, 400)
	c.Call(t, "GET /v1/messages/{id}/receipts", "/v1/messages/01KBMA4Q7ZQ0000000000A1B2C/receipts", T, nil, 404)
	c.Call(t, "GET /v1/messages/{id}/stats", "/v1/messages/"+msg+"/stats", T, nil, 200)
	c.Call(t, "GET /v1/messages/{id}/stats", "/v1/messages/"+msg+"/stats?lists=1", T, nil, 200)
	c.Call(t, "GET /v1/messages/{id}/stats", "/v1/messages/"+msg+"/stats?format=csv", T, nil, 200)
	c.Call(t, "GET /v1/messages/{id}/stats", "/v1/messages/bad/stats", T, nil, 400)

	// Announcements.
	ann := map[string]any{"to": "all", "text": "Office closed Friday", "confirm": true, "client_msg_id": "a1"}
	annID := c.Call(t, "POST /v1/announcements", "/v1/announcements", T, ann, 201)["id"].(string)
	c.Call(t, "POST /v1/announcements", "/v1/announcements", T, ann, 200)
	c.Call(t, "POST /v1/announcements", "/v1/announcements", T, map[string]any{"from": "ana", "to": []string{"dept:eng", "group:oncall"}, "text": "standup"}, 201)
	c.Call(t, "POST /v1/announcements", "/v1/announcements", T, map[string]any{"to": "bo", "text": "x"}, 400)
	c.Call(t, "POST /v1/announcements", "/v1/announcements", T, map[string]any{"from": "zed", "to": "all", "text": "x"}, 422)
	c.Call(t, "GET /v1/announcements/{id}/stats", "/v1/announcements/"+annID+"/stats", T, nil, 200)
	c.Call(t, "GET /v1/announcements/{id}/stats", "/v1/announcements/"+annID+"/stats?lists=1", T, nil, 200)
	c.Call(t, "GET /v1/announcements/{id}/stats", "/v1/announcements/"+annID+"/stats?format=csv&only=unconfirmed", T, nil, 200)
	c.Call(t, "GET /v1/announcements/{id}/stats", "/v1/announcements/"+annID+"/stats?format=csv&only=bogus", T, nil, 400)
	c.Call(t, "POST /v1/announcements/{id}/reding", "/v1/announcements/"+annID+"/reding", T, map[string]any{"policy": "inapp"}, 200)
	c.Call(t, "POST /v1/announcements/{id}/reding", "/v1/announcements/01KBMA4Q7ZQ0000000000A1B2C/reding", T, map[string]any{"policy": "inapp"}, 404)

	// DINGs and policies.
	ding := map[string]any{"from": "ana", "to": []string{"bo", "+14155550123"}, "text": "Server room is flooding",
		"policy": "inapp,sms@1m", "choices": []string{"attend", "decline"}, "client_msg_id": "d1"}
	dingID := c.Call(t, "POST /v1/dings", "/v1/dings", T, ding, 201)["id"].(string)
	c.Call(t, "POST /v1/dings", "/v1/dings", T, ding, 200)
	c.Call(t, "POST /v1/dings", "/v1/dings", T, map[string]any{"from": "ana", "to": []string{"cy"}, "text": "x", "policy": "carrier-pigeon@1m"}, 400)
	c.Call(t, "POST /v1/dings", "/v1/dings", T, map[string]any{"from": "zed", "to": []string{"cy"}, "text": "x"}, 422)
	c.Call(t, "GET /v1/dings", "/v1/dings", T, nil, 200)
	c.Call(t, "GET /v1/dings", "/v1/dings?from=ana&limit=10", T, nil, 200)
	c.Call(t, "GET /v1/dings", "/v1/dings?limit=0", T, nil, 400)
	c.Call(t, "GET /v1/dings/{id}", "/v1/dings/"+dingID, T, nil, 200)
	c.Call(t, "GET /v1/dings/{id}", "/v1/dings/bad", T, nil, 400)
	c.Call(t, "GET /v1/dings/{id}", "/v1/dings/01KBMA4Q7ZQ0000000000A1B2C", T, nil, 404)
	c.Call(t, "POST /v1/dings/{id}/cancel", "/v1/dings/"+dingID+"/cancel", T, nil, 200)
	if again := c.Call(t, "POST /v1/dings/{id}/cancel", "/v1/dings/"+dingID+"/cancel", T, nil, 200); again["stopped"] != 0.0 || again["note"] == nil {
		t.Errorf("a second cancel: %v, want stopped 0 and a note", again)
	}
	c.Call(t, "POST /v1/dings/{id}/cancel", "/v1/dings/bad/cancel", T, nil, 400)
	c.Call(t, "POST /v1/dings/{id}/cancel", "/v1/dings/"+msg+"/cancel", T, nil, 404)
	c.Call(t, "GET /v1/dings/{id}", "/v1/dings/"+msg, T, nil, 404)
	c.Call(t, "PUT /v1/policies/{name}", "/v1/policies/urgent", T, map[string]any{"policy": "inapp,sms@5m,voice@15m until=confirmed"}, 200)
	c.Call(t, "PUT /v1/policies/{name}", "/v1/policies/urgent", T, map[string]any{"policy": "smoke-signals"}, 400)
	c.Call(t, "GET /v1/policies", "/v1/policies", T, nil, 200)

	// Secret chats.
	chat := c.Call(t, "POST /v1/secret-chats", "/v1/secret-chats", T, map[string]any{"from": "ana", "to": "eve", "level": 2}, 201)["id"].(string)
	c.Call(t, "POST /v1/secret-chats", "/v1/secret-chats", T, map[string]any{"from": "ana", "to": "eve", "level": 9}, 400)
	c.Call(t, "POST /v1/secret-chats", "/v1/secret-chats", T, map[string]any{"from": "ana", "to": "zed", "level": 1}, 422)
	secret := c.Call(t, "POST /v1/messages", "/v1/messages", T, map[string]any{"from": "ana", "chat": chat, "text": "the door code is 4711"}, 200)["id"].(string)
	c.Call(t, "POST /v1/messages", "/v1/messages", T, map[string]any{"from": "eve", "to": []string{"cy"}, "text": "fwd", "forward_of": secret}, 409)
	c.Call(t, "POST /v1/messages", "/v1/messages", T, map[string]any{"from": "cy", "chat": chat, "text": "hi"}, 403)
	c.Call(t, "GET /v1/messages/{id}/receipts", "/v1/messages/"+secret+"/receipts", T, nil, 200)
	c.Call(t, "GET /v1/secret-chats/{id}", "/v1/secret-chats/"+chat, T, nil, 200)
	c.Call(t, "GET /v1/secret-chats/{id}", "/v1/secret-chats/01KBMA4Q7ZQ0000000000A1B2C", T, nil, 404)
	c.Call(t, "GET /v1/users/{id}/secret-chats", "/v1/users/eve/secret-chats", T, nil, 200)
	c.Call(t, "GET /v1/users/{id}/secret-chats", "/v1/users/nosuch/secret-chats", T, nil, 404)

	// Statistics and the audit log.
	c.Call(t, "GET /v1/stats", "/v1/stats", T, nil, 200)
	c.Call(t, "GET /v1/stats", "/v1/stats?dept=sre,eng&top=5", T, nil, 200)
	c.Call(t, "GET /v1/stats", "/v1/stats?top=0", T, nil, 400)
	c.Call(t, "GET /v1/audit", "/v1/audit?limit=5", T, nil, 200)
	c.Call(t, "GET /v1/audit", "/v1/audit?limit=5000", T, nil, 400)
	head := c.Call(t, "GET /v1/audit/verify", "/v1/audit/verify", T, nil, 200)["head_hash"].(string)
	c.Call(t, "GET /v1/audit/verify", "/v1/audit/verify?expect="+head, T, nil, 200)
	c.Call(t, "GET /v1/audit/verify", "/v1/audit/verify?expect=zz", T, nil, 400)

	// The directory import.
	org := "id,name,phone,department_path\nana,Ana,,Eng/SRE\nfay,Fay,+14155550199,Eng\n"
	c.Call(t, "POST /v1/directory/import", "/v1/directory/import?dry_run=1", T, openapitest.CSV(org), 200)
	c.Call(t, "POST /v1/directory/import", "/v1/directory/import?format=json", T, map[string]any{"users": []map[string]any{{"id": "gus", "name": "Gus"}}}, 200)
	c.Call(t, "POST /v1/directory/import", "/v1/directory/import?format=xml", T, "<org/>", 400)
	c.Call(t, "POST /v1/directory/import", "/v1/directory/import?remove_missing=1", T, map[string]any{"users": []map[string]any{{"id": "gus", "name": "Gus"}}}, 409)

	// Operations.
	c.Call(t, "POST /v1/backup", "/v1/backup", T, map[string]any{"dir": "b1"}, 200)
	c.Call(t, "POST /v1/backup", "/v1/backup", T, map[string]any{"dir": "/etc/b1"}, 403)
	c.Call(t, "POST /v1/backup", "/v1/backup", T, map[string]any{}, 400)
	c.Call(t, "POST /v1/backup/verify", "/v1/backup/verify", T, map[string]any{"dir": "b1"}, 200)
	c.Call(t, "POST /v1/backup/verify", "/v1/backup/verify", T, map[string]any{"dir": "nosuch"}, 422)
	c.Call(t, "POST /v1/retention/sweep", "/v1/retention/sweep", T, nil, 200)

	// Outbound webhooks: subscriptions to a loopback port nothing listens
	// on; the secret only in the 201. A user added makes an event whose
	// attempts fail, parked within ms: a real dead letter, replayed.
	hook := c.Call(t, "POST /v1/webhooks", "/v1/webhooks", T, map[string]any{"url": "http://127.0.0.1:1/hook", "events": []string{"ding.*", "user.added"}, "description": "crm"}, 201)
	hookID, _ := hook["id"].(string)
	if s, _ := hook["secret"].(string); !strings.HasPrefix(s, "whsec_") || hookID == "" {
		t.Fatalf("POST /v1/webhooks: %v, want an id and a whsec_ secret", hook)
	}
	minimal := c.Call(t, "POST /v1/webhooks", "/v1/webhooks", T, map[string]any{"url": "http://127.0.0.1:1/all", "events": []string{"*"}}, 201)["id"].(string)
	c.Call(t, "POST /v1/webhooks", "/v1/webhooks", T, map[string]any{"url": "ftp://127.0.0.1/hook", "events": []string{"*"}}, 400)
	c.Call(t, "POST /v1/webhooks", "/v1/webhooks", T, map[string]any{"url": "http://127.0.0.1:1/hook", "events": []string{"ding.bogus"}}, 400)
	c.Call(t, "POST /v1/webhooks", "/v1/webhooks", T, map[string]any{"url": "http://127.0.0.1:1/hook", "events": []string{"*"}, "secret": "mine"}, 400)
	c.Call(t, "POST /v1/webhooks", "/v1/webhooks", T, map[string]any{"url": "http://127.0.0.1:1/hook", "events": []string{"*"}, "description": strings.Repeat("x", 20<<10)}, 413) // over the routes' limit, 2×MaxBody+16KiB
	c.Call(t, "POST /v1/webhooks", "/v1/webhooks", crm, map[string]any{"url": "http://127.0.0.1:1/hook", "events": []string{"*"}}, 403)
	c.Call(t, "POST /v1/users", "/v1/users", T, map[string]any{"id": "hal", "name": "Hal"}, 201)
	deliveries := "/v1/webhooks/" + hookID + "/deliveries"
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		req, _ := http.NewRequest("GET", base+deliveries, nil)
		req.Header.Set("Authorization", "Bearer "+T)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			DeadLetters []any `json:"dead_letters"`
		}
		json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if len(out.DeadLetters) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dead letter for %s's user.added after 10s", hookID)
		}
	}
	dead := c.Call(t, "GET /v1/webhooks/{id}/deliveries", deliveries, T, nil, 200)["dead_letters"].([]any)[0].(map[string]any)
	if a, _ := dead["attempts"].(float64); dead["type"] != "user.added" || a < 1 || dead["replay"] != false {
		t.Errorf("the dead letter: %v, want user.added after an attempt or more, not marked for replay", dead)
	}
	if page := c.Call(t, "GET /v1/webhooks/{id}/deliveries", deliveries+"?after=0&limit=1", T, nil, 200); page["next"] == nil {
		t.Errorf("a full page of deliveries: %v, want next", page)
	}
	c.Call(t, "GET /v1/webhooks/{id}/deliveries", deliveries+"?limit=0", T, nil, 400)
	c.Call(t, "GET /v1/webhooks/{id}/deliveries", deliveries+"?after=x", T, nil, 400)
	c.Call(t, "GET /v1/webhooks/{id}/deliveries", "/v1/webhooks/wh_0000000000000000/deliveries", T, nil, 404)
	if list := c.Call(t, "GET /v1/webhooks", "/v1/webhooks", T, nil, 200); len(list["webhooks"].([]any)) != 2 {
		t.Errorf("GET /v1/webhooks: %v, want the 2 subscriptions", list)
	}
	c.Call(t, "GET /v1/webhooks/{id}", "/v1/webhooks/"+hookID, T, nil, 200)
	c.Call(t, "GET /v1/webhooks/{id}", "/v1/webhooks/wh_0000000000000000", T, nil, 404)
	c.Call(t, "POST /v1/webhooks/{id}/pause", "/v1/webhooks/"+hookID+"/pause", T, nil, 200)
	c.Call(t, "POST /v1/webhooks/{id}/pause", "/v1/webhooks/wh_0000000000000000/pause", T, nil, 404)
	if r := c.Call(t, "POST /v1/webhooks/{id}/replay", "/v1/webhooks/"+hookID+"/replay", T, map[string]any{"ids": []string{dead["id"].(string)}}, 200); r["replayed"] != 1.0 {
		t.Errorf("replaying %s: %v, want 1 replayed", dead["id"], r)
	}
	c.Call(t, "POST /v1/webhooks/{id}/replay", "/v1/webhooks/"+hookID+"/replay", T, nil, 200)
	c.Call(t, "POST /v1/webhooks/{id}/replay", "/v1/webhooks/"+hookID+"/replay", T, map[string]any{"ids": []string{"12"}}, 400)
	c.Call(t, "POST /v1/webhooks/{id}/replay", "/v1/webhooks/wh_0000000000000000/replay", T, map[string]any{}, 404)
	c.Call(t, "POST /v1/webhooks/{id}/resume", "/v1/webhooks/"+hookID+"/resume", T, nil, 200)
	c.Call(t, "POST /v1/webhooks/{id}/resume", "/v1/webhooks/wh_0000000000000000/resume", T, nil, 404)
	c.Call(t, "DELETE /v1/webhooks/{id}", "/v1/webhooks/"+hookID, T, nil, 200)
	c.Call(t, "DELETE /v1/webhooks/{id}", "/v1/webhooks/"+hookID, T, nil, 404)
	c.Call(t, "DELETE /v1/webhooks/{id}", "/v1/webhooks/"+minimal, T, nil, 200)

	// Revocations and removals.
	c.Call(t, "POST /v1/users/{id}/revoke-tokens", "/v1/users/bo/revoke-tokens", T, map[string]any{"device": "phone"}, 200)
	c.Call(t, "POST /v1/users/{id}/revoke-tokens", "/v1/users/bo/revoke-tokens", T, map[string]any{}, 200)
	c.Call(t, "POST /v1/users/{id}/revoke-tokens", "/v1/users/bo/revoke-tokens", T, nil, 400)
	c.Call(t, "POST /v1/users/{id}/revoke-tokens", "/v1/users/nosuch/revoke-tokens", T, map[string]any{}, 404)
	c.Call(t, "DELETE /v1/users/{id}", "/v1/users/dan", T, nil, 200)
	if again := c.Call(t, "DELETE /v1/users/{id}", "/v1/users/dan", T, nil, 200); again["already_removed"] != true {
		t.Errorf("removing dan again: %v, want already_removed", again)
	}
	c.Call(t, "DELETE /v1/users/{id}", "/v1/users/nosuch", T, nil, 404)
	c.Call(t, "DELETE /v1/groups/{id}", "/v1/groups/oncall", T, nil, 200)
	c.Call(t, "DELETE /v1/groups/{id}", "/v1/groups/oncall", T, nil, 404)
	c.Call(t, "DELETE /v1/departments/{id}", "/v1/departments/eng", T, nil, 409)
	c.Call(t, "PUT /v1/departments/{id}", "/v1/departments/tmp", T, map[string]any{"name": "Temp"}, 201)
	c.Call(t, "DELETE /v1/departments/{id}", "/v1/departments/tmp", T, nil, 200)
	c.Call(t, "DELETE /v1/departments/{id}", "/v1/departments/tmp", T, nil, 404)
	c.Call(t, "POST /v1/admins/{name}/revoke", "/v1/admins/crm/revoke", T, nil, 200)
	c.Call(t, "POST /v1/admins/{name}/revoke", "/v1/admins/nosuch/revoke", T, nil, 404)
	c.Call(t, "POST /v1/admins/{name}/revoke", "/v1/admins/owner/revoke", T, nil, 409)
	c.Call(t, "GET /v1/users", "/v1/users", crm, nil, 401)

	// GET /metrics behind an admin token (MetricsAuth), on a second node.
	m := nodetest.Start(t, node.Config{MetricsAuth: true})
	c.Base = "http://" + m.HTTPAddr()
	c.Call(t, "GET /metrics", "/metrics", "", nil, 401)
	c.Call(t, "GET /metrics", "/metrics", m.AdminToken(), nil, 200)
	c.Base = base

	// Every operation was validated, every /v1 one with a success; the
	// cluster's need a cluster (internal/node's tests run one).
	validated, succeeded := c.Coverage()
	var missed []string
	for pattern, op := range openapitest.Operations(c.Doc) {
		if cl, _ := op.Extensions["x-ding-cluster-only"].(bool); cl {
			continue
		}
		if validated[pattern] == 0 || (strings.Contains(pattern, " /v1/") && !succeeded[pattern]) {
			missed = append(missed, pattern)
		}
	}
	sort.Strings(missed)
	if len(missed) > 0 {
		t.Errorf("operations not validated (by a success, for /v1): %v", missed)
	}
	t.Logf("validated %d real answers (and the requests of the successes) of %d operations against openapi.json", len(c.Answers), len(validated))
	if t.Failed() {
		return
	}

	// The validation can fail: the same answers against a document wrong
	// in one field of a user, or missing one status, do not pass.
	wrong := func(name string, mutate func(doc map[string]any), failing string) {
		t.Run(name, func(t *testing.T) {
			var m map[string]any
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			mutate(m)
			b, _ := json.Marshal(m)
			doc := openapitest.Load(t, b)
			bad := 0
			for _, a := range c.Answers {
				if err := openapitest.Validate(doc, a); err != nil {
					bad++
					if a.Op == failing {
						return
					}
				}
			}
			t.Fatalf("%d answers failed against the wrong document, none of %s", bad, failing)
		})
	}
	dig := func(m map[string]any, path ...string) map[string]any {
		for _, p := range path {
			m = m[p].(map[string]any)
		}
		return m
	}
	wrong("a user without its status", func(m map[string]any) {
		delete(dig(m, "components", "schemas", "User", "properties"), "status")
	}, "GET /v1/users/{id}")
	wrong("a DING's created as a number", func(m map[string]any) {
		dig(m, "components", "schemas", "DingSummary", "properties")["created"] = map[string]any{"type": "integer"}
	}, "GET /v1/dings")
	wrong("no 409 for an existing user", func(m map[string]any) {
		delete(dig(m, "paths", "/v1/users", "post", "responses"), "409")
	}, "POST /v1/users")
	wrong("a dead letter without its parked time", func(m map[string]any) {
		delete(dig(m, "components", "schemas", "WebhookDeadLetter", "properties"), "parked")
	}, "GET /v1/webhooks/{id}/deliveries")
	wrong("a created subscription without its secret", func(m map[string]any) {
		delete(dig(m, "components", "schemas", "WebhookCreated", "properties"), "secret")
	}, "POST /v1/webhooks")
	wrong("an error without its detail", func(m map[string]any) {
		props := dig(m, "components", "schemas", "Error", "properties", "error", "properties")
		delete(props, "detail")
	}, "GET /v1/departments/{id}")
}

// TestDocsPageIsSelfContained: GET /docs is public HTML that loads
// nothing from elsewhere (no src or href to another origin, no
// stylesheet or module), and its Content-Security-Policy allows exactly
// its own inline script and style (by hash) and fetching openapi.json
// from this server, so that a browser runs it and nothing else.
func TestDocsPageIsSelfContained(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	resp, page := get(t, "http://"+n.HTTPAddr()+"/docs")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET /docs: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := string(page)
	if m := regexp.MustCompile(`(?i)(src|href|action)\s*=\s*["']?[a-z]*:?//|<link|@import|\bimport\s*\(`).FindString(s); m != "" {
		t.Errorf("the docs page refers to something elsewhere: %q", m)
	}
	if !strings.Contains(s, `fetch("openapi.json"`) {
		t.Error("the docs page does not fetch openapi.json")
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, tag := range []string{"script", "style"} {
		i, j := strings.Index(s, "<"+tag+">"), strings.Index(s, "</"+tag+">")
		if i < 0 || j < i || strings.Count(s, "<"+tag) != 1 {
			t.Fatalf("want one inline <%s>", tag)
		}
		sum := sha256.Sum256([]byte(s[i+len(tag)+2 : j]))
		if src := tag + "-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, src) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, src)
		}
	}
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
}

// TestOpenAPITwilioWebhooks: Twilio's webhooks, on a node with Twilio
// configured (a fake Twilio on loopback as its API), answer signed,
// unsigned and malformed requests as the document says.
func TestOpenAPITwilioWebhooks(t *testing.T) {
	const sid, token = "AC00000000000000000000000000000001", "secret0token0for0tests"
	fake := twiliotest.NewServer(sid, token)
	t.Cleanup(fake.Close)
	addr := nodetest.FreeAddr(t)
	public := "http://" + addr
	nodetest.Start(t, node.Config{HTTPAddr: addr,
		Twilio: twilio.Config{AccountSID: sid, AuthToken: token, From: "+15005550006", PublicURL: public, APIURL: fake.URL()}})
	c := openapitest.New(t, public)
	post := func(route string, form url.Values, signature string, want int) {
		t.Helper()
		path := strings.TrimPrefix(route, "POST ")
		body := form.Encode()
		req, _ := http.NewRequest("POST", public+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if signature != "" {
			req.Header.Set("X-Twilio-Signature", signature)
		}
		c.Send(t, route, req, []byte(body), want)
	}
	forms := map[string]url.Values{
		"POST /twilio/sms/status":   {"MessageSid": {"SM0000"}, "MessageStatus": {"delivered"}},
		"POST /twilio/voice/status": {"CallSid": {"CA0000"}, "CallStatus": {"completed"}},
		"POST /twilio/voice/gather": {"CallSid": {"CA0000"}, "Digits": {"1"}},
		"POST /twilio/sms/inbound":  {"From": {"+14155550100"}, "Body": {"1"}},
	}
	for _, route := range twilio.Routes() {
		form := forms[route]
		if form == nil {
			t.Fatalf("no form for %s", route)
		}
		target := public + strings.TrimPrefix(route, "POST ")
		post(route, form, twiliotest.Sign(token, target, form), 200) // an unknown SID or phone: taken
		post(route, form, "", 403)
		post(route, form, twiliotest.Sign("another-token", target, form), 403)
		empty := url.Values{"Body": {"x"}} // no SID, no From
		post(route, empty, twiliotest.Sign(token, target, empty), 400)
	}
	if validated, succeeded := c.Coverage(); len(validated) != 4 || !maps.Equal(succeeded, map[string]bool{
		"POST /twilio/sms/status": true, "POST /twilio/voice/status": true, "POST /twilio/voice/gather": true, "POST /twilio/sms/inbound": true}) {
		t.Fatalf("validated %v, succeeded %v: want the 4 webhooks", validated, succeeded)
	}
}

// codesIn returns the first group of pattern's matches in the Go files
// (tests left out) that glob names: the codes and enum values written
// literally.
func codesIn(t *testing.T, glob, pattern string) []string {
	t.Helper()
	files, _ := filepath.Glob(glob)
	re := regexp.MustCompile(pattern)
	var out []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(src), -1) {
			out = append(out, m[1])
		}
	}
	return out
}
