package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dingmq/ding/channels/push/pushtest"
)

// Mistakes on the command line are exit status 2, --help is 0.
func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		err  bool
	}{
		{"help", []string{"--help"}, false},
		{"no dir", nil, true},
		{"argument", []string{"--dir", t.TempDir(), "x"}, true},
		{"negative fail-every", []string{"--dir", t.TempDir(), "--fail-every", "-1"}, true},
		{"mistyped flag", []string{"--dri", "x"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			err := run(tc.args, &out)
			var ue usageError
			if tc.err != (err != nil) || (err != nil && !errorsAs(err, &ue)) {
				t.Fatalf("err %v, want a usage error: %v", err, tc.err)
			}
		})
	}
}

func errorsAs(err error, ue *usageError) bool {
	u, ok := err.(usageError)
	*ue = u
	return ok
}

// The binary writes the credentials and the CA, prints the dingd flags,
// and stops on SIGTERM with status 0.
func TestRunsAndStops(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "fakepush")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "--dir", dir, "--apns", "127.0.0.1:0", "--fcm", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "fake APNs on https://127.0.0.1:") {
		t.Fatalf("first line %q (%v)", line, err)
	}
	for _, f := range []string{"AuthKey_KEY1234567.p8", "service-account.json", "pushtest-ca.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
}

// A request's line masks the token and names what the phone shows.
func TestDescribe(t *testing.T) {
	tok := "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
	got := describe(pushtest.Request{Provider: pushtest.APNs, Token: tok, Status: 200,
		Body: []byte(`{"aps":{"alert":{"title":"DING from Ana"},"interruption-level":"time-sensitive"},"ding":{"choices":["on it"],"actions":["ding.confirm.1"]}}`)})
	if strings.Contains(got, tok) || !strings.Contains(got, "a1b2…8f90") || !strings.Contains(got, `title="DING from Ana"`) || !strings.Contains(got, "actions=ding.confirm.1") {
		t.Fatalf("describe: %s", got)
	}
}
