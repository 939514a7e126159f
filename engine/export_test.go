package engine

import (
	"context"
	"time"
)

// Settle fires every timer due at the clock's present time and waits
// until every send decided so far has its outcome recorded: after it, a
// test can assert that nothing more was sent. Tests only.
func (e *Engine) Settle(ctx context.Context) error {
	for {
		keys, _, err := e.dueTimers(0, ms(e.cfg.Clock.Now()))
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			break
		}
		if err := e.apply(ctx, func(c *committer, now time.Time) error { return c.fireTimers(keys, now) }); err != nil {
			return err
		}
	}
	for {
		e.inflightMu.Lock()
		n, shrank := len(e.inflight), e.inflightShrank
		e.inflightMu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-shrank:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// SecretKey returns a secret message's key, so that a test can search the
// disk for it. Tests only.
func (e *Engine) SecretKey(id ID) ([32]byte, bool) {
	if k, ok := e.keys.Get(id); ok {
		return k, true
	}
	return e.fleeting.Get(id)
}

// Barrier returns once every op queued before it is durable and its
// batch's heads are published (a batch becomes readable in the store a
// moment before Head shows it). Tests only.
func (e *Engine) Barrier(ctx context.Context) error {
	return e.apply(ctx, func(*committer, time.Time) error { return nil })
}
