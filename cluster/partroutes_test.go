package cluster_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// TestPartitionRoutes: one node owning partitions 0 and 5 serves both on
// one listener; an Endpoint for each gets that partition's snapshot and
// names its standby there; the package's functions (no p) reach
// partition 0; a partition the node does not own answers 421, an
// unreadable p 400, and none of them answers without the secret.
func TestPartitionRoutes(t *testing.T) {
	ctx := context.Background()
	c := cluster.NewMemCoord(time.Now)
	const secret = "partition-routes"
	var routes cluster.PartitionRoutes
	epochs := map[cluster.Partition]uint64{}
	// Partition 5's first epoch is above 1 (min), so that the two
	// snapshots tell their partitions apart by their fences.
	for p, min := range map[cluster.Partition]uint64{0: 0, 5: 6} {
		e, ok, err := c.TakeLease(ctx, p, "a", min, time.Minute)
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		epochs[p] = e
		st, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		rs, err := cluster.NewReplicatedStore(st, cluster.NewOwner(c, p, "a", e, 0, ""))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rs.Close() })
		routes.Set(p, cluster.SnapshotHandler(rs, c, secret, t.TempDir()))
	}
	if epochs[0] == epochs[5] {
		t.Fatalf("both partitions at epoch %d", epochs[0])
	}
	srv := httptest.NewServer(&routes)
	defer srv.Close()
	ep := func(p cluster.Partition) cluster.Endpoint {
		return cluster.Endpoint{Client: srv.Client(), URL: srv.URL, Secret: secret, P: p}
	}
	for _, p := range []cluster.Partition{0, 5} {
		st, err := ep(p).FetchSnapshot(ctx, filepath.Join(t.TempDir(), "snap"))
		if err != nil || st.FenceEpoch != epochs[p] || st.FenceOwner != "a" {
			t.Fatalf("partition %d's snapshot: %+v %v, want fenced at %d/a", p, st, err, epochs[p])
		}
		if err := ep(p).RequestStandby(ctx, "b", st); err != nil {
			t.Fatalf("partition %d: request standby: %v", p, err)
		}
		if sb, err := c.Standby(ctx, p); err != nil || sb != "b" {
			t.Fatalf("partition %d's standby %q %v", p, sb, err)
		}
	}
	if st, err := cluster.FetchSnapshot(ctx, srv.Client(), srv.URL, secret, filepath.Join(t.TempDir(), "snap")); err != nil || st.FenceEpoch != epochs[0] {
		t.Fatalf("the package's FetchSnapshot (partition 0): %+v %v", st, err)
	}
	if _, err := ep(7).FetchSnapshot(ctx, filepath.Join(t.TempDir(), "snap")); err == nil || !strings.Contains(err.Error(), "421") {
		t.Fatalf("a partition the node does not own: %v, want 421", err)
	}
	if _, err := ep(7).FetchChanges(ctx, 0, 0); err == nil || !strings.Contains(err.Error(), "421") {
		t.Fatalf("changes of a partition the node does not own: %v, want 421", err)
	}
	// Asked to name a standby of a partition it does not own (it handed
	// it over since the snapshot was taken), it refuses for good: the
	// joining member must start over from the new owner.
	if err := ep(7).RequestStandby(ctx, "c", cluster.StandbyState{}); !errors.Is(err, cluster.ErrStandbyRefused) || !strings.Contains(err.Error(), "421") {
		t.Fatalf("a standby of a partition the node does not own: %v, want ErrStandbyRefused (421)", err)
	}
	resp, err := srv.Client().Get(srv.URL + "/cluster/snapshot?p=x")
	if err != nil || resp.StatusCode != 400 {
		t.Fatalf("p=x: %v %v", resp.Status, err)
	}
	resp.Body.Close()
	if _, err := (cluster.Endpoint{Client: srv.Client(), URL: srv.URL, Secret: "wrong", P: 5}).FetchSnapshot(ctx, filepath.Join(t.TempDir(), "snap")); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("a wrong secret: %v, want 401", err)
	}
	routes.Delete(5)
	if _, err := ep(5).FetchSnapshot(ctx, filepath.Join(t.TempDir(), "snap")); err == nil || !strings.Contains(err.Error(), "421") {
		t.Fatalf("after Delete(5): %v, want 421", err)
	}
}
