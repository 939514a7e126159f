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

// fakesmtp runs the real binary with args to completion, killing it
// after 10s (it serves until a signal when its arguments are accepted).
func fakesmtp(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("fakesmtp %s did not exit: it serves", strings.Join(args, " "))
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
	bin := filepath.Join(t.TempDir(), "fakesmtp")
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
		{"--help", []string{"--help"}, 0, `(?s)^Usage: fakesmtp \[flags\]\n.*\n  --click N .*\n  --listen ADDRESS +loopback address to serve SMTP on \(default 127\.0\.0\.1:2525\)\n.*Example:\n  fakesmtp --click 1 &`, ""},
		{"-h", []string{"-h"}, 0, `^Usage: fakesmtp`, ""},
		{"mistyped flag", []string{"--clik", "1"}, 2, "", "fakesmtp: unknown flag --clik; see fakesmtp --help\n"},
		{"bad value", []string{"--delay", "soon"}, 2, "", "fakesmtp: invalid value \"soon\" for flag --delay: parse error; see fakesmtp --help\n"},
		{"argument", []string{"1"}, 2, "", "fakesmtp: unexpected argument \"1\"; see fakesmtp --help\n"},
		{"bad code", []string{"--fail", "200"}, 2, "", "fakesmtp: --fail 200: want a 4xx or 5xx code; see fakesmtp --help\n"},
		{"not loopback", []string{"--listen", "0.0.0.0:0"}, 1, "", "fakesmtp: emailtest: address \"0.0.0.0:0\" is not loopback\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := fakesmtp(t, bin, tc.args...)
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
