package session_test

import (
	"bytes"
	"context"
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
	sess   *session.Session
	once   sync.Once
}

func newPipe() *pipe { return &pipe{wrote: make(chan struct{}, 1024)} }

func (p *pipe) Write(frames [][]byte, size int) error {
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
	keys *auth.Keys
}

func newEnv(t *testing.T) *env {
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
	mgr, err := session.NewManager(session.Config{Engine: eng, Hub: hub, Tokens: keys, Users: dir,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mgr.Shutdown(context.Background())
		eng.Close()
		hub.Close()
	})
	return &env{mgr: mgr, keys: keys}
}

// connect opens a session on a pipe and completes the handshake.
func (e *env) connect(t *testing.T, user, device string) *pipe {
	t.Helper()
	p := newPipe()
	p.sess = e.mgr.Open(p)
	p.sess.Begin()
	tok, err := e.keys.MintClient(user, device, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p.sess.HandleFrame(pb.FrameType_HELLO, payload(&pb.Hello{Version: wire.Version, Token: tok, Device: device}))
	if ft, m := p.next(t, 0); ft != pb.FrameType_WELCOME || m.(*pb.Welcome).User != user {
		t.Fatalf("handshake: %v %v", ft, m)
	}
	return p
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
