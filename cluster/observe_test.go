package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// observerOf is an observer whose copy is in its own Pebble.
type observerOf struct {
	db  *pebblestore.DB
	obs *cluster.Observer
}

func newObserver(t *testing.T, c cluster.Coord, p cluster.Partition, dir string, snap *cluster.StandbyState) *observerOf {
	t.Helper()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f, err := cluster.NewFollower(c, p, "observer", db, cluster.StandbyState{})
	if err != nil {
		t.Fatal(err)
	}
	if snap != nil {
		return &observerOf{db, cluster.NewObserverFromSnapshot(f, *snap)}
	}
	return &observerOf{db, cluster.NewObserver(f, f.Standby().State())}
}

// catchUp fetches and applies the owner's changes until the copy holds
// everything the owner's standby holds.
func (o *observerOf) catchUp(t *testing.T, srv *httptest.Server) cluster.Changes {
	t.Helper()
	for range 1000 {
		ch, err := cluster.FetchChanges(context.Background(), srv.Client(), srv.URL, obsSecret, o.obs.State().Seq, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := o.obs.Apply(ch); err != nil {
			t.Fatal(err)
		}
		if o.obs.State().Seq == ch.Acked && len(ch.Entries) == 0 {
			return ch
		}
	}
	t.Fatal("the observer never caught up")
	return cluster.Changes{}
}

const obsSecret = "observer-secret"

// joinFromSnapshot makes node the standby of the owner srv serves: it
// fetches the owner's snapshot, follows from it (until the test ends)
// and asks the owner to name it.
func joinFromSnapshot(t *testing.T, c cluster.Coord, p cluster.Partition, node string, srv *httptest.Server) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), node)
	st, err := cluster.FetchSnapshot(context.Background(), srv.Client(), srv.URL, obsSecret, dir)
	if err != nil {
		t.Fatal(err)
	}
	db, err := pebblestore.Open(filepath.Join(dir, "store"), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, stop := follow(t, c, p, node, db, st)
	t.Cleanup(func() { stop(); db.Close() })
	if err := cluster.RequestStandby(context.Background(), srv.Client(), srv.URL, obsSecret, node, st); err != nil {
		t.Fatal(err)
	}
}

// ownerPair is an owner a of p (its lease renewed, its ReplicatedStore
// on Pebble keeping 1 MiB for observers) and its standby b following it
// into a Pebble of its own.
type ownerPair struct {
	epoch     uint64
	stopRenew func()
	rsA       *cluster.ReplicatedStore
	stB       *pebblestore.DB
	fB        *cluster.Follower
	stopB     func()
}

func ownerAndStandby(t *testing.T, c cluster.Coord, p cluster.Partition, ttl time.Duration) ownerPair {
	t.Helper()
	ctx := context.Background()
	epoch, ok, err := c.TakeLease(ctx, p, "a", 0, ttl)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	stopRenew := renew(t, c, p, "a", epoch, ttl)
	if err := c.SetStandby(ctx, p, "b"); err != nil {
		t.Fatal(err)
	}
	stA, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rsA, err := cluster.NewReplicatedStore(stA, cluster.NewOwner(c, p, "a", epoch, 0, "b"))
	if err != nil {
		t.Fatal(err)
	}
	rsA.KeepRecent(1 << 20)
	stB, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stB.Close() })
	fB, stopB := follow(t, c, p, "b", stB, cluster.StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
	return ownerPair{epoch, stopRenew, rsA, stB, fB, stopB}
}

// sameData checks that every key of the observer's copy (but the
// follower's state) is in want with the same value, and the reverse.
func sameData(t *testing.T, got, want *pebblestore.DB) {
	t.Helper()
	all := func(db *pebblestore.DB) map[string][]byte {
		m := map[string][]byte{}
		if err := db.Scan([]byte{0}, []byte{0xff}, func(k, v []byte) bool {
			m[string(k)] = bytes.Clone(v)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		return m
	}
	g, w := all(got), all(want)
	for k, v := range w {
		if !bytes.Equal(g[k], v) {
			t.Fatalf("key %q: observer %q, owner %q", k, g[k], v)
		}
	}
	if len(g) != len(w) {
		t.Fatalf("the observer holds %d keys, the owner %d", len(g), len(w))
	}
}

// TestObserverSeesOnlyWhatTheStandbyHolds: an observer pulls the owner's
// changes over HTTP into its own Pebble and ends with the owner's data;
// an entry the standby does not hold is never handed out; an observer
// that starts from a snapshot holding such an entry is not Confirmed,
// and after the owner dies (the entry lost with it) the new owner's
// answer is refused (ErrSnapshotUnconfirmed), while the observer that
// read only acknowledged changes follows the new owner as it is; an
// observer further behind than the owner keeps gets ErrChangesTrimmed;
// a request without the secret gets 401.
func TestObserverSeesOnlyWhatTheStandbyHolds(t *testing.T) {
	ctx := context.Background()
	c := cluster.NewMemCoord(time.Now)
	const p, ttl = cluster.Partition(3), time.Second
	pr := ownerAndStandby(t, c, p, ttl)
	epoch, stopRenew, rsA, stB, fB, stopB := pr.epoch, pr.stopRenew, pr.rsA, pr.stB, pr.fB, pr.stopB
	var err error
	engA := openEngine(t, rsA)
	srvA := httptest.NewServer(cluster.SnapshotHandler(rsA, c, obsSecret, t.TempDir()))
	defer srvA.Close()

	if _, err := cluster.FetchChanges(ctx, srvA.Client(), srvA.URL, "wrong", 0, 0); err == nil || !bytes.Contains([]byte(err.Error()), []byte("401")) {
		t.Fatalf("changes with a wrong secret: %v, want 401", err)
	}
	acked := submitN(t, engA, "a", 40)
	o := newObserver(t, c, p, t.TempDir(), nil)
	ch := o.catchUp(t, srvA)
	if ch.Epoch != epoch || ch.Owner != "a" || !o.obs.Confirmed() {
		t.Fatalf("caught up with %+v, confirmed %v", ch, o.obs.Confirmed())
	}

	// The standby stops reading: a submit is shipped, not acknowledged.
	stopB()
	heldByB := fB.Standby().State().Seq
	if heldByB != o.obs.State().Seq {
		t.Fatalf("the standby holds %d, the observer %d", heldByB, o.obs.State().Seq)
	}
	pending := make(chan error, 1)
	go func() {
		_, err := engA.Submit(ctx, engine.Submission{From: "u0", To: []string{"u1"}, Kind: engine.KindText, Body: []byte("never acknowledged")})
		pending <- err
	}()
	for rsA.Status().Shipped <= heldByB {
		time.Sleep(time.Millisecond) // the commit loop ships it; nothing signals that
	}
	ch, err = cluster.FetchChanges(ctx, srvA.Client(), srvA.URL, obsSecret, o.obs.State().Seq, 50*time.Millisecond)
	if err != nil || len(ch.Entries) != 0 || ch.Acked != heldByB {
		t.Fatalf("changes past what the standby holds: %+v, %v", ch, err)
	}
	snapDir := filepath.Join(t.TempDir(), "snap")
	snap, err := cluster.FetchSnapshot(ctx, srvA.Client(), srvA.URL, obsSecret, snapDir)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Seq <= heldByB {
		t.Fatalf("the snapshot holds through %d, the standby %d: the test needs an unacknowledged entry in it", snap.Seq, heldByB)
	}
	o2 := newObserver(t, c, p, filepath.Join(snapDir, "store"), &snap)
	ch, err = cluster.FetchChanges(ctx, srvA.Client(), srvA.URL, obsSecret, o2.obs.State().Seq, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o2.obs.Apply(ch); err != nil || o2.obs.Confirmed() {
		t.Fatalf("a snapshot past the standby's ack: confirmed %v, %v", o2.obs.Confirmed(), err)
	}

	// A dies; B takes over without the pending entry.
	stopRenew()
	rsA.Stop() // as a member that loses its lease: the waiting batch fails
	_ = engA.Close()
	_ = rsA.Close()
	srvA.Close()
	if err := <-pending; err == nil {
		t.Fatal("the submit the standby never held was acknowledged")
	}
	ownerB := takeOver(t, fB, ttl)
	rsB, err := cluster.NewReplicatedStore(stB, ownerB)
	if err != nil {
		t.Fatal(err)
	}
	rsB.KeepRecent(1 << 20)
	srvB := httptest.NewServer(cluster.SnapshotHandler(rsB, c, obsSecret, t.TempDir()))
	defer srvB.Close()
	ch, err = cluster.FetchChanges(ctx, srvB.Client(), srvB.URL, obsSecret, o2.obs.State().Seq, 0)
	if err == nil {
		_, err = o2.obs.Apply(ch)
	}
	if !errors.Is(err, cluster.ErrChangesTrimmed) {
		t.Fatalf("the unconfirmed snapshot's copy against the new owner: %v, want ErrChangesTrimmed (its seq is beyond B's history)", err)
	}
	// Even an answer from B that would fit is refused: the copy holds an
	// entry B does not.
	if _, err := o2.obs.Apply(cluster.Changes{Epoch: ownerB.Epoch(), Owner: "b", Acked: snap.Seq}); !errors.Is(err, cluster.ErrSnapshotUnconfirmed) {
		t.Fatalf("the unconfirmed snapshot's copy given B's answer: %v, want ErrSnapshotUnconfirmed", err)
	}
	// B has no standby yet: its history is on B alone, and it hands
	// none of it out (the observer keeps what it has).
	ch, err = cluster.FetchChanges(ctx, srvB.Client(), srvB.URL, obsSecret, o.obs.State().Seq, 0)
	if err != nil || len(ch.Entries) != 0 || ch.Acked != 0 || ch.Owner != "b" {
		t.Fatalf("a new owner without a standby answered %+v, %v", ch, err)
	}
	if _, err := o.obs.Apply(ch); err != nil || o.obs.State().Seq != heldByB {
		t.Fatalf("applying an empty answer: %v, state %+v", err, o.obs.State())
	}
	sameData(t, o.db, stB)

	// C joins as B's standby from its snapshot; B acknowledges again,
	// and the observer follows B from where it was, without a snapshot.
	joinFromSnapshot(t, c, p, "c", srvB)
	stopRenewB := renew(t, c, p, "b", ownerB.Epoch(), ttl)
	defer stopRenewB()
	engB := openEngine(t, rsB)
	defer engB.Close()
	acked = append(acked, submitN(t, engB, "b", 20)...)
	ch = o.catchUp(t, srvB)
	if ch.Owner != "b" || ch.Epoch != ownerB.Epoch() || o.obs.State().Seq <= heldByB {
		t.Fatalf("following the new owner: %+v, state %+v", ch, o.obs.State())
	}
	if st := rsB.Status(); st.Shipped != o.obs.State().Seq {
		t.Fatalf("B shipped through %d, the observer holds %d", st.Shipped, o.obs.State().Seq)
	}
	sameData(t, o.db, stB)

	// An observer from the start is further behind than B keeps (it
	// shipped nothing before its takeover).
	o3 := newObserver(t, c, p, t.TempDir(), nil)
	if _, err := cluster.FetchChanges(ctx, srvB.Client(), srvB.URL, obsSecret, o3.obs.State().Seq, 0); !errors.Is(err, cluster.ErrChangesTrimmed) {
		t.Fatalf("an observer at 0 against an owner that keeps nothing older: %v, want ErrChangesTrimmed", err)
	}
	verify(t, engB, acked)
}

// An observer that had not read the last acknowledged entries when the
// owner died reads them from the new owner's memory (what it applied as
// the standby, Standby.KeepRecent), once the new owner's standby holds
// them, instead of starting again from a snapshot (ErrChangesTrimmed, as
// before the standby kept them), and ends with the new owner's data.
func TestObserverBehindATakeoverReadsTheNewOwnersMemory(t *testing.T) {
	c := cluster.NewMemCoord(time.Now)
	const p, ttl = cluster.Partition(5), time.Second
	pr := ownerAndStandby(t, c, p, ttl)
	epoch, stopRenew, rsA, stB, fB, stopB := pr.epoch, pr.stopRenew, pr.rsA, pr.stB, pr.fB, pr.stopB
	var err error
	fB.Standby().KeepRecent(1 << 20)
	engA := openEngine(t, rsA)
	srvA := httptest.NewServer(cluster.SnapshotHandler(rsA, c, obsSecret, t.TempDir()))
	acked := submitN(t, engA, "a", 20)
	o := newObserver(t, c, p, t.TempDir(), nil)
	o.catchUp(t, srvA)
	behind := o.obs.State().Seq
	acked = append(acked, submitN(t, engA, "a", 20)...) // acknowledged: b holds them; the observer does not read them
	// A dies; B takes over once it holds everything A acknowledged.
	stopRenew()
	_ = engA.Close()
	rsA.Stop()
	_ = rsA.Close()
	srvA.Close()
	stopB() // b holds every acknowledged entry already: A acknowledged each once b acked it
	ownerB := takeOver(t, fB, ttl)
	if ownerB.Epoch() <= epoch {
		t.Fatalf("b took over at epoch %d", ownerB.Epoch())
	}
	rsB, err := cluster.NewReplicatedStore(stB, ownerB)
	if err != nil {
		t.Fatal(err)
	}
	rsB.KeepRecent(1 << 20)
	srvB := httptest.NewServer(cluster.SnapshotHandler(rsB, c, obsSecret, t.TempDir()))
	defer srvB.Close()
	// C joins as B's standby; once it acks, B hands the observer what it
	// missed.
	joinFromSnapshot(t, c, p, "c", srvB)
	stopRenewB := renew(t, c, p, "b", ownerB.Epoch(), ttl)
	defer stopRenewB()
	engB := openEngine(t, rsB)
	defer engB.Close()
	acked = append(acked, submitN(t, engB, "b", 8)...)
	ch := o.catchUp(t, srvB)
	if ch.Owner != "b" || o.obs.State().Seq <= behind {
		t.Fatalf("the observer behind the takeover (at %d): %+v, state %+v", behind, ch, o.obs.State())
	}
	sameData(t, o.db, stB)
	verify(t, engB, acked)
}
