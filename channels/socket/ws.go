package socket

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cloudwego/netpoll"
	"github.com/gobwas/ws"
	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// The WebSocket gateway (PROTOCOL.md, "WebSocket").
//
// The same frames as the TCP port, one per binary WebSocket message, on
// the same sessions (so the same limits, timeouts and error codes):
//
//	WebSocket message (binary, opcode 2; may be fragmented)
//	+---------------+-----+---------------------------+
//	| length (BE32) | type| payload (protobuf, pb.*)  |
//	+---------------+-----+---------------------------+
//	length must equal the message's size minus 4
//
// Two ways in, one frame reader (readFrame) and one Transport (wsConn):
//
//   - ServeWS: a listener of its own (dingd --ws) on a netpoll event loop
//     of its own, like ServeTLS (and over TLS like it, wstls.go): the HTTP upgrade and then every
//     WebSocket frame are read in the loop's handler, which returns once
//     netpoll's buffer is empty, so an idle connection holds no goroutine
//     and no read buffer (bench/RESULTS.md: about 7 KiB per idle
//     connection; a goroutine per connection with gorilla/websocket or
//     coder/websocket measured 18 and 23 KiB for the WebSocket alone).
//   - WSHandler: /ws on the HTTP port (net/http), a goroutine per
//     connection after the upgrade; handy for browsers on the admin
//     port, bounded by the HTTP port's connection limits.
//
// The WebSocket layer is gobwas/ws (the upgrade, masking): it reads from
// any io.Reader and allocates nothing per idle connection.
//
// Close codes: the close frame the server sends carries 4000 plus the
// pb.Code of the fatal ERROR frame sent just before it (4017 for
// SLOW_CONSUMER, 4020 for SHUTTING_DOWN, ...), except for three errors
// of the WebSocket layer itself, which also get their ERROR frame first:
// a text message (1003, BAD_FRAME), a message over the frame limit
// (1009, FRAME_TOO_LARGE), and a broken WebSocket frame (1002,
// BAD_FRAME). A close the client starts is echoed.

// Subprotocol is the WebSocket subprotocol the gateway selects when the
// client offers it (Sec-WebSocket-Protocol); offering none is fine too.
const Subprotocol = "ding.v1"

// WebSocket close codes (RFC 6455 §7.4.1) the gateway sends.
const (
	wsCloseNormal      = 1000
	wsCloseProtocol    = 1002
	wsCloseUnsupported = 1003
	wsCloseTooBig      = 1009
	// WSCloseErrorBase plus a pb.Code is the close code after a fatal
	// ERROR frame with that code.
	WSCloseErrorBase = 4000
)

// maxUpgradeRequest bounds the HTTP upgrade request's line and headers.
const maxUpgradeRequest = 8 << 10

// errWSDone means the session queued a fatal error (or the client
// closed): the rest of the input is discarded while the session flushes
// and closes.
var errWSDone = errors.New("socket: websocket: connection done")

// errWSClose means the connection should be closed now.
var errWSClose = errors.New("socket: websocket: close")

// wsInput is what readFrame reads from: netpoll's Reader, or connInput
// over a net.Conn.
type wsInput interface {
	// Peek returns the next n bytes without consuming them, waiting for
	// them.
	Peek(n int) ([]byte, error)
	// Next consumes and returns the next n bytes, valid until Release.
	Next(n int) ([]byte, error)
	Release() error
}

// wsRaw is where a wsConn's bytes go: a netpoll connection or a net.Conn.
type wsRaw interface {
	// write writes total bytes, which fill writes into the slice it is
	// given, as one write; it fails once the connection is closed.
	write(total int, fill func([]byte)) error
	close() error
}

// wsConn is one WebSocket connection: the session's Transport.
type wsConn struct {
	s    *Server
	sess *session.Session // set once before any input
	src  string
	raw  wsRaw

	upgraded  atomic.Bool   // the 101 response was written
	closeCode atomic.Uint32 // the code of the close frame; the first reason set wins
	closeSent atomic.Bool

	// Only the reader touches these (one at a time per connection).
	frag bool   // a fragmented message is being received
	msg  []byte // its fragments so far

	// wmu serializes writes: the session's flusher, and the reader's
	// control frames (pong, close).
	wmu sync.Mutex

	mu      sync.Mutex
	counted bool // still counted in s.preAuth; guarded by mu
}

var _ session.Transport = (*wsConn)(nil)

// Source is the connection's source address (without its port).
func (c *wsConn) Source() string { return c.src }

// Authenticated is the session's notice that the HELLO succeeded.
func (c *wsConn) Authenticated() {
	c.mu.Lock()
	counted := c.counted
	c.counted = false
	c.mu.Unlock()
	if counted {
		c.s.releasePreAuth(c.src)
	}
}

// Write implements session.Transport: each frame becomes one binary
// WebSocket message (unmasked: server to client), all of them one write.
// Before the upgrade (a handshake timeout, a shutdown) there is no
// WebSocket to say anything in: the frames are dropped and the session
// closes the connection.
func (c *wsConn) Write(frames [][]byte, size int) error {
	// A buffer may hold several whole frames back to back (the hub
	// encodes a user's entries once, together): each goes in a message of
	// its own, as PROTOCOL.md promises.
	total := size
	for _, b := range frames {
		eachFrame(b, func(f []byte) {
			total += wsHeaderLen(len(f))
			c.noteFatal(f)
		})
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.upgraded.Load() {
		return nil
	}
	return c.raw.write(total, func(dst []byte) {
		off := 0
		for _, b := range frames {
			eachFrame(b, func(f []byte) {
				off += putWSHeader(dst[off:], ws.OpBinary, len(f))
				off += copy(dst[off:], f)
			})
		}
	})
}

// eachFrame calls fn with each whole frame of b, which holds one or
// more back to back (each its 4-byte length, then that many bytes). A
// remainder that is not a whole frame, which the server never makes, goes
// as it is.
func eachFrame(b []byte, fn func([]byte)) {
	for len(b) >= 4 {
		n := 4 + int(binary.BigEndian.Uint32(b))
		if n > len(b) || n < 4 {
			break
		}
		fn(b[:n])
		b = b[n:]
	}
	if len(b) > 0 {
		fn(b)
	}
}

// noteFatal records the close code a fatal ERROR frame calls for.
func (c *wsConn) noteFatal(f []byte) {
	if len(f) < wire.HeaderLen || pb.FrameType(f[4]) != pb.FrameType_ERROR {
		return
	}
	var e pb.Error
	if proto.Unmarshal(f[wire.HeaderLen:], &e) == nil && e.Fatal {
		c.closeCode.CompareAndSwap(0, uint32(WSCloseErrorBase+int(e.Code)))
	}
}

// Close implements session.Transport: a close frame (if no write is
// stuck, and none was sent), then the connection.
func (c *wsConn) Close() error {
	if c.upgraded.Load() && c.wmu.TryLock() {
		if c.closeSent.CompareAndSwap(false, true) {
			code := uint16(c.closeCode.Load())
			if code == 0 {
				code = wsCloseNormal
			}
			_ = c.writeControlLocked(ws.OpClose, closePayload(code))
		}
		c.wmu.Unlock()
	}
	return c.raw.close()
}

func closePayload(code uint16) []byte {
	reason := "closing"
	if code >= WSCloseErrorBase {
		reason = pb.Code(code - WSCloseErrorBase).String()
	}
	p := binary.BigEndian.AppendUint16(nil, code)
	return append(p, reason...)
}

// writeControlLocked writes one control frame; c.wmu is held.
func (c *wsConn) writeControlLocked(op ws.OpCode, payload []byte) error {
	return c.raw.write(wsHeaderLen(len(payload))+len(payload), func(dst []byte) {
		n := putWSHeader(dst, op, len(payload))
		copy(dst[n:], payload)
	})
}

// wsHeaderLen is the size of a server frame's header for n payload bytes.
func wsHeaderLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xffff:
		return 4
	}
	return 10
}

// putWSHeader writes a final, unmasked frame header into dst.
func putWSHeader(dst []byte, op ws.OpCode, n int) int {
	dst[0] = 0x80 | byte(op)
	switch {
	case n < 126:
		dst[1] = byte(n)
		return 2
	case n <= 0xffff:
		dst[1] = 126
		binary.BigEndian.PutUint16(dst[2:], uint16(n))
		return 4
	}
	dst[1] = 127
	binary.BigEndian.PutUint64(dst[2:], uint64(n))
	return 10
}

// fatal records the WebSocket close code for an error of the WebSocket
// layer and has the session answer it (BAD_FRAME, or FRAME_TOO_LARGE for
// wire.ErrTooLarge) and close.
func (c *wsConn) fatal(code uint32, err error) error {
	c.closeCode.CompareAndSwap(0, code)
	c.sess.FrameError(err)
	return errWSDone
}

// readFrame reads one WebSocket frame from in and acts on it. nil: go
// on; errWSDone: a fatal error is queued, discard the rest; another
// error: close the connection.
func (c *wsConn) readFrame(in wsInput) error {
	b, err := in.Peek(2)
	if err != nil {
		return err
	}
	fin, rsv, op := b[0]&0x80 != 0, b[0]&0x70, ws.OpCode(b[0]&0x0f)
	masked, l7 := b[1]&0x80 != 0, int(b[1]&0x7f)
	if !masked || rsv != 0 {
		// No extension was negotiated (per-message-deflate is off), and
		// a client's frames are masked (RFC 6455 §5.1).
		return c.fatal(wsCloseProtocol, errors.New("websocket: unmasked frame or reserved bits set"))
	}
	hl := 2 + 4
	switch l7 {
	case 126:
		hl += 2
	case 127:
		hl += 8
	}
	if b, err = in.Peek(hl); err != nil {
		return err
	}
	var length uint64
	switch l7 {
	case 126:
		length = uint64(binary.BigEndian.Uint16(b[2:]))
	case 127:
		length = binary.BigEndian.Uint64(b[2:])
	default:
		length = uint64(l7)
	}
	var mask [4]byte
	copy(mask[:], b[hl-4:hl])

	if op.IsControl() {
		if !fin || length > 125 {
			return c.fatal(wsCloseProtocol, errors.New("websocket: fragmented or long control frame"))
		}
		p, err := in.Next(hl + int(length))
		if err != nil {
			return err
		}
		var payload [125]byte
		n := copy(payload[:], p[hl:])
		ws.Cipher(payload[:n], mask, 0)
		_ = in.Release()
		return c.control(op, payload[:n])
	}
	switch {
	case op == ws.OpText:
		return c.fatal(wsCloseUnsupported, errors.New("websocket: text message; frames go in binary messages"))
	case op != ws.OpBinary && op != ws.OpContinuation:
		return c.fatal(wsCloseProtocol, fmt.Errorf("websocket: unknown opcode %d", op))
	case op == ws.OpBinary && c.frag, op == ws.OpContinuation && !c.frag:
		return c.fatal(wsCloseProtocol, errors.New("websocket: fragments out of order"))
	}
	limit := uint64(c.s.sessions.MaxFrame()) + 4 // the frame's length prefix is not counted by MaxFrame
	if uint64(len(c.msg))+length > limit {
		return c.fatal(wsCloseTooBig, fmt.Errorf("%w: a WebSocket message of %d bytes or more, limit %d", wire.ErrTooLarge, uint64(len(c.msg))+length, limit))
	}
	p, err := in.Next(hl + int(length))
	if err != nil {
		return err
	}
	payload := p[hl:]
	ws.Cipher(payload, mask, 0) // in place: the bytes are ours until Release
	switch {
	case fin && !c.frag:
		err = c.message(payload)
	case fin:
		c.msg = append(c.msg, payload...)
		err = c.message(c.msg)
		c.msg, c.frag = nil, false
	default:
		c.msg, c.frag = append(c.msg, payload...), true
	}
	_ = in.Release()
	if err == nil && c.sess.Dead() {
		err = errWSDone
	}
	return err
}

// message hands one whole WebSocket message, which must be one frame of
// the protocol, to the session.
func (c *wsConn) message(m []byte) error {
	if len(m) < wire.HeaderLen {
		return c.fatal(WSCloseErrorBase+uint32(pb.Code_BAD_FRAME), fmt.Errorf("websocket: a message of %d bytes holds no frame header", len(m)))
	}
	n, ft, err := wire.ParseHeader(m[:wire.HeaderLen], c.s.sessions.MaxFrame())
	if errors.Is(err, wire.ErrTooLarge) {
		return c.fatal(wsCloseTooBig, err)
	}
	if err != nil {
		return c.fatal(WSCloseErrorBase+uint32(pb.Code_BAD_FRAME), err)
	}
	if 4+n != len(m) {
		return c.fatal(WSCloseErrorBase+uint32(pb.Code_BAD_FRAME),
			fmt.Errorf("websocket: the frame's length says %d bytes, the message holds %d: one frame per message", 4+n, len(m)))
	}
	c.sess.HandleFrame(ft, m[wire.HeaderLen:])
	return nil
}

// control answers a control frame: a ping with its pong, a close with
// its echo (then the connection closes). Pings and pongs count as
// activity against the idle timeout.
func (c *wsConn) control(op ws.OpCode, payload []byte) error {
	switch op {
	case ws.OpPing:
		c.sess.Touch()
		c.wmu.Lock()
		err := c.writeControlLocked(ws.OpPong, payload)
		c.wmu.Unlock()
		return err
	case ws.OpPong:
		c.sess.Touch()
		return nil
	case ws.OpClose:
		c.wmu.Lock()
		if c.closeSent.CompareAndSwap(false, true) {
			echo := payload[:0]
			if len(payload) >= 2 {
				echo = payload[:2]
			}
			_ = c.writeControlLocked(ws.OpClose, echo)
		}
		c.wmu.Unlock()
		return errWSClose
	}
	return c.fatal(wsCloseProtocol, fmt.Errorf("websocket: unknown control opcode %d", op))
}

// originAllowed applies the origin policy (Config.WSOrigins): no Origin
// (not a browser) passes, and so does an Origin whose host is the
// request's Host (same origin) or one on the list ("*": any).
func (s *Server) originAllowed(origin, host string) bool {
	if origin == "" {
		return true
	}
	for _, o := range s.wsOrigins {
		if o == "*" || strings.EqualFold(strings.TrimSuffix(o, "/"), origin) {
			return true
		}
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, host)
}

// wsPath reports whether a request's URI is the gateway's: /ws (or / on
// the --ws listener), with any query.
func wsPath(uri string) bool {
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		uri = uri[:i]
	}
	return uri == "/ws" || uri == "/"
}

// ServeWS serves the WebSocket gateway on ln (converted to a netpoll
// listener) on an event loop of its own, until Shutdown: the same
// sessions, limits and pre-authentication bound as the TCP port. With
// tlsCfg, it is wss://: crypto/tls on the event loop as in ServeTLS
// (tls.go), the upgrade and the WebSocket frames inside it.
func (s *Server) ServeWS(ln net.Listener, tlsCfg *tls.Config) error {
	nl, err := netpoll.ConvertListener(ln)
	if err != nil {
		ln.Close()
		return fmt.Errorf("socket: WebSocket listener: %w", err)
	}
	onRequest, onPrepare := s.onWSRequest, s.onWSPrepare
	if tlsCfg != nil {
		onRequest = s.onWSTLSRequest
		onPrepare = func(nc netpoll.Connection) context.Context { return s.onWSTLSPrepare(nc, tlsCfg) }
	}
	loop, err := netpoll.NewEventLoop(onRequest,
		netpoll.WithOnPrepare(onPrepare),
		netpoll.WithReadTimeout(s.sessions.IdleTimeout()),
		netpoll.WithWriteTimeout(s.writeTimeout),
	)
	if err != nil {
		nl.Close()
		return fmt.Errorf("socket: WebSocket event loop: %w", err)
	}
	return s.serveLoop(loop, nl)
}

func (s *Server) onWSPrepare(nc netpoll.Connection) context.Context {
	src := sourceOf(nc.RemoteAddr())
	if !s.admitPreAuth(src) {
		s.preRefused.Inc()
		_ = nc.Close()
		return context.Background()
	}
	raw := &pollRaw{nc: nc}
	c := &wsConn{s: s, src: src, raw: raw, counted: true}
	s.openWS(nc, c, func() {
		raw.mu.Lock()
		raw.closed = true
		raw.mu.Unlock()
	})
	return context.WithValue(context.Background(), connKey{}, c)
}

// openWS opens c's session on nc, for ws:// and wss:// alike. nc's close
// callback first runs markClosed (the raw side stops writing), then ends
// the session. As on the plain port (conn.go), the callback is added
// before the session is registered, and it runs before netpoll releases
// the buffers. The upgrade is part of the handshake: the session's
// handshake timeout bounds it.
func (s *Server) openWS(nc netpoll.Connection, c *wsConn, markClosed func()) {
	_ = nc.AddCloseCallback(func(netpoll.Connection) error {
		markClosed()
		c.mu.Lock() // c.sess is set under it
		sess := c.sess
		c.mu.Unlock()
		c.Authenticated()
		sess.Closed()
		s.wsOpen.Add(-1)
		return nil
	})
	c.mu.Lock()
	c.sess = s.sessions.Open(c)
	s.wsOpen.Add(1)
	c.mu.Unlock()
	c.sess.Begin()
}

// onWSRequest completes the upgrade, then reads every WebSocket frame
// that has arrived; it blocks only inside a frame (bounded by the read
// timeout) or inside the upgrade request (by the handshake timeout).
func (s *Server) onWSRequest(ctx context.Context, nc netpoll.Connection) error {
	c, _ := ctx.Value(connKey{}).(*wsConn)
	if c == nil {
		return nc.Close()
	}
	r := nc.Reader()
	if !c.upgraded.Load() {
		if err := c.upgrade(r); err != nil {
			return nc.Close()
		}
	}
	for r.Len() > 0 {
		if c.sess.Dead() {
			_ = r.Skip(r.Len())
			return r.Release()
		}
		switch err := c.readFrame(r); {
		case err == nil:
		case errors.Is(err, errWSDone):
			_ = r.Skip(r.Len())
			return r.Release()
		default:
			return nc.Close()
		}
	}
	return nil
}

// upgradeInput is where the upgrade request is read from: netpoll's
// Reader, or connInput over TLS.
type upgradeInput interface {
	wsInput
	Len() int
}

// upgrade reads the HTTP upgrade request (no more: a client sends
// nothing else before the 101) and answers it.
func (c *wsConn) upgrade(r upgradeInput) error {
	n := 0
	for {
		b, err := r.Peek(r.Len())
		if err != nil {
			return err
		}
		if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
			n = i + 4
			break
		}
		if len(b) >= maxUpgradeRequest {
			c.wmu.Lock()
			_ = c.writeRawLocked([]byte("HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
			c.wmu.Unlock()
			return errors.New("socket: websocket: upgrade request too large")
		}
		if _, err := r.Peek(len(b) + 1); err != nil { // wait for more
			return err
		}
	}
	req, err := r.Next(n)
	if err != nil {
		return err
	}
	var resp bytes.Buffer
	var origin, host string
	u := ws.Upgrader{
		Protocol: func(p []byte) bool { return string(p) == Subprotocol },
		OnRequest: func(uri []byte) error {
			if !wsPath(string(uri)) {
				return ws.RejectConnectionError(ws.RejectionStatus(404), ws.RejectionReason("the WebSocket endpoint is /ws"))
			}
			return nil
		},
		OnHost: func(h []byte) error { host = string(h); return nil },
		OnHeader: func(k, v []byte) error {
			if bytes.EqualFold(k, []byte("Origin")) {
				origin = string(v)
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			if !c.s.originAllowed(origin, host) {
				c.s.wsRefusedOrigin.Inc()
				return nil, ws.RejectConnectionError(ws.RejectionStatus(403), ws.RejectionReason("origin not allowed"))
			}
			return nil, nil
		},
	}
	_, uerr := u.Upgrade(struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(req), &resp})
	_ = r.Release()
	c.wmu.Lock()
	err = c.writeRawLocked(resp.Bytes())
	if uerr == nil && err == nil {
		c.upgraded.Store(true)
	}
	c.wmu.Unlock()
	if uerr != nil {
		return uerr
	}
	return err
}

// writeRawLocked writes b as it is (the upgrade's answer).
func (c *wsConn) writeRawLocked(b []byte) error {
	return c.raw.write(len(b), func(dst []byte) { copy(dst, b) })
}

// pollRaw writes to a netpoll connection; its buffers are released when
// the connection closes, so writes copy into them only under mu while
// closed is false (as conn.Write does).
type pollRaw struct {
	nc     netpoll.Connection
	mu     sync.Mutex
	closed bool // guarded by mu
}

func (p *pollRaw) write(total int, fill func([]byte)) error {
	w := p.nc.Writer()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errClosed
	}
	buf, err := w.Malloc(total)
	if err == nil {
		fill(buf)
	}
	p.mu.Unlock()
	if err != nil {
		return err
	}
	return w.Flush()
}

func (p *pollRaw) close() error { return p.nc.Close() }
