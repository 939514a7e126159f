package engine_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
)

// TestShutdownHonoursItsDeadline: with the commit loop stuck, Shutdown
// returns when its context ends instead of waiting; a later Shutdown
// waits for the rest and reports the engine's state.
func TestShutdownHonoursItsDeadline(t *testing.T) {
	e, err := engine.Open(engine.Config{Store: memstore.New()})
	if err != nil {
		t.Fatal(err)
	}
	release := e.Hold()
	queued := make(chan error, 1)
	e.SubmitAsync(engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("x")},
		func(_ engine.SubmitResult, err error) { queued <- err })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := e.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a stuck commit loop = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Shutdown took %v past a 50ms deadline", d)
	}
	if _, err := e.Submit(context.Background(), engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("y")}); !errors.Is(err, engine.ErrClosed) {
		t.Fatalf("submit after Shutdown began = %v, want ErrClosed", err)
	}
	release()
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown = %v", err)
	}
	if err := <-queued; err != nil {
		t.Fatalf("the op queued before Shutdown = %v; queued ops are committed", err)
	}
}
