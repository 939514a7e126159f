package cluster_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
)

// TestStandbyFromASnapshotStartsAtTheSnapshot: a new standby seeded from
// the snapshot of an owner that took over (so its store holds the state
// it took over with) starts from the snapshot's state, not that older one
// in the copied store: it would wait for entries from before the
// snapshot, which the bounded stream no longer holds, and never ack.
func TestStandbyFromASnapshotStartsAtTheSnapshot(t *testing.T) {
	ctx := context.Background()
	c := cluster.NewMemCoord(time.Now)
	c.StreamKeep = 64
	const p, ttl = cluster.Partition(0), 200 * time.Millisecond
	// a founds; b follows it; a dies at once; b takes over.
	stB, ownerB := bTakesOver(t, c, p, ttl)
	defer stB.Close()
	stopRenew := renew(t, c, p, "b", ownerB.Epoch(), ttl)
	defer stopRenew()
	rsB, err := cluster.NewReplicatedStore(stB, ownerB)
	if err != nil {
		t.Fatal(err)
	}
	rsB.SetOwnerOnly(time.Now().Add(time.Hour)) // acknowledged alone while no standby
	for i := range 200 {                        // far more batches than the stream keeps
		b := rsB.NewBatch()
		b.Set(fmt.Appendf(nil, "k%04d", i), []byte("v"))
		if err := b.Commit(true); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	dirC := filepath.Join(t.TempDir(), "c")
	stateC, err := rsB.Snapshot(dirC)
	if err != nil {
		t.Fatal(err)
	}
	stC := openPebble(t, dirC)
	defer stC.Close()
	fC, err := cluster.NewFollowerFromSnapshot(c, p, "c", stC, stateC)
	if err != nil {
		t.Fatal(err)
	}
	fctx, stopC := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = fC.Run(fctx, 20*time.Millisecond) }()
	defer func() { stopC(); <-done }()
	if err := rsB.AddStandby(ctx, c, "c"); err != nil {
		t.Fatal(err)
	}
	b := rsB.NewBatch()
	b.Set([]byte("after"), []byte("v"))
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rsB.AwaitStandby(actx); err != nil {
		t.Fatalf("the new standby did not catch up: %v (%+v)", err, rsB.Status())
	}
	// c is dropped; a node that follows from an older snapshot (one that
	// lost the race for the place, asking again) is refused: it lacks
	// batches c acknowledged. One from a snapshot holding them all is not.
	if err := rsB.DropStandby(ctx, c); err != nil {
		t.Fatal(err)
	}
	acked := rsB.Status().Acked
	if err := rsB.AddStandbyAt(ctx, c, "d", cluster.StandbyState{FenceEpoch: ownerB.Epoch(), Seq: acked - 1}); err == nil {
		t.Fatalf("a snapshot through %d became the standby of an owner that acknowledged through %d", acked-1, acked)
	}
	if err := rsB.AddStandbyAt(ctx, c, "d", cluster.StandbyState{FenceEpoch: ownerB.Epoch() - 1, Seq: acked}); err == nil {
		t.Fatal("a snapshot of an older owner became the standby")
	}
	if err := rsB.AddStandbyAt(ctx, c, "d", cluster.StandbyState{FenceEpoch: ownerB.Epoch(), Seq: acked}); err != nil {
		t.Fatalf("a snapshot holding every acknowledged batch: %v", err)
	}
	_ = rsB.Close()
}
