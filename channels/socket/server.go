// Package socket is Ding's client gateway: a netpoll server speaking the
// framed protocol of PROTOCOL.md (payloads in pb, framing in wire) to
// phones, desktops and web clients over persistent TCP connections.
//
// It is the only package that imports netpoll. A connection's life:
//
//  1. accept; the client has HandshakeTimeout to send HELLO.
//  2. HELLO is checked (version, token, device); the server answers
//     WELCOME and attaches the device to the fanout hub, which replays the
//     stream from the resume point and then pushes live entries.
//  3. SUBMIT goes to the engine without waiting: the SUBMIT_ACK is written
//     when the commit loop reports the message durable. ACK, READ,
//     CONFIRM (of a DING), SECRET_CREATE and SCREENSHOT go to the engine
//     the same way.
//  4. Errors are typed codes (pb.Code); fatal ones end the connection.
//
// Netpoll calls OnRequest when bytes arrive. It decodes whole frames, hands
// them off and returns; it never waits on an fsync. All writes go through
// the connection's bounded outbound queue, flushed by one short-lived
// goroutine per busy connection: frames queued while a flush is in progress
// go out together in the next one (write coalescing), and an idle
// connection owns no goroutine at all. A queue past MaxPending bytes marks
// a slow consumer: it is disconnected with SLOW_CONSUMER, and its messages
// wait in its stream for the reconnect.
package socket

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
)

// Config configures a Server. Engine, Hub, Keys and Directory are required.
type Config struct {
	Engine    *engine.Engine
	Hub       *fanout.Hub
	Keys      *auth.Keys
	Directory *fanout.Directory

	// MaxFrame is the largest frame (type byte and payload) accepted; zero
	// means the engine's MaxBody plus 4 KiB.
	MaxFrame int
	// MaxInflight is the most unacknowledged submits per connection; zero means 256.
	MaxInflight int
	// MaxPending is the most outbound bytes queued per connection before it
	// is dropped as a slow consumer; zero means 4 MiB. Catch-up fills at
	// most a quarter of it (see conn.Room).
	MaxPending int
	// HandshakeTimeout is how long a new connection has to send HELLO; zero means 5s.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that sent nothing for this long; zero
	// means 90s. Clients ping every IdleTimeout/3 (announced in WELCOME).
	IdleTimeout time.Duration
	// WriteTimeout bounds one flush to a connection; zero means 10s.
	WriteTimeout time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the gateway's metrics; nil means none.
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
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports whether the configuration can be used.
func (c *Config) Validate() error {
	if c.Engine == nil || c.Hub == nil || c.Keys == nil || c.Directory == nil {
		return errors.New("socket: config: Engine, Hub, Keys and Directory are required")
	}
	if c.MaxFrame < 0 || c.MaxInflight < 0 || c.MaxPending < 0 {
		return errors.New("socket: config: limits must not be negative")
	}
	return nil
}

// Server is the socket gateway.
type Server struct {
	cfg Config
	log *slog.Logger
	m   *metrics

	loop netpoll.EventLoop

	nextID atomic.Uint64
	shards [16]connShard

	draining atomic.Bool
	// serveMu orders Serve's start against Shutdown: netpoll ignores a
	// Shutdown that comes before its Serve has registered, so Shutdown
	// repeats it until Serve returns (served), if Serve started at all.
	serveMu      sync.Mutex
	serveStarted bool // guarded by serveMu
	served       chan struct{}
	quit         chan struct{}
	stopOnce     sync.Once
	wg           sync.WaitGroup // the sweeper
	// flushers counts running flush goroutines. A counter rather than a
	// WaitGroup: a connection accepted while Shutdown waits may still
	// start one, and WaitGroup forbids an Add racing a Wait at zero.
	flushers atomic.Int64
}

type connShard struct {
	mu    sync.Mutex
	conns map[uint64]*conn // guarded by mu
}

// Netpoll's buffer sizes are process-wide settings, applied once, before
// the first connection. netpollBufferSize is the input buffer a new
// connection starts with (netpoll's default is 8 KiB); netpollMinNode is the
// smallest buffer node netpoll allocates (its default is 4 KiB, and an idle
// connection keeps one from its last write). Buffers grow on demand, and
// flushLoop writes a whole batch of frames into one node sized for it, so
// small minimums cost busy connections little and save idle ones most of
// their memory (see bench/RESULTS.md, idle).
const (
	netpollBufferSize = 1 << 10
	netpollMinNode    = 512
)

var configureNetpoll sync.Once

// New returns a server; call Serve to run it.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	configureNetpoll.Do(func() {
		netpoll.LinkBufferCap = netpollMinNode
		_ = netpoll.Configure(netpoll.Config{BufferSize: netpollBufferSize})
	})
	s := &Server{
		cfg: cfg, log: cfg.Logger, quit: make(chan struct{}), served: make(chan struct{}),
	}
	for i := range s.shards {
		s.shards[i].conns = map[uint64]*conn{}
	}
	var err error
	if s.m, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	s.loop, err = netpoll.NewEventLoop(s.onRequest,
		netpoll.WithOnPrepare(s.onPrepare),
		netpoll.WithReadTimeout(cfg.IdleTimeout),
		netpoll.WithWriteTimeout(cfg.WriteTimeout),
	)
	if err != nil {
		return nil, fmt.Errorf("socket: event loop: %w", err)
	}
	s.wg.Add(1)
	go s.sweepLoop()
	return s, nil
}

// Listen opens a TCP listener for Serve.
func Listen(addr string) (net.Listener, error) {
	ln, err := netpoll.CreateListener("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("socket: listen %s: %w", addr, err)
	}
	return ln, nil
}

// Serve accepts connections on ln until Shutdown. It returns nil after a
// Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.serveMu.Lock()
	if s.draining.Load() || s.serveStarted {
		s.serveMu.Unlock()
		ln.Close()
		return nil
	}
	s.serveStarted = true
	s.serveMu.Unlock()
	defer close(s.served)
	err := s.loop.Serve(ln)
	if s.draining.Load() {
		return nil
	}
	return err
}

// Connections returns the number of open connections.
func (s *Server) Connections() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.conns)
		sh.mu.Unlock()
	}
	return n
}

// Shutdown tells every client SHUTTING_DOWN (new connections get it at
// once), waits until their queues are flushed and their connections closed,
// then stops the event loop; or, if ctx ends first, closes what is left and
// returns ctx.Err(). It is idempotent. Submits already handed to the engine
// are committed by the engine's own Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.serveMu.Lock()
	s.draining.Store(true)
	started := s.serveStarted
	s.serveMu.Unlock()
	s.stopOnce.Do(func() { close(s.quit) })
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		conns := make([]*conn, 0, len(sh.conns))
		for _, c := range sh.conns {
			conns = append(conns, c)
		}
		sh.mu.Unlock()
		for _, c := range conns {
			c.fatal(codeShuttingDown, 0, "server shutting down")
		}
	}
	var err error
	for s.Connections() > 0 && err == nil {
		select {
		case <-ctx.Done():
			s.closeAll()
			err = ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	// Every connection has closed; stop the event loop, then wait for the
	// last flushers.
	lerr := s.loop.Shutdown(ctx)
	for started {
		select {
		case <-s.served:
			started = false
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
			lerr = s.loop.Shutdown(ctx) // Serve had not registered yet
		}
	}
	for s.flushers.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	s.wg.Wait() // the sweeper, which quit was closed for
	if err != nil {
		return err
	}
	_ = lerr // netpoll reports the listener it just closed; nothing to act on
	return nil
}

func (s *Server) closeAll() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, c := range sh.conns {
			_ = c.nc.Close()
		}
		sh.mu.Unlock()
	}
}

func (s *Server) register(c *conn) {
	sh := &s.shards[c.id%uint64(len(s.shards))]
	sh.mu.Lock()
	sh.conns[c.id] = c
	sh.mu.Unlock()
	s.m.connections.Inc()
}

func (s *Server) unregister(c *conn) {
	sh := &s.shards[c.id%uint64(len(s.shards))]
	sh.mu.Lock()
	_, ok := sh.conns[c.id]
	delete(sh.conns, c.id)
	sh.mu.Unlock()
	if ok {
		s.m.connections.Dec()
	}
}

// sweepLoop enforces the handshake and idle timeouts with one goroutine
// for all connections, instead of a timer each.
func (s *Server) sweepLoop() {
	defer s.wg.Done()
	every := min(s.cfg.HandshakeTimeout, s.cfg.IdleTimeout) / 4
	t := time.NewTicker(max(every, 10*time.Millisecond))
	defer t.Stop()
	var batch []*conn
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		for i := range s.shards {
			sh := &s.shards[i]
			batch = batch[:0]
			sh.mu.Lock()
			for _, c := range sh.conns {
				batch = append(batch, c)
			}
			sh.mu.Unlock()
			for _, c := range batch {
				switch {
				case !c.authed.Load() && now-c.opened > int64(s.cfg.HandshakeTimeout):
					c.fatal(codeHandshakeTimeout, 0, "no HELLO in time")
				case now-c.lastSeen.Load() > int64(s.cfg.IdleTimeout):
					c.fatal(codeIdleTimeout, 0, "nothing received in time")
				}
			}
		}
	}
}
