package socket

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// Redirector answers the socket protocol on a node that does not serve
// clients now (in cluster mode, a standby): every HELLO gets a fatal
// NOT_OWNER error naming the address of the node that does (PROTOCOL.md
// §4, "Cluster mode"), or an empty one while no node does (a takeover in
// progress), and the connection is closed. It reads nothing but the
// HELLO, holds a connection at most HandshakeTimeout, and at most
// MaxConns at a time (more are closed at once), so a flood of
// connections costs it a bounded number of files.
type Redirector struct {
	// Route names the address (host:port) that serves the user of hello,
	// or "" when none does now.
	Route func(ctx context.Context, hello *pb.Hello) string
	// HandshakeTimeout bounds one connection; zero means 5s. MaxConns
	// bounds the connections held at once; zero means 1024.
	HandshakeTimeout time.Duration
	MaxConns         int

	ln   net.Listener
	wg   sync.WaitGroup
	stop context.CancelFunc

	mu    sync.Mutex
	conns map[net.Conn]struct{} // being answered; closed by Close
}

// maxHelloFrame bounds the one frame a Redirector reads: a HELLO is a
// token and a device name.
const maxHelloFrame = 16 << 10

// Serve answers connections on ln until Close.
func (r *Redirector) Serve(ln net.Listener) {
	if r.HandshakeTimeout == 0 {
		r.HandshakeTimeout = 5 * time.Second
	}
	if r.MaxConns == 0 {
		r.MaxConns = 1024
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.ln, r.stop = ln, cancel
	r.conns = map[net.Conn]struct{}{}
	slots := make(chan struct{}, r.MaxConns)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			select {
			case slots <- struct{}{}:
			default:
				nc.Close()
				continue
			}
			r.mu.Lock()
			r.conns[nc] = struct{}{}
			r.mu.Unlock()
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer func() { <-slots }()
				r.answer(ctx, nc)
				r.mu.Lock()
				delete(r.conns, nc)
				r.mu.Unlock()
			}()
		}
	}()
}

func (r *Redirector) answer(ctx context.Context, nc net.Conn) {
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(r.HandshakeTimeout))
	fail := func(code pb.Code, detail, redirect string) {
		_, _ = nc.Write(wire.Encode(pb.FrameType_ERROR, &pb.Error{Code: code, Detail: detail, Fatal: true, Redirect: redirect}))
	}
	var hdr [wire.HeaderLen]byte
	if _, err := io.ReadFull(nc, hdr[:]); err != nil {
		return
	}
	n, ft, err := wire.ParseHeader(hdr[:], maxHelloFrame)
	switch {
	case errors.Is(err, wire.ErrTooLarge):
		fail(pb.Code_FRAME_TOO_LARGE, "frame too large", "")
		return
	case err != nil:
		fail(pb.Code_BAD_FRAME, "bad frame header", "")
		return
	}
	payload := make([]byte, n-1) // read whole: closing on unread input would reset the connection under the answer
	if _, err := io.ReadFull(nc, payload); err != nil {
		return
	}
	if ft != pb.FrameType_HELLO {
		fail(pb.Code_HANDSHAKE_REQUIRED, "send HELLO first", "")
		return
	}
	m, err := wire.Decode(ft, payload)
	if err != nil {
		fail(pb.Code_BAD_FRAME, "HELLO does not decode", "")
		return
	}
	hello := m.(*pb.Hello)
	if hello.Version != wire.Version {
		fail(pb.Code_BAD_VERSION, "unsupported protocol version", "")
		return
	}
	if to := r.Route(ctx, hello); to != "" {
		fail(pb.Code_NOT_OWNER, "this node does not serve you now: connect to "+to, to)
		return
	}
	fail(pb.Code_NOT_OWNER, "no node serves you at this moment (a takeover in progress): retry shortly", "")
}

// Close stops accepting, closes the listener and waits for the
// connections being answered.
func (r *Redirector) Close() error {
	if r.ln == nil {
		return nil
	}
	r.stop()
	err := r.ln.Close()
	// Connections still being answered (a client that sent nothing yet)
	// must not hold the port for their handshake timeout: the member
	// closing this is about to serve on it.
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return err
}
