package socket_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// stream reads a raw connection's frames, checking that its stream entries
// (DELIVER, RECEIPT, DING_EVENT, BURN, SECRET_EVENT) come with consecutive
// seqs.
type stream struct {
	*raw
	last uint64          // seq of the last entry read; 0 before the first
	held []proto.Message // stream entries read while waiting for a reply (see answer)
}

// isEntry says whether a frame the server sent is a stream entry: those
// are the frames with a seq.
func isEntry(m proto.Message) bool {
	_, ok := m.(interface{ GetSeq() uint64 })
	return ok
}

func (s *stream) next() proto.Message {
	s.t.Helper()
	m, err := s.read()
	if err != nil {
		s.t.Fatalf("read: %v", err)
	}
	e, ok := m.(interface{ GetSeq() uint64 })
	if !ok {
		return m
	}
	seq := e.GetSeq()
	if s.last != 0 && seq != s.last+1 {
		s.t.Fatalf("entry seq %d after %d", seq, s.last)
	}
	s.last = seq
	return m
}

// until reads frames until match accepts one, and returns the ones it
// skipped.
func (s *stream) until(what string, match func(proto.Message) bool) []proto.Message {
	s.t.Helper()
	var skipped []proto.Message
	for {
		m := s.next()
		if match(m) {
			return skipped
		}
		if e, ok := m.(*pb.Error); ok {
			s.t.Fatalf("waiting for %s: error %v %q", what, e.Code, e.Detail)
		}
		skipped = append(skipped, m)
	}
}

func login(t *testing.T, n *node.Node, user string) *stream {
	t.Helper()
	r := dialRaw(t, n)
	r.hello(nodetest.Token(t, n, user, "phone"), "phone")
	return &stream{raw: r}
}

func ding(t *testing.T, n *node.Node, policy string, to ...string) engine.ID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := n.Engine().Ding(ctx, engine.DingRequest{
		From: "ana", To: to, Text: "fire drill at 3", Policy: policy, Choices: []string{"attend", "decline"},
	})
	if err != nil {
		t.Fatalf("ding: %v", err)
	}
	return res.ID
}

// TestDingIsDeliveredConfirmedAndReported follows one DING over real
// sockets: the recipient gets it with its choices and confirms; the sender
// sees the ledger as DING_EVENTs and a CONFIRMED receipt.
func TestDingIsDeliveredConfirmedAndReported(t *testing.T) {
	n := start(t, socket.Config{})
	ana, bo := login(t, n, "ana"), login(t, n, "bo")
	id := ding(t, n, "inapp", "bo")

	var d *pb.Deliver
	bo.until("DELIVER", func(m proto.Message) bool { d, _ = m.(*pb.Deliver); return d != nil })
	if d.Id != id.String() || d.Kind != pb.Kind_DING || d.From != "ana" || string(d.Body) != "fire drill at 3" ||
		!slices.Equal(d.Choices, []string{"attend", "decline"}) {
		t.Fatalf("recipient got %v", d)
	}
	bo.send(pb.FrameType_ACK, &pb.Ack{Seq: d.Seq})
	bo.send(pb.FrameType_CONFIRM, &pb.Confirm{Ref: 7, Id: d.Id, Answer: 2})
	var confirmedOwn bool
	var first *pb.Ok
	skipped := bo.until("OK", func(m proto.Message) bool { first, _ = m.(*pb.Ok); return first != nil && first.Ref == 7 })
	if first.AlreadyConfirmed != nil {
		t.Fatalf("the first CONFIRM's OK says it was already confirmed: %v", first)
	}
	for _, m := range skipped {
		if r, ok := m.(*pb.Receipt); ok && r.State == pb.State_CONFIRMED {
			confirmedOwn = true
		}
	}
	if !confirmedOwn { // the stream may also bring it after the OK
		bo.until("own CONFIRMED receipt", func(m proto.Message) bool {
			r, _ := m.(*pb.Receipt)
			return r != nil && r.State == pb.State_CONFIRMED && r.User == "bo" && slices.Equal(r.Ids, []string{d.Id})
		})
	}

	// The sender's stream: the delivery and the confirmation as DING
	// events, each followed by the receipt event it caused.
	var events []*pb.DingEvent
	var receipt *pb.Receipt
	ana.until("CONFIRMED receipt", func(m proto.Message) bool {
		switch m := m.(type) {
		case *pb.DingEvent:
			events = append(events, m)
		case *pb.Receipt:
			if m.State == pb.State_CONFIRMED {
				receipt = m
				return true
			}
		}
		return false
	})
	if receipt.User != "bo" || !slices.Equal(receipt.Ids, []string{d.Id}) || receipt.AtMs == 0 {
		t.Fatalf("sender's receipt %v", receipt)
	}
	var got []string
	for _, e := range events {
		if e.Id != d.Id || e.Recipient != "bo" || e.Index != 0 || e.AtMs == 0 {
			t.Fatalf("sender's ding event %v", e)
		}
		got = append(got, e.Event)
		switch e.Event {
		case "delivered":
			if e.Device != "phone" {
				t.Fatalf("delivered event %v, want device phone", e)
			}
		case "confirmed":
			if e.Channel != "inapp" || e.Detail != "2 decline" {
				t.Fatalf("confirmed event %v, want inapp, 2 decline", e)
			}
		}
	}
	if !slices.Equal(got, []string{"delivered", "confirmed"}) {
		t.Fatalf("sender's ding events %v, want delivered, confirmed", got)
	}

	ana.send(pb.FrameType_RECEIPTS_QUERY, &pb.ReceiptsQuery{Ref: 8, Id: d.Id})
	var rs *pb.Receipts
	ana.until("RECEIPTS", func(m proto.Message) bool { rs, _ = m.(*pb.Receipts); return rs != nil })
	if len(rs.Recipients) != 1 {
		t.Fatalf("receipts %v", rs)
	}
	if r := rs.Recipients[0]; r.User != "bo" || r.State != pb.State_CONFIRMED || r.ConfirmedMs == 0 || r.ReadMs == 0 || r.DeliveredMs == 0 {
		t.Fatalf("receipt %v, want bo confirmed with every time set", r)
	}

	// Confirming again is answered OK and changes nothing: not the answer,
	// not the receipt, and no new stream entry for either side. The OK
	// says so, with the confirmation that stands (issue 12).
	heads := func() [2]uint64 {
		a, _ := n.Engine().Head("ana")
		b, _ := n.Engine().Head("bo")
		return [2]uint64{a, b}
	}
	before := heads()
	bo.send(pb.FrameType_CONFIRM, &pb.Confirm{Ref: 9, Id: d.Id, Answer: 1})
	var second *pb.Ok
	bo.until("second OK", func(m proto.Message) bool { second, _ = m.(*pb.Ok); return second != nil && second.Ref == 9 })
	if a := second.AlreadyConfirmed; a == nil || a.Answer != 2 || a.Choice != "decline" || a.Channel != "inapp" || a.AtMs != rs.Recipients[0].ConfirmedMs {
		t.Fatalf("second OK %v, want already confirmed with 2 decline in the app at %d", second, rs.Recipients[0].ConfirmedMs)
	}
	if after := heads(); after != before {
		t.Fatalf("a second CONFIRM moved the streams: %v -> %v", before, after)
	}
	ds, err := n.Engine().DingStatus(id)
	if err != nil || ds.Recipients[0].Answer != 2 || ds.Recipients[0].Choice != "decline" {
		t.Fatalf("after a second CONFIRM: %+v (%v)", ds, err)
	}
	ana.send(pb.FrameType_RECEIPTS_QUERY, &pb.ReceiptsQuery{Ref: 10, Id: d.Id})
	var again *pb.Receipts
	ana.until("RECEIPTS again", func(m proto.Message) bool { again, _ = m.(*pb.Receipts); return again != nil })
	if again.Recipients[0].ConfirmedMs != rs.Recipients[0].ConfirmedMs {
		t.Fatalf("the confirmation time moved: %d -> %d", rs.Recipients[0].ConfirmedMs, again.Recipients[0].ConfirmedMs)
	}
}

// TestDingRequestErrorsKeepTheConnection checks each refused CONFIRM (and
// a SUBMIT of kind DING) gets its precise, non-fatal code.
func TestDingRequestErrorsKeepTheConnection(t *testing.T) {
	n := start(t, socket.Config{})
	ana, bo, cy := login(t, n, "ana"), login(t, n, "bo"), login(t, n, "cy")
	id := ding(t, n, "inapp", "bo").String()
	ana.send(pb.FrameType_SUBMIT, &pb.Submit{Ref: 1, To: []string{"bo"}, Kind: pb.Kind_TEXT, Body: []byte("plain")})
	var ack *pb.SubmitAck
	ana.until("SUBMIT_ACK", func(m proto.Message) bool { ack, _ = m.(*pb.SubmitAck); return ack != nil })

	cases := []struct {
		name string
		conn *stream
		ft   pb.FrameType
		send proto.Message
		ref  uint64
		code pb.Code
	}{
		{"unknown id", bo, pb.FrameType_CONFIRM, &pb.Confirm{Ref: 11, Id: "01M8K8F2K5C97AM15Z94XS9NY4", Answer: 1}, 11, pb.Code_NOT_FOUND},
		{"malformed id", bo, pb.FrameType_CONFIRM, &pb.Confirm{Ref: 12, Id: "nope"}, 12, pb.Code_BAD_REQUEST},
		{"plain message", bo, pb.FrameType_CONFIRM, &pb.Confirm{Ref: 13, Id: ack.Id}, 13, pb.Code_NOT_DING},
		{"not a recipient", cy, pb.FrameType_CONFIRM, &pb.Confirm{Ref: 14, Id: id, Answer: 1}, 14, pb.Code_NOT_RECIPIENT},
		{"sender is not a recipient", ana, pb.FrameType_CONFIRM, &pb.Confirm{Ref: 15, Id: id, Answer: 1}, 15, pb.Code_NOT_RECIPIENT},
		{"answer 5 of 2", bo, pb.FrameType_CONFIRM, &pb.Confirm{Ref: 16, Id: id, Answer: 5}, 16, pb.Code_BAD_ANSWER},
		{"submit kind DING", ana, pb.FrameType_SUBMIT, &pb.Submit{Ref: 17, To: []string{"bo"}, Kind: pb.Kind_DING, Body: []byte("x")}, 17, pb.Code_BAD_REQUEST},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.conn.t = t
			c.conn.send(c.ft, c.send)
			e := c.conn.expect(&pb.Error{}).(*pb.Error)
			if e.Code != c.code || e.Fatal || e.Ref != c.ref {
				t.Fatalf("got %v (ref %d, fatal %v) %q, want non-fatal %v for ref %d", e.Code, e.Ref, e.Fatal, e.Detail, c.code, c.ref)
			}
		})
	}
	// Every connection still works, and bo can still confirm.
	for _, s := range []*stream{ana, bo, cy} {
		s.t = t
		s.send(pb.FrameType_PING, &pb.Ping{Nonce: 42})
		s.expect(&pb.Pong{})
	}
	bo.send(pb.FrameType_CONFIRM, &pb.Confirm{Ref: 18, Id: id, Answer: 1})
	bo.until("OK", func(m proto.Message) bool { ok, _ := m.(*pb.Ok); return ok != nil && ok.Ref == 18 })
	if h, _ := n.Engine().Head("bo"); h != 3 { // the DING, the plain message, bo's own CONFIRMED receipt
		t.Fatalf("bo's stream has %d entries, want 3: a refused request stored something", h)
	}
}

// TestReminderReachesTheRecipientsStream checks an in-app reminder step is
// a DING_EVENT in the recipient's stream (and in the sender's ledger).
func TestReminderReachesTheRecipientsStream(t *testing.T) {
	n, clock := startClocked(t)
	ana, bo := login(t, n, "ana"), login(t, n, "bo")
	id := ding(t, n, "inapp,inapp@1m until=confirmed", "bo").String()
	var d *pb.Deliver
	bo.until("DELIVER", func(m proto.Message) bool { d, _ = m.(*pb.Deliver); return d != nil })
	clock.Advance(time.Minute)

	var rem *pb.DingEvent
	bo.until("reminder", func(m proto.Message) bool { rem, _ = m.(*pb.DingEvent); return rem != nil })
	want := &pb.DingEvent{Seq: d.Seq + 1, Id: id, Recipient: "bo", Event: "reminder", Channel: "inapp", AtMs: clock.Now().UnixMilli()}
	if !proto.Equal(rem, want) {
		t.Fatalf("recipient got %v, want %v", rem, want)
	}
	ana.until("sender's reminder event", func(m proto.Message) bool {
		e, _ := m.(*pb.DingEvent)
		return e != nil && e.Event == "reminder" && e.Id == id && e.Recipient == "bo"
	})
}
