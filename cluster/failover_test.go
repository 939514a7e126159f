package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// everyone resolves every user id to itself.
type everyone struct{}

func (everyone) Resolve(to []string) ([]string, error) { return to, nil }

// The engine on a replicated store: an owner node's engine submits from
// several senders at once while its standby follows into its own Pebble
// through a real redis-server; the owner dies (its lease lapses, its disk
// is never read again), the standby takes over, and an engine opened on
// the standby's store has every message the owner acknowledged, in every
// recipient's stream. The deposed owner's engine gets nothing more
// acknowledged.
func TestEngineFailoverLosesNothingAcknowledged(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr})
	defer rdb.Close()
	c := cluster.NewRedisCoord(rdb)
	const p, ttl = cluster.Partition(0), time.Second

	stA, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	stB, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer stB.Close()

	epoch, ok, err := c.TakeLease(ctx, p, "a", 0, ttl)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := c.SetStandby(ctx, p, "b"); err != nil {
		t.Fatal(err)
	}
	rs, err := cluster.NewReplicatedStore(stA, cluster.NewOwner(c, p, "a", epoch, 0, "b"))
	if err != nil {
		t.Fatal(err)
	}
	follower, err := cluster.NewFollower(c, p, "b", stB, cluster.StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
	if err != nil {
		t.Fatal(err)
	}
	fctx, stopFollower := context.WithCancel(ctx)
	defer stopFollower()
	followed := make(chan error, 1)
	go func() { followed <- follower.Run(fctx, 100*time.Millisecond) }()

	// a renews its lease while it lives.
	alive, renewing := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(renewing)
		for {
			select {
			case <-alive:
				return
			case <-time.After(ttl / 4):
				if ok, err := c.RenewLease(ctx, p, "a", epoch, ttl); err != nil || !ok {
					t.Errorf("a's renewal: %v %v", ok, err)
					return
				}
			}
		}
	}()

	engA, err := engine.Open(engine.Config{Store: rs, Recipients: everyone{}})
	if err != nil {
		t.Fatal(err)
	}
	type sent struct {
		id   engine.ID
		to   string
		body []byte
	}
	var (
		mu    sync.Mutex
		acked []sent
		lat   []time.Duration
		wg    sync.WaitGroup
	)
	for s := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				to := fmt.Sprintf("u%d", (s+1)%8)
				body := fmt.Appendf(nil, "from u%d #%d", s, i)
				t0 := time.Now()
				res, err := engA.Submit(ctx, engine.Submission{From: fmt.Sprintf("u%d", s), To: []string{to}, Kind: engine.KindText, Body: body})
				if err != nil {
					t.Errorf("submit: %v", err)
					return
				}
				mu.Lock()
				acked, lat = append(acked, sent{res.ID, to, body}), append(lat, time.Since(t0))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	// a dies: no more renewals; its disk is never read again.
	close(alive)
	<-renewing
	deadline := time.Now().Add(10 * time.Second)
	var newOwner *cluster.Owner
	for {
		newOwner, err = follower.Standby().TakeOver(ctx, ttl)
		if err == nil {
			break
		}
		if !errors.Is(err, cluster.ErrLeaseHeld) || time.Now().After(deadline) {
			t.Fatalf("takeover: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // waiting for a's lease to lapse on Redis's clock
	}
	stopFollower()
	<-followed
	if newOwner.Epoch() <= epoch {
		t.Fatalf("new owner's epoch %d not above %d", newOwner.Epoch(), epoch)
	}

	// The deposed owner wakes: its next submit is applied on its own disk
	// but never acknowledged.
	lateCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = engA.Submit(lateCtx, engine.Submission{From: "u0", To: []string{"u1"}, Kind: engine.KindText, Body: []byte("after the takeover")})
	cancel()
	if err == nil {
		t.Fatal("the deposed owner acknowledged a submit after the takeover")
	}
	_ = engA.Close()
	_ = rs.Close()

	engB, err := engine.Open(engine.Config{Store: stB, Recipients: everyone{}})
	if err != nil {
		t.Fatal(err)
	}
	defer engB.Close()
	inbox := map[string]map[engine.ID]bool{}
	for u := range 8 {
		user := fmt.Sprintf("u%d", u)
		es, err := engB.Range(user, 1, 10000)
		if err != nil {
			t.Fatal(err)
		}
		inbox[user] = map[engine.ID]bool{}
		for _, e := range es {
			if e.Kind == engine.EntryMessage {
				inbox[user][e.Message.ID] = true
			}
		}
	}
	for _, s := range acked {
		m, err := engB.Message(s.id)
		if err != nil {
			t.Fatalf("acknowledged message %s missing on the new owner: %v", s.id, err)
		}
		if !bytes.Equal(m.Body, s.body) {
			t.Fatalf("message %s body %q, want %q", s.id, m.Body, s.body)
		}
		if !inbox[s.to][s.id] {
			t.Fatalf("acknowledged message %s missing from %s's stream on the new owner", s.id, s.to)
		}
	}
	slices.Sort(lat)
	t.Logf("%d acknowledged messages, all on the new owner; submit→ack p50 %v p99 %v with replication through Redis", len(acked), lat[len(lat)/2], lat[len(lat)*99/100])
}
