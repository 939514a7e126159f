package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/email/emailtest"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// TestEmailSettings: the e-mail settings need each other and say which
// is missing; smtp-tls none is refused off loopback; the password is read
// from its file (first line) and never printed.
func TestEmailSettings(t *testing.T) {
	base := []string{"--public-url", "https://ding.example.com"}
	for _, tc := range []struct {
		name string
		args []string
		want string // in the error; "" for none
	}{
		{"none", nil, ""},
		{"complete", []string{"--smtp-addr", "smtp.example.com:587", "--email-from", "Ding <ding@example.com>"}, ""},
		{"no from", []string{"--smtp-addr", "smtp.example.com:587"}, "smtp-addr (from flag) needs email-from"},
		{"from without server", []string{"--email-from", "ding@example.com"}, "email-from (from flag) needs smtp-addr"},
		{"plain text off loopback", []string{"--smtp-addr", "smtp.example.com:25", "--smtp-tls", "none", "--email-from", "ding@example.com"}, `allowed only to a loopback server`},
		{"bad mode", []string{"--smtp-addr", "smtp.example.com:25", "--smtp-tls", "ssl", "--email-from", "ding@example.com"}, "TLS must be starttls, tls or none"},
		{"bad from", []string{"--smtp-addr", "smtp.example.com:25", "--email-from", "ding"}, "From must be an address"},
		{"password without user", []string{"--smtp-addr", "smtp.example.com:25", "--email-from", "ding@example.com", "--smtp-password-file", "/x"}, "needs smtp-username"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(append(append([]string{}, base...), tc.args...), fakeEnv(nil))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("load: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("load: %v; want an error with %q", err, tc.want)
			}
		})
	}
	if _, err := load([]string{"--smtp-addr", "smtp.example.com:587", "--email-from", "ding@example.com"}, fakeEnv(nil)); err == nil || !strings.Contains(err.Error(), "needs public-url") {
		t.Fatalf("without public-url: %v", err)
	}

	pwFile := tempFile(t, "smtp.password", "pa55word\nignored\n")
	c, err := load(append(base, "--smtp-addr", "127.0.0.1:2525", "--smtp-tls", "none", "--email-from", "ding@example.com",
		"--smtp-username", "ding", "--smtp-password-file", pwFile), fakeEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	pw, err := readPassword(c.SMTPPasswordFile)
	if err != nil || pw != "pa55word" {
		t.Fatalf("password %q, %v", pw, err)
	}
	var out bytes.Buffer
	if err := printConfig(&out, c); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "pa55word") || !strings.Contains(out.String(), "smtp-password-file = ") {
		t.Fatalf("--print-config:\n%s", out.String())
	}
	if _, err := readPassword(tempFile(t, "empty", "\n")); err == nil || strings.Contains(err.Error(), "pa55word") {
		t.Fatalf("empty password file: %v", err)
	}
}

// TestKill9EmailStepsSendEachOnceOrTwice is TestKill9EscalationSends...
// for e-mail: dingd, sending e-mail steps through go-mail to a fake SMTP
// server on loopback, is killed with SIGKILL mid-way and restarted; every
// recipient gets the mail at least once and at most twice (contract
// point 4).
func TestKill9EmailStepsSendEachOnceOrTwice(t *testing.T) {
	srv, err := emailtest.Start(emailtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	flags := []string{"--smtp-addr", srv.Addr(), "--smtp-tls", "none", "--email-from", "Ding <ding@example.com>",
		"--public-url", "http://{http}"}
	data := t.TempDir()
	p := newProc(t, data)
	p.start(t, p.args(flags...)...)
	const dings, per = 3, 100
	users := []map[string]string{{"id": "ana", "name": "Ana"}}
	var addrs []string
	for i := range dings * per {
		a := fmt.Sprintf("u%03d@example.com", i)
		addrs = append(addrs, a)
		users = append(users, map[string]string{"id": fmt.Sprintf("u%03d", i), "name": "U", "email": a})
	}
	if code := p.admin(t, "POST", "/v1/users/batch", map[string]any{"users": users}, nil); code != 200 && code != 201 {
		t.Fatalf("create users: %d", code)
	}
	for d := range dings {
		var to []string
		for i := range per {
			to = append(to, fmt.Sprintf("u%03d", d*per+i))
		}
		var res map[string]any
		if code := p.admin(t, "POST", "/v1/dings", map[string]any{"from": "ana", "to": to, "text": "evacuate", "policy": "email@1s"}, &res); code != 201 {
			t.Fatalf("ding: %d %v", code, res)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := srv.Wait(ctx, 30); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	before := len(srv.Messages())
	if before >= len(addrs) {
		t.Fatal("every e-mail went out before the kill: the restart path was not exercised")
	}

	p2 := newProc(t, data)
	p2.start(t, p2.args(flags...)...)
	count := map[string]int{}
	if _, err := srv.WaitFunc(ctx, func(ms []emailtest.Message) bool {
		clear(count)
		for _, m := range ms {
			count[m.To[0]]++
		}
		return len(count) == len(addrs)
	}); err != nil {
		t.Fatalf("after restart: %v (%d sent before the kill, %d recipients reached)", err, before, len(count))
	}
	nodetest.WaitFor(t, "no pending steps", 20*time.Second, func() bool { return p2.pendingSteps(t) == 0 })
	clear(count)
	for _, m := range srv.Messages() {
		count[m.To[0]]++
	}
	dups := 0
	for _, a := range addrs {
		switch c := count[a]; {
		case c == 0:
			t.Fatalf("%s got no mail", a)
		case c > 2:
			t.Fatalf("%s got %d mails; a crash may cause at most one duplicate", a, c)
		case c == 2:
			dups++
		}
	}
	t.Logf("%d of %d e-mails sent before SIGKILL; %d duplicates after the restart", before, len(addrs), dups)
}
