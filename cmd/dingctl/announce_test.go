package main

import (
	"encoding/json"
	"strings"
	"testing"

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
	if _, err := ctl(t, n, "listen", "--user", "bo", "--device", "phone", "--confirm", "0", "--count", "1", "--timeout", "5s"); err != nil {
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
