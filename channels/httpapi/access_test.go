package httpapi_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// addAdmin adds an admin as the owner and returns its token.
func (a api) addAdmin(name, role, dept string) string {
	a.t.Helper()
	out := a.ok("POST", "/v1/admins", map[string]any{"name": name, "role": role, "dept": dept}, 201)
	tok, _ := out["token"].(string)
	if tok == "" || out["name"] != name || out["role"] != role {
		a.t.Fatalf("add admin %s: %v", name, out)
	}
	return tok
}

// as is a with another admin's token.
func (a api) as(tok string) api { a.tok = tok; return a }

// requestPath turns a route's pattern into a request: its method, and its
// path with every wildcard a name that exists nowhere.
func requestPath(pattern string) (method, path string) {
	method, path, _ = strings.Cut(pattern, " ")
	return method, regexp.MustCompile(`\{[a-z]+\}`).ReplaceAllString(path, "nosuch")
}

// TestEveryRouteChecksItsPermission walks every route the API registers
// (with /metrics behind a token) with a token of every role, and no token,
// and a revoked one: a role with the route's permission is let through
// (whatever the handler then answers: 400, 404...), one without it gets
// 403 FORBIDDEN naming the permission. A route cannot be registered
// without a permission (httpapi's admin takes one), and a permission no
// role knows would be refused to every role but fail this test's check
// that the owner may do everything.
func TestEveryRouteChecksItsPermission(t *testing.T) {
	n := nodetest.Start(t, node.Config{MetricsAuth: true})
	a := api{t: t, base: "http://" + n.HTTPAddr(), tok: n.AdminToken()}
	a.ok("PUT", "/v1/departments/eng", map[string]string{"name": "Engineering"}, 201)
	toks := map[string]string{httpapi.RoleOwner: a.tok}
	for _, r := range httpapi.Roles() {
		if r.Name == httpapi.RoleOwner {
			continue
		}
		dept := ""
		if r.Scoped {
			dept = "eng"
		}
		toks[r.Name] = a.addAdmin("a-"+r.Name, r.Name, dept)
	}
	revoked := a.addAdmin("gone", httpapi.RoleAdmin, "")
	a.ok("POST", "/v1/admins/gone/revoke", nil, 200)

	routes := n.API().Routes()
	if len(routes) < 40 {
		t.Fatalf("only %d routes registered", len(routes))
	}
	for _, rt := range routes {
		method, path := requestPath(rt.Pattern)
		var body any
		if method != "GET" && method != "DELETE" {
			body = "{}"
		}
		for _, tc := range []struct{ what, tok string }{{"no token", ""}, {"a revoked token", revoked}, {"a forged token", "e30.e30.sig"}} {
			if code, out := a.do(method, path, tc.tok, body); code != 401 || errCode(out) != "UNAUTHENTICATED" {
				t.Errorf("%s with %s: %d %v, want 401 UNAUTHENTICATED", rt.Pattern, tc.what, code, out)
			}
		}
		for _, role := range httpapi.Roles() {
			code, out := a.do(method, path, toks[role.Name], body)
			e, _ := out["error"].(map[string]any)
			allowed := rt.Permission == httpapi.PermAnyAdmin || slices.Contains(role.Permissions, rt.Permission)
			switch {
			case allowed && (code == 401 || errCode(out) == "FORBIDDEN"):
				t.Errorf("%s as %s (has %q): %d %v, want it let through", rt.Pattern, role.Name, rt.Permission, code, out)
			case !allowed && (code != 403 || errCode(out) != "FORBIDDEN" || e["permission"] != string(rt.Permission) ||
				!strings.Contains(fmt.Sprint(e["detail"]), `"`+string(rt.Permission)+`"`)):
				t.Errorf("%s as %s (lacks %q): %d %v, want 403 FORBIDDEN naming the permission", rt.Pattern, role.Name, rt.Permission, code, out)
			}
		}
	}
	owner := httpapi.Roles()[0]
	for _, rt := range routes {
		if rt.Permission != httpapi.PermAnyAdmin && !slices.Contains(owner.Permissions, rt.Permission) {
			t.Errorf("%s needs %q, which the owner does not have: no such permission", rt.Pattern, rt.Permission)
		}
	}
}

// TestMetricsAccess: /metrics is public by default (as it was), and with
// MetricsAuth it needs a token with the metrics permission.
func TestMetricsAccess(t *testing.T) {
	get := func(n *node.Node, tok string) int {
		req, _ := http.NewRequest("GET", "http://"+n.HTTPAddr()+"/metrics", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	open := nodetest.Start(t, node.Config{})
	if code := get(open, ""); code != 200 {
		t.Fatalf("default /metrics without a token: %d", code)
	}
	n := nodetest.Start(t, node.Config{MetricsAuth: true})
	a := api{t: t, base: "http://" + n.HTTPAddr(), tok: n.AdminToken()}
	op, sender := a.addAdmin("prometheus", "operator", ""), a.addAdmin("crm", "sender", "")
	for _, c := range []struct {
		who, tok string
		want     int
	}{{"no token", "", 401}, {"operator", op, 200}, {"sender", sender, 403}, {"owner", a.tok, 200}} {
		if code := get(n, c.tok); code != c.want {
			t.Errorf("/metrics with MetricsAuth, %s: %d, want %d", c.who, code, c.want)
		}
	}
}

// TestAdminLifecycle: an admin's token works from its addition, is shown
// once, and stops at its revocation (the next request) or expiry; every
// change names the admin who made it; bad requests get precise errors.
func TestAdminLifecycle(t *testing.T) {
	a, _ := setup(t)
	a.ok("PUT", "/v1/departments/eng", map[string]string{"name": "Engineering"}, 201)
	hr := a.addAdmin("hr-sync", "directory", "")
	if me := a.as(hr).ok("GET", "/v1/admins/me", nil, 200); me["name"] != "hr-sync" || me["role"] != "directory" ||
		fmt.Sprint(me["permissions"]) != "[any users.read users.write org.read org.write]" {
		t.Fatalf("me: %v", me)
	}
	a.as(hr).ok("POST", "/v1/users", map[string]string{"id": "ana", "name": "Ana", "department": "eng"}, 201)
	list := a.ok("GET", "/v1/admins", nil, 200)
	if s := fmt.Sprint(list); strings.Contains(s, hr) || strings.Contains(s, "gen") || strings.Contains(s, "token") {
		t.Fatalf("the admin list shows a token or a generation: %s", s)
	}
	names := []string{}
	for _, x := range list["admins"].([]any) {
		x := x.(map[string]any)
		names = append(names, fmt.Sprint(x["name"], ":", x["role"], ":", x["status"]))
	}
	if want := "[hr-sync:directory:active owner:owner:active]"; fmt.Sprint(names) != want {
		t.Fatalf("admins %v, want %s", names, want)
	}

	for _, c := range []struct {
		name   string
		body   map[string]any
		status int
		code   string
		detail string
	}{
		{"unknown role", map[string]any{"name": "x", "role": "root"}, 400, "UNKNOWN_ROLE", `unknown role "root": want owner, admin, directory, operator, sender or dept-admin`},
		{"no role", map[string]any{"name": "x"}, 400, "UNKNOWN_ROLE", "role is required"},
		{"dept-admin without a department", map[string]any{"name": "x", "role": "dept-admin"}, 400, "BAD_REQUEST", "give its department"},
		{"a department for another role", map[string]any{"name": "x", "role": "sender", "dept": "eng"}, 400, "BAD_REQUEST", "takes no department"},
		{"unknown department", map[string]any{"name": "x", "role": "dept-admin", "dept": "nosuch"}, 422, "UNKNOWN_DEPARTMENT", `"nosuch"`},
		{"duplicate name", map[string]any{"name": "hr-sync", "role": "sender"}, 409, "ADMIN_EXISTS", `"hr-sync"`},
		{"the first owner's name", map[string]any{"name": "owner", "role": "owner"}, 409, "ADMIN_EXISTS", `"owner"`},
		{"bad name", map[string]any{"name": "a b", "role": "sender"}, 400, "BAD_REQUEST", "admin"},
		{"negative ttl", map[string]any{"name": "x", "role": "sender", "ttl_seconds": -1}, 400, "BAD_REQUEST", "ttl_seconds"},
	} {
		code, out := a.do("POST", "/v1/admins", a.tok, c.body)
		e, _ := out["error"].(map[string]any)
		if code != c.status || errCode(out) != c.code || !strings.Contains(fmt.Sprint(e["detail"]), c.detail) {
			t.Errorf("%s: %d %v, want %d %s with %q", c.name, code, out, c.status, c.code, c.detail)
		}
	}
	a.refused("POST", "/v1/admins/nosuch/revoke", a.tok, nil, 404, "UNKNOWN_ADMIN")
	a.refused("POST", "/v1/admins/owner/revoke", a.tok, nil, 409, "LAST_OWNER")
	a.refused("POST", "/v1/admins", hr, map[string]any{"name": "me2", "role": "owner"}, 403, "FORBIDDEN")

	// Revocation: the very next request with the token is refused.
	if out := a.ok("POST", "/v1/admins/hr-sync/revoke", nil, 200); out["status"] != "revoked" || out["already_revoked"] != false {
		t.Fatalf("revoke: %v", out)
	}
	code, out := a.do("GET", "/v1/users", hr, nil)
	if e, _ := out["error"].(map[string]any); code != 401 || e["detail"] != "admin token revoked" {
		t.Fatalf("a revoked token: %d %v", code, out)
	}
	if out := a.ok("POST", "/v1/admins/hr-sync/revoke", nil, 200); out["already_revoked"] != true {
		t.Fatalf("revoke again: %v", out)
	}
	// Added again: a new token; the old one stays revoked.
	hr2 := a.addAdmin("hr-sync", "directory", "")
	a.as(hr2).ok("GET", "/v1/users", nil, 200)
	a.refused("GET", "/v1/users", hr, nil, 401, "UNAUTHENTICATED")

	// A second owner may revoke the first; then the first-start token is
	// refused, and the new owner is the last.
	cto := a.addAdmin("cto", "owner", "")
	a.as(cto).ok("POST", "/v1/admins/owner/revoke", nil, 200)
	a.refused("GET", "/v1/admins", a.tok, nil, 401, "UNAUTHENTICATED")
	a.refused("POST", "/v1/admins/cto/revoke", cto, nil, 409, "LAST_OWNER")

	// Expiry: a token of one second works, then is refused (polled: the
	// API's clock is the system's).
	short := a.as(cto).ok("POST", "/v1/admins", map[string]any{"name": "temp", "role": "operator", "ttl_seconds": 1}, 201)
	if _, err := time.Parse(time.RFC3339, fmt.Sprint(short["expires"])); err != nil {
		t.Fatalf("expires: %v", short)
	}
	tmp := short["token"].(string)
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, out := a.do("GET", "/v1/audit", tmp, nil)
		if code == 401 {
			if e, _ := out["error"].(map[string]any); e["detail"] != "admin token expired" {
				t.Fatalf("expired: %v", out)
			}
			break
		}
		if code != 200 || time.Now().After(deadline) {
			t.Fatalf("a token of one second: %d %v", code, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if l := fmt.Sprint(a.as(cto).ok("GET", "/v1/admins", nil, 200)); !strings.Contains(l, "expired:true") {
		t.Fatalf("the list does not say temp expired: %s", l)
	}

	// The audit log names each change's admin.
	var got []string
	for _, e := range a.as(cto).ok("GET", "/v1/audit?limit=1000", nil, 200)["entries"].([]any) {
		e := e.(map[string]any)
		got = append(got, fmt.Sprint(e["actor"], " ", e["action"], " ", e["target"]))
	}
	want := []string{"owner dept.put eng", "owner admin.add hr-sync", "hr-sync user.put ana", "owner admin.revoke hr-sync",
		"owner admin.add hr-sync", "owner admin.add cto", "cto admin.revoke owner", "cto admin.add temp"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestDeptAdminActsWithinItsSubtree: a dept-admin DINGs, messages,
// announces to and manages users of its department and the departments
// under it; a target outside gets 403 OUT_OF_SCOPE, and what it lists is
// its subtree's only.
func TestDeptAdminActsWithinItsSubtree(t *testing.T) {
	a, _ := setup(t)
	for _, d := range []struct{ id, parent string }{{"company", ""}, {"eng", "company"}, {"sre", "eng"}, {"sales", "company"}} {
		a.ok("PUT", "/v1/departments/"+d.id, map[string]string{"name": d.id, "parent": d.parent}, 201)
	}
	for _, u := range []struct{ id, dept string }{{"ceo", "company"}, {"ana", "eng"}, {"bo", "sre"}, {"ed", "sales"}, {"fay", ""}} {
		a.ok("POST", "/v1/users", map[string]string{"id": u.id, "name": u.id, "department": u.dept}, 201)
	}
	a.ok("PUT", "/v1/groups/engonly", map[string]any{"name": "E", "members": []string{"ana", "bo"}}, 201)
	a.ok("PUT", "/v1/groups/mixed", map[string]any{"name": "M", "members": []string{"bo", "ed"}}, 201)
	outside := a.ok("POST", "/v1/dings", map[string]any{"from": "ed", "to": []string{"ceo"}, "text": "x", "policy": "inapp"}, 201)["id"].(string)
	lead := a.as(a.addAdmin("eng-lead", "dept-admin", "eng"))

	// Allowed: within eng's subtree.
	ding := lead.ok("POST", "/v1/dings", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "db down", "policy": "inapp"}, 201)["id"].(string)
	lead.ok("GET", "/v1/dings/"+ding, nil, 200)
	lead.ok("GET", "/v1/dings?from=ana", nil, 200)
	lead.ok("POST", "/v1/dings/"+ding+"/cancel", nil, 200)
	ann := lead.ok("POST", "/v1/announcements", map[string]any{"from": "ana", "to": "dept:sre", "text": "sre offsite"}, 201)["id"].(string)
	lead.ok("GET", "/v1/announcements/"+ann+"/stats", nil, 200)
	// A re-DING goes to those still in the subtree: bo, not gil who moved
	// out (from hal: ana DINGed bo a moment ago, too soon for another).
	a.ok("POST", "/v1/users", map[string]string{"id": "gil", "name": "gil", "department": "sre"}, 201)
	a.ok("POST", "/v1/users", map[string]string{"id": "hal", "name": "hal", "department": "eng"}, 201)
	gilAnn := lead.ok("POST", "/v1/announcements", map[string]any{"from": "ana", "to": "dept:sre", "text": "sre drill"}, 201)["id"].(string)
	a.ok("PATCH", "/v1/users/gil", map[string]string{"department": "sales"}, 200)
	if re := lead.ok("POST", "/v1/announcements/"+gilAnn+"/reding", map[string]any{"policy": "inapp", "from": "hal"}, 200); re["recipients"] != 1.0 {
		t.Fatalf("re-DING by the department admin: %v, want bo only", re)
	}
	outsideAnn := a.ok("POST", "/v1/announcements", map[string]any{"from": "ed", "to": "dept:sales", "text": "x"}, 201)["id"].(string)
	msg := lead.ok("POST", "/v1/messages", map[string]any{"from": "bo", "to": []string{"group:engonly", "dept:eng"}, "text": "hi"}, 200)["id"].(string)
	lead.ok("GET", "/v1/messages/"+msg+"/receipts", nil, 200)
	lead.ok("POST", "/v1/users", map[string]string{"id": "cy", "name": "Cy", "department": "sre"}, 201)
	lead.ok("PATCH", "/v1/users/cy", map[string]string{"department": "eng"}, 200)
	lead.ok("GET", "/v1/users/bo", nil, 200)
	lead.ok("GET", "/v1/departments/sre", nil, 200)
	lead.ok("GET", "/v1/groups/engonly", nil, 200)
	lead.ok("GET", "/v1/groups/dept:sre", nil, 200)
	lead.ok("POST", "/v1/users/cy/revoke-tokens", map[string]string{}, 200)
	lead.ok("DELETE", "/v1/users/cy", nil, 200)

	// Refused: outside it.
	for _, c := range []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"DING outside", "POST", "/v1/dings", map[string]any{"from": "ana", "to": []string{"bo", "ed"}, "text": "x"}, 403, "OUT_OF_SCOPE"},
		{"DING a phone number", "POST", "/v1/dings", map[string]any{"from": "ana", "to": []string{"+14155550100"}, "text": "x"}, 403, "OUT_OF_SCOPE"},
		{"DING from outside", "POST", "/v1/dings", map[string]any{"from": "ed", "to": []string{"bo"}, "text": "x"}, 403, "OUT_OF_SCOPE"},
		{"a parent department's user", "POST", "/v1/dings", map[string]any{"from": "ana", "to": []string{"ceo"}, "text": "x"}, 403, "OUT_OF_SCOPE"},
		{"a user with no department", "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"fay"}, "text": "x"}, 403, "OUT_OF_SCOPE"},
		{"announce to all", "POST", "/v1/announcements", map[string]any{"from": "ana", "to": "all", "text": "x"}, 403, "OUT_OF_SCOPE"},
		{"announce to another department", "POST", "/v1/announcements", map[string]any{"from": "ana", "to": "dept:sales", "text": "x"}, 403, "OUT_OF_SCOPE"},
		{"announce to the parent", "POST", "/v1/announcements", map[string]any{"from": "ana", "to": "dept:company", "text": "x"}, 403, "OUT_OF_SCOPE"},
		{"announce from the admins", "POST", "/v1/announcements", map[string]any{"to": "dept:eng", "text": "x"}, 400, "BAD_REQUEST"},
		{"a group with a member outside", "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"group:mixed"}, "text": "x"}, 403, "OUT_OF_SCOPE"},
		{"a group that does not exist", "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"group:nosuch"}, "text": "x"}, 403, "OUT_OF_SCOPE"},
		{"a user into another department", "POST", "/v1/users", map[string]string{"id": "dy", "name": "Dy", "department": "sales"}, 403, "OUT_OF_SCOPE"},
		{"a user without a department", "POST", "/v1/users", map[string]string{"id": "dy", "name": "Dy"}, 403, "OUT_OF_SCOPE"},
		{"move a user out", "PATCH", "/v1/users/bo", map[string]string{"department": "sales"}, 403, "OUT_OF_SCOPE"},
		{"change a user outside", "PATCH", "/v1/users/ed", map[string]string{"name": "E"}, 403, "OUT_OF_SCOPE"},
		{"replace a user outside", "PUT", "/v1/users/ed", wholeUser("E", "", ""), 403, "OUT_OF_SCOPE"},
		{"batch with one outside", "POST", "/v1/users/batch", map[string]any{"users": []map[string]string{{"id": "dy", "department": "sre"}, {"id": "ed", "department": "sre"}}}, 403, "OUT_OF_SCOPE"},
		{"offboard outside", "DELETE", "/v1/users/ed", nil, 403, "OUT_OF_SCOPE"},
		{"revoke tokens outside", "POST", "/v1/users/ed/revoke-tokens", map[string]string{}, 403, "OUT_OF_SCOPE"},
		{"a user outside", "GET", "/v1/users/ed", nil, 403, "OUT_OF_SCOPE"},
		{"devices outside", "GET", "/v1/users/ed/devices", nil, 403, "OUT_OF_SCOPE"},
		{"a department outside", "GET", "/v1/departments/company", nil, 403, "OUT_OF_SCOPE"},
		{"all staff", "GET", "/v1/groups/all", nil, 403, "OUT_OF_SCOPE"},
		{"a mixed group", "GET", "/v1/groups/mixed", nil, 403, "OUT_OF_SCOPE"},
		{"a DING from outside", "GET", "/v1/dings/" + outside, nil, 403, "OUT_OF_SCOPE"},
		{"cancel a DING from outside", "POST", "/v1/dings/" + outside + "/cancel", nil, 403, "OUT_OF_SCOPE"},
		{"DINGs from outside", "GET", "/v1/dings?from=ed", nil, 403, "OUT_OF_SCOPE"},
		{"re-DING an announcement from outside", "POST", "/v1/announcements/" + outsideAnn + "/reding", map[string]any{"policy": "inapp"}, 403, "OUT_OF_SCOPE"},
		{"every DING", "GET", "/v1/dings", nil, 400, "BAD_REQUEST"},
		{"receipts of a DING from outside", "GET", "/v1/messages/" + outside + "/receipts", nil, 403, "OUT_OF_SCOPE"},
		{"stats of a DING from outside", "GET", "/v1/messages/" + outside + "/stats", nil, 403, "OUT_OF_SCOPE"},
		{"a department (org.write)", "PUT", "/v1/departments/x", map[string]string{"name": "X", "parent": "eng"}, 403, "FORBIDDEN"},
		{"import (org.write)", "POST", "/v1/directory/import", "{}", 403, "FORBIDDEN"},
		{"a client token (tokens)", "POST", "/v1/tokens", map[string]any{"user": "ana", "device": "d"}, 403, "FORBIDDEN"},
	} {
		code, out := lead.do(c.method, c.path, lead.tok, c.body)
		if code != c.status || errCode(out) != c.code {
			t.Errorf("%s: %d %v, want %d %s", c.name, code, out, c.status, c.code)
		}
		if e, _ := out["error"].(map[string]any); c.code == "OUT_OF_SCOPE" && !strings.Contains(fmt.Sprint(e["detail"]), "within department eng") {
			t.Errorf("%s: detail %q does not name the scope", c.name, e["detail"])
		}
	}
	if h, _ := a.do("GET", "/v1/users/dy", a.tok, nil); h != 404 {
		t.Fatalf("a refused user was created: %d", h)
	}

	// Lists: the subtree's only.
	ids := func(path, key, field string) string {
		var out []string
		for _, x := range lead.ok("GET", path, nil, 200)[key].([]any) {
			out = append(out, fmt.Sprint(x.(map[string]any)[field]))
		}
		sort.Strings(out)
		return fmt.Sprint(out)
	}
	if got := ids("/v1/users", "users", "id"); got != "[ana bo hal]" {
		t.Errorf("users listed: %s", got)
	}
	if got := ids("/v1/users?status=all", "users", "id"); got != "[ana bo hal]" {
		t.Errorf("users listed with status=all: %s", got)
	}
	if got := ids("/v1/departments", "departments", "id"); got != "[eng sre]" {
		t.Errorf("departments listed: %s", got)
	}
	if got := ids("/v1/groups", "groups", "id"); got != "[engonly]" {
		t.Errorf("groups listed: %s", got)
	}
	// Its changes are its own in the audit log.
	var mine []string
	for _, e := range a.ok("GET", "/v1/audit?limit=1000", nil, 200)["entries"].([]any) {
		if e := e.(map[string]any); e["actor"] == "eng-lead" {
			mine = append(mine, fmt.Sprint(e["action"], " ", e["target"]))
		}
	}
	if want := "[user.put cy user.put cy user.revoke_tokens cy user.remove cy]"; fmt.Sprint(mine) != want {
		t.Errorf("eng-lead's audit entries %v, want %s", mine, want)
	}
}

// TestSecurityMDListsEveryRoute: SECURITY.md's table of routes is the
// API's, route by route and permission by permission, and its table of
// roles is Roles(): the documentation cannot drift from the code.
func TestSecurityMDListsEveryRoute(t *testing.T) {
	b, err := os.ReadFile("../../SECURITY.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	n := nodetest.Start(t, node.Config{MetricsAuth: true})
	want := map[string]string{}
	for _, rt := range append(n.API().Routes(), httpapi.ClusterRoutes...) {
		want[rt.Pattern] = string(rt.Permission)
	}
	got := map[string]string{}
	for _, m := range regexp.MustCompile("(?m)^\\| `((?:GET|POST|PUT|PATCH|DELETE) /[^`]*)` \\| `([a-z.]+)` \\|").FindAllStringSubmatch(doc, -1) {
		got[m[1]] = m[2]
	}
	for p, perm := range want {
		if got[p] != perm {
			t.Errorf("SECURITY.md: route %s: permission %q, want %q", p, got[p], perm)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("SECURITY.md lists %s, which is no route", p)
		}
	}
	for _, r := range httpapi.Roles() {
		var perms []string
		for _, p := range r.Permissions {
			perms = append(perms, "`"+string(p)+"`")
		}
		row := fmt.Sprintf("| `%s` | %s |", r.Name, strings.Join(perms, ", "))
		if !strings.Contains(doc, row) {
			t.Errorf("SECURITY.md lacks the row of role %s:\n%s", r.Name, row)
		}
	}
}

// TestAuditRecordsRoleAndSource: each entry of GET /v1/audit names the
// admin's role and the address the request came from, and carries its
// place in the hash chain; an operator verifies the chain with GET
// /v1/audit/verify, and with expect=HEAD checks a head recorded earlier.
func TestAuditRecordsRoleAndSource(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	a := api{t: t, base: "http://" + n.HTTPAddr(), tok: n.AdminToken()}
	a.ok("PUT", "/v1/departments/eng", map[string]string{"name": "Engineering"}, 201)
	hr := a.addAdmin("hr-sync", "directory", "")
	op := a.addAdmin("sre", "operator", "")
	a.as(hr).ok("POST", "/v1/users", map[string]any{"id": "ana", "name": "Ana", "department": "eng"}, 201)

	es := a.as(op).ok("GET", "/v1/audit", nil, 200)["entries"].([]any)
	var got []string
	prev := strings.Repeat("0", 64)
	for _, e := range es {
		e := e.(map[string]any)
		got = append(got, fmt.Sprint(e["actor"], " ", e["role"], " ", e["action"]))
		if !strings.HasPrefix(fmt.Sprint(e["source"]), "127.0.0.1:") {
			t.Fatalf("entry %v: source %v", e["seq"], e["source"])
		}
		if e["prev"] != prev || len(fmt.Sprint(e["hash"])) != 64 {
			t.Fatalf("entry %v: prev %v, want %s", e["seq"], e["prev"], prev)
		}
		prev = e["hash"].(string)
	}
	want := []string{"owner owner dept.put", "owner owner admin.add", "owner owner admin.add", "hr-sync directory user.put"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	v := a.as(op).ok("GET", "/v1/audit/verify", nil, 200)
	if v["ok"] != true || v["entries"] != 4.0 || v["first_hashed_seq"] != 1.0 || v["head_seq"] != 4.0 || v["head_hash"] != prev || v["broken_at"] != nil {
		t.Fatalf("verify: %v", v)
	}
	head := prev
	a.as(hr).ok("PATCH", "/v1/users/ana", map[string]any{"name": "Ana B"}, 200)
	v = a.as(op).ok("GET", "/v1/audit/verify?expect="+head, nil, 200)
	if v["ok"] != true || v["expect_seq"] != 4.0 || v["head_seq"] != 5.0 {
		t.Fatalf("verify?expect=the earlier head: %v", v)
	}
	v = a.as(op).ok("GET", "/v1/audit/verify?expect="+strings.Repeat("ab", 32), nil, 200)
	if v["ok"] != false || !strings.Contains(fmt.Sprint(v["reason"]), "no entry has the expected head hash") {
		t.Fatalf("verify?expect=a hash never seen: %v", v)
	}
	a.refused("GET", "/v1/audit/verify?expect=xyz", op, nil, 400, "BAD_REQUEST")
	a.refused("GET", "/v1/audit/verify", hr, nil, 403, "FORBIDDEN")
}
