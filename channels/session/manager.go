package session

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/internal/ratelimit"
)

// Config configures a Manager. Engine, Hub, Tokens and Users are required.
type Config struct {
	Engine Engine
	Hub    Hub
	Tokens Tokens
	Users  Users

	// MaxFrame is the largest frame (type byte and payload) accepted; zero
	// means the engine's MaxBody plus 4 KiB.
	MaxFrame int
	// MaxInflight is the most unacknowledged submits per connection; zero means 256.
	MaxInflight int
	// MaxPending is the most outbound bytes queued per connection before it
	// is dropped as a slow consumer; zero means 4 MiB. Catch-up fills at
	// most a quarter of it (see Session.Room).
	MaxPending int
	// HandshakeTimeout is how long a new connection has to send HELLO; zero means 5s.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that sent nothing for this long; zero
	// means 90s. Clients ping every IdleTimeout/3 (announced in WELCOME).
	IdleTimeout time.Duration
	// NewDeviceWindow, when positive, is how many of the latest entries of
	// a user's stream a device gets on its first connection (no cursor
	// given, none stored): a new phone starts with the recent history, not
	// with every entry since the account began. Zero: the whole stream.
	NewDeviceWindow int
	// Limits are the abuse limits: each SUBMIT takes one of its user's
	// (ratelimit.Submit), and a HELLO from a source address locked out
	// for failed authentications is refused (ratelimit.Auth; the
	// transport says the address, see Session.hello); nil means none.
	Limits *ratelimit.Limits
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the sessions' metrics (ding_socket_*); nil means none.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.MaxFrame == 0 {
		c.MaxFrame = c.Engine.MaxBody() + 4<<10
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = 256
	}
	if c.MaxPending == 0 {
		c.MaxPending = 4 << 20
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 90 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports whether the configuration can be used.
func (c *Config) Validate() error {
	if c.Engine == nil || c.Hub == nil || c.Tokens == nil || c.Users == nil {
		return errors.New("session: config: Engine, Hub, Tokens and Users are required")
	}
	if c.MaxFrame < 0 || c.MaxInflight < 0 || c.MaxPending < 0 || c.HandshakeTimeout < 0 || c.IdleTimeout < 0 {
		return errors.New("session: config: limits must not be negative")
	}
	return nil
}

// Manager owns every session of a server, whatever their transport: it
// opens them, enforces the handshake and idle timeouts with one sweeper
// goroutine for all of them (an idle session owns no goroutine), and
// drains them at shutdown. Safe for concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger
	m   *metrics

	nextID   atomic.Uint64
	shards   [16]sessionShard
	draining atomic.Bool

	quit     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup // the sweeper
	// flushers counts running flush goroutines. A counter rather than a
	// WaitGroup: a session opened while Shutdown waits may still start
	// one, and WaitGroup forbids an Add racing a Wait at zero.
	flushers atomic.Int64
}

type sessionShard struct {
	mu       sync.Mutex
	sessions map[uint64]*Session // guarded by mu
}

// NewManager returns a manager and starts its sweeper; Shutdown stops it.
func NewManager(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	m := &Manager{cfg: cfg, log: cfg.Logger, quit: make(chan struct{})}
	for i := range m.shards {
		m.shards[i].sessions = map[uint64]*Session{}
	}
	var err error
	if m.m, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	m.wg.Add(1)
	go m.sweepLoop()
	return m, nil
}

// MaxFrame is the largest frame a transport should accept.
func (m *Manager) MaxFrame() int { return m.cfg.MaxFrame }

// IdleTimeout is how long a connection may stay silent.
func (m *Manager) IdleTimeout() time.Duration { return m.cfg.IdleTimeout }

// Open registers the session of a new connection on t. The transport
// then arranges to call Closed when the connection goes, calls Begin, and
// hands it frames (HandleFrame).
func (m *Manager) Open(t Transport) *Session {
	now := time.Now().UnixNano()
	s := &Session{m: m, t: t, id: m.nextID.Add(1), opened: now}
	s.lastSeen.Store(now)
	sh := &m.shards[s.id%uint64(len(m.shards))]
	sh.mu.Lock()
	sh.sessions[s.id] = s
	sh.mu.Unlock()
	m.m.connections.Inc()
	return s
}

func (m *Manager) unregister(s *Session) {
	sh := &m.shards[s.id%uint64(len(m.shards))]
	sh.mu.Lock()
	_, ok := sh.sessions[s.id]
	delete(sh.sessions, s.id)
	sh.mu.Unlock()
	if ok {
		m.m.connections.Dec()
	}
}

// Count returns the number of open sessions.
func (m *Manager) Count() int {
	n := 0
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		n += len(sh.sessions)
		sh.mu.Unlock()
	}
	return n
}

// each calls fn with every open session, outside the registry's locks.
func (m *Manager) each(fn func(*Session)) {
	var batch []*Session
	for i := range m.shards {
		sh := &m.shards[i]
		batch = batch[:0]
		sh.mu.Lock()
		for _, s := range sh.sessions {
			batch = append(batch, s)
		}
		sh.mu.Unlock()
		for _, s := range batch {
			fn(s)
		}
	}
}

// Shutdown tells every client SHUTTING_DOWN (sessions opened from now on
// get it at once), waits until their queues are flushed and their
// connections closed, stops the sweeper and waits for the last flushers;
// or, if ctx ends first, closes what is left and returns ctx.Err(). It is
// idempotent. Requests already handed to the engine are committed by the
// engine's own Shutdown.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.draining.Store(true)
	m.stopOnce.Do(func() { close(m.quit) })
	m.each(func(s *Session) { s.fatal(pb.Code_SHUTTING_DOWN, 0, "server shutting down") })
	var err error
	for m.Count() > 0 && err == nil {
		select {
		case <-ctx.Done():
			m.each(func(s *Session) { _ = s.t.Close() })
			err = ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	m.wg.Wait() // the sweeper, which quit was closed for
	for m.flushers.Load() > 0 && err == nil {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return err
}

// sweepLoop enforces the handshake and idle timeouts with one goroutine
// for all sessions, instead of a timer each.
func (m *Manager) sweepLoop() {
	defer m.wg.Done()
	every := min(m.cfg.HandshakeTimeout, m.cfg.IdleTimeout) / 4
	t := time.NewTicker(max(every, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-m.quit:
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		m.each(func(s *Session) {
			switch {
			case !s.authed.Load() && now-s.opened > int64(m.cfg.HandshakeTimeout):
				s.fatal(pb.Code_HANDSHAKE_TIMEOUT, 0, "no HELLO in time")
			case now-s.lastSeen.Load() > int64(m.cfg.IdleTimeout):
				s.fatal(pb.Code_IDLE_TIMEOUT, 0, "nothing received in time")
			}
		})
	}
}
