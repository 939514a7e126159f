package cluster_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// BenchmarkSubmit compares durable submits through the engine on one
// node's Pebble (the baseline) with the same submits on a replicated
// store, acknowledged only once a standby (another Pebble, following
// through a real redis-server on loopback) holds them too. 64 submitters;
// p50 and p99 submit→ack are reported beside ns/op, and the commands
// Redis ran per submit (the engine's setup included, a few).
//
//	go test ./cluster -run '^$' -bench Submit -benchtime 3s
func BenchmarkSubmit(b *testing.B) {
	b.Run("pebble", func(b *testing.B) {
		st, err := pebblestore.Open(b.TempDir(), pebblestore.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		benchSubmit(b, st)
	})
	b.Run("replicated", func(b *testing.B) {
		ctx := context.Background()
		rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(b).Addr})
		defer rdb.Close()
		calls := func() int64 { // every command Redis has run so far
			info, err := rdb.Info(ctx, "commandstats").Result()
			if err != nil {
				b.Fatal(err)
			}
			var n int64
			for _, line := range strings.Split(info, "\n") {
				if _, stats, ok := strings.Cut(line, ":calls="); ok {
					v, _, _ := strings.Cut(stats, ",")
					k, _ := strconv.ParseInt(v, 10, 64)
					n += k
				}
			}
			return n
		}
		c := cluster.NewRedisCoord(rdb)
		stA, err := pebblestore.Open(b.TempDir(), pebblestore.Options{})
		if err != nil {
			b.Fatal(err)
		}
		stB, err := pebblestore.Open(b.TempDir(), pebblestore.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer stB.Close()
		epoch, _, err := c.TakeLease(ctx, 0, "a", 0, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		_ = c.SetStandby(ctx, 0, "b")
		rs, err := cluster.NewReplicatedStore(stA, cluster.NewOwner(c, 0, "a", epoch, 0, "b"))
		if err != nil {
			b.Fatal(err)
		}
		defer rs.Close()
		f, err := cluster.NewFollower(c, 0, "b", stB, cluster.StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
		if err != nil {
			b.Fatal(err)
		}
		fctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = f.Run(fctx, 100*time.Millisecond) }()
		defer func() { stop(); <-done }()
		before := calls()
		benchSubmit(b, rs)
		b.ReportMetric(float64(calls()-before-1)/float64(b.N), "redis-cmds/op")
	})
}

func benchSubmit(b *testing.B, st store.Store) {
	e, err := engine.Open(engine.Config{Store: st, Recipients: everyone{}})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	const submitters = 64
	var (
		n   atomic.Int64
		mu  sync.Mutex
		lat []time.Duration
		wg  sync.WaitGroup
	)
	body := make([]byte, 256)
	b.ResetTimer()
	for s := range submitters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for n.Add(1) <= int64(b.N) {
				t0 := time.Now()
				_, err := e.Submit(context.Background(), engine.Submission{From: fmt.Sprintf("u%d", s), To: []string{fmt.Sprintf("u%d", (s+1)%submitters)}, Kind: engine.KindData, Body: body})
				if err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
}
