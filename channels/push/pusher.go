package push

import (
	"container/heap"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/engine"
)

// Tokens is where a Pusher finds users' push registrations and removes
// the dead ones (the engine implements it). Safe for concurrent use.
type Tokens interface {
	// PushTokens returns user's registrations (nil if none).
	PushTokens(user string) ([]engine.PushToken, error)
	// RemovePushToken removes (user, device)'s registration if it still
	// holds token, and reports whether it did.
	RemovePushToken(ctx context.Context, user, device, token string) (bool, error)
}

// Presence says which of a user's devices hold a connection now (the
// hub implements it). Safe for concurrent use.
type Presence interface {
	Devices(user string) []string
}

// Streams gives what a badge counts: the head of a user's stream and
// each device's cursor (the engine implements it). Optional.
type Streams interface {
	Head(user string) (uint64, error)
	Devices(user string) ([]engine.DeviceCursor, error)
}

// Deps are a Pusher's neighbours. Tokens is required for sends; the rest
// may be nil (no presence: every registered device is offline; no
// streams: no badge; no Name: user ids as names).
type Deps struct {
	Tokens   Tokens
	Presence Presence
	Streams  Streams
	Name     func(user string) string
}

// Pusher sends push notifications: a DING's push step (Send, an
// engine.Notifier for engine.ChannelPush) and, as the engine's Sink
// (Sink), a notification for new messages to registered devices that are
// not connected, coalesced per device. Safe for concurrent use; Close
// stops it.
type Pusher struct {
	cfg     Config
	deps    Deps
	senders map[string]sender
	m       *metrics
	log     *slog.Logger
	rate    *pacer

	seed   maphash.Seed
	shards [64]userShard

	work chan string  // users with messages to notify; bounded by cfg.Queue
	busy atomic.Int64 // users queued or being notified (Idle)

	schedMu  sync.Mutex
	sched    flushHeap     // guarded by schedMu
	schedSet chan struct{} // wakes schedLoop
	stop     chan struct{}
	wg       sync.WaitGroup
	closed   sync.Once
}

type userShard struct {
	mu    sync.Mutex
	users map[string]*userState // guarded by mu
}

// userState is what notifications a user's devices are owed. Guarded by
// its shard's mu.
type userState struct {
	seq      uint64 // messages noted for the user
	queued   bool   // in work, or being worked on
	armed    int64  // unix ms of the flush scheduled, 0 if none
	last     lastMsg
	devs     map[string]*devState
	sinceSeq []msgAt // messages not yet notified to some device (bounded: the oldest 64)
	maxEntry uint64  // the highest stream seq noted
}

type lastMsg struct {
	from    string
	secret  bool
	preview string // the text, when a preview may show it
}

type msgAt struct {
	seq   uint64    // the note counter (userState.seq)
	entry uint64    // its seq in the user's stream, which device cursors count
	at    time.Time // appended
}

type devState struct {
	sentSeq uint64    // messages notified
	sentAt  time.Time // last notification
}

var _ engine.Notifier = (*Pusher)(nil)

// New validates cfg, reads the credentials it names and starts the
// Pusher's workers.
func New(cfg Config, deps Deps) (*Pusher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if cfg.CAFile != "" {
		b, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("push: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("push: CA file %s holds no PEM certificate", cfg.CAFile)
		}
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLSConfig != nil {
			tc = cfg.TLSConfig.Clone()
		}
		tc.RootCAs = pool
		cfg.TLSConfig = tc
	}
	p := &Pusher{cfg: cfg, deps: deps, senders: map[string]sender{}, log: cfg.Logger, seed: maphash.MakeSeed(),
		work: make(chan string, cfg.Queue), schedSet: make(chan struct{}, 1), stop: make(chan struct{})}
	if cfg.APNsKeyFile != "" {
		s, err := newAPNs(&p.cfg)
		if err != nil {
			return nil, err
		}
		p.senders[engine.PushAPNs] = s
	}
	if cfg.FCMCredentialsFile != "" {
		s, err := newFCM(&p.cfg)
		if err != nil {
			return nil, err
		}
		p.senders[engine.PushFCM] = s
	}
	if cfg.Rate > 0 {
		p.rate = newPacer(cfg.Rate)
	}
	var err error
	var count func() float64
	if c, ok := deps.Tokens.(interface{ PushTokenCount() int64 }); ok {
		count = func() float64 { return float64(c.PushTokenCount()) }
	}
	if p.m, err = newMetrics(cfg.Registerer, count); err != nil {
		return nil, fmt.Errorf("push: metrics: %w", err)
	}
	for i := range p.shards {
		p.shards[i].users = map[string]*userState{}
	}
	if cfg.Configured() {
		p.wg.Add(1 + cfg.Workers)
		go p.schedLoop()
		for range cfg.Workers {
			go p.workLoop()
		}
	}
	return p, nil
}

// Configured reports whether a provider is configured.
func (p *Pusher) Configured() bool { return len(p.senders) > 0 }

// Close stops the workers; notifications not sent yet are dropped (the
// messages stay in the streams). Idempotent.
func (p *Pusher) Close() {
	p.closed.Do(func() {
		close(p.stop)
		p.wg.Wait()
	})
}

// Send implements engine.Notifier for engine.ChannelPush: a DING's push
// step, to every registered device of user o.To (connected or not: a
// DING wakes the phone), with the DING's choices as actions. It answers
// nil if any device's provider accepted it (the reference lists the
// providers' ids), an error wrapping engine.ErrUnregistered if every
// token was dead (they are removed), one wrapping engine.ErrRejected if
// every device refused it for good, and otherwise the last unknown
// outcome (the engine retries the step).
func (p *Pusher) Send(ctx context.Context, o engine.Outbound) (string, error) {
	if o.Channel != engine.ChannelPush || !p.Configured() {
		return "", fmt.Errorf("push: send %s: %w", o.Channel, engine.ErrNotConfigured)
	}
	toks, err := p.deps.Tokens.PushTokens(o.To)
	if err != nil {
		return "", fmt.Errorf("push: tokens: %w", err)
	}
	if len(toks) == 0 {
		return "", &SendError{Provider: "push", Status: 0, Reason: "no registered device", Permanent: true}
	}
	n := &Note{Title: "DING from " + o.Sender, Badge: -1, Urgent: true, Critical: o.Critical, Ding: o.Ding, Choices: o.Choices, Collapse: "ding-" + o.Ding.String()}
	if p.cfg.Preview {
		n.Body = strings.TrimPrefix(o.Text, "DING from "+o.Sender+": ")
	} else if len(o.Choices) > 0 {
		n.Body = "Tap to answer"
	} else {
		n.Body = "Tap to confirm"
	}
	var refs []string
	var dead, perm int
	var last error
	for _, t := range toks {
		ref, err := p.sendRetry(ctx, t, n)
		switch {
		case err == nil:
			refs = append(refs, t.Provider+":"+ref)
			continue
		case errors.Is(err, engine.ErrUnregistered):
			dead++
			p.removeDead(ctx, o.To, t)
		case errors.Is(err, engine.ErrRejected), errors.Is(err, engine.ErrNotConfigured):
			perm++
		}
		last = err
	}
	switch {
	case len(refs) > 0:
		ref := fmt.Sprintf("%d of %d devices: %s", len(refs), len(toks), strings.Join(refs, " "))
		if dead > 0 {
			ref += fmt.Sprintf("; %d dead token(s) removed", dead)
		}
		return ref, nil
	case dead == len(toks):
		return "", fmt.Errorf("push: %d dead token(s) removed: %w", dead, last)
	case dead+perm == len(toks):
		var se *SendError
		if errors.As(last, &se) {
			return "", &SendError{Provider: se.Provider, Status: se.Status, Reason: se.Reason, Permanent: true}
		}
		return "", last
	}
	return "", last
}

func (p *Pusher) removeDead(ctx context.Context, user string, t engine.PushToken) {
	ok, err := p.deps.Tokens.RemovePushToken(context.WithoutCancel(ctx), user, t.Device, t.Token)
	if err != nil {
		p.log.Warn("push: removing a dead token failed", "device", t.Device, "err", err)
		return
	}
	if ok {
		p.m.dead.WithLabelValues(t.Provider).Inc()
	}
}

// Sink returns an engine.Sink that hands every delivery to next and
// notes, for a push, the new messages of users who have devices without a
// connection. It never blocks: a user noted while the queue is full is
// dropped and counted.
func (p *Pusher) Sink(next engine.Sink) engine.Sink {
	return sinkFunc(func(user string, es []engine.Entry) { next.Deliver(user, es); p.note(user, es) })
}

type sinkFunc func(user string, es []engine.Entry)

func (f sinkFunc) Deliver(user string, es []engine.Entry) { f(user, es) }

func (p *Pusher) shard(user string) *userShard {
	return &p.shards[maphash.String(p.seed, user)%uint64(len(p.shards))]
}

// note records user's new messages (not their own, not DINGs: a DING
// has its push step) and queues the user for a worker.
func (p *Pusher) note(user string, es []engine.Entry) {
	if !p.Configured() {
		return
	}
	var msgs []*engine.Message
	var seqs []uint64
	for i := range es {
		m := es[i].Message
		if es[i].Kind != engine.EntryMessage || m == nil || m.Kind == engine.KindDing {
			continue
		}
		if m.Secret == nil && m.From == user {
			continue // one's own message, on another device
		}
		if m.Secret != nil && m.Secret.Watermark != "" && m.Secret.Watermark == m.From {
			continue
		}
		msgs = append(msgs, m)
		seqs = append(seqs, es[i].Seq)
	}
	if len(msgs) == 0 {
		return
	}
	sh := p.shard(user)
	sh.mu.Lock()
	st := sh.users[user]
	if st == nil {
		st = &userState{devs: map[string]*devState{}}
		sh.users[user] = st
	}
	for i, m := range msgs {
		st.seq++
		st.maxEntry = max(st.maxEntry, seqs[i])
		st.last = lastMsg{from: m.From, secret: m.Secret != nil}
		if m.Secret == nil && p.cfg.Preview && m.Kind == engine.KindText {
			st.last.preview = clip(string(m.Body), 178)
		}
		if len(st.sinceSeq) < 64 {
			st.sinceSeq = append(st.sinceSeq, msgAt{st.seq, seqs[i], m.Created})
		}
	}
	// Looked at again even with a flush armed: the flush may be another
	// device's window, or a connected device's grace, while this message
	// is for a device that may be notified now.
	enqueue := !st.queued
	if enqueue {
		st.queued = true
	}
	sh.mu.Unlock()
	if enqueue {
		p.enqueue(user)
	}
}

func (p *Pusher) enqueue(user string) {
	p.busy.Add(1)
	select {
	case p.work <- user:
	default:
		p.busy.Add(-1)
		p.m.dropped.Inc()
		sh := p.shard(user)
		sh.mu.Lock()
		if st := sh.users[user]; st != nil {
			st.queued = false
			for _, d := range st.devs {
				d.sentSeq = st.seq // forgotten: the app shows them when opened
			}
		}
		sh.mu.Unlock()
	}
}

func (p *Pusher) workLoop() {
	defer p.wg.Done()
	for {
		select {
		case <-p.stop:
			return
		case user := <-p.work:
			p.notifyUser(user)
			p.busy.Add(-1)
		}
	}
}

// notifyUser sends what user's offline devices are owed: at once to a
// device notified more than Coalesce ago, and at the end of the window
// to the others (one flush per user, at the earliest window's end).
func (p *Pusher) notifyUser(user string) {
	toks, err := p.deps.Tokens.PushTokens(user)
	if err != nil {
		p.log.Warn("push: reading tokens failed", "err", err)
	}
	var online []string
	if p.deps.Presence != nil && len(toks) > 0 {
		online = p.deps.Presence.Devices(user)
	}
	// Device cursors: what each device has acknowledged is not owed.
	var head uint64
	cursors := map[string]uint64{}
	haveCursors := false
	if p.deps.Streams != nil && len(toks) > 0 {
		if devs, err := p.deps.Streams.Devices(user); err == nil {
			haveCursors = true
			for _, d := range devs {
				cursors[d.Device] = d.Cursor
			}
			head, err = p.deps.Streams.Head(user)
			haveCursors = err == nil
		}
	}
	now := p.cfg.Clock.Now()
	type job struct {
		tok engine.PushToken
		n   Note
		at  time.Time // the oldest message it notifies, for the delay metric
		seq uint64    // the user's seq it notifies through
	}
	var jobs []job
	var flushAt time.Time
	sh := p.shard(user)
	sh.mu.Lock()
	st := sh.users[user]
	if st == nil {
		sh.mu.Unlock()
		return
	}
	st.queued = false
	armed := st.armed // a flush already in the heap for then
	st.armed = 0
	live := map[string]bool{}
	for _, t := range toks {
		live[t.Device] = true
		d := st.devs[t.Device]
		if d == nil {
			d = &devState{}
			st.devs[t.Device] = d
		}
		connected := containsStr(online, t.Device)
		if t.Mute || (connected && (p.cfg.Grace < 0 || !haveCursors)) {
			d.sentSeq = st.seq // muted: nothing; connected: the socket delivers
			continue
		}
		cur := cursors[t.Device]
		if haveCursors && cur >= st.maxEntry {
			d.sentSeq = st.seq // it has acknowledged them all
			continue
		}
		owed := st.seq - d.sentSeq
		var oldest time.Time // the oldest message owed and not acknowledged
		for _, s := range st.sinceSeq {
			if s.seq > d.sentSeq && s.entry <= cur {
				owed-- // acknowledged since
			} else if s.seq > d.sentSeq && oldest.IsZero() {
				oldest = s.at
			}
		}
		if owed == 0 {
			d.sentSeq = st.seq
			continue
		}
		if connected {
			// Connected, but has not acknowledged: pushed if it still has
			// not Grace after the oldest message it lacks.
			if due := oldest.Add(p.cfg.Grace); !oldest.IsZero() && now.Before(due) {
				if flushAt.IsZero() || due.Before(flushAt) {
					flushAt = due
				}
				continue
			}
		}
		if !d.sentAt.IsZero() && now.Sub(d.sentAt) < p.cfg.Coalesce {
			due := d.sentAt.Add(p.cfg.Coalesce)
			if flushAt.IsZero() || due.Before(flushAt) {
				flushAt = due
			}
			continue
		}
		n := Note{Badge: -1, Collapse: "messages"}
		switch {
		case owed > 1:
			n.Title = strconv.FormatUint(owed, 10) + " new messages"
			p.m.coalesced.Add(float64(owed - 1))
		case st.last.secret:
			n.Title, n.Secret = "New secret message", true
		default:
			n.Title = "New message from " + p.name(st.last.from)
			if !t.NoPreview {
				n.Body = st.last.preview
			}
		}
		d.sentSeq, d.sentAt = st.seq, now
		jobs = append(jobs, job{tok: t, n: n, at: oldest, seq: st.seq})
	}
	for dev := range st.devs {
		if !live[dev] {
			delete(st.devs, dev)
		}
	}
	minSent := st.seq
	for _, d := range st.devs {
		minSent = min(minSent, d.sentSeq)
	}
	k := 0
	for _, s := range st.sinceSeq {
		if s.seq > minSent {
			st.sinceSeq[k] = s
			k++
		}
	}
	st.sinceSeq = st.sinceSeq[:k]
	if flushAt.IsZero() {
		// Nothing owed. The user is forgotten once every device's window
		// has ended (a flush then finds nothing and gets here again):
		// until then its sentAt is what holds the next message back.
		var latest time.Time
		for _, d := range st.devs {
			if d.sentAt.After(latest) {
				latest = d.sentAt
			}
		}
		if !latest.IsZero() && now.Sub(latest) < p.cfg.Coalesce {
			flushAt = latest.Add(p.cfg.Coalesce)
		} else {
			delete(sh.users, user)
		}
	}
	again := false // a flush for then is in the heap already
	if !flushAt.IsZero() {
		again = armed == flushAt.UnixMilli()
		st.armed = flushAt.UnixMilli()
	}
	sh.mu.Unlock()
	if !flushAt.IsZero() && !again {
		p.schedule(user, flushAt)
	}
	if len(jobs) == 0 {
		return
	}
	badge := -1
	if haveCursors {
		var acked uint64
		for _, c := range cursors {
			acked = max(acked, c)
		}
		badge = int(min(head-min(head, acked), 9999))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-p.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for _, j := range jobs {
		j.n.Badge = badge
		_, err := p.sendRetry(ctx, j.tok, &j.n)
		p.sentAt(user, j.tok.Device, j.seq)
		switch {
		case err == nil:
			if !j.at.IsZero() {
				p.m.delay.Observe(max(0, time.Since(j.at).Seconds()))
			}
			p.m.notes.WithLabelValues("sent").Inc()
		case errors.Is(err, engine.ErrUnregistered):
			p.removeDead(ctx, user, j.tok)
			p.m.notes.WithLabelValues("unregistered").Inc()
		default:
			p.m.notes.WithLabelValues("failed").Inc()
			if p.log.Enabled(ctx, slog.LevelDebug) {
				p.log.LogAttrs(ctx, slog.LevelDebug, "push: message notification failed", slog.String("device", j.tok.Device), slog.String("err", err.Error()))
			}
		}
	}
}

// sentAt restarts device's window when its notification through seq has
// been answered: the window is measured from the request, not from the
// decision, so that a request held up by a busy provider (or by the
// workers ahead of it) does not bring the next one closer than the
// window. A flush armed for the old end finds the window still open and
// arms itself again.
func (p *Pusher) sentAt(user, device string, seq uint64) {
	now := p.cfg.Clock.Now()
	sh := p.shard(user)
	sh.mu.Lock()
	if st := sh.users[user]; st != nil {
		if d := st.devs[device]; d != nil && d.sentSeq == seq && now.After(d.sentAt) {
			d.sentAt = now
		}
	}
	sh.mu.Unlock()
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func (p *Pusher) name(user string) string {
	if p.deps.Name != nil {
		if n := p.deps.Name(user); n != "" {
			return n
		}
	}
	return user
}

// Flushes of coalescing windows: a heap by due time, run by schedLoop on
// cfg.Clock.

type flush struct {
	due  time.Time
	user string
}

type flushHeap []flush

func (h flushHeap) Len() int           { return len(h) }
func (h flushHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h flushHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *flushHeap) Push(x any)        { *h = append(*h, x.(flush)) }
func (h *flushHeap) Pop() any          { o := *h; x := o[len(o)-1]; *h = o[:len(o)-1]; return x }

func (p *Pusher) schedule(user string, due time.Time) {
	p.schedMu.Lock()
	heap.Push(&p.sched, flush{due, user})
	p.schedMu.Unlock()
	select {
	case p.schedSet <- struct{}{}:
	default:
	}
}

// Idle reports whether no user is queued or being notified (coalescing
// windows may still be waiting: Pending).
func (p *Pusher) Idle() bool { return p.busy.Load() == 0 }

// Pending returns how many coalescing windows are waiting to flush (for
// tests and the bench).
func (p *Pusher) Pending() int {
	p.schedMu.Lock()
	defer p.schedMu.Unlock()
	return len(p.sched)
}

func (p *Pusher) schedLoop() {
	defer p.wg.Done()
	for {
		p.schedMu.Lock()
		now := p.cfg.Clock.Now()
		var due []string
		for len(p.sched) > 0 && !p.sched[0].due.After(now) {
			due = append(due, heap.Pop(&p.sched).(flush).user)
		}
		var wait <-chan time.Time
		if len(p.sched) > 0 {
			wait = p.cfg.Clock.Until(p.sched[0].due)
		}
		p.schedMu.Unlock()
		for _, u := range due {
			sh := p.shard(u)
			sh.mu.Lock()
			st := sh.users[u]
			go1 := st != nil && !st.queued
			if go1 {
				st.queued, st.armed = true, 0
			}
			sh.mu.Unlock()
			if go1 {
				p.enqueue(u)
			}
		}
		select {
		case <-p.stop:
			return
		case <-p.schedSet:
		case <-wait:
		}
	}
}

// clip cuts s to at most n bytes at a rune boundary.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8ValidEnd(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

func utf8ValidEnd(s string) bool { return strings.ToValidUTF8(s, "") == s }

// pacer spaces requests 1/rate apart (a token bucket of one).
type pacer struct {
	mu    sync.Mutex
	every time.Duration
	next  time.Time // guarded by mu
}

func newPacer(rate float64) *pacer { return &pacer{every: time.Duration(float64(time.Second) / rate)} }

func (r *pacer) wait(ctx context.Context) error {
	r.mu.Lock()
	now := time.Now()
	at := r.next
	if at.Before(now) {
		at = now
	}
	r.next = at.Add(r.every)
	r.mu.Unlock()
	if d := at.Sub(now); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
