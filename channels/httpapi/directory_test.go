package httpapi_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/fakeclock"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// ids returns the "id" of each object in m[key], or the strings in it.
func ids(m map[string]any, key string) string {
	var out []string
	l, _ := m[key].([]any)
	for _, x := range l {
		switch v := x.(type) {
		case string:
			out = append(out, v)
		case map[string]any:
			out = append(out, fmt.Sprint(v["id"]))
		}
	}
	return strings.Join(out, ",")
}

// wholeUser is a PUT /v1/users/{id} body: every field.
func wholeUser(name, phone, dept string) map[string]string {
	return map[string]string{"name": name, "phone": phone, "quiet_hours": "", "department": dept}
}

func (a api) ok(method, path string, body any, want int) map[string]any {
	a.t.Helper()
	code, out := a.do(method, path, a.tok, body)
	if code != want {
		a.t.Fatalf("%s %s: %d %v, want %d", method, path, code, out, want)
	}
	return out
}

func TestDepartmentsAndGroupsThroughTheAPI(t *testing.T) {
	a, n := setup(t)
	for _, d := range []struct{ id, name, parent string }{
		{"company", "ACME", ""}, {"eng", "Engineering", "company"}, {"sre", "SRE", "eng"}, {"sales", "Sales", "company"},
	} {
		a.ok("PUT", "/v1/departments/"+d.id, map[string]string{"name": d.name, "parent": d.parent}, 201)
	}
	for _, u := range []struct{ id, dept string }{{"ceo", "company"}, {"ana", "eng"}, {"bo", "sre"}, {"ed", "sales"}} {
		out := a.ok("PUT", "/v1/users/"+u.id, wholeUser(u.id, "", u.dept), 201)
		if out["status"] != "active" || out["department"] != u.dept {
			t.Fatalf("user %s: %v", u.id, out)
		}
	}
	eng := a.ok("GET", "/v1/departments/eng", nil, 200)
	if eng["name"] != "Engineering" || eng["parent"] != "company" || ids(eng, "members") != "ana" ||
		ids(eng, "subdepartments") != "sre" || eng["total_members"] != 2.0 {
		t.Fatalf("GET eng: %v", eng)
	}
	if got := ids(a.ok("GET", "/v1/departments", nil, 200), "departments"); got != "company,eng,sales,sre" {
		t.Fatalf("departments: %s", got)
	}
	// Move sre under sales: the derived groups follow.
	a.ok("PUT", "/v1/departments/sre", map[string]string{"name": "SRE", "parent": "sales"}, 200)
	if g := a.ok("GET", "/v1/groups/dept:sales", nil, 200); ids(g, "members") != "bo,ed" || g["derived"] != true || g["name"] != "Sales" {
		t.Fatalf("dept:sales: %v", g)
	}
	if g := a.ok("GET", "/v1/groups/all", nil, 200); ids(g, "members") != "ana,bo,ceo,ed" {
		t.Fatalf("all: %v", g)
	}
	g := a.ok("PUT", "/v1/groups/oncall", map[string]any{"name": "On call", "members": []string{"bo", "ana"}}, 201)
	if ids(g, "members") != "ana,bo" || g["derived"] != false {
		t.Fatalf("PUT group: %v", g)
	}
	g = a.ok("POST", "/v1/groups/oncall/members", map[string]any{"add": []string{"ed"}, "remove": []string{"ana"}}, 200)
	if ids(g, "members") != "bo,ed" {
		t.Fatalf("members: %v", g)
	}
	if got := ids(a.ok("GET", "/v1/groups", nil, 200), "groups"); got != "oncall" {
		t.Fatalf("groups: %s", got)
	}
	// A message to a group reaches its members.
	res := a.ok("POST", "/v1/messages", map[string]any{"from": "ceo", "to": []string{"group:oncall", "dept:eng"}, "text": "hi"}, 200)
	for _, u := range []string{"ana", "bo", "ed"} {
		if h, _ := n.Engine().Head(u); h != 1 {
			t.Errorf("%s head %d after the group message %v", u, h, res)
		}
	}
	a.ok("PUT", "/v1/users/ana", wholeUser("ana", "", ""), 200) // leaves eng
	a.ok("DELETE", "/v1/groups/oncall", nil, 200)
	a.ok("DELETE", "/v1/departments/eng", nil, 200)
	// The audit log has every change, with the admin as actor: "owner",
	// the first-start token's.
	au := a.ok("GET", "/v1/audit?limit=1000", nil, 200)
	es, _ := au["entries"].([]any)
	var actions []string
	for _, e := range es {
		e := e.(map[string]any)
		if e["actor"] != "owner" {
			t.Errorf("entry %v: actor", e)
		}
		actions = append(actions, fmt.Sprint(e["action"], " ", e["target"]))
	}
	want := []string{"dept.put company", "dept.put eng", "dept.put sre", "dept.put sales", "user.put ceo", "user.put ana",
		"user.put bo", "user.put ed", "dept.put sre", "group.put oncall", "group.members oncall", "user.put ana",
		"group.remove oncall", "dept.remove eng"}
	if !slices.Equal(actions, want) || au["next"] != float64(len(want)) {
		t.Fatalf("audit: %v next %v\nwant %v", actions, au["next"], want)
	}
	if page := a.ok("GET", "/v1/audit?after=12&limit=1", nil, 200); fmt.Sprint(page["next"]) != "13" {
		t.Fatalf("audit page: %v", page)
	}
}

func TestOffboardingThroughTheAPI(t *testing.T) {
	a, n := setup(t)
	a.ok("PUT", "/v1/departments/eng", map[string]string{"name": "Eng"}, 201)
	for _, id := range []string{"ana", "bo"} {
		a.ok("PUT", "/v1/users/"+id, wholeUser(id, "+14155550100", "eng"), 201)
	}
	a.ok("PUT", "/v1/groups/g", map[string]any{"members": []string{"ana", "bo"}}, 201)
	u := a.ok("DELETE", "/v1/users/bo", nil, 200)
	if u["status"] != "removed" || u["department"] != nil {
		t.Fatalf("DELETE: %v", u)
	}
	if u := a.ok("DELETE", "/v1/users/bo", nil, 200); u["status"] != "removed" {
		t.Fatalf("DELETE again: %v", u)
	}
	if g := a.ok("GET", "/v1/groups/g", nil, 200); ids(g, "members") != "ana" {
		t.Fatalf("group after offboarding: %v", g)
	}
	if g := a.ok("GET", "/v1/groups/dept:eng", nil, 200); ids(g, "members") != "ana" {
		t.Fatalf("department after offboarding: %v", g)
	}
	for status, want := range map[string]string{"": "ana", "active": "ana", "removed": "bo", "all": "ana,bo"} {
		if got := ids(a.ok("GET", "/v1/users?status="+status, nil, 200), "users"); got != want {
			t.Errorf("users?status=%s: %s, want %s", status, got, want)
		}
	}
	if u := a.ok("GET", "/v1/users/bo", nil, 200); u["status"] != "removed" {
		t.Fatalf("GET removed user: %v", u)
	}
	for _, c := range []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"message to a removed user", "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "x"}, 422, "UNKNOWN_RECIPIENT"},
		{"message from a removed user", "POST", "/v1/messages", map[string]any{"from": "bo", "to": []string{"ana"}, "text": "x"}, 422, "UNKNOWN_SENDER"},
		{"token for a removed user", "POST", "/v1/tokens", map[string]any{"user": "bo", "device": "d"}, 404, "UNKNOWN_USER"},
		{"removed user into a group", "POST", "/v1/groups/g/members", map[string]any{"add": []string{"bo"}}, 422, "UNKNOWN_USER"},
		{"offboard unknown user", "DELETE", "/v1/users/zed", nil, 404, "NOT_FOUND"},
		{"bad status filter", "GET", "/v1/users?status=gone", nil, 400, "BAD_REQUEST"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a.t = t
			if status, out := a.do(c.method, c.path, a.tok, c.body); status != c.status || errCode(out) != c.code {
				t.Fatalf("got %d %v, want %d %s", status, out, c.status, c.code)
			}
		})
	}
	if h, _ := n.Engine().Head("bo"); h != 0 {
		t.Fatalf("removed user's stream has %d entries", h)
	}
}

func TestDirectoryAPIErrors(t *testing.T) {
	a, _ := setup(t)
	a.ok("PUT", "/v1/departments/eng", map[string]string{"name": "Eng"}, 201)
	a.ok("PUT", "/v1/departments/sre", map[string]string{"name": "SRE", "parent": "eng"}, 201)
	a.ok("PUT", "/v1/users/ana", wholeUser("", "", "sre"), 201)
	a.ok("PUT", "/v1/groups/g", map[string]any{"members": []string{"ana"}}, 201)
	cases := []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"no token", "GET", "/v1/departments", nil, 401, "UNAUTHENTICATED"},
		{"department cycle", "PUT", "/v1/departments/eng", map[string]string{"parent": "sre"}, 409, "DEPARTMENT_CYCLE"},
		{"unknown parent", "PUT", "/v1/departments/x", map[string]string{"parent": "nope"}, 422, "UNKNOWN_DEPARTMENT"},
		{"bad department id", "PUT", "/v1/departments/a%20b", map[string]string{}, 400, "BAD_REQUEST"},
		{"unknown field", "PUT", "/v1/departments/x", map[string]string{"boss": "ana"}, 400, "BAD_REQUEST"},
		{"remove department with sub-departments", "DELETE", "/v1/departments/eng", nil, 409, "DEPARTMENT_NOT_EMPTY"},
		{"remove department with users", "DELETE", "/v1/departments/sre", nil, 409, "DEPARTMENT_NOT_EMPTY"},
		{"remove unknown department", "DELETE", "/v1/departments/nope", nil, 404, "NOT_FOUND"},
		{"get unknown department", "GET", "/v1/departments/nope", nil, 404, "NOT_FOUND"},
		{"user in unknown department", "PUT", "/v1/users/bo", wholeUser("", "", "nope"), 422, "UNKNOWN_DEPARTMENT"},
		{"user id all", "PUT", "/v1/users/all", wholeUser("", "", ""), 400, "BAD_REQUEST"},
		{"group with unknown member", "PUT", "/v1/groups/h", map[string]any{"members": []string{"zed"}}, 422, "UNKNOWN_USER"},
		{"group id all", "PUT", "/v1/groups/all", map[string]any{}, 400, "BAD_REQUEST"},
		{"members of unknown group", "POST", "/v1/groups/nope/members", map[string]any{"add": []string{"ana"}}, 404, "NOT_FOUND"},
		{"get unknown group", "GET", "/v1/groups/nope", nil, 404, "NOT_FOUND"},
		{"get unknown derived group", "GET", "/v1/groups/dept:nope", nil, 404, "NOT_FOUND"},
		{"remove unknown group", "DELETE", "/v1/groups/nope", nil, 404, "NOT_FOUND"},
		{"message to unknown group", "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"group:nope"}, "text": "x"}, 422, "UNKNOWN_RECIPIENT"},
		{"bad import format", "POST", "/v1/directory/import?format=xml", "x", 400, "BAD_REQUEST"},
		{"bad import flag", "POST", "/v1/directory/import?dry_run=yes", "{}", 400, "BAD_REQUEST"},
		{"bad CSV row", "POST", "/v1/directory/import?format=csv", "id,name,phone,department_path\nana,A,,\nbo,B,12345,\n", 400, "BAD_IMPORT"},
		{"bad JSON import", "POST", "/v1/directory/import", `{"users": [{"id": "ana", "department": "nope"}]}`, 400, "BAD_IMPORT"},
		{"bad audit cursor", "GET", "/v1/audit?after=-1", nil, 400, "BAD_REQUEST"},
		{"bad audit limit", "GET", "/v1/audit?limit=0", nil, 400, "BAD_REQUEST"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a.t = t
			tok := a.tok
			if c.code == "UNAUTHENTICATED" {
				tok = ""
			}
			a.refused(c.method, c.path, tok, c.body, c.status, c.code)
		})
	}
	if _, out := a.do("POST", "/v1/directory/import?format=csv", a.tok, "id,name,phone,department_path\nana,A,,\nbo,B,12345,\n"); !strings.Contains(fmt.Sprint(out), "line 3") {
		t.Fatalf("a bad CSV row's error does not say its line: %v", out)
	}
}

func TestImportThroughTheAPI(t *testing.T) {
	a, n := setup(t)
	a.ok("PUT", "/v1/users/old", wholeUser("Old", "", ""), 201)
	file := `{"departments": [{"id": "eng", "name": "Eng"}],
	  "users": [{"id": "ana", "name": "Ana", "department": "eng"}, {"id": "bo", "name": "Bo"}],
	  "groups": [{"id": "g", "name": "G", "members": ["ana", "bo"]}]}`
	dry := a.ok("POST", "/v1/directory/import?dry_run=1&remove_missing=1", file, 200)
	if dry["dry_run"] != true || ids(dry, "users_added") != "ana,bo" || ids(dry, "missing") != "old" || ids(dry, "offboarded") != "" {
		t.Fatalf("dry run: %v", dry)
	}
	if code, _ := a.do("GET", "/v1/users/ana", a.tok, nil); code != 404 {
		t.Fatal("a dry run created a user")
	}
	// Offboarding one of one active user is more than a tenth: refused
	// without force, nothing changed.
	if code, out := a.do("POST", "/v1/directory/import?format=json&remove_missing=1", a.tok, file); code != 409 || errCode(out) != "TOO_MANY_REMOVALS" {
		t.Fatalf("an import offboarding every user: %d %v, want 409 TOO_MANY_REMOVALS", code, out)
	}
	if code, _ := a.do("GET", "/v1/users/ana", a.tok, nil); code != 404 {
		t.Fatal("a refused import created a user")
	}
	df := a.ok("POST", "/v1/directory/import?format=json&remove_missing=1&force=1", file, 200)
	if ids(df, "departments_added") != "eng" || ids(df, "users_added") != "ana,bo" || ids(df, "groups_added") != "g" ||
		ids(df, "offboarded") != "old" {
		t.Fatalf("import: %v", df)
	}
	if u := a.ok("GET", "/v1/users/old", nil, 200); u["status"] != "removed" {
		t.Fatalf("missing user not offboarded: %v", u)
	}
	again := a.ok("POST", "/v1/directory/import?remove_missing=1", file, 200)
	for _, k := range []string{"departments_added", "departments_updated", "users_added", "users_updated", "groups_added", "groups_updated", "missing", "offboarded"} {
		if ids(again, k) != "" {
			t.Errorf("second import: %s = %v", k, again[k])
		}
	}
	if again["users_unchanged"] != 2.0 {
		t.Errorf("second import: %v", again)
	}
	// A CSV export (Content-Type text/csv) moves ana and adds cy.
	csv := "id,name,phone,department_path\nana,Ana,,Eng/SRE\nbo,Bo,,\ncy,Cy,+14155550100,Eng\n"
	req, _ := http.NewRequest("POST", a.base+"/v1/directory/import", strings.NewReader(csv))
	req.Header.Set("Authorization", "Bearer "+a.tok)
	req.Header.Set("Content-Type", "text/csv; charset=utf-8")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CSV import: %v %v", resp, err)
	}
	resp.Body.Close()
	if g := a.ok("GET", "/v1/groups/dept:eng", nil, 200); ids(g, "members") != "ana,cy" {
		t.Fatalf("dept:eng after CSV: %v", g)
	}
	if d := a.ok("GET", "/v1/departments/eng.sre", nil, 200); d["parent"] != "eng" || ids(d, "members") != "ana" {
		t.Fatalf("eng.sre: %v", d)
	}
	// The directory survives a restart.
	nodetest.Stop(t, n)
	n2 := nodetest.Start(t, node.Config{DataDir: n.DataDir()})
	b := api{t: t, base: "http://" + n2.HTTPAddr(), tok: n2.AdminToken()}
	if g := b.ok("GET", "/v1/groups/g", nil, 200); ids(g, "members") != "ana,bo" {
		t.Fatalf("group after restart: %v", g)
	}
	if g := b.ok("GET", "/v1/groups/dept:eng", nil, 200); ids(g, "members") != "ana,cy" {
		t.Fatalf("dept:eng after restart: %v", g)
	}
	if u := b.ok("GET", "/v1/users/old", nil, 200); u["status"] != "removed" {
		t.Fatalf("old after restart: %v", u)
	}
	au := b.ok("GET", "/v1/audit?limit=1000", nil, 200)
	if es := au["entries"].([]any); len(es) < 10 || strings.Contains(fmt.Sprint(es), "+1415") {
		t.Fatalf("audit after restart: %v", es)
	}
}

// fakeOffboarder records calls and removes the user from the directory,
// as the real one does (besides revoking tokens and connections).
type fakeOffboarder struct {
	dir   *fanout.Directory
	mu    sync.Mutex
	calls []string
	fail  string
}

func (f *fakeOffboarder) Offboard(ctx context.Context, user string, actor fanout.Actor) error {
	f.mu.Lock()
	f.calls = append(f.calls, user+" by "+actor.Name)
	f.mu.Unlock()
	if user == f.fail {
		return errors.New("socket layer down")
	}
	_, err := f.dir.RemoveUser(user, actor)
	return err
}

func TestOffboarderIsCalled(t *testing.T) {
	st := memstore.New()
	dir, err := fanout.OpenDirectory(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.Open(engine.Config{Store: st, Recipients: dir, Contacts: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	dir.SetCommitter(eng)
	keys, err := auth.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := keys.MintAdmin(0)
	off := &fakeOffboarder{dir: dir, fail: "cy"}
	h, err := httpapi.New(httpapi.Config{Engine: eng, Directory: dir, Keys: keys, Gatherer: prometheus.NewRegistry(),
		Offboarder: off, MaxImportBytes: 1024})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	a := api{t: t, base: srv.URL, tok: tok}
	for _, id := range []string{"ana", "bo", "cy"} {
		a.ok("PUT", "/v1/users/"+id, wholeUser("", "", ""), 201)
	}
	a.ok("DELETE", "/v1/users/ana", nil, 200)
	a.ok("DELETE", "/v1/users/ana", nil, 200)
	if code, out := a.do("DELETE", "/v1/users/cy", a.tok, nil); code != 500 || errCode(out) != "INTERNAL" || strings.Contains(fmt.Sprint(out), "socket") {
		t.Fatalf("failed offboarding: %d %v", code, out)
	}
	if code, out := a.do("POST", "/v1/directory/import?remove_missing=1&force=1", a.tok, `{"users": [{"id": "ana"}]}`); code != 500 || errCode(out) != "OFFBOARD_FAILED" {
		t.Fatalf("import with a failing offboarding: %d %v", code, out)
	}
	big := `{"users": [` + strings.Repeat(`{"id": "x"},`, 100) + `{"id": "y"}]}`
	if code, out := a.do("POST", "/v1/directory/import", a.tok, big); code != 413 || errCode(out) != "TOO_LARGE" {
		t.Fatalf("import over MaxImportBytes: %d %v", code, out)
	}
	off.mu.Lock()
	defer off.mu.Unlock()
	// The import re-activated ana and offboarded bo and cy (missing), in
	// order, as the first owner (a token minted before admins had names).
	if want := []string{"ana by owner", "ana by owner", "cy by owner", "bo by owner", "cy by owner"}; !slices.Equal(off.calls, want) {
		t.Fatalf("Offboard calls %v, want %v", off.calls, want)
	}
}

// PUT /v1/users/{id} replaces a user whole, so it refuses a body that
// leaves fields out instead of clearing them; PATCH changes only the
// fields given (issue 12).
func TestPutUserNeedsTheWholeUser(t *testing.T) {
	a, _ := setup(t)
	a.ok("PUT", "/v1/departments/sre", map[string]string{"name": "SRE"}, 201)
	a.ok("POST", "/v1/users", map[string]string{"id": "bo", "name": "Bo", "phone": "+14155550100", "quiet_hours": "22:00-07:00", "department": "sre"}, 201)
	code, out := a.do("PUT", "/v1/users/bo", a.tok, map[string]string{"name": "Bob"})
	detail, _ := out["error"].(map[string]any)["detail"].(string)
	if code != 400 || errCode(out) != "BAD_REQUEST" || !strings.Contains(detail, "PATCH") || !strings.Contains(detail, `"phone", "quiet_hours", "department"`) {
		t.Fatalf("partial PUT: %d %v", code, out)
	}
	if u := a.ok("GET", "/v1/users/bo", nil, 200); u["name"] != "Bo" || u["phone"] != "+14155550100" || u["department"] != "sre" {
		t.Fatalf("a refused PUT changed bo: %v", u)
	}
	if u := a.ok("PATCH", "/v1/users/bo", map[string]string{"name": "Bob"}, 200); u["name"] != "Bob" || u["phone"] != "+14155550100" || u["quiet_hours"] != "22:00-07:00" || u["department"] != "sre" {
		t.Fatalf("PATCH name: %v", u)
	}
	// The whole user, "" clearing a field, replaces it.
	if u := a.ok("PUT", "/v1/users/bo", map[string]string{"name": "Bo", "phone": "", "quiet_hours": "", "department": "sre"}, 200); u["phone"] != nil || u["quiet_hours"] != nil || u["department"] != "sre" {
		t.Fatalf("whole PUT: %v", u)
	}
	// And creates one.
	a.ok("PUT", "/v1/users/cy", wholeUser("Cy", "", ""), 201)
	a.refused("PUT", "/v1/users/di", a.tok, map[string]string{"name": "Di"}, 400, "BAD_REQUEST")
}

// A user's e-mail address: set by POST, PATCH and PUT, checked; a PUT
// that leaves "email" out keeps the stored one (it predates the field).
func TestUserEmailThroughTheAPI(t *testing.T) {
	a, _ := setup(t)
	if u := a.ok("POST", "/v1/users", map[string]string{"id": "bo", "name": "Bo", "email": "bo@example.com"}, 201); u["email"] != "bo@example.com" {
		t.Fatalf("POST: %v", u)
	}
	code, out := a.do("PATCH", "/v1/users/bo", a.tok, map[string]string{"email": "Bo <bo@example.com>"})
	detail, _ := out["error"].(map[string]any)["detail"].(string)
	if code != 400 || errCode(out) != "BAD_REQUEST" || !strings.Contains(detail, "email must be one address, like ana@example.com") {
		t.Fatalf("bad address: %d %v", code, out)
	}
	if u := a.ok("PUT", "/v1/users/bo", map[string]string{"name": "Bo", "phone": "", "quiet_hours": "", "department": ""}, 200); u["email"] != "bo@example.com" {
		t.Fatalf("PUT without email: %v", u)
	}
	if u := a.ok("PUT", "/v1/users/bo", map[string]string{"name": "Bo", "phone": "", "email": "", "quiet_hours": "", "department": ""}, 200); u["email"] != nil {
		t.Fatalf("PUT clearing email: %v", u)
	}
	if u := a.ok("PATCH", "/v1/users/bo", map[string]string{"email": "bo@corp.example"}, 200); u["email"] != "bo@corp.example" {
		t.Fatalf("PATCH: %v", u)
	}
}

// Removing a user sets "updated" to the removal's time; removing them
// again says they were already removed and moves nothing (issue 12).
func TestRemovingAUserTwice(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 5, 48, 30, 121_000_000, time.UTC)
	clock := fakeclock.New(t0)
	n := nodetest.Start(t, node.Config{Clock: clock})
	a := api{t: t, base: "http://" + n.HTTPAddr(), tok: n.AdminToken()}
	a.ok("POST", "/v1/users", map[string]string{"id": "bo", "name": "Bo"}, 201)
	clock.Advance(time.Hour)
	removedAt := t0.Add(time.Hour).Format(time.RFC3339Nano)
	first := a.ok("DELETE", "/v1/users/bo", nil, 200)
	if first["status"] != "removed" || first["updated"] != removedAt || first["tokens_before"] != removedAt || first["already_removed"] != false {
		t.Fatalf("DELETE: %v; want updated and tokens_before %s", first, removedAt)
	}
	clock.Advance(time.Hour)
	again := a.ok("DELETE", "/v1/users/bo", nil, 200)
	if again["already_removed"] != true || again["updated"] != removedAt || again["tokens_before"] != removedAt {
		t.Fatalf("DELETE again: %v; want already_removed, nothing moved from %s", again, removedAt)
	}
	if u := a.ok("GET", "/v1/users/bo", nil, 200); u["updated"] != removedAt {
		t.Fatalf("GET after removals: %v", u)
	}
}
