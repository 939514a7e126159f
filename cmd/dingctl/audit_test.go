package main

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// TestAuditVerifyCommand: audit shows each change's admin, role, source
// and hashes; audit verify prints the chain's state as JSON, --head the
// head hash alone, and --expect of that head passes while the log grows;
// an operator may verify, a directory admin may not. (Tampering with a
// stopped dingd's store: cmd/dingd TestAuditVerifyFindsTampering.)
func TestAuditVerifyCommand(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	mustCtl := func(args ...string) string {
		t.Helper()
		out, err := ctl(t, n, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out
	}
	mustCtl("dept", "add", "eng", "--name", "Engineering")
	op := strings.TrimSpace(mustCtl("admin", "add", "sre", "--role", "operator"))
	hr := strings.TrimSpace(mustCtl("admin", "add", "hr-sync", "--role", "directory"))
	if _, err := as(t, n, hr, "user", "add", "ana", "--name", "Ana"); err != nil {
		t.Fatal(err)
	}

	last := jsonOut(t, n, "audit", "--after", "3")["entries"].([]any)[0].(map[string]any)
	if last["actor"] != "hr-sync" || last["role"] != "directory" || !strings.HasPrefix(fmt.Sprint(last["source"]), "127.0.0.1:") {
		t.Fatalf("the last entry: %v", last)
	}
	v := jsonOut(t, n, "audit", "verify")
	if v["ok"] != true || v["entries"] != 4.0 || v["first_hashed_seq"] != 1.0 || v["head_hash"] != last["hash"] {
		t.Fatalf("audit verify: %v", v)
	}
	head, err := as(t, n, op, "audit", "verify", "--head")
	if head = strings.TrimSpace(head); err != nil || !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(head) || head != last["hash"] {
		t.Fatalf("audit verify --head: %q %v", head, err)
	}
	if _, err := as(t, n, hr, "user", "set", "ana", "--name", "Ana B"); err != nil {
		t.Fatal(err)
	}
	if v := jsonOut(t, n, "audit", "verify", "--expect", head); v["ok"] != true || v["expect_seq"] != 4.0 || v["head_seq"] != 5.0 {
		t.Fatalf("audit verify --expect the earlier head: %v", v)
	}
	checkErrors(t, n, []ctlErr{
		{[]string{"audit", "verify", "--expect", strings.Repeat("ab", 32)}, "the audit log does not verify: no entry has the expected head hash abab", 1},
		{[]string{"audit", "verify", "--expect", "xyz"}, "BAD_REQUEST: expect must be a head hash: 64 hex digits", 1},
		{[]string{"audit", "verify", "extra"}, "audit verify: unexpected argument extra", 2},
		{[]string{"--token", hr, "audit", "verify"}, `FORBIDDEN: admin "hr-sync" (role directory) lacks the permission "audit" that GET /v1/audit/verify needs`, 1},
	})
	// --head prints nothing when the log does not verify, so that a
	// recorded head is never replaced by a bad one.
	if out, err := ctl(t, n, "audit", "verify", "--head", "--expect", strings.Repeat("ab", 32)); out != "" || err == nil {
		t.Fatalf("--head on a failure: %q %v", out, err)
	}
}
