package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
)

// coordOwners answers the lease holder's published address, keeps it for
// its ttl, follows a move after it (or at once after Forget), and says
// when a partition has no owner or its owner no address.
func TestCoordOwners(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	c := cluster.NewMemCoord(clock)
	o := newCoordOwners(c, time.Second)
	o.now = clock
	if _, err := o.Owner(ctx, 3); err == nil || !strings.Contains(err.Error(), "no owner") {
		t.Fatalf("no lease: %v", err)
	}
	eb, ok, err := c.TakeLease(ctx, 3, "b", 0, 10*time.Second)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if _, err := o.Owner(ctx, 3); err == nil || !strings.Contains(err.Error(), "no address") {
		t.Fatalf("an owner without an address: %v", err)
	}
	if err := c.SetAddr(ctx, "b", "http://10.0.0.2:7080", time.Minute); err != nil {
		t.Fatal(err)
	}
	if url, err := o.Owner(ctx, 3); err != nil || url != "http://10.0.0.2:7080" {
		t.Fatalf("owner b: %q %v", url, err)
	}
	// The lease moves to c; the cached answer holds for its ttl.
	if err := c.ReleaseLease(ctx, 3, "b", eb); err != nil {
		t.Fatal(err)
	}
	ec, ok, err := c.TakeLease(ctx, 3, "c", 0, 10*time.Second)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := c.SetAddr(ctx, "c", "http://10.0.0.3:7080", time.Minute); err != nil {
		t.Fatal(err)
	}
	if url, _ := o.Owner(ctx, 3); url != "http://10.0.0.2:7080" {
		t.Fatalf("within the ttl: %q, want the cached answer", url)
	}
	o.Forget(3)
	if url, _ := o.Owner(ctx, 3); url != "http://10.0.0.3:7080" {
		t.Fatalf("after Forget: %q, want c's address", url)
	}
	// Back to b: the answer for c is kept for the ttl, then b is asked.
	if err := c.ReleaseLease(ctx, 3, "c", ec); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := c.TakeLease(ctx, 3, "b", 0, 10*time.Second); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if url, _ := o.Owner(ctx, 3); url != "http://10.0.0.3:7080" {
		t.Fatalf("within the ttl: %q, want c's cached address", url)
	}
	now = now.Add(2 * time.Second)
	if url, _ := o.Owner(ctx, 3); url != "http://10.0.0.2:7080" {
		t.Fatalf("after the ttl: %q, want b's address", url)
	}
}
