package main

import (
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestNamedAdminsSurviveACrash, through the real binaries: dingctl adds
// named admins to a dingd run with --metrics-auth; each token works within
// its role (/metrics needs the operator's); a revocation, once dingctl
// has its answer, holds after kill -9 and a restart, like the admins
// themselves (they are directory records, fsync'd before the answer).
func TestNamedAdminsSurviveACrash(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "dingctl")
	if out, err := exec.Command("go", "build", "-o", bin, "../dingctl").CombinedOutput(); err != nil {
		t.Fatalf("go build dingctl: %v\n%s", err, out)
	}
	data := t.TempDir()
	p := startDingd(t, data, "--metrics-auth")
	// ctl runs dingctl with tok, or with --data (the first owner's token).
	ctl := func(tok string, args ...string) (string, error) {
		t.Helper()
		full := []string{"--server", "http://" + p.http, "--data", data}
		if tok != "" {
			full = []string{"--server", "http://" + p.http, "--token", tok}
		}
		cmd := exec.Command(bin, append(full, args...)...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		if err := cmd.Run(); err != nil {
			return o.String(), &cmdError{err, strings.TrimSpace(e.String())}
		}
		return o.String(), nil
	}
	mustCtl := func(tok string, args ...string) string {
		t.Helper()
		out, err := ctl(tok, args...)
		if err != nil {
			t.Fatalf("dingctl %v: %v", args, err)
		}
		return strings.TrimSpace(out)
	}
	metrics := func(tok string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+p.http+"/metrics", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}

	prom := mustCtl("", "admin", "add", "prometheus", "--role", "operator")
	crm := mustCtl("", "admin", "add", "crm", "--role", "sender", "--expires", "30d")
	if code := metrics(""); code != 401 {
		t.Fatalf("/metrics without a token under --metrics-auth: %d", code)
	}
	if code := metrics(prom); code != 200 {
		t.Fatalf("/metrics with the operator's token: %d", code)
	}
	if code := metrics(crm); code != 403 {
		t.Fatalf("/metrics with the sender's token: %d", code)
	}
	mustCtl("", "user", "add", "ana", "--name", "Ana")
	mustCtl(crm, "send", "--from", "ana", "--to", "ana", "hello")
	if _, err := ctl(crm, "user", "add", "bo", "--name", "Bo"); err == nil || !strings.Contains(err.Error(), `FORBIDDEN: admin "crm" (role sender) lacks the permission "users.write"`) {
		t.Fatalf("the sender adds a user: %v", err)
	}

	if out := mustCtl("", "admin", "revoke", "crm"); !strings.Contains(out, "revoked admin crm") {
		t.Fatalf("revoke: %q", out)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	p = startDingd(t, data, "--metrics-auth")
	if _, err := ctl(crm, "send", "--from", "ana", "--to", "ana", "again"); err == nil || !strings.Contains(err.Error(), "UNAUTHENTICATED: admin token revoked") {
		t.Fatalf("the revoked token after kill -9 and a restart: %v", err)
	}
	if code := metrics(prom); code != 200 {
		t.Fatalf("/metrics with the operator's token after the restart: %d", code)
	}
	list := mustCtl("", "admin", "list")
	for _, want := range []string{`"name": "crm"`, `"status": "revoked"`, `"name": "prometheus"`, `"name": "owner"`} {
		if !strings.Contains(list, want) {
			t.Fatalf("admin list after the restart lacks %s:\n%s", want, list)
		}
	}
	if strings.Contains(list, prom) || strings.Contains(p.stderr.String(), prom) || strings.Contains(p.stderr.String(), crm) {
		t.Fatal("a token was listed or logged")
	}
}

type cmdError struct {
	err    error
	stderr string
}

func (e *cmdError) Error() string { return e.err.Error() + ": " + e.stderr }
