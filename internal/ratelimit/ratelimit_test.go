package ratelimit_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/fakeclock"
	"github.com/dingmq/ding/internal/ratelimit"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestTake(t *testing.T) {
	clock := fakeclock.New(t0)
	k := ratelimit.NewKeyed(ratelimit.Rate{N: 10, Burst: 3}, 0, clock.Now) // 10/s, bursts of 3
	for i := range 3 {
		if ok, _ := k.Take("ana"); !ok {
			t.Fatalf("take %d of the burst refused", i+1)
		}
	}
	ok, wait := k.Take("ana")
	if ok || wait != 100*time.Millisecond {
		t.Fatalf("take past the burst = %v, wait %v; want refused, 100ms", ok, wait)
	}
	if ok, _ := k.Take("bo"); !ok {
		t.Fatal("another key was refused: the buckets are not per key")
	}
	clock.Advance(50 * time.Millisecond)
	if ok, wait := k.Take("ana"); ok || wait != 50*time.Millisecond {
		t.Fatalf("half a token later = %v, wait %v; want refused, 50ms", ok, wait)
	}
	clock.Advance(50 * time.Millisecond)
	if ok, _ := k.Take("ana"); !ok {
		t.Fatal("a token later: refused")
	}
	if ok, _ := k.Take("ana"); ok {
		t.Fatal("the refill gave more than one token in 100ms")
	}
	clock.Advance(time.Hour)
	for i := range 3 {
		if ok, _ := k.Take("ana"); !ok {
			t.Fatalf("after an hour: take %d refused; the bucket holds only Burst", i+1)
		}
	}
	if ok, _ := k.Take("ana"); ok {
		t.Fatal("after an hour the bucket held more than Burst")
	}
}

func TestPerMinute(t *testing.T) {
	clock := fakeclock.New(t0)
	k := ratelimit.NewKeyed(ratelimit.Rate{N: 2, Per: time.Minute}, 0, clock.Now) // burst: N
	k.Take("ana")
	k.Take("ana")
	if ok, wait := k.Take("ana"); ok || wait != 30*time.Second {
		t.Fatalf("third in a minute = %v, wait %v; want refused, 30s", ok, wait)
	}
}

func TestOffLimitsNothing(t *testing.T) {
	var k *ratelimit.Keyed = ratelimit.NewKeyed(ratelimit.Rate{}, time.Minute, nil)
	if k != nil {
		t.Fatal("a zero Rate made a limiter")
	}
	for range 1000 {
		if ok, _ := k.Take("ana"); !ok {
			t.Fatal("a nil Keyed refused")
		}
		k.Fail("1.2.3.4")
	}
	if locked, _ := k.Locked("1.2.3.4"); locked {
		t.Fatal("a nil Keyed locked out")
	}
	var l *ratelimit.Limits
	if err := l.Check(ratelimit.Submit, "ana"); err != nil {
		t.Fatal(err)
	}
}

// TestLockout: the failure that empties the bucket locks the key out
// for the lockout, whatever the refill; others are unaffected; after it,
// the key has its burst again.
func TestLockout(t *testing.T) {
	clock := fakeclock.New(t0)
	k := ratelimit.NewKeyed(ratelimit.Rate{N: 3, Per: time.Minute}, 5*time.Minute, clock.Now)
	for i := range 2 {
		if k.Fail("10.0.0.1") {
			t.Fatalf("failure %d of 3 locked out", i+1)
		}
		if locked, _ := k.Locked("10.0.0.1"); locked {
			t.Fatalf("locked after failure %d of 3", i+1)
		}
	}
	if !k.Fail("10.0.0.1") {
		t.Fatal("the third failure did not lock out")
	}
	if locked, wait := k.Locked("10.0.0.1"); !locked || wait != 5*time.Minute {
		t.Fatalf("Locked = %v, %v; want true, 5m", locked, wait)
	}
	if locked, _ := k.Locked("10.0.0.2"); locked {
		t.Fatal("another address is locked out")
	}
	clock.Advance(5*time.Minute - time.Millisecond)
	if locked, wait := k.Locked("10.0.0.1"); !locked || wait != time.Millisecond {
		t.Fatalf("just before the end: Locked = %v, %v", locked, wait)
	}
	clock.Advance(time.Millisecond)
	if locked, _ := k.Locked("10.0.0.1"); locked {
		t.Fatal("still locked after the lockout")
	}
	for i := range 2 {
		if k.Fail("10.0.0.1") {
			t.Fatalf("after the lockout, failure %d locked out again: the bucket did not refill", i+1)
		}
	}
}

// TestIdleKeysAreDropped: memory holds the keys active lately, not every
// key ever seen.
func TestIdleKeysAreDropped(t *testing.T) {
	clock := fakeclock.New(t0)
	k := ratelimit.NewKeyed(ratelimit.Rate{N: 1, Burst: 2}, 0, clock.Now) // full again 2s after a take
	for i := range 100_000 {
		k.Take(fmt.Sprint("u", i))
		if i%1000 == 999 {
			clock.Advance(2 * time.Second)
		}
	}
	if n := k.Len(); n > 64*2*1000 || n > 20_000 {
		t.Fatalf("%d keys held after 100,000 keys each idle within 2s: idle keys are not dropped", n)
	}
	// A key that is not full again is kept: its limit holds.
	k.Take("ana")
	k.Take("ana")
	for i := range 10_000 {
		k.Take(fmt.Sprint("v", i))
	}
	if ok, _ := k.Take("ana"); ok {
		t.Fatal("a sweep dropped a key that was not idle")
	}
}

func TestLimits(t *testing.T) {
	clock := fakeclock.New(t0)
	reg := prometheus.NewRegistry()
	l, err := ratelimit.New(ratelimit.Config{
		UserSubmits: ratelimit.Rate{N: 1, Burst: 1}, AuthFailures: ratelimit.Rate{N: 1, Per: time.Minute},
		AuthLockout: 30 * time.Second, Now: clock.Now, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Check(ratelimit.Submit, "ana"); err != nil {
		t.Fatal(err)
	}
	err = l.Check(ratelimit.Submit, "ana")
	var rl *ratelimit.Error
	if !errors.As(err, &rl) || rl.RetryAfter != time.Second || !errors.Is(err, ratelimit.ErrLimited) || engine.CodeOf(err) != engine.CodeRateLimited {
		t.Fatalf("second submit: %v", err)
	}
	if !strings.Contains(rl.Detail(), "retry in 1s") {
		t.Fatalf("detail %q", rl.Detail())
	}
	if err := l.Check(ratelimit.Ding, "ana"); err != nil || l.On(ratelimit.Ding) {
		t.Fatalf("an unset limit limits: %v", err)
	}
	src := ratelimit.Source("192.0.2.7:4711")
	l.AuthFailed(src)
	if ok, wait := l.Allow(ratelimit.Auth, src); ok || wait != 30*time.Second {
		t.Fatalf("after its failure, the address: %v %v", ok, wait)
	}
	for what, want := range map[string]float64{"submit": 1, "auth": 1, "ding": 0, "admin_request": 0, "token_mint": 0} {
		var m dto.Metric
		if err := l.Counter(what).Write(&m); err != nil {
			t.Fatal(err)
		}
		if got := m.GetCounter().GetValue(); got != want {
			t.Errorf("ding_rate_limited_total{what=%q} = %v, want %v", what, got, want)
		}
	}
}

func TestSource(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:4711":                 "192.0.2.7",
		"192.0.2.7":                      "192.0.2.7",
		"[::ffff:192.0.2.7]:80":          "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:7070":    "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1%eth0]:70": "2001:db8:1:2::/64",
		"not an address":                 "not an address",
	} {
		if got := ratelimit.Source(in); got != want {
			t.Errorf("Source(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkTake(b *testing.B) {
	k := ratelimit.NewKeyed(ratelimit.Rate{N: 1 << 30}, 0, nil)
	users := make([]string, 1000)
	for i := range users {
		users[i] = fmt.Sprint("u", i)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			k.Take(users[i%len(users)])
			i++
		}
	})
}
