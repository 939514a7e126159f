// Package socket is Ding's TCP transport: a netpoll server carrying the
// framed protocol of PROTOCOL.md (payloads in pb, framing in wire) between
// phones, desktops and web clients on persistent connections and the
// protocol sessions of package channels/session. It is also the
// WebSocket gateway (ws.go, wstls.go, wshttp.go): the same frames, one
// per binary WebSocket message, on the same sessions.
//
// It is the only package that imports netpoll, and it knows nothing of
// the protocol beyond framing. A connection's life:
//
//  1. accept: OnPrepare opens a session on a conn (this package's
//     session.Transport) and registers a close callback that tells the
//     session when the connection is gone.
//  2. OnRequest reads every whole frame that has arrived (the 5-byte
//     header, checked against the session's MaxFrame, then the payload)
//     and hands each to Session.HandleFrame, which decodes it and hands it
//     off; OnRequest never waits on an fsync. A bad header is reported to
//     the session (Session.FrameError), which answers and closes; the
//     rest of the input is discarded.
//  3. The session writes through conn.Write: one netpoll buffer node sized
//     for the whole batch of frames, one Flush (one write syscall).
//
// Netpoll's buffers are released when the connection closes, so conn
// guards them with its own lock: Write copies into them only while the
// connection is open.
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

	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/internal/ratelimit"
)

// Config configures a Server. Engine, Hub, Keys and Directory are required.
type Config struct {
	Engine    session.Engine
	Hub       session.Hub
	Keys      session.Tokens
	Directory session.Users

	// MaxFrame, MaxInflight, MaxPending, HandshakeTimeout and IdleTimeout
	// are the sessions' (see session.Config for their defaults).
	MaxFrame         int
	MaxInflight      int
	MaxPending       int
	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	// NewDeviceWindow is session.Config's: the latest entries a device
	// with no cursor gets (zero: the whole stream).
	NewDeviceWindow int
	// WriteTimeout bounds one flush to a connection; zero means 10s.
	WriteTimeout time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the gateway's metrics; nil means none.
	Registerer prometheus.Registerer
	// MaxPreAuthPerSource bounds the connections one source address may
	// hold open before their HELLO succeeds (each lasts at most the
	// handshake timeout); more are closed at once, so one address cannot
	// spend the server's files. Zero means 256; negative, no bound (a
	// load balancer that hides clients' addresses).
	MaxPreAuthPerSource int
	// Limits are session.Config's: submits per user, and HELLOs refused
	// from an address that failed to authenticate too often; nil: none.
	Limits *ratelimit.Limits
	// WSOrigins are the browser origins the WebSocket gateway accepts
	// besides the same origin (an Origin whose host is the request's
	// Host), e.g. "https://app.example.com"; "*" accepts any. A request
	// without an Origin header (not a browser) is always accepted: its
	// HELLO's token authenticates it. Empty: the same origin only.
	WSOrigins []string
}

// Server is the TCP gateway.
type Server struct {
	log      *slog.Logger
	sessions *session.Manager
	loop     netpoll.EventLoop

	draining bool // guarded by serveMu
	// serveMu orders Serve's start against Shutdown: netpoll ignores a
	// Shutdown that comes before its Serve has registered, so Shutdown
	// repeats it until Serve returns (served), if Serve started at all.
	serveMu      sync.Mutex
	serveStarted bool // guarded by serveMu
	served       chan struct{}

	// Connections not yet authenticated, by source address.
	preMu       sync.Mutex
	preAuth     map[string]int // guarded by preMu
	maxPreAuth  int
	preRefused  prometheus.Counter
	preAuthOpen prometheus.GaugeFunc

	writeTimeout time.Duration
	// The WebSocket gateway's origin policy (ws.go).
	wsOrigins       []string
	wsRefusedOrigin prometheus.Counter
	wsOpen          atomic.Int64 // open WebSocket connections, upgraded or not
	// The event loops of the TLS and WebSocket listeners (tls.go, ws.go).
	tlsMu     sync.Mutex
	tlsLoops  []tlsLoop // guarded by tlsMu
	tlsClosed bool      // guarded by tlsMu
}

// Netpoll's buffer sizes are process-wide settings, applied once, before
// the first connection. netpollBufferSize is the input buffer a new
// connection starts with (netpoll's default is 8 KiB); netpollMinNode is the
// smallest buffer node netpoll allocates (its default is 4 KiB, and an idle
// connection keeps one from its last write). Buffers grow on demand, and
// conn.Write writes a whole batch of frames into one node sized for it, so
// small minimums cost busy connections little and save idle ones most of
// their memory (see bench/RESULTS.md, idle).
const (
	netpollBufferSize = 1 << 10
	netpollMinNode    = 512
)

var configureNetpoll sync.Once

// New returns a server; call Serve to run it.
func New(cfg Config) (*Server, error) {
	if cfg.WriteTimeout < 0 {
		return nil, errors.New("socket: config: WriteTimeout must not be negative")
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	sessions, err := session.NewManager(session.Config{
		Engine: cfg.Engine, Hub: cfg.Hub, Tokens: cfg.Keys, Users: cfg.Directory,
		MaxFrame: cfg.MaxFrame, MaxInflight: cfg.MaxInflight, MaxPending: cfg.MaxPending,
		HandshakeTimeout: cfg.HandshakeTimeout, IdleTimeout: cfg.IdleTimeout, NewDeviceWindow: cfg.NewDeviceWindow,
		Limits: cfg.Limits, Logger: cfg.Logger, Registerer: cfg.Registerer,
	})
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	configureNetpoll.Do(func() {
		netpoll.LinkBufferCap = netpollMinNode
		_ = netpoll.Configure(netpoll.Config{BufferSize: netpollBufferSize})
	})
	if cfg.MaxPreAuthPerSource == 0 {
		cfg.MaxPreAuthPerSource = 256
	}
	s := &Server{log: cfg.Logger, sessions: sessions, served: make(chan struct{}), preAuth: map[string]int{}, maxPreAuth: cfg.MaxPreAuthPerSource,
		writeTimeout: cfg.WriteTimeout, wsOrigins: cfg.WSOrigins}
	wsConns := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ding_websocket_connections",
		Help: "Open WebSocket connections (--ws and /ws on the HTTP port), authenticated or not; ding_socket_connections counts them too."},
		func() float64 { return float64(s.wsOpen.Load()) })
	s.wsRefusedOrigin = prometheus.NewCounter(prometheus.CounterOpts{Name: "ding_websocket_origin_refused_total",
		Help: "WebSocket upgrades refused (403) because their Origin is neither the same origin nor allowed (WSOrigins)."})
	s.preRefused = prometheus.NewCounter(prometheus.CounterOpts{Name: "ding_socket_preauth_refused_total",
		Help: "Connections closed at once because their source address held too many not yet authenticated (MaxPreAuthPerSource)."})
	s.preAuthOpen = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ding_socket_preauth_connections",
		Help: "Connections open that have not completed their HELLO."}, func() float64 {
		s.preMu.Lock()
		defer s.preMu.Unlock()
		n := 0
		for _, c := range s.preAuth {
			n += c
		}
		return float64(n)
	})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.preRefused, s.preAuthOpen, s.wsRefusedOrigin, wsConns} {
			if err := cfg.Registerer.Register(c); err != nil {
				sessions.Shutdown(context.Background())
				return nil, fmt.Errorf("socket: metrics: %w", err)
			}
		}
	}
	s.loop, err = netpoll.NewEventLoop(s.onRequest,
		netpoll.WithOnPrepare(s.onPrepare),
		netpoll.WithReadTimeout(sessions.IdleTimeout()),
		netpoll.WithWriteTimeout(cfg.WriteTimeout),
	)
	if err != nil {
		sessions.Shutdown(context.Background())
		return nil, fmt.Errorf("socket: event loop: %w", err)
	}
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
	if s.draining || s.serveStarted {
		s.serveMu.Unlock()
		ln.Close()
		return nil
	}
	s.serveStarted = true
	s.serveMu.Unlock()
	defer close(s.served)
	err := s.loop.Serve(ln)
	s.serveMu.Lock()
	draining := s.draining
	s.serveMu.Unlock()
	if draining {
		return nil
	}
	return err
}

// Connections returns the number of open connections.
func (s *Server) Connections() int { return s.sessions.Count() }

// Shutdown tells every client SHUTTING_DOWN (new connections get it at
// once), waits until their queues are flushed and their connections
// closed, then stops the event loop; or, if ctx ends first, closes what is
// left and returns ctx.Err(). It is idempotent. Submits already handed to
// the engine are committed by the engine's own Shutdown.
func (s *Server) Shutdown(ctx context.Context) error {
	s.serveMu.Lock()
	s.draining = true
	started := s.serveStarted
	s.serveMu.Unlock()
	err := s.sessions.Shutdown(ctx)
	s.closeTLS(ctx)
	// Every connection has closed (or the deadline passed); stop the event
	// loop.
	_ = s.loop.Shutdown(ctx) // netpoll reports the listener it just closed; nothing to act on
	for started {
		select {
		case <-s.served:
			started = false
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
			_ = s.loop.Shutdown(ctx) // Serve had not registered yet
		}
	}
	return err
}
