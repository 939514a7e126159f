package main

import (
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/internal/redistest"
)

// In make test; `make chaos` runs it many times. When the killed
// master's replica was promoted without the partition's latest
// coordinator writes (Redis replicates asynchronously), the coordinator
// may lose the lease, epoch and standby name altogether; the members then
// recover the partition together (internal/node/recover.go;
// TestClusterRecoversWhenRedisLosesItsState forces that case with
// FLUSHALL).

// The pair on a real Redis Cluster (3 masters, 3 replicas): the master
// holding the partition's slot is killed with SIGKILL while clients send.
// Redis Cluster promotes its replica; the pair recovers by itself (the
// owner keeps its place, or loses it and its standby takes over, depending
// on what the failover kept), and every acknowledged message is on the
// member that serves afterwards.
func TestClusterSurvivesARedisMasterKill(t *testing.T) {
	rc := redistest.StartCluster(t, 3, 1, time.Second)
	c := newPair(t, "redis://"+strings.Join(rc.Addrs(), ","), "2s")
	a, b := c.start()
	var serving *proc
	var recovered time.Duration
	s := startSenders(t, a, 4)
	for s.count() < 200 {
		time.Sleep(5 * time.Millisecond)
	}
	rc.MasterOf(t, "{ding:p:0}:lease").Kill()
	killed, atKill := time.Now(), s.count()
	// Recovered when writes are acknowledged again: through a (it kept its
	// place: its clients' acks resume) or through b (it took over).
	deadline := time.Now().Add(60 * time.Second)
	for serving == nil {
		if s.count() >= atKill+50 {
			serving = a
		} else if code, err := readyz(b.http); err == nil && code == 200 {
			serving = b
		} else if time.Now().After(deadline) {
			t.Fatalf("writes not acknowledged again within 60s of the Redis master's death\na: %s\nb: %s", a.stderr, b.stderr)
		}
		time.Sleep(20 * time.Millisecond) // polling the members
	}
	recovered = time.Since(killed)
	acked := s.stop()
	requireStream(t, serving, acked)
	who := "a (kept its place)"
	if serving == b {
		who = "b (took over)"
	}
	t.Logf("%d acknowledged; all on %s, serving %v after SIGKILL of the Redis master", len(acked), who, recovered.Round(time.Millisecond))
}
