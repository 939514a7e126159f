package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

func TestDingCommands(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	for _, args := range [][]string{
		{"user", "add", "ana", "--name", "Ana"},
		{"user", "add", "bo", "--name", "Bo", "--phone", "+14155550100", "--quiet-hours", "22:00-07:00 Europe/Berlin"},
	} {
		if _, err := ctl(t, n, args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	out, err := ctl(t, n, "policy", "set", "oncall", "inapp,sms,voice@15m", "until=confirmed")
	if err != nil || strings.TrimSpace(out) != "oncall: inapp,sms,voice@15m until=confirmed" {
		t.Fatalf("policy set: %q %v", out, err)
	}
	out, err = ctl(t, n, "policy", "list")
	if err != nil || !strings.Contains(out, `"oncall": "inapp,sms,voice@15m until=confirmed"`) {
		t.Fatalf("policy list: %q %v", out, err)
	}
	// An inline policy that does not parse gets its parse error, not "not
	// found" (issue 12); a name that is not stored gets "not found".
	for _, tc := range []struct{ policy, want string }{
		{"sms@", "BAD_POLICY"},
		{"sms@5x", "bad delay"},
		{"inapp,bogus@1m", "BAD_POLICY"},
		{"nosuchpolicy", "NOT_FOUND"},
	} {
		_, err := ctl(t, n, "ding", "--from", "ana", "--to", "bo", "--policy", tc.policy, "x")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("ding --policy %q: %v, want %s", tc.policy, err, tc.want)
		}
	}
	out, err = ctl(t, n, "ding", "--from", "ana", "--to", "bo,+14155550123", "--policy", "oncall", "--choices", "attend,decline", "--critical", "deploy", "stuck")
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(out)
	if len(id) != 26 {
		t.Fatalf("ding printed %q", out)
	}
	out, err = ctl(t, n, "ding", "status", id)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Policy     string
		Choices    []string
		Recipients []struct {
			Recipient, Status string
			Events            []struct{ Event, Channel string }
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status printed %q: %v", out, err)
	}
	if st.Policy != "inapp,sms,voice@15m until=confirmed" || len(st.Choices) != 2 || len(st.Recipients) != 2 {
		t.Fatalf("status = %+v", st)
	}
	// No Twilio on this node: the SMS step is recorded as not configured.
	nodetest.WaitFor(t, "not_configured in the ledger", 5e9, func() bool {
		out, _ := ctl(t, n, "ding", "status", id)
		return strings.Count(out, `"not_configured"`) == 2
	})
	// bo's app shows the DING with its choices and confirms "decline";
	// ana's app sees the DING's events and the confirmation.
	out, err = ctl(t, n, "listen", "--user", "bo", "--device", "phone", "--confirm", "2", "--messages", "--count", "1", "--timeout", "5s")
	if err != nil || !strings.Contains(out, `"kind":"ding"`) || !strings.Contains(out, `"choices":["attend","decline"]`) {
		t.Fatalf("bo's listen: %q %v", out, err)
	}
	nodetest.WaitFor(t, "bo confirmed", 5e9, func() bool {
		out, _ := ctl(t, n, "ding", "status", id)
		return strings.Contains(out, `"choice": "decline"`)
	})
	out, err = ctl(t, n, "listen", "--user", "ana", "--device", "laptop", "--timeout", "1s")
	if err != nil || !strings.Contains(out, `"type":"ding_event"`) || !strings.Contains(out, `"event":"confirmed"`) ||
		!strings.Contains(out, `"state":"confirmed"`) {
		t.Fatalf("ana's listen: %q %v", out, err)
	}
	if out, err := ctl(t, n, "ding", "list", "--from", "ana"); err != nil || !strings.Contains(out, id) {
		t.Fatalf("list: %q %v", out, err)
	}
	if out, err := ctl(t, n, "ding", "cancel", id); err != nil || strings.Count(out, `"status": "cancelled"`) != 1 {
		t.Fatalf("cancel: %q %v", out, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"ding", "--from", "ana", "--to", "bo", "again"}, "QUOTA_EXCEEDED"}, // within 5 minutes of the first
		{[]string{"ding", "--from", "ana", "--to", "+14155550199", "--policy", "pager@5m", "x"}, "NOT_FOUND"},
		{[]string{"ding", "--from", "ana", "--to", "zed", "x"}, "UNKNOWN_RECIPIENT"},
		{[]string{"ding", "--from", "ana", "x"}, "--to"},
		{[]string{"policy", "set", "bad", "fax@1m"}, "BAD_POLICY"},
		{[]string{"ding", "status", "nope"}, "BAD_REQUEST"},
	} {
		if _, err := ctl(t, n, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want %q", c.args, err, c.want)
		}
	}
}

// TestDingStatusWait: ding status --wait returns once every recipient is
// settled, and exits 3 with the last answer when the wait runs out first.
func TestDingStatusWait(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	for _, args := range [][]string{{"user", "add", "ana", "--name", "Ana"}, {"user", "add", "bo", "--name", "Bo"}} {
		if _, err := ctl(t, n, args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	out, err := ctl(t, n, "ding", "--from", "ana", "--to", "bo", "--policy", "inapp", "wake up")
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(out)
	out, err = ctl(t, n, "ding", "status", id, "--wait", "200ms")
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 3 || !strings.Contains(ee.msg, "1 recipients still escalating") || !strings.Contains(out, `"status": "pending"`) {
		t.Fatalf("an unanswered DING: %v\n%s", err, out)
	}
	if _, err := ctl(t, n, "listen", "--user", "bo", "--device", "phone", "--confirm", "0", "--messages", "--count", "1", "--timeout", "5s"); err != nil {
		t.Fatal(err)
	}
	out, err = ctl(t, n, "ding", "status", id, "--wait", "5s")
	if err != nil || !strings.Contains(out, `"status": "confirmed"`) {
		t.Fatalf("a confirmed DING: %v\n%s", err, out)
	}
}
