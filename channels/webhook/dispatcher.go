package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine"
)

// Source is what the dispatcher needs of an engine's event outbox.
// *engine.Engine implements it; every method is safe for concurrent use.
type Source interface {
	// WebhookSource names the outbox in event ids (distinct per source).
	WebhookSource() string
	// Webhooks lists the subscriptions with their durable cursors.
	Webhooks() ([]engine.Webhook, error)
	// WebhookGeneration changes once a subscription change is durable.
	WebhookGeneration() uint64
	// WebhookReady is signalled (capacity 1, coalesced) after a batch
	// that wrote events or changed a subscription is durable. The
	// dispatcher is its one reader.
	WebhookReady() <-chan struct{}
	// WebhookDurable is the seq of the last durable event.
	WebhookDurable() uint64
	// WebhookEvents returns up to max durable events after seq after.
	WebhookEvents(after uint64, max int) ([]engine.WebhookEvent, error)
	// AckWebhook moves a subscription's cursor forward, durably.
	AckWebhook(ctx context.Context, id string, through uint64) error
	// AckWebhookAsync is AckWebhook without the wait: done gets the
	// outcome (it must not block).
	AckWebhookAsync(id string, through uint64, done func(error))
	// ParkWebhookEvent stores a dead letter and moves the cursor past it.
	ParkWebhookEvent(ctx context.Context, id string, dl engine.DeadLetter) error
	// WebhookDeadLetters lists a subscription's dead letters.
	WebhookDeadLetters(id string, after uint64, max int, onlyReplay bool) ([]engine.DeadLetter, error)
	// DeleteWebhookDeadLetter drops one (a replay delivered it).
	DeleteWebhookDeadLetter(ctx context.Context, id string, seq uint64) error
}

var _ Source = (*engine.Engine)(nil)

// Config configures a Dispatcher.
type Config struct {
	// Sources are the engines whose outboxes are delivered from the
	// start, each with a name of its own (WebhookSource: part of each
	// event's id). More come and go at run time (Attach, Detach: a
	// cluster node delivers the outboxes of the partitions it owns now).
	Sources []Source
	// Client makes the requests; nil means one that follows no redirect
	// (a 3xx is a failed attempt).
	Client *http.Client
	// Timeout bounds one attempt; zero means 10s.
	Timeout time.Duration
	// Horizon is how long after an event was written it is retried
	// before it is parked as a dead letter; zero means 72h.
	Horizon time.Duration
	// MinBackoff and MaxBackoff bound the wait before a retry; zero
	// means 1s and 10m.
	MinBackoff, MaxBackoff time.Duration
	// Batch is how many events a worker reads from the outbox at once;
	// zero means 256.
	Batch int
	// Rate bounds each subscription's attempts per second (retries
	// included); zero means no bound (one request in flight still).
	Rate int
	// Clock times backoffs and the horizon; nil means the system clock.
	Clock engine.Clock
	// Registerer receives the metrics; nil: not registered. Close
	// unregisters them.
	Registerer prometheus.Registerer
	// Logger; nil means discard.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Horizon == 0 {
		c.Horizon = 72 * time.Hour
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = time.Second
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 10 * time.Minute
	}
	if c.Batch == 0 {
		c.Batch = 256
	}
	if c.Clock == nil {
		c.Clock = engine.SystemClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Client == nil {
		c.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
}

// Validate reports whether the configuration can be used (after its
// defaults).
func (c *Config) Validate() error {
	switch {
	case !uniqueSources(c.Sources):
		return errors.New("webhook: two sources share a name")
	case c.Timeout < 0 || c.Horizon < 0 || c.Batch < 0 || c.Rate < 0:
		return errors.New("webhook: Timeout, Horizon, Batch and Rate must not be negative")
	case c.MinBackoff < 0 || c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("webhook: backoff from %v to %v", c.MinBackoff, c.MaxBackoff)
	}
	return nil
}

func uniqueSources(srcs []Source) bool {
	seen := map[string]bool{}
	for _, s := range srcs {
		if s == nil || seen[s.WebhookSource()] {
			return false
		}
		seen[s.WebhookSource()] = true
	}
	return true
}

// Dispatcher delivers the events of its sources' outboxes; see the
// package doc. Its goroutines run from New to Close.
type Dispatcher struct {
	cfg    Config
	m      *metrics
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	mu      sync.Mutex
	closed  bool                // guarded by mu
	sources map[string]*running // by name; guarded by mu
}

// running is an attached source's loop.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// ErrClosed is returned by Attach after Close.
var ErrClosed = errors.New("webhook: dispatcher closed")

// New starts a dispatcher: one goroutine per source (Config.Sources, then
// Attach), which starts and stops a worker per subscription.
func New(cfg Config) (*Dispatcher, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Sources = slices.Clone(cfg.Sources)
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Dispatcher{cfg: cfg, m: m, ctx: ctx, cancel: cancel, sources: map[string]*running{}}
	for _, src := range cfg.Sources {
		if err := d.Attach(src); err != nil {
			d.Close()
			return nil, err
		}
	}
	return d, nil
}

// Attach starts delivering src's outbox: each subscription's worker
// starts from its durable cursor, so a source detached from one
// dispatcher (or one node) and attached to another goes on where the
// first left off, redelivering at most what was delivered and not yet
// acknowledged (same ids). It fails if a source of that name is attached,
// or after Close.
func (d *Dispatcher) Attach(src Source) error {
	if src == nil {
		return errors.New("webhook: nil source")
	}
	name := src.WebhookSource()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if _, ok := d.sources[name]; ok {
		return fmt.Errorf("webhook: source %q is attached already", name)
	}
	ctx, cancel := context.WithCancel(d.ctx)
	r := &running{cancel: cancel, done: make(chan struct{})}
	d.sources[name] = r
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(r.done)
		d.sourceLoop(ctx, name, src)
	}()
	return nil
}

// Detach stops delivering the outbox of the source named name and waits
// until its workers have stopped (a request in flight is abandoned: its
// event is delivered again, same id, by whoever attaches the source
// next), so the engine can be closed after it. It reports whether the
// source was attached.
func (d *Dispatcher) Detach(name string) bool {
	d.mu.Lock()
	r, ok := d.sources[name]
	delete(d.sources, name)
	d.mu.Unlock()
	if !ok {
		return false
	}
	r.cancel()
	<-r.done
	return true
}

// Close stops the dispatcher and waits for its goroutines. A request in
// flight is abandoned: its event is delivered again by the next
// dispatcher (same id). Close it before its engines. Idempotent.
func (d *Dispatcher) Close() {
	d.once.Do(func() {
		d.mu.Lock()
		d.closed = true
		d.mu.Unlock()
		d.cancel()
		d.wg.Wait()
		d.m.unregister()
	})
}

// worker is one subscription's delivery goroutine's handle.
type worker struct {
	sub    atomic.Pointer[engine.Webhook] // replaced when the subscription changes
	wake   chan struct{}                  // capacity 1
	cancel context.CancelFunc
	done   chan struct{}
	last   time.Time // the last attempt's start; the worker goroutine's own (Config.Rate)
	acks   acks      // the worker goroutine's own
}

// acks pipelines a worker's acknowledgements of delivered events: the
// next event is sent while the cursor's commit for the one before is in
// flight (at-least-once allows it: a crash before that commit is durable
// only redelivers). One commit in flight at a time; the highest cursor
// delivered since waits for it.
type acks struct {
	res     chan error // capacity 1: the outcome of the one in flight (sent by the engine's publish loop)
	busy    bool       // one is in flight
	pending uint64     // the cursor to commit next; 0: none
}

func (w *worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// sourceLoop keeps a worker per subscription of src and wakes them when
// events are durable.
func (d *Dispatcher) sourceLoop(ctx context.Context, p string, src Source) {
	workers := map[string]*worker{}
	defer func() {
		for id, w := range workers {
			w.cancel()
			<-w.done
			d.m.backlog.DeleteLabelValues(id, p)
		}
	}()
	gen := ^uint64(0)
	var retry <-chan time.Time
	for {
		if g := src.WebhookGeneration(); g != gen {
			subs, err := src.Webhooks()
			if err != nil {
				d.cfg.Logger.Error("webhook: listing subscriptions; retrying", "source", p, "err", err)
				retry = d.cfg.Clock.Until(d.cfg.Clock.Now().Add(d.cfg.MinBackoff))
			} else {
				gen = g
				seen := map[string]bool{}
				for i := range subs {
					s := subs[i]
					seen[s.ID] = true
					if w, ok := workers[s.ID]; ok {
						w.sub.Store(&s)
						continue
					}
					wctx, cancel := context.WithCancel(ctx)
					w := &worker{wake: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{}), acks: acks{res: make(chan error, 1)}}
					w.sub.Store(&s)
					workers[s.ID] = w
					go func() {
						defer close(w.done)
						d.workerLoop(wctx, p, src, w, s.Cursor)
					}()
				}
				for id, w := range workers {
					if !seen[id] {
						w.cancel()
						<-w.done
						delete(workers, id)
						d.m.backlog.DeleteLabelValues(id, p)
					}
				}
			}
		}
		for _, w := range workers {
			w.poke()
		}
		select {
		case <-ctx.Done():
			return
		case <-src.WebhookReady():
		case <-retry:
			retry = nil
		}
	}
}

// errStopped ends a worker's step: its context ended.
var errStopped = errors.New("webhook: stopped")

// workerLoop delivers one subscription's events in order from cursor.
func (d *Dispatcher) workerLoop(ctx context.Context, p string, src Source, w *worker, cursor uint64) {
	defer d.flushAcks(src, w)
	fails := 0 // consecutive failures of the engine's side (reads, acks)
	for ctx.Err() == nil {
		err := d.step(ctx, p, src, w, &cursor)
		if err == nil {
			fails = 0
			continue
		}
		if errors.Is(err, errIdle) {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
			}
			continue
		}
		if ctx.Err() != nil {
			return
		}
		fails++
		d.cfg.Logger.Error("webhook: outbox step failed; retrying", "source", p, "subscription", w.sub.Load().ID, "err", err)
		if d.wait(ctx, d.backoff(fails)) != nil {
			return
		}
	}
}

// errIdle: nothing to do until woken.
var errIdle = errors.New("webhook: idle")

// step does one round: the dead letters marked for replay, then a page
// of the outbox.
func (d *Dispatcher) step(ctx context.Context, p string, src Source, w *worker, cursor *uint64) error {
	sub := w.sub.Load()
	d.m.backlog.WithLabelValues(sub.ID, p).Set(float64(src.WebhookDurable() - min(*cursor, src.WebhookDurable())))
	if sub.Paused {
		return d.idle(ctx, nil, src, w, sub.ID)
	}
	dls, err := src.WebhookDeadLetters(sub.ID, 0, 16, true)
	if err != nil {
		return err
	}
	for _, dl := range dls {
		ok, attempts, last, err := d.deliver(ctx, p, w, &dl.Event, dl.ReplayAt)
		if err != nil {
			return err
		}
		if ok {
			err = src.DeleteWebhookDeadLetter(ctx, sub.ID, dl.Event.Seq)
		} else {
			dl.Attempts += attempts
			dl.LastError, dl.Parked = last, d.cfg.Clock.Now()
			err = src.ParkWebhookEvent(ctx, sub.ID, dl)
		}
		if err != nil {
			return err
		}
	}
	evs, err := src.WebhookEvents(*cursor, d.cfg.Batch)
	if err != nil {
		return err
	}
	if len(evs) == 0 {
		if len(dls) > 0 {
			return nil // look for more replays
		}
		return d.idle(ctx, nil, src, w, sub.ID)
	}
	skipped := uint64(0) // the last event passed over, not yet acknowledged
	for i := range evs {
		ev := &evs[i]
		sub = w.sub.Load()
		if sub.Paused {
			break
		}
		if !sub.Matches(ev.Type) {
			skipped = ev.Seq
			continue
		}
		ok, attempts, last, err := d.deliver(ctx, p, w, ev, ev.At)
		if err != nil {
			return d.ackSkipped(ctx, src, sub.ID, cursor, skipped, err)
		}
		if ok {
			err = d.ackAsync(ctx, src, w, sub.ID, ev.Seq)
		} else {
			err = src.ParkWebhookEvent(ctx, sub.ID, engine.DeadLetter{Event: *ev, Attempts: attempts, LastError: last, Parked: d.cfg.Clock.Now()})
		}
		if err != nil {
			return err
		}
		*cursor, skipped = ev.Seq, 0
		d.m.backlog.WithLabelValues(sub.ID, p).Set(float64(src.WebhookDurable() - min(*cursor, src.WebhookDurable())))
	}
	return d.ackSkipped(ctx, src, sub.ID, cursor, skipped, nil)
}

// idle makes the acknowledgements in flight durable, then says the worker
// has nothing to do until woken. It gives up when ctx ends or bound (nil
// for none) fires.
func (d *Dispatcher) idle(ctx context.Context, bound <-chan time.Time, src Source, w *worker, id string) error {
	for {
		if err := d.ackCollect(ctx, bound, w, true); err != nil {
			return err
		}
		if w.acks.pending == 0 {
			return errIdle
		}
		d.ackStart(src, w, id, w.acks.pending)
	}
}

// flushWait bounds how long a stopping worker waits for its
// acknowledgements to be durable (flushAcks).
const flushWait = 2 * time.Second

// flushAcks, as a worker stops (Detach, Close), makes its
// acknowledgements durable: the one in flight, then the one pending
// behind it. Without it, an event delivered while the one before was
// being acknowledged came again from the next dispatcher after a
// hand-over (TestDetachHandsTheOutboxOver failed so in make test;
// TestStoppingWorkerAcknowledgesWhatItDelivered): only the event whose
// request the stop abandoned should. An engine that does not answer
// within flushWait (on the dispatcher's clock, as its backoffs) leaves
// the rest to be delivered again.
func (d *Dispatcher) flushAcks(src Source, w *worker) {
	bound := d.cfg.Clock.Until(d.cfg.Clock.Now().Add(flushWait))
	_ = d.idle(context.Background(), bound, src, w, w.sub.Load().ID)
}

// ackAsync acknowledges through: now if no commit of the cursor is in
// flight, else after it. An error of an earlier one is returned (the
// step fails and is retried; a later acknowledgement covers the events).
func (d *Dispatcher) ackAsync(ctx context.Context, src Source, w *worker, id string, through uint64) error {
	if err := d.ackCollect(ctx, nil, w, false); err != nil {
		w.acks.pending = max(w.acks.pending, through)
		return err
	}
	if w.acks.busy {
		w.acks.pending = max(w.acks.pending, through)
		return nil
	}
	d.ackStart(src, w, id, max(w.acks.pending, through))
	return nil
}

func (d *Dispatcher) ackStart(src Source, w *worker, id string, through uint64) {
	w.acks.busy, w.acks.pending = true, 0
	res := w.acks.res
	src.AckWebhookAsync(id, through, func(err error) { res <- err })
}

// ackCollect takes the outcome of the commit in flight, if it has come
// (or, with wait, once it comes, unless ctx ends or bound, nil for none,
// fires first).
func (d *Dispatcher) ackCollect(ctx context.Context, bound <-chan time.Time, w *worker, wait bool) error {
	if !w.acks.busy {
		return nil
	}
	var err error
	if wait {
		select {
		case err = <-w.acks.res:
		case <-ctx.Done():
			return errStopped
		case <-bound:
			return errStopped
		}
	} else {
		select {
		case err = <-w.acks.res:
		default:
			return nil
		}
	}
	w.acks.busy = false
	return err
}

// ackSkipped moves the cursor over events the filter passed over (so the
// outbox can let them go), then returns err.
func (d *Dispatcher) ackSkipped(ctx context.Context, src Source, id string, cursor *uint64, skipped uint64, err error) error {
	if skipped > *cursor {
		if aerr := src.AckWebhook(ctx, id, skipped); aerr != nil {
			return errors.Join(err, aerr)
		}
		*cursor = skipped
	}
	return err
}

// deliver sends ev until it is delivered (true), or the horizon from
// since has passed (false, with the attempts made and the last failure),
// or ctx ends (errStopped). A paused subscription stops retrying until
// it is resumed.
func (d *Dispatcher) deliver(ctx context.Context, p string, w *worker, ev *engine.WebhookEvent, since time.Time) (ok bool, attempts int, last string, err error) {
	body := Body(p, ev)
	id := engine.WebhookEventID(p, ev.Seq)
	for {
		sub := w.sub.Load()
		for sub.Paused {
			select {
			case <-ctx.Done():
				return false, attempts, last, errStopped
			case <-w.wake:
			}
			sub = w.sub.Load()
		}
		if err := d.pace(ctx, w); err != nil {
			return false, attempts, last, err
		}
		attempts++
		last = d.attempt(ctx, sub, id, body)
		if ctx.Err() != nil {
			return false, attempts, last, errStopped
		}
		if last == "" {
			d.m.deliveries.WithLabelValues(outcomeDelivered).Inc()
			return true, attempts, "", nil
		}
		if !d.cfg.Clock.Now().Before(since.Add(d.cfg.Horizon)) {
			d.m.deliveries.WithLabelValues(outcomeDeadLettered).Inc()
			d.cfg.Logger.Warn("webhook: event parked as a dead letter after the horizon", "subscription", sub.ID, "event", id, "type", ev.Type, "attempts", attempts, "last", last)
			return false, attempts, last, nil
		}
		d.m.deliveries.WithLabelValues(outcomeFailed).Inc()
		if d.wait(ctx, d.backoff(attempts)) != nil {
			return false, attempts, last, errStopped
		}
	}
}

// pace waits, with Config.Rate, until a second/Rate after w's last
// attempt.
func (d *Dispatcher) pace(ctx context.Context, w *worker) error {
	if d.cfg.Rate == 0 {
		return nil
	}
	next := w.last.Add(time.Second / time.Duration(d.cfg.Rate))
	if d.cfg.Clock.Now().Before(next) {
		select {
		case <-ctx.Done():
			return errStopped
		case <-d.cfg.Clock.Until(next):
		}
	}
	w.last = d.cfg.Clock.Now()
	return nil
}

// backoff is the wait before retry n (from 1): random in [b/2, b], b =
// MinBackoff·2^(n-1) capped at MaxBackoff.
func (d *Dispatcher) backoff(n int) time.Duration {
	b := d.cfg.MaxBackoff
	if n-1 < 40 {
		b = min(d.cfg.MaxBackoff, d.cfg.MinBackoff<<(n-1))
	}
	return b/2 + rand.N(b/2+1)
}

func (d *Dispatcher) wait(ctx context.Context, dur time.Duration) error {
	select {
	case <-ctx.Done():
		return errStopped
	case <-d.cfg.Clock.Until(d.cfg.Clock.Now().Add(dur)):
		return nil
	}
}

// attempt POSTs one delivery and returns "" on a 2xx, else what went
// wrong (a status, or the kind of network failure: never a body).
func (d *Dispatcher) attempt(ctx context.Context, sub *engine.Webhook, id string, body []byte) string {
	ts := d.cfg.Clock.Now().Unix()
	sig, err := Sign(sub.Secret, id, ts, body)
	if err != nil {
		return "bad secret"
	}
	actx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, sub.URL, bytes.NewReader(body))
	if err != nil {
		return "bad url"
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Ding-Webhooks/1")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("webhook-signature", sig)
	start := time.Now()
	resp, err := d.cfg.Client.Do(req)
	d.m.latency.Observe(time.Since(start).Seconds())
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || actx.Err() != nil {
			return "timeout"
		}
		return "connection failed"
	}
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "status " + strconv.Itoa(resp.StatusCode)
	}
	return ""
}

// Body is an event's JSON as delivered from the outbox named source.
func Body(source string, ev *engine.WebhookEvent) []byte {
	data := make(map[string]any, len(ev.Data))
	for _, a := range ev.Data {
		if a.IsInt {
			data[a.Key] = a.Int
		} else {
			data[a.Key] = a.Value
		}
	}
	b, _ := json.Marshal(struct {
		ID        string         `json:"id"`
		Type      string         `json:"type"`
		Timestamp string         `json:"timestamp"`
		Data      map[string]any `json:"data"`
	}{engine.WebhookEventID(source, ev.Seq), ev.Type, ev.At.UTC().Format("2006-01-02T15:04:05.000Z07:00"), data})
	return b
}
