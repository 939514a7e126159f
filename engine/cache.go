package engine

import (
	"hash/maphash"
	"math/bits"
	"sync"
	"unsafe"
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

// msgSize is the heap m holds while cached, near enough for a budget
// (TestMsgCacheCountsWhatItHolds): the Message itself, its map entry and
// ring slot (msgFixed), and each string, slice and body with the size
// class it is rounded up to (allocated).
func msgSize(m *Message) int {
	n := msgFixed + allocated(cap(m.Body)) + allocated(len(m.From)) + allocated(len(m.ClientID)) +
		allocated(16*cap(m.To)) + allocated(16*cap(m.Choices))
	for _, s := range m.To {
		n += allocated(len(s))
	}
	for _, s := range m.Choices {
		n += allocated(len(s))
	}
	if m.Secret != nil {
		n += allocated(int(unsafe.Sizeof(SecretInfo{})) + len(m.Secret.Watermark))
	}
	return n
}

// msgFixed is what every cached message costs besides its contents: the
// Message struct (rounded to its size class), its entry in the shard's
// map (a 16-byte id and a pointer, at the map's load) and its id in the
// ring (which keeps up to twice its live length).
const msgFixed = int(unsafe.Sizeof(Message{})+15)&^15 + 48 + 2*int(unsafe.Sizeof(ID{}))

// allocated is n rounded up as Go's allocator rounds small objects (to 8
// bytes up to 16, then 16 up to 256, then 1/8 of a power of two); 0 for 0.
func allocated(n int) int {
	switch {
	case n == 0:
		return 0
	case n <= 16:
		return (n + 7) &^ 7
	case n <= 256:
		return (n + 15) &^ 15
	}
	step := 1 << (bits.Len(uint(n)) - 4) // an eighth of the next power of two
	return (n + step - 1) &^ (step - 1)
}

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
