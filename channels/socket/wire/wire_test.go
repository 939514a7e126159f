package wire_test

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/engine"
)

func TestRoundTrip(t *testing.T) {
	in := &pb.Submit{Ref: 9, To: []string{"bo"}, Kind: pb.Kind_TEXT, Body: []byte("hi"), ClientMsgId: "c"}
	b := wire.Encode(pb.FrameType_SUBMIT, in)
	n, ft, err := wire.ParseHeader(b, 1<<20)
	if err != nil || ft != pb.FrameType_SUBMIT || n != len(b)-4 {
		t.Fatalf("header: %d %v %v", n, ft, err)
	}
	out, err := wire.Decode(ft, b[wire.HeaderLen:])
	if err != nil || !proto.Equal(in, out) {
		t.Fatalf("decode: %v %v", out, err)
	}
}

// TestAppendEntry checks each stream entry kind becomes its own frame.
func TestAppendEntry(t *testing.T) {
	id, err := engine.ParseID("01J00000000000000000000000")
	if err != nil {
		t.Fatal(err)
	}
	at := time.UnixMilli(1_700_000_000_123)
	cases := []struct {
		name string
		in   engine.Entry
		ft   pb.FrameType
		want proto.Message
	}{
		{"text message", engine.Entry{Seq: 1, Kind: engine.EntryMessage, Message: &engine.Message{
			ID: id, From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("hi"), Created: at,
		}}, pb.FrameType_DELIVER, &pb.Deliver{
			Seq: 1, Id: id.String(), From: "ana", To: []string{"bo"}, Kind: pb.Kind_TEXT, Body: []byte("hi"), CreatedMs: at.UnixMilli(),
		}},
		{"ding message", engine.Entry{Seq: 2, Kind: engine.EntryMessage, Message: &engine.Message{
			ID: id, From: "ana", To: []string{"bo"}, Kind: engine.KindDing, Body: []byte("fire drill"), Created: at,
			Choices: []string{"attend", "decline"},
		}}, pb.FrameType_DELIVER, &pb.Deliver{
			Seq: 2, Id: id.String(), From: "ana", To: []string{"bo"}, Kind: pb.Kind_DING, Body: []byte("fire drill"),
			CreatedMs: at.UnixMilli(), Choices: []string{"attend", "decline"},
		}},
		{"confirmed receipt", engine.Entry{Seq: 3, Kind: engine.EntryReceipt, Receipt: engine.ReceiptEvent{
			IDs: []engine.ID{id}, User: "bo", State: engine.StateConfirmed, At: at,
		}}, pb.FrameType_RECEIPT, &pb.Receipt{
			Seq: 3, Ids: []string{id.String()}, User: "bo", State: pb.State_CONFIRMED, AtMs: at.UnixMilli(),
		}},
		{"ding event", engine.Entry{Seq: 4, Kind: engine.EntryDing, Ding: engine.DingEvent{
			ID: id, Index: 1, Recipient: "bo", Event: engine.LedgerConfirmed, Channel: engine.ChannelSMS,
			Detail: "2 decline", At: at,
		}}, pb.FrameType_DING_EVENT, &pb.DingEvent{
			Seq: 4, Id: id.String(), Index: 1, Recipient: "bo", Event: "confirmed", Channel: "sms",
			Detail: "2 decline", AtMs: at.UnixMilli(),
		}},
		{"ding event without channel", engine.Entry{Seq: 5, Kind: engine.EntryDing, Ding: engine.DingEvent{
			ID: id, Recipient: "+15550100", Event: engine.LedgerExhausted, At: at,
		}}, pb.FrameType_DING_EVENT, &pb.DingEvent{
			Seq: 5, Id: id.String(), Recipient: "+15550100", Event: "exhausted", AtMs: at.UnixMilli(),
		}},
		{"invalid UTF-8 from outside", engine.Entry{Seq: 6, Kind: engine.EntryDing, Ding: engine.DingEvent{
			ID: id, Recipient: "+15550100", Event: engine.LedgerReply, Channel: engine.ChannelSMS, Detail: "ok\xff", At: at,
		}}, pb.FrameType_DING_EVENT, &pb.DingEvent{
			Seq: 6, Id: id.String(), Recipient: "+15550100", Event: "reply", Channel: "sms", Detail: "ok\uFFFD", AtMs: at.UnixMilli(),
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := wire.AppendEntry(nil, c.in)
			n, ft, err := wire.ParseHeader(b, 1<<20)
			if err != nil || ft != c.ft || n != len(b)-4 {
				t.Fatalf("header: %d %v %v, want type %v", n, ft, err, c.ft)
			}
			got, err := wire.Decode(ft, b[wire.HeaderLen:])
			if err != nil || !proto.Equal(got, c.want) {
				t.Fatalf("decoded %v (%v), want %v", got, err, c.want)
			}
		})
	}
}

func TestHeaderAndPayloadErrors(t *testing.T) {
	big := wire.Encode(pb.FrameType_SUBMIT, &pb.Submit{Body: make([]byte, 100)})
	cases := []struct {
		name string
		fn   func() error
		want error
	}{
		{"too large", func() error { _, _, err := wire.ParseHeader(big, 50); return err }, wire.ErrTooLarge},
		{"empty", func() error { _, _, err := wire.ParseHeader([]byte{0, 0, 0, 0, 1}, 50); return err }, wire.ErrEmpty},
		{"unknown type", func() error { _, err := wire.Decode(200, nil); return err }, wire.ErrUnknownType},
		{"garbage payload", func() error { _, err := wire.Decode(pb.FrameType_SUBMIT, []byte{0xff, 0xff, 0xff}); return err }, wire.ErrBadPayload},
	}
	for _, c := range cases {
		if err := c.fn(); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// FuzzDecode feeds arbitrary bytes through the same steps the server takes.
func FuzzDecode(f *testing.F) {
	f.Add(wire.Encode(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: "t", Device: "d"}))
	f.Add(wire.Encode(pb.FrameType_SUBMIT, &pb.Submit{Ref: 1, To: []string{"a", "b"}, Body: []byte("x")}))
	f.Add(wire.Encode(pb.FrameType_ACK, &pb.Ack{Seq: 1 << 40}))
	f.Add(wire.Encode(pb.FrameType_READ, &pb.Read{Ids: []string{"01J0000000000000000000000"}}))
	f.Add(wire.Encode(pb.FrameType_CONFIRM, &pb.Confirm{Ref: 3, Id: "01J00000000000000000000000", Answer: 2}))
	f.Add(wire.Encode(pb.FrameType_DING_EVENT, &pb.DingEvent{
		Seq: 9, Id: "01J00000000000000000000000", Index: 1, Recipient: "+15550100", Event: "call_initiated",
		Channel: "voice", Detail: "CA123", AtMs: 1_700_000_000_000,
	}))
	f.Add(wire.Encode(pb.FrameType_DELIVER, &pb.Deliver{
		Seq: 2, Id: "01J00000000000000000000000", From: "ana", To: []string{"bo"}, Kind: pb.Kind_DING,
		Body: []byte("fire drill"), Choices: []string{"attend", "decline"},
	}))
	f.Add([]byte{0, 0, 0, 1, 10})
	f.Fuzz(func(t *testing.T, b []byte) {
		for len(b) >= wire.HeaderLen {
			n, ft, err := wire.ParseHeader(b, 1<<16)
			if err != nil {
				return
			}
			if len(b) < 4+n {
				return
			}
			m, err := wire.Decode(ft, b[wire.HeaderLen:4+n])
			if err == nil {
				// A decoded frame re-encodes to something that decodes equal.
				again := wire.Encode(ft, m)
				m2, err := wire.Decode(ft, again[wire.HeaderLen:])
				if err != nil || !proto.Equal(m, m2) {
					t.Fatalf("re-decode: %v", err)
				}
			}
			b = b[4+n:]
		}
	})
}

// A DELIVER built from the shared tail decodes exactly as one marshalled
// whole, for every recipient's seq.
func TestDeliverTailMatchesFullMarshal(t *testing.T) {
	m := &engine.Message{ID: engine.ID{1, 2, 3}, From: "ana", To: []string{"all"}, Kind: engine.KindAnnouncement,
		Body: []byte("office closed"), Created: time.UnixMilli(1700000000000), Choices: []string{"ok"}, Flags: engine.FlagConfirm}
	other := &engine.Message{ID: engine.ID{9}, From: "bo", To: []string{"cy"}, Kind: engine.KindText, Body: []byte("hi")}
	for _, seq := range []uint64{0, 1, 127, 128, 1 << 40} {
		for _, msg := range []*engine.Message{m, m, other, m} {
			got := wire.AppendEntry(nil, engine.Entry{Seq: seq, Kind: engine.EntryMessage, Message: msg})
			want := wire.Encode(pb.FrameType_DELIVER, &pb.Deliver{
				Seq: seq, Id: msg.ID.String(), From: msg.From, To: msg.To, Kind: pb.Kind(msg.Kind), Body: msg.Body,
				CreatedMs: msg.Created.UnixMilli(), Choices: msg.Choices, Confirm: msg.Flags&engine.FlagConfirm != 0,
			})
			gd, err := wire.Decode(pb.FrameType_DELIVER, got[wire.HeaderLen:])
			if err != nil {
				t.Fatal(err)
			}
			wd, _ := wire.Decode(pb.FrameType_DELIVER, want[wire.HeaderLen:])
			if !proto.Equal(gd, wd) || len(got) != len(want) {
				t.Fatalf("seq %d: %v\\nwant %v", seq, gd, wd)
			}
		}
	}
}

// BenchmarkDeliverOneMessageToMany: encoding one message for 10,000
// recipients (each frame differs only in its seq). Baseline: a full
// protobuf marshal per recipient, as before the shared tail.
func BenchmarkDeliverOneMessageToMany(b *testing.B) {
	m := &engine.Message{ID: engine.ID{1}, From: "admin", To: []string{"all"}, Kind: engine.KindAnnouncement,
		Body: make([]byte, 256), Created: time.UnixMilli(1700000000000)}
	buf := make([]byte, 0, 512)
	b.Run("baseline=marshal-each", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for seq := uint64(1); seq <= 10000; seq++ {
				buf = wire.Append(buf[:0], pb.FrameType_DELIVER, &pb.Deliver{Seq: seq, Id: m.ID.String(), From: m.From, To: m.To,
					Kind: pb.Kind(m.Kind), Body: m.Body, CreatedMs: m.Created.UnixMilli()})
			}
		}
	})
	b.Run("shared-tail", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for seq := uint64(1); seq <= 10000; seq++ {
				buf = wire.AppendEntry(buf[:0], engine.Entry{Seq: seq, Kind: engine.EntryMessage, Message: m})
			}
		}
	})
}
