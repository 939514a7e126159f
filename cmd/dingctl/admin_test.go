package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// as runs dingctl against n with an admin's token (--token beats --data).
func as(t *testing.T, n *node.Node, tok string, args ...string) (string, error) {
	t.Helper()
	return ctl(t, n, append([]string{"--token", tok}, args...)...)
}

// TestAdminCommands: admin add prints a token that works as that admin,
// within its role; admin list shows every admin and no token; admin
// revoke stops the token at the next command; bad input gets one precise
// line.
func TestAdminCommands(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	if _, err := ctl(t, n, "dept", "add", "eng", "--name", "Engineering"); err != nil {
		t.Fatal(err)
	}
	out, err := ctl(t, n, "admin", "add", "hr-sync", "--role", "directory", "--expires", "90d")
	if err != nil {
		t.Fatal(err)
	}
	hr := strings.TrimSpace(out)
	if strings.Count(out, "\n") != 1 || strings.Count(hr, ".") != 2 {
		t.Fatalf("admin add printed %q, want the token alone on one line", out)
	}
	if _, err := as(t, n, hr, "user", "add", "ana", "--name", "Ana", "--department", "eng"); err != nil {
		t.Fatalf("the directory admin adds a user: %v", err)
	}
	var me struct {
		Name, Role  string
		Expires     time.Time
		Permissions []string
	}
	out, err = as(t, n, hr, "admin", "whoami")
	if err != nil || json.Unmarshal([]byte(out), &me) != nil || me.Name != "hr-sync" || me.Role != "directory" ||
		me.Expires.Sub(time.Now()) < 89*24*time.Hour || me.Expires.Sub(time.Now()) > 90*24*time.Hour {
		t.Fatalf("whoami: %v %s", err, out)
	}
	// DING_TOKEN works as before, for a named admin's token too.
	t.Setenv("DING_TOKEN", hr)
	var buf bytes.Buffer
	if err := run([]string{"--server", "http://" + n.HTTPAddr(), "user", "get", "ana"}, &buf); err != nil {
		t.Fatalf("DING_TOKEN: %v", err)
	}
	t.Setenv("DING_TOKEN", "")
	lead, err := ctl(t, n, "admin", "add", "eng-lead", "--role", "dept-admin", "--dept", "eng")
	if err != nil {
		t.Fatal(err)
	}
	lead = strings.TrimSpace(lead)
	if _, err := ctl(t, n, "user", "add", "ed", "--name", "Ed"); err != nil {
		t.Fatal(err)
	}

	out, err = ctl(t, n, "admin", "list")
	if err != nil || strings.Contains(out, hr) || strings.Contains(out, "token") {
		t.Fatalf("admin list: %v\n%s", err, out)
	}
	var list struct {
		Admins []struct{ Name, Role, Dept, Status string }
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Admins) != 3 || list.Admins[0].Name != "eng-lead" ||
		list.Admins[0].Dept != "eng" || list.Admins[1].Name != "hr-sync" || list.Admins[2].Name != "owner" || list.Admins[2].Role != "owner" {
		t.Fatalf("admin list: %v %+v", err, list)
	}

	checkErrors(t, n, []ctlErr{
		{[]string{"admin", "add", "x", "--role", "root"}, `UNKNOWN_ROLE: unknown role "root": want owner, admin, directory, operator, sender or dept-admin`, 1},
		{[]string{"admin", "add", "x"}, "admin add: --role is required", 2},
		{[]string{"admin", "add", "x", "--role", "dept-admin"}, "BAD_REQUEST: role dept-admin acts within one department's subtree: give its department", 1},
		{[]string{"admin", "add", "x", "--role", "dept-admin", "--dept", "nosuch"}, `UNKNOWN_DEPARTMENT: `, 1},
		{[]string{"admin", "add", "x", "--role", "operator", "--dept", "eng"}, "BAD_REQUEST: role operator acts on the whole directory and takes no department", 1},
		{[]string{"admin", "add", "hr-sync", "--role", "sender"}, `ADMIN_EXISTS: `, 1},
		{[]string{"admin", "add", "x", "--role", "sender", "--expires", "soon"}, `admin add: --expires "soon": want a lifetime like 90d`, 2},
		{[]string{"admin", "add", "x", "--role", "sender", "--expires", "0s"}, `a lifetime is at least 1s`, 2},
		{[]string{"admin", "add"}, "admin add: want exactly one NAME", 2},
		{[]string{"admin", "revoke", "owner"}, "LAST_OWNER: ", 1},
		{[]string{"admin", "revoke", "nosuch"}, `UNKNOWN_ADMIN: no admin "nosuch"`, 1},
		{[]string{"admin", "rotate", "x"}, "admin: unknown subcommand rotate (want add, list, revoke or whoami)", 2},
		{[]string{"--token", hr, "audit"}, `FORBIDDEN: admin "hr-sync" (role directory) lacks the permission "audit"`, 1},
		{[]string{"--token", hr, "admin", "add", "y", "--role", "owner"}, `FORBIDDEN: admin "hr-sync" (role directory) lacks the permission "admins"`, 1},
		{[]string{"--token", lead, "ding", "--from", "ana", "--to", "ed", "--policy", "inapp", "x"}, `OUT_OF_SCOPE: admin "eng-lead" (role dept-admin) acts only within department eng`, 1},
		{[]string{"--token", lead, "announce", "--from", "ana", "--to", "all", "x"}, `OUT_OF_SCOPE: `, 1},
	})
	if out, err := as(t, n, lead, "ding", "--from", "ana", "--to", "ana", "--policy", "inapp", "x"); err != nil || len(strings.TrimSpace(out)) != 26 {
		t.Fatalf("the department admin DINGs within its department: %v %q", err, out)
	}

	out, err = ctl(t, n, "admin", "revoke", "hr-sync")
	if err != nil || out != "revoked admin hr-sync (role directory): its token no longer works\n" {
		t.Fatalf("revoke: %v %q", err, out)
	}
	checkErrors(t, n, []ctlErr{
		{[]string{"--token", hr, "user", "list"}, "UNAUTHENTICATED: admin token revoked (the admin token from --token)", 1},
	})
	if out, err := ctl(t, n, "admin", "revoke", "hr-sync"); err != nil || !strings.Contains(out, "already revoked") {
		t.Fatalf("revoke again: %v %q", err, out)
	}
	// The audit log names who did what.
	out, err = ctl(t, n, "audit")
	for _, want := range []string{`"actor": "hr-sync",
      "at": `, `"action": "admin.revoke"`} {
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("audit lacks %q: %v\n%s", want, err, out)
		}
	}
}
