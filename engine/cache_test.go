package engine

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
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

// TestMsgCacheCountsWhatItHolds: the bytes the cache counts against its
// budget are the heap its messages really hold (the Message, its strings,
// body and recipients, the map entry and ring slot), within a quarter,
// for messages like the ones a submit stores: small bodies, where the
// fixed costs dominate, and larger ones. MessageCacheBytes is a memory
// budget an operator sets; it counted about a third of the real heap.
func TestMsgCacheCountsWhatItHolds(t *testing.T) {
	for _, tc := range []struct {
		name string
		body int
		to   int
	}{{"short text to one", 20, 1}, {"a paragraph to five", 600, 5}} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 20000
			c := newMsgCache(1 << 40) // never evicts: everything put stays
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			for i := range n {
				to := make([]string, tc.to)
				for j := range to {
					to[j] = strings.Clone(fmt.Sprintf("user-%06d", j))
				}
				c.put(&Message{ID: ID{byte(i >> 16), byte(i >> 8), byte(i)}, From: strings.Clone("user-sender"),
					To: to, Body: make([]byte, tc.body), ClientID: strings.Clone(fmt.Sprintf("client-%012d", i)), Created: time.Now()})
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			real := float64(after.HeapAlloc - before.HeapAlloc)
			counted := 0
			for i := range c.shards {
				counted += c.shards[i].bytes
			}
			ratio := float64(counted) / real
			t.Logf("%d messages: heap %.0f bytes each, counted %.0f each (%.2f)", n, real/n, float64(counted)/n, ratio)
			if ratio < 0.75 || ratio > 1.25 {
				t.Errorf("the cache counts %.2f of the heap its messages hold; want within a quarter", ratio)
			}
			runtime.KeepAlive(c)
		})
	}
}
