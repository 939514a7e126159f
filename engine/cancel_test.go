package engine_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
)

// A Forget whose context has ended returns the context's error and
// nothing else: its op still runs, and writes its result while building
// the batch (it answers only once the batch is durable), so the caller
// must not read that result. It did, which the race detector reports
// (make test did, once the node's background Forget began to end at the
// node's stop); this test fails so under -race.
func TestForgetCancelledReadsNoResult(t *testing.T) {
	applied, releaseC := make(chan struct{}, 8), make(chan struct{})
	n := openRelayNode(t, &pipeGate{Store: memstore.New(), applied: applied, release: releaseC}, 0, nil)
	var once sync.Once
	release := func() { once.Do(func() { close(releaseC) }) }
	t.Cleanup(release) // before the engine's Close
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // ended before the op runs: it writes its result afterwards
	res, err := n.e.Forget(ctx, "alice", 0)
	if !errors.Is(err, context.Canceled) || res != (engine.Offboarded{}) {
		t.Fatalf("Forget with its context ended: %+v, %v; want nothing and context.Canceled", res, err)
	}
	<-applied // the op ran and its batch is in the store; the fsync was held until now
	release()
	if err := n.e.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
}
