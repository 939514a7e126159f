package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// The whole life of a partition through two failures, on real Pebble and a
// real redis-server: a owns it with b as standby; a dies, b takes over
// and, having no standby, acknowledges nothing until c is seeded from b's
// snapshot and named; then b dies and c takes over. Every message
// acknowledged by a or b is in the engine opened on c's store.
func TestTwoFailoversWithANewStandbyBetween(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr})
	defer rdb.Close()
	c := cluster.NewRedisCoord(rdb)
	const p, ttl = cluster.Partition(0), time.Second

	// a owns, b follows.
	stA, stB := openPebble(t, t.TempDir()), openPebble(t, t.TempDir())
	epoch, ok, err := c.TakeLease(ctx, p, "a", 0, ttl)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := c.SetStandby(ctx, p, "b"); err != nil {
		t.Fatal(err)
	}
	rsA, err := cluster.NewReplicatedStore(stA, cluster.NewOwner(c, p, "a", epoch, 0, "b"))
	if err != nil {
		t.Fatal(err)
	}
	fB, stopB := follow(t, c, p, "b", stB, cluster.StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
	stopRenewA := renew(t, c, p, "a", epoch, ttl)
	engA := openEngine(t, rsA)
	acked := submitN(t, engA, "a", 100)

	// a dies.
	stopRenewA()
	ownerB := takeOver(t, fB, ttl)
	stopB()
	_ = engA.Close()
	_ = rsA.Close()

	// b owns without a standby: a submit waits.
	stopRenewB := renew(t, c, p, "b", ownerB.Epoch(), ttl)
	rsB, err := cluster.NewReplicatedStore(stB, ownerB)
	if err != nil {
		t.Fatal(err)
	}
	engB := openEngine(t, rsB)
	pending := make(chan error, 1)
	var pendingID engine.ID
	go func() {
		res, err := engB.Submit(ctx, engine.Submission{From: "u0", To: []string{"u1"}, Kind: engine.KindText, Body: []byte("while b has no standby")})
		pendingID = res.ID
		pending <- err
	}()
	// c is seeded from b's snapshot, follows, and is named.
	dirC := filepath.Join(t.TempDir(), "c")
	stateC, err := rsB.Snapshot(dirC)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-pending:
		t.Fatalf("b acknowledged a submit with no standby (err %v)", err)
	default:
	}
	stC := openPebble(t, dirC)
	defer stC.Close()
	fC, stopC := follow(t, c, p, "c", stC, stateC)
	if err := rsB.AddStandby(ctx, c, "c"); err != nil {
		t.Fatal(err)
	}
	if err := <-pending; err != nil {
		t.Fatalf("the waiting submit: %v", err)
	}
	acked = append(acked, sent{pendingID, "u1", []byte("while b has no standby")})
	acked = append(acked, submitN(t, engB, "b", 100)...)

	// b dies; c takes over.
	stopRenewB()
	ownerC := takeOver(t, fC, ttl)
	stopC()
	_ = engB.Close()
	_ = rsB.Close()
	if ownerC.Epoch() <= ownerB.Epoch() || ownerB.Epoch() <= epoch {
		t.Fatalf("epochs %d → %d → %d do not grow", epoch, ownerB.Epoch(), ownerC.Epoch())
	}
	engC := openEngine(t, stC)
	defer engC.Close()
	verify(t, engC, acked)
	t.Logf("%d messages acknowledged by a and b, all on c after two failovers", len(acked))
}

type sent struct {
	id   engine.ID
	to   string
	body []byte
}

func openEngine(t *testing.T, st store.Store) *engine.Engine {
	t.Helper()
	e, err := engine.Open(engine.Config{Store: st, Recipients: everyone{}})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// follow runs a Follower of p for node into st; stop ends it and waits.
func follow(t *testing.T, c cluster.Coord, p cluster.Partition, node string, st *pebblestore.DB, init cluster.StandbyState) (*cluster.Follower, func()) {
	t.Helper()
	f, err := cluster.NewFollower(c, p, node, st, init)
	if err != nil {
		t.Fatal(err)
	}
	return f, run(t, f, 100*time.Millisecond)
}

// run runs f (polling every poll when idle) until stop, which ends it
// and waits.
func run(t *testing.T, f *cluster.Follower, poll time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx, poll) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// openPebble opens a Pebble store in dir (a node's disk), failing t if it
// cannot.
func openPebble(t *testing.T, dir string) *pebblestore.DB {
	t.Helper()
	st, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// bTakesOver founds p on c with a as its owner and b as its standby; b
// follows into a new Pebble store and, a never writing or renewing,
// takes over: b's store (the caller's to close) and its Owner.
func bTakesOver(t *testing.T, c cluster.Coord, p cluster.Partition, ttl time.Duration) (*pebblestore.DB, *cluster.Owner) {
	t.Helper()
	ctx := context.Background()
	epoch, ok, err := c.TakeLease(ctx, p, "a", 0, ttl)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := c.SetStandby(ctx, p, "b"); err != nil {
		t.Fatal(err)
	}
	stB := openPebble(t, t.TempDir())
	fB, stopB := follow(t, c, p, "b", stB, cluster.StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
	ownerB := takeOver(t, fB, ttl)
	stopB()
	return stB, ownerB
}

// leasedOwner takes p's lease for node, names standby (if any) and
// returns node's ReplicatedStore over st, its epoch and the renewal's
// stop (the owner's death).
func leasedOwner(t *testing.T, c cluster.Coord, p cluster.Partition, node, standby string, st store.Store, ttl time.Duration) (*cluster.ReplicatedStore, uint64, func()) {
	t.Helper()
	ctx := context.Background()
	epoch, ok, err := c.TakeLease(ctx, p, node, 0, ttl)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if standby != "" {
		if err := c.SetStandby(ctx, p, standby); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := cluster.NewReplicatedStore(st, cluster.NewOwner(c, p, node, epoch, 0, standby))
	if err != nil {
		t.Fatal(err)
	}
	return rs, epoch, renew(t, c, p, node, epoch, ttl)
}

// renew keeps node's lease alive until stop (its death).
func renew(t *testing.T, c cluster.Coord, p cluster.Partition, node string, epoch uint64, ttl time.Duration) func() {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			case <-time.After(ttl / 4):
				if ok, err := c.RenewLease(context.Background(), p, node, epoch, ttl); err != nil || !ok {
					t.Errorf("%s's renewal: %v %v", node, ok, err)
					return
				}
			}
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { close(done); <-stopped }) }
	t.Cleanup(stop)
	return stop
}

// takeOver waits for the dead owner's lease to lapse and takes over.
func takeOver(t *testing.T, f *cluster.Follower, ttl time.Duration) *cluster.Owner {
	t.Helper()
	deadline := time.Now().Add(10 * ttl)
	for {
		o, err := f.Standby().TakeOver(context.Background(), ttl)
		if err == nil {
			return o
		}
		if !errors.Is(err, cluster.ErrLeaseHeld) || time.Now().After(deadline) {
			t.Fatalf("takeover: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // waiting for the lease to lapse on Redis's clock
	}
}

// submitN sends n messages from 4 senders at once and returns those
// acknowledged (all of them, or the test fails).
func submitN(t *testing.T, e *engine.Engine, tag string, n int) []sent {
	t.Helper()
	var (
		mu  sync.Mutex
		out []sent
		wg  sync.WaitGroup
	)
	for s := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n / 4 {
				to := fmt.Sprintf("u%d", (s+1)%4)
				body := fmt.Appendf(nil, "%s: from u%d #%d", tag, s, i)
				res, err := e.Submit(context.Background(), engine.Submission{From: fmt.Sprintf("u%d", s), To: []string{to}, Kind: engine.KindText, Body: body})
				if err != nil {
					t.Errorf("submit: %v", err)
					return
				}
				mu.Lock()
				out = append(out, sent{res.ID, to, body})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// verify checks every acknowledged message is on e, in its recipient's
// stream.
func verify(t *testing.T, e *engine.Engine, acked []sent) {
	t.Helper()
	inbox := map[string]map[engine.ID]bool{}
	for _, s := range acked {
		if inbox[s.to] == nil {
			es, err := e.Range(s.to, 1, 100000)
			if err != nil {
				t.Fatal(err)
			}
			inbox[s.to] = map[engine.ID]bool{}
			for _, en := range es {
				if en.Kind == engine.EntryMessage {
					inbox[s.to][en.Message.ID] = true
				}
			}
		}
		m, err := e.Message(s.id)
		if err != nil {
			t.Fatalf("acknowledged message %s (%q) missing: %v", s.id, s.body, err)
		}
		if !bytes.Equal(m.Body, s.body) {
			t.Fatalf("message %s body %q, want %q", s.id, m.Body, s.body)
		}
		if !inbox[s.to][s.id] {
			t.Fatalf("acknowledged message %s missing from %s's stream", s.id, s.to)
		}
	}
}
