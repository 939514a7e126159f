package cluster

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/dingmq/ding/internal/redistest"
)

// ding_redis_commands_total classifies each command by what became of it,
// on a single Redis as on the others (go-redis sets a command's error
// only after the hooks return: the hook must read next's). Connection
// set-up commands are not counted.
func TestRedisMetricsCountResults(t *testing.T) {
	ctx := context.Background()
	addr := redistest.Start(t, "--requirepass", "pw").Addr
	dial := func(url string) *RedisCoord {
		t.Helper()
		c, closeRedis, err := DialRedis(RedisConfig{URL: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = closeRedis() })
		return c
	}
	count := func(c *RedisCoord, command, result string) float64 {
		var m dto.Metric
		if err := c.metrics.commands.WithLabelValues(command, result).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	c := dial("redis://:pw@" + addr)
	if err := c.rdb.Get(ctx, "ding:absent").Err(); err != redis.Nil {
		t.Fatal(err)
	}
	if err := c.rdb.EvalSha(ctx, "0000000000000000000000000000000000000000", []string{"ding:k"}).Err(); err == nil {
		t.Fatal("an unknown script ran")
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_ = c.rdb.Get(canceled, "ding:absent").Err()
	if _, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "ding:p", "1", 0)
		p.Get(ctx, "ding:p")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Incr(ctx, "ding:t")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		command, result string
		want            float64
	}{
		{"get", "ok", 2}, // the nil answer and the pipeline's
		{"evalsha", "error", 1},
		{"get", "canceled", 1},
		{"set", "ok", 1},
		{"incr", "ok", 1},
		{"hello", "ok", 0},
		{"client", "error", 0},
		{"auth", "ok", 0},
	} {
		if got := count(c, w.command, w.result); got != w.want {
			t.Errorf("%s %s: %v, want %v", w.command, w.result, got, w.want)
		}
	}
	wrong := dial("redis://:not-it@" + addr)
	if err := wrong.rdb.Get(ctx, "ding:absent").Err(); err == nil {
		t.Fatal("a wrong password was let in")
	}
	if got := count(wrong, "get", "unavailable"); got != 1 {
		t.Errorf("a refused login: get unavailable %v, want 1", got)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	down := dial("redis://" + closed)
	_ = down.rdb.Get(ctx, "ding:absent").Err()
	if got := count(down, "get", "failed"); got != 1 {
		t.Errorf("an unreachable Redis: get failed %v, want 1", got)
	}
}

// A node follows up to every partition but one (64 and the directory's)
// with a blocking read each, which holds a connection for up to a poll.
// Those reads must not take every connection the member's other
// commands need: a lease renewal waiting for a free one past its TTL
// would depose a healthy owner. Here as many reads as a node of the
// most partitions holds wait on empty streams for 3 s while a lease is
// read and taken with 1 s to do it.
func TestBlockingReadsLeaveConnectionsForLeases(t *testing.T) {
	ctx := context.Background()
	c, closeRedis, err := DialRedis(RedisConfig{URL: "redis://" + redistest.Start(t).Addr})
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	const readers = 65
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop() // first: the reads return at once
	for p := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _ = c.ReadEntries(rctx, Partition(p), "$", 1, 3*time.Second)
		}()
	}
	// Every read is waiting in Redis (CLIENT LIST: blocked XREADs).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		list, err := c.rdb.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(list, "cmd=xread") >= readers {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d reads waiting in Redis after 10s", strings.Count(list, "cmd=xread"), readers)
		}
	}
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, ok, err := c.TakeLease(lctx, 99, "a", 0, 3*time.Second); err != nil || !ok {
		t.Fatalf("a lease taken while %d reads wait: %v %v", readers, ok, err)
	}
}
