package cluster_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/redistest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// countingCoord counts the owner's reads of the recorded acks.
type countingCoord struct {
	cluster.Coord
	reads atomic.Int64
}

func (c *countingCoord) Acks(ctx context.Context, p cluster.Partition) (map[string]cluster.Ack, error) {
	c.reads.Add(1)
	return c.Coord.Acks(ctx, p)
}

func (c *countingCoord) WatchAcks(ctx context.Context, p cluster.Partition, f func(cluster.Ack)) error {
	return c.Coord.(cluster.AckNotifier).WatchAcks(ctx, p, f)
}

// TestOwnerCountsAckNoticesWithoutPolling: on a coordinator that passes
// acks on as they are put (AckNotifier: Redis's pub/sub, MemCoord), an
// owner acknowledges each batch once its standby's notice comes, without
// reading the recorded acks at all: with its poll set to an hour, every
// submit is answered, and the coordinator saw no read. When notices are
// lost, the owner still gets there by reading the acks (the fallback,
// every 20 polls).
func TestOwnerCountsAckNoticesWithoutPolling(t *testing.T) {
	open := func() *pebblestore.DB {
		st, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	}
	submit := func(t *testing.T, e *engine.Engine, n int) {
		t.Helper()
		for i := range n {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := e.Submit(ctx, engine.Submission{From: "u0", To: []string{"u1"}, Kind: engine.KindText, Body: fmt.Appendf(nil, "m%d", i)})
			cancel()
			if err != nil {
				t.Fatalf("submit %d: %v (not acknowledged within 10s)", i, err)
			}
		}
	}
	setup := func(t *testing.T, base cluster.Coord, poll time.Duration) (*countingCoord, *engine.Engine, *prometheus.Registry) {
		c := &countingCoord{Coord: base}
		const p, ttl = cluster.Partition(0), time.Hour
		stA, stB := open(), open()
		rs, epoch, _ := leasedOwner(t, c, p, "a", "b", stA, ttl)
		rs.PollEvery = poll
		reg := prometheus.NewRegistry()
		if err := rs.Register(reg); err != nil {
			t.Fatal(err)
		}
		_, _ = follow(t, base, p, "b", stB, cluster.StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
		for deadline := time.Now().Add(10 * time.Second); !cluster.Watching(rs); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the owner is not watching its acks after 10s")
			}
		}
		e := openEngine(t, rs)
		t.Cleanup(func() { _ = e.Close(); _ = rs.Close() })
		return c, e, reg
	}
	counter := func(t *testing.T, reg *prometheus.Registry, name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		t.Fatalf("no %s", name)
		return 0
	}
	heardAll := func(t *testing.T, c *countingCoord, reg *prometheus.Registry, n int) {
		t.Helper()
		if r := c.reads.Load(); r != 0 {
			t.Fatalf("the owner read the recorded acks %d times; want 0 (each batch counted from its notice)", r)
		}
		if got := counter(t, reg, "ding_cluster_ack_reads_total"); got != 0 {
			t.Fatalf("ding_cluster_ack_reads_total = %v, want 0", got)
		}
		if got := counter(t, reg, "ding_cluster_ack_notices_total"); got < float64(n) {
			t.Fatalf("ding_cluster_ack_notices_total = %v, want at least %d (one per submit's batch)", got, n)
		}
	}
	t.Run("redis", func(t *testing.T) {
		rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr})
		t.Cleanup(func() { _ = rdb.Close() })
		c, e, reg := setup(t, cluster.NewRedisCoord(rdb), time.Hour)
		submit(t, e, 50)
		heardAll(t, c, reg, 50)
	})
	t.Run("mem", func(t *testing.T) {
		c, e, reg := setup(t, cluster.NewMemCoord(time.Now), time.Hour)
		submit(t, e, 50)
		heardAll(t, c, reg, 50)
	})
	t.Run("notices lost", func(t *testing.T) {
		mc := cluster.NewMemCoord(time.Now)
		mc.DropAckNotices = 1 << 30
		c, e, reg := setup(t, mc, time.Millisecond)
		submit(t, e, 20)
		if n := c.reads.Load(); n == 0 {
			t.Fatal("every submit was answered with every notice lost and no read of the acks")
		}
		if got, want := counter(t, reg, "ding_cluster_ack_reads_total"), float64(c.reads.Load()); got != want {
			t.Fatalf("ding_cluster_ack_reads_total = %v, the coordinator saw %v reads", got, want)
		}
		if got := counter(t, reg, "ding_cluster_ack_notices_total"); got != 0 {
			t.Fatalf("ding_cluster_ack_notices_total = %v with every notice lost", got)
		}
	})
}
