package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCoord is the Coord on Redis: one Redis, Sentinel or Redis Cluster
// (go-redis UniversalClient; DialRedis and RedisConfig). A partition's keys share one hash tag, so
// they live in one Redis Cluster slot and its scripts touch one node:
//
//	{ding:p:N}:lease    hash holder, epoch; expires with the lease (PEXPIRE)
//	{ding:p:N}:epoch    the highest epoch handed out
//	{ding:p:N}:stream   the replication stream (fields e, o, s, d, sb)
//	{ding:p:N}:acks     hash node → "epoch seq owner"
//	{ding:p:N}:standby  the standby's node id
//	ding:node:ID:addr   a node's HTTP address, expiring unless refreshed
//	ding:partitions     the cluster's partition count, set by its first node
//	ding:serving        pub/sub channel: a partition's number, published by
//	                    its new owner once it serves (Announcer)
//
// Lease expiry is Redis's own clock (key TTL), so nodes' clocks do not
// matter to it.
type RedisCoord struct {
	rdb redis.UniversalClient
	// acks: AckNotifier's one subscription for every partition watched.
	acks ackHub
	// metrics: its commands and connection pool (Collector).
	metrics *redisMetrics
	// StreamKeep bounds each partition's stream: Append trims it to
	// about its last StreamKeep entries (Redis's approximate trimming, so
	// up to a stream node more). Zero means DefaultStreamKeep.
	StreamKeep int
}

// DefaultStreamKeep is how many of a partition's latest entries its
// stream keeps. A standby needs only the entries the owner has not seen
// acked, which the owner keeps and ships again when the stream lost them
// (Owner.Resend), and an owner waits for acks with a bounded pipeline,
// so the stream holds far more than any standby reads; what it bounds is
// Redis's memory.
const DefaultStreamKeep = 1024

// DialRedis returns a RedisCoord on the Redis rc names (one Redis,
// Sentinel or a Redis Cluster: RedisConfig) and a function that closes
// its client. It only parses: the first command finds whether Redis
// answers and accepts the credentials.
func DialRedis(rc RedisConfig) (*RedisCoord, func() error, error) {
	o, err := RedisOptions(rc)
	if err != nil {
		return nil, nil, err
	}
	rdb := redis.NewUniversalClient(o)
	return NewRedisCoord(rdb), rdb.Close, nil
}

// NewRedisCoord uses rdb (its lifetime stays the caller's).
// Its commands are counted from then on (Collector).
func NewRedisCoord(rdb redis.UniversalClient) *RedisCoord {
	return &RedisCoord{rdb: rdb, metrics: newRedisMetrics(rdb)}
}

func key(p Partition, what string) string { return fmt.Sprintf("{ding:p:%d}:%s", p, what) }

var takeLease = redis.NewScript(`
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder and holder ~= ARGV[1] then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'epoch'))}
end
local e = tonumber(redis.call('GET', KEYS[2]) or '0')
local m = tonumber(ARGV[2])
if m > e then e = m end
e = e + 1
redis.call('SET', KEYS[2], tostring(e))
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'epoch', tostring(e))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, e}
`)

var renewLease = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
`)

var releaseLease = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
return 0
`)

func ms(d time.Duration) int64 { return max(1, d.Milliseconds()) }

// TakeLease implements Coord.
func (r *RedisCoord) TakeLease(ctx context.Context, p Partition, node string, min uint64, ttl time.Duration) (uint64, bool, error) {
	v, err := takeLease.Run(ctx, r.rdb, []string{key(p, "lease"), key(p, "epoch")}, node, min, ms(ttl)).Int64Slice()
	if err != nil {
		return 0, false, r.fail(ctx, err, "cluster: take lease of partition %d: %w", p)
	}
	return uint64(v[1]), v[0] == 1, nil
}

// RenewLease implements Coord.
func (r *RedisCoord) RenewLease(ctx context.Context, p Partition, node string, epoch uint64, ttl time.Duration) (bool, error) {
	v, err := renewLease.Run(ctx, r.rdb, []string{key(p, "lease")}, node, strconv.FormatUint(epoch, 10), ms(ttl)).Int64()
	if err != nil {
		return false, r.fail(ctx, err, "cluster: renew lease of partition %d: %w", p)
	}
	return v == 1, nil
}

// ReleaseLease implements Coord.
func (r *RedisCoord) ReleaseLease(ctx context.Context, p Partition, node string, epoch uint64) error {
	if err := releaseLease.Run(ctx, r.rdb, []string{key(p, "lease")}, node, strconv.FormatUint(epoch, 10)).Err(); err != nil {
		return r.fail(ctx, err, "cluster: release lease of partition %d: %w", p)
	}
	return nil
}

// Lease implements Coord.
func (r *RedisCoord) Lease(ctx context.Context, p Partition) (string, uint64, error) {
	v, err := r.rdb.HMGet(ctx, key(p, "lease"), "holder", "epoch").Result()
	if err != nil {
		return "", 0, r.fail(ctx, err, "cluster: read lease of partition %d: %w", p)
	}
	holder, _ := v[0].(string)
	es, _ := v[1].(string)
	if holder == "" {
		es, err = r.rdb.Get(ctx, key(p, "epoch")).Result()
		if errors.Is(err, redis.Nil) {
			return "", 0, nil
		}
		if err != nil {
			return "", 0, r.fail(ctx, err, "cluster: read epoch of partition %d: %w", p)
		}
	}
	e, err := strconv.ParseUint(es, 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("cluster: partition %d: bad epoch %q", p, es)
	}
	return holder, e, nil
}

// Append implements Coord.
func (r *RedisCoord) Append(ctx context.Context, p Partition, e Entry) error {
	keep := r.StreamKeep
	if keep <= 0 {
		keep = DefaultStreamKeep
	}
	vals := []any{"e", e.Epoch, "o", e.Owner, "s", e.Seq, "d", e.Data, "sb", e.Standby, "k", e.Keys}
	// A standby move's fields only when set: every batch pays for the others.
	if e.Replacing != "" {
		vals = append(vals, "rp", e.Replacing)
	}
	if e.Demote != "" {
		vals = append(vals, "dm", e.Demote)
	}
	err := r.rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: key(p, "stream"),
		MaxLen: int64(keep), Approx: true,
		Values: vals,
	}).Err()
	if err != nil {
		return r.fail(ctx, err, "cluster: append to partition %d: %w", p)
	}
	return nil
}

// Entries implements Coord. The cursor is the last stream id read.
func (r *RedisCoord) Entries(ctx context.Context, p Partition, cursor string, n int) ([]Entry, string, error) {
	start := "-"
	if cursor != "" {
		start = "(" + cursor
	}
	msgs, err := r.rdb.XRangeN(ctx, key(p, "stream"), start, "+", int64(n)).Result()
	if err != nil {
		return nil, cursor, r.fail(ctx, err, "cluster: read partition %d's stream: %w", p)
	}
	return decodeEntries(p, msgs, cursor)
}

// decodeEntries decodes stream messages read after cursor, and returns
// the cursor after them.
func decodeEntries(p Partition, msgs []redis.XMessage, cursor string) ([]Entry, string, error) {
	out := make([]Entry, 0, len(msgs))
	for _, m := range msgs {
		e, err := decodeEntry(m.Values)
		if err != nil {
			return nil, cursor, fmt.Errorf("cluster: partition %d's stream entry %s: %w", p, m.ID, err)
		}
		out = append(out, e)
		cursor = m.ID
	}
	return out, cursor, nil
}

func decodeEntry(v map[string]any) (Entry, error) {
	str := func(k string) string { s, _ := v[k].(string); return s }
	ep, err1 := strconv.ParseUint(str("e"), 10, 64)
	seq, err2 := strconv.ParseUint(str("s"), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return Entry{}, err
	}
	e := Entry{Epoch: ep, Owner: str("o"), Seq: seq, Standby: str("sb"), Replacing: str("rp"), Demote: str("dm")}
	if d := str("d"); d != "" {
		e.Data = []byte(d)
	}
	if k := str("k"); k != "" {
		e.Keys = []byte(k)
	}
	return e, nil
}

// fail wraps a Redis error. A Redis Cluster client learns of a failover
// only from a MOVED reply or its periodic reload (every minute): after
// any other error (the dead master refuses connections), it is told to
// reload the slot map now, so the coordinator works again as soon as a
// replica is promoted.
func (r *RedisCoord) fail(ctx context.Context, err error, format string, args ...any) error {
	var rerr redis.Error
	if cc, ok := r.rdb.(*redis.ClusterClient); ok && !errors.As(err, &rerr) {
		cc.ReloadState(ctx)
	}
	return fmt.Errorf(format, append(args, err)...)
}

// ReadEntries implements EntryReader with XREAD BLOCK: one round trip
// returns the entries after cursor, or the first to come within max. It
// returns as soon as ctx ends: go-redis does not cut a blocking read
// short when its context is cancelled, so the XREAD runs on and ends by
// itself (within max) while the caller goes on, and what it reads then
// is dropped (the caller's cursor did not move). (A standby stopping its
// follower to take over waited out the block, up to a quarter of a
// lease, before.)
func (r *RedisCoord) ReadEntries(ctx context.Context, p Partition, cursor string, n int, max time.Duration) ([]Entry, string, error) {
	from := cursor
	if from == "" {
		from = "0"
	}
	block := max
	if block < time.Millisecond {
		block = -1 // XREAD without BLOCK (BLOCK 0 would wait for ever)
	}
	type read struct {
		streams []redis.XStream
		err     error
	}
	done := make(chan read, 1)
	go func() {
		s, err := r.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{key(p, "stream"), from}, Count: int64(n), Block: block}).Result()
		done <- read{s, err}
	}()
	var got read
	select {
	case got = <-done:
	case <-ctx.Done():
		return nil, cursor, ctx.Err()
	}
	if errors.Is(got.err, redis.Nil) { // nothing within max
		return nil, cursor, nil
	}
	if got.err != nil {
		return nil, cursor, r.fail(ctx, got.err, "cluster: read partition %d's stream: %w", p)
	}
	if len(got.streams) == 0 { // one stream asked for: one answered
		return nil, cursor, nil
	}
	return decodeEntries(p, got.streams[0].Messages, cursor)
}

var claimPartitions = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`)

// ClaimPartitions implements PartitionCounter.
func (r *RedisCoord) ClaimPartitions(ctx context.Context, p int) (int, error) {
	v, err := claimPartitions.Run(ctx, r.rdb, []string{"ding:partitions"}, p).Text()
	if err != nil {
		return 0, r.fail(ctx, err, "cluster: the partition count: %w")
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("cluster: the partition count in Redis is %q", v)
	}
	return n, nil
}

// servingChannel carries Announcer's announcements.
const servingChannel = "ding:serving"

// Announce implements Announcer with PUBLISH (a Redis Cluster passes it
// to every node's subscribers).
func (r *RedisCoord) Announce(ctx context.Context, p Partition) error {
	if err := r.rdb.Publish(ctx, servingChannel, strconv.FormatUint(uint64(p), 10)).Err(); err != nil {
		return r.fail(ctx, err, "cluster: announce partition %d: %w", p)
	}
	return nil
}

// Listen implements Announcer with SUBSCRIBE: it returns once Redis has
// confirmed the subscription. go-redis resubscribes after a lost
// connection; what was published meanwhile is lost (a hint).
func (r *RedisCoord) Listen(ctx context.Context, f func(Partition)) error {
	ps := r.rdb.Subscribe(ctx, servingChannel)
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		return r.fail(ctx, err, "cluster: subscribe to %s: %w", servingChannel)
	}
	ch := ps.Channel()
	go func() {
		defer ps.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case msg, ok := <-ch:
				if !ok {
					return
				}
				if p, err := strconv.ParseUint(msg.Payload, 10, 32); err == nil {
					f(Partition(p))
				}
			}
		}
	}()
	return nil
}

// PutAck implements Coord: the ack is recorded (HSET) and passed on to
// the partition's watchers (PUBLISH, AckNotifier) in one round trip.
func (r *RedisCoord) PutAck(ctx context.Context, p Partition, a Ack) error {
	v := fmt.Sprintf("%d %d %s", a.Epoch, a.Seq, a.Owner)
	_, err := r.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		pl.HSet(ctx, key(p, "acks"), a.Standby, v)
		pl.Publish(ctx, ackChannel(p), encodeAckNotice(a))
		return nil
	})
	if err != nil {
		return r.fail(ctx, err, "cluster: ack on partition %d: %w", p)
	}
	return nil
}

// Acks implements Coord.
func (r *RedisCoord) Acks(ctx context.Context, p Partition) (map[string]Ack, error) {
	m, err := r.rdb.HGetAll(ctx, key(p, "acks")).Result()
	if err != nil {
		return nil, r.fail(ctx, err, "cluster: read acks of partition %d: %w", p)
	}
	out := make(map[string]Ack, len(m))
	for node, v := range m {
		f := strings.SplitN(v, " ", 3)
		if len(f) != 3 {
			return nil, fmt.Errorf("cluster: partition %d: bad ack %q", p, v)
		}
		ep, err1 := strconv.ParseUint(f[0], 10, 64)
		seq, err2 := strconv.ParseUint(f[1], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("cluster: partition %d: bad ack %q: %w", p, v, err)
		}
		out[node] = Ack{Standby: node, Epoch: ep, Owner: f[2], Seq: seq}
	}
	return out, nil
}

// SetStandby implements Coord.
func (r *RedisCoord) SetStandby(ctx context.Context, p Partition, node string) error {
	var err error
	if node == "" {
		err = r.rdb.Del(ctx, key(p, "standby")).Err()
	} else {
		err = r.rdb.Set(ctx, key(p, "standby"), node, 0).Err()
	}
	if err != nil {
		return r.fail(ctx, err, "cluster: set standby of partition %d: %w", p)
	}
	return nil
}

// Standby implements Coord.
func (r *RedisCoord) Standby(ctx context.Context, p Partition) (string, error) {
	v, err := r.rdb.Get(ctx, key(p, "standby")).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", r.fail(ctx, err, "cluster: read standby of partition %d: %w", p)
	}
	return v, nil
}

// SetAddr implements Coord.
func (r *RedisCoord) SetAddr(ctx context.Context, node, addr string, ttl time.Duration) error {
	if err := r.rdb.Set(ctx, "ding:node:"+node+":addr", addr, ttl).Err(); err != nil {
		return r.fail(ctx, err, "cluster: publish %s's address: %w", node)
	}
	return nil
}

// Addr implements Coord.
func (r *RedisCoord) Addr(ctx context.Context, node string) (string, error) {
	v, err := r.rdb.Get(ctx, "ding:node:"+node+":addr").Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", r.fail(ctx, err, "cluster: read %s's address: %w", node)
	}
	return v, nil
}

// membersKey is the hash of members' statuses: field node, value the
// JSON of a memberRecord (Redis expires keys, not hash fields: Members
// skips the expired and deletes those a day past).
const membersKey = "ding:members"

type memberRecord struct {
	Member
	Until int64 `json:"until_ms"`
}

// SetMember implements Registry.
func (r *RedisCoord) SetMember(ctx context.Context, node string, m Member, ttl time.Duration) error {
	b, err := json.Marshal(memberRecord{m, time.Now().Add(ttl).UnixMilli()})
	if err != nil {
		return err
	}
	if err := r.rdb.HSet(ctx, membersKey, node, b).Err(); err != nil {
		return r.fail(ctx, err, "cluster: publish %s's status: %w", node)
	}
	return nil
}

// Members implements Registry.
func (r *RedisCoord) Members(ctx context.Context) (map[string]Member, error) {
	all, err := r.rdb.HGetAll(ctx, membersKey).Result()
	if err != nil {
		return nil, r.fail(ctx, err, "cluster: read members: %w")
	}
	now := time.Now().UnixMilli()
	out := map[string]Member{}
	for id, v := range all {
		var rec memberRecord
		if json.Unmarshal([]byte(v), &rec) != nil || rec.Until < now-24*3600*1000 {
			r.rdb.HDel(ctx, membersKey, id) // unreadable, or gone for a day
			continue
		}
		if rec.Until >= now {
			out[id] = rec.Member
		}
	}
	return out, nil
}

var (
	_ Coord       = (*RedisCoord)(nil)
	_ EntryReader = (*RedisCoord)(nil)
	_ AckNotifier = (*RedisCoord)(nil)
	_ Registry    = (*RedisCoord)(nil)
	_ Registry    = (*MemCoord)(nil)
)
