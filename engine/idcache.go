package engine

import (
	"hash/maphash"
	"sync"
)

// idCache is a bounded map from ids to records that the commit loop
// alone writes, so that a cached record is never stale: secret chat
// records (immutable once created) and the states of live secret
// messages (written through by the commit loop after each durable batch,
// dropped when they burn). Without them every secret submit, ack, read
// and burn did a point read and a JSON decode (up to 37% of dingd's CPU
// in the burn bursts of bench/RESULTS.md "secret").
//
// It is 16 shards of at most perShard entries; a full shard drops an
// arbitrary entry (Go's map iteration order) to make room: a miss only
// costs the store read it saves.
type idCache[V any] struct {
	seed     maphash.Seed
	perShard int
	shards   [16]idShard[V]
}

type idShard[V any] struct {
	mu sync.RWMutex
	m  map[ID]V // guarded by mu
}

func newIDCache[V any](size int) *idCache[V] {
	c := &idCache[V]{seed: maphash.MakeSeed(), perShard: max(1, size/16)}
	for i := range c.shards {
		c.shards[i].m = map[ID]V{}
	}
	return c
}

func (c *idCache[V]) shard(id ID) *idShard[V] {
	return &c.shards[maphash.Bytes(c.seed, id[:])%uint64(len(c.shards))]
}

func (c *idCache[V]) get(id ID) (V, bool) {
	s := c.shard(id)
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.m[id]
	return v, ok
}

func (c *idCache[V]) put(id ID, v V) {
	s := c.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[id]; !ok && len(s.m) >= c.perShard {
		for k := range s.m {
			delete(s.m, k)
			break
		}
	}
	s.m[id] = v
}

func (c *idCache[V]) delete(id ID) {
	s := c.shard(id)
	s.mu.Lock()
	delete(s.m, id)
	s.mu.Unlock()
}
