package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// TestRateLimitsThroughTheBinary: dingd's rate-limit settings reach the
// limits (the limits themselves are internal/node's TestRateLimits, on a
// fake clock). Real time here, with short windows, and polling for the
// end of a wait rather than sleeping through it: an admin past its burst
// gets 429 with Retry-After until its bucket refills; a user past hers
// gets RATE_LIMITED on the socket, typed in the Go client; an address
// with two failed HELLOs is refused, a good token too, until its lockout
// of a second ends.
func TestRateLimitsThroughTheBinary(t *testing.T) {
	p := startDingd(t, t.TempDir(), "--rate-admin-requests", "1", "--rate-admin-requests-burst", "4",
		"--rate-user-submits", "1", "--rate-user-submits-burst", "2", "--auth-failures-per-source", "2", "--auth-lockout", "1s")
	for _, u := range []string{"ana", "bo"} { // the owner: 2 of 4
		if code := p.admin(t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil); code != 201 {
			t.Fatalf("create %s: %d", u, code)
		}
	}
	tok, err := os.ReadFile(filepath.Join(p.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	me := func() (int, string) {
		req, _ := http.NewRequest("GET", "http://"+p.http+"/v1/admins/me", nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	limited := false
	for range 3 { // 2 left, and a refill of up to one meanwhile
		if code, after := me(); code == http.StatusTooManyRequests {
			if after != "1" {
				t.Fatalf("429 with Retry-After %q, want 1", after)
			}
			limited = true
			break
		}
	}
	if !limited {
		t.Fatal("the owner was never limited past its burst of 4 at 1/s")
	}
	nodetest.WaitFor(t, "the owner's bucket to refill", 5*time.Second, func() bool { code, _ := me(); return code == http.StatusOK })

	ctx := context.Background()
	ana := dialAs(t, p, p.token(t, "ana", "phone"))
	defer ana.Close()
	var pe *client.Error
	for i := 0; ; i++ {
		_, err := ana.Send(ctx, []string{"bo"}, []byte("hi"))
		if err == nil && i < 10 {
			continue
		}
		if !errors.Is(err, client.ErrRateLimited) || !errors.As(err, &pe) || !pe.Retry || pe.RetryAfter <= 0 || pe.RetryAfter > time.Second {
			t.Fatalf("send %d: %v; want RATE_LIMITED, retryable, within a second", i+1, err)
		}
		break
	}

	good := p.token(t, "bo", "laptop")
	for i := range 2 {
		if _, err := client.Dial(ctx, client.Config{Addr: p.sock, Token: good + "x", Device: "laptop"}); !errors.As(err, &pe) || pe.Code != pb.Code_BAD_TOKEN {
			t.Fatalf("forged HELLO %d: %v, want BAD_TOKEN", i+1, err)
		}
	}
	if _, err := client.Dial(ctx, client.Config{Addr: p.sock, Token: good, Device: "laptop"}); !errors.Is(err, client.ErrRateLimited) {
		t.Fatalf("a good HELLO from the locked-out address: %v, want RATE_LIMITED", err)
	}
	var bo *client.Client
	nodetest.WaitFor(t, "the lockout to end", 10*time.Second, func() bool {
		bo, err = client.Dial(ctx, client.Config{Addr: p.sock, Token: good, Device: "laptop"})
		if err != nil && !errors.Is(err, client.ErrRateLimited) {
			t.Fatalf("a good HELLO during the lockout: %v", err)
		}
		return err == nil
	})
	bo.Close()
}

func dialAs(t *testing.T, p *proc, tok string) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), client.Config{Addr: p.sock, Token: tok, Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
