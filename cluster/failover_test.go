package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
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
	stA, stB := openPebble(t, t.TempDir()), openPebble(t, t.TempDir())
	defer stB.Close()
	rs, epoch, stopRenew := leasedOwner(t, c, p, "a", "b", stA, ttl)
	fB, stopB := follow(t, c, p, "b", stB, cluster.StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
	engA := openEngine(t, rs)
	acked := submitN(t, engA, "a", 320)

	stopRenew() // a dies: its disk is never read again
	newOwner := takeOver(t, fB, ttl)
	stopB()
	if newOwner.Epoch() <= epoch {
		t.Fatalf("new owner's epoch %d not above %d", newOwner.Epoch(), epoch)
	}
	// The deposed owner wakes: its next submit is applied on its own disk
	// but never acknowledged.
	lateCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := engA.Submit(lateCtx, engine.Submission{From: "u0", To: []string{"u1"}, Kind: engine.KindText, Body: []byte("after the takeover")})
	cancel()
	if err == nil {
		t.Fatal("the deposed owner acknowledged a submit after the takeover")
	}
	_ = engA.Close()
	_ = rs.Close()

	engB := openEngine(t, stB)
	defer engB.Close()
	verify(t, engB, acked)
	t.Logf("%d acknowledged messages, all on the new owner", len(acked))
}
