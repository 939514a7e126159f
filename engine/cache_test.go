package engine

import (
	"testing"
)

func TestMsgCacheEvictsOldestWithinBudget(t *testing.T) {
	c := newMsgCache(16 * 10 * (96 + 100)) // about 10 messages of 100 bytes per shard
	var ids []ID
	for i := range 2000 {
		id := ID{byte(i >> 8), byte(i)}
		ids = append(ids, id)
		c.put(&Message{ID: id, Body: make([]byte, 100)})
	}
	total := 0
	for i := range c.shards {
		s := &c.shards[i]
		if s.bytes > c.budget {
			t.Fatalf("shard %d holds %d bytes, budget %d", i, s.bytes, c.budget)
		}
		total += len(s.byID)
	}
	if total == 0 || total > 16*11 {
		t.Fatalf("cache holds %d messages", total)
	}
	if c.get(ids[len(ids)-1]) == nil {
		t.Fatal("newest message evicted")
	}
	if c.get(ids[0]) != nil {
		t.Fatal("oldest message kept past the budget")
	}
	c.forget(ids[len(ids)-1])
	if c.get(ids[len(ids)-1]) != nil {
		t.Fatal("forgotten message still cached")
	}
	var none *msgCache
	none.put(&Message{})
	if none.get(ID{}) != nil {
		t.Fatal("nil cache returned a message")
	}
}
