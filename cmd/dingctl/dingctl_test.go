package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// ctl runs dingctl in-process against n and returns stdout and the error.
func ctl(t *testing.T, n *node.Node, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	full := append([]string{"--data", n.DataDir(), "--server", "http://" + n.HTTPAddr(), "--socket", n.SocketAddr()}, args...)
	err := run(full, &out)
	return out.String(), err
}

// ctlErr is a dingctl run that must fail with a one-line error
// containing want and exit code code.
type ctlErr struct {
	args []string
	want string
	code int
}

// checkErrors runs each case against n and reports those that do not fail
// as they should.
func checkErrors(t *testing.T, n *node.Node, cases []ctlErr) {
	t.Helper()
	for _, c := range cases {
		_, err := ctl(t, n, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: err %v, want one line containing %q", c.args, err, c.want)
			continue
		}
		code := 1
		var ee exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		if code != c.code {
			t.Errorf("%v: exit code %d, want %d", c.args, code, c.code)
		}
	}
}

func TestTour(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	for _, args := range [][]string{
		{"user", "add", "ana", "--name", "Ana"},
		{"user", "add", "bo", "--name", "Bo", "--phone", "+14155550100"},
	} {
		if _, err := ctl(t, n, args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	out, err := ctl(t, n, "send", "--from", "ana", "--to", "bo", "lunch", "at", "noon?")
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(out)
	if len(id) != 26 || strings.Contains(out[:len(out)-1], "\n") {
		t.Fatalf("send printed %q, want one id line", out)
	}
	out, err = ctl(t, n, "listen", "--user", "bo", "--device", "laptop", "--read", "--messages", "--count", "1", "--timeout", "5s")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("listen printed %q: %v", out, err)
	}
	if m["id"] != id || m["from"] != "ana" || m["body"] != "lunch at noon?" || m["seq"] != 1.0 || m["kind"] != "text" {
		t.Fatalf("listen printed %v", m)
	}
	out, err = ctl(t, n, "receipts", id)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Recipients []struct{ User, State string }
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || len(r.Recipients) != 1 || r.Recipients[0].State != "read" {
		t.Fatalf("receipts printed %s (%v)", out, err)
	}
	// The sender's device sees the read receipt event.
	out, err = ctl(t, n, "listen", "--user", "ana", "--device", "phone", "--timeout", "1s")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"type":"receipt"`) || !strings.Contains(out, `"state":"read"`) {
		t.Fatalf("sender's listen printed %q", out)
	}
	tok, err := ctl(t, n, "token", "--user", "bo", "--device", "phone")
	if err != nil || strings.Count(tok, ".") != 2 {
		t.Fatalf("token printed %q (%v)", tok, err)
	}
	// A backup goes under the server's backup dir: DATA/backups by default.
	want, _ := filepath.EvalSymlinks(filepath.Join(n.DataDir(), "backups"))
	if out, err := ctl(t, n, "backup", "--out", "nightly"); err != nil || strings.TrimSpace(out) != filepath.Join(want, "nightly") {
		t.Fatalf("backup: %q %v, want %s/nightly", out, err, want)
	}
	if out, err := ctl(t, n, "backup", "--out", t.TempDir()+"/elsewhere"); err == nil || !strings.Contains(err.Error(), "FORBIDDEN") {
		t.Fatalf("backup outside the backup dir: %q %v, want FORBIDDEN", out, err)
	}
}

func TestErrorsAreOneLineAndNonZero(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	ctl(t, n, "user", "add", "ana", "--name", "ana")
	checkErrors(t, n, []ctlErr{
		{[]string{"send", "--from", "ana", "--to", "zed", "hi"}, "UNKNOWN_RECIPIENT", 1},
		{[]string{"send", "--from", "ana", "hi"}, "--to", 2},
		{[]string{"receipts", "nope"}, "BAD_REQUEST", 1},
		{[]string{"user", "add", "bad id", "--name", "X"}, "BAD_REQUEST", 1},
		{[]string{"user", "add", "cy"}, "--name is required", 2},
		{[]string{"listen", "--user", "ana", "--device", "d", "--count", "1", "--timeout", "200ms"}, "timed out after 0 of 1", 3},
		{[]string{"announce", "--to", "ana", "hello"}, "announcements go to groups", 1},
		{[]string{"frobnicate"}, "unknown command", 2},
		{[]string{"--token", "forged", "user", "list"}, "UNAUTHENTICATED", 1},
	})
}

// user add creates and refuses an existing id (it used to replace the user
// whole, clearing a phone the README's own tour had set); user set changes
// only what it is given.
func TestUserAddRefusesAnExistingUserAndSetPatches(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	if _, err := ctl(t, n, "user", "add", "bo", "--name", "Bo", "--phone", "+14155550100", "--quiet-hours", "22:00-07:00"); err != nil {
		t.Fatal(err)
	}
	ctl(t, n, "dept", "add", "sre", "--name", "SRE")
	if out, err := ctl(t, n, "user", "add", "bo", "--name", "Bo", "--department", "sre"); err == nil || !strings.Contains(err.Error(), "USER_EXISTS") {
		t.Fatalf("user add of an existing user: %q %v, want USER_EXISTS", out, err)
	}
	out, err := ctl(t, n, "user", "set", "bo", "--department", "sre")
	if err != nil {
		t.Fatal(err)
	}
	var u struct{ Name, Phone, QuietHours, Department string }
	if err := json.Unmarshal([]byte(out), &u); err != nil {
		t.Fatal(err)
	}
	u.QuietHours = strings.TrimSpace(u.QuietHours)
	got, _ := n.Directory().User("bo")
	if got.Department != "sre" || got.Phone != "+14155550100" || got.QuietHours != "22:00-07:00" || got.Name != "Bo" {
		t.Fatalf("after user set --department: %+v, want the phone, quiet hours and name kept", got)
	}
	if _, err := ctl(t, n, "user", "set", "bo", "--phone", ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := n.Directory().User("bo"); got.Phone != "" || got.Department != "sre" {
		t.Fatalf("after user set --phone \"\": %+v, want the phone cleared, the rest kept", got)
	}
	if _, err := ctl(t, n, "user", "set", "bo"); err == nil {
		t.Fatal("user set with nothing to change: no error")
	}
	if _, err := ctl(t, n, "user", "set", "nobody", "--name", "X"); err == nil || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Fatalf("user set of an unknown user: %v, want NOT_FOUND", err)
	}
	if _, err := ctl(t, n, "user", "set", "bo", "--phone", "12"); err == nil {
		t.Fatal("user set with a bad phone: no error")
	}
}

// send reads its body from stdin with "-" (or when no TEXT is given and
// stdin is not a terminal); --version prints the build.
func TestSendFromStdinAndVersion(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	ctl(t, n, "user", "add", "ana", "--name", "Ana")
	ctl(t, n, "user", "add", "bo", "--name", "Bo")
	defer func(r io.Reader) { stdin = r }(stdin)
	for _, args := range [][]string{{"-"}, {}} {
		stdin = strings.NewReader("line one\nline two\n")
		id, err := ctl(t, n, append([]string{"send", "--from", "ana", "--to", "bo"}, args...)...)
		if err != nil {
			t.Fatalf("send %v from stdin: %v", args, err)
		}
		m, err := n.Engine().Message(mustID(t, strings.TrimSpace(id)))
		if err != nil || string(m.Body) != "line one\nline two" {
			t.Fatalf("the body sent from stdin: %q %v", m.Body, err)
		}
	}
	var out bytes.Buffer
	if err := run([]string{"--version"}, &out); err != nil || !strings.HasPrefix(out.String(), "dingctl ") || !strings.Contains(out.String(), "revision") {
		t.Fatalf("--version: %q %v", out.String(), err)
	}
}

func mustID(t *testing.T, s string) engine.ID {
	t.Helper()
	id, err := engine.ParseID(s)
	if err != nil {
		t.Fatalf("id %q: %v", s, err)
	}
	return id
}

// listen --count N prints N lines whatever their kind (it printed a
// receipt and then the message for --count 1); --messages prints messages
// only, acknowledging the rest.
func TestListenCountIsLines(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	ctl(t, n, "user", "add", "ana", "--name", "Ana")
	ctl(t, n, "user", "add", "bo", "--name", "Bo")
	id, err := ctl(t, n, "send", "--from", "ana", "--to", "bo", "first")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl(t, n, "listen", "--user", "bo", "--device", "phone", "--read", "--messages", "--count", "1", "--timeout", "5s"); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl(t, n, "send", "--from", "ana", "--to", "bo", "second"); err != nil {
		t.Fatal(err)
	}
	// ana's stream: her own two messages' receipts (delivered, read) come
	// before or between; --count 1 prints exactly one line.
	out, err := ctl(t, n, "listen", "--user", "ana", "--device", "phone", "--count", "1", "--timeout", "5s")
	if err != nil || len(jsonLines(t, out)) != 1 {
		t.Fatalf("listen --count 1: %q %v, want one line", out, err)
	}
	out, err = ctl(t, n, "listen", "--user", "bo", "--device", "laptop", "--messages", "--count", "2", "--cursor", "0", "--timeout", "5s")
	lines := jsonLines(t, out)
	if err != nil || len(lines) != 2 || lines[0]["id"] != strings.TrimSpace(id) || lines[1]["body"] != "second" {
		t.Fatalf("listen --messages --count 2: %q %v, want bo's two messages", out, err)
	}
}

// dingctl over TLS: --ca verifies the server (HTTPS and --socket-tls),
// without it the test CA is not trusted, and the admin token is not sent
// in clear to a host that is not loopback unless --insecure.
func TestTLS(t *testing.T) {
	cert, key, ca := nodetest.TLSFiles(t)
	n := nodetest.Start(t, node.Config{TLSCert: cert, TLSKey: key, TLSSocketAddr: nodetest.FreeAddr(t)})
	tok := strings.TrimSpace(readFile(t, filepath.Join(n.DataDir(), "admin.token")))
	https := "https://" + n.HTTPAddr()
	var out bytes.Buffer
	if err := run([]string{"--server", https, "--token", tok, "--ca", ca, "user", "add", "ana", "--name", "Ana"}, &out); err != nil {
		t.Fatalf("user add over HTTPS with --ca: %v", err)
	}
	if err := run([]string{"--server", https, "--token", tok, "--ca", ca, "user", "add", "bo", "--name", "Bo"}, &out); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"--server", https, "--token", tok, "user", "list"}, &out); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("HTTPS without --ca: %v, want a certificate error", err)
	}
	out.Reset()
	if err := run([]string{"--server", https, "--token", tok, "--ca", ca, "--socket", n.TLSSocketAddr(), "--socket-tls",
		"listen", "--user", "bo", "--device", "phone", "--timeout", "300ms"}, &out); err != nil {
		t.Fatalf("listen over the TLS socket: %v", err)
	}
	if err := run([]string{"--server", "http://10.255.255.1:7080", "--token", tok, "user", "list"}, &out); err == nil || !strings.Contains(err.Error(), "in clear") {
		t.Fatalf("plain HTTP to a remote host: %v, want a refusal", err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
