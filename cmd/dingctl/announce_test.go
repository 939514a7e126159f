package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

func TestAnnounceCommands(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	for _, args := range [][]string{
		{"user", "add", "ana", "--name", "Ana"},
		{"dept", "add", "eng", "--name", "Engineering"},
		{"user", "add", "bo", "--name", "Bo", "--department", "eng"},
		{"user", "add", "cy", "--name", "Cy", "--department", "eng"},
	} {
		if _, err := ctl(t, n, args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	out, err := ctl(t, n, "announce", "--from", "ana", "--to", "dept:eng", "--confirm", "new", "on-call", "rota")
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(out)
	if len(id) != 26 {
		t.Fatalf("announce printed %q", out)
	}
	if _, err := ctl(t, n, "listen", "--user", "bo", "--device", "phone", "--confirm", "0", "--messages", "--count", "1", "--timeout", "5s"); err != nil {
		t.Fatal(err)
	}
	out, err = ctl(t, n, "announce", "stats", id, "--unconfirmed")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Total, Confirmed int
		Unconfirmed      []string
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Total != 2 || st.Confirmed != 1 || len(st.Unconfirmed) != 1 || st.Unconfirmed[0] != "cy" {
		t.Fatalf("stats: %s (%v)", out, err)
	}
	out, err = ctl(t, n, "announce", "stats", id, "--csv", "--unconfirmed")
	if err != nil || out != "user,state,delivered,read,confirmed\ncy,sent,,,\n" {
		t.Fatalf("csv: %q %v", out, err)
	}
	out, err = ctl(t, n, "announce", "reding", id, "--policy", "inapp")
	if err != nil || !strings.Contains(out, `"recipients": 1`) {
		t.Fatalf("reding: %q %v", out, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"announce", "--to", "dept:nope", "x"}, "UNKNOWN_RECIPIENT"},
		{[]string{"announce", "x"}, "--to"},
		{[]string{"announce", "stats", "nope"}, "BAD_REQUEST"},
		{[]string{"send", "--from", "ana", "--to", "all", "x"}, "BAD_REQUEST"},
	} {
		if _, err := ctl(t, n, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want %q", c.args, err, c.want)
		}
	}
}

func TestStatsCommand(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	for _, args := range [][]string{
		{"dept", "add", "eng", "--name", "Engineering"},
		{"user", "add", "ana", "--name", "Ana", "--department", "eng"},
		{"user", "add", "bo", "--name", "Bo"},
		{"send", "--from", "ana", "--to", "bo", "hi"},
		{"ding", "--from", "ana", "--to", "bo", "--policy", "inapp", "wake up"},
		{"announce", "--to", "all", "hello all"},
	} {
		if _, err := ctl(t, n, args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	out, err := ctl(t, n, "stats")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Departments []struct {
			Department string
			Counts     map[string]any
		}
		Total         struct{ Counts map[string]any }
		Announcements []struct{ Created string }
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	// Times are RFC 3339, as everywhere in dingctl's output.
	if len(st.Announcements) != 1 {
		t.Fatalf("stats: want one announcement: %s", out)
	}
	if at, err := time.Parse(time.RFC3339, st.Announcements[0].Created); err != nil || time.Since(at) > time.Hour {
		t.Fatalf("announcement created %q: %v", st.Announcements[0].Created, err)
	}
	if len(st.Departments) != 2 || st.Departments[1].Department != "eng" || st.Departments[1].Counts["messages_sent"] != 1.0 ||
		st.Departments[1].Counts["dings_sent"] != 1.0 || st.Departments[0].Counts["ding_recipients"] != 1.0 {
		t.Fatalf("stats: %s", out)
	}
	if _, err := ctl(t, n, "stats", "--from", "2026-13-01"); err == nil || !strings.Contains(err.Error(), "BAD_REQUEST") {
		t.Fatalf("bad date: %v", err)
	}
}
