package httpapi_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/internal/fakeclock"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// nulls lists the paths in a decoded JSON answer whose value is null.
func nulls(path string, v any) []string {
	switch x := v.(type) {
	case nil:
		return []string{path}
	case map[string]any:
		var out []string
		for k, e := range x {
			out = append(out, nulls(path+"."+k, e)...)
		}
		return out
	case []any:
		var out []string
		for i, e := range x {
			out = append(out, nulls(fmt.Sprintf("%s[%d]", path, i), e)...)
		}
		return out
	}
	return nil
}

// An empty list in a directory answer is [], never null (issue 12).
func TestDirectoryAnswersHaveListsNotNull(t *testing.T) {
	a, _ := setup(t)
	for _, c := range []struct {
		method, path string
		body         any
		status       int
	}{
		{"GET", "/v1/departments", nil, 200},
		{"GET", "/v1/groups", nil, 200},
		{"GET", "/v1/users", nil, 200},
		{"GET", "/v1/users?status=removed", nil, 200},
		{"GET", "/v1/audit", nil, 200},
		{"PUT", "/v1/departments/ops", map[string]string{"name": "Ops"}, 201}, // dept add: no members yet
		{"GET", "/v1/departments/ops", nil, 200},
		{"GET", "/v1/groups/dept:ops", nil, 200},
		{"GET", "/v1/groups/all", nil, 200},
		{"PUT", "/v1/groups/g", map[string]any{"name": "G"}, 201}, // no members
		{"GET", "/v1/groups/g", nil, 200},
		{"POST", "/v1/groups/g/members", map[string]any{}, 200},
		{"GET", "/v1/groups", nil, 200},
		{"POST", "/v1/users", map[string]string{"id": "ana", "name": "Ana", "department": "ops"}, 201},
		{"GET", "/v1/users/ana/devices", nil, 200},
		{"GET", "/v1/users/ana/secret-chats", nil, 200},
		{"POST", "/v1/directory/import?dry_run=1", `{"users":[{"id":"ana","name":"Ana","department":"ops"}]}`, 200},
		{"DELETE", "/v1/groups/g", nil, 200},
		{"DELETE", "/v1/users/ana", nil, 200},
		{"DELETE", "/v1/departments/ops", nil, 200},
		{"GET", "/v1/departments", nil, 200},
		{"GET", "/v1/dings", nil, 200},
	} {
		out := a.ok(c.method, c.path, c.body, c.status)
		if n := nulls("", out); len(n) > 0 {
			t.Errorf("%s %s: null at %v in %v", c.method, c.path, n, out)
		}
	}
}

// times lists the strings in a decoded JSON answer that are times but not
// RFC 3339 in UTC with at most millisecond precision.
func badTimes(path string, v any) []string {
	switch x := v.(type) {
	case string:
		if _, err := time.Parse(time.RFC3339Nano, x); err != nil {
			return nil
		}
		frac := ""
		if i := strings.IndexByte(x, '.'); i >= 0 {
			frac = strings.TrimSuffix(x[i+1:], "Z")
		}
		if !strings.HasSuffix(x, "Z") || len(frac) > 3 {
			return []string{path + "=" + x}
		}
	case map[string]any:
		var out []string
		for k, e := range x {
			out = append(out, badTimes(path+"."+k, e)...)
		}
		return out
	case []any:
		var out []string
		for i, e := range x {
			out = append(out, badTimes(fmt.Sprintf("%s[%d]", path, i), e)...)
		}
		return out
	}
	return nil
}

// Every time the admin API answers is RFC 3339, UTC, in whole
// milliseconds, although the clock has nanoseconds; the statistics' range
// is the days asked for, at 00:00Z (issue 12).
func TestTimesAreMilliseconds(t *testing.T) {
	clock := fakeclock.New(time.Date(2026, 12, 4, 5, 48, 35, 121_724_255, time.UTC))
	n := nodetest.Start(t, node.Config{Clock: clock})
	a := api{t: t, base: "http://" + n.HTTPAddr(), tok: n.AdminToken()}
	for _, u := range []string{"ana", "bo"} {
		a.ok("POST", "/v1/users", map[string]string{"id": u, "name": u}, 201)
	}
	msg := a.ok("POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "hi"}, 200)["id"].(string)
	ann := a.ok("POST", "/v1/announcements", map[string]any{"from": "ana", "to": "all", "text": "hello"}, 201)["id"].(string)
	ding := a.ok("POST", "/v1/dings", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "on call?", "policy": "inapp,inapp@1h"}, 201)["id"].(string)
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	nextDing(t, bo)
	clock.Advance(1234567 * time.Nanosecond)
	if err := bo.Read(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	answers := map[string]map[string]any{}
	for _, p := range []string{
		"/v1/dings/" + ding, "/v1/dings", "/v1/messages/" + msg + "/receipts", "/v1/announcements/" + ann + "/stats",
		"/v1/messages/" + msg + "/stats", "/v1/users/bo", "/v1/users", "/v1/audit", "/v1/stats", "/v1/stats?from=2026-12-01&to=2026-12-04",
	} {
		answers[p] = a.ok("GET", p, nil, 200)
	}
	answers["cancel"] = a.ok("POST", "/v1/dings/"+ding+"/cancel", nil, 200)
	for p, out := range answers {
		if bad := badTimes("", out); len(bad) > 0 {
			t.Errorf("%s: times not in milliseconds: %v", p, bad)
		}
	}
	if at := answers["/v1/dings/"+ding]["recipients"].([]any)[0].(map[string]any)["events"].([]any)[0].(map[string]any)["at"]; at != "2026-12-04T05:48:35.121Z" {
		t.Errorf("ledger event at %v, want 2026-12-04T05:48:35.121Z", at)
	}
	if st := answers["/v1/stats?from=2026-12-01&to=2026-12-04"]; st["from"] != "2026-12-01T00:00:00Z" || st["to"] != "2026-12-04T00:00:00Z" {
		t.Errorf("stats range %v to %v", st["from"], st["to"])
	}
	st := answers["/v1/stats"]
	from, err1 := time.Parse(time.RFC3339, st["from"].(string))
	to, err2 := time.Parse(time.RFC3339, st["to"].(string))
	if err1 != nil || err2 != nil || !to.Equal(to.Truncate(24*time.Hour)) || to.Sub(from) != 29*24*time.Hour {
		t.Errorf("default stats range %v to %v: want the last 30 days, 00:00Z", st["from"], st["to"])
	}
}
