package socket

import (
	"context"
	"crypto/tls"
	"errors"

	"github.com/cloudwego/netpoll"
)

// wss:// on the WebSocket listener: crypto/tls over a netpoll connection
// (recordConn, tls.go), the upgrade and the WebSocket frames read from
// the plaintext with a connInput whose every Read has room for a whole
// record's plaintext. So, as in tls.go, crypto/tls holds nothing back
// once a Read returned, and the handler may return when netpoll's buffer
// and the connInput are empty; it blocks only inside a record, the
// handshake, the upgrade or a WebSocket frame (bounded by the session's
// timeouts). The connInput's buffer goes back to a pool once drained:
// an idle connection keeps crypto/tls's state and no buffer of ours.

// wsTLS is the TLS side of a wss connection; only the handler touches
// handshook and in.
type wsTLS struct {
	tc        *tls.Conn
	rc        *recordConn
	in        *connInput
	handshook bool
}

func (s *Server) onWSTLSPrepare(nc netpoll.Connection, cfg *tls.Config) context.Context {
	src := sourceOf(nc.RemoteAddr())
	if !s.admitPreAuth(src) {
		s.preRefused.Inc()
		_ = nc.Close()
		return context.Background()
	}
	rc := &recordConn{Connection: nc}
	tc := tls.Server(rc, cfg)
	t := &wsTLS{tc: tc, rc: rc, in: &connInput{r: tc, minRead: maxPlaintext + 256, pooled: true}}
	c := &wsConn{s: s, src: src, raw: &tlsRaw{tc: tc, rc: rc}, counted: true}
	s.openWS(nc, c, func() {
		rc.mu.Lock()
		rc.closed = true
		rc.mu.Unlock()
	})
	return context.WithValue(context.Background(), connKey{}, &wsTLSConn{c, t})
}

type wsTLSConn struct {
	*wsConn
	t *wsTLS
}

func (s *Server) onWSTLSRequest(ctx context.Context, nc netpoll.Connection) error {
	w, _ := ctx.Value(connKey{}).(*wsTLSConn)
	if w == nil {
		return nc.Close()
	}
	c, t := w.wsConn, w.t
	if !t.handshook {
		// Bounded by the session's handshake timeout, which closes the
		// connection (and so ends a read waiting inside it).
		if err := t.tc.HandshakeContext(ctx); err != nil {
			return nc.Close()
		}
		t.handshook = true
	}
	for nc.Reader().Len() > 0 || t.in.Len() > 0 {
		if !c.upgraded.Load() {
			if err := c.upgrade(t.in); err != nil {
				return nc.Close()
			}
			continue
		}
		if c.sess.Dead() {
			return discardTLS(nc, t)
		}
		switch err := c.readFrame(t.in); {
		case err == nil:
		case errors.Is(err, errWSDone):
			return discardTLS(nc, t)
		default:
			return nc.Close()
		}
	}
	return nil
}

// discardTLS drops the input of a connection the session is closing.
func discardTLS(nc netpoll.Connection, t *wsTLS) error {
	t.in.off = len(t.in.buf)
	_ = t.in.Release()
	r := nc.Reader()
	_ = r.Skip(r.Len())
	return r.Release()
}

// tlsRaw writes through crypto/tls to a netpoll connection.
type tlsRaw struct {
	tc *tls.Conn
	rc *recordConn
}

func (t *tlsRaw) write(total int, fill func([]byte)) error {
	bp := plainBufs.Get().(*[]byte)
	defer plainBufs.Put(bp)
	buf := (*bp)[:0]
	if cap(buf) < total {
		buf = make([]byte, 0, total)
	}
	buf = buf[:total]
	fill(buf)
	_, err := t.tc.Write(buf)
	return err
}

func (t *tlsRaw) close() error { return t.rc.Close() }
