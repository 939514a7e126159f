package cluster_test

import (
	"errors"
	"testing"

	"github.com/dingmq/ding/cluster"
)

// TestRecoveryChoice: the newest epoch's owner if it answered with its
// history; else the longest history fenced at that epoch; never a member
// fenced at an older epoch, whatever its length; nobody while a member
// serves or none holds a history. An owner whose epoch nothing was
// acknowledged at (Unreplicated) counts by the history it took over with.
func TestRecoveryChoice(t *testing.T) {
	h := func(m string, epoch uint64, owner string, seq uint64) cluster.Fence {
		return cluster.Fence{Member: m, Held: true, Epoch: epoch, Owner: owner, Seq: seq, KeepsUnreplicated: true}
	}
	for _, c := range []struct {
		name   string
		fences []cluster.Fence
		want   string
	}{
		{"the owner of the newest epoch", []cluster.Fence{h("a", 5, "a", 10), h("b", 5, "a", 900), {Member: "c"}}, "a"},
		{"its standby, the owner's disk lost", []cluster.Fence{{Member: "a"}, h("b", 5, "a", 900), h("c", 5, "a", 300)}, "b"},
		{"not an older epoch's longer history", []cluster.Fence{h("a", 3, "a", 5000), h("b", 5, "b", 7), h("c", 4, "c", 4000)}, "b"},
		{"ties: the smallest id", []cluster.Fence{h("c", 5, "x", 9), h("b", 5, "x", 9)}, "b"},
		// A new owner once acknowledged at (its record erased) counts by
		// its epoch.
		{"a new owner acknowledged at", []cluster.Fence{h("a", 1, "a", 10), h("b", 2, "b", 2), h("c", 1, "a", 10)}, "b"},
		// With a member of a build before the record, every member
		// chooses by the rule before it: the newest epoch's owner.
		{"a member of an older build", []cluster.Fence{h("a", 1, "a", 10), unrepl(h("b", 2, "b", 2), 1, "a", 0), old(h("c", 1, "a", 10))}, "b"},
		// a shipped 11 and lost it before its fsync; b took over with it
		// and its engine took it for durable: not a, which lacks it.
		{"not a deposed owner that lost what it shipped", []cluster.Fence{h("a", 1, "a", 10), unrepl(h("b", 2, "b", 11), 1, "a", 11), h("c", 1, "a", 9)}, "b"},
		// b took over at 2 and c at 3 from it, nothing acknowledged at
		// either; a, the owner at 1 again, acknowledged through 20 with
		// d: a, or d, by the chain of records.
		{"two new owners in a row", []cluster.Fence{h("a", 1, "a", 20), unrepl(h("b", 2, "b", 10), 1, "a", 10), unrepl(h("c", 3, "c", 10), 2, "b", 10), h("d", 1, "a", 20)}, "a"},
		{"two new owners in a row, a's disk lost", []cluster.Fence{{Member: "a"}, unrepl(h("b", 2, "b", 10), 1, "a", 10), unrepl(h("c", 3, "c", 10), 2, "b", 10), h("d", 1, "a", 20)}, "d"},
		// b took over at 2 and stopped before anything reached a
		// standby; the coordinator rolled back past its takeover and a,
		// the owner at 1 again, acknowledged through 10 with c: not b.
		{"the deposed owner over a new one nothing was acknowledged at", []cluster.Fence{h("a", 1, "a", 10), unrepl(h("b", 2, "b", 2), 1, "a", 0), h("c", 1, "a", 10)}, "a"},
		{"its standby, the deposed owner's disk lost too", []cluster.Fence{{Member: "a"}, unrepl(h("b", 2, "b", 2), 1, "a", 0), h("c", 1, "a", 10)}, "c"},
		// b took over at 2 with a's history through 10, a's disk lost; c
		// was a's standby until dropped at 5: b, by the history it took.
		{"a new owner by the history it took over with", []cluster.Fence{{Member: "a"}, unrepl(h("b", 2, "b", 12), 1, "a", 10), h("c", 1, "a", 5)}, "b"},
		// A standby that joined b from its snapshot counts by b's
		// history as b took it over, as b does: a is chosen, then c
		// (holding a's history through 10) if a's disk is lost.
		{"a new owner's standby, nothing acknowledged", []cluster.Fence{h("a", 1, "a", 10), unrepl(h("b", 2, "b", 12), 1, "a", 10), h("c", 2, "b", 12)}, "a"},
		{"a new owner's standby, the deposed owner's disk lost", []cluster.Fence{{Member: "a"}, unrepl(h("b", 2, "b", 12), 1, "a", 10), h("c", 2, "b", 12)}, "b"},
		// Four nodes: c joined b at 2 and refuses a's entries; the
		// coordinator rolled back past b's takeover and a acknowledged
		// through 20 with d. Not c, whose fence is newer: a, or d.
		{"four nodes: the deposed owner", []cluster.Fence{h("a", 1, "a", 20), unrepl(h("b", 2, "b", 12), 1, "a", 10), h("c", 2, "b", 12), h("d", 1, "a", 20)}, "a"},
		{"four nodes: the deposed owner's standby", []cluster.Fence{{Member: "a"}, unrepl(h("b", 2, "b", 12), 1, "a", 10), h("c", 2, "b", 12), h("d", 1, "a", 20)}, "d"},
		// Once b counted an ack at 2 its record is gone: its epoch counts.
		{"a new owner once acknowledged at", []cluster.Fence{h("a", 1, "a", 10), h("b", 2, "b", 12), h("c", 2, "b", 12)}, "b"},
	} {
		got, err := cluster.RecoveryChoice(c.fences)
		if err != nil || got != c.want {
			t.Errorf("%s: %q %v, want %q", c.name, got, err, c.want)
		}
	}
	for _, fs := range [][]cluster.Fence{
		{h("a", 5, "a", 10), {Member: "b", Held: true, Epoch: 5, Owner: "b", Serving: true}},
		{{Member: "a"}, {Member: "b"}},
		// c went stale at b's epoch 2, and b's disk is lost: 2 was
		// seen, and nobody who answered holds its history
		{h("a", 1, "a", 10), {Member: "b"}, {Member: "c", Held: true, Epoch: 2, Owner: "b", Seq: 0, Stale: true}},
		// the same though b reports nothing acknowledged at 2: a stale
		// node's history is of an older owner, which it does not name
		// (a itself, stale at 2, may be the one holding a's history)
		{{Member: "a", Held: true, Epoch: 2, Owner: "b", Seq: 10, Stale: true, KeepsUnreplicated: true}, unrepl(h("b", 2, "b", 2), 1, "a", 0), {Member: "c"}},
	} {
		if got, err := cluster.RecoveryChoice(fs); !errors.Is(err, cluster.ErrNoRecovery) {
			t.Errorf("%+v: %q %v, want ErrNoRecovery", fs, got, err)
		}
	}
}

// unrepl marks f, an owner's own fence, as one nothing was acknowledged
// at, taken over from epoch/owner through seq.
func unrepl(f cluster.Fence, epoch uint64, owner string, seq uint64) cluster.Fence {
	f.Unreplicated, f.TookEpoch, f.TookOwner, f.TookSeq = true, epoch, owner, seq
	return f
}

// old is f as a member of a build before the unreplicated record reports
// it.
func old(f cluster.Fence) cluster.Fence {
	f.KeepsUnreplicated = false
	return f
}
