package socket

import (
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/gobwas/ws"
)

// WSHandler serves the WebSocket gateway on an HTTP server (dingd's HTTP
// port, at /ws): the same frames, sessions, limits and origin policy as
// ServeWS, but after the upgrade the connection holds the handler's
// goroutine (net/http's), blocked in its read. For many connections use
// ServeWS (dingd --ws), which holds none.
//
// Shutdown closes these connections with the others; each handler
// returns once its connection is closed.
func (s *Server) WSHandler() http.Handler {
	return http.HandlerFunc(s.serveWSHTTP)
}

func (s *Server) serveWSHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.originAllowed(r.Header.Get("Origin"), r.Host) {
		s.wsRefusedOrigin.Inc()
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	src := sourceOf(addrString(r.RemoteAddr))
	if !s.admitPreAuth(src) {
		s.preRefused.Inc()
		http.Error(w, "too many connections from your address are not authenticated yet", http.StatusServiceUnavailable)
		return
	}
	u := ws.HTTPUpgrader{Protocol: func(p string) bool { return p == Subprotocol }, Timeout: s.writeTimeout}
	nc, rw, _, err := u.Upgrade(r, w)
	if err != nil {
		s.releasePreAuth(src) // Upgrade answered the request with the reason
		return
	}
	// net/http's read deadline (its ReadTimeout) stays on a hijacked
	// connection: the session's idle timeout governs from now on.
	_ = nc.SetDeadline(time.Time{})
	in := &connInput{r: nc}
	if n := rw.Reader.Buffered(); n > 0 { // read ahead by net/http
		b, _ := rw.Reader.Peek(n)
		in.buf = append(in.buf, b...)
	}
	c := &wsConn{s: s, src: src, raw: &netRaw{nc: nc, timeout: s.writeTimeout}, counted: true}
	c.upgraded.Store(true)
	c.sess = s.sessions.Open(c)
	defer func() {
		_ = nc.Close()
		c.Authenticated()
		c.sess.Closed()
	}()
	c.sess.Begin()
	for {
		err := c.readFrame(in)
		if err == nil {
			continue
		}
		if errors.Is(err, errWSDone) {
			// The session flushes its error and closes the connection
			// (within a second); until then input is discarded.
			_, _ = io.Copy(io.Discard, nc)
		}
		return
	}
}

// addrString is a net.Addr of a request's RemoteAddr, for sourceOf.
type addrString string

func (a addrString) Network() string { return "tcp" }
func (a addrString) String() string  { return string(a) }

var _ net.Addr = addrString("")

// connInput is a wsInput over a blocking reader: a buffer that grows to
// the largest frame read and is dropped when it is drained and large.
type connInput struct {
	r   io.Reader
	buf []byte // buf[off:] is unread
	off int
}

func (in *connInput) Peek(n int) ([]byte, error) {
	for len(in.buf)-in.off < n {
		if in.off > 0 && cap(in.buf)-in.off < n {
			in.buf = in.buf[:copy(in.buf, in.buf[in.off:])]
			in.off = 0
		}
		if cap(in.buf)-len(in.buf) < 512 || cap(in.buf)-in.off < n {
			nb := make([]byte, len(in.buf), max(in.off+n, 2*cap(in.buf), 2048))
			copy(nb, in.buf)
			in.buf = nb
		}
		m, err := in.r.Read(in.buf[len(in.buf):cap(in.buf)])
		in.buf = in.buf[:len(in.buf)+m]
		if err != nil && len(in.buf)-in.off < n {
			return nil, err
		}
	}
	return in.buf[in.off : in.off+n], nil
}

func (in *connInput) Next(n int) ([]byte, error) {
	b, err := in.Peek(n)
	if err == nil {
		in.off += n
	}
	return b, err
}

func (in *connInput) Release() error {
	if in.off == len(in.buf) {
		in.buf, in.off = in.buf[:0], 0
		if cap(in.buf) > 64<<10 {
			in.buf = nil
		}
	}
	return nil
}

// netRaw writes to a net.Conn, each write bounded by timeout.
type netRaw struct {
	nc      net.Conn
	timeout time.Duration
}

func (n *netRaw) write(total int, fill func([]byte)) error {
	buf := make([]byte, total)
	fill(buf)
	_ = n.nc.SetWriteDeadline(time.Now().Add(n.timeout))
	_, err := n.nc.Write(buf)
	return err
}

func (n *netRaw) close() error { return n.nc.Close() }
