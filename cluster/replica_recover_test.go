package cluster_test

import (
	"errors"
	"testing"

	"github.com/dingmq/ding/cluster"
)

// TestRecoveryChoice: the newest epoch's owner if it answered with its
// history; else the longest history fenced at that epoch; never a member
// fenced at an older epoch, whatever its length; nobody while a member
// serves or none holds a history.
func TestRecoveryChoice(t *testing.T) {
	h := func(m string, epoch uint64, owner string, seq uint64) cluster.Fence {
		return cluster.Fence{Member: m, Held: true, Epoch: epoch, Owner: owner, Seq: seq}
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
	} {
		got, err := cluster.RecoveryChoice(c.fences)
		if err != nil || got != c.want {
			t.Errorf("%s: %q %v, want %q", c.name, got, err, c.want)
		}
	}
	for _, fs := range [][]cluster.Fence{
		{h("a", 5, "a", 10), {Member: "b", Held: true, Epoch: 5, Owner: "b", Serving: true}},
		{{Member: "a"}, {Member: "b"}},
	} {
		if got, err := cluster.RecoveryChoice(fs); !errors.Is(err, cluster.ErrNoRecovery) {
			t.Errorf("%+v: %q %v, want ErrNoRecovery", fs, got, err)
		}
	}
}
