package socket_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/channels/socket"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/fakeclock"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, nodetest.GoleakOptions...) }

// raw is a hand-driven protocol connection.
type raw struct {
	t  *testing.T
	nc net.Conn
}

func dialRaw(t *testing.T, n *node.Node) *raw {
	t.Helper()
	nc, err := net.Dial("tcp", n.SocketAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &raw{t, nc}
}

func (r *raw) write(b []byte) {
	r.t.Helper()
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *raw) send(ft pb.FrameType, m proto.Message) { r.t.Helper(); r.write(wire.Encode(ft, m)) }

// read returns the next frame, or an error (io.EOF when the server closed).
func (r *raw) read() (proto.Message, error) {
	r.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [wire.HeaderLen]byte
	if _, err := io.ReadFull(r.nc, hdr[:]); err != nil {
		return nil, err
	}
	n, ft, err := wire.ParseHeader(hdr[:], 1<<24)
	if err != nil {
		return nil, err
	}
	p := make([]byte, n-1)
	if _, err := io.ReadFull(r.nc, p); err != nil {
		return nil, err
	}
	return wire.Decode(ft, p)
}

func (r *raw) expect(want proto.Message) proto.Message {
	r.t.Helper()
	for {
		m, err := r.read()
		if err != nil {
			r.t.Fatalf("waiting for %T: %v", want, err)
		}
		if proto.MessageName(m) == proto.MessageName(want) {
			return m
		}
	}
}

// expectFatal reads until an ERROR with code arrives, then expects EOF.
func (r *raw) expectFatal(code pb.Code) {
	r.t.Helper()
	e := r.expect(&pb.Error{}).(*pb.Error)
	if e.Code != code || !e.Fatal {
		r.t.Fatalf("error %v (fatal %v) %q, want fatal %v", e.Code, e.Fatal, e.Detail, code)
	}
	if _, err := r.read(); !errors.Is(err, io.EOF) && !isReset(err) {
		r.t.Fatalf("after fatal error: %v, want the connection closed", err)
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset") }

func (r *raw) hello(tok, device string) *pb.Welcome {
	r.t.Helper()
	r.send(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: tok, Device: device})
	return r.expect(&pb.Welcome{}).(*pb.Welcome)
}

func start(t *testing.T, sc socket.Config) *node.Node {
	n := nodetest.Start(t, node.Config{Socket: sc, MaxBody: 1024})
	nodetest.AddUsers(t, n, "ana", "bo", "cy")
	return n
}

// startClocked is start with the default socket config and a fake clock.
func startClocked(t *testing.T) (*node.Node, *fakeclock.Clock) {
	clock := fakeclock.New(time.Date(2030, 1, 7, 10, 0, 0, 0, time.UTC))
	n := nodetest.Start(t, node.Config{Clock: clock, MaxBody: 1024})
	nodetest.AddUsers(t, n, "ana", "bo", "cy")
	return n, clock
}

func TestBadInputGetsPreciseErrors(t *testing.T) {
	n := start(t, socket.Config{})
	expired := func() string {
		k, _ := auth.LoadOrCreate(n.DataDir())
		tok, _ := k.MintClient("bo", "phone", time.Nanosecond)
		time.Sleep(2 * time.Millisecond) // let the token expire: a real clock is the point here
		return tok
	}()
	admin := n.AdminToken()
	good := nodetest.Token(t, n, "bo", "phone")
	hdr := func(length uint32, ft byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, length)
		return append(b, ft)
	}

	// A bystander keeps sending and receiving through all of it.
	ana := nodetest.Dial(t, n, "ana", "web", nil)
	cy := nodetest.Dial(t, n, "cy", "phone", nil)

	cases := []struct {
		name string
		do   func(r *raw)
		code pb.Code
	}{
		{"frame before hello", func(r *raw) { r.send(pb.FrameType_PING, &pb.Ping{}) }, pb.Code_HANDSHAKE_REQUIRED},
		{"garbage token", func(r *raw) { r.send(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: "x.y.z", Device: "phone"}) }, pb.Code_BAD_TOKEN},
		{"admin token as client", func(r *raw) { r.send(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: admin, Device: "phone"}) }, pb.Code_BAD_TOKEN},
		{"expired token", func(r *raw) { r.send(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: expired, Device: "phone"}) }, pb.Code_TOKEN_EXPIRED},
		{"device mismatch", func(r *raw) { r.send(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: good, Device: "laptop"}) }, pb.Code_DEVICE_MISMATCH},
		{"bad version", func(r *raw) { r.send(pb.FrameType_HELLO, &pb.Hello{Version: 9, Token: good, Device: "phone"}) }, pb.Code_BAD_VERSION},
		{"oversized frame", func(r *raw) { r.write(hdr(1<<30, byte(pb.FrameType_SUBMIT))) }, pb.Code_FRAME_TOO_LARGE},
		{"empty frame", func(r *raw) { r.write(hdr(0, 0)) }, pb.Code_BAD_FRAME},
		{"malformed payload", func(r *raw) { r.write(append(hdr(4, byte(pb.FrameType_HELLO)), 0xff, 0xff, 0xff)) }, pb.Code_BAD_FRAME},
		{"unknown frame type", func(r *raw) { r.write(hdr(1, 99)) }, pb.Code_UNKNOWN_FRAME},
		{"server frame from client", func(r *raw) {
			r.hello(good, "phone")
			r.send(pb.FrameType_DELIVER, &pb.Deliver{Seq: 1})
		}, pb.Code_UNKNOWN_FRAME},
		{"second hello", func(r *raw) {
			r.hello(good, "phone")
			r.send(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: good, Device: "phone"})
		}, pb.Code_BAD_FRAME},
		{"ack beyond head", func(r *raw) {
			r.hello(good, "phone")
			r.send(pb.FrameType_ACK, &pb.Ack{Seq: 1 << 40})
		}, pb.Code_BAD_ACK},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := dialRaw(t, n)
			r.t = t
			c.do(r)
			r.expectFatal(c.code)
			// Other clients are untouched.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res, err := ana.Send(ctx, []string{"cy"}, []byte{'a', byte(i)})
			if err != nil {
				t.Fatalf("bystander send: %v", err)
			}
			select {
			case e := <-cy.Entries():
				if e.Message == nil || e.Message.ID != res.ID {
					t.Fatalf("bystander got %+v", e)
				}
			case <-ctx.Done():
				t.Fatal("bystander did not receive")
			}
		})
	}
}

func TestTruncatedFrameThenClose(t *testing.T) {
	n := start(t, socket.Config{})
	r := dialRaw(t, n)
	frame := wire.Encode(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone"})
	r.write(frame[:len(frame)/2])
	r.nc.Close()
	nodetest.WaitFor(t, "connection gone", 5*time.Second, func() bool { return n.Socket().Connections() == 0 })
	if n.Hub().Online("bo") {
		t.Fatal("half a HELLO attached a device")
	}
}

func TestNonFatalErrorsKeepTheConnection(t *testing.T) {
	n := start(t, socket.Config{MaxInflight: 1})
	r := dialRaw(t, n)
	r.hello(nodetest.Token(t, n, "bo", "phone"), "phone")
	cases := []struct {
		name string
		send proto.Message
		ft   pb.FrameType
		code pb.Code
	}{
		{"body over max_body", &pb.Submit{Ref: 1, To: []string{"ana"}, Kind: pb.Kind_TEXT, Body: make([]byte, 1025)}, pb.FrameType_SUBMIT, pb.Code_MESSAGE_TOO_LARGE},
		{"unknown recipient", &pb.Submit{Ref: 2, To: []string{"zed"}, Kind: pb.Kind_TEXT}, pb.FrameType_SUBMIT, pb.Code_UNKNOWN_RECIPIENT},
		{"no recipients", &pb.Submit{Ref: 3, Kind: pb.Kind_TEXT}, pb.FrameType_SUBMIT, pb.Code_BAD_REQUEST},
		{"bad kind", &pb.Submit{Ref: 4, To: []string{"ana"}, Kind: 77}, pb.FrameType_SUBMIT, pb.Code_BAD_REQUEST},
		{"kind past a byte", &pb.Submit{Ref: 4, To: []string{"ana"}, Kind: 257}, pb.FrameType_SUBMIT, pb.Code_BAD_REQUEST},
		{"read malformed id", &pb.Read{Ref: 5, Ids: []string{"nope"}}, pb.FrameType_READ, pb.Code_BAD_REQUEST},
		{"read someone else's message", &pb.Read{Ref: 6, Ids: []string{"01M8K8F2K5C97AM15Z94XS9NY4"}}, pb.FrameType_READ, pb.Code_NOT_RECIPIENT},
		{"receipts of unknown message", &pb.ReceiptsQuery{Ref: 7, Id: "01M8K8F2K5C97AM15Z94XS9NY4"}, pb.FrameType_RECEIPTS_QUERY, pb.Code_NOT_FOUND},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r.send(c.ft, c.send)
			e := r.expect(&pb.Error{}).(*pb.Error)
			if e.Code != c.code || e.Fatal {
				t.Fatalf("got %v fatal=%v %q, want non-fatal %v", e.Code, e.Fatal, e.Detail, c.code)
			}
		})
	}
	// The connection still works.
	r.send(pb.FrameType_PING, &pb.Ping{Nonce: 42})
	if p := r.expect(&pb.Pong{}).(*pb.Pong); p.Nonce != 42 {
		t.Fatalf("pong %d", p.Nonce)
	}
	r.send(pb.FrameType_SUBMIT, &pb.Submit{Ref: 9, To: []string{"ana"}, Kind: pb.Kind_TEXT, Body: []byte("ok")})
	if a := r.expect(&pb.SubmitAck{}).(*pb.SubmitAck); a.Ref != 9 || a.Id == "" {
		t.Fatalf("ack %+v", a)
	}
}

func TestTooManyInflightSubmits(t *testing.T) {
	n := start(t, socket.Config{MaxInflight: 2})
	r := dialRaw(t, n)
	r.hello(nodetest.Token(t, n, "bo", "phone"), "phone")
	// Many submits in one write: they arrive together, before any ack.
	var b []byte
	const total = 50
	for i := 1; i <= total; i++ {
		b = wire.Append(b, pb.FrameType_SUBMIT, &pb.Submit{Ref: uint64(i), To: []string{"ana"}, Kind: pb.Kind_TEXT, Body: []byte("hi")})
	}
	r.write(b)
	acked, refused := 0, 0
	for acked+refused < total {
		m, err := r.read()
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pb.SubmitAck:
			acked++
		case *pb.Error:
			if m.Code != pb.Code_TOO_MANY_INFLIGHT || m.Fatal {
				t.Fatalf("error %v", m)
			}
			refused++
		}
	}
	if refused == 0 || acked < 2 {
		t.Fatalf("acked %d refused %d: the limit was not applied", acked, refused)
	}
	if h, _ := n.Engine().Head("ana"); h != uint64(acked) {
		t.Fatalf("ana's stream has %d entries, %d were acked", h, acked)
	}
}

func TestHandshakeAndIdleTimeouts(t *testing.T) {
	n := start(t, socket.Config{HandshakeTimeout: 100 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	silent := dialRaw(t, n)
	silent.expectFatal(pb.Code_HANDSHAKE_TIMEOUT)

	idle := dialRaw(t, n)
	w := idle.hello(nodetest.Token(t, n, "bo", "phone"), "phone")
	if w.PingIntervalMs != 100 {
		t.Fatalf("ping interval %d ms, want 100", w.PingIntervalMs)
	}
	idle.expectFatal(pb.Code_IDLE_TIMEOUT)
}

func TestSameDeviceReplacesOldConnection(t *testing.T) {
	n := start(t, socket.Config{})
	tok := nodetest.Token(t, n, "bo", "phone")
	old := dialRaw(t, n)
	old.hello(tok, "phone")
	fresh := dialRaw(t, n)
	fresh.hello(tok, "phone")
	old.expectFatal(pb.Code_REPLACED)
}

// slowConsumer connects bo with a small receive buffer and never reads,
// while ana sends until the server drops bo as a slow consumer. It
// returns bo's connection, unread, and how many messages were sent.
func slowConsumer(t *testing.T, n *node.Node, body int) (*raw, uint64) {
	t.Helper()
	// A small receive buffer, so that the kernel holds little for bo.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	nc, err := d.Dial("tcp", n.SocketAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	slow := &raw{t, nc}
	slow.hello(nodetest.Token(t, n, "bo", "phone"), "phone")
	// bo never reads. Fill the socket buffers and then the server's queue.
	ana := nodetest.Dial(t, n, "ana", "web", nil)
	var sent atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n.Hub().Online("bo") && sent.Load() < 100000 {
				if _, err := ana.Send(context.Background(), []string{"bo"}, make([]byte, body)); err != nil {
					t.Error(err)
					return
				}
				sent.Add(1)
			}
		}()
	}
	wg.Wait()
	if n.Hub().Online("bo") {
		t.Fatal("never disconnected")
	}
	return slow, uint64(sent.Load())
}

// A slow consumer that reads again within the close grace (1 s) lets the
// server finish the write it was stuck in, and then gets SLOW_CONSUMER as
// the last frame; reconnecting, it gets every message, in order.
func TestSlowConsumerIsDisconnectedAndLosesNothing(t *testing.T) {
	const body = 1000
	n := start(t, socket.Config{MaxPending: 64 << 10})
	slow, total := slowConsumer(t, n, body)
	var last proto.Message
	for {
		m, err := slow.read()
		if err != nil {
			break
		}
		last = m
	}
	if e, ok := last.(*pb.Error); !ok || e.Code != pb.Code_SLOW_CONSUMER || !e.Fatal {
		t.Fatalf("last frame %v, want fatal SLOW_CONSUMER", last)
	}
	// Reconnecting delivers every message, in order.
	bo := nodetest.Dial(t, n, "bo", "phone", new(uint64))
	for seq := uint64(1); seq <= total; seq++ {
		select {
		case e := <-bo.Entries():
			if e.Seq != seq || len(e.Message.Body) != body {
				t.Fatalf("got seq %d, want %d", e.Seq, seq)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("stalled at seq %d of %d", seq, total)
		}
	}
}

// A slow consumer that stays stopped never sees SLOW_CONSUMER (PROTOCOL.md
// §4, "Closing"): the ERROR waits behind the write the server is stuck
// in, and the connection is closed after the close grace with that write
// unfinished. What the client reads afterwards is what the kernel had
// accepted: whole frames, perhaps a partial one, then the end.
func TestSlowConsumerThatStaysStoppedSeesNoError(t *testing.T) {
	n := start(t, socket.Config{MaxPending: 64 << 10})
	slow, _ := slowConsumer(t, n, 1000)
	// Only ana's connection is left once the server has closed bo's.
	nodetest.WaitFor(t, "the server to close the slow consumer", 10*time.Second, func() bool { return n.Socket().Connections() == 1 })
	frames := 0
	for {
		m, err := slow.read()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("after %d frames: %v, want the end of the stream", frames, err)
			}
			break
		}
		if e, ok := m.(*pb.Error); ok {
			t.Fatalf("after %d frames an ERROR %v reached a client that had stopped reading", frames, e.Code)
		}
		frames++
	}
	if frames == 0 {
		t.Fatal("no frame at all: the socket buffers held nothing?")
	}
}

func TestShutdownTellsClientsAndDrains(t *testing.T) {
	n := start(t, socket.Config{})
	r := dialRaw(t, n)
	r.hello(nodetest.Token(t, n, "bo", "phone"), "phone")
	nodetest.Stop(t, n)
	r.expectFatal(pb.Code_SHUTTING_DOWN)
}

// TestServeAfterShutdownReturns covers the start-up race: netpoll ignores
// a Shutdown that comes before its Serve has registered, so a server shut
// down before (or while) Serve starts must still not serve forever.
func TestServeAfterShutdownReturns(t *testing.T) {
	n := start(t, socket.Config{})
	keys, err := auth.LoadOrCreate(n.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := socket.New(socket.Config{Engine: n.Engine(), Hub: session.JoinFunc(n.Hub().Join), Keys: keys, Directory: n.Directory()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := socket.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve after Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve after Shutdown is still serving")
	}
	// And a node stopped the moment it started stops.
	for range 10 {
		nodetest.Stop(t, nodetest.Start(t, node.Config{}))
	}
}

// TestRandomFramesNeverHurtTheServer sends authenticated connections
// frames of every client type with random payloads (a deterministic seed).
// Whatever the server answers must be well-framed, and afterwards it must
// still serve a bystander: nothing may crash or wedge it.
func TestRandomFramesNeverHurtTheServer(t *testing.T) {
	n := start(t, socket.Config{})
	rng := rand.New(rand.NewPCG(1, 2))
	types := []pb.FrameType{pb.FrameType_SUBMIT, pb.FrameType_ACK, pb.FrameType_READ, pb.FrameType_PING,
		pb.FrameType_PONG, pb.FrameType_RECEIPTS_QUERY, pb.FrameType_CONFIRM, pb.FrameType_HELLO, 0, 99}
	for round := range 30 {
		r := dialRaw(t, n)
		r.hello(nodetest.Token(t, n, "bo", "phone"), "phone")
		var b []byte
		for range 20 {
			payload := make([]byte, rng.IntN(64))
			for i := range payload {
				payload[i] = byte(rng.UintN(256))
			}
			ft := types[rng.IntN(len(types))]
			b = binary.BigEndian.AppendUint32(b, uint32(1+len(payload)))
			b = append(b, byte(ft))
			b = append(b, payload...)
		}
		r.write(b)
		// Read until the server ends the connection or goes quiet.
		for {
			r.nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			var hdr [wire.HeaderLen]byte
			if _, err := io.ReadFull(r.nc, hdr[:]); err != nil {
				break
			}
			n, _, err := wire.ParseHeader(hdr[:], 1<<24)
			if err != nil {
				t.Fatalf("round %d: server sent a bad frame header: %v", round, err)
			}
			io.ReadFull(r.nc, make([]byte, n-1))
		}
		r.nc.Close()
	}
	// The server is fine: a fresh client sends and receives.
	ana := nodetest.Dial(t, n, "ana", "web", nil)
	cy := nodetest.Dial(t, n, "cy", "web", nil)
	res, err := ana.Send(context.Background(), []string{"cy"}, []byte("still here"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case e := <-cy.Entries():
			if e.Message != nil && e.Message.ID == res.ID {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatal("bystander got nothing")
		}
	}
}

// TestNewDeviceStartsFromTheWindow: with NewDeviceWindow, a device's
// first connection starts at the latest entries of the stream; a device
// that gives a cursor (here 0: everything) resumes from it as before.
func TestNewDeviceStartsFromTheWindow(t *testing.T) {
	n := start(t, socket.Config{NewDeviceWindow: 3})
	ctx := context.Background()
	for i := range 10 {
		if _, err := n.Engine().Submit(ctx, engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte{'m', byte('0' + i)}}); err != nil {
			t.Fatal(err)
		}
	}
	r := dialRaw(t, n)
	if w := r.hello(nodetest.Token(t, n, "bo", "new-phone"), "new-phone"); w.ResumeFrom != 8 || w.Head != 10 {
		t.Fatalf("a new device: WELCOME %+v, want resume_from 8 (the last 3 of 10)", w)
	}
	if d := r.expect(&pb.Deliver{}).(*pb.Deliver); d.Seq != 8 {
		t.Fatalf("first entry %d, want 8", d.Seq)
	}
	r2 := dialRaw(t, n)
	zero := uint64(0)
	r2.send(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: nodetest.Token(t, n, "bo", "all"), Device: "all", Cursor: &zero})
	if w := r2.expect(&pb.Welcome{}).(*pb.Welcome); w.ResumeFrom != 1 {
		t.Fatalf("a device giving cursor 0: resume_from %d, want 1", w.ResumeFrom)
	}
}
