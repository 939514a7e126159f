package bench

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// A raw device for the announce scenario: a socket speaking hand-written
// frames (no client library), so that 18,000 of them stay light in one
// load-generator process.

// annDevice is one online device: a raw connection speaking hand-written
// frames, to keep the load generator light.
type annDevice struct {
	user string
	conn net.Conn
	last atomic.Uint64 // highest seq received
}

// arrivals records, per device, when the first announcement DELIVER of a
// phase arrived. at[i] and ids[i] are written once, by device i's reader,
// before it counts in got; they are read once done is closed (or the
// readers have ended).
type arrivals struct {
	at   []int64 // Unix ns; 0 means none arrived
	ids  []string
	got  atomic.Int64
	want int64
	done chan struct{} // closed when got reaches want
}

func newArrivals(n int) *arrivals {
	return &arrivals{at: make([]int64, n), ids: make([]string, n), want: int64(n), done: make(chan struct{})}
}

func (a *arrivals) record(i int, id string, now int64) {
	if a.at[i] != 0 {
		return
	}
	a.at[i], a.ids[i] = now, id
	if a.got.Add(1) == a.want {
		close(a.done)
	}
}

// wait returns true when every device has its announcement, false after
// timeout.
func (a *arrivals) wait(timeout time.Duration) bool {
	select {
	case <-a.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// figures returns the delivery latencies measured from from (Unix ns),
// the last arrival, and how many arrived.
func (a *arrivals) figures(from int64) (lats Latencies, last int64, n int) {
	for _, t := range a.at {
		if t == 0 {
			continue
		}
		lats = append(lats, time.Duration(t-from))
		last = max(last, t)
		n++
	}
	return lats, last, n
}

// pair is the 1:1 traffic of phase B: a sender with one submit in flight
// to a receiver, both online. Samples are (submitted, delivered) Unix ns.
type pair struct {
	acks    chan error // the sender's reader hands SUBMIT_ACKs (or ERRORs) over
	mu      sync.Mutex
	samples [][2]int64 // guarded by mu
}

func (p *pair) deliver(body []byte, now int64) {
	if len(body) < 8 {
		return
	}
	p.mu.Lock()
	p.samples = append(p.samples, [2]int64{int64(binary.BigEndian.Uint64(body)), now})
	p.mu.Unlock()
}

// window returns the latencies of messages submitted in [from, to).
func (p *pair) window(from, to int64) Latencies {
	p.mu.Lock()
	defer p.mu.Unlock()
	var l Latencies
	for _, s := range p.samples {
		if s[0] >= from && s[0] < to {
			l = append(l, time.Duration(s[1]-s[0]))
		}
	}
	return l
}

// readLoop reads device i's frames until the connection ends, decoding
// each, recording the k-th DELIVER of kind that arrives in rounds[k] and
// 1:1 traffic (TEXT) in p (nil unless this device is part of the pair).
// A fatal ERROR (SHUTTING_DOWN when dingd stops) ends it quietly; the
// caller checks what arrived.
func (d *annDevice) readLoop(i int, kind pb.Kind, rounds []*arrivals, p *pair) error {
	r := bufio.NewReaderSize(d.conn, 4096)
	k := 0
	for {
		msg, err := readFrame(r, 1<<24)
		if errors.Is(err, errBadFrame) {
			return fmt.Errorf("device %s: %w", d.user, err)
		}
		if err != nil {
			return nil // closed: the phase is over
		}
		now := time.Now().UnixNano() // decoded
		switch m := msg.(type) {
		case *pb.Deliver:
			d.last.Store(m.Seq)
			switch {
			case m.Kind == pb.Kind_TEXT && p != nil:
				p.deliver(m.Body, now)
			case m.Kind == kind:
				if k < len(rounds) {
					rounds[k].record(i, m.Id, now)
				}
				k++
			}
		case *pb.Receipt:
			d.last.Store(m.Seq)
		case *pb.DingEvent:
			d.last.Store(m.Seq)
		case *pb.SubmitAck:
			if p != nil {
				p.acks <- nil
			}
		case *pb.Error:
			if m.Fatal {
				return nil
			}
			if p != nil {
				p.acks <- fmt.Errorf("device %s: server error %v: %s", d.user, m.Code, m.Detail)
			}
		}
	}
}

// dialDevice opens an authenticated raw connection for device "d" of
// d.user, resuming after cursor (none when cursor is 0; skipNone makes the
// server clamp it to the stream's head), and checks that nothing is
// waiting for catch-up.
func dialDevice(srv *Server, d *annDevice, cursor uint64) (net.Conn, error) {
	return dialDeviceAt(srv.Sock, srv, d, cursor)
}

// dialDeviceAt is dialDevice at the socket address addr (another node of
// srv's cluster); a HELLO refused is a *refusedHello, its connection
// closed.
func dialDeviceAt(addr string, srv *Server, d *annDevice, cursor uint64) (net.Conn, error) {
	user := d.user
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	h := &pb.Hello{Version: wire.Version, Token: srv.Token(user, "d"), Device: "d"}
	if cursor > 0 {
		h.Cursor = &cursor
	}
	w, err := hello(c, h)
	if err != nil {
		c.Close()
		return nil, err
	}
	if w.ResumeFrom <= w.Head {
		c.Close()
		return nil, fmt.Errorf("user %s: %d entries to catch up; want none", user, w.Head-w.ResumeFrom+1)
	}
	d.last.Store(max(d.last.Load(), w.ResumeFrom-1))
	return c, nil
}

// skipNone is a HELLO cursor above any stream's head: the server clamps it
// to the head, so the device starts with what comes next (PROTOCOL.md §4).
const skipNone = 1 << 62

// connectAll dials every device (a few dozen handshakes at a time).
func connectAll(devs []*annDevice, dial func(d *annDevice) (net.Conn, error)) error {
	var wg sync.WaitGroup
	var firstErr atomic.Value
	sem := make(chan struct{}, 32*runtime.NumCPU())
	for _, d := range devs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dial(d)
			if err != nil {
				firstErr.CompareAndSwap(nil, fmt.Errorf("connect %s: %w", d.user, err))
				return
			}
			d.conn = c
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return nil
}

func closeAll(devs []*annDevice) {
	for _, d := range devs {
		if d.conn != nil {
			d.conn.Close()
		}
	}
}

// readers runs a readLoop per device; wait returns the first error once
// they have all ended (the connections were closed).
type readers struct {
	kind     pb.Kind // the DELIVERs counted in rounds; zero means announcements
	wg       sync.WaitGroup
	firstErr atomic.Value
}

func (rs *readers) start(d *annDevice, i int, p *pair, rounds ...*arrivals) {
	rs.wg.Add(1)
	go func() {
		defer rs.wg.Done()
		kind := rs.kind
		if kind == pb.Kind_KIND_UNSPECIFIED {
			kind = pb.Kind_ANNOUNCEMENT
		}
		if err := d.readLoop(i, kind, rounds, p); err != nil {
			rs.firstErr.CompareAndSwap(nil, err)
		}
	}()
}

func (rs *readers) wait() error {
	rs.wg.Wait()
	if err, _ := rs.firstErr.Load().(error); err != nil {
		return err
	}
	return nil
}
