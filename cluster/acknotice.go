package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Ack notices on Redis (AckNotifier): PutAck publishes each ack on its
// partition's channel beside recording it, and a node's owners watch the
// channels of the partitions they own, all on one subscription (one
// connection) per RedisCoord, subscribed to a partition's channel while
// anyone watches it. go-redis subscribes again after a lost connection;
// what was published meanwhile is lost, which the owner's occasional
// read of the recorded acks makes up for.

func ackChannel(p Partition) string { return key(p, "ack-notices") }

// encodeAckNotice writes a as "EPOCH SEQ LEN OWNERSTANDBY", LEN being the
// owner's length in bytes (node ids are free text).
func encodeAckNotice(a Ack) string {
	return fmt.Sprintf("%d %d %d %s%s", a.Epoch, a.Seq, len(a.Owner), a.Owner, a.Standby)
}

func decodeAckNotice(s string) (Ack, error) {
	f := strings.SplitN(s, " ", 4)
	if len(f) != 4 {
		return Ack{}, fmt.Errorf("cluster: bad ack notice %q", s)
	}
	ep, err1 := strconv.ParseUint(f[0], 10, 64)
	seq, err2 := strconv.ParseUint(f[1], 10, 64)
	n, err3 := strconv.Atoi(f[2])
	if err := errors.Join(err1, err2, err3); err != nil || n < 0 || n > len(f[3]) {
		return Ack{}, fmt.Errorf("cluster: bad ack notice %q", s)
	}
	return Ack{Epoch: ep, Seq: seq, Owner: f[3][:n], Standby: f[3][n:]}, nil
}

// ackHub is a RedisCoord's subscription to the ack channels watched.
type ackHub struct {
	mu       sync.Mutex
	ps       *redis.PubSub // nil while nobody watches
	watchers map[Partition]map[int]func(Ack)
	next     int
}

// WatchAcks implements AckNotifier.
func (r *RedisCoord) WatchAcks(ctx context.Context, p Partition, f func(Ack)) error {
	h := &r.acks
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if h.watchers == nil {
		h.watchers = map[Partition]map[int]func(Ack){}
	}
	ch := ackChannel(p)
	if h.ps == nil {
		ps := r.rdb.Subscribe(ctx, ch)
		if _, err := ps.Receive(ctx); err != nil { // the subscription confirmed
			_ = ps.Close()
			return r.fail(ctx, err, "cluster: watch partition %d's acks: %w", p)
		}
		h.ps = ps
		go h.deliver(ps)
	} else if len(h.watchers[p]) == 0 {
		if err := h.ps.Subscribe(ctx, ch); err != nil {
			return r.fail(ctx, err, "cluster: watch partition %d's acks: %w", p)
		}
	}
	if h.watchers[p] == nil {
		h.watchers[p] = map[int]func(Ack){}
	}
	id := h.next
	h.next++
	h.watchers[p][id] = f
	context.AfterFunc(ctx, func() { h.stop(p, id) })
	return nil
}

// stop ends watcher id of p: the channel is unsubscribed once nobody
// watches it, the subscription closed once nobody watches anything.
func (h *ackHub) stop(p Partition, id int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.watchers[p], id)
	if len(h.watchers[p]) > 0 {
		return
	}
	delete(h.watchers, p)
	if h.ps == nil {
		return
	}
	if len(h.watchers) == 0 {
		_ = h.ps.Close() // ends deliver
		h.ps = nil
		return
	}
	_ = h.ps.Unsubscribe(context.Background(), ackChannel(p))
}

// deliver passes each notice ps receives to its partition's watchers,
// until ps is closed.
func (h *ackHub) deliver(ps *redis.PubSub) {
	for msg := range ps.Channel() {
		a, err := decodeAckNotice(msg.Payload)
		if err != nil {
			continue // not ours to act on: the recorded acks are read anyway
		}
		p, ok := partitionOfAckChannel(msg.Channel)
		if !ok {
			continue
		}
		h.mu.Lock()
		var fs []func(Ack)
		if h.ps == ps {
			for _, f := range h.watchers[p] {
				fs = append(fs, f)
			}
		}
		h.mu.Unlock()
		for _, f := range fs {
			f(a)
		}
	}
}

// partitionOfAckChannel reads the partition from an ackChannel name.
func partitionOfAckChannel(ch string) (Partition, bool) {
	rest, ok := strings.CutPrefix(ch, "{ding:p:")
	if !ok {
		return 0, false
	}
	num, _, ok := strings.Cut(rest, "}")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return 0, false
	}
	return Partition(v), true
}
