package socket

import (
	"context"
	"errors"
	"net"
	"sync"

	"github.com/cloudwego/netpoll"

	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/channels/socket/wire"
)

// connKey carries the *conn from OnPrepare to OnRequest: netpoll's own
// mechanism for per-connection state is the context it hands back.
type connKey struct{}

// conn is one netpoll connection: the session's Transport.
type conn struct {
	nc   netpoll.Connection
	sess *session.Session // set once by onPrepare under mu, before any input
	s    *Server
	src  string // source address, counted in s.preAuth until authenticated

	mu      sync.Mutex
	closed  bool // netpoll closed the connection: never touch its buffers again; guarded by mu
	counted bool // still counted in s.preAuth; guarded by mu
}

var _ session.Transport = (*conn)(nil)

var errClosed = errors.New("socket: connection closed")

func (s *Server) onPrepare(nc netpoll.Connection) context.Context {
	src := sourceOf(nc.RemoteAddr())
	if !s.admitPreAuth(src) {
		s.preRefused.Inc()
		_ = nc.Close()
		return context.Background() // no conn: onRequest closes whatever arrives
	}
	c := &conn{nc: nc, s: s, src: src, counted: true}
	// Close callbacks run newest first, so this one runs before netpoll's
	// own releases the connection's buffers; Write copies into them only
	// under c.mu and only while closed is false.
	//
	// It is added before the session is registered: from Open on, a
	// Shutdown or the sweeper may queue a fatal error whose flusher
	// closes the connection at once, and a close before the callback was
	// added would never reach the session, which would then stay
	// registered and hold Shutdown until its deadline. c.mu keeps the
	// callback (and Write) waiting until c.sess is set.
	_ = nc.AddCloseCallback(func(netpoll.Connection) error {
		c.mu.Lock()
		c.closed = true
		sess := c.sess
		c.mu.Unlock()
		c.Authenticated() // or gone: either way no longer waiting for its HELLO
		sess.Closed()
		return nil
	})
	c.mu.Lock()
	c.sess = s.sessions.Open(c)
	c.mu.Unlock()
	c.sess.Begin()
	return context.WithValue(context.Background(), connKey{}, c)
}

// onRequest reads every complete frame and hands it to the session. It
// blocks only while a frame is partly received (bounded by the read
// timeout).
func (s *Server) onRequest(ctx context.Context, nc netpoll.Connection) error {
	c, _ := ctx.Value(connKey{}).(*conn)
	if c == nil {
		return nc.Close()
	}
	r := nc.Reader()
	for r.Len() > 0 {
		if c.sess.Dead() {
			_ = r.Skip(r.Len())
			return r.Release()
		}
		hdr, err := r.Peek(wire.HeaderLen)
		if err != nil {
			return nc.Close() // timed out inside a frame, or closed
		}
		n, ft, err := wire.ParseHeader(hdr, s.sessions.MaxFrame())
		if err != nil {
			c.sess.FrameError(err)
			_ = r.Skip(r.Len())
			return r.Release()
		}
		frame, err := r.Next(4 + n)
		if err != nil {
			return nc.Close()
		}
		c.sess.HandleFrame(ft, frame[wire.HeaderLen:])
		_ = r.Release()
	}
	return nil
}

// Write implements session.Transport: the frames go into one buffer node
// sized for them (one copy, one iovec) and out with one Flush.
func (c *conn) Write(frames [][]byte, size int) error {
	w := c.nc.Writer()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errClosed
	}
	buf, err := w.Malloc(size)
	if err == nil {
		off := 0
		for _, f := range frames {
			off += copy(buf[off:], f)
		}
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return w.Flush()
}

// Close implements session.Transport.
func (c *conn) Close() error { return c.nc.Close() }

// Authenticated implements the session's notice that the HELLO succeeded:
// the connection no longer counts against its source's pre-auth bound.
func (c *conn) Authenticated() {
	c.mu.Lock()
	counted := c.counted
	c.counted = false
	c.mu.Unlock()
	if counted {
		c.s.releasePreAuth(c.src)
	}
}

// sourceOf is the host of a remote address (its port dropped).
func sourceOf(a net.Addr) string {
	if a == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// admitPreAuth counts a new connection from src, unless src holds its
// bound of connections not yet authenticated.
func (s *Server) admitPreAuth(src string) bool {
	s.preMu.Lock()
	defer s.preMu.Unlock()
	if s.maxPreAuth > 0 && s.preAuth[src] >= s.maxPreAuth {
		return false
	}
	s.preAuth[src]++
	return true
}

func (s *Server) releasePreAuth(src string) {
	s.preMu.Lock()
	defer s.preMu.Unlock()
	if s.preAuth[src] <= 1 {
		delete(s.preAuth, src)
	} else {
		s.preAuth[src]--
	}
}
