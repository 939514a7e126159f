package main

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// faketwilio runs the real binary with args to completion, killing it
// after 10s (it serves until a signal when its arguments are accepted).
func faketwilio(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("faketwilio %s did not exit: it serves", strings.Join(args, " "))
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// TestUsage (issue 12): --help prints the usage on stdout with exit
// status 0, every flag written --name; a mistake on the command line is
// one line on stderr with exit status 2.
func TestUsage(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "faketwilio")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string // a regexp; empty: no output
		stderr string // exactly
	}{
		{"--help", []string{"--help"}, 0, `(?s)^Usage: faketwilio \[flags\]\n.*\n  --listen ADDRESS +address to serve the fake REST API on \(default 127\.0\.0\.1:7090\)\n.*  --press KEY .*Example:\n  faketwilio --press 1 &`, ""},
		{"-h", []string{"-h"}, 0, `^Usage: faketwilio`, ""},
		{"mistyped flag", []string{"--prses", "1"}, 2, "", "faketwilio: unknown flag --prses; see faketwilio --help\n"},
		{"bad value", []string{"--delay", "soon"}, 2, "", "faketwilio: invalid value \"soon\" for flag --delay: parse error; see faketwilio --help\n"},
		{"argument", []string{"1"}, 2, "", "faketwilio: unexpected argument \"1\"; see faketwilio --help\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := faketwilio(t, bin, tc.args...)
			if code != tc.code || stderr != tc.stderr {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.stderr)
			}
			if tc.stdout == "" && stdout != "" || tc.stdout != "" && !regexp.MustCompile(tc.stdout).MatchString(stdout) {
				t.Fatalf("stdout does not match %s:\n%s", tc.stdout, stdout)
			}
			if strings.Contains(stdout, "Usage of") || regexp.MustCompile(`(?m)^\s+-[a-z]`).MatchString(stdout) {
				t.Fatalf("Go's default usage, with single-dash flags:\n%s", stdout)
			}
		})
	}
}
