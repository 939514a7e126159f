package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/twilio/twiliotest"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// proc is a dingd process under test.
type proc struct {
	cmd              *exec.Cmd
	data, sock, http string
	stderr           *bytes.Buffer
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func dingdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "dingd-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "dingd")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// startDingd starts dingd on data; extra flags may use {http}, replaced by
// the HTTP address.
func startDingd(t *testing.T, data string, extra ...string) *proc {
	t.Helper()
	p := &proc{data: data, sock: nodetest.FreeAddr(t), http: nodetest.FreeAddr(t), stderr: &bytes.Buffer{}}
	args := []string{"--data", data, "--listen", p.sock, "--http", p.http, "--log-level", "warn"}
	for _, a := range extra {
		args = append(args, strings.ReplaceAll(a, "{http}", p.http))
	}
	p.cmd = exec.Command(dingdBinary(t), args...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + p.http + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("dingd did not become ready: %v\n%s", err, p.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *proc) admin(t *testing.T, method, path string, in, out any) int {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(p.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(in)
	req, _ := http.NewRequest(method, "http://"+p.http+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

func (p *proc) token(t *testing.T, user, device string) string {
	t.Helper()
	k, err := auth.LoadOrCreate(p.data)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := k.MintClient(user, device, time.Hour)
	return tok
}

// TestKill9LosesNoAcknowledgedMessage kills dingd with SIGKILL while many
// submits are in flight, restarts it, and checks that every message whose
// durable ack reached a client is in the recipient's stream, gap-free.
func TestKill9LosesNoAcknowledgedMessage(t *testing.T) {
	data := t.TempDir()
	p := startDingd(t, data)
	for _, u := range []string{"ana", "bo"} {
		if code := p.admin(t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil); code != 201 {
			t.Fatalf("create %s: %d", u, code)
		}
	}
	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for w := range 8 {
		c, err := client.Dial(ctx, client.Config{Addr: p.sock, Token: p.token(t, "ana", fmt.Sprintf("d%d", w)), Device: fmt.Sprintf("d%d", w), MaxBackoff: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
				res, err := c.Send(sctx, []string{"bo"}, []byte(fmt.Sprintf("w%d-%d", w, i)))
				scancel()
				if err == nil {
					mu.Lock()
					acked[res.ID] = true
					mu.Unlock()
				}
			}
		}()
	}
	// Let acks accumulate, then kill mid-flight.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 2000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d acks in 20s", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
	cancel()
	wg.Wait()
	mu.Lock()
	want := len(acked)
	mu.Unlock()

	p2 := startDingd(t, data)
	bo, err := client.Dial(context.Background(), client.Config{Addr: p2.sock, Token: p2.token(t, "bo", "phone"), Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	head := bo.Welcome().Head
	if head < uint64(want) {
		t.Fatalf("bo's stream has %d entries after the crash; %d were acknowledged", head, want)
	}
	found := 0
	for seq := uint64(1); seq <= head; seq++ {
		select {
		case e, ok := <-bo.Entries():
			if !ok {
				t.Fatalf("client stopped at seq %d: %v", seq, bo.Err())
			}
			if e.Seq != seq {
				t.Fatalf("stream gap: got seq %d, want %d", e.Seq, seq)
			}
			if acked[e.Message.ID] {
				found++
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("stalled at seq %d of %d", seq, head)
		}
	}
	if found != want {
		t.Fatalf("%d of %d acknowledged messages survived SIGKILL", found, want)
	}
	t.Logf("%d acknowledged before SIGKILL, all found; stream head %d (the rest were in flight, unacknowledged)", want, head)
}

func TestSIGTERMDrainsAndExitsCleanly(t *testing.T) {
	data := t.TempDir()
	p := startDingd(t, data)
	p.admin(t, "POST", "/v1/users", map[string]string{"id": "bo", "name": "bo"}, nil)
	c, err := client.Dial(context.Background(), client.Config{Addr: p.sock, Token: p.token(t, "bo", "phone"), Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("dingd exited with %v\n%s", err, p.stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("dingd did not exit within 20s of SIGTERM")
	}
	// The data dir reopens (the store was closed cleanly).
	p2 := startDingd(t, data)
	var u map[string]any
	if code := p2.admin(t, "GET", "/v1/users/bo", nil, &u); code != 200 || u["id"] != "bo" {
		t.Fatalf("after restart: %d %v", code, u)
	}
}

// pendingSteps reads ding_escalation_pending_steps from /metrics.
func (p *proc) pendingSteps(t *testing.T) int {
	t.Helper()
	resp, err := http.Get("http://" + p.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ding_escalation_pending_steps "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("pending steps %q", v)
			}
			return n
		}
	}
	t.Fatal("no ding_escalation_pending_steps in /metrics")
	return 0
}

// TestKill9EscalationSendsEachStepOnceOrTwice kills dingd with SIGKILL
// while escalation SMS are being sent through the real twilio-go client to
// a fake Twilio, restarts it, and checks that every step was sent at least
// once and at most twice (contract point 4).
func TestKill9EscalationSendsEachStepOnceOrTwice(t *testing.T) {
	const sid, tok = "AC00000000000000000000000000000001", "secret0token0for0tests"
	fake := twiliotest.NewServer(sid, tok)
	defer fake.Close()
	t.Setenv("TWILIO_AUTH_TOKEN", tok)
	flags := []string{"--twilio-account-sid", sid, "--twilio-from", "+15005550006",
		"--public-url", "http://{http}", "--twilio-api-url", fake.URL()}
	data := t.TempDir()
	p := startDingd(t, data, flags...)
	if code := p.admin(t, "POST", "/v1/users", map[string]string{"id": "ana", "name": "Ana"}, nil); code != 201 {
		t.Fatalf("create ana: %d", code)
	}
	const dings, per = 3, 300
	var numbers []string
	for d := range dings {
		var to []string
		for i := range per {
			to = append(to, fmt.Sprintf("+1555%03d%04d", d, i))
		}
		numbers = append(numbers, to...)
		var res map[string]any
		if code := p.admin(t, "POST", "/v1/dings", map[string]any{"from": "ana", "to": to, "text": "evacuate", "policy": "sms@1s"}, &res); code != 201 {
			t.Fatalf("ding: %d %v", code, res)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := fake.WaitFor(ctx, "sms", 150); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
	before := fake.Count("sms")

	p2 := startDingd(t, data, flags...)
	if _, err := fake.WaitFor(ctx, "sms", len(numbers)); err != nil {
		t.Fatalf("after restart: %v (%d sent before the kill)", err, before)
	}
	nodetest.WaitFor(t, "no pending steps", 20*time.Second, func() bool { return p2.pendingSteps(t) == 0 })
	count := map[string]int{}
	for _, r := range fake.Requests() {
		count[r.To]++
	}
	dups := 0
	for _, n := range numbers {
		switch c := count[n]; {
		case c == 0:
			t.Fatalf("%s got no SMS", n)
		case c > 2:
			t.Fatalf("%s got %d SMS; a crash may cause at most one duplicate", n, c)
		case c == 2:
			dups++
		}
	}
	t.Logf("%d of %d SMS sent before SIGKILL; %d duplicates after the restart", before, len(numbers), dups)
}
