package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// TestOwnerOnlyAcknowledgesWithoutTheStandby is --ack-replicas 0: the
// owner acknowledges once a batch is on its own disk, while its standby
// is down (with ack-replicas 1 the same submit waits); the standby, back,
// catches up from the stream (AwaitStandby); once the owner is not sure
// of its lease, it acknowledges nothing more.
func TestOwnerOnlyAcknowledgesWithoutTheStandby(t *testing.T) {
	ctx := context.Background()
	c := cluster.NewMemCoord(time.Now)
	const p, ttl = cluster.Partition(0), time.Minute
	epoch, ok, err := c.TakeLease(ctx, p, "a", 0, ttl)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := c.SetStandby(ctx, p, "b"); err != nil {
		t.Fatal(err)
	}

	// ack-replicas 1, b not running: a submit waits for b. (Partition 1:
	// its batches must not enter partition 0's history.)
	e1, ok, err := c.TakeLease(ctx, 1, "a", 0, ttl)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	strict, err := cluster.NewReplicatedStore(openPebble(t, t.TempDir()), cluster.NewOwner(c, 1, "a", e1, 0, "b"))
	if err != nil {
		t.Fatal(err)
	}
	eStrict := openEngine(t, strict)
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = eStrict.Submit(wctx, engine.Submission{From: "u0", To: []string{"u1"}, Kind: engine.KindText, Body: []byte("waits")})
	cancel()
	if err == nil {
		t.Fatal("ack-replicas 1 acknowledged a batch its standby does not hold")
	}
	strict.Stop()
	_ = eStrict.Close()
	_ = strict.Close()

	// ack-replicas 0, b still not running: acknowledged.
	stA, stB := openPebble(t, t.TempDir()), openPebble(t, t.TempDir())
	defer stB.Close()
	rs, err := cluster.NewReplicatedStore(stA, cluster.NewOwner(c, p, "a", epoch, 0, "b"))
	if err != nil {
		t.Fatal(err)
	}
	rs.SetOwnerOnly(time.Now().Add(ttl))
	e := openEngine(t, rs)
	defer func() { _ = e.Close(); _ = rs.Close() }()
	acked := submitN(t, e, "owner-only", 200)
	if st := rs.Status(); st.Acked != 0 || st.Unacked == 0 {
		t.Fatalf("with the standby down: %+v, want nothing acked by it and batches waiting for a resend", st)
	}

	// b comes back and catches up from the stream.
	_, stopB := follow(t, c, p, "b", stB, cluster.StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = rs.AwaitStandby(actx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if st := rs.Status(); st.Unacked != 0 || st.Acked != st.Shipped {
		t.Fatalf("after the standby caught up: %+v", st)
	}
	stopB()
	eB := openEngine(t, stB)
	verify(t, eB, acked)
	_ = eB.Close()

	// Not sure of its lease (a renewal late): a submit waits, and is
	// acknowledged once the lease is renewed.
	rs.SetLeaseUntil(time.Now().Add(-time.Second))
	wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = e.Submit(wctx, engine.Submission{From: "u0", To: []string{"u1"}, Kind: engine.KindText, Body: []byte("lease unsure")})
	wcancel()
	if err == nil {
		t.Fatal("a submit past the lease's deadline was acknowledged")
	}
	rs.SetLeaseUntil(time.Now().Add(ttl))
	if _, err := e.Submit(ctx, engine.Submission{From: "u0", To: []string{"u1"}, Kind: engine.KindText, Body: []byte("renewed")}); err != nil {
		t.Fatalf("after the renewal: %v", err)
	}
}

// TestOwnerOnlyResendShipsTheBatchesAsCommitted: with --ack-replicas 0 a
// batch is answered, and its store batch closed and reused, before the
// standby holds it; when the stream lost the entry, the owner's resend
// must ship the batch as it was committed, not whatever the reused
// buffer holds by then. The stream loses every append while 200
// submits are acknowledged; the standby then catches up from resends
// alone and ends with exactly the owner's data.
func TestOwnerOnlyResendShipsTheBatchesAsCommitted(t *testing.T) {
	ctx := context.Background()
	c := cluster.NewMemCoord(time.Now)
	const p, ttl = cluster.Partition(0), time.Minute
	epoch, ok, err := c.TakeLease(ctx, p, "a", 0, ttl)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := c.SetStandby(ctx, p, "b"); err != nil {
		t.Fatal(err)
	}
	stA, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	stB, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer stB.Close()
	rs, err := cluster.NewReplicatedStore(stA, cluster.NewOwner(c, p, "a", epoch, 0, "b"))
	if err != nil {
		t.Fatal(err)
	}
	rs.ResendAfter = 20 * time.Millisecond
	rs.SetOwnerOnly(time.Now().Add(ttl))
	c.DropAppends = 1 << 30 // the stream loses every first shipment
	e := openEngine(t, rs)
	acked := submitN(t, e, "owner-only", 200)
	c.DropAppends = 0
	_, stopB := follow(t, c, p, "b", stB, cluster.StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
	actx, cancel := context.WithTimeout(ctx, 20*time.Second)
	err = rs.AwaitStandby(actx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	stopB()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	sameData(t, stB, stA)
	_ = rs.Close()
	eB := openEngine(t, stB)
	defer eB.Close()
	verify(t, eB, acked)
}

// TestFencedOwnerClosesItsStore: a batch applied to the owner's local
// log and then refused by the replication (the owner was fenced: a newer
// epoch acked) must still see Pebble's sync through before it is closed;
// otherwise Pebble's log writer is left broken and the store's Close
// crashes the process in Pebble's log rotation (a woken SIGSTOPped owner
// did, in cmd/dingd's TestClusterPartitionsPausedOwnerGetsNothingAcknowledged).
// The store then opens again with what was committed before.
func TestFencedOwnerClosesItsStore(t *testing.T) {
	ctx := context.Background()
	c := cluster.NewMemCoord(time.Now)
	const p = cluster.Partition(0)
	epoch, ok, err := c.TakeLease(ctx, p, "a", 0, time.Minute)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	dir := t.TempDir()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	before := db.NewBatch()
	before.Set([]byte("k0"), []byte("before the fence"))
	if err := before.Commit(true); err != nil {
		t.Fatal(err)
	}
	owner := cluster.NewOwner(c, p, "a", epoch, 0, "b")
	if err := c.PutAck(ctx, p, cluster.Ack{Standby: "b", Epoch: epoch + 1, Seq: 0, Owner: "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Poll(ctx); !errors.Is(err, cluster.ErrFenced) {
		t.Fatalf("the owner after a newer epoch's ack: %v, want ErrFenced", err)
	}
	rs, err := cluster.NewReplicatedStore(db, owner)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		b := rs.NewBatch()
		b.Set([]byte(fmt.Sprintf("k%d", i+1)), []byte("after the fence"))
		if err := b.Commit(true); !errors.Is(err, cluster.ErrFenced) {
			t.Fatalf("a batch of the fenced owner: %v, want ErrFenced", err)
		}
		b.Close()
	}
	if err := rs.Close(); err != nil {
		t.Fatalf("closing the fenced owner's store: %v", err)
	}
	db, err = pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v, err := db.Get([]byte("k0")); err != nil || string(v) != "before the fence" {
		t.Fatalf("k0 after reopening: %q %v", v, err)
	}
}
