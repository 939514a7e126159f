package socket

import (
	"cmp"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
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
	s.wsOpen.Add(1)
	defer func() {
		_ = nc.Close()
		c.Authenticated()
		c.sess.Closed()
		s.wsOpen.Add(-1)
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

// connInput is a wsInput over a blocking reader (a net.Conn, or a
// tls.Conn on netpoll): a buffer that grows to the largest frame read.
type connInput struct {
	r io.Reader
	// minRead is the free space each Read is given: over TLS on netpoll,
	// a whole record's plaintext, so that crypto/tls holds none back
	// (tls.go). Zero means 2 KiB.
	minRead int
	// pooled: the buffer goes back to inputBufs once drained, so an idle
	// connection holds none; otherwise it is kept (up to 64 KiB).
	pooled bool
	buf    []byte // buf[off:] is unread
	off    int
}

// inputBufs are the pooled buffers of connInput: a TLS record's
// plaintext and a few KiB more.
var inputBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxPlaintext+4<<10); return &b }}

// Len is the number of bytes buffered.
func (in *connInput) Len() int { return len(in.buf) - in.off }

func (in *connInput) Peek(n int) ([]byte, error) {
	for len(in.buf)-in.off < n {
		if in.off > 0 {
			in.buf = in.buf[:copy(in.buf, in.buf[in.off:])]
			in.off = 0
		}
		need := max(n, len(in.buf)+cmp.Or(in.minRead, 2<<10))
		if cap(in.buf) < need {
			var nb []byte
			if in.pooled && in.buf == nil && need <= maxPlaintext+4<<10 {
				nb = (*inputBufs.Get().(*[]byte))[:0]
			} else {
				nb = make([]byte, len(in.buf), max(need, 2*cap(in.buf)))
				copy(nb, in.buf)
			}
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
	if in.off != len(in.buf) {
		return nil
	}
	switch {
	case in.pooled && cap(in.buf) == maxPlaintext+4<<10:
		b := in.buf[:0]
		inputBufs.Put(&b)
		in.buf = nil
	case in.pooled || cap(in.buf) > 64<<10:
		in.buf = nil
	default:
		in.buf = in.buf[:0]
	}
	in.off = 0
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
