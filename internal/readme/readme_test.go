package readme

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The README's tour is run as one bash script, the way a reader follows
// it in one shell, with these conventions:
//
//   - `go run ./cmd/NAME ARGS` runs the binary built once for the test,
//     and `make build` leaves them in bin/; dingctl (either way) waits
//     until dingd answers /readyz first, as a reader waits for dingd's
//     start line.
//   - A line whose comment starts "# error: CODE" must fail, with CODE in
//     its one-line error.
//   - `<!-- readme-test: stop-server -->` before a block stops the dingd
//     the reader started, as the text before it asks them to (Ctrl-C);
//     `restart-server` stops it and starts it again.
//   - Before the first block, dingd is started as the README's first
//     command says (`go run ./cmd/dingd`, in "another terminal").
//   - `curl` is the real one (and `jq` too: both must be installed;
//     `make test` installs them), which also waits until dingd answers
//     /readyz first, as dingctl does.
//
// Every command must succeed (set -e, pipefail), in the ports' defaults
// (7070, 7080, 7090 for the fake Twilio, 2525 for the fake SMTP server):
// the test fails if they are taken.

// tourStart and tourEnd bound the part of README.md that is run.
const tourStart, tourEnd = "## A two-minute tour", "## What it guarantees"

var (
	directive = regexp.MustCompile(`^<!-- readme-test: ([a-z-]+) -->$`)
	errorLine = regexp.MustCompile(`^(.*\S)\s+# error: ([A-Z_]+)\s*$`)
)

// tourScript turns the README's tour into a bash script body.
func tourScript(readme string) (string, int, error) {
	i, j := strings.Index(readme, tourStart), strings.Index(readme, tourEnd)
	if i < 0 || j < i {
		return "", 0, fmt.Errorf("README.md has no %q section before %q", tourStart, tourEnd)
	}
	var b strings.Builder
	blocks := 0
	in := false
	sc := bufio.NewScanner(strings.NewReader(readme[i:j]))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && line == "```sh":
			in = true
			blocks++
			fmt.Fprintf(&b, "\n# --- README block %d\n", blocks)
		case in && line == "```":
			in = false
		case in:
			if m := errorLine.FindStringSubmatch(line); m != nil {
				fmt.Fprintf(&b, "expect_error %s <<'READMECMD'\n%s\nREADMECMD\n", m[2], m[1])
				continue
			}
			b.WriteString(line + "\n")
		case directive.MatchString(line):
			switch d := directive.FindStringSubmatch(line)[1]; d {
			case "stop-server":
				b.WriteString("stop_server\n")
			case "restart-server":
				b.WriteString("stop_server\ngo run ./cmd/dingd &\n")
			default:
				return "", 0, fmt.Errorf("README.md: unknown directive %q", d)
			}
		}
	}
	if in {
		return "", 0, fmt.Errorf("README.md: a ```sh block of the tour is not closed")
	}
	return b.String(), blocks, nil
}

const prelude = `set -euo pipefail
shopt -s expand_aliases

# go run ./cmd/NAME ARGS: the binary built for the test. dingd (run in
# the background) writes its PID to dingd.pid and its output to dingd.log.
go() {
	if [ "$1" != run ]; then echo "readme: only go run is provided" >&2; return 2; fi
	local name=${2#./cmd/}; shift 2
	case $name in
	dingd)
		if [ "$BASHPID" = "$$" ]; then echo "readme: start dingd in the background (&)" >&2; return 2; fi
		echo "$BASHPID" > dingd.pid
		exec "$BIN/dingd" "$@" >>dingd.log 2>&1 ;;
	dingctl)
		wait_ready
		"$BIN/dingctl" "$@" ;;
	*)
		if [ "$BASHPID" = "$$" ]; then "$BIN/$name" "$@"; return; fi
		exec "$BIN/$name" "$@" >>"$name.log" 2>&1 ;;
	esac
}

# curl: the real one, once dingd answers /readyz (a reader waits for its
# start line).
curl() {
	wait_ready
	command curl "$@"
}

# make build: the binaries are built once for the test, from this
# checkout, into bin/ (whose dingctl waits for dingd first, as go run's).
make() {
	if [ "$*" != build ]; then echo "readme: only make build is provided" >&2; return 2; fi
}

# wait_ready: until dingd's /readyz answers 200 (a reader waits for its
# start line), at most a minute.
wait_ready() {
	local i
	for i in $(seq 600); do
		if readyz; then return 0; fi
		sleep 0.1
	done
	echo "readme: dingd did not become ready; its log:" >&2; tail -20 dingd.log >&2; return 1
}

# readyz: GET /readyz answers 200 (bash's /dev/tcp: no curl needed).
readyz() {
	local status
	{ exec 3<>/dev/tcp/127.0.0.1/7080; } 2>/dev/null || return 1
	printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
	read -r _ status _ <&3 || status=
	exec 3>&-
	[ "$status" = 200 ]
}

# stop_server: what Ctrl-C does to the reader's dingd; returns once it
# has exited.
stop_server() {
	local pid; pid=$(cat dingd.pid)
	kill -INT "$pid" 2>/dev/null || true # the README may have stopped it
	wait "$pid" || true
	rm dingd.pid
}

# expect_error CODE <<<COMMAND: the command must fail with CODE in its
# error.
expect_error() {
	local cmd err; cmd=$(cat)
	if err=$(eval "$cmd" 2>&1 >/dev/null); then
		echo "readme: '$cmd' succeeded; the README says it fails with $1" >&2; return 1
	fi
	case $err in
	*"$1"*) echo "$err" ;;
	*) echo "readme: '$cmd' failed with '$err'; the README says $1" >&2; return 1 ;;
	esac
}

# Each command of the README, as it runs (not the helpers' own).
trap 'echo "\$ $BASH_COMMAND" >&2' DEBUG
go run ./cmd/dingd &
`

// TestReadmeTour runs the README's tour, top to bottom, in one shell.
func TestReadmeTour(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	body, blocks, err := tourScript(string(raw))
	if err != nil {
		t.Fatal(err)
	}
	if blocks < 4 {
		t.Fatalf("found %d sh blocks in the tour; want the tour, DINGs, the org and secret chats", blocks)
	}
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the README's tour needs %s (make test installs it): %v", tool, err)
		}
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/dingd", "./cmd/dingctl", "./cmd/faketwilio", "./cmd/fakesmtp")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	work := t.TempDir()
	if err := os.Symlink(filepath.Join(root, "examples"), filepath.Join(work, "examples")); err != nil {
		t.Fatal(err)
	}
	// bin/ as make build leaves it; its dingctl first waits for dingd's
	// /readyz (a reader waits for dingd's start line), then is the real one.
	if err := os.Mkdir(filepath.Join(work, "bin"), 0o700); err != nil {
		t.Fatal(err)
	}
	wrapper := "#!/usr/bin/env bash\nsource \"$READMEFUNCS\"\nwait_ready\nexec \"$BIN/dingctl\" \"$@\"\n"
	if err := os.WriteFile(filepath.Join(work, "bin", "dingctl"), []byte(wrapper), 0o700); err != nil {
		t.Fatal(err)
	}
	funcs := prelude[strings.Index(prelude, "# wait_ready:"):strings.Index(prelude, "# stop_server:")]
	if err := os.WriteFile(filepath.Join(work, "readmefuncs.sh"), []byte(funcs), 0o600); err != nil {
		t.Fatal(err)
	}
	script := prelude + body + "\ntrap - DEBUG\nstop_server\necho 'readme: the tour ran to its end'\n"
	if err := os.WriteFile(filepath.Join(work, "tour.sh"), []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "tour.sh")
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "BIN="+bin, "READMEFUNCS="+filepath.Join(work, "readmefuncs.sh"), "DING_TOKEN=", "DING_SERVER=", "DING_SOCKET=")
	// Its own process group, so that everything the tour started in the
	// background ends with it.
	cmd.SysProcAttr = processGroup()
	cmd.Cancel = func() error { return killGroup(cmd) }
	t.Cleanup(func() { killGroup(cmd) })
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "readme: the tour ran to its end") {
		log, _ := os.ReadFile(filepath.Join(work, "dingd.log"))
		t.Fatalf("the README's tour failed (%v):\n%s\n--- dingd.log (tail):\n%s", err, out, tail(string(log), 40))
	}
	t.Logf("%d blocks ran:\n%s", blocks, out)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestTourScript: the conventions above turn into the script's helpers.
func TestTourScript(t *testing.T) {
	md := "intro\n```sh\nnot run\n```\n" + tourStart + "\n```sh\na\nb x   # error: NOT_FOUND\n```\ntext\n" +
		"<!-- readme-test: restart-server -->\n```sh\nc\n```\n```go\nnot sh\n```\n" + tourEnd + "\n```sh\nnot run\n```\n"
	got, blocks, err := tourScript(md)
	if err != nil {
		t.Fatal(err)
	}
	want := "\n# --- README block 1\na\nexpect_error NOT_FOUND <<'READMECMD'\nb x\nREADMECMD\n" +
		"stop_server\ngo run ./cmd/dingd &\n\n# --- README block 2\nc\n"
	if got != want || blocks != 2 {
		t.Fatalf("script (%d blocks):\n%s\nwant:\n%s", blocks, got, want)
	}
	if _, _, err := tourScript(tourStart + "\n<!-- readme-test: reboot -->\n" + tourEnd); err == nil {
		t.Fatal("an unknown directive was accepted")
	}
}
