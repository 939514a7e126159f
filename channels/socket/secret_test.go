package socket_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// answer reads until the reply to ref (OK, SUBMIT_ACK, RECEIPTS or ERROR)
// and holds the stream entries read meanwhile for entry.
func (s *stream) answer(ref uint64) proto.Message {
	s.t.Helper()
	for {
		m := s.next()
		if isEntry(m) {
			s.held = append(s.held, m)
			continue
		}
		if r, ok := m.(interface{ GetRef() uint64 }); ok && r.GetRef() == ref {
			return m
		}
		if e, ok := m.(*pb.Error); ok {
			s.t.Fatalf("waiting for the answer to %d: error %v %q (ref %d)", ref, e.Code, e.Detail, e.Ref)
		}
	}
}

// ok expects OK for ref and returns it.
func (s *stream) ok(ref uint64) *pb.Ok {
	s.t.Helper()
	m := s.answer(ref)
	ok, _ := m.(*pb.Ok)
	if ok == nil {
		s.t.Fatalf("answer to %d: %v, want OK", ref, m)
	}
	return ok
}

// refused expects a non-fatal ERROR with code for ref.
func (s *stream) refused(ref uint64, code pb.Code) {
	s.t.Helper()
	e, _ := s.answer(ref).(*pb.Error)
	if e == nil || e.Code != code || e.Fatal {
		s.t.Fatalf("answer to %d: %v, want non-fatal %v", ref, e, code)
	}
}

// entry returns the first stream entry, held or next, that match accepts;
// the held ones it passes over stay held.
func (s *stream) entry(what string, match func(proto.Message) bool) proto.Message {
	s.t.Helper()
	for i, m := range s.held {
		if match(m) {
			s.held = slices.Delete(s.held, i, i+1)
			return m
		}
	}
	for {
		m := s.next()
		if match(m) {
			return m
		}
		if e, ok := m.(*pb.Error); ok {
			s.t.Fatalf("waiting for %s: error %v %q", what, e.Code, e.Detail)
		}
		if isEntry(m) {
			s.held = append(s.held, m)
		}
	}
}

func (s *stream) deliver(id string) *pb.Deliver {
	s.t.Helper()
	return s.entry("DELIVER "+id, func(m proto.Message) bool { d, _ := m.(*pb.Deliver); return d != nil && d.Id == id }).(*pb.Deliver)
}

func (s *stream) burn(id string) *pb.Burn {
	s.t.Helper()
	return s.entry("BURN "+id, func(m proto.Message) bool { b, _ := m.(*pb.Burn); return b != nil && b.Id == id }).(*pb.Burn)
}

func (s *stream) secretEvent(chat, event string) *pb.SecretEvent {
	s.t.Helper()
	return s.entry("SECRET_EVENT "+event, func(m proto.Message) bool {
		e, _ := m.(*pb.SecretEvent)
		return e != nil && e.Chat == chat && e.Event == event
	}).(*pb.SecretEvent)
}

// createChat asks for a secret chat over s and returns its id.
func (s *stream) createChat(ref uint64, to string, level uint32, burnMs int64) string {
	s.t.Helper()
	s.send(pb.FrameType_SECRET_CREATE, &pb.SecretCreate{Ref: ref, To: to, Level: level, BurnAfterMs: burnMs})
	ok := s.ok(ref)
	if len(ok.Id) != 26 {
		s.t.Fatalf("SECRET_CREATE answered %v, want a 26-char chat id", ok)
	}
	return ok.Id
}

// submit sends and expects the SUBMIT_ACK.
func (s *stream) submit(sub *pb.Submit) *pb.SubmitAck {
	s.t.Helper()
	if sub.Kind == 0 {
		sub.Kind = pb.Kind_TEXT
	}
	s.send(pb.FrameType_SUBMIT, sub)
	ack, _ := s.answer(sub.Ref).(*pb.SubmitAck)
	if ack == nil {
		s.t.Fatalf("SUBMIT %d not acked", sub.Ref)
	}
	return ack
}

func isPseudonym(p string) bool { return strings.HasPrefix(p, "anon-") }

// TestSecretChatIsMaskedAndBurnsOnBothSides follows a level-2 chat over
// real sockets: both participants learn only pseudonyms, the recipient gets
// the message marked no_copy/no_forward with a watermark, the sender's
// receipts name the reader by pseudonym, and after the burn delay both
// streams get a BURN with the id only; a device that never received the
// message finds the BURN at its seq.
func TestSecretChatIsMaskedAndBurnsOnBothSides(t *testing.T) {
	n, clock := startClocked(t)
	ana, bo := login(t, n, "ana"), login(t, n, "bo")

	chat := ana.createChat(1, "bo", 2, 0)
	ac, bc := ana.secretEvent(chat, "created"), bo.secretEvent(chat, "created")
	anaP, boP := ac.You, bc.You
	now := clock.Now().UnixMilli()
	if !isPseudonym(anaP) || !isPseudonym(boP) || anaP == boP {
		t.Fatalf("pseudonyms %q and %q", anaP, boP)
	}
	for _, c := range []struct {
		got       *pb.SecretEvent
		you, peer string
	}{{ac, anaP, boP}, {bc, boP, anaP}} {
		want := &pb.SecretEvent{Seq: c.got.Seq, Chat: chat, Event: "created", By: anaP, Level: 2, BurnAfterMs: 30000,
			You: c.you, Peer: c.peer, AtMs: now}
		if !proto.Equal(c.got, want) {
			t.Fatalf("created event %v, want %v", c.got, want)
		}
	}

	ack := ana.submit(&pb.Submit{Ref: 2, Chat: chat, Body: []byte("meet at the back door"), ClientMsgId: "s1"})
	d := bo.deliver(ack.Id)
	want := &pb.Deliver{Seq: d.Seq, Id: ack.Id, From: anaP, To: []string{boP}, Kind: pb.Kind_TEXT,
		Body: []byte("meet at the back door"), CreatedMs: ack.CreatedMs, Chat: chat, Level: 2, BurnAfterMs: 30000,
		NoCopy: true, NoForward: true, Watermark: boP}
	if !proto.Equal(d, want) {
		t.Fatalf("recipient got %v, want %v", d, want)
	}

	bo.send(pb.FrameType_ACK, &pb.Ack{Seq: d.Seq})
	bo.send(pb.FrameType_READ, &pb.Read{Ref: 3, Ids: []string{ack.Id}})
	bo.ok(3)
	r := ana.entry("READ receipt", func(m proto.Message) bool {
		r, _ := m.(*pb.Receipt)
		return r != nil && r.State == pb.State_READ_STATE && slices.Contains(r.Ids, ack.Id)
	}).(*pb.Receipt)
	if r.User != boP {
		t.Fatalf("sender's read receipt names %q, want the pseudonym %q", r.User, boP)
	}
	ana.send(pb.FrameType_RECEIPTS_QUERY, &pb.ReceiptsQuery{Ref: 4, Id: ack.Id})
	rs, _ := ana.answer(4).(*pb.Receipts)
	if rs == nil || len(rs.Recipients) != 1 || rs.Recipients[0].User != boP || rs.Recipients[0].State != pb.State_READ_STATE {
		t.Fatalf("sender's RECEIPTS %v, want %s read", rs, boP)
	}
	bo.send(pb.FrameType_RECEIPTS_QUERY, &pb.ReceiptsQuery{Ref: 5, Id: ack.Id})
	bo.refused(5, pb.Code_FORBIDDEN)

	clock.Advance(30 * time.Second)
	for _, s := range []*stream{ana, bo} {
		b := s.burn(ack.Id)
		if !proto.Equal(b, &pb.Burn{Seq: b.Seq, Id: ack.Id}) {
			t.Fatalf("BURN %v carries more than the id", b)
		}
	}
	ana.send(pb.FrameType_RECEIPTS_QUERY, &pb.ReceiptsQuery{Ref: 6, Id: ack.Id})
	ana.refused(6, pb.Code_NOT_FOUND)

	// A device that never acked replays the stream: the message's own seq
	// now holds a BURN, and its content is nowhere.
	head, err := n.Engine().Head("bo")
	if err != nil {
		t.Fatal(err)
	}
	laptop := dialRaw(t, n)
	laptop.hello(nodetest.Token(t, n, "bo", "laptop"), "laptop")
	ls := &stream{raw: laptop}
	var atSeq proto.Message
	for ls.last < head {
		m := ls.next()
		if dd, ok := m.(*pb.Deliver); ok && dd.Id == ack.Id {
			t.Fatalf("a fresh device got the burned message at seq %d", dd.Seq)
		}
		if ls.last == d.Seq {
			atSeq = m
		}
	}
	if !proto.Equal(atSeq, &pb.Burn{Seq: d.Seq, Id: ack.Id}) {
		t.Fatalf("seq %d replays as %v, want a BURN of %s", d.Seq, atSeq, ack.Id)
	}
}

// TestForwardAndQuoteOverTheSocket: a normal message can be forwarded and
// quoted (the recipient sees forward_of / quote_of); a secret one cannot.
func TestForwardAndQuoteOverTheSocket(t *testing.T) {
	n := start(t, socket.Config{})
	ana, bo, cy := login(t, n, "ana"), login(t, n, "bo"), login(t, n, "cy")

	plain := ana.submit(&pb.Submit{Ref: 1, To: []string{"bo"}, Body: []byte("the plan")})
	bo.deliver(plain.Id)
	fwd := bo.submit(&pb.Submit{Ref: 2, To: []string{"cy"}, Body: []byte("fyi"), ForwardOf: plain.Id})
	if d := cy.deliver(fwd.Id); d.ForwardOf != plain.Id || d.QuoteOf != "" || d.Chat != "" || d.NoForward || d.From != "bo" {
		t.Fatalf("forward delivered as %v", d)
	}
	quote := bo.submit(&pb.Submit{Ref: 3, To: []string{"cy"}, Body: []byte("see this"), QuoteOf: plain.Id})
	if d := cy.deliver(quote.Id); d.QuoteOf != plain.Id || d.ForwardOf != "" {
		t.Fatalf("quote delivered as %v", d)
	}

	chat := ana.createChat(4, "bo", 1, 0)
	secret := ana.submit(&pb.Submit{Ref: 5, Chat: chat, Body: []byte("between us")})
	bo.deliver(secret.Id)
	before, _ := n.Engine().Head("cy")
	cases := []struct {
		name string
		conn *stream
		sub  *pb.Submit
	}{
		{"recipient forwards it", bo, &pb.Submit{To: []string{"cy"}, ForwardOf: secret.Id}},
		{"recipient quotes it", bo, &pb.Submit{To: []string{"cy"}, QuoteOf: secret.Id}},
		{"sender forwards it", ana, &pb.Submit{To: []string{"cy"}, ForwardOf: secret.Id}},
		{"forward into the chat", bo, &pb.Submit{Chat: chat, ForwardOf: plain.Id}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.conn.t = t
			ref := uint64(10 + i)
			c.sub.Ref, c.sub.Kind, c.sub.Body = ref, pb.Kind_TEXT, []byte("x")
			c.conn.send(pb.FrameType_SUBMIT, c.sub)
			c.conn.refused(ref, pb.Code_NO_FORWARD)
		})
	}
	for _, s := range []*stream{ana, bo, cy} {
		s.t = t
	}
	if after, _ := n.Engine().Head("cy"); after != before {
		t.Fatalf("cy's stream moved %d -> %d: a refused forward was stored", before, after)
	}
}

// TestScreenshotIsRelayedInLevel3Only: a screenshot report in a level-3
// chat reaches the other participant naming the reporter's pseudonym; in a
// level-1 chat it is refused.
func TestScreenshotIsRelayedInLevel3Only(t *testing.T) {
	n, clock := startClocked(t)
	ana, bo := login(t, n, "ana"), login(t, n, "bo")

	chat := ana.createChat(1, "bo", 3, 5000)
	ac, bc := ana.secretEvent(chat, "created"), bo.secretEvent(chat, "created")
	if ac.Level != 3 || ac.BurnAfterMs != 5000 || bc.BurnAfterMs != 5000 {
		t.Fatalf("created events %v, %v, want level 3 and 5 s", ac, bc)
	}
	ack := ana.submit(&pb.Submit{Ref: 2, Chat: chat, Body: []byte("five seconds")})
	if d := bo.deliver(ack.Id); d.Level != 3 || d.BurnAfterMs != 5000 || d.Watermark != bc.You || d.From != ac.You {
		t.Fatalf("level-3 message delivered as %v", d)
	}

	bo.send(pb.FrameType_SCREENSHOT, &pb.Screenshot{Ref: 3, Chat: chat, Id: ack.Id})
	bo.ok(3)
	shot := ana.secretEvent(chat, "screenshot")
	want := &pb.SecretEvent{Seq: shot.Seq, Chat: chat, Event: "screenshot", Id: ack.Id, By: bc.You, Level: 3,
		BurnAfterMs: 5000, AtMs: clock.Now().UnixMilli()}
	if !proto.Equal(shot, want) {
		t.Fatalf("screenshot event %v, want %v", shot, want)
	}
	bo.send(pb.FrameType_SCREENSHOT, &pb.Screenshot{Ref: 4, Chat: chat})
	bo.ok(4)
	if shot := ana.secretEvent(chat, "screenshot"); shot.Id != "" || shot.By != bc.You {
		t.Fatalf("screenshot without a message: %v", shot)
	}

	chat1 := ana.createChat(5, "bo", 1, 0)
	bo.send(pb.FrameType_SCREENSHOT, &pb.Screenshot{Ref: 6, Chat: chat1})
	bo.refused(6, pb.Code_BAD_CHAT)
}

// TestSecretRequestErrorsKeepTheConnection checks each refused secret-chat
// request gets its precise, non-fatal code, stores nothing, and leaves
// every connection working.
func TestSecretRequestErrorsKeepTheConnection(t *testing.T) {
	n := start(t, socket.Config{})
	ana, bo, cy := login(t, n, "ana"), login(t, n, "bo"), login(t, n, "cy")
	chat := ana.createChat(1, "bo", 1, 0)
	plain := ana.submit(&pb.Submit{Ref: 2, To: []string{"bo"}, Body: []byte("hi")})
	const unknownID = "01M8K8F2K5C97AM15Z94XS9NY4"
	heads := func() []uint64 {
		var hs []uint64
		for _, u := range []string{"ana", "bo", "cy"} {
			h, _ := n.Engine().Head(u)
			hs = append(hs, h)
		}
		return hs
	}
	bo.deliver(plain.Id)
	ana.secretEvent(chat, "created")
	bo.secretEvent(chat, "created")
	before := heads()

	sub := func(s *pb.Submit) *pb.Submit { s.Kind, s.Body = pb.Kind_TEXT, []byte("x"); return s }
	cases := []struct {
		name string
		conn *stream
		ft   pb.FrameType
		msg  proto.Message
		code pb.Code
	}{
		{"malformed chat id", ana, pb.FrameType_SUBMIT, sub(&pb.Submit{Chat: "nope"}), pb.Code_BAD_REQUEST},
		{"malformed forward_of", bo, pb.FrameType_SUBMIT, sub(&pb.Submit{To: []string{"cy"}, ForwardOf: "nope"}), pb.Code_BAD_REQUEST},
		{"malformed quote_of", bo, pb.FrameType_SUBMIT, sub(&pb.Submit{To: []string{"cy"}, QuoteOf: "nope!"}), pb.Code_BAD_REQUEST},
		{"chat and recipients", ana, pb.FrameType_SUBMIT, sub(&pb.Submit{Chat: chat, To: []string{"bo"}}), pb.Code_BAD_REQUEST},
		{"unknown chat", ana, pb.FrameType_SUBMIT, sub(&pb.Submit{Chat: unknownID}), pb.Code_NOT_MEMBER},
		{"outsider sends in the chat", cy, pb.FrameType_SUBMIT, sub(&pb.Submit{Chat: chat}), pb.Code_NOT_MEMBER},
		{"forward of a message not yours", cy, pb.FrameType_SUBMIT, sub(&pb.Submit{To: []string{"ana"}, ForwardOf: plain.Id}), pb.Code_NOT_RECIPIENT},
		{"forward of an unknown message", bo, pb.FrameType_SUBMIT, sub(&pb.Submit{To: []string{"cy"}, ForwardOf: unknownID}), pb.Code_NOT_FOUND},
		{"level 0", ana, pb.FrameType_SECRET_CREATE, &pb.SecretCreate{To: "bo"}, pb.Code_BAD_CHAT},
		{"level 4", ana, pb.FrameType_SECRET_CREATE, &pb.SecretCreate{To: "bo", Level: 4}, pb.Code_BAD_CHAT},
		{"level 257", ana, pb.FrameType_SECRET_CREATE, &pb.SecretCreate{To: "bo", Level: 257}, pb.Code_BAD_CHAT},
		{"burn delay below level 3", ana, pb.FrameType_SECRET_CREATE, &pb.SecretCreate{To: "bo", Level: 2, BurnAfterMs: 10000}, pb.Code_BAD_CHAT},
		{"burn delay too short", ana, pb.FrameType_SECRET_CREATE, &pb.SecretCreate{To: "bo", Level: 3, BurnAfterMs: 1000}, pb.Code_BAD_CHAT},
		{"negative burn delay", ana, pb.FrameType_SECRET_CREATE, &pb.SecretCreate{To: "bo", Level: 3, BurnAfterMs: -5000}, pb.Code_BAD_CHAT},
		{"chat with oneself", ana, pb.FrameType_SECRET_CREATE, &pb.SecretCreate{To: "ana", Level: 1}, pb.Code_BAD_CHAT},
		{"unknown user", ana, pb.FrameType_SECRET_CREATE, &pb.SecretCreate{To: "zed", Level: 1}, pb.Code_UNKNOWN_RECIPIENT},
		{"bad user name", ana, pb.FrameType_SECRET_CREATE, &pb.SecretCreate{To: "no spaces", Level: 1}, pb.Code_BAD_REQUEST},
		{"screenshot with a malformed chat id", bo, pb.FrameType_SCREENSHOT, &pb.Screenshot{Chat: "x"}, pb.Code_BAD_REQUEST},
		{"screenshot with a malformed message id", bo, pb.FrameType_SCREENSHOT, &pb.Screenshot{Chat: chat, Id: "x"}, pb.Code_BAD_REQUEST},
		{"screenshot by an outsider", cy, pb.FrameType_SCREENSHOT, &pb.Screenshot{Chat: chat}, pb.Code_NOT_MEMBER},
		{"screenshot in an unknown chat", bo, pb.FrameType_SCREENSHOT, &pb.Screenshot{Chat: unknownID}, pb.Code_NOT_MEMBER},
		{"receipts of a message not yours", bo, pb.FrameType_RECEIPTS_QUERY, &pb.ReceiptsQuery{Id: plain.Id}, pb.Code_FORBIDDEN},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.conn.t = t
			ref := uint64(100 + i)
			switch m := c.msg.(type) {
			case *pb.Submit:
				m.Ref = ref
			case *pb.SecretCreate:
				m.Ref = ref
			case *pb.Screenshot:
				m.Ref = ref
			case *pb.ReceiptsQuery:
				m.Ref = ref
			}
			c.conn.send(c.ft, c.msg)
			c.conn.refused(ref, c.code)
		})
	}
	for _, s := range []*stream{ana, bo, cy} {
		s.t = t
		s.send(pb.FrameType_PING, &pb.Ping{Nonce: 42})
		s.entry("PONG", func(m proto.Message) bool { p, _ := m.(*pb.Pong); return p != nil && p.Nonce == 42 })
	}
	if after := heads(); !slices.Equal(after, before) {
		t.Fatalf("streams moved %v -> %v: a refused request stored something", before, after)
	}
	// The chat still works for its members.
	ack := ana.submit(&pb.Submit{Ref: 999, Chat: chat, Body: []byte("still here")})
	bo.deliver(ack.Id)
}
