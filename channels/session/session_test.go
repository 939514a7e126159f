package session_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/fanout"
)

// pipe is an in-memory transport: what the session writes is decoded into
// frames for the test; Close reports the connection gone, as a transport
// must. It proves the session needs nothing of netpoll.
type pipe struct {
	mu     sync.Mutex
	frames []proto.Message
	types  []pb.FrameType
	closed bool
	wrote  chan struct{} // signalled after every Write
	// gate, when set, holds every Write until it is closed; a Write
	// waiting there is told on held.
	gate, held chan struct{}
	sess       *session.Session
	once       sync.Once
}

func newPipe() *pipe { return &pipe{wrote: make(chan struct{}, 1024), held: make(chan struct{}, 1)} }

func (p *pipe) Write(frames [][]byte, size int) error {
	if p.gate != nil {
		select {
		case p.held <- struct{}{}:
		default:
		}
		<-p.gate
	}
	var all []byte
	for _, f := range frames {
		all = append(all, f...)
	}
	if len(all) != size {
		return errors.New("size does not match the frames")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("pipe closed")
	}
	for len(all) > 0 {
		n, ft, err := wire.ParseHeader(all, 1<<20)
		if err != nil {
			return err
		}
		m, err := wire.Decode(ft, all[wire.HeaderLen:4+n])
		if err != nil {
			return err
		}
		p.frames, p.types = append(p.frames, m), append(p.types, ft)
		all = all[4+n:]
	}
	p.wrote <- struct{}{}
	return nil
}

func (p *pipe) Close() error {
	p.once.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.sess.Closed() // a transport reports its connection gone once
	})
	return nil
}

func (p *pipe) isClosed() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.closed }

// next waits for the i-th frame the session wrote.
func (p *pipe) next(t *testing.T, i int) (pb.FrameType, proto.Message) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		p.mu.Lock()
		if len(p.frames) > i {
			ft, m := p.types[i], p.frames[i]
			p.mu.Unlock()
			return ft, m
		}
		p.mu.Unlock()
		select {
		case <-p.wrote:
		case <-deadline:
			t.Fatalf("frame %d never came", i)
		}
	}
}

type env struct {
	mgr  *session.Manager
	hub  *fanout.Hub
	keys *auth.Keys
}

func newEnv(t *testing.T) *env { t.Helper(); return newEnvWith(t, session.Config{}) }

// newEnvWith is newEnv with cfg's limits and timeouts.
func newEnvWith(t *testing.T, cfg session.Config) *env {
	t.Helper()
	st := memstore.New()
	dir, err := fanout.OpenDirectory(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.Open(engine.Config{Store: st, Recipients: dir, Contacts: dir})
	if err != nil {
		t.Fatal(err)
	}
	dir.SetCommitter(eng)
	var enc session.Encoder
	hub, err := fanout.NewHub(fanout.HubConfig{Source: eng, Encode: enc.AppendEntry})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := fanout.NewPublisher(fanout.PublisherConfig{Broker: fanout.NewLocalBroker(hub, fanout.SingleNode{})})
	if err != nil {
		t.Fatal(err)
	}
	eng.SetSink(pub)
	for _, u := range []string{"ana", "bo"} {
		if _, err := dir.PutUser(fanout.User{ID: u, Name: u}); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := auth.New(bytes.Repeat([]byte("k"), 32), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Engine, cfg.Hub, cfg.Tokens, cfg.Users = eng, session.JoinFunc(hub.Join), keys, dir
	cfg.Logger = slog.New(slog.DiscardHandler)
	mgr, err := session.NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mgr.Shutdown(context.Background())
		eng.Close()
		hub.Close()
	})
	return &env{mgr: mgr, hub: hub, keys: keys}
}

// open opens a session on a new pipe, as a transport does.
func (e *env) open() *pipe {
	p := newPipe()
	p.sess = e.mgr.Open(p)
	p.sess.Begin()
	return p
}

// hello sends p's HELLO for user's device.
func (e *env) hello(t *testing.T, p *pipe, user, device string) {
	t.Helper()
	tok, err := e.keys.MintClient(user, device, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p.sess.HandleFrame(pb.FrameType_HELLO, payload(&pb.Hello{Version: wire.Version, Token: tok, Device: device}))
}

// connect opens a session on a pipe and completes the handshake.
func (e *env) connect(t *testing.T, user, device string) *pipe {
	t.Helper()
	p := e.open()
	e.hello(t, p, user, device)
	if ft, m := p.next(t, 0); ft != pb.FrameType_WELCOME || m.(*pb.Welcome).User != user {
		t.Fatalf("handshake: %v %v", ft, m)
	}
	return p
}

// feed frames input as a transport does: whole frames to HandleFrame; a
// header wire.ParseHeader refuses to FrameError, and the rest discarded.
func (p *pipe) feed(b []byte, maxFrame int) {
	for len(b) >= wire.HeaderLen && !p.sess.Dead() {
		n, ft, err := wire.ParseHeader(b[:wire.HeaderLen], maxFrame)
		if err != nil {
			p.sess.FrameError(err)
			return
		}
		p.sess.HandleFrame(ft, b[wire.HeaderLen:4+n])
		b = b[4+n:]
	}
}

// expectFatal waits for the i-th frame, a fatal ERROR with code, then for
// the pipe to be closed with nothing written after the error.
func (p *pipe) expectFatal(t *testing.T, i int, code pb.Code) {
	t.Helper()
	ft, m := p.next(t, i)
	if e, ok := m.(*pb.Error); ft != pb.FrameType_ERROR || !ok || e.Code != code || !e.Fatal {
		t.Fatalf("frame %d: %v %v, want fatal %v", i, ft, m, code)
	}
	waitFor(t, "the connection closed", p.isClosed)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.frames) != i+1 {
		t.Fatalf("%d frames after the fatal error", len(p.frames)-i-1)
	}
}

// waitFor polls cond until it holds, or fails after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func payload(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// TestSessionOverAnInMemoryTransport runs the protocol through a session
// whose transport is a pipe: handshake, a submit answered once durable,
// its delivery to the recipient's session, an ack, a ping, and a
// malformed frame that ends the session with a typed error.
func TestSessionOverAnInMemoryTransport(t *testing.T) {
	e := newEnv(t)
	ana, bo := e.connect(t, "ana", "phone"), e.connect(t, "bo", "laptop")
	ana.sess.HandleFrame(pb.FrameType_SUBMIT, payload(&pb.Submit{Ref: 7, To: []string{"bo"}, Kind: pb.Kind_TEXT, Body: []byte("hi")}))
	ft, m := ana.next(t, 1)
	ack, ok := m.(*pb.SubmitAck)
	if ft != pb.FrameType_SUBMIT_ACK || !ok || ack.Ref != 7 {
		t.Fatalf("submit answered %v %v", ft, m)
	}
	ft, m = bo.next(t, 1)
	d, ok := m.(*pb.Deliver)
	if ft != pb.FrameType_DELIVER || !ok || d.Id != ack.Id || string(d.Body) != "hi" || d.Seq != 1 {
		t.Fatalf("bo got %v %v", ft, m)
	}
	bo.sess.HandleFrame(pb.FrameType_ACK, payload(&pb.Ack{Seq: 1}))
	ft, m = ana.next(t, 2) // the delivered receipt
	if r, ok := m.(*pb.Receipt); ft != pb.FrameType_RECEIPT || !ok || r.State != pb.State_DELIVERED || r.User != "bo" {
		t.Fatalf("ana got %v %v", ft, m)
	}
	ana.sess.HandleFrame(pb.FrameType_PING, payload(&pb.Ping{Nonce: 42}))
	if ft, m := ana.next(t, 3); ft != pb.FrameType_PONG || m.(*pb.Pong).Nonce != 42 {
		t.Fatalf("ping answered %v %v", ft, m)
	}
	if n := e.mgr.Count(); n != 2 {
		t.Fatalf("Count = %d, want 2", n)
	}
	ana.sess.HandleFrame(pb.FrameType_SUBMIT, []byte{0xff, 0xff, 0xff}) // not a protobuf
	ft, m = ana.next(t, 4)
	if er, ok := m.(*pb.Error); ft != pb.FrameType_ERROR || !ok || er.Code != pb.Code_BAD_FRAME || !er.Fatal {
		t.Fatalf("malformed frame answered %v %v", ft, m)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !ana.isClosed() || e.mgr.Count() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("after a fatal error: closed %v, sessions %d", ana.isClosed(), e.mgr.Count())
		}
		time.Sleep(time.Millisecond)
	}
	if !ana.sess.Dead() {
		t.Fatal("a session that sent a fatal error still takes input")
	}
}

// TestFramingErrorsAreTyped: input a transport cannot frame (reported
// with FrameError) and frames the session refuses each end the session
// with their own fatal code, and nothing after it.
func TestFramingErrorsAreTyped(t *testing.T) {
	e := newEnv(t)
	hdr := func(length uint32, ft byte) []byte { return append(binary.BigEndian.AppendUint32(nil, length), ft) }
	cases := []struct {
		name string
		in   []byte
		code pb.Code
	}{
		{"too large", hdr(1<<30, byte(pb.FrameType_SUBMIT)), pb.Code_FRAME_TOO_LARGE},
		{"empty", hdr(0, 0), pb.Code_BAD_FRAME},
		{"unknown type", hdr(1, 99), pb.Code_UNKNOWN_FRAME},
		{"server frame", hdr(1, byte(pb.FrameType_DELIVER)), pb.Code_UNKNOWN_FRAME},
		{"before hello", hdr(1, byte(pb.FrameType_PING)), pb.Code_HANDSHAKE_REQUIRED},
		{"malformed hello", append(hdr(4, byte(pb.FrameType_HELLO)), 0xff, 0xff, 0xff), pb.Code_BAD_FRAME},
		{"then more input", append(hdr(0, 0), wire.Encode(pb.FrameType_PING, &pb.Ping{})...), pb.Code_BAD_FRAME},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := e.open()
			p.feed(c.in, e.mgr.MaxFrame())
			p.expectFatal(t, 0, c.code)
		})
	}
	waitFor(t, "every session closed", func() bool { return e.mgr.Count() == 0 })
}

// TestSlowConsumerOverAnInMemoryTransport: a session whose transport does
// not take its writes is dropped once its queue would pass MaxPending:
// what was queued is dropped, SLOW_CONSUMER is its last frame, and its
// device is detached.
func TestSlowConsumerOverAnInMemoryTransport(t *testing.T) {
	const maxPending = 8 << 10
	e := newEnvWith(t, session.Config{MaxPending: maxPending})
	slow := e.open()
	slow.gate = make(chan struct{})
	e.hello(t, slow, "bo", "phone")
	// The WELCOME's write is held at the gate; what is sent now queues
	// up behind it.
	select {
	case <-slow.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the WELCOME was never written")
	}
	frame := wire.Encode(pb.FrameType_DELIVER, &pb.Deliver{Seq: 1, Body: make([]byte, 1000)})
	sent := 0
	for slow.sess.Send(frame) {
		if sent++; sent > maxPending/len(frame) {
			t.Fatalf("%d frames of %d bytes queued: past MaxPending %d", sent, len(frame), maxPending)
		}
	}
	if sent < maxPending/len(frame)-1 {
		t.Fatalf("dropped after %d frames of %d bytes: MaxPending is %d", sent, len(frame), maxPending)
	}
	if slow.sess.Send(frame) {
		t.Fatal("a slow consumer took another frame")
	}
	close(slow.gate)
	if ft, _ := slow.next(t, 0); ft != pb.FrameType_WELCOME {
		t.Fatalf("first frame %v, want the WELCOME", ft)
	}
	slow.expectFatal(t, 1, pb.Code_SLOW_CONSUMER) // the queued frames were dropped
	waitFor(t, "bo detached", func() bool { return !e.hub.Online("bo") && e.mgr.Count() == 0 })
}

// TestKickSaysWhy: a connection the node closes from the outside
// (fanout.Endpoint.Fail, e.g. the hub's KickWhere when a cluster node
// stops serving the user's partition) ends with the reason's own code:
// UNAVAILABLE for a partition that moved (the client reconnects and is
// sent on), NOT_OWNER with the owner's address when it is known,
// USER_REMOVED and BAD_TOKEN for an offboarding or a revoked token, and
// INTERNAL only for anything else.
func TestKickSaysWhy(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		err  error
		code pb.Code
	}{
		{engine.NewError(engine.CodeUnavailable, "node: this user's partition moved to another node; reconnect"), pb.Code_UNAVAILABLE},
		{&fanout.NotOwnerError{Owner: "10.0.0.2:7070"}, pb.Code_NOT_OWNER},
		{fanout.ErrUserRemoved, pb.Code_USER_REMOVED},
		{fanout.ErrTokenRevoked, pb.Code_BAD_TOKEN},
		{errors.New("disk on fire"), pb.Code_INTERNAL},
	}
	for i, c := range cases {
		p := e.connect(t, "ana", "phone"+string(rune('a'+i)))
		p.sess.Fail(c.err)
		p.expectFatal(t, 1, c.code)
		if c.code == pb.Code_NOT_OWNER {
			if _, m := p.next(t, 1); m.(*pb.Error).Redirect != "10.0.0.2:7070" {
				t.Fatalf("NOT_OWNER without the owner: %v", m)
			}
		}
	}
}
