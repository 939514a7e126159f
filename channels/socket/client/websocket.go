package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// WebSocket connects to dingd's WebSocket gateway (dingd --ws, or /ws on
// the HTTP port) instead of its TCP port: set Config.Dial to its Dial
// method and leave Config.TLS nil (TLS, if any, is this dialer's own:
// wss). The protocol above is unchanged: each frame travels as one
// binary WebSocket message.
//
//	c, err := client.Dial(ctx, client.Config{Addr: "chat.example.com:7443", Token: tok, Device: "web",
//		Dial: (&client.WebSocket{}).Dial})
type WebSocket struct {
	// Path is the endpoint's path; empty means /ws.
	Path string
	// Origin, when set, is sent as the Origin header (as a browser
	// would); empty sends none, which the gateway accepts.
	Origin string
	// TLS, when set, connects with wss:// and this configuration.
	TLS *tls.Config
}

// Dial implements Config.Dial: addr is host:port.
func (w *WebSocket) Dial(ctx context.Context, _, addr string) (net.Conn, error) {
	scheme, path := "ws", w.Path
	if w.TLS != nil {
		scheme = "wss"
	}
	if path == "" {
		path = "/ws"
	}
	d := ws.Dialer{TLSConfig: w.TLS, Protocols: []string{"ding.v1"}}
	if w.Origin != "" {
		d.Header = ws.HandshakeHeaderHTTP(http.Header{"Origin": {w.Origin}})
	}
	nc, br, _, err := d.Dial(ctx, scheme+"://"+addr+path)
	if err != nil {
		return nil, fmt.Errorf("websocket: %w", err)
	}
	var src io.Reader = nc
	if br != nil { // the server's first bytes, read with its answer
		src = io.MultiReader(br, nc)
	}
	c := &wsStream{Conn: nc}
	// Buffered: a frame header is read a few bytes at a time.
	c.rd = &wsutil.Reader{Source: bufio.NewReaderSize(src, 16<<10), State: ws.StateClientSide}
	return c, nil
}

// wsStream is a WebSocket connection as the byte stream of frames the
// client reads and writes: Write cuts the stream into frames, one binary
// message each; Read returns the messages' bytes in order and answers
// pings. A close from the server ends Read with a *WebSocketCloseError.
type wsStream struct {
	net.Conn

	rmu  sync.Mutex // one reader at a time
	rd   *wsutil.Reader
	left bool // a data message is being read

	wmu     sync.Mutex // guards pending, wbuf and writes
	pending []byte     // the start of a frame not yet whole
	wbuf    []byte     // the messages of one Write, reused
}

// WebSocketCloseError is the server's close frame: Code is 4000 plus the
// pb.Code of the fatal error sent before it, or a WebSocket code (1003
// text message, 1009 too large, 1002 protocol error).
type WebSocketCloseError struct {
	Code   int
	Reason string
}

func (e *WebSocketCloseError) Error() string {
	return fmt.Sprintf("websocket: closed by the server: %d %s", e.Code, e.Reason)
}

func (c *wsStream) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.left {
			n, err := c.rd.Read(p)
			if errors.Is(err, io.EOF) {
				c.left = false
				if n > 0 {
					return n, nil
				}
				continue
			}
			return n, err
		}
		h, err := c.rd.NextFrame()
		if err != nil {
			return 0, err
		}
		switch {
		case h.OpCode == ws.OpBinary || h.OpCode == ws.OpContinuation:
			c.left = true
		case h.OpCode == ws.OpPing:
			payload, err := io.ReadAll(c.rd)
			if err != nil {
				return 0, err
			}
			c.wmu.Lock()
			err = wsutil.WriteClientMessage(c.Conn, ws.OpPong, payload)
			c.wmu.Unlock()
			if err != nil {
				return 0, err
			}
		case h.OpCode == ws.OpClose:
			payload, _ := io.ReadAll(c.rd)
			e := &WebSocketCloseError{Code: 1005}
			if len(payload) >= 2 {
				e.Code, e.Reason = int(binary.BigEndian.Uint16(payload)), string(payload[2:])
			}
			return 0, e
		default: // pong, text (not sent by the server)
			if err := c.rd.Discard(); err != nil {
				return 0, err
			}
		}
	}
}

// Write sends every whole frame of pending+p as one masked binary
// message each, all of them in one write.
func (c *wsStream) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	data := p
	if len(c.pending) > 0 {
		c.pending = append(c.pending, p...)
		data = c.pending
	}
	out := c.wbuf[:0]
	for len(data) >= 4 {
		n := 4 + int(binary.BigEndian.Uint32(data))
		if len(data) < n {
			break
		}
		out = appendClientMessage(out, data[:n])
		data = data[n:]
	}
	c.pending = append(c.pending[:0], data...)
	if cap(out) <= 1<<20 {
		c.wbuf = out[:0]
	}
	if len(out) > 0 {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// appendClientMessage appends f as one final, masked binary frame.
func appendClientMessage(dst, f []byte) []byte {
	n := len(f)
	switch {
	case n < 126:
		dst = append(dst, 0x82, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x82, 0x80|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x82, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	var mask [4]byte
	binary.BigEndian.PutUint32(mask[:], rand.Uint32())
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, f...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
}

func (c *wsStream) Close() error {
	c.wmu.Lock()
	_ = wsutil.WriteClientMessage(c.Conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
	c.wmu.Unlock()
	return c.Conn.Close()
}
