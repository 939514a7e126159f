package socket

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/cloudwego/netpoll"

	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/channels/socket/wire"
)

// TLS on netpoll's event loop.
//
// netpoll has no TLS, so crypto/tls runs over a netpoll connection
// (recordConn), in the same event-driven way as the plain port: no
// goroutine waits on an idle TLS connection. When bytes arrive, a
// handler (onTLSRequest) decrypts and hands the frames to the session,
// and returns once netpoll's buffer is empty. For that to be safe,
// crypto/tls must hold nothing undelivered when the handler returns, or
// a record it had read ahead would wait for bytes that never come:
//
//   - recordConn.Read gives crypto/tls at most the rest of the current
//     TLS record (it reads each record's 5-byte header from netpoll's
//     buffer), so crypto/tls never reads ahead of the record it decrypts;
//   - the handler reads plaintext with a buffer of a whole record's
//     plaintext (maxPlaintext), so each Read drains the record.
//
// So "netpoll's buffer is empty" means "nothing is pending", and the
// handler may return. A handler blocks only inside a record (or inside
// the handshake, whose flights it waits for), bounded by the session's
// handshake and idle timeouts, which close the connection.
//
// A TLS 1.3 KeyUpdate or another post-handshake message with no data
// after it makes the handler wait for the next record; that record comes
// with the client's next frame or ping, so it holds a goroutine, not a
// connection.
//
// What an idle TLS connection keeps: netpoll's buffers (as plain), the
// tls.Conn with its record buffers and cipher state, and the session;
// no goroutine and no stack (bench/RESULTS.md, "TLS beside plain").

// maxPlaintext is the most plaintext one TLS record carries.
const maxPlaintext = 16 << 10

var plainBufs = sync.Pool{New: func() any { b := make([]byte, maxPlaintext+256); return &b }}

// ServeTLS serves the same protocol, the same sessions and limits, over
// TLS on ln (converted to a netpoll listener), until Shutdown. With
// cfg.ClientCAs (and ClientAuth verifying them), a HELLO without a token
// may be authenticated by the client certificate
// (session.PeerCertifier). cfg may change certificates on the fly
// (GetCertificate, GetConfigForClient): each handshake asks it.
func (s *Server) ServeTLS(ln net.Listener, cfg *tls.Config) error {
	nl, err := netpoll.ConvertListener(ln)
	if err != nil {
		ln.Close()
		return fmt.Errorf("socket: TLS listener: %w", err)
	}
	loop, err := netpoll.NewEventLoop(s.onTLSRequest,
		netpoll.WithOnPrepare(func(nc netpoll.Connection) context.Context { return s.onTLSPrepare(nc, cfg) }),
		netpoll.WithReadTimeout(s.sessions.IdleTimeout()),
		netpoll.WithWriteTimeout(s.writeTimeout),
	)
	if err != nil {
		nl.Close()
		return fmt.Errorf("socket: TLS event loop: %w", err)
	}
	return s.serveLoop(loop, nl)
}

// serveLoop serves ln on an event loop beside the plain port's (TLS,
// WebSocket) until Shutdown, which stops it after the sessions drained.
func (s *Server) serveLoop(loop netpoll.EventLoop, nl netpoll.Listener) error {
	s.tlsMu.Lock()
	if s.tlsClosed {
		s.tlsMu.Unlock()
		nl.Close()
		return nil
	}
	served := make(chan struct{})
	s.tlsLoops = append(s.tlsLoops, tlsLoop{loop: loop, served: served})
	s.tlsMu.Unlock()
	defer close(served)
	err := loop.Serve(nl)
	s.tlsMu.Lock()
	closed := s.tlsClosed
	s.tlsMu.Unlock()
	if closed {
		return nil
	}
	return err
}

type tlsLoop struct {
	loop   netpoll.EventLoop
	served chan struct{}
}

// tlsConn is a session.Transport over a TLS connection on netpoll.
type tlsConn struct {
	rc   *recordConn
	tc   *tls.Conn
	s    *Server
	src  string
	sess *session.Session // set once in onTLSPrepare, before any input

	// Only the handler touches these (netpoll runs one at a time per
	// connection).
	handshook bool
	pending   []byte // the start of a frame not yet whole; nil between frames

	mu      sync.Mutex
	counted bool // still counted in s.preAuth; guarded by mu
}

var (
	_ session.Transport     = (*tlsConn)(nil)
	_ session.PeerCertifier = (*tlsConn)(nil)
)

func (s *Server) onTLSPrepare(nc netpoll.Connection, cfg *tls.Config) context.Context {
	src := sourceOf(nc.RemoteAddr())
	if !s.admitPreAuth(src) {
		s.preRefused.Inc()
		_ = nc.Close()
		return context.Background()
	}
	rc := &recordConn{Connection: nc}
	c := &tlsConn{rc: rc, tc: tls.Server(rc, cfg), s: s, src: src, counted: true}
	// As on the plain port (conn.go): added before the session is
	// registered, and it runs before netpoll releases the buffers.
	_ = nc.AddCloseCallback(func(netpoll.Connection) error {
		rc.mu.Lock()
		rc.closed = true
		rc.mu.Unlock()
		c.Authenticated()
		c.sess.Closed()
		return nil
	})
	c.sess = s.sessions.Open(c)
	c.sess.Begin()
	return context.WithValue(context.Background(), connKey{}, c)
}

// onTLSRequest completes the handshake, then decrypts what arrived and
// hands every whole frame to the session, until netpoll's buffer is
// empty (see the comment at the top of this file).
func (s *Server) onTLSRequest(ctx context.Context, nc netpoll.Connection) error {
	c, _ := ctx.Value(connKey{}).(*tlsConn)
	if c == nil {
		return nc.Close()
	}
	if !c.handshook {
		// Bounded by the session's handshake timeout, which closes the
		// connection (and so ends a read waiting inside it).
		if err := c.tc.HandshakeContext(ctx); err != nil {
			return nc.Close()
		}
		c.handshook = true
	}
	bp := plainBufs.Get().(*[]byte)
	defer plainBufs.Put(bp)
	buf := *bp
	for nc.Reader().Len() > 0 {
		n, err := c.tc.Read(buf)
		if err != nil {
			return nc.Close()
		}
		if !c.frames(buf[:n]) {
			return nil
		}
	}
	return nil
}

// frames hands the whole frames of pending+p to the session and keeps the
// start of the last one if it is not whole yet; false when the session is
// done with the connection.
func (c *tlsConn) frames(p []byte) bool {
	if c.sess.Dead() {
		c.pending = nil
		return false
	}
	data, held := p, len(c.pending) > 0
	if held {
		c.pending = append(c.pending, p...)
		data = c.pending
	}
	for len(data) >= wire.HeaderLen {
		n, ft, err := wire.ParseHeader(data[:wire.HeaderLen], c.s.sessions.MaxFrame())
		if err != nil {
			// The session answers and closes; the rest is discarded.
			c.sess.FrameError(err)
			c.pending = nil
			return false
		}
		if len(data) < 4+n {
			break
		}
		c.sess.HandleFrame(ft, data[wire.HeaderLen:4+n])
		data = data[4+n:]
		if c.sess.Dead() {
			c.pending = nil
			return false
		}
	}
	switch {
	case len(data) == 0:
		c.pending = nil // an idle connection keeps no frame buffer
	case held:
		c.pending = c.pending[:copy(c.pending, data)]
	default:
		c.pending = append([]byte(nil), data...) // p is the handler's buffer
	}
	return true
}

// Write implements session.Transport: the frames go into one record
// stream (crypto/tls splits it into records) and out through netpoll.
func (c *tlsConn) Write(frames [][]byte, size int) error {
	bp := plainBufs.Get().(*[]byte)
	defer plainBufs.Put(bp)
	buf := (*bp)[:0]
	for _, f := range frames {
		buf = append(buf, f...)
	}
	if cap(buf) > cap(*bp) && cap(buf) <= 1<<20 {
		*bp = buf[:cap(buf)] // keep the larger buffer for the next big write
	}
	_, err := c.tc.Write(buf)
	return err
}

// Close implements session.Transport.
func (c *tlsConn) Close() error { return c.rc.Close() }

// Authenticated is the session's notice that the HELLO succeeded.
func (c *tlsConn) Authenticated() {
	c.mu.Lock()
	counted := c.counted
	c.counted = false
	c.mu.Unlock()
	if counted {
		c.s.releasePreAuth(c.src)
	}
}

// PeerCertificate implements session.PeerCertifier: the client
// certificate the handshake verified against the listener's client CA
// (tls.Config.ClientCAs), or nil.
func (c *tlsConn) PeerCertificate() *x509.Certificate {
	if chains := c.tc.ConnectionState().VerifiedChains; len(chains) > 0 && len(chains[0]) > 0 {
		return chains[0][0]
	}
	return nil
}

// closeTLS stops the event loops of serveLoop (TLS, WebSocket) (Shutdown,
// after the sessions have drained).
func (s *Server) closeTLS(ctx context.Context) {
	s.tlsMu.Lock()
	loops := s.tlsLoops
	s.tlsLoops, s.tlsClosed = nil, true
	s.tlsMu.Unlock()
	for _, l := range loops {
		_ = l.loop.Shutdown(ctx)
		select {
		case <-l.served:
		case <-ctx.Done():
		}
	}
}

// recordConn is the net.Conn crypto/tls reads and writes: a netpoll
// connection whose Read never returns more than the rest of the current
// TLS record, and whose Write stops once netpoll closed the connection
// (its buffers are released then).
type recordConn struct {
	netpoll.Connection
	left int // bytes of the current record not yet read; only the handler reads

	mu     sync.Mutex
	closed bool // guarded by mu
}

// recordHeaderLen is a TLS record's header: type (1), version (2),
// length (2).
const recordHeaderLen = 5

func (r *recordConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	rd := r.Reader()
	if r.left == 0 {
		hdr, err := rd.Peek(recordHeaderLen) // waits for it
		if err != nil {
			return 0, err
		}
		r.left = recordHeaderLen + int(binary.BigEndian.Uint16(hdr[3:5]))
	}
	n := min(len(p), r.left, max(rd.Len(), 1)) // 1: wait for the next byte
	b, err := rd.Next(n)
	if err != nil {
		return 0, err
	}
	copy(p, b)
	r.left -= n
	return n, rd.Release()
}

func (r *recordConn) Write(p []byte) (int, error) {
	w := r.Writer()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, errClosed
	}
	buf, err := w.Malloc(len(p))
	if err == nil {
		copy(buf, p)
	}
	r.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Deadlines: crypto/tls sets a write deadline for the close_notify
// alert; netpoll's write timeout (the server's WriteTimeout) bounds
// every write already, and the session's timeouts bound reads.
func (r *recordConn) SetDeadline(time.Time) error      { return nil }
func (r *recordConn) SetReadDeadline(time.Time) error  { return nil }
func (r *recordConn) SetWriteDeadline(time.Time) error { return nil }
