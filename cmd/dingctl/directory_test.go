package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// jsonOut runs dingctl and decodes what it printed.
func jsonOut(t *testing.T, n *node.Node, args ...string) map[string]any {
	t.Helper()
	out, err := ctl(t, n, args...)
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("%v printed %q: %v", args, out, err)
	}
	return m
}

func idList(m map[string]any, key string) string {
	var out []string
	l, _ := m[key].([]any)
	for _, x := range l {
		switch v := x.(type) {
		case string:
			out = append(out, v)
		case map[string]any:
			out = append(out, v["id"].(string))
		}
	}
	return strings.Join(out, ",")
}

func TestDirectoryCommands(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	for _, args := range [][]string{
		{"dept", "add", "company", "--name", "ACME"},
		{"dept", "add", "eng", "--name", "Engineering", "--parent", "company"},
		{"dept", "add", "sre", "--name", "SRE", "--parent", "eng"},
		{"user", "add", "ana", "--name", "Ana", "--department", "eng"},
		{"user", "add", "bo", "--name", "Bo", "--department", "sre", "--phone", "+14155550100"},
		{"user", "add", "cy", "--name", "Cy"},
		{"group", "add", "oncall", "--name", "On call", "--members", "ana,bo"},
	} {
		if _, err := ctl(t, n, args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	if d := jsonOut(t, n, "dept", "get", "eng"); d["name"] != "Engineering" || idList(d, "members") != "ana" || idList(d, "subdepartments") != "sre" {
		t.Fatalf("dept get: %v", d)
	}
	if d := jsonOut(t, n, "dept", "list"); idList(d, "departments") != "company,eng,sre" {
		t.Fatalf("dept list: %v", d)
	}
	if g := jsonOut(t, n, "group", "members", "oncall", "--add", "cy", "--remove", "ana"); idList(g, "members") != "bo,cy" {
		t.Fatalf("group members: %v", g)
	}
	if g := jsonOut(t, n, "group", "get", "dept:company"); idList(g, "members") != "ana,bo" || g["derived"] != true {
		t.Fatalf("group get dept:company: %v", g)
	}
	if g := jsonOut(t, n, "group", "list"); idList(g, "groups") != "oncall" {
		t.Fatalf("group list: %v", g)
	}
	if u := jsonOut(t, n, "user", "remove", "bo"); u["status"] != "removed" {
		t.Fatalf("user remove: %v", u)
	}
	if g := jsonOut(t, n, "group", "get", "oncall"); idList(g, "members") != "cy" {
		t.Fatalf("group after user remove: %v", g)
	}
	if u := jsonOut(t, n, "user", "list"); idList(u, "users") != "ana,cy" {
		t.Fatalf("user list: %v", u)
	}
	if u := jsonOut(t, n, "user", "list", "--status", "all"); idList(u, "users") != "ana,bo,cy" {
		t.Fatalf("user list --status all: %v", u)
	}
	jsonOut(t, n, "group", "remove", "oncall")
	jsonOut(t, n, "dept", "remove", "sre")

	dir := t.TempDir()
	csv := filepath.Join(dir, "hr.csv")
	os.WriteFile(csv, []byte("id,name,phone,department_path\nana,Ana,,Engineering/Platform\ncy,Cy,,\ndi,Di,,Sales\n"), 0o600)
	// Without --apply an import is a dry run.
	for _, args := range [][]string{{"--dry-run"}, {}} {
		dry := jsonOut(t, n, append([]string{"directory", "import", csv}, args...)...)
		if dry["dry_run"] != true || idList(dry, "users_added") != "di" || idList(dry, "departments_added") != "engineering,engineering.platform,sales" {
			t.Fatalf("dry run %v: %v", args, dry)
		}
	}
	df := jsonOut(t, n, "directory", "import", csv, "--apply")
	if idList(df, "users_added") != "di" || idList(df, "users_updated") != "ana" || df["users_unchanged"] != 1.0 {
		t.Fatalf("import: %v", df)
	}
	if df := jsonOut(t, n, "directory", "import", csv, "--apply"); idList(df, "users_updated") != "" || df["users_unchanged"] != 3.0 {
		t.Fatalf("second import: %v", df)
	}
	js := filepath.Join(dir, "org.txt")
	os.WriteFile(js, []byte(`{"users": [{"id": "ana", "name": "Ana", "department": "engineering.platform"}]}`), 0o600)
	// Offboarding two of three users is more than a tenth: refused, and
	// nothing changes, until --force.
	if out, err := ctl(t, n, "directory", "import", js, "--json", "--remove-missing", "--apply"); err == nil || !strings.Contains(err.Error(), "TOO_MANY_REMOVALS") {
		t.Fatalf("import --remove-missing of a third of the users: %q %v, want TOO_MANY_REMOVALS", out, err)
	}
	empty := filepath.Join(dir, "header-only.csv") // an HR export that lost its rows
	os.WriteFile(empty, []byte("id,name,phone,department_path\n"), 0o600)
	if _, err := ctl(t, n, "directory", "import", empty, "--remove-missing", "--apply"); err == nil || !strings.Contains(err.Error(), "TOO_MANY_REMOVALS") {
		t.Fatalf("a header-only import with --remove-missing: %v, want TOO_MANY_REMOVALS", err)
	}
	if u, _ := n.Directory().User("cy"); u.Status != "active" {
		t.Fatal("a refused import offboarded cy")
	}
	df = jsonOut(t, n, "directory", "import", js, "--json", "--remove-missing", "--apply", "--force")
	if idList(df, "missing") != "cy,di" || idList(df, "offboarded") != "cy,di" {
		t.Fatalf("import --remove-missing: %v", df)
	}
	au := jsonOut(t, n, "audit", "--limit", "1000")
	es, _ := au["entries"].([]any)
	if raw, _ := json.Marshal(es); len(es) < 15 || strings.Contains(string(raw), "+14155550100") {
		t.Fatalf("audit: %d entries %v", len(es), es)
	}
	last := es[len(es)-1].(map[string]any)
	if last["action"] != "user.remove" || last["target"] != "di" || last["actor"] != "owner" { // the first-start token's admin
		t.Fatalf("last audit entry %v", last)
	}
	if page := jsonOut(t, n, "audit", "--after", "3", "--limit", "2"); len(page["entries"].([]any)) != 2 || page["next"] != 5.0 {
		t.Fatalf("audit page: %v", page)
	}
}

func TestDirectoryCommandErrors(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	ctl(t, n, "dept", "add", "eng")
	ctl(t, n, "dept", "add", "sre", "--parent", "eng")
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.csv")
	os.WriteFile(bad, []byte("id,name,phone,department_path\nana,Ana,,\nbo,Bo,not-a-phone,\n"), 0o600)
	checkErrors(t, n, []ctlErr{
		{[]string{"dept", "add", "eng", "--parent", "sre"}, "DEPARTMENT_CYCLE", 1},
		{[]string{"dept", "add", "x", "--parent", "nope"}, "UNKNOWN_DEPARTMENT", 1},
		{[]string{"dept", "remove", "eng"}, "DEPARTMENT_NOT_EMPTY", 1},
		{[]string{"dept", "get", "nope"}, "NOT_FOUND", 1},
		{[]string{"dept", "get"}, "want exactly one ID", 2},
		{[]string{"dept", "frob"}, "unknown subcommand", 2},
		{[]string{"dept"}, "want add", 2},
		{[]string{"group", "add", "g", "--members", "zed"}, "UNKNOWN_USER", 1},
		{[]string{"group", "members", "nope", "--add", "ana"}, "NOT_FOUND", 1},
		{[]string{"group", "members", "g"}, "--add or --remove", 2},
		{[]string{"group", "remove", "nope"}, "NOT_FOUND", 1},
		{[]string{"group", "list", "extra"}, "unexpected argument", 2},
		{[]string{"user", "remove", "zed"}, "NOT_FOUND", 1},
		{[]string{"user", "list", "--status", "gone"}, "BAD_REQUEST", 1},
		{[]string{"directory", "import", bad}, "BAD_IMPORT: bad import: line 3", 1},
		{[]string{"directory", "import", bad, "--csv", "--json"}, "not both", 2},
		{[]string{"directory", "import", filepath.Join(dir, "none.csv")}, "no such file", 1},
		{[]string{"directory", "export"}, "want import", 2},
		{[]string{"audit", "--limit", "0"}, "BAD_REQUEST", 1},
	})
	if out, _ := ctl(t, n, "user", "list", "--status", "all"); strings.Contains(out, "bo") {
		t.Fatal("a bad import file changed the directory")
	}
}
