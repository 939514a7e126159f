package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// TestEveryCommandHasHelp asks each command of the usage text for its
// help, both ways (CMD --help and help CMD): it exits 0 and prints, on
// stdout, the command's usage line, its flags, an example and the
// environment. A command whose flag set is not named in the table, or a
// table entry no command answers to, fails here.
func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range commands {
		words := strings.Fields(c.name)
		var a, b bytes.Buffer
		if err := run(append(append([]string{}, words...), "--help"), &a); err != nil {
			t.Errorf("dingctl %s --help: %v", c.name, err)
			continue
		}
		if err := run(append([]string{"help"}, words...), &b); err != nil {
			t.Errorf("dingctl help %s: %v", c.name, err)
			continue
		}
		if a.String() != b.String() {
			t.Errorf("dingctl %s --help and dingctl help %s differ", c.name, c.name)
		}
		out := a.String()
		for _, want := range []string{"usage: dingctl " + c.name + " " + c.args + "\n", c.summary, "example:\n  dingctl ", "DING_TOKEN", "DING_SERVER", "./ding-data"} {
			if !strings.Contains(out, want) {
				t.Errorf("dingctl %s --help lacks %q:\n%s", c.name, want, out)
			}
		}
		if strings.Contains(c.args, "--") && !strings.Contains(out, "flags:\n") {
			t.Errorf("dingctl %s --help lists no flags:\n%s", c.name, out)
		}
	}
}

func TestTopLevelHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		var out bytes.Buffer
		if err := run(args, &out); err != nil {
			t.Fatalf("dingctl %v: %v", args, err)
		}
		for _, c := range commands {
			if !strings.Contains(out.String(), "  "+c.name+" "+c.args+"\n") {
				t.Errorf("dingctl %v does not list %s", args, c.name)
			}
		}
	}
	// A group asked for help lists its commands; given nothing, the same
	// on stderr and a usage error.
	var out bytes.Buffer
	if err := run([]string{"user", "--help"}, &out); err != nil || !strings.Contains(out.String(), "dingctl user remove ID") {
		t.Errorf("dingctl user --help: %v\n%s", err, out.String())
	}
	var ee exitError
	if err := run([]string{"user"}, &out); !errors.As(err, &ee) || ee.code != 2 {
		t.Errorf("dingctl user: %v, want a usage error", err)
	}
}

// TestMistypedFlagIsOneLine: a flag the command does not have gets one
// line naming the command's help, not the whole flag list.
func TestMistypedFlagIsOneLine(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"send", "--frm", "ana", "hi"}, "send: unknown flag --frm; see dingctl send --help"},
		{[]string{"ding", "status", "--x"}, "ding status: unknown flag --x; see dingctl ding status --help"},
		{[]string{"send", "--to"}, "send: a value is needed after --to; see dingctl send --help"},
		{[]string{"token", "--ttl", "soon"}, `token: invalid value "soon" for flag --ttl`},
		{[]string{"--frm"}, "unknown flag --frm; see dingctl --help"},
	} {
		var out bytes.Buffer
		err := run(c.args, &out)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(ee.msg, c.want) || strings.Contains(ee.msg, "\n") || out.Len() != 0 {
			t.Errorf("dingctl %v: %v (stdout %q), want exit 2 and one line containing %q", c.args, err, out.String(), c.want)
		}
	}
}

// TestDataFlagBeatsTheEnvironment: an explicit --data wins over a stale
// DING_TOKEN (a flag beats the environment), and a refused token names
// where it came from.
func TestDataFlagBeatsTheEnvironment(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	t.Setenv("DING_TOKEN", "stale")
	if _, err := ctl(t, n, "user", "add", "ana", "--name", "Ana"); err != nil {
		t.Fatalf("--data with a stale DING_TOKEN: %v", err)
	}
	var out bytes.Buffer
	err := run([]string{"--server", "http://" + n.HTTPAddr(), "user", "list"}, &out)
	if err == nil || !strings.Contains(err.Error(), "UNAUTHENTICATED") || !strings.Contains(err.Error(), "(the admin token from DING_TOKEN)") {
		t.Fatalf("DING_TOKEN alone: %v, want it refused and named", err)
	}
	err = run([]string{"--server", "http://" + n.HTTPAddr(), "--token", "other", "user", "list"}, &out)
	if err == nil || !strings.Contains(err.Error(), "(the admin token from --token)") {
		t.Fatalf("--token: %v", err)
	}
}

// TestWrongAddressesGetHints: the mistakes of a first hour (the scheme
// left out, a URL for the socket, a typo in a command, nothing listening)
// are one line saying what to do.
func TestWrongAddressesGetHints(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--token", "t", "--server", "127.0.0.1:7080", "user", "list"}, "want a URL: http://127.0.0.1:7080"},
		{[]string{"--token", "t", "--socket", "http://127.0.0.1:7070", "listen", "--user", "a", "--device", "b"}, "want HOST:PORT"},
		{[]string{"sned"}, "did you mean send?"},
		{[]string{"--token", "t", "--server", "http://127.0.0.1:1", "user", "list"}, "is dingd running?"},
	} {
		var out bytes.Buffer
		err := run(c.args, &out)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("dingctl %v: %v, want one line containing %q", c.args, err, c.want)
		}
	}
}
