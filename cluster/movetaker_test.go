package cluster

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestEveryMomentOfAMoveHasATaker moves a standby's place from x to y, a
// learner, under writes, and kills the owner at every step of the move
// in turn: whenever it dies, the node the coordinator names takes the
// partition over once the lease lapses, holding every batch the owner
// acknowledged. Before the move had two halves, the old standby demoted
// itself on the hand-over entry while the coordinator still named it
// until the owner counted the new one's ack: an owner dying between the
// two left the partition to nobody (killed at step 2 below). After the
// move, x, demoted, refuses to take over should the coordinator name it
// again (rolled back).
func TestEveryMomentOfAMoveHasATaker(t *testing.T) {
	const p, ttl = Partition(0), time.Second
	steps := []string{
		"the hand-over entry shipped",
		"x applied it, and a batch after it",
		"y applied it and acked, the owner has not looked",
		"the owner named y",
		"a batch shipped after y was named",
		"y applied that batch",
		"x applied that batch (demoting it)",
		"another batch, acked by y",
	}
	for kill := range steps {
		t.Run(fmt.Sprintf("dies after %d %s", kill, steps[kill]), func(t *testing.T) {
			ctx := context.Background()
			now := time.Unix(1_700_000_000, 0)
			c := NewMemCoord(func() time.Time { return now })
			o, x, y := &simNode{id: "o"}, &simNode{id: "x"}, &simNode{id: "y"}
			epoch, ok, err := c.TakeLease(ctx, p, "o", 0, ttl)
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			if err := c.SetStandby(ctx, p, "x"); err != nil {
				t.Fatal(err)
			}
			owner := NewOwner(c, p, "o", epoch, 0, "x")
			sx := NewStandby(c, p, "x", simLog{x}, StandbyState{FenceEpoch: epoch, FenceOwner: "o"})
			x.hasState = true
			var acked []string // the batches the owner acknowledged
			n := 0
			write := func() {
				n++
				data := fmt.Appendf(nil, "batch %d", n)
				seq := uint64(len(o.log)) + 1
				o.log = append(o.log, Entry{Epoch: epoch, Owner: "o", Seq: seq, Data: data})
				if got, err := owner.Ship(ctx, data); err != nil || got != seq {
					t.Fatalf("ship: seq %d (want %d), %v", got, seq, err)
				}
			}
			poll := func() {
				through, err := owner.Poll(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range o.log[:through] {
					if len(e.Data) > 0 && !slices.Contains(acked, string(e.Data)) {
						acked = append(acked, string(e.Data))
					}
				}
			}
			step := func(s *Standby) {
				if _, err := s.Step(ctx, 100); err != nil {
					t.Fatal(err)
				}
			}
			for range 3 {
				write()
			}
			step(sx)
			poll()
			if len(acked) != 3 {
				t.Fatalf("acknowledged %q before the move, want 3 batches", acked)
			}
			// y follows a snapshot of the history so far, as a learner.
			y.log, y.hasState = append([]Entry(nil), o.log...), true
			sy := NewStandby(c, p, "y", simLog{y}, StandbyState{FenceEpoch: epoch, FenceOwner: "o", Seq: uint64(len(o.log)), Learner: true})

			moves := []func(){
				func() {
					seq, err := owner.ReplaceStandby(ctx, "y")
					if err != nil {
						t.Fatal(err)
					}
					o.log = append(o.log, Entry{Epoch: epoch, Owner: "o", Seq: seq, Standby: "y"})
				},
				func() { write(); step(sx); poll() },
				func() { step(sy) },
				func() {
					poll()
					if sb, _ := c.Standby(ctx, p); sb != "y" {
						t.Fatalf("the owner names %q once y acked the hand-over, want y", sb)
					}
				},
				func() { write(); poll() },
				func() {
					step(sy)
					poll()
					if slices.Contains(acked, "batch 5") {
						t.Fatal("batch 5 acknowledged while x, which may still take over, lacks it")
					}
				},
				func() {
					step(sx)
					poll()
					if !slices.Contains(acked, "batch 5") {
						t.Fatalf("batch 5 not acknowledged once x and y hold it: %q", acked)
					}
				},
				func() { write(); step(sy); poll() },
			}
			for i := 0; i <= kill; i++ {
				moves[i]()
			}

			// The owner dies: the lease lapses, and the node named takes over.
			now = now.Add(2 * ttl)
			named, err := c.Standby(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			taker, log := map[string]*Standby{"x": sx, "y": sy}[named], map[string]*simNode{"x": x, "y": y}[named]
			if taker == nil {
				t.Fatalf("the coordinator names %q", named)
			}
			step(taker) // catch up with the stream
			if _, err := taker.TakeOver(ctx, ttl); err != nil {
				t.Fatalf("%s, named, cannot take over: %v", named, err)
			}
			for _, b := range acked {
				if !holds(log, b) {
					t.Fatalf("%s took over without %q, acknowledged", named, b)
				}
			}
			if kill == len(steps)-1 {
				// The move completed: x may never take over again, even if
				// the coordinator named it (rolled back).
				if !sx.State().Demoted {
					t.Fatal("x is not demoted once the move completed")
				}
			}
		})
	}
}

func holds(n *simNode, data string) bool {
	for _, e := range n.log {
		if string(e.Data) == data {
			return true
		}
	}
	return false
}
