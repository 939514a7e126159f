package wire_test

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
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
	f.Add(wire.Encode(pb.FrameType_SUBMIT, &pb.Submit{
		Ref: 4, Kind: pb.Kind_TEXT, Body: []byte("psst"), Chat: "01J00000000000000000000CHT",
		ForwardOf: "01J0000000000000000000FWD0", QuoteOf: "01J0000000000000000000FWD0",
	}))
	f.Add(wire.Encode(pb.FrameType_DELIVER, &pb.Deliver{
		Seq: 3, Id: "01J00000000000000000000000", From: "anon-AAAAAA", To: []string{"anon-BBBBBB"}, Kind: pb.Kind_TEXT,
		Body: []byte("psst"), Chat: "01J00000000000000000000CHT", Level: 2, BurnAfterMs: 30000, NoCopy: true, NoForward: true,
		Watermark: "anon-BBBBBB",
	}))
	f.Add(wire.Encode(pb.FrameType_BURN, &pb.Burn{Seq: 4, Id: "01J00000000000000000000000"}))
	f.Add(wire.Encode(pb.FrameType_SECRET_EVENT, &pb.SecretEvent{
		Seq: 5, Chat: "01J00000000000000000000CHT", Event: "created", By: "anon-AAAAAA", Level: 3, BurnAfterMs: 5000,
		You: "anon-BBBBBB", Peer: "anon-AAAAAA", AtMs: 1_700_000_000_000,
	}))
	f.Add(wire.Encode(pb.FrameType_SECRET_CREATE, &pb.SecretCreate{Ref: 6, To: "bo", Level: 3, BurnAfterMs: 5000}))
	f.Add(wire.Encode(pb.FrameType_SCREENSHOT, &pb.Screenshot{Ref: 7, Chat: "01J00000000000000000000CHT", Id: "01J00000000000000000000000"}))
	f.Add(wire.Encode(pb.FrameType_PUSH_REGISTER, &pb.PushRegister{Ref: 8, Provider: "apns", Token: "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90", Topic: "com.example.ding", Sandbox: true}))
	f.Add(wire.Encode(pb.FrameType_PUSH_REGISTER, &pb.PushRegister{Ref: 9, Remove: true}))
	f.Add(wire.Encode(pb.FrameType_PUSH_OPENED, &pb.PushOpened{Ref: 10, Id: "01J00000000000000000000000"}))
	f.Add(wire.Encode(pb.FrameType_OK, &pb.Ok{Ref: 6, Id: "01J00000000000000000000CHT"}))
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
