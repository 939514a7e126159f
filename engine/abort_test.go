package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
)

// lostMessage opens an engine whose store lost the record of a message bo
// received (its receipt is still there): a READ of it aborts its batch.
func lostMessage(t *testing.T) (*engine.Engine, engine.ID) {
	t.Helper()
	st := memstore.New()
	e, err := engine.Open(engine.Config{Store: st, MessageCacheBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	e.SetSink(&recorder{})
	ctx := context.Background()
	res, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if err := engine.DeleteMessageRecord(st, res.ID); err != nil {
		t.Fatal(err)
	}
	return e, res.ID
}

type submitAnswer struct {
	res engine.SubmitResult
	err error
}

// TestAbortingOpLeavesUnrelatedOpsAlone is the bug where one op's abort
// error went to every op of its batch: an unrelated SUBMIT was answered
// "batch aborted: read <another user's message id>: not found", which the
// edges mapped to NOT_FOUND (so the client would not retry).
func TestAbortingOpLeavesUnrelatedOpsAlone(t *testing.T) {
	e, lost := lostMessage(t)
	release := e.Hold() // the READ and the SUBMIT share the next batch
	readErr := make(chan error, 1)
	e.ReadAsync("bo", []engine.ID{lost}, func(err error) { readErr <- err })
	sub := make(chan submitAnswer, 1)
	e.SubmitAsync(engine.Submission{From: "cy", To: []string{"dee"}, Kind: engine.KindText, Body: []byte("unrelated")},
		func(r engine.SubmitResult, err error) { sub <- submitAnswer{r, err} })
	release()
	if a := <-sub; a.err != nil {
		t.Fatalf("unrelated submit answered %v; want it committed", a.err)
	} else if es, err := e.Range("dee", 1, 10); err != nil || len(es) != 1 || es[0].Message.ID != a.res.ID {
		t.Fatalf("unrelated submit not in dee's stream: %v %v", es, err)
	}
	err := <-readErr
	if err == nil || errors.Is(err, engine.ErrNotRecipient) || errors.Is(err, engine.ErrAborted) {
		t.Fatalf("the aborting READ got %v; want its own (internal) error", err)
	}
}

// TestOpsOfAnUnbuildableBatchGetARetryableAbort: when a batch keeps
// aborting (every rebuild hits another bad op), the ops left are answered
// ErrAborted, whose text names nothing of the ops that aborted it.
func TestOpsOfAnUnbuildableBatchGetARetryableAbort(t *testing.T) {
	e, lost := lostMessage(t)
	release := e.Hold()
	const bad = 4 // one more than the pipeline's rebuilds
	reads := make(chan error, bad)
	for range bad {
		e.ReadAsync("bo", []engine.ID{lost}, func(err error) { reads <- err })
	}
	sub := make(chan submitAnswer, 1)
	e.SubmitAsync(engine.Submission{From: "cy", To: []string{"dee"}, Kind: engine.KindText, Body: []byte("unrelated")},
		func(r engine.SubmitResult, err error) { sub <- submitAnswer{r, err} })
	release()
	a := <-sub
	if !errors.Is(a.err, engine.ErrAborted) {
		t.Fatalf("submit answered %v, want ErrAborted", a.err)
	}
	if strings.Contains(a.err.Error(), lost.String()) || strings.Contains(a.err.Error(), "not found") {
		t.Fatalf("the abort answer %q leaks another op's error", a.err)
	}
	for range bad {
		<-reads
	}
	// Retried, it goes through.
	if _, err := e.Submit(context.Background(), engine.Submission{From: "cy", To: []string{"dee"}, Kind: engine.KindText, Body: []byte("unrelated")}); err != nil {
		t.Fatalf("retry: %v", err)
	}
}
