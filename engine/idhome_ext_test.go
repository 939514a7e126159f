package engine_test

import (
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
)

// A message's id names the partition of its sender's engine, also on the
// partition it was relayed to, so a request about it can be routed to its
// origin; an engine without partitions makes ids that name none, and a
// partition beyond what an id can name is refused.
func TestMessageIDsNameTheirOrigin(t *testing.T) {
	nodes := memNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	m := send(t, a.e, "alice", "hello", "bob")
	if p, ok := engine.HomeOf(m.ID); !ok || p != 0 {
		t.Fatalf("alice's message names partition %d (%v), want 0", p, ok)
	}
	r := send(t, b.e, "dave", "hi", "alice")
	if p, ok := engine.HomeOf(r.ID); !ok || p != 1 {
		t.Fatalf("dave's message names partition %d (%v), want 1", p, ok)
	}
	pump(t, a, b)
	if got, err := b.e.Message(m.ID); err != nil || got.ID != m.ID {
		t.Fatalf("relayed message on B: %+v %v", got, err)
	}
	single, _ := openEngine(t, memstore.New())
	if p, ok := engine.HomeOf(send(t, single, "ana", "x", "bo").ID); ok {
		t.Fatalf("a single engine's id names partition %d", p)
	}
	if _, err := engine.Open(engine.Config{Store: memstore.New(), Partition: 1 << 15, Placement: placeUser}); err == nil {
		t.Fatal("partition 32768 was accepted")
	}
}
