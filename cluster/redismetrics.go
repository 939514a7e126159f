package cluster

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// redisMetrics is what a member asks of Redis, for Prometheus: every
// command by name and result, the time of each round trip that does not
// wait on purpose (a blocking XREAD does), and the client's connection
// pool. A go-redis hook counts the commands; the pool's figures are read
// at each scrape.
type redisMetrics struct {
	commands *prometheus.CounterVec
	rtt      *prometheus.HistogramVec
	// pool reads the client's pool figures, once per scrape.
	pool func() *redis.PoolStats
}

var (
	poolConnsDesc = prometheus.NewDesc("ding_redis_pool_connections",
		"Connections the Redis client holds open (every node of a Redis Cluster together), pub/sub's apart.", []string{"state"}, nil)
	poolTimeoutsDesc = prometheus.NewDesc("ding_redis_pool_timeouts_total",
		"Commands that waited for a free connection to Redis in vain (the pool full for its whole timeout): they failed without being sent.", nil, nil)
	poolWaitDesc = prometheus.NewDesc("ding_redis_pool_wait_seconds_total",
		"Time commands spent waiting for a free connection to Redis, all together.", nil, nil)
)

func newRedisMetrics(rdb redis.UniversalClient) *redisMetrics {
	m := &redisMetrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_redis_commands_total",
			Help: "Commands this member sent Redis (those of a pipeline or transaction each; not those go-redis sends as a connection opens), by command and result: ok (an answer, nil included), unavailable (Redis answered that it cannot serve: a refused login, a read-only replica, loading, cluster down, too many clients), error (another error answer: NOSCRIPT once per script after Redis starts is expected, NOPERM is a right the ACL user lacks), failed (no answer: Redis unreachable, a timeout, a connection lost), canceled (the member's context ended first).",
		}, []string{"command", "result"}),
		rtt: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ding_redis_round_trip_seconds",
			Help:    "Time from sending a command (or a pipeline or transaction, as command=\"pipeline\") to its answer, for those that do not wait on purpose (a blocking XREAD is left out): network, Redis's queue and the member's own scheduling.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"command"}),
		pool: rdb.PoolStats,
	}
	rdb.AddHook(redisHook{m})
	return m
}

// Describe and Collect make redisMetrics one prometheus.Collector.
func (m *redisMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.commands.Describe(ch)
	m.rtt.Describe(ch)
	ch <- poolConnsDesc
	ch <- poolTimeoutsDesc
	ch <- poolWaitDesc
}

func (m *redisMetrics) Collect(ch chan<- prometheus.Metric) {
	m.commands.Collect(ch)
	m.rtt.Collect(ch)
	s := m.pool() // every node's pool, for a Redis Cluster: read once
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(s.TotalConns), "total")
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(s.IdleConns), "idle")
	ch <- prometheus.MustNewConstMetric(poolTimeoutsDesc, prometheus.CounterValue, float64(s.Timeouts))
	ch <- prometheus.MustNewConstMetric(poolWaitDesc, prometheus.CounterValue, float64(s.WaitDurationNs)/1e9)
}

// setup are the commands go-redis sends itself as a connection opens;
// they are not counted (a command that cannot be sent because its
// connection could not log in is counted with their error).
var setup = map[string]bool{"hello": true, "auth": true, "client": true, "select": true, "readonly": true}

// result classifies a command's error.
func result(err error) string {
	var rerr redis.Error
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		return "ok"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case redis.IsAuthError(err) || redis.IsReadOnlyError(err) || redis.IsLoadingError(err) ||
		redis.IsClusterDownError(err) || redis.IsMasterDownError(err) || redis.IsMaxClientsError(err):
		return "unavailable"
	case errors.As(err, &rerr):
		return "error"
	default:
		return "failed"
	}
}

// count records a command named name that ended with err, and, if
// started is not zero, its round trip.
func (m *redisMetrics) count(name string, err error, started time.Time) {
	if setup[name] {
		return
	}
	r := result(err)
	if r == "ok" && !started.IsZero() {
		m.rtt.WithLabelValues(name).Observe(time.Since(started).Seconds())
	}
	m.commands.WithLabelValues(name, r).Inc()
}

// blocking reports whether cmd waits on purpose (XREAD ... BLOCK).
func blocking(cmd redis.Cmder) bool {
	if cmd.Name() != "xread" {
		return false
	}
	for _, a := range cmd.Args() {
		if s, ok := a.(string); ok && strings.EqualFold(s, "block") {
			return true
		}
	}
	return false
}

type redisHook struct{ m *redisMetrics }

func (h redisHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h redisHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		// The error next returns: go-redis sets cmd's own only after the
		// hooks have returned.
		err := next(ctx, cmd)
		if blocking(cmd) {
			start = time.Time{} // its wait is on purpose: no round trip
		}
		h.m.count(cmd.Name(), err, start)
		return err
	}
}

func (h redisHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		ok := result(err) == "ok"
		if ok {
			h.m.rtt.WithLabelValues("pipeline").Observe(time.Since(start).Seconds())
		}
		for _, c := range cmds {
			// A pipeline's commands carry their own errors by now; one the
			// pipeline could not send carries the pipeline's.
			cerr := c.Err()
			if cerr == nil && !ok {
				cerr = err
			}
			h.m.count(c.Name(), cerr, time.Time{})
		}
		return err
	}
}

// Collector returns the coordinator's metrics (its Redis commands and
// connection pool), for the member to register with its own.
func (r *RedisCoord) Collector() prometheus.Collector { return r.metrics }
