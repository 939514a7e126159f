package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// rawConn is an authenticated connection speaking hand-written frames
// (no client library), with any number of submits in flight, each matched
// to its answer by its ref. One goroutine runs readLoop; any may write
// and submit.
type rawConn struct {
	nc      net.Conn
	welcome *pb.Welcome
	wmu     sync.Mutex // serializes writes

	mu      sync.Mutex
	pending map[uint64]chan submitAnswer // guarded by mu
	ended   error                        // guarded by mu: why readLoop ended; then submits fail
}

// submitAnswer is the server's answer to a submit: its message id, or the
// ERROR it sent; at is when it was read.
type submitAnswer struct {
	id  string
	at  time.Time
	err error
}

// errConnEnded is returned for a submit whose connection ended first.
var errConnEnded = errors.New("bench: connection ended before the answer")

// errBadFrame is returned by readFrame for a frame that does not parse or
// decode.
var errBadFrame = errors.New("bench: bad frame")

// readFrame reads one frame of at most max bytes from r and decodes it in
// full. An error reading r (the connection closed, its deadline passed)
// is returned as it is; a frame that does not parse or decode gives an
// error wrapping errBadFrame.
func readFrame(r io.Reader, max int) (proto.Message, error) {
	var hdr [wire.HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	size, ft, err := wire.ParseHeader(hdr[:], max)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBadFrame, err)
	}
	payload := make([]byte, size-1)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, err
	}
	msg, err := wire.Decode(ft, payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBadFrame, err)
	}
	return msg, nil
}

// dialRaw opens an authenticated raw connection for device of user.
func dialRaw(srv *Server, user, device string) (*rawConn, error) {
	addr := srv.Sock
	if srv.TLS != nil {
		addr = srv.TLSSock
	}
	nc, w, err := handshakeTLS(addr, srv.TLS, srv.Token(user, device), device)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", user, err)
	}
	return &rawConn{nc: nc, welcome: w, pending: make(map[uint64]chan submitAnswer)}, nil
}

func (c *rawConn) write(frame []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(frame)
	return err
}

// submit writes s, whose Ref the caller chose unique on c, and returns
// where its answer will arrive (once).
func (c *rawConn) submit(s *pb.Submit) (<-chan submitAnswer, error) {
	ch := make(chan submitAnswer, 1)
	c.mu.Lock()
	if c.ended != nil {
		c.mu.Unlock()
		return nil, c.ended
	}
	c.pending[s.Ref] = ch
	c.mu.Unlock()
	if err := c.write(wire.Encode(pb.FrameType_SUBMIT, s)); err != nil {
		c.take(s.Ref)
		return nil, err
	}
	return ch, nil
}

// send submits s and waits for its answer, or for ctx.
func (c *rawConn) send(ctx context.Context, s *pb.Submit) (submitAnswer, error) {
	ch, err := c.submit(s)
	if err != nil {
		return submitAnswer{}, err
	}
	select {
	case a := <-ch:
		return a, a.err
	case <-ctx.Done():
		c.take(s.Ref)
		return submitAnswer{}, fmt.Errorf("submit %d: %w", s.Ref, ctx.Err())
	}
}

// take removes ref's submit from those waiting for an answer and returns
// where its answer goes; nil if it is not waiting.
func (c *rawConn) take(ref uint64) chan submitAnswer {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := c.pending[ref]
	delete(c.pending, ref)
	return ch
}

// readLoop reads frames until the connection is closed or its read
// deadline passes (which is how a run ends it; it then returns nil):
// SUBMIT_ACKs and ERRORs with a ref answer their submits, every other
// frame goes to onFrame, fully decoded, with the time it was read. A frame
// that does not decode, or an error from onFrame, ends it with that error.
// Submits still unanswered then fail.
func (c *rawConn) readLoop(onFrame func(msg proto.Message, at time.Time) error) (err error) {
	defer func() {
		c.mu.Lock()
		c.ended = errConnEnded
		pending := c.pending
		c.pending = nil
		c.mu.Unlock()
		for _, ch := range pending {
			ch <- submitAnswer{err: errConnEnded}
		}
	}()
	r := bufio.NewReaderSize(c.nc, 64<<10)
	for {
		msg, err := readFrame(r, 1<<24)
		if errors.Is(err, errBadFrame) {
			return err
		}
		if err != nil {
			return nil
		}
		at := time.Now()
		switch m := msg.(type) {
		case *pb.SubmitAck:
			if ch := c.take(m.Ref); ch != nil {
				ch <- submitAnswer{id: m.Id, at: at}
			}
			continue
		case *pb.Error:
			if m.Ref != 0 {
				if ch := c.take(m.Ref); ch != nil {
					ch <- submitAnswer{at: at, err: fmt.Errorf("server error %v: %s", m.Code, m.Detail)}
				}
				continue
			}
			if m.Fatal {
				return fmt.Errorf("server error %v: %s", m.Code, m.Detail)
			}
		}
		if onFrame != nil {
			if err := onFrame(msg, at); err != nil {
				return err
			}
		}
	}
}
