package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// listen --confirm N on a DING that is already confirmed says on stderr
// that the answer was ignored, and with what it was confirmed (issue 12:
// it printed nothing about it). Through the real binary, for its stderr.
func TestListenConfirmSaysWhenTheAnswerIsIgnored(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "dingctl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	n := nodetest.Start(t, node.Config{})
	ctl(t, n, "user", "add", "ana", "--name", "Ana")
	ctl(t, n, "user", "add", "bo", "--name", "Bo")
	out, err := ctl(t, n, "ding", "--from", "ana", "--to", "bo", "--policy", "inapp", "--choices", "attend,decline", "db", "down")
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(out)
	listen := func(device, answer string) (stdout, stderr string) {
		t.Helper()
		cmd := exec.Command(bin, "--data", n.DataDir(), "--server", "http://"+n.HTTPAddr(), "--socket", n.SocketAddr(),
			"listen", "--user", "bo", "--device", device, "--confirm", answer, "--messages", "--count", "1", "--timeout", "5s")
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		if err := cmd.Run(); err != nil {
			t.Fatalf("listen --confirm %s on %s: %v\n%s", answer, device, err, e.String())
		}
		return o.String(), e.String()
	}

	stdout, stderr := listen("phone", "1")
	if lines := jsonLines(t, stdout); len(lines) != 1 || lines[0]["id"] != id || stderr != "" {
		t.Fatalf("first confirmation: stdout %q, stderr %q; want the DING's line and nothing on stderr", stdout, stderr)
	}
	stdout, stderr = listen("laptop", "2")
	if lines := jsonLines(t, stdout); len(lines) != 1 || lines[0]["id"] != id {
		t.Fatalf("second confirmation: stdout %q, want the DING's line only", stdout)
	}
	for _, want := range []string{"dingctl: confirm " + id + ": ignored, already confirmed with answer 1 (attend) in the app at ", "--confirm 2 changed nothing"} {
		if !strings.Contains(stderr, want) || strings.Count(stderr, "\n") != 1 {
			t.Fatalf("second confirmation's stderr %q, want one line with %q", stderr, want)
		}
	}
	if out, err := ctl(t, n, "ding", "status", id); err != nil || !strings.Contains(out, `"choice": "attend"`) {
		t.Fatalf("status %s (%v): want attend, the first answer", out, err)
	}
}
