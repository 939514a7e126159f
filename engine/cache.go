package engine

import (
	"hash/maphash"
	"sync"
)

// msgCache keeps recently committed messages in memory so that devices
// catching up on recent traffic (a reconnect, a fan-out to many
// recipients) read them without touching the store. Messages are immutable
// once committed, so a cached record is never stale; anything that removes
// a message from the store (burning, later) must call forget.
//
// It is 16 shards, each evicting its oldest entries first (FIFO) when over
// its share of the byte budget: recent messages are the hot ones.
type msgCache struct {
	seed   maphash.Seed
	shards [16]cacheShard
	budget int // bytes per shard
}

type cacheShard struct {
	mu    sync.RWMutex
	byID  map[ID]*Message // guarded by mu
	order []ID            // insertion order, oldest first; guarded by mu
	head  int             // index of the oldest live entry in order; guarded by mu
	bytes int             // guarded by mu
}

// newMsgCache returns a cache of about budget bytes, or nil (no cache) for
// a budget <= 0.
func newMsgCache(budget int) *msgCache {
	if budget <= 0 {
		return nil
	}
	c := &msgCache{seed: maphash.MakeSeed(), budget: budget / 16}
	for i := range c.shards {
		c.shards[i].byID = map[ID]*Message{}
	}
	return c
}

func (c *msgCache) shard(id ID) *cacheShard {
	return &c.shards[maphash.Bytes(c.seed, id[:])%uint64(len(c.shards))]
}

func msgSize(m *Message) int { return 96 + len(m.Body) + len(m.From) + 16*len(m.To) }

func (c *msgCache) put(m *Message) {
	if c == nil {
		return
	}
	sz := msgSize(m)
	if sz > c.budget {
		return
	}
	s := c.shard(m.ID)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byID[m.ID]; ok {
		return
	}
	s.byID[m.ID] = m
	s.order = append(s.order, m.ID)
	s.bytes += sz
	for s.bytes > c.budget && s.head < len(s.order) {
		old := s.order[s.head]
		s.head++
		if om, ok := s.byID[old]; ok {
			s.bytes -= msgSize(om)
			delete(s.byID, old)
		}
	}
	if s.head > len(s.order)/2 { // compact the ring's dead prefix
		s.order = append(s.order[:0], s.order[s.head:]...)
		s.head = 0
	}
}

func (c *msgCache) get(id ID) *Message {
	if c == nil {
		return nil
	}
	s := c.shard(id)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.byID[id]
}

// forget drops a message (its id stays in order until evicted, harmlessly).
func (c *msgCache) forget(id ID) {
	if c == nil {
		return
	}
	s := c.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.byID[id]; ok {
		s.bytes -= msgSize(m)
		delete(s.byID, id)
	}
}
