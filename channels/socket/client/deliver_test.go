package client

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// fromProto is the Message the generic decoder's pb.Deliver stands for
// (what the client built before decodeDeliver).
func fromProto(d *pb.Deliver) *Message {
	return &Message{
		ID: d.Id, From: d.From, To: d.To, Kind: d.Kind, Body: d.Body, Created: time.UnixMilli(d.CreatedMs),
		Choices: d.Choices, Confirm: d.Confirm, ForwardOf: d.ForwardOf, QuoteOf: d.QuoteOf,
		Chat: d.Chat, Level: int(d.Level), BurnAfter: time.Duration(d.BurnAfterMs) * time.Millisecond,
		NoCopy: d.NoCopy, NoForward: d.NoForward, Watermark: d.Watermark,
	}
}

func TestDecodeDeliverMatchesProto(t *testing.T) {
	cases := []*pb.Deliver{
		{Seq: 1, Id: "01J00000000000000000000000", From: "ana", To: []string{"bo"}, Kind: pb.Kind_TEXT, Body: []byte("hi"), CreatedMs: 1700000000000},
		{Seq: 1 << 40, Id: "01J00000000000000000000000", From: "ana", To: []string{"bo", "cy"}, Kind: pb.Kind_DING, Body: []byte("fire"),
			CreatedMs: 1700000000000, Choices: []string{"attend", "decline"}, Confirm: true, ForwardOf: "01J0000000000000000000FWD0", QuoteOf: "01J0000000000000000000FWD1"},
		{Seq: 3, Id: "01J00000000000000000000000", From: "anon-AAAAAA", To: []string{"anon-BBBBBB"}, Kind: pb.Kind_TEXT, Body: []byte("psst"),
			Chat: "01J00000000000000000000CHT", Level: 2, BurnAfterMs: 30000, NoCopy: true, NoForward: true, Watermark: "anon-BBBBBB"},
		{Seq: 4, Kind: pb.Kind(-1), CreatedMs: -5},
		{},
	}
	for _, d := range cases {
		b, err := proto.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		seq, got, err := decodeDeliver(b)
		if err != nil || seq != d.Seq || !reflect.DeepEqual(got, fromProto(d)) {
			t.Fatalf("decodeDeliver(%v) = %d %+v %v;\nwant %+v", d, seq, got, err, fromProto(d))
		}
	}
}

func TestDecodeDeliverRefusesWhatProtoRefuses(t *testing.T) {
	good, _ := proto.Marshal(&pb.Deliver{Seq: 1, Id: "x", From: "ana"})
	for name, b := range map[string][]byte{
		"truncated":      good[:len(good)-1],
		"bad tag":        {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		"non-UTF-8 from": append(append([]byte{}, good...), 0x1a, 2, 0xff, 0xfe),
	} {
		if _, _, err := decodeDeliver(b); !errors.Is(err, wire.ErrBadPayload) {
			t.Errorf("%s: err = %v, want ErrBadPayload", name, err)
		}
		if err := proto.Unmarshal(b, &pb.Deliver{}); err == nil {
			t.Errorf("%s: proto accepts it; the test case is wrong", name)
		}
	}
}

// FuzzDecodeDeliver: on any payload, decodeDeliver and the generic
// decoder agree on whether it decodes and, if it does, on what it says.
func FuzzDecodeDeliver(f *testing.F) {
	for _, d := range []*pb.Deliver{
		{Seq: 1, Id: "01J00000000000000000000000", From: "ana", To: []string{"bo"}, Kind: pb.Kind_TEXT, Body: []byte("hi"), CreatedMs: 1700000000000},
		{Seq: 3, Chat: "c", Level: 3, BurnAfterMs: 5000, NoCopy: true, NoForward: true, Watermark: "w", Choices: []string{"a", ""}},
	} {
		b, _ := proto.Marshal(d)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, got, err := decodeDeliver(append([]byte(nil), b...))
		var d pb.Deliver
		perr := proto.Unmarshal(b, &d)
		if (err == nil) != (perr == nil) {
			t.Fatalf("decodeDeliver err %v, proto err %v", err, perr)
		}
		if err == nil && (seq != d.Seq || !reflect.DeepEqual(got, fromProto(&d))) {
			t.Fatalf("decodeDeliver = %d %+v, proto %+v", seq, got, fromProto(&d))
		}
	})
}
