package httpapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	"github.com/dingmq/ding/channels/codes"
	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
	"github.com/dingmq/ding/internal/ratelimit"
)

// loadDoc parses and validates an OpenAPI document (kin-openapi's own
// checks of the document: refs resolve, schemas are schemas, ...).
func loadDoc(tb testing.TB, raw []byte) *openapi3.T {
	tb.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(raw)
	if err != nil {
		tb.Fatalf("load the OpenAPI document: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		tb.Fatalf("the OpenAPI document is invalid: %v", err)
	}
	return doc
}

// operations returns the document's operations by "METHOD /path".
func operations(doc *openapi3.T) map[string]*openapi3.Operation {
	out := map[string]*openapi3.Operation{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			out[method+" "+path] = op
		}
	}
	return out
}

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
// the cluster members' own (ClusterRoutes) and Twilio's webhooks, each
// with the permission it is registered with; nothing more. Its error
// codes are those the code can answer: the one table's (channels/codes)
// and every code a handler of this package writes itself.
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
	doc := loadDoc(t, served)
	if !doc.IsOpenAPI31OrLater() || doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi %q, want 3.1.0", doc.OpenAPI)
	}

	type want struct {
		perm string // "" for a route without an admin's permission
		kind string // admin, public, cluster, twilio
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
	if len(routes) < 55 || len(n.API().PublicRoutes()) < 4 {
		t.Fatalf("only %d routes (%d public): the listing is broken", len(routes), len(n.API().PublicRoutes()))
	}
	ops := operations(doc)
	for pattern, w := range routes {
		op := ops[pattern]
		if op == nil {
			t.Errorf("openapi.json lacks the route %s", pattern)
			continue
		}
		perm, _ := op.Extensions["x-ding-permission"].(string)
		switch {
		case w.kind == "public" && (op.Security == nil || len(*op.Security) != 0):
			t.Errorf("%s is public; its operation must say security: []", pattern)
		case w.kind == "public" && perm != "":
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
	files, _ := filepath.Glob("*.go")
	literal := regexp.MustCompile(`errf\(http\.Status\w+,\s*"([A-Z_]+)"`)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range literal.FindAllStringSubmatch(string(src), -1) {
			answered = append(answered, m[1])
		}
	}
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
}

// answer is one real request and the server's answer to it.
type answer struct {
	op, path, query string
	reqType         string
	reqBody         []byte
	status          int
	header          http.Header
	body            []byte
}

// checker makes real requests to a node and validates every answer
// against the document.
type checker struct {
	t       *testing.T
	doc     *openapi3.T
	base    string
	tok     string
	answers []answer
}

// csvBody is a request body sent as text/csv; formBody, as a form.
type (
	csvBody  string
	formBody string
)

// call sends a request for the operation op ("POST /v1/users") to path
// (with its query, if any) and validates the answer, which must have the
// status want: its status is documented, and its headers and body match
// the documented response. A request answered 2xx must also match the
// documented request. It returns the answer's JSON (nil if it is none).
func (c *checker) call(op, path, tok string, body any, want int) map[string]any {
	c.t.Helper()
	var raw []byte
	ctype := "application/json"
	switch b := body.(type) {
	case nil:
		ctype = ""
	case string:
		raw = []byte(b)
	case csvBody:
		raw, ctype = []byte(b), "text/csv"
	case formBody:
		raw, ctype = []byte(b), "application/x-www-form-urlencoded"
	default:
		raw, _ = json.Marshal(b)
	}
	method, _, _ := strings.Cut(op, " ")
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(raw))
	if err != nil {
		c.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		c.t.Fatal(err)
	}
	p, q, _ := strings.Cut(path, "?")
	a := answer{op: op, path: p, query: q, reqType: ctype, reqBody: raw, status: resp.StatusCode, header: resp.Header, body: got}
	if resp.StatusCode != want {
		c.t.Fatalf("%s (%s): %d %s; want %d", op, path, resp.StatusCode, got, want)
	}
	if err := validate(c.doc, a); err != nil {
		c.t.Errorf("%s (%s) answered %d, which the document does not allow:\n%v\nbody: %s", op, path, a.status, err, got)
	}
	c.answers = append(c.answers, a)
	var out map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		json.Unmarshal(got, &out)
	}
	return out
}

// validate checks a real answer against doc with kin-openapi: the answer
// always (openapi3filter.ValidateResponse, undocumented statuses
// refused), the request too when it succeeded (ValidateRequest: what the
// server took, the document must take).
func validate(doc *openapi3.T, a answer) error {
	method, tmpl, _ := strings.Cut(a.op, " ")
	item := doc.Paths.Value(tmpl)
	if item == nil || item.GetOperation(method) == nil {
		return &openapi3filter.RequestError{Reason: "no operation " + a.op + " in the document"}
	}
	params := map[string]string{}
	ts, ps := strings.Split(tmpl, "/"), strings.Split(a.path, "/")
	for i, s := range ts {
		if strings.HasPrefix(s, "{") && i < len(ps) {
			params[strings.Trim(s, "{}")] = ps[i]
		}
	}
	target := a.path
	if a.query != "" {
		target += "?" + a.query
	}
	req := httptest.NewRequest(method, target, bytes.NewReader(a.reqBody))
	if a.reqType != "" {
		req.Header.Set("Content-Type", a.reqType)
	}
	route := &routers.Route{Spec: doc, Path: tmpl, PathItem: item, Method: method, Operation: item.GetOperation(method)}
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true, AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	ctx := context.Background()
	if a.status/100 == 2 {
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			return err
		}
		req.Body = io.NopCloser(bytes.NewReader(a.reqBody))
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: a.status, Header: a.header, Options: opts}
	out.SetBodyBytes(a.body)
	return openapi3filter.ValidateResponse(ctx, out)
}

// TestOpenAPIMatchesRealAnswers drives every route of the document but
// the cluster's through real HTTP against a real node (Pebble in a temp
// dir, 127.0.0.1), in successes and typical refusals, and validates each
// answer against the document; then it checks that every operation was
// validated (each /v1 one with a success), and that a document wrong in
// one field or one status fails the same answers.
func TestOpenAPIMatchesRealAnswers(t *testing.T) {
	// One client token mint per admin per hour, to see the 429.
	n := nodetest.Start(t, node.Config{MaxBody: 1024, Limits: ratelimit.Config{TokenMints: ratelimit.Rate{N: 1, Per: time.Hour}}})
	base := "http://" + n.HTTPAddr()
	_, raw := get(t, base+"/openapi.json")
	c := &checker{t: t, doc: loadDoc(t, raw), base: base, tok: n.AdminToken()}
	T := c.tok

	// Public routes; Twilio's webhooks without Twilio configured.
	c.call("GET /healthz", "/healthz", "", nil, 200)
	c.call("GET /readyz", "/readyz", "", nil, 200)
	c.call("GET /metrics", "/metrics", "", nil, 200)
	c.call("GET /openapi.json", "/openapi.json", "", nil, 200)
	c.call("GET /docs", "/docs", "", nil, 200)
	for _, p := range twilio.Routes() {
		c.call(p, strings.TrimPrefix(p, "POST "), "", formBody("MessageSid=SM1&MessageStatus=sent"), 404)
	}

	// Admins.
	c.call("GET /v1/admins/me", "/v1/admins/me", T, nil, 200)
	crm := c.call("POST /v1/admins", "/v1/admins", T, map[string]any{"name": "crm", "role": "sender", "ttl_seconds": 3600}, 201)["token"].(string)
	c.call("POST /v1/admins", "/v1/admins", T, map[string]any{"name": "crm", "role": "sender"}, 409)
	c.call("POST /v1/admins", "/v1/admins", T, map[string]any{"name": "x", "role": "king"}, 400)
	c.call("POST /v1/admins", "/v1/admins", T, map[string]any{"name": "lead", "role": "dept-admin", "dept": "nosuch"}, 422)
	c.call("GET /v1/admins", "/v1/admins", T, nil, 200)
	c.call("GET /v1/users", "/v1/users", "", nil, 401)
	c.call("GET /v1/audit", "/v1/audit", crm, nil, 403)

	// The org and users.
	c.call("PUT /v1/departments/{id}", "/v1/departments/eng", T, map[string]any{"name": "Engineering"}, 201)
	c.call("PUT /v1/departments/{id}", "/v1/departments/sre", T, map[string]any{"name": "SRE", "parent": "eng"}, 201)
	c.call("PUT /v1/departments/{id}", "/v1/departments/eng", T, map[string]any{"name": "Eng"}, 200)
	c.call("PUT /v1/departments/{id}", "/v1/departments/eng", T, map[string]any{"name": "Eng", "parent": "sre"}, 409)
	c.call("PUT /v1/departments/{id}", "/v1/departments/web", T, map[string]any{"name": "Web", "parent": "nosuch"}, 422)
	c.call("GET /v1/departments", "/v1/departments", T, nil, 200)
	c.call("GET /v1/departments/{id}", "/v1/departments/eng", T, nil, 200)
	c.call("GET /v1/departments/{id}", "/v1/departments/nosuch", T, nil, 404)
	c.call("POST /v1/users", "/v1/users", T, map[string]any{"id": "ana", "name": "Ana", "department": "sre"}, 201)
	c.call("POST /v1/users", "/v1/users", T, map[string]any{"id": "ana", "name": "Ana"}, 409)
	c.call("POST /v1/users", "/v1/users", T, `{"id": "x", "nme": "typo"}`, 400)
	c.call("POST /v1/users", "/v1/users", T, map[string]any{"id": "bo", "name": "Bo", "phone": "+14155550100", "quiet_hours": "22:00-07:00"}, 201)
	c.call("PUT /v1/users/{id}", "/v1/users/cy", T, map[string]any{"name": "C", "phone": "", "quiet_hours": "", "department": "eng"}, 201)
	c.call("PUT /v1/users/{id}", "/v1/users/cy", T, map[string]any{"name": "C"}, 400)
	c.call("PATCH /v1/users/{id}", "/v1/users/cy", T, map[string]any{"name": "Cy"}, 200)
	c.call("PATCH /v1/users/{id}", "/v1/users/nosuch", T, map[string]any{"name": "X"}, 404)
	c.call("POST /v1/users/batch", "/v1/users/batch", T, map[string]any{"users": []map[string]any{{"id": "dan", "name": "Dan"}, {"id": "eve", "name": "Eve"}}}, 200)
	c.call("GET /v1/users", "/v1/users", T, nil, 200)
	c.call("GET /v1/users", "/v1/users?status=all", T, nil, 200)
	c.call("GET /v1/users", "/v1/users?status=bogus", T, nil, 400)
	c.call("GET /v1/users/{id}", "/v1/users/ana", T, nil, 200)
	c.call("GET /v1/users/{id}", "/v1/users/nosuch", T, nil, 404)
	c.call("POST /v1/tokens", "/v1/tokens", T, map[string]any{"user": "bo", "device": "phone", "ttl_seconds": 600}, 200)
	c.call("POST /v1/tokens", "/v1/tokens", T, map[string]any{"user": "zed", "device": "phone"}, 404)
	if e := c.call("POST /v1/tokens", "/v1/tokens", T, map[string]any{"user": "bo", "device": "tablet"}, 429); errCode(e) != "RATE_LIMITED" || c.answers[len(c.answers)-1].header.Get("Retry-After") == "" {
		t.Errorf("a second mint within the hour: %v, want RATE_LIMITED with Retry-After", e)
	}
	nodetest.Dial(t, n, "bo", "laptop", nil)
	c.call("GET /v1/users/{id}/devices", "/v1/users/bo/devices", T, nil, 200)
	c.call("GET /v1/users/{id}/devices", "/v1/users/nosuch/devices", T, nil, 404)
	c.call("PUT /v1/groups/{id}", "/v1/groups/oncall", T, map[string]any{"name": "On call", "members": []string{"bo", "cy"}}, 201)
	c.call("PUT /v1/groups/{id}", "/v1/groups/oncall", T, map[string]any{"name": "On call", "members": []string{"bo"}}, 200)
	c.call("PUT /v1/groups/{id}", "/v1/groups/x", T, map[string]any{"name": "X", "members": []string{"zed"}}, 422)
	c.call("POST /v1/groups/{id}/members", "/v1/groups/oncall/members", T, map[string]any{"add": []string{"ana", "cy"}}, 200)
	c.call("POST /v1/groups/{id}/members", "/v1/groups/nosuch/members", T, map[string]any{"add": []string{"ana"}}, 404)
	c.call("GET /v1/groups", "/v1/groups", T, nil, 200)
	c.call("GET /v1/groups/{id}", "/v1/groups/oncall", T, nil, 200)
	c.call("GET /v1/groups/{id}", "/v1/groups/all", T, nil, 200)
	c.call("GET /v1/groups/{id}", "/v1/groups/dept:eng", T, nil, 200)
	c.call("GET /v1/groups/{id}", "/v1/groups/nosuch", T, nil, 404)

	// Messages, receipts, statistics.
	send := map[string]any{"from": "ana", "to": []string{"bo", "group:oncall"}, "text": "lunch?", "client_msg_id": "m1"}
	msg := c.call("POST /v1/messages", "/v1/messages", T, send, 200)["id"].(string)
	if again := c.call("POST /v1/messages", "/v1/messages", T, send, 200); again["id"] != msg || again["duplicate"] != true {
		t.Fatalf("a retried send: %v, want the id %s and duplicate", again, msg)
	}
	c.call("POST /v1/messages", "/v1/messages", T, map[string]any{"from": "zed", "to": []string{"bo"}, "text": "x"}, 422)
	c.call("POST /v1/messages", "/v1/messages", T, map[string]any{"from": "ana", "to": []string{"zed"}, "text": "x"}, 422)
	c.call("POST /v1/messages", "/v1/messages", T, map[string]any{"from": "ana", "to": []string{"bo"}, "text": strings.Repeat("x", 2000)}, 413)
	c.call("POST /v1/messages", "/v1/messages", T, map[string]any{"from": "ana", "to": []string{"bo"}, "kind": "video"}, 400)
	c.call("POST /v1/messages", "/v1/messages", T, `{"from": "ana", "to": [`, 400)
	c.call("POST /v1/messages", "/v1/messages", T, map[string]any{"from": "ana", "to": []string{"bo"}, "text": "x", "forward_of": "01KBMA4Q7ZQ0000000000A1B2C"}, 404)
	c.call("GET /v1/messages/{id}/receipts", "/v1/messages/"+msg+"/receipts", T, nil, 200)
	c.call("GET /v1/messages/{id}/receipts", "/v1/messages/bad/receipts", T, nil, 400)
	c.call("GET /v1/messages/{id}/receipts", "/v1/messages/01KBMA4Q7ZQ0000000000A1B2C/receipts", T, nil, 404)
	c.call("GET /v1/messages/{id}/stats", "/v1/messages/"+msg+"/stats", T, nil, 200)
	c.call("GET /v1/messages/{id}/stats", "/v1/messages/"+msg+"/stats?lists=1", T, nil, 200)
	c.call("GET /v1/messages/{id}/stats", "/v1/messages/"+msg+"/stats?format=csv", T, nil, 200)
	c.call("GET /v1/messages/{id}/stats", "/v1/messages/bad/stats", T, nil, 400)

	// Announcements.
	ann := map[string]any{"to": "all", "text": "Office closed Friday", "confirm": true, "client_msg_id": "a1"}
	annID := c.call("POST /v1/announcements", "/v1/announcements", T, ann, 201)["id"].(string)
	c.call("POST /v1/announcements", "/v1/announcements", T, ann, 200)
	c.call("POST /v1/announcements", "/v1/announcements", T, map[string]any{"from": "ana", "to": []string{"dept:eng", "group:oncall"}, "text": "standup"}, 201)
	c.call("POST /v1/announcements", "/v1/announcements", T, map[string]any{"to": "bo", "text": "x"}, 400)
	c.call("POST /v1/announcements", "/v1/announcements", T, map[string]any{"from": "zed", "to": "all", "text": "x"}, 422)
	c.call("GET /v1/announcements/{id}/stats", "/v1/announcements/"+annID+"/stats", T, nil, 200)
	c.call("GET /v1/announcements/{id}/stats", "/v1/announcements/"+annID+"/stats?lists=1", T, nil, 200)
	c.call("GET /v1/announcements/{id}/stats", "/v1/announcements/"+annID+"/stats?format=csv&only=unconfirmed", T, nil, 200)
	c.call("GET /v1/announcements/{id}/stats", "/v1/announcements/"+annID+"/stats?format=csv&only=bogus", T, nil, 400)
	c.call("POST /v1/announcements/{id}/reding", "/v1/announcements/"+annID+"/reding", T, map[string]any{"policy": "inapp"}, 200)
	c.call("POST /v1/announcements/{id}/reding", "/v1/announcements/01KBMA4Q7ZQ0000000000A1B2C/reding", T, map[string]any{"policy": "inapp"}, 404)

	// DINGs and policies.
	ding := map[string]any{"from": "ana", "to": []string{"bo", "+14155550123"}, "text": "Server room is flooding",
		"policy": "inapp,sms@1m", "choices": []string{"attend", "decline"}, "client_msg_id": "d1"}
	dingID := c.call("POST /v1/dings", "/v1/dings", T, ding, 201)["id"].(string)
	c.call("POST /v1/dings", "/v1/dings", T, ding, 200)
	c.call("POST /v1/dings", "/v1/dings", T, map[string]any{"from": "ana", "to": []string{"cy"}, "text": "x", "policy": "carrier-pigeon@1m"}, 400)
	c.call("POST /v1/dings", "/v1/dings", T, map[string]any{"from": "zed", "to": []string{"cy"}, "text": "x"}, 422)
	c.call("GET /v1/dings", "/v1/dings", T, nil, 200)
	c.call("GET /v1/dings", "/v1/dings?from=ana&limit=10", T, nil, 200)
	c.call("GET /v1/dings", "/v1/dings?limit=0", T, nil, 400)
	c.call("GET /v1/dings/{id}", "/v1/dings/"+dingID, T, nil, 200)
	c.call("GET /v1/dings/{id}", "/v1/dings/bad", T, nil, 400)
	c.call("GET /v1/dings/{id}", "/v1/dings/01KBMA4Q7ZQ0000000000A1B2C", T, nil, 404)
	c.call("POST /v1/dings/{id}/cancel", "/v1/dings/"+dingID+"/cancel", T, nil, 200)
	if again := c.call("POST /v1/dings/{id}/cancel", "/v1/dings/"+dingID+"/cancel", T, nil, 200); again["stopped"] != 0.0 || again["note"] == nil {
		t.Errorf("a second cancel: %v, want stopped 0 and a note", again)
	}
	c.call("POST /v1/dings/{id}/cancel", "/v1/dings/bad/cancel", T, nil, 400)
	c.call("POST /v1/dings/{id}/cancel", "/v1/dings/"+msg+"/cancel", T, nil, 404)
	c.call("GET /v1/dings/{id}", "/v1/dings/"+msg, T, nil, 404)
	c.call("PUT /v1/policies/{name}", "/v1/policies/urgent", T, map[string]any{"policy": "inapp,sms@5m,voice@15m until=confirmed"}, 200)
	c.call("PUT /v1/policies/{name}", "/v1/policies/urgent", T, map[string]any{"policy": "smoke-signals"}, 400)
	c.call("GET /v1/policies", "/v1/policies", T, nil, 200)

	// Secret chats.
	chat := c.call("POST /v1/secret-chats", "/v1/secret-chats", T, map[string]any{"from": "ana", "to": "eve", "level": 2}, 201)["id"].(string)
	c.call("POST /v1/secret-chats", "/v1/secret-chats", T, map[string]any{"from": "ana", "to": "eve", "level": 9}, 400)
	c.call("POST /v1/secret-chats", "/v1/secret-chats", T, map[string]any{"from": "ana", "to": "zed", "level": 1}, 422)
	secret := c.call("POST /v1/messages", "/v1/messages", T, map[string]any{"from": "ana", "chat": chat, "text": "the door code is 4711"}, 200)["id"].(string)
	c.call("POST /v1/messages", "/v1/messages", T, map[string]any{"from": "eve", "to": []string{"cy"}, "text": "fwd", "forward_of": secret}, 409)
	c.call("POST /v1/messages", "/v1/messages", T, map[string]any{"from": "cy", "chat": chat, "text": "hi"}, 403)
	c.call("GET /v1/messages/{id}/receipts", "/v1/messages/"+secret+"/receipts", T, nil, 200)
	c.call("GET /v1/secret-chats/{id}", "/v1/secret-chats/"+chat, T, nil, 200)
	c.call("GET /v1/secret-chats/{id}", "/v1/secret-chats/01KBMA4Q7ZQ0000000000A1B2C", T, nil, 404)
	c.call("GET /v1/users/{id}/secret-chats", "/v1/users/eve/secret-chats", T, nil, 200)
	c.call("GET /v1/users/{id}/secret-chats", "/v1/users/nosuch/secret-chats", T, nil, 404)

	// Statistics and the audit log.
	c.call("GET /v1/stats", "/v1/stats", T, nil, 200)
	c.call("GET /v1/stats", "/v1/stats?dept=sre,eng&top=5", T, nil, 200)
	c.call("GET /v1/stats", "/v1/stats?top=0", T, nil, 400)
	c.call("GET /v1/audit", "/v1/audit?limit=5", T, nil, 200)
	c.call("GET /v1/audit", "/v1/audit?limit=5000", T, nil, 400)
	head := c.call("GET /v1/audit/verify", "/v1/audit/verify", T, nil, 200)["head_hash"].(string)
	c.call("GET /v1/audit/verify", "/v1/audit/verify?expect="+head, T, nil, 200)
	c.call("GET /v1/audit/verify", "/v1/audit/verify?expect=zz", T, nil, 400)

	// The directory import.
	org := "id,name,phone,department_path\nana,Ana,,Eng/SRE\nfay,Fay,+14155550199,Eng\n"
	c.call("POST /v1/directory/import", "/v1/directory/import?dry_run=1", T, csvBody(org), 200)
	c.call("POST /v1/directory/import", "/v1/directory/import?format=json", T, map[string]any{"users": []map[string]any{{"id": "gus", "name": "Gus"}}}, 200)
	c.call("POST /v1/directory/import", "/v1/directory/import?format=xml", T, "<org/>", 400)
	c.call("POST /v1/directory/import", "/v1/directory/import?remove_missing=1", T, map[string]any{"users": []map[string]any{{"id": "gus", "name": "Gus"}}}, 409)

	// Operations.
	c.call("POST /v1/backup", "/v1/backup", T, map[string]any{"dir": "b1"}, 200)
	c.call("POST /v1/backup", "/v1/backup", T, map[string]any{"dir": "/etc/b1"}, 403)
	c.call("POST /v1/backup", "/v1/backup", T, map[string]any{}, 400)
	c.call("POST /v1/backup/verify", "/v1/backup/verify", T, map[string]any{"dir": "b1"}, 200)
	c.call("POST /v1/backup/verify", "/v1/backup/verify", T, map[string]any{"dir": "nosuch"}, 422)
	c.call("POST /v1/retention/sweep", "/v1/retention/sweep", T, nil, 200)

	// Revocations and removals.
	c.call("POST /v1/users/{id}/revoke-tokens", "/v1/users/bo/revoke-tokens", T, map[string]any{"device": "phone"}, 200)
	c.call("POST /v1/users/{id}/revoke-tokens", "/v1/users/bo/revoke-tokens", T, map[string]any{}, 200)
	c.call("POST /v1/users/{id}/revoke-tokens", "/v1/users/bo/revoke-tokens", T, nil, 400)
	c.call("POST /v1/users/{id}/revoke-tokens", "/v1/users/nosuch/revoke-tokens", T, map[string]any{}, 404)
	c.call("DELETE /v1/users/{id}", "/v1/users/dan", T, nil, 200)
	if again := c.call("DELETE /v1/users/{id}", "/v1/users/dan", T, nil, 200); again["already_removed"] != true {
		t.Errorf("removing dan again: %v, want already_removed", again)
	}
	c.call("DELETE /v1/users/{id}", "/v1/users/nosuch", T, nil, 404)
	c.call("DELETE /v1/groups/{id}", "/v1/groups/oncall", T, nil, 200)
	c.call("DELETE /v1/groups/{id}", "/v1/groups/oncall", T, nil, 404)
	c.call("DELETE /v1/departments/{id}", "/v1/departments/eng", T, nil, 409)
	c.call("PUT /v1/departments/{id}", "/v1/departments/tmp", T, map[string]any{"name": "Temp"}, 201)
	c.call("DELETE /v1/departments/{id}", "/v1/departments/tmp", T, nil, 200)
	c.call("DELETE /v1/departments/{id}", "/v1/departments/tmp", T, nil, 404)
	c.call("POST /v1/admins/{name}/revoke", "/v1/admins/crm/revoke", T, nil, 200)
	c.call("POST /v1/admins/{name}/revoke", "/v1/admins/nosuch/revoke", T, nil, 404)
	c.call("POST /v1/admins/{name}/revoke", "/v1/admins/owner/revoke", T, nil, 409)
	c.call("GET /v1/users", "/v1/users", crm, nil, 401)

	// GET /metrics behind an admin token (MetricsAuth), on a second node.
	m := nodetest.Start(t, node.Config{MetricsAuth: true})
	c.base = "http://" + m.HTTPAddr()
	c.call("GET /metrics", "/metrics", "", nil, 401)
	c.call("GET /metrics", "/metrics", m.AdminToken(), nil, 200)
	c.base = base

	// Every operation was validated, every /v1 one with a success; the
	// cluster's need a cluster (internal/node's tests run one).
	validated, succeeded := map[string]int{}, map[string]bool{}
	for _, a := range c.answers {
		validated[a.op]++
		succeeded[a.op] = succeeded[a.op] || a.status/100 == 2
	}
	var missed []string
	for pattern, op := range operations(c.doc) {
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
	t.Logf("validated %d real answers (and the requests of the successes) of %d operations against openapi.json", len(c.answers), len(validated))
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
			doc := loadDoc(t, b)
			bad := 0
			for _, a := range c.answers {
				if err := validate(doc, a); err != nil {
					bad++
					if a.op == failing {
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
