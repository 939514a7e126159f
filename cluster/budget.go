package cluster

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dingmq/ding/engine"
)

// RedisBudget is the org's daily SMS and call budgets
// (engine.Quotas.SMSPerDay, CallsPerDay) counted for a whole cluster of
// partitions, as engine.Config.Budget (stage 6 of PARTITIONS.md; a node
// with several partitions in one process counts them in memory instead:
// internal/node's sharedBudget).
//
// The org's count is one Redis counter per channel and day,
//
//	{ding:budget}:CHANNEL:DAY      (all in one hash slot; expires after 3 days)
//
// from which each node takes sends in blocks (INCRBY Block), so that
// only one send in Block makes a round trip to Redis on the commit loop.
// A block that would cross the limit is granted only up to it, so the
// org never sends more than the limit while Redis keeps its counter; it
// may send less, by what other nodes took and did not use that day (at
// most Block-1 each).
//
// Budgets are a cost control, not part of the delivery guarantee, and
// Redis is not trusted with that. When it cannot be reached within
// Timeout, a send within the partition's own count (which each engine
// keeps in its store, as on one node) is made and the failure logged:
// the budget falls back to being counted per partition, and an
// escalation never stops for Redis. A Redis that lost its counter (a
// failover, a flush) lets the org send up to the limit again that day,
// never more than the limit from one partition.
type RedisBudget struct {
	rdb redis.UniversalClient
	// Block is how many sends one INCRBY takes; zero means 20.
	Block int
	// Timeout bounds a round trip to Redis; zero means 250 ms.
	Timeout time.Duration
	// Logger receives Redis failures; nil means slog.Default().
	Logger *slog.Logger

	mu   sync.Mutex
	left map[budgetKey]int // sends taken from Redis and not yet used, guarded by mu
}

type budgetKey struct {
	ch  engine.Channel
	day string
}

var _ engine.Budget = (*RedisBudget)(nil)

// NewRedisBudget counts the org's budgets in rdb (its lifetime stays the
// caller's).
func NewRedisBudget(rdb redis.UniversalClient) *RedisBudget {
	return &RedisBudget{rdb: rdb, left: map[budgetKey]int{}}
}

// Budgeter is an optional interface of a Coord: Budget returns the
// org's budgets counted for the whole cluster where the coordinator keeps
// them (RedisCoord: a RedisBudget on its Redis).
type Budgeter interface {
	Budget() engine.Budget
}

// Budget implements Budgeter: a RedisBudget on r's Redis.
func (r *RedisCoord) Budget() engine.Budget { return NewRedisBudget(r.rdb) }

// BudgetKey is the Redis key of the org's count of ch on day.
func BudgetKey(ch engine.Channel, day string) string {
	return "{ding:budget}:" + ch.String() + ":" + day
}

const budgetTTL = 3 * 24 * time.Hour

// Take implements engine.Budget.
func (b *RedisBudget) Take(ch engine.Channel, day string, limit int) bool {
	block := b.Block
	if block <= 0 {
		block = 20
	}
	timeout := b.Timeout
	if timeout <= 0 {
		timeout = 250 * time.Millisecond
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	k := budgetKey{ch, day}
	if b.left[k] > 0 {
		b.left[k]--
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	key := BudgetKey(ch, day)
	pipe := b.rdb.TxPipeline()
	incr := pipe.IncrBy(ctx, key, int64(block))
	pipe.Expire(ctx, key, budgetTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		log := b.Logger
		if log == nil {
			log = slog.Default()
		}
		log.Warn("the org's budget could not be read from Redis; this send is counted on its partition only", "channel", ch.String(), "day", day, "err", err)
		return true
	}
	n := int(incr.Val())
	granted := min(block, limit-(n-block))
	if granted <= 0 {
		return false
	}
	b.left[k] = granted - 1
	b.prune(day)
	return true
}

// prune forgets the blocks of days before the one before day.
func (b *RedisBudget) prune(day string) {
	t, err := time.Parse("20060102", day)
	if err != nil {
		return
	}
	keep := t.AddDate(0, 0, -1).Format("20060102")
	for k := range b.left {
		if k.day < keep {
			delete(b.left, k)
		}
	}
}

// Used returns the org's count of ch on day as Redis holds it (sends
// taken in blocks, used or not), for operators.
func (b *RedisBudget) Used(ctx context.Context, ch engine.Channel, day string) (int, error) {
	v, err := b.rdb.Get(ctx, BudgetKey(ch, day)).Result()
	if err == redis.Nil {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v)
}
