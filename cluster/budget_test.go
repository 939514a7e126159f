package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/redistest"
)

// TestRedisBudget: two nodes share an org budget of 50 SMS a day through
// a real redis-server, taking blocks of 20: together they are granted
// exactly 50 and then refused, whatever the order; calls and another day
// are counted apart, with an expiry; a node whose block is unused leaves
// the other short by at most that; with Redis gone a send is granted
// (the engine's own count still bounds it).
func TestRedisBudget(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	a, b := cluster.NewRedisBudget(rdb), cluster.NewRedisBudget(rdb)
	const day, limit = "20261204", 50

	granted := 0
	for i := range 200 {
		n := a
		if i%3 == 0 {
			n = b
		}
		if n.Take(engine.ChannelSMS, day, limit) {
			granted++
		}
	}
	if granted != limit {
		t.Fatalf("granted %d SMS with a budget of %d", granted, limit)
	}
	if a.Take(engine.ChannelSMS, day, limit) || b.Take(engine.ChannelSMS, day, limit) {
		t.Fatal("a send granted over the budget")
	}
	if !a.Take(engine.ChannelVoice, day, limit) || !a.Take(engine.ChannelSMS, "20261205", limit) {
		t.Fatal("calls, or the next day, were refused with the SMS budget of today spent")
	}
	if ttl, err := rdb.TTL(ctx, cluster.BudgetKey(engine.ChannelSMS, day)).Result(); err != nil || ttl <= 0 || ttl > 3*24*time.Hour {
		t.Fatalf("the counter's expiry: %v %v", ttl, err)
	}
	if used, err := a.Used(ctx, engine.ChannelSMS, day); err != nil || used < limit {
		t.Fatalf("Used = %d, %v; want at least %d", used, err, limit)
	}

	// c takes a block and uses one send of it; d can use the rest of the
	// budget but c's 19.
	c, d := cluster.NewRedisBudget(rdb), cluster.NewRedisBudget(rdb)
	const day2 = "20261206"
	if !c.Take(engine.ChannelSMS, day2, limit) {
		t.Fatal("c refused")
	}
	n := 0
	for d.Take(engine.ChannelSMS, day2, limit) {
		n++
	}
	if n != limit-20 {
		t.Fatalf("d was granted %d with c holding a block of 20 (one used), want %d", n, limit-20)
	}

	// Redis gone: granted, and said in the logs.
	e := cluster.NewRedisBudget(rdb)
	e.Timeout = 100 * time.Millisecond
	srv.Kill()
	if !e.Take(engine.ChannelSMS, "20261207", limit) {
		t.Fatal("a send refused because Redis is down: the budget must fall back to the partition's own count")
	}
}
