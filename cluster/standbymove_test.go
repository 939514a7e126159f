package cluster_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// A standby place moves through the history (ReplaceStandbyAt), under
// writes, on a real redis-server: c fetches a snapshot and follows as a
// learner, then asks for b's place; the answer comes once c acked the
// hand-over entry (the coordinator names c) and b applied the entry
// after, which demotes it (it can no longer take over). The coordinator names a standby at
// every moment of the move, writes are acknowledged before, during and
// after it, and when the owner dies c takes over with every
// acknowledged message.
func TestStandbyPlaceMovesThroughTheHistory(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr})
	defer rdb.Close()
	c := cluster.NewRedisCoord(rdb)
	const p, ttl, secret = cluster.Partition(0), time.Second, "s3cret"

	stA, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rsA, epoch, stopRenew := leasedOwner(t, c, p, "a", "", stA, ttl)
	engA := openEngine(t, rsA)
	srv := httptest.NewServer(cluster.SnapshotHandler(rsA, c, secret, t.TempDir()))
	defer srv.Close()
	ep := cluster.Endpoint{Client: srv.Client(), URL: srv.URL, Secret: secret, P: p}

	// join fetches a snapshot into a new store and follows it.
	join := func(node string) (*cluster.Follower, func(), *pebblestore.DB, cluster.StandbyState) {
		f, db, st := joinSnapshot(t, ep, c, node)
		return f, run(t, f, 20*time.Millisecond), db, st
	}
	fB, _, _, stB := join("b")
	if err := ep.RequestStandby(ctx, "b", stB); err != nil {
		t.Fatal(err)
	}
	acked := submitN(t, engA, "before", 40)

	// c follows as a learner while writes go on; its acks do not count.
	fC, stopC, dbC, stC := join("c")
	if err := ep.RequestStandbyPlace(ctx, "c", "x", stC); !errors.Is(err, cluster.ErrStandbyRefused) || !strings.Contains(err.Error(), "409") {
		t.Fatalf("taking the place of x, not the standby: %v, want 409", err)
	}
	if err := ep.RequestStandbyPlace(ctx, "c", "b", cluster.StandbyState{FenceEpoch: epoch + 7, Seq: stC.Seq}); !errors.Is(err, cluster.ErrStandbyRefused) {
		t.Fatalf("a snapshot of another epoch: %v, want refused", err)
	}
	if sb, _ := c.Standby(ctx, p); sb != "b" {
		t.Fatalf("standby %q after refused moves, want b", sb)
	}

	// The coordinator names b or c at every read during the move.
	watchDone, watchStop, watching := make(chan []string), make(chan struct{}), make(chan struct{})
	go func() {
		var seen []string
		for i := 0; ; i++ {
			if i == 1 {
				close(watching) // read once before the move starts
			}
			select {
			case <-watchStop:
				watchDone <- seen
				return
			default:
			}
			if sb, err := c.Standby(ctx, p); err == nil && (len(seen) == 0 || seen[len(seen)-1] != sb) {
				seen = append(seen, sb)
			}
		}
	}()
	<-watching
	during := make(chan []sent)
	go func() { during <- submitN(t, engA, "during", 40) }()
	if err := ep.RequestStandbyPlace(ctx, "c", "b", stC); err != nil {
		t.Fatal(err)
	}
	acked = append(acked, <-during...)
	close(watchStop)
	if seen := <-watchDone; strings.Join(seen, ",") != "b,c" {
		t.Fatalf("the coordinator named %q during the move, want b then c", seen)
	}
	if err := ep.RequestStandbyPlace(ctx, "c", "b", stC); err != nil {
		t.Fatalf("asking again once named: %v", err)
	}
	if st := rsA.Status(); st.Standby != "c" || st.HandingTo != "" || st.Leaving != "" {
		t.Fatalf("owner's status %+v, want standby c, no move", st)
	}
	if !fB.Standby().State().Demoted {
		t.Fatal("b applied the hand-over and is not demoted")
	}
	if _, err := fB.Standby().TakeOver(ctx, ttl); !errors.Is(err, cluster.ErrNotStandby) {
		t.Fatalf("b taking over after the move: %v, want ErrNotStandby", err)
	}
	acked = append(acked, submitN(t, engA, "after", 40)...)

	// The owner dies; c, the standby now, takes over with everything.
	stopRenew()
	ownerC := takeOver(t, fC, ttl)
	stopC()
	_ = engA.Close()
	_ = rsA.Close()
	if ownerC.Epoch() <= epoch {
		t.Fatalf("epoch %d not above %d", ownerC.Epoch(), epoch)
	}
	engC := openEngine(t, dbC)
	defer engC.Close()
	verify(t, engC, acked)
}

// An owner hands the partition over (it stops writing and releases the
// lease once its standby acked everything) and follows the new owner as
// its standby from its own store, no snapshot copied: its store says
// how far its history runs (written in each batch it applied), which is
// exactly what the new owner took over with (Owner.Continues). Asked
// over HTTP (ContinueAsStandby), on a real redis-server. A history that
// is not that one (another Seq), or an owner that has another standby,
// is refused; the same node asking again is answered the same. Then the new owner dies and the owner before takes the
// partition back with every message either acknowledged.
func TestOwnerBeforeContinuesAsStandby(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr})
	defer rdb.Close()
	c := cluster.NewRedisCoord(rdb)
	const p, ttl, secret = cluster.Partition(0), time.Second, "s3cret"
	dirA := t.TempDir()
	stA, stB := openPebble(t, dirA), openPebble(t, t.TempDir())
	defer stB.Close()
	rsA, epoch, stopRenewA := leasedOwner(t, c, p, "a", "b", stA, ttl)
	fB, stopB := follow(t, c, p, "b", stB, cluster.StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
	engA := openEngine(t, rsA)
	acked := submitN(t, engA, "a", 100)

	// The hand-over: a stops writing, b holds everything, a lets go.
	_ = engA.Close()
	if st := rsA.Status(); st.Acked != st.Shipped {
		t.Fatalf("a's standby holds %d of %d batches after every submit was answered", st.Acked, st.Shipped)
	}
	shipped := rsA.Status().Shipped
	_ = rsA.Close()
	stopRenewA()
	if err := c.ReleaseLease(ctx, p, "a", epoch); err != nil {
		t.Fatal(err)
	}
	ownerB := takeOver(t, fB, ttl)
	stopB()
	stopRenewB := renew(t, c, p, "b", ownerB.Epoch(), ttl)
	rsB, err := cluster.NewReplicatedStore(stB, ownerB)
	if err != nil {
		t.Fatal(err)
	}
	engB := openEngine(t, rsB)
	srv := httptest.NewServer(cluster.SnapshotHandler(rsB, c, secret, t.TempDir()))
	defer srv.Close()
	ep := cluster.Endpoint{Client: srv.Client(), URL: srv.URL, Secret: secret, P: p}

	// a's own store says where its history ends.
	stA = openPebble(t, dirA)
	defer stA.Close()
	fA0, err := cluster.NewFollower(c, p, "a", stA, cluster.StandbyState{})
	if err != nil {
		t.Fatal(err)
	}
	own := fA0.Standby().State()
	if own.FenceEpoch != epoch || own.FenceOwner != "a" || own.Seq != shipped {
		t.Fatalf("a's store says %+v, want epoch %d of a through %d", own, epoch, shipped)
	}
	// b writes while it has no standby: the submit waits.
	pending := make(chan []sent, 1)
	go func() { pending <- submitN(t, engB, "b-waiting", 4) }()

	other := own
	other.Seq--
	if _, err := ep.ContinueAsStandby(ctx, "a", other); !errors.Is(err, cluster.ErrStandbyRefused) || !strings.Contains(err.Error(), "409") {
		t.Fatalf("a history one batch shorter: %v, want 409", err)
	}
	st, err := ep.ContinueAsStandby(ctx, "a", own)
	if err != nil {
		t.Fatal(err)
	}
	if st.FenceEpoch != ownerB.Epoch() || st.FenceOwner != "b" || st.Seq != own.Seq {
		t.Fatalf("continue from %+v", st)
	}
	// Its answer lost, a asks again: the same answer, not a refusal
	// that would send it to a snapshot while the coordinator names it.
	if again, err := ep.ContinueAsStandby(ctx, "a", own); err != nil || again != st {
		t.Fatalf("a asking again: %+v, %v; want %+v", again, err, st)
	}
	if _, err := ep.ContinueAsStandby(ctx, "x", own); !errors.Is(err, cluster.ErrStandbyRefused) {
		t.Fatalf("a second node continuing: %v, want refused (b has a standby)", err)
	}
	if sb, _ := c.Standby(ctx, p); sb != "a" {
		t.Fatalf("the coordinator names %q, want a", sb)
	}
	fA, err := cluster.NewFollowerFromSnapshot(c, p, "a", stA, st)
	if err != nil {
		t.Fatal(err)
	}
	stopA := run(t, fA, 20*time.Millisecond)
	acked = append(acked, <-pending...)
	acked = append(acked, submitN(t, engB, "b", 100)...)

	// b dies; a takes the partition back with everything.
	stopRenewB()
	ownerA := takeOver(t, fA, ttl)
	stopA()
	_ = engB.Close()
	_ = rsB.Close()
	if ownerA.Epoch() <= ownerB.Epoch() {
		t.Fatalf("epoch %d not above %d", ownerA.Epoch(), ownerB.Epoch())
	}
	engA2 := openEngine(t, stA)
	defer engA2.Close()
	verify(t, engA2, acked)
}

// A standby place moves in one step when the standby it replaces runs a
// build from before the two halves (its status names no protocol). Such
// a node, applying the hand-over entry, demotes itself and stops
// following (it reads neither Entry.Replacing nor Entry.Demote), so the
// entry that ends a second half would never be acked by it: in a rolling
// upgrade each such move held every write until the owner dropped it as
// stalled. The hand-over entry then names no standby replaced, the move
// ends once c is named, and writes go on on c's acks alone. A standby
// that says it speaks this build's protocol still gets both halves.
func TestStandbyPlaceMovesInOneStepForAnOlderBuild(t *testing.T) {
	for _, tc := range []struct {
		name     string
		protocol int // what b publishes
	}{
		{"an older build", 0},
		{"this build", cluster.Protocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr})
			defer rdb.Close()
			c := cluster.NewRedisCoord(rdb)
			const p, ttl, secret = cluster.Partition(0), time.Second, "s3cret"
			old := tc.protocol < cluster.ProtocolTwoHalves
			if err := c.SetMember(ctx, "b", cluster.Member{Role: "standby", Protocol: tc.protocol}, time.Minute); err != nil {
				t.Fatal(err)
			}

			stA, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			rsA, _, stopRenew := leasedOwner(t, c, p, "a", "", stA, ttl)
			engA := openEngine(t, rsA)
			srv := httptest.NewServer(cluster.SnapshotHandler(rsA, c, secret, t.TempDir()))
			defer srv.Close()
			ep := cluster.Endpoint{Client: srv.Client(), URL: srv.URL, Secret: secret, P: p}

			// b follows one entry at a time; as an older build, it stops at
			// the first hand-over that names another node (it would be
			// demoted by it, whatever else the entry says).
			fB, _, stB := joinSnapshot(t, ep, c, "b")
			bCtx, bStop := context.WithCancel(ctx)
			bDone := make(chan struct{})
			go func() {
				defer close(bDone)
				for bCtx.Err() == nil {
					n, err := fB.Standby().Step(bCtx, 1)
					if st := fB.Standby().State(); old && (st.Demoted || st.Leaving) {
						return
					}
					if n == 0 || err != nil {
						select {
						case <-bCtx.Done():
						case <-time.After(5 * time.Millisecond):
						}
					}
				}
			}()
			defer func() { bStop(); <-bDone }()
			if err := ep.RequestStandby(ctx, "b", stB); err != nil {
				t.Fatal(err)
			}
			acked := submitN(t, engA, "before", 20)

			fC, dbC, stC := joinSnapshot(t, ep, c, "c")
			stopC := run(t, fC, 20*time.Millisecond)
			if err := ep.RequestStandbyPlace(ctx, "c", "b", stC); err != nil {
				t.Fatalf("moving b's place to c: %v", err)
			}
			if st := rsA.Status(); st.Standby != "c" || st.HandingTo != "" || st.Leaving != "" {
				t.Fatalf("owner's status %+v, want standby c, the move ended", st)
			}
			// Writes go on: on c's acks alone when b is of an older build
			// (it follows no more).
			acked = append(acked, submitN(t, engA, "after", 20)...)
			if old {
				select {
				case <-bDone:
				case <-time.After(10 * time.Second):
					t.Fatal("b, of an older build, still follows 10 s after the move")
				}
			}
			if st := fB.Standby().State(); !st.Demoted {
				t.Fatalf("b's state %+v after the move, want demoted", st)
			}

			// The hand-over entry names b as the standby replaced only when
			// b reads it.
			es, _, err := c.Entries(ctx, p, "", 1000)
			if err != nil {
				t.Fatal(err)
			}
			var handOvers []cluster.Entry
			for _, e := range es {
				if e.Standby != "" {
					handOvers = append(handOvers, e)
				}
			}
			if want := map[bool]string{true: "", false: "b"}[old]; len(handOvers) != 1 || handOvers[0].Standby != "c" || handOvers[0].Replacing != want {
				t.Fatalf("hand-over entries %+v, want one naming c, replacing %q", handOvers, want)
			}

			// The owner dies; c takes over with everything acknowledged.
			stopRenew()
			takeOver(t, fC, ttl)
			stopC()
			_ = engA.Close()
			_ = rsA.Close()
			engC := openEngine(t, dbC)
			defer engC.Close()
			verify(t, engC, acked)
		})
	}
}

// joinSnapshot fetches node's snapshot of ep's partition into a new
// store (closed at the test's end) and returns a Follower of it, not
// running yet, with the state it starts from.
func joinSnapshot(t *testing.T, ep cluster.Endpoint, c cluster.Coord, node string) (*cluster.Follower, *pebblestore.DB, cluster.StandbyState) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), node)
	st, err := ep.FetchSnapshot(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	db, err := pebblestore.Open(filepath.Join(dir, "store"), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f, err := cluster.NewFollowerFromSnapshot(c, ep.P, node, db, st)
	if err != nil {
		t.Fatal(err)
	}
	return f, db, st
}
