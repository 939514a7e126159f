package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/redistest"
)

// A new owner's disk records its epoch as one nothing was acknowledged
// at (cluster.OwnerLog), with the history it took over with, until its
// standby's first ack is counted; a member reports it (Follower.Fence),
// and a recovery counts it by that history. On real Pebble and a real
// redis-server: b takes a's partition over, reports itself unreplicated
// (so that a, which holds the same history and may have been handed the
// lease back by a coordinator rolled back, would be chosen over it); a
// snapshot does not carry the record to c; the first batch c holds
// erases it from b's disk before it is acknowledged.
func TestANewOwnersEpochIsUnreplicatedUntilItsStandbyAcks(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr})
	defer rdb.Close()
	c := cluster.NewRedisCoord(rdb)
	const p, ttl = cluster.Partition(0), 500 * time.Millisecond
	stA, stB := openPebble(t, t.TempDir()), openPebble(t, t.TempDir())
	defer stA.Close()
	defer stB.Close()
	rsA, epoch, stopA := leasedOwner(t, c, p, "a", "b", stA, ttl)
	fB, stopB := follow(t, c, p, "b", stB, cluster.StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
	commitN(t, rsA, "a", 5)
	shipped := rsA.Status().Shipped

	stopA() // a dies
	ownerB := takeOver(t, fB, ttl)
	stopB()
	rsA.Stop() // its store stays open: a's disk, read below
	wantTook := cluster.Fence{Member: "b", Held: true, Epoch: ownerB.Epoch(), Owner: "b", Seq: shipped,
		Unreplicated: true, TookEpoch: epoch, TookOwner: "a", TookSeq: shipped, KeepsUnreplicated: true}
	if got := fenceOf(t, c, p, "b", stB); !reflect.DeepEqual(got, wantTook) {
		t.Fatalf("b's fence after its takeover: %+v, want %+v", got, wantTook)
	}
	aFence := fenceOf(t, c, p, "a", stA)
	if got, err := cluster.RecoveryChoice([]cluster.Fence{aFence, wantTook}); err != nil || got != "a" {
		t.Fatalf("a recovery over a's fence %+v and b's: %q %v, want a (b acknowledged nothing at %d)", aFence, got, err, ownerB.Epoch())
	}

	// b serves; c joins from its snapshot.
	stopRenew := renew(t, c, p, "b", ownerB.Epoch(), ttl)
	defer stopRenew()
	rsB, err := cluster.NewReplicatedStore(stB, ownerB)
	if err != nil {
		t.Fatal(err)
	}
	defer rsB.Close()
	dirC := filepath.Join(t.TempDir(), "c")
	stateC, err := rsB.Snapshot(dirC)
	if err != nil {
		t.Fatal(err)
	}
	stC := openPebble(t, dirC)
	defer stC.Close()
	if _, err := stC.Get(cluster.UnreplicatedKey(p)); err != nil {
		t.Fatalf("the snapshot should hold b's record until c installs it: %v", err)
	}
	fC, err := cluster.NewFollowerFromSnapshot(c, p, "c", stC, stateC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stC.Get(cluster.UnreplicatedKey(p)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("c kept the record its snapshot copied from b: %v", err)
	}
	stopC := run(t, fC, 20*time.Millisecond)
	defer stopC()
	if err := rsB.AddStandby(ctx, c, "c"); err != nil {
		t.Fatal(err)
	}
	if got := fenceOf(t, c, p, "b", stB); !got.Unreplicated {
		t.Fatalf("b's record went before c acked anything: %+v", got)
	}
	commitN(t, rsB, "b", 1) // returns once c holds it: acknowledged
	if _, err := stB.Get(cluster.UnreplicatedKey(p)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("b acknowledged a batch at epoch %d with its record still on disk: %v", ownerB.Epoch(), err)
	}
	if got := fenceOf(t, c, p, "b", stB); got.Unreplicated || got.Epoch != ownerB.Epoch() || got.Owner != "b" {
		t.Fatalf("b's fence once c acked: %+v", got)
	}
}

// With owner-only durability (--ack-replicas 0) an owner acknowledges
// without its standby: its record goes before the first batch it
// acknowledges, not before (a deposed owner that serves again after a
// coordinator's rollback still counts by it until then).
func TestOwnerOnlyErasesTheUnreplicatedRecordBeforeItsFirstAck(t *testing.T) {
	c := cluster.NewMemCoord(time.Now)
	const p, ttl = cluster.Partition(3), 200 * time.Millisecond
	stB, ownerB := bTakesOver(t, c, p, ttl)
	defer stB.Close()
	if got := fenceOf(t, c, p, "b", stB); !got.Unreplicated {
		t.Fatalf("b's fence after its takeover: %+v", got)
	}
	rsB, err := cluster.NewReplicatedStore(stB, ownerB)
	if err != nil {
		t.Fatal(err)
	}
	defer rsB.Close()
	rsB.SetOwnerOnly(time.Now().Add(time.Hour))
	if got := fenceOf(t, c, p, "b", stB); !got.Unreplicated {
		t.Fatalf("owner-only b erased its record before acknowledging anything: %+v", got)
	}
	commitN(t, rsB, "b", 1) // acknowledged alone
	if got := fenceOf(t, c, p, "b", stB); got.Unreplicated {
		t.Fatalf("owner-only b acknowledged a batch with its record on disk: %+v", got)
	}
}

// fenceOf is what node's store says of p (a member's report to a
// recovery), read as a member that does not follow reads it.
func fenceOf(t *testing.T, c cluster.Coord, p cluster.Partition, node string, st *pebblestore.DB) cluster.Fence {
	t.Helper()
	f, err := cluster.NewFollower(c, p, node, st, cluster.StandbyState{})
	if err != nil {
		t.Fatal(err)
	}
	return f.Fence(node)
}

// commitN commits n one-key batches through rs, each returning once
// acknowledged.
func commitN(t *testing.T, rs *cluster.ReplicatedStore, tag string, n int) {
	t.Helper()
	for i := range n {
		b := rs.NewBatch()
		b.Set(fmt.Appendf(nil, "%s%04d", tag, i), []byte("v"))
		if err := b.Commit(true); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
}
