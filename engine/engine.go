package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine/internal/pipeline"
	"github.com/dingmq/ding/engine/store"
)

// Sentinel errors. Callers test them with errors.Is; the edges map them to
// protocol error codes.
var (
	// ErrClosed is returned by every operation after Close.
	ErrClosed = NewError(CodeUnavailable, "engine: closed")
	// ErrTooLarge is returned by Submit when the body exceeds Config.MaxBody.
	ErrTooLarge = NewError(CodeTooLarge, "engine: message too large")
	// ErrNoRecipients is returned by Submit when To is empty.
	ErrNoRecipients = NewError(CodeBadRequest, "engine: no recipients")
	// ErrTooManyRecipients is returned by Submit when To exceeds Config.MaxRecipients.
	ErrTooManyRecipients = NewError(CodeBadRequest, "engine: too many recipients")
	// ErrUnknownRecipient is returned (wrapped, with the name) by Submit when
	// a recipient does not exist. Recipients implementations wrap it.
	ErrUnknownRecipient = NewError(CodeUnknownRecipient, "engine: unknown recipient")
	// ErrBadKind is returned by Submit for a kind clients may not submit.
	ErrBadKind = NewError(CodeBadRequest, "engine: bad message kind")
	// ErrEmptyBody is returned by Submit for a message with nothing to
	// say: a text that is empty or only white space, or empty data. A
	// forward may come without a text of its own.
	ErrEmptyBody = NewError(CodeBadRequest, "engine: empty message: the text is empty or only white space")
	// ErrNotRecipient is returned by Read when the user is not a recipient
	// of the message (or the message does not exist).
	ErrNotRecipient = NewError(CodeNotRecipient, "engine: not a recipient")
	// ErrBadAck is returned by Ack for a sequence number beyond the
	// stream's head: the device cannot have received it.
	ErrBadAck = NewError(CodeBadAck, "engine: ack beyond stream head")
	// ErrNotFound is returned by Message and Receipts for an unknown id.
	ErrNotFound = NewError(CodeNotFound, "engine: not found")
	// ErrFailed is returned (wrapping the cause) once a commit to the store
	// has failed: the engine refuses further writes, because it can no
	// longer promise durability. Not safe to retry on this node.
	ErrFailed = NewError(CodeUnavailable, "engine: store failed")
	// ErrReadOnly is returned (wrapping the reason) for every write while
	// the engine refuses them (SetReadOnly: the disk is nearly full);
	// reads, resumes and deliveries of what is stored go on. Retry later.
	ErrReadOnly = NewError(CodeUnavailable, "engine: read-only for now")
	// ErrAborted is returned for an op that shared a batch with ops that
	// failed and could not be committed without them. It is not the op's
	// fault: retry it (a submit with the same ClientID is deduplicated).
	ErrAborted = NewError(CodeAborted, "engine: batch aborted; retry")
)

// Recipients resolves and checks the recipients of a submission. It is the
// engine's view of the directory (package fanout implements it).
type Recipients interface {
	// Resolve returns the user ids that should receive a message addressed
	// to to, or an error wrapping ErrUnknownRecipient. It is called
	// concurrently and must not block on I/O.
	Resolve(to []string) ([]string, error)
}

// Sink receives stream entries once they are durable.
type Sink interface {
	// Deliver is called from the publish loop (one goroutine, after each
	// durable batch's ops are answered), for each user in turn, with that
	// user's new entries in sequence order. A secret message comes as its
	// masked copy (Message.Secret set, From and To pseudonyms), as from
	// Range: an edge may encode what it is given as is. Calls never
	// overlap and never skip a sequence number unless a commit failed. It
	// must not block (the next batch's answers wait behind it): hand the
	// entries over and return. It may keep the slice.
	Deliver(user string, entries []Entry)
}

// Config configures an Engine. Store is required; every other field has a
// default.
type Config struct {
	Store store.Store
	// Clock is the time source; nil means SystemClock.
	Clock Clock
	// Recipients checks submissions' recipients; nil accepts every valid name.
	Recipients Recipients
	// MaxBody is the largest body accepted; zero means 64 KiB.
	MaxBody int
	// MaxRecipients is the most recipients (or group targets) one message
	// names; zero means 1000.
	MaxRecipients int
	// MaxFanout is the most users a message may reach once its group
	// targets are expanded; zero means 1,000,000.
	MaxFanout int
	// FanoutChunk is how many recipients' entries one commit batch writes
	// for a message to many: a bigger fanout is written chunk by chunk in
	// the background after the message is durable, one chunk per batch,
	// so that other users' ops never wait long behind it (a 1:1 message
	// during an announcement waits for at most the chunk in the batch
	// being built); zero means 1024 (bench/RESULTS.md, announce).
	FanoutChunk int
	// MaxBatch bounds the work committed in one synced batch: operations,
	// a READ counting once per id it marks; zero means 4096.
	MaxBatch int
	// QueueLen bounds the operations waiting for the commit loop; zero means
	// 16384. A full queue blocks submitters (back-pressure).
	QueueLen int
	// MessageCacheBytes bounds the cache of recently committed messages
	// that catch-up reads from before the store; zero means 64 MiB, a
	// negative value disables it.
	MessageCacheBytes int
	// Logger receives operational logs; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the engine's metrics; nil means none are registered.
	Registerer prometheus.Registerer

	// Escalation (DINGs).

	// Contacts gives DINGs their recipients' phones, names and quiet
	// hours; nil means user recipients have no phone and no e-mail.
	Contacts Contacts
	// Notifier sends SMS, calls and e-mails (Notifiers routes each
	// channel to its own); nil records those steps as not configured.
	Notifier Notifier
	// Quotas bound DINGs; zero fields take their defaults.
	Quotas Quotas
	// Budget, if set, shares the org's daily SMS and call budgets
	// (Quotas.SMSPerDay, CallsPerDay) with the other engines of the org
	// (several partitions): a send within this engine's own count is made
	// only if Budget.Take grants it too. Nil: this engine's count alone.
	Budget Budget
	// SendTimeout bounds one send to the Notifier; zero means 15s.
	SendTimeout time.Duration
	// RecoverAfter is how long after a send was decided it is made again
	// if its outcome was never recorded because the process died; zero
	// means 5s. (While the process lives, a send still in flight is never
	// made twice: its recovery timer is re-armed instead.)
	RecoverAfter time.Duration
	// OutcomeWait is how long a recipient's escalation waits for the
	// provider's final status of an SMS or call it accepted (sent,
	// delivered or failed; completed, busy, no answer or failed) before
	// it stops waiting, so that a status callback that never comes does
	// not keep the policy from being exhausted; zero means 10m.
	OutcomeWait time.Duration
	// DispatchWorkers is how many sends run at once; zero means 8.
	DispatchWorkers int
	// NoCallFallback turns off the SMS sent at once when a call is busy,
	// unanswered or fails.
	NoCallFallback bool
	// PushConfigured makes DefaultPushPolicy the default policy (when no
	// policy named "default" is stored): a push provider is configured.
	PushConfigured bool

	// Secret chats (secret.go).

	// Keys keeps the keys of secret messages of levels 1 and 2 (package
	// keyring); nil keeps them in memory, for tests on an in-memory store.
	Keys Keys
	// BurnAfter is how long after its first read a secret message burns,
	// and the longest delay a level-3 chat may choose; zero means 30s.
	BurnAfter time.Duration
	// SecretUnreadTTL is how long an unread secret message of level 2 or
	// 3 lives; zero means 24h.
	SecretUnreadTTL time.Duration

	// Partitions (relay.go).

	// Partition is this engine's partition, when users are spread over
	// several engines by Placement; zero by default.
	Partition uint32
	// Placement says which partition a user belongs to. It is called
	// concurrently, on the commit loop too, and must be fast and must not
	// change its answer for a user with records in flight. Nil (the
	// default) makes every user local: the relay writes nothing.
	Placement func(user string) uint32
	// HookSource names this engine's webhook outbox in event ids
	// (webhook.go: "evt_<source>_<seq>"); empty means the partition's
	// number. Engines whose events reach the same receivers need
	// different names (internal/node gives the directory's engine "dir").
	HookSource string

	// Retention says what is deleted in the background (retention.go);
	// its zero value keeps streams and messages forever and expires
	// bookkeeping (client message ids after 7 days, statistics after 400).
	Retention Retention
}

func (c *Config) setDefaults() {
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	if c.MaxBody == 0 {
		c.MaxBody = 64 << 10
	}
	if c.MaxRecipients == 0 {
		c.MaxRecipients = 1000
	}
	if c.MaxFanout == 0 {
		c.MaxFanout = 1_000_000
	}
	if c.FanoutChunk == 0 {
		c.FanoutChunk = 1024
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 4096
	}
	if c.QueueLen == 0 {
		c.QueueLen = 16384
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MessageCacheBytes == 0 {
		c.MessageCacheBytes = 64 << 20
	}
	c.Quotas.setDefaults()
	if c.SendTimeout == 0 {
		c.SendTimeout = 15 * time.Second
	}
	if c.RecoverAfter == 0 {
		c.RecoverAfter = 5 * time.Second
	}
	if c.OutcomeWait == 0 {
		c.OutcomeWait = 10 * time.Minute
	}
	if c.DispatchWorkers == 0 {
		c.DispatchWorkers = 8
	}
	if c.BurnAfter == 0 {
		c.BurnAfter = 30 * time.Second
	}
	if c.SecretUnreadTTL == 0 {
		c.SecretUnreadTTL = 24 * time.Hour
	}
	if c.Keys == nil {
		c.Keys = newMemKeys()
	}
	c.Retention.setDefaults()
}

// Validate reports whether the configuration can be used.
func (c *Config) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("engine: config: Store is required")
	case c.MaxBody < 0 || c.MaxRecipients < 0 || c.MaxBatch < 0 || c.QueueLen < 0:
		return errors.New("engine: config: limits must not be negative")
	case c.SendTimeout < 0 || c.RecoverAfter < 0 || c.OutcomeWait < 0 || c.DispatchWorkers < 0:
		return errors.New("engine: config: escalation settings must not be negative")
	case c.BurnAfter != 0 && c.BurnAfter < MinBurnAfter:
		return fmt.Errorf("engine: config: BurnAfter %v is below %v", c.BurnAfter, MinBurnAfter)
	case c.SecretUnreadTTL < 0:
		return errors.New("engine: config: SecretUnreadTTL must not be negative")
	case c.Placement != nil && c.Partition > maxHome:
		return fmt.Errorf("engine: config: Partition %d is beyond %d, the largest a message id can name", c.Partition, maxHome)
	}
	return c.Retention.validate()
}

// Engine is Ding's core: it stores messages durably, sequences each user's
// stream, tracks cursors and receipts, and hands durable entries to a Sink.
// All methods are safe for concurrent use.
type Engine struct {
	cfg      Config
	readOnly atomic.Pointer[error] // why writes are refused (SetReadOnly); nil: writable
	st       store.Store
	log      *slog.Logger
	metrics  *metrics
	cache    *msgCache // recently committed messages; nil when disabled

	sinkMu   sync.RWMutex
	sink     Sink     // guarded by sinkMu
	presence Presence // guarded by sinkMu

	pipe *pipeline.Pipeline[*txn]

	// The commit loop's own state (only txn code touches it).
	ids          idGen             // message ids, strictly increasing
	appliedHeads map[string]uint64 // each stream's applied head (stream.go)

	// headsMu guards heads: the durable head of each stream the commit
	// loop has touched (stream.go). Only the commit and publish loops
	// write it.
	headsMu sync.RWMutex
	heads   map[string]uint64

	closeOnce sync.Once
	closed    chan struct{} // closed once Shutdown has stopped every goroutine

	// Escalation (timer.go).
	pendingTimers  atomic.Int64 // armed timers as of the last durable batch (readers: PendingSteps, the gauge)
	appliedTimers  int64        // armed timers as of the last applied batch; the commit loop's own
	minArmed       atomic.Int64 // earliest timer armed since the timer loop last looked (ms)
	timerWake      chan struct{}
	stopTimers     chan struct{}
	timerDone      chan struct{}
	sendQ          chan sendTask
	cancelSends    context.CancelFunc // ends sends in flight (Close)
	dispatchWG     sync.WaitGroup
	inflightMu     sync.Mutex
	inflight       map[string]struct{} // sends decided and not yet recorded; guarded by inflightMu
	deferred       map[string]struct{} // sends dropped from a full queue, for their recovery timer; guarded by inflightMu
	inflightShrank chan struct{}       // closed and replaced when inflight loses an entry; guarded by inflightMu

	// Fanout of messages to many (fanout.go).
	fanoutWake chan struct{}
	active     ActiveFilter // cfg.Recipients, if it can tell removed users apart; else nil
	stopFanout chan struct{}
	fanoutDone chan struct{}

	// Secret chats (secret.go).
	keys           Keys                  // cfg.Keys: levels 1 and 2
	fleeting       *memKeys              // level 3
	chatCache      *idCache[*Chat]       // shared records, never modified
	secretCache    *idCache[secretState] // live secret messages' states, written through after each commit
	pushTokenN     atomic.Int64          // stored push tokens; -1: not counted since the last change (push.go)
	liveSecretN    atomic.Int64          // live secret messages as of the last durable batch (readers)
	appliedSecretN int64                 // live secret messages as of the last applied batch; the commit loop's own

	stopStartupBurns context.CancelFunc // nil if there were none
	startupBurnsDone chan struct{}
	sinkSet          chan struct{} // closed by the first SetSink
	sinkSetOnce      sync.Once

	sweepState // retention.go

	// Relay to other partitions (relay.go).
	relayNext   map[uint32]uint64 // last outbox seq allocated per destination as of the last applied batch; the commit loop's own
	outMu       sync.RWMutex
	outDurable  map[uint32]uint64 // last durable outbox seq per destination; guarded by outMu
	outTrimmed  map[uint32]uint64 // per destination, the seq through which the outbox is deleted as of the last applied batch; written by the commit loop under outMu, read there without it
	outboxReady chan struct{}     // capacity 1: a batch that wrote outbox records is durable

	hookState // outbound event webhooks (webhook.go)
}

// Open starts an engine on cfg.Store. The store already holds all state:
// nothing is scanned at start-up; each stream's head is loaded on first use.
func Open(cfg Config) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	e := &Engine{
		cfg:          cfg,
		st:           cfg.Store,
		log:          cfg.Logger,
		heads:        make(map[string]uint64),
		appliedHeads: make(map[string]uint64),
		cache:        newMsgCache(cfg.MessageCacheBytes),

		timerWake:  make(chan struct{}, 1),
		stopTimers: make(chan struct{}),
		timerDone:  make(chan struct{}),
		sendQ:      make(chan sendTask, 4096),
		inflight:   map[string]struct{}{},
		deferred:   map[string]struct{}{},

		inflightShrank: make(chan struct{}),
		fanoutWake:     make(chan struct{}, 1),
		stopFanout:     make(chan struct{}),
		fanoutDone:     make(chan struct{}),

		startupBurnsDone: make(chan struct{}),
		sinkSet:          make(chan struct{}),
		sweepState:       sweepState{sweeperDone: make(chan struct{})},
		closed:           make(chan struct{}),
		outboxReady:      make(chan struct{}, 1),
	}
	e.pushTokenN.Store(-1)
	e.minArmed.Store(math.MaxInt64)
	e.ids.home, e.ids.homed = cfg.Partition, cfg.Placement != nil
	e.active, _ = cfg.Recipients.(ActiveFilter)
	e.keys, e.fleeting = cfg.Keys, newMemKeys()
	e.chatCache, e.secretCache = newIDCache[*Chat](16384), newIDCache[secretState](131072)
	if err := e.loadRelayCounters(); err != nil {
		return nil, err
	}
	if err := e.loadHooks(); err != nil {
		return nil, err
	}
	keyless, err := e.reconcileSecrets()
	if err != nil {
		return nil, err
	}
	switch v, err := cfg.Store.Get(timersCounterKey); {
	case err == nil:
		n, err := parseU64(v)
		if err != nil {
			return nil, fmt.Errorf("engine: timer count: %w", err)
		}
		e.pendingTimers.Store(int64(n))
		e.appliedTimers = int64(n)
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("engine: timer count: %w", err)
	}
	if e.metrics, err = newMetrics(cfg.Registerer, func() float64 { return float64(e.pipe.Len()) },
		func() float64 { return float64(e.pendingTimers.Load()) },
		func() float64 { return float64(e.liveSecretN.Load()) }); err != nil {
		return nil, err
	}
	if e.pipe, err = pipeline.New(pipeline.Config[*txn]{
		Store:       cfg.Store,
		NewTxn:      e.newTxn,
		Now:         cfg.Clock.Now,
		Aborts:      func(err error) bool { return !clientError(err) },
		Aborted:     ErrAborted,
		Fail:        func(cause error) error { return fmt.Errorf("%w: commit: %w", ErrFailed, cause) },
		Closed:      ErrClosed,
		Gate:        e.writable,
		MaxBatch:    cfg.MaxBatch,
		QueueLen:    cfg.QueueLen,
		OnQueueFull: e.metrics.queueFull.Inc,
		OnBatch: func(ops int, build, commit, publish time.Duration) {
			e.metrics.buildSeconds.Observe(build.Seconds())
			e.metrics.commitSeconds.Observe(commit.Seconds())
			e.metrics.publishSeconds.Observe(publish.Seconds())
			e.metrics.batchOps.Observe(float64(ops))
		},
		Logger: cfg.Logger,
	}); err != nil {
		return nil, err
	}
	go e.timerLoop()
	go e.fanoutLoop()
	go e.sweeperLoop()
	var sendCtx context.Context
	sendCtx, e.cancelSends = context.WithCancel(context.Background())
	e.dispatchWG.Add(cfg.DispatchWorkers)
	for range cfg.DispatchWorkers {
		go e.dispatchLoop(sendCtx)
	}
	if len(keyless.restart) > 0 || len(keyless.lost) > 0 {
		// Their keys are gone, so they can no longer be read (Range
		// shows them as burned): burning them can wait until after Open,
		// which a million of them would otherwise hold up for seconds.
		ctx, cancel := context.WithCancel(context.Background())
		e.stopStartupBurns = cancel
		go e.startupBurns(ctx, keyless)
	} else {
		close(e.startupBurnsDone)
	}
	return e, nil
}

// SetSink sets where durable entries go. Call it before the first write.
func (e *Engine) SetSink(s Sink) {
	e.sinkMu.Lock()
	e.sink = s
	e.sinkMu.Unlock()
	e.sinkSetOnce.Do(func() { close(e.sinkSet) })
}

func (e *Engine) getSink() Sink {
	e.sinkMu.RLock()
	defer e.sinkMu.RUnlock()
	return e.sink
}

// MaxBody is the largest body Submit accepts.
func (e *Engine) MaxBody() int { return e.cfg.MaxBody }

// Close is Shutdown without a deadline.
func (e *Engine) Close() error { return e.Shutdown(context.Background()) }

// Shutdown stops the escalation timers and the fanout loop, cancels sends
// in flight (a send whose outcome is not recorded is made again after a
// restart), stops accepting operations, commits those already queued, and
// waits for every goroutine; or, if ctx ends first, returns ctx.Err() (the
// goroutines then finish on their own; the store must stay open until
// they do, which a later Shutdown call waits for). It does not close the
// store. It returns the error that stopped the engine from writing, if
// any. It is idempotent: later calls wait again and return the same.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.closeOnce.Do(func() {
		if e.stopStartupBurns != nil {
			e.stopStartupBurns()
		}
		close(e.stopTimers)
		close(e.stopFanout)
		e.cancelSends()
		go func() {
			defer close(e.closed)
			<-e.startupBurnsDone
			<-e.timerDone
			<-e.fanoutDone
			<-e.sweeperDone
			e.pipe.Close(context.Background())
			close(e.sendQ)
			e.dispatchWG.Wait()
		}()
	})
	select {
	case <-e.closed:
		return e.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Err returns the error that stopped the engine from writing, or nil.
func (e *Engine) Err() error { return e.pipe.Err() }

// Submission is a message as a sender submits it.
type Submission struct {
	From string
	// To are user ids, or group targets ("group:ID", "dept:ID") that
	// Config.Recipients expands. The message records To as given; its
	// recipients are the expansion.
	To       []string
	Kind     Kind
	Body     []byte
	ClientID string // optional; a retry with the same ClientID returns the original id
	// Chat sends the message in a secret chat (To must then be empty:
	// the other participant receives it).
	Chat ID
	// Forward or Quote name a message the sender sent or received that
	// this one forwards or quotes; a secret message is refused
	// (ErrNoForward).
	Forward, Quote ID
	// ViaAPI marks a message a back-office system sent through the admin
	// API (FlagViaAPI): webhooks report its receipts.
	ViaAPI bool

	flags      uint32   // Message.Flags (announcements)
	recipients []string // the expansion of To, filled in by check
	chat       *Chat    // the secret chat, filled in by check
}

// SubmitResult answers a durable submission.
type SubmitResult struct {
	ID        ID
	Created   time.Time
	Duplicate bool // the ClientID was seen before; ID is the original message's
}

// targetRE matches group targets: "group:ID", "dept:ID".
var targetRE = regexp.MustCompile(`^(group|dept):[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$`)

// check validates s, normalizes s.To and fills in s.recipients.
func (e *Engine) check(s *Submission, announce bool) error {
	if s.ViaAPI {
		s.flags |= FlagViaAPI
	}
	if err := CheckName("sender", s.From); err != nil {
		return err
	}
	if err := e.checkHome(s.From); err != nil {
		return err
	}
	if !announce && !s.Kind.Valid() {
		return fmt.Errorf("%w: %d", ErrBadKind, s.Kind)
	}
	if len(s.Body) > e.cfg.MaxBody {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(s.Body), e.cfg.MaxBody)
	}
	if len(s.ClientID) > 128 {
		return fmt.Errorf("%w: client message id longer than 128 bytes", ErrBadName)
	}
	if s.Chat != (ID{}) && !announce {
		if err := e.checkChat(s); err != nil {
			return err
		}
		return checkBody(s)
	}
	for _, ref := range []ID{s.Forward, s.Quote} {
		if ref != (ID{}) {
			if err := e.checkRef(s.From, ref); err != nil {
				return err
			}
		}
	}
	if len(s.To) == 0 {
		return ErrNoRecipients
	}
	if len(s.To) > e.cfg.MaxRecipients {
		return fmt.Errorf("%w: %d, limit %d", ErrTooManyRecipients, len(s.To), e.cfg.MaxRecipients)
	}
	for _, r := range s.To {
		switch {
		case r == AllStaff && !announce:
			return fmt.Errorf("%w: %q is reserved for announcements", ErrBadName, r)
		case r == AllStaff, targetRE.MatchString(r):
		default:
			if err := CheckName("recipient", r); err != nil {
				return err
			}
		}
	}
	to := slices.Clone(s.To)
	slices.Sort(to)
	s.To = slices.Compact(to)
	rcpt := s.To
	if e.cfg.Recipients != nil {
		var err error
		if rcpt, err = e.cfg.Recipients.Resolve(s.To); err != nil {
			return err
		}
		rcpt = slices.Clone(rcpt)
		slices.Sort(rcpt)
		rcpt = slices.Compact(rcpt)
	}
	if len(rcpt) == 0 {
		return fmt.Errorf("%w: the targets have no members", ErrNoRecipients)
	}
	if len(rcpt) > e.cfg.MaxFanout {
		return fmt.Errorf("%w: %d after expansion, limit %d", ErrTooManyRecipients, len(rcpt), e.cfg.MaxFanout)
	}
	s.recipients = rcpt
	if announce {
		return nil
	}
	return checkBody(s)
}

// checkBody refuses a message with nothing to say (ErrEmptyBody), after
// the checks of whom it goes to, whose errors say more.
func checkBody(s *Submission) error {
	if s.Forward == (ID{}) && (len(s.Body) == 0 || (s.Kind == KindText && len(bytes.TrimSpace(s.Body)) == 0)) {
		return ErrEmptyBody
	}
	return nil
}

// AllStaff is the announcement target meaning every active user.
const AllStaff = "all"

// SubmitAsync validates s and queues it for the next group commit. done is
// called exactly once: with the message id after the message is durable, or
// with an error (validation errors are reported before SubmitAsync returns).
// done runs on the commit loop and must not block. SubmitAsync blocks only
// while the commit queue is full.
func (e *Engine) SubmitAsync(s Submission, done func(SubmitResult, error)) {
	e.submitAsync(s, false, done)
}

func (e *Engine) submitAsync(s Submission, announce bool, done func(SubmitResult, error)) {
	if err := e.check(&s, announce); err != nil {
		e.metrics.submitsRejected.Inc()
		if errors.Is(err, ErrNoForward) {
			e.metrics.secretRefused.WithLabelValues("forward").Inc()
		}
		done(SubmitResult{}, err)
		return
	}
	var res SubmitResult // written on the commit loop, read once answered
	queued := time.Now()
	e.enqueue(func(c *txn) error { return c.applySubmit(&s, &res, c.now) }, func(err error) {
		if err != nil {
			res = SubmitResult{}
		}
		e.countSubmit(res, err, queued)
		done(res, err)
	}, 1)
}

// Submit is SubmitAsync that waits. If ctx ends first, Submit returns
// ctx.Err() and the outcome is unknown: retry with the same ClientID.
func (e *Engine) Submit(ctx context.Context, s Submission) (SubmitResult, error) {
	type res struct {
		r   SubmitResult
		err error
	}
	ch := make(chan res, 1)
	e.SubmitAsync(s, func(r SubmitResult, err error) { ch <- res{r, err} })
	select {
	case r := <-ch:
		return r.r, r.err
	case <-ctx.Done():
		return SubmitResult{}, ctx.Err()
	}
}

// AckAsync records that device has received user's stream up to and
// including seq (cumulative). Messages up to seq become delivered. done
// (which may be nil) is called once the cursor is durable.
func (e *Engine) AckAsync(user, device string, seq uint64, done func(error)) {
	if done == nil {
		done = func(error) {}
	}
	// Background: one ACK may mark thousands of entries delivered, and a
	// burst of them must not hold the submits queued behind it.
	e.enqueueBackground(func(c *txn) error { return c.applyAck(user, device, seq, c.now) }, done, 1, user)
}

// Ack is AckAsync that waits.
func (e *Engine) Ack(ctx context.Context, user, device string, seq uint64) error {
	return wait(ctx, func(done func(error)) { e.AckAsync(user, device, seq, done) })
}

// ReadAsync marks messages read by user. Every id must be a message user
// received, or nothing is marked and done gets ErrNotRecipient.
func (e *Engine) ReadAsync(user string, ids []ID, done func(error)) {
	if done == nil {
		done = func(error) {}
	}
	e.enqueueFor(user, func(c *txn) error { return c.applyRead(user, ids, c.now) }, done, max(1, len(ids)))
}

// Read is ReadAsync that waits.
func (e *Engine) Read(ctx context.Context, user string, ids ...ID) error {
	return wait(ctx, func(done func(error)) { e.ReadAsync(user, ids, done) })
}

// wait starts an op and waits for its answer or for ctx to end. On an
// error, which may be ctx's, the op may still run and write what the
// caller shares with it: a caller reads that only when wait returns nil.
func wait(ctx context.Context, start func(done func(error))) error {
	ch := make(chan error, 1)
	start(func(err error) { ch <- err })
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Message returns a stored message. The result is shared and must not be
// modified.
//
// A secret message comes without its body: metadata only (its parties by
// user id, its chat, its times). Its plaintext leaves the engine only in
// the masked entries handed to its participants (the Sink, Range), so no
// admin view, export or re-send built on Message can carry it.
func (e *Engine) Message(id ID) (*Message, error) {
	m := e.cache.get(id)
	if m == nil {
		v, err := e.st.Get(messageKey(id))
		if errors.Is(err, store.ErrNotFound) {
			return nil, ErrNotFound
		}
		if err != nil {
			return nil, fmt.Errorf("engine: message %s: %w", id, err)
		}
		if m, err = decodeMessage(id, v); err != nil {
			return nil, err
		}
	}
	if m.Chat != (ID{}) {
		meta := *m
		meta.Body = nil
		return &meta, nil
	}
	return m, nil
}

// Receipts returns every recipient's receipt for a message, by user id:
// empty while none is written yet, ErrNotFound if the message is not here.
func (e *Engine) Receipts(id ID) ([]Receipt, error) {
	p := receiptPrefix(id)
	var out []Receipt
	var derr error
	err := e.st.Scan(p, prefixEnd(p), func(k, v []byte) bool {
		r, err := decodeReceipt(string(k[len(p):]), v)
		if err != nil {
			derr = err
			return false
		}
		out = append(out, r)
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("engine: receipts %s: %w", id, err)
	}
	if len(out) == 0 {
		// None yet (a fan-out still writing, recipients in another
		// partition not yet relayed) is an empty list; ErrNotFound is for
		// a message that is not here.
		if _, err := e.Message(id); err != nil {
			return nil, err
		}
		return []Receipt{}, nil
	}
	return out, nil
}

// Head returns the sequence number of the newest durable entry in user's
// stream (0 for an empty stream).
func (e *Engine) Head(user string) (uint64, error) {
	if h, ok := e.cachedHead(user); ok {
		return h, nil
	}
	return e.loadHead(user)
}

// cachedHead returns user's durable head if the commit loop has cached it
// (stream.go: every stream it has written to).
func (e *Engine) cachedHead(user string) (uint64, bool) {
	e.headsMu.RLock()
	defer e.headsMu.RUnlock()
	h, ok := e.heads[user]
	return h, ok
}

func (e *Engine) loadHead(user string) (uint64, error) {
	p := inboxPrefix(user)
	k, _, err := e.st.Last(p, prefixEnd(p))
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("engine: head of %s: %w", user, err)
	}
	return seqFromInboxKey(k)
}

// Cursor returns the last sequence number device acknowledged in user's
// stream, and whether the device has ever acknowledged anything.
func (e *Engine) Cursor(user, device string) (uint64, bool, error) {
	v, err := e.st.Get(cursorKey(user, device))
	if errors.Is(err, store.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("engine: cursor %s/%s: %w", user, device, err)
	}
	c, err := parseU64(v)
	return c, err == nil, err
}

// DeviceCursor is a device of a user and how far it has acknowledged.
type DeviceCursor struct {
	Device string `json:"device"`
	Cursor uint64 `json:"cursor"`
}

// Devices returns every device that has acknowledged something in user's
// stream, with its cursor, sorted by name.
func (e *Engine) Devices(user string) ([]DeviceCursor, error) {
	p := cursorPrefix(user)
	var out []DeviceCursor
	var derr error
	err := e.st.Scan(p, prefixEnd(p), func(k, v []byte) bool {
		c, err := parseU64(v)
		if err != nil {
			derr = err
			return false
		}
		out = append(out, DeviceCursor{Device: string(k[len(p):]), Cursor: c})
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("engine: devices of %s: %w", user, err)
	}
	return out, nil
}

// Range returns up to max entries of user's stream starting at sequence
// from, in order, with messages loaded. It is how a device catches up.
//
// It never returns an entry beyond the durable head: Pebble makes a batch
// readable before its WAL sync completes, and a device must not see an
// entry that a crash could still take back (its seq would be reused).
// Head is safe for this because the commit loop publishes heads only after
// the sync, and caches a stream's pre-batch head before writing to it.
func (e *Engine) Range(user string, from uint64, max int) ([]Entry, error) {
	head, err := e.Head(user)
	if err != nil {
		return nil, err
	}
	if from > head {
		return nil, nil
	}
	// Entries are large (every kind's fields): size the slice once.
	out := make([]Entry, 0, min(max, int(min(head-from+1, 1<<20))))
	mark := uint64(0)
	markRead := false
	for from <= head && len(out) < max {
		n := len(out)
		var ids []ID // message ids, in stream order (so mostly ascending)
		last := uint64(0)
		err = e.scanStream(user, from, head, func(ent Entry, id ID) bool {
			if ent.Kind == EntryMessage {
				ids = append(ids, id) // its Message is loaded below
			}
			out = append(out, ent)
			last = ent.Seq
			return len(out) < max
		})
		if err == nil && len(ids) > 0 {
			err = e.loadMessages(out[n:], ids)
		}
		if err != nil {
			return nil, fmt.Errorf("engine: range %s from %d: %w", user, from, err)
		}
		if last == 0 {
			break // nothing more up to the head
		}
		// Messages deleted by retention (loadMessages left their entries
		// without a kind): skipped, if the stream's trim mark covers them.
		kept := out[:n]
		for _, ent := range out[n:] {
			if ent.Kind != 0 {
				kept = append(kept, ent)
				continue
			}
			if !markRead {
				if mark, err = e.TrimMark(user); err != nil {
					return nil, fmt.Errorf("engine: range %s: %w", user, err)
				}
				markRead = true
			}
			if ent.Seq > mark {
				return nil, fmt.Errorf("engine: range %s from %d: seq %d: %w", user, from, ent.Seq, ErrNotFound)
			}
		}
		out = kept
		from = last + 1
	}
	return out, nil
}

// scanStream calls fn with each entry of user's stream in [from, to]
// and its message id (zero for other kinds), in seq order, until fn
// returns false.
func (e *Engine) scanStream(user string, from, to uint64, fn func(ent Entry, id ID) bool) error {
	var ierr error
	err := e.st.Scan(inboxKey(user, from), inboxKey(user, to+1), func(k, v []byte) bool {
		seq, err := seqFromInboxKey(k)
		if err != nil {
			ierr = err
			return false
		}
		ent, id, _, err := decodeEntry(seq, v)
		if err != nil {
			ierr = fmt.Errorf("seq %d: %w", seq, err)
			return false
		}
		return fn(ent, id)
	})
	if err == nil {
		err = ierr
	}
	return err
}

// loadMessages fills in the messages of entries' message entries (ids
// are theirs, in order) from the cache of recent messages or else from
// the store with one cursor. A secret message is replaced by its masked copy; one whose
// record or key is gone (it burned after the stream was scanned) becomes
// a burn entry, never an error. An entry whose other message is gone is
// left with no Kind: Range skips it if retention deleted it.
func (e *Engine) loadMessages(entries []Entry, ids []ID) error {
	msgs := make([]*Message, len(ids))
	var keys [][]byte
	var at []int    // index in ids of each key
	var kbuf []byte // the keys, back to back
	for i, id := range ids {
		if msgs[i] = e.cache.get(id); msgs[i] == nil {
			if kbuf == nil {
				kbuf = make([]byte, 0, 17*(len(ids)-i))
			}
			kbuf = append(append(kbuf, prefixMessage), id[:]...)
			keys = append(keys, kbuf[len(kbuf)-17:])
			at = append(at, i)
		}
	}
	var derr error
	err := e.st.GetMany(keys, func(j int, v []byte) {
		i := at[j]
		if derr != nil || v == nil {
			return // missing: checked below
		}
		if j > 0 && ids[i] == ids[at[j-1]] {
			msgs[i] = msgs[at[j-1]]
			return
		}
		m, err := decodeMessage(ids[i], v)
		if err == nil {
			err = e.decryptMessage(m)
		}
		if errors.Is(err, ErrNotFound) {
			return // a secret message whose key is gone
		}
		msgs[i], derr = m, err
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return err
	}
	chats := map[ID]*Chat{}
	now := ms(e.cfg.Clock.Now())
	j := 0
	for i := range entries {
		if entries[i].Kind != EntryMessage {
			continue
		}
		m := msgs[j]
		j++
		switch {
		case m == nil && entries[i].flags&entryFlagSecret != 0:
			entries[i] = Entry{Seq: entries[i].Seq, Kind: EntryBurn, Burn: ids[j-1]}
		case m == nil:
			// Deleted by retention (or lost): Range decides which.
			entries[i] = Entry{Seq: entries[i].Seq}
		case m.Chat != (ID{}) && e.pastDeadline(m.ID, now):
			// Due to burn (read and its delay passed, or unread too
			// long) but the timer loop has not got to it yet: it is
			// as good as burned.
			entries[i] = Entry{Seq: entries[i].Seq, Kind: EntryBurn, Burn: m.ID}
		case m.Chat != (ID{}):
			ch, ok := chats[m.Chat]
			if !ok {
				if ch, err = e.loadChat(m.Chat); err != nil {
					return err
				}
				chats[m.Chat] = ch
			}
			entries[i].Message = mask(ch, m)
		default:
			entries[i].Message = m
		}
	}
	return nil
}

// SetReadOnly makes the engine refuse every write from now on with
// ErrReadOnly wrapping reason (a nil reason makes it writable again).
// Ops already queued are committed. Reads, resumes and deliveries of
// what is stored go on.
func (e *Engine) SetReadOnly(reason error) {
	if reason == nil {
		e.readOnly.Store(nil)
		return
	}
	err := fmt.Errorf("%w: %w", ErrReadOnly, reason)
	e.readOnly.Store(&err)
}

// ReadOnly returns why the engine refuses writes, or nil.
func (e *Engine) ReadOnly() error {
	if p := e.readOnly.Load(); p != nil {
		return *p
	}
	return nil
}

func (e *Engine) writable() error { return e.ReadOnly() }
