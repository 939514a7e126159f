package engine

import (
	"context"
	"time"

	"github.com/dingmq/ding/engine/internal/pipeline"
	"github.com/dingmq/ding/engine/store"
)

// Committing.
//
// Every mutation is an op on the commit pipeline (package
// engine/internal/pipeline, whose doc holds the design: group commit,
// answers only after the fsync, the next batch built and applied while
// this one's fsync is in flight, stop on failure, an op that fails
// aborting only itself). The pipeline knows no features. What a feature
// keeps for one batch lives in the engine's txn, one overlay per feature,
// each in the feature's own file:
//
//	streamTx  stream.go    heads, receipts, cursors, dedupe keys, new entries
//	dingTx    escalate.go  DING records and recipient states, quotas, sends decided
//	statsTx   rollup.go    daily rollups, announcement counts
//	secretTx  secret.go    chats, live secret messages' states, keys, burns
//	fanoutTx  fanout.go    fanout jobs started
//	changeTx  change.go    changes from outside the engine (the directory)
//	relayTx   relay.go     outbox records and their seqs, inbound watermarks
//	hookTx    webhook.go   webhook events and their seqs, subscriptions and cursors changed
//
// An op is a function of the txn (the feature's entry point, e.g.
// applySubmit, applyDing, createChat) built where the feature's API is:
// adding a feature adds its overlay and its ops, never a case to the
// pipeline. An overlay takes part in a batch's life through the hooks it
// has (see the interfaces below), which the txn calls in the order of the
// table above:
//
//	flush      on the commit loop, before the batch is applied: write what the ops deferred
//	applied    on the commit loop, once the batch is visible in the store and before the
//	           next batch is built: what later batches must see (applied heads, caches the
//	           commit loop reads, counters)
//	durable    on the publish loop, once the batch is durable and before its ops are
//	           answered: what readers may now see (durable heads), and what may only
//	           happen after durability (erasing burned messages' keys)
//	published  on the publish loop, after the ops are answered: hand-offs (the Sink,
//	           the dispatch workers, the fanout loop)
//	abandon    instead, when the batch is discarded before it is applied (applied
//	           false) or its commit failed (true)
//	reset      after published or abandon: the overlay is reused for a later batch
//
// Lock order: Engine.headsMu is taken alone (it guards the durable heads),
// and so is Engine.outMu (the durable outbox seqs, relay.go);
// the Sink, the Recipients/Contacts and the Keys are called with no engine
// lock held.

// txn is one batch's state: the store batch, its time, and the features'
// overlays. It implements pipeline.Txn. Its ops run on the commit loop;
// see the hooks above for the rest.
type txn struct {
	e     *Engine
	batch store.Batch
	now   time.Time

	streamTx
	dingTx
	statsTx
	secretTx
	fanoutTx
	changeTx
	relayTx
	hookTx

	hooks txnHooks
}

// The hooks an overlay may have.
type (
	flusher   interface{ flush(c *txn) error }
	applier   interface{ applied(c *txn) }
	durabler  interface{ durable(c *txn) }
	publisher interface{ published(c *txn) }
	abandoner interface {
		abandon(c *txn, applied bool)
	}
	resetter interface{ reset() }
)

type txnHooks struct {
	flush     []flusher
	applied   []applier
	durable   []durabler
	published []publisher
	abandon   []abandoner
	reset     []resetter
}

func (e *Engine) newTxn() *txn {
	c := &txn{e: e, streamTx: newStreamTx(), dingTx: newDingTx(), statsTx: newStatsTx(), secretTx: newSecretTx()}
	h := &c.hooks
	for _, o := range []any{&c.streamTx, &c.dingTx, &c.statsTx, &c.secretTx, &c.fanoutTx, &c.changeTx, &c.relayTx, &c.hookTx} {
		addHook(&h.flush, o)
		addHook(&h.applied, o)
		addHook(&h.durable, o)
		addHook(&h.published, o)
		addHook(&h.abandon, o)
		addHook(&h.reset, o)
	}
	return c
}

// addHook appends o to hooks if o has that hook.
func addHook[H any](hooks *[]H, o any) {
	if v, ok := o.(H); ok {
		*hooks = append(*hooks, v)
	}
}

var _ pipeline.Txn = (*txn)(nil)

// Begin implements pipeline.Txn.
func (c *txn) Begin(b store.Batch, now time.Time) { c.batch, c.now = b, now }

// Flush implements pipeline.Txn.
func (c *txn) Flush() error {
	for _, h := range c.hooks.flush {
		if err := h.flush(c); err != nil {
			return err
		}
	}
	return nil
}

// Applied implements pipeline.Txn.
func (c *txn) Applied() {
	for _, h := range c.hooks.applied {
		h.applied(c)
	}
}

// Durable implements pipeline.Txn.
func (c *txn) Durable() {
	for _, h := range c.hooks.durable {
		h.durable(c)
	}
}

// Published implements pipeline.Txn.
func (c *txn) Published() {
	for _, h := range c.hooks.published {
		h.published(c)
	}
	c.reset()
}

// Abandon implements pipeline.Txn.
func (c *txn) Abandon(err error, applied bool) {
	if !applied {
		c.e.log.Error("commit batch discarded; its ops are rebuilt or answered", "err", err)
	}
	for _, h := range c.hooks.abandon {
		h.abandon(c, applied)
	}
	c.reset()
}

func (c *txn) reset() {
	for _, h := range c.hooks.reset {
		h.reset()
	}
	c.batch = nil
}

// op makes a pipeline op of apply. done gets its answer; weight is its
// share of a batch (a READ counts once per id: a thousand-id READ is not
// one submit's work, and batches of big READs must stay short so that
// other users' ops do not wait seconds behind them; bench/RESULTS.md,
// secret: bulk reads).
func (e *Engine) op(apply func(c *txn) error, done func(error), weight int) *pipeline.Op[*txn] {
	return &pipeline.Op[*txn]{
		Apply: func(c *txn) error {
			err := apply(c)
			if c.statsErr != nil {
				// A rollup this op counts in could not be read: never
				// overwrite it. The op aborts (and the batch is rebuilt
				// without it).
				err, c.statsErr = abort(c.statsErr), nil
			}
			return err
		},
		Done:   done,
		Weight: weight,
	}
}

// enqueue queues an op for the commit loop; if the engine is closed or has
// failed, done gets the error at once.
func (e *Engine) enqueue(apply func(c *txn) error, done func(error), weight int) {
	_ = e.pipe.Enqueue(e.op(apply, done, weight))
}

// enqueueBackground is enqueue in the pipeline's background lane: bulk
// work that may wait behind submits queued after it (delivery receipts,
// announcement fan-out chunks). A non-empty user keeps the op in order
// with the user's later keyed ops (enqueueFor).
func (e *Engine) enqueueBackground(apply func(c *txn) error, done func(error), weight int, user string) {
	o := e.op(apply, done, weight)
	o.Background, o.Key = true, user
	_ = e.pipe.Enqueue(o)
}

// enqueueFor is enqueue for an op that changes user's receipts (a read, a
// confirmation): it is applied after the user's ACKs queued before it,
// though those wait in the background lane.
func (e *Engine) enqueueFor(user string, apply func(c *txn) error, done func(error), weight int) {
	o := e.op(apply, done, weight)
	o.Key = user
	_ = e.pipe.Enqueue(o)
}

// applyAsync queues fn for the commit loop: it runs with the batch's
// overlay, and done gets its error once the batch is durable.
func (e *Engine) applyAsync(fn func(c *txn, now time.Time) error, done func(error)) {
	e.enqueue(func(c *txn) error { return fn(c, c.now) }, done, 1)
}

// apply is applyAsync that waits.
func (e *Engine) apply(ctx context.Context, fn func(c *txn, now time.Time) error) error {
	return wait(ctx, func(done func(error)) { e.applyAsync(fn, done) })
}

func (e *Engine) countSubmit(res SubmitResult, err error, queued time.Time) {
	m := e.metrics
	switch {
	case err != nil:
		m.submitsFailed.Inc()
	case res.Duplicate:
		m.submitsDup.Inc()
	default:
		m.submitsOK.Inc()
		m.submitSeconds.Observe(time.Since(queued).Seconds())
	}
}
