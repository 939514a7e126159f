package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine"
)

// Origin is what the pump needs of an engine whose outbox it drains.
// *engine.Engine implements it.
type Origin interface {
	// Outbox returns up to max durable records for partition to with
	// Seq > after, oldest first (after 0: from the oldest the outbox
	// holds). Safe for concurrent use.
	Outbox(to uint32, after uint64, max int) (engine.RelayBatch, error)
	// OutboxDests lists the partitions the outbox holds records for.
	OutboxDests() ([]uint32, error)
	// OutboxDurable is the seq of the last durable record for to.
	OutboxDurable(to uint32) uint64
	// OutboxReady is signalled (capacity 1, coalesced) after a batch that
	// wrote outbox records is durable. The pump is its one reader.
	OutboxReady() <-chan struct{}
	// AckRelay deletes the records for to through seq and returns once
	// that is durable. Idempotent; an error leaves the records (the pump
	// sends them again).
	AckRelay(ctx context.Context, to uint32, through uint64) error
}

// Dest is what the pump needs of a destination partition. *engine.Engine
// implements it in process; stage 5 gives one that posts to the
// partition's owner.
type Dest interface {
	// ApplyRelay applies b, idempotently, and returns once that is
	// durable the seq through which b.From's records are applied. On an
	// error the outcome may be unknown: the pump sends the records again.
	// It must return when ctx ends (Close cancels it). It is called
	// from one goroutine per (origin, destination) link, so calls for
	// different origins or destinations run concurrently.
	ApplyRelay(ctx context.Context, b engine.RelayBatch) (through uint64, err error)
}

var (
	_ Origin = (*engine.Engine)(nil)
	_ Dest   = (*engine.Engine)(nil)
)

// Config says what a Pump moves and how.
type Config struct {
	// Origins are the engines whose outboxes the pump drains from the
	// start, by partition (Attach adds more, Detach stops one).
	Origins map[uint32]Origin
	// Dests are the partitions records go to. In process, the same
	// engines as Origins. Records for a partition missing here stay in
	// the outbox (logged, and counted with reason "no_destination").
	Dests map[uint32]Dest
	// Parallel is how many of an origin's destinations may have a batch
	// in flight at once; zero means 1: in process, where every
	// destination's commit shares the same disk and cores, one at a time
	// acknowledges submits sooner (measured: bench/RESULTS.md); between
	// nodes, where a destination's round trip is its own, more.
	Parallel int
	// Batch is the most records sent in one ApplyRelay; zero means 256.
	Batch int
	// MinBackoff is the wait before the first retry of a failed step;
	// each further failure doubles it, up to MaxBackoff. Zero means
	// 10 ms and 5 s.
	MinBackoff, MaxBackoff time.Duration
	// Clock times the backoff; nil means engine.SystemClock.
	Clock engine.Clock
	// Registerer receives the metrics (see the package doc); nil means
	// they are not registered. Close unregisters them.
	Registerer prometheus.Registerer
	// Logger receives failures; nil means discard.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Batch == 0 {
		c.Batch = 256
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 10 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 5 * time.Second
	}
	if c.Clock == nil {
		c.Clock = engine.SystemClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports whether the configuration can be used (after its
// defaults are applied).
func (c *Config) Validate() error {
	switch {
	case c.Batch < 0:
		return fmt.Errorf("relay: Batch %d", c.Batch)
	case c.Parallel < 0:
		return fmt.Errorf("relay: Parallel %d", c.Parallel)
	case c.MinBackoff < 0 || c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("relay: backoff from %v to %v", c.MinBackoff, c.MaxBackoff)
	}
	for p, o := range c.Origins {
		if o == nil {
			return fmt.Errorf("relay: origin %d is nil", p)
		}
	}
	for p, d := range c.Dests {
		if d == nil {
			return fmt.Errorf("relay: destination %d is nil", p)
		}
	}
	return nil
}

// Pump moves relay records from its origins' outboxes to their
// destinations (see the package doc). Its goroutines run from New to
// Close.
type Pump struct {
	cfg  Config
	m    *metrics
	once sync.Once

	mu      sync.Mutex
	origins map[uint32]*originRun // guarded by mu; nil once closed
}

// originRun is one origin's goroutines: its loop, its links and their
// acknowledgements in flight.
type originRun struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// apply holds a token per batch in flight to a destination
	// (capacity Config.Parallel).
	apply chan struct{}

	mu    sync.Mutex
	links []*link // guarded by mu; set once its loop has made them (Wake)
}

// New starts a pump: one goroutine per origin (Config.Origins, and later
// Attach), which passes its OutboxReady on, and one per link, which
// first drains what the outbox holds, then waits for it.
func New(cfg Config) (*Pump, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// The goroutines read them: a caller's later change must not race.
	cfg.Origins, cfg.Dests = maps.Clone(cfg.Origins), maps.Clone(cfg.Dests)
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	p := &Pump{cfg: cfg, m: m, origins: map[uint32]*originRun{}}
	for from, o := range cfg.Origins {
		if err := p.Attach(from, o); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

// ErrClosed is returned by Attach on a closed pump.
var ErrClosed = errors.New("relay: the pump is closed")

// Attach starts draining o, partition from's outbox (a partition this
// node now owns: cluster mode attaches an engine when its member starts
// serving). Its links are to every configured destination and to what
// its outbox holds records for.
func (p *Pump) Attach(from uint32, o Origin) error {
	if o == nil {
		return fmt.Errorf("relay: origin %d is nil", from)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.origins == nil:
		return ErrClosed
	case p.origins[from] != nil:
		return fmt.Errorf("relay: origin %d is attached already", from)
	}
	ctx, cancel := context.WithCancel(context.Background())
	run := &originRun{cancel: cancel, apply: make(chan struct{}, max(p.cfg.Parallel, 1))}
	p.origins[from] = run
	run.wg.Add(1)
	go func() {
		defer run.wg.Done()
		p.originLoop(ctx, from, o, run)
	}()
	return nil
}

// Detach stops draining partition from's outbox and waits until nothing
// of the pump uses its engine any more (it may then be closed). A step
// in flight is abandoned where it is, as in Close. Nothing if from is
// not attached.
func (p *Pump) Detach(from uint32) {
	p.mu.Lock()
	run := p.origins[from]
	delete(p.origins, from)
	p.mu.Unlock()
	if run != nil {
		run.cancel()
		run.wg.Wait()
	}
}

// Wake ends the backoff of every link to partition to, which then tries
// again at once: the caller learned that the partition has a new owner
// serving it (in cluster mode, the coordinator's announcement that a
// node attached it). Without it, records for a partition that moved wait
// out a backoff that grew while it had no owner (up to MaxBackoff). A
// hint: a link that is not backing off takes it as a wake-up, which
// costs at most one read of its outbox.
//
// A batch in flight to the partition is abandoned and sent again, to
// the owner asked anew: the one it went to may be frozen (paused,
// its machine hung, the network to it dropping packets), and would
// otherwise hold the link until the Dest gives up (HTTPDest.Timeout,
// 30 s by default), long after the new owner serves. Abandoning is safe
// for the same reason a retry is: the records stay in the outbox until
// a destination answers that it holds them, and it skips what it holds.
func (p *Pump) Wake(to uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, run := range p.origins {
		run.mu.Lock()
		for _, l := range run.links {
			if l.to == to {
				poke(l.retry)
				l.abandon()
			}
		}
		run.mu.Unlock()
	}
}

// Close stops the pump and waits for its goroutines. A step in flight is
// abandoned where it is: its records stay in the outbox until a later
// pump moves them, and the destination skips what it already applied.
// Close it before its engines (it would otherwise log their refusals
// until it is closed). Idempotent.
func (p *Pump) Close() {
	p.once.Do(func() {
		p.mu.Lock()
		runs := p.origins
		p.origins = nil
		p.mu.Unlock()
		for _, run := range runs {
			run.cancel()
		}
		for _, run := range runs {
			run.wg.Wait()
		}
		p.m.unregister()
	})
}

// link is one origin's traffic to one destination; owned by its own
// goroutine (linkLoop).
type link struct {
	from, to uint32
	dest     Dest // nil: no destination configured
	// acked is the seq through which the destination holds the records
	// and the origin deleted them, as far as this pump knows (0 at start:
	// Outbox then reads from the oldest record left).
	acked uint64
	seen  uint64 // the highest seq Outbox returned: durable
	// failures counts consecutive failed steps.
	failures int

	relayed prometheus.Counter
	backlog prometheus.Gauge

	// ack is the result of the acknowledgement in flight (nil: none). It
	// runs beside the next batch's apply: at most one per link.
	ack  chan error
	wake chan struct{} // capacity 1: new records, or an acknowledgement ended
	// retry (capacity 1) ends a backoff early: the destination's
	// partition has a new owner serving it (Wake).
	retry chan struct{}
	run   *originRun // its origin's: acknowledgements in flight count in its wg

	// inFlight cancels the batch in flight to the destination, if one is
	// (Wake abandons it); guarded by inFlightMu, as Wake runs on another
	// goroutine.
	inFlightMu sync.Mutex
	inFlight   context.CancelCauseFunc
}

// send is l.dest.ApplyRelay(ctx, b), abandoned (ErrAbandoned) if Wake
// says meanwhile that the destination has a new owner.
func (l *link) send(ctx context.Context, b engine.RelayBatch) (uint64, error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	l.inFlightMu.Lock()
	l.inFlight = cancel
	l.inFlightMu.Unlock()
	through, err := l.dest.ApplyRelay(sctx, b)
	l.inFlightMu.Lock()
	l.inFlight = nil
	l.inFlightMu.Unlock()
	if err != nil && ctx.Err() == nil && errors.Is(err, context.Canceled) && errors.Is(context.Cause(sctx), ErrAbandoned) {
		// (An answer that came before the abandon keeps its own error.)
		err = fmt.Errorf("%w (%v)", ErrAbandoned, err)
	}
	return through, err
}

// abandon cancels the batch in flight, if there is one.
func (l *link) abandon() {
	l.inFlightMu.Lock()
	defer l.inFlightMu.Unlock()
	if l.inFlight != nil {
		l.inFlight(ErrAbandoned)
	}
}

// ErrAbandoned is a step's error when Wake abandoned its batch in flight:
// the destination's partition has a new owner, to which the link sends
// again at once.
var ErrAbandoned = errors.New("relay: abandoned: the destination's partition has a new owner")

var errNoDest = errors.New("relay: no destination for this partition")

// originLoop runs from's links, one goroutine each (a slow or unreachable
// destination holds up only its own traffic, and the origin's
// destinations are served in parallel), and passes each OutboxReady on
// to all of them until ctx ends.
func (p *Pump) originLoop(ctx context.Context, from uint32, o Origin, run *originRun) {
	links := p.links(from, o)
	for _, l := range links {
		l.wake = make(chan struct{}, 1)
		l.wake <- struct{}{} // drain what the outbox holds at start
		l.retry = make(chan struct{}, 1)
		l.run = run
	}
	// Listed before they run: a Wake that follows a link's first failure
	// must find the link (it found none, and the link backed off in full,
	// when the list came after: TestPumpWakeEndsTheBackoff failed so in
	// make test).
	run.mu.Lock()
	run.links = links
	run.mu.Unlock()
	for _, l := range links {
		run.wg.Add(1)
		go func() {
			defer run.wg.Done()
			p.linkLoop(ctx, o, l)
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.OutboxReady():
			for _, l := range links {
				poke(l.wake)
			}
		}
	}
}

// poke signals ch (capacity 1) without blocking: signals coalesce.
func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// linkLoop moves l's records until ctx ends: steps while they move
// records, then waits for a wake-up (new durable records, or an
// acknowledgement that ended) or the retry after a failure.
func (p *Pump) linkLoop(ctx context.Context, o Origin, l *link) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.wake:
		case <-l.retry:
		}
		for {
			moved, err := p.step(ctx, o, l)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				l.failures = 0
				if moved {
					continue
				}
				break
			}
			l.failures++
			select {
			case <-ctx.Done():
				return
			case <-p.cfg.Clock.Until(p.cfg.Clock.Now().Add(p.backoff(l.failures))):
			case <-l.retry:
				// A new owner serves the destination: the backoff
				// that grew while it had none starts again.
				l.failures = 0
			}
		}
	}
}

// links makes from's links: every destination but from itself, and any
// other partition its outbox holds records for (with no destination:
// they wait there).
func (p *Pump) links(from uint32, o Origin) []*link {
	tos := make([]uint32, 0, len(p.cfg.Dests))
	for to := range p.cfg.Dests {
		if to != from {
			tos = append(tos, to)
		}
	}
	listed, err := o.OutboxDests()
	if err != nil {
		// The configured destinations are drained all the same (Outbox
		// from the oldest record): only unknown ones go unreported.
		p.m.originErrors.WithLabelValues(label(from), "dests").Inc()
		p.cfg.Logger.Warn("relay: listing the outbox's destinations failed", "from", from, "err", err)
	}
	for _, to := range listed {
		if to != from && !slices.Contains(tos, to) {
			tos = append(tos, to)
		}
	}
	slices.Sort(tos)
	links := make([]*link, len(tos))
	for i, to := range tos {
		links[i] = &link{
			from: from, to: to, dest: p.cfg.Dests[to],
			relayed: p.m.relayed.WithLabelValues(label(from), label(to)),
			backlog: p.m.backlog.WithLabelValues(label(from), label(to)),
		}
	}
	return links
}

// step moves one batch of l's records, if there are any: it reports
// whether it did, and an error to retry after a backoff.
func (p *Pump) step(ctx context.Context, o Origin, l *link) (moved bool, err error) {
	if err := p.ackResult(ctx, l, false); err != nil {
		return false, err
	}
	// The slot is taken before the outbox is read, so that a link waiting
	// for it sends what is there once it has it, not what was there when
	// it began to wait.
	select {
	case l.run.apply <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-l.run.apply }()
	b, err := o.Outbox(l.to, l.acked, p.cfg.Batch)
	if err != nil {
		p.m.originErrors.WithLabelValues(label(l.from), "outbox").Inc()
		p.cfg.Logger.Error("relay: reading the outbox failed", "from", l.from, "to", l.to, "err", err)
		return false, err
	}
	if len(b.Records) == 0 {
		return false, nil
	}
	fromOldest := l.acked == 0
	if l.acked == 0 {
		// What was before the oldest record is acknowledged (deleted).
		l.acked = b.Records[0].Seq - 1
	}
	l.seen = max(l.seen, b.Records[len(b.Records)-1].Seq, o.OutboxDurable(l.to))
	l.backlog.Set(float64(l.seen - l.acked))
	if l.dest == nil {
		if l.failures == 0 {
			p.cfg.Logger.Error("relay: records for a partition with no destination stay in the outbox", "from", l.from, "to", l.to)
		}
		p.m.applyErrors.WithLabelValues(label(l.from), label(l.to), "no_destination").Inc()
		return false, errNoDest
	}
	sent := time.Now()
	through, err := l.send(ctx, b)
	if err == nil {
		p.m.apply.Observe(time.Since(sent).Seconds())
	}
	if err != nil {
		if ctx.Err() != nil {
			return false, err // closing: the outcome is unknown, the records stay
		}
		p.m.applyErrors.WithLabelValues(label(l.from), label(l.to), reason(err)).Inc()
		if errors.Is(err, engine.ErrRelayGap) && !fromOldest {
			// The destination lacks records before ours: send the
			// outbox again from its oldest record, at once.
			p.cfg.Logger.Warn("relay: a gap at the destination; sending again from the oldest record", "from", l.from, "to", l.to, "err", err)
			if err := p.ackResult(ctx, l, true); err != nil { // the oldest once it is done
				return false, err
			}
			l.acked = 0
			return true, nil
		}
		if errors.Is(err, ErrAbandoned) {
			p.cfg.Logger.Info("relay: the destination has a new owner; sending the batch in flight again", "from", l.from, "to", l.to)
			return false, err
		}
		p.cfg.Logger.Warn("relay: apply failed; retrying after a backoff", "from", l.from, "to", l.to, "err", err)
		return false, err
	}
	// The destination holds them: the next batch goes while the origin
	// deletes these (one acknowledgement in flight per link), so the
	// acknowledgement's commit is not on the next batch's path.
	if err := p.ackResult(ctx, l, true); err != nil {
		return false, err
	}
	n := 0
	now := p.cfg.Clock.Now()
	for _, r := range b.Records {
		if r.Seq <= through {
			n++
			if r.Kind == engine.RelayMessage && r.Msg != nil {
				p.m.delay.Observe(max(now.Sub(r.Msg.Created), 0).Seconds())
			}
		}
	}
	l.relayed.Add(float64(n))
	l.acked = max(l.acked, through)
	l.seen = max(l.seen, l.acked, o.OutboxDurable(l.to))
	l.backlog.Set(float64(l.seen - l.acked))
	ch, wake := make(chan error, 1), l.wake
	l.ack = ch
	l.run.wg.Add(1)
	go func() {
		defer l.run.wg.Done()
		ch <- o.AckRelay(ctx, l.to, through)
		poke(wake)
	}()
	return true, nil
}

// ackResult takes the result of l's acknowledgement in flight, if it
// ended (or, with wait, once it ends). One that failed leaves its records
// in the outbox although the destination holds them: the link reads the
// outbox again from its oldest record, which the destination skips (its
// watermark) and answers with how far it holds, and acknowledges that.
func (p *Pump) ackResult(ctx context.Context, l *link, wait bool) error {
	if l.ack == nil {
		return nil
	}
	var err error
	if wait {
		select {
		case err = <-l.ack:
		case <-ctx.Done():
			return ctx.Err()
		}
	} else {
		select {
		case err = <-l.ack:
		default:
			return nil
		}
	}
	l.ack = nil
	if err == nil || ctx.Err() != nil {
		return err
	}
	p.m.originErrors.WithLabelValues(label(l.from), "ack").Inc()
	p.cfg.Logger.Error("relay: acknowledging failed; the records will be sent again", "from", l.from, "to", l.to, "err", err)
	l.acked = 0
	return err
}

// backoff is the wait after the nth consecutive failure.
func (p *Pump) backoff(n int) time.Duration {
	d := p.cfg.MinBackoff
	for i := 1; i < n && d < p.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, p.cfg.MaxBackoff)
}

// reason names an ApplyRelay error for the metric: one of a few values.
func reason(err error) string {
	switch {
	case errors.Is(err, engine.ErrRelayGap):
		return "gap"
	case errors.Is(err, engine.ErrWrongPartition):
		return "wrong_partition"
	case errors.Is(err, engine.ErrBadRelay):
		return "bad_relay"
	case errors.Is(err, ErrAbandoned):
		return "abandoned"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return strings.ToLower(string(engine.CodeOf(err)))
}

func label(p uint32) string { return strconv.FormatUint(uint64(p), 10) }
