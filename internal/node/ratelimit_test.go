package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
	"github.com/dingmq/ding/internal/ratelimit"
)

// TestRateLimits runs a node whose limits are small, on a fake clock (no
// token comes back until the test moves it), and checks each limit
// through the real socket and HTTP ports: the one over its limit gets
// RATE_LIMITED (socket) or 429 with Retry-After (HTTP), retryable, saying
// when; the others are unaffected; and ding_rate_limited_total counts
// each refusal.
func TestRateLimits(t *testing.T) {
	d := startDingNode(t, func(c *node.Config) {
		c.Limits = ratelimit.Config{
			UserSubmits:   ratelimit.Rate{N: 1, Burst: 3},         // 1/s, bursts of 3
			UserDings:     ratelimit.Rate{N: 1, Per: time.Minute}, // 1/min
			AdminRequests: ratelimit.Rate{N: 1, Burst: 10},        // 1/s, bursts of 10
			TokenMints:    ratelimit.Rate{N: 2, Per: time.Minute}, // 2/min
			AuthFailures:  ratelimit.Rate{N: 3, Per: time.Minute}, // 3 failures a minute...
			AuthLockout:   time.Minute,                            // ...lock the address out for a minute
		}
	})
	n := d.n
	nodetest.AddUsers(t, n, "cy")
	admin := func(name, role string) string {
		t.Helper()
		code, out, _ := d.api(t, "POST", "/v1/admins", map[string]any{"name": name, "role": role})
		if code != http.StatusCreated {
			t.Fatalf("add admin %s: %d %v", name, code, out)
		}
		return out["token"].(string)
	}
	crm, prov := admin("crm", "sender"), admin("prov", "admin") // the owner: 2 requests
	web := http.DefaultClient
	call := func(hc *http.Client, addr, tok, method, path string, body any) (int, map[string]any, http.Header) {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, "http://"+addr+path, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out, resp.Header
	}
	// limited checks a 429: RATE_LIMITED, retryable, Retry-After.
	limited := func(what string, code int, out map[string]any, h http.Header, retryAfter string) {
		t.Helper()
		e, _ := out["error"].(map[string]any)
		if code != http.StatusTooManyRequests || e["code"] != "RATE_LIMITED" || e["retry"] != true || h.Get("Retry-After") != retryAfter {
			t.Fatalf("%s: %d %v Retry-After %q; want 429 RATE_LIMITED, retry, Retry-After %s", what, code, out, h.Get("Retry-After"), retryAfter)
		}
	}
	ctx := context.Background()

	t.Run("a user over its submits, socket and HTTP", func(t *testing.T) {
		ana, bo := nodetest.Dial(t, n, "ana", "phone", nil), nodetest.Dial(t, n, "bo", "phone", nil)
		for i := range 3 {
			if _, err := ana.Send(ctx, []string{"bo"}, []byte("hi")); err != nil {
				t.Fatalf("ana's send %d of her burst: %v", i+1, err)
			}
		}
		_, err := ana.Send(ctx, []string{"bo"}, []byte("one too many"))
		var pe *client.Error
		if !errors.Is(err, client.ErrRateLimited) || !errors.As(err, &pe) || pe.Code != pb.Code_RATE_LIMITED || !pe.Retry || pe.Fatal || pe.RetryAfter != time.Second {
			t.Fatalf("ana's 4th send: %#v; want RATE_LIMITED, retry, not fatal, retry after 1s", err)
		}
		for i := range 3 { // another user: his own bucket
			if _, err := bo.Send(ctx, []string{"ana"}, []byte("hello")); err != nil {
				t.Fatalf("bo's send %d while ana is limited: %v", i+1, err)
			}
		}
		// The admin API sending as ana takes from the same bucket.
		code, out, h := d.api(t, "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "via the API"})
		limited("POST /v1/messages from ana", code, out, h, "1")
		if code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": "cy", "to": []string{"bo"}, "text": "hi"}); code != http.StatusOK {
			t.Fatalf("POST /v1/messages from cy: %d %v", code, out)
		}
		d.clock.Advance(time.Second) // one token back
		if _, err := ana.Send(ctx, []string{"bo"}, []byte("later")); err != nil {
			t.Fatalf("ana a second later: %v", err)
		}
		if v := metricValue(t, n, `ding_rate_limited_total{what="submit"}`); v != 2 {
			t.Fatalf(`ding_rate_limited_total{what="submit"} = %v, want 2`, v)
		}
	})

	t.Run("a user over its DINGs", func(t *testing.T) {
		d.ding(t, map[string]any{"to": []string{"bo"}, "text": "first"})
		code, out, h := d.api(t, "POST", "/v1/dings", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "second"})
		limited("ana's second DING in a minute", code, out, h, "60")
		if code, out, _ := d.api(t, "POST", "/v1/dings", map[string]any{"from": "cy", "to": []string{"bo"}, "text": "cy's"}); code != http.StatusCreated {
			t.Fatalf("cy's DING: %d %v", code, out)
		}
	})

	t.Run("an admin over its requests", func(t *testing.T) {
		for i := range 10 {
			if code, out, _ := call(web, n.HTTPAddr(), crm, "GET", "/v1/admins/me", nil); code != http.StatusOK {
				t.Fatalf("crm's request %d of its burst: %d %v", i+1, code, out)
			}
		}
		code, out, h := call(web, n.HTTPAddr(), crm, "GET", "/v1/admins/me", nil)
		limited("crm's 11th request", code, out, h, "1")
		// A refused request is counted too: it is crm's, not a route's.
		code, out, h = call(web, n.HTTPAddr(), crm, "POST", "/v1/backup", map[string]any{"dir": "x"})
		limited("crm's request for a route it may not use", code, out, h, "1")
		if code, out, _ := d.api(t, "GET", "/v1/admins/me", nil); code != http.StatusOK {
			t.Fatalf("the owner while crm is limited: %d %v", code, out)
		}
		d.clock.Advance(time.Second)
		if code, out, _ := call(web, n.HTTPAddr(), crm, "GET", "/v1/admins/me", nil); code != http.StatusOK {
			t.Fatalf("crm a second later: %d %v", code, out)
		}
	})

	t.Run("an admin over its token mints", func(t *testing.T) {
		mint := func() (int, map[string]any, http.Header) {
			return call(web, n.HTTPAddr(), prov, "POST", "/v1/tokens", map[string]any{"user": "ana", "device": "tablet"})
		}
		for i := range 2 {
			if code, out, _ := mint(); code != http.StatusOK {
				t.Fatalf("mint %d: %d %v", i+1, code, out)
			}
		}
		code, out, h := mint()
		limited("prov's third mint in a minute", code, out, h, "30")
		if code, out, _ := d.api(t, "POST", "/v1/tokens", map[string]any{"user": "ana", "device": "tablet"}); code != http.StatusOK {
			t.Fatalf("the owner's mint while prov is limited: %d %v", code, out)
		}
	})

	// Last: it locks out 127.0.0.1, every other subtest's address.
	t.Run("failed authentications lock their address out", func(t *testing.T) {
		forged := nodetest.Token(t, n, "ana", "phone")
		forged = forged[:len(forged)-4] + "AAAA"
		dial := func(tok string, from net.IP) (*client.Client, error) {
			dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: from}}
			return client.Dial(ctx, client.Config{Addr: n.SocketAddr(), Token: tok, Device: "phone", Dial: dialer.DialContext})
		}
		loopback, other := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)
		var pe *client.Error
		for i := range 3 {
			if _, err := dial(forged, loopback); !errors.As(err, &pe) || pe.Code != pb.Code_BAD_TOKEN {
				t.Fatalf("forged HELLO %d: %v, want BAD_TOKEN", i+1, err)
			}
		}
		// Now even a good token is refused from that address, unverified...
		good := nodetest.Token(t, n, "ana", "phone")
		_, err := dial(good, loopback)
		if !errors.Is(err, client.ErrRateLimited) || !errors.As(err, &pe) || !pe.Fatal || !pe.Retry || pe.RetryAfter != time.Minute {
			t.Fatalf("a good HELLO from the locked-out address: %#v; want fatal RATE_LIMITED, retry after 1m", err)
		}
		// ...and so is the HTTP port, a good admin token included.
		code, out, h := d.api(t, "GET", "/v1/admins/me", nil)
		limited("the owner from the locked-out address", code, out, h, "60")
		// Another address is unaffected, on both ports.
		c, err := dial(good, other)
		if err != nil {
			t.Fatalf("a good HELLO from 127.0.0.2: %v", err)
		}
		c.Close()
		fromOther := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: other}}).DialContext}}
		if code, out, _ := call(fromOther, n.HTTPAddr(), n.AdminToken(), "GET", "/v1/admins/me", nil); code != http.StatusOK {
			t.Fatalf("the owner from 127.0.0.2: %d %v", code, out)
		}
		// HTTP 401s count as failures too: 127.0.0.2 is locked out after 3.
		for i := range 3 {
			if code, _, _ := call(fromOther, n.HTTPAddr(), "forged", "GET", "/v1/admins/me", nil); code != http.StatusUnauthorized {
				t.Fatalf("forged admin token %d from 127.0.0.2: %d", i+1, code)
			}
		}
		code, out, h = call(fromOther, n.HTTPAddr(), n.AdminToken(), "GET", "/v1/admins/me", nil)
		limited("the owner from 127.0.0.2 after three 401s", code, out, h, "60")
		fromOther.CloseIdleConnections()

		d.clock.Advance(time.Minute) // the lockout ends
		c, err = dial(good, loopback)
		if err != nil {
			t.Fatalf("a good HELLO after the lockout: %v", err)
		}
		c.Close()
		if code, out, _ := d.api(t, "GET", "/v1/admins/me", nil); code != http.StatusOK {
			t.Fatalf("the owner after the lockout: %d %v", code, out)
		}
		if v := metricValue(t, n, `ding_rate_limited_total{what="auth"}`); v != 3 {
			t.Fatalf(`ding_rate_limited_total{what="auth"} = %v, want 3`, v)
		}
		if v := metricValue(t, n, `ding_socket_handshakes_total{result="rate_limited"}`); v != 1 {
			t.Fatalf(`ding_socket_handshakes_total{result="rate_limited"} = %v, want 1`, v)
		}
	})
	for what, want := range map[string]float64{"ding": 1, "admin_request": 2, "token_mint": 1} {
		if v := metricValue(t, n, `ding_rate_limited_total{what="`+what+`"}`); v != want {
			t.Errorf(`ding_rate_limited_total{what=%q} = %v, want %v`, what, v, want)
		}
	}
}
