package session_test

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/engine"
)

// TestAppendEntry checks each stream entry kind becomes its own frame.
func TestAppendEntry(t *testing.T) {
	var enc session.Encoder
	id, err := engine.ParseID("01J00000000000000000000000")
	if err != nil {
		t.Fatal(err)
	}
	at := time.UnixMilli(1_700_000_000_123)
	chat, err := engine.ParseID("01J00000000000000000000CHT")
	if err != nil {
		t.Fatal(err)
	}
	orig, err := engine.ParseID("01J0000000000000000000FWD0")
	if err != nil {
		t.Fatal(err)
	}
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
		{"confirmed receipt", engine.Entry{Seq: 3, Kind: engine.EntryReceipt, Receipt: &engine.ReceiptEvent{
			IDs: []engine.ID{id}, User: "bo", State: engine.StateConfirmed, At: at,
		}}, pb.FrameType_RECEIPT, &pb.Receipt{
			Seq: 3, Ids: []string{id.String()}, User: "bo", State: pb.State_CONFIRMED, AtMs: at.UnixMilli(),
		}},
		{"ding event", engine.Entry{Seq: 4, Kind: engine.EntryDing, Ding: &engine.DingEvent{
			ID: id, Index: 1, Recipient: "bo", Event: engine.LedgerConfirmed, Channel: engine.ChannelSMS,
			Detail: "2 decline", At: at,
		}}, pb.FrameType_DING_EVENT, &pb.DingEvent{
			Seq: 4, Id: id.String(), Index: 1, Recipient: "bo", Event: "confirmed", Channel: "sms",
			Detail: "2 decline", AtMs: at.UnixMilli(),
		}},
		{"ding event without channel", engine.Entry{Seq: 5, Kind: engine.EntryDing, Ding: &engine.DingEvent{
			ID: id, Recipient: "+15550100", Event: engine.LedgerExhausted, At: at,
		}}, pb.FrameType_DING_EVENT, &pb.DingEvent{
			Seq: 5, Id: id.String(), Recipient: "+15550100", Event: "exhausted", AtMs: at.UnixMilli(),
		}},
		{"forward and quote", engine.Entry{Seq: 7, Kind: engine.EntryMessage, Message: &engine.Message{
			ID: id, From: "bo", To: []string{"cy"}, Kind: engine.KindText, Body: []byte("fyi"), Created: at, Forward: orig, Quote: orig,
		}}, pb.FrameType_DELIVER, &pb.Deliver{
			Seq: 7, Id: id.String(), From: "bo", To: []string{"cy"}, Kind: pb.Kind_TEXT, Body: []byte("fyi"), CreatedMs: at.UnixMilli(),
			ForwardOf: orig.String(), QuoteOf: orig.String(),
		}},
		// The engine hands out masked copies of secret messages: pseudonyms
		// in From and To, the chat's terms in Secret.
		{"secret message, level 2", engine.Entry{Seq: 8, Kind: engine.EntryMessage, Message: &engine.Message{
			ID: id, From: "anon-AAAAAA", To: []string{"anon-BBBBBB"}, Kind: engine.KindText, Body: []byte("psst"), Created: at,
			Chat: chat, Secret: &engine.SecretInfo{Level: engine.Level2, BurnAfter: 30 * time.Second, Watermark: "anon-BBBBBB"},
		}}, pb.FrameType_DELIVER, &pb.Deliver{
			Seq: 8, Id: id.String(), From: "anon-AAAAAA", To: []string{"anon-BBBBBB"}, Kind: pb.Kind_TEXT, Body: []byte("psst"),
			CreatedMs: at.UnixMilli(), Chat: chat.String(), Level: 2, BurnAfterMs: 30000, NoCopy: true, NoForward: true,
			Watermark: "anon-BBBBBB",
		}},
		{"secret message, level 1", engine.Entry{Seq: 9, Kind: engine.EntryMessage, Message: &engine.Message{
			ID: id, From: "anon-AAAAAA", To: []string{"anon-BBBBBB"}, Kind: engine.KindData, Body: []byte{1}, Created: at,
			Chat: chat, Secret: &engine.SecretInfo{Level: engine.Level1, BurnAfter: time.Minute},
		}}, pb.FrameType_DELIVER, &pb.Deliver{
			Seq: 9, Id: id.String(), From: "anon-AAAAAA", To: []string{"anon-BBBBBB"}, Kind: pb.Kind_DATA, Body: []byte{1},
			CreatedMs: at.UnixMilli(), Chat: chat.String(), Level: 1, BurnAfterMs: 60000, NoCopy: true, NoForward: true,
		}},
		{"burn", engine.Entry{Seq: 10, Kind: engine.EntryBurn, Burn: id}, pb.FrameType_BURN, &pb.Burn{Seq: 10, Id: id.String()}},
		{"chat created", engine.Entry{Seq: 11, Kind: engine.EntrySecret, Secret: &engine.SecretEvent{
			Chat: chat, Event: "created", By: "anon-AAAAAA", Level: engine.Level3, BurnAfter: 5 * time.Second,
			You: "anon-BBBBBB", Peer: "anon-AAAAAA", At: at,
		}}, pb.FrameType_SECRET_EVENT, &pb.SecretEvent{
			Seq: 11, Chat: chat.String(), Event: "created", By: "anon-AAAAAA", Level: 3, BurnAfterMs: 5000,
			You: "anon-BBBBBB", Peer: "anon-AAAAAA", AtMs: at.UnixMilli(),
		}},
		{"screenshot of a message", engine.Entry{Seq: 12, Kind: engine.EntrySecret, Secret: &engine.SecretEvent{
			Chat: chat, Event: "screenshot", ID: id, By: "anon-BBBBBB", Level: engine.Level3, BurnAfter: 5 * time.Second, At: at,
		}}, pb.FrameType_SECRET_EVENT, &pb.SecretEvent{
			Seq: 12, Chat: chat.String(), Event: "screenshot", Id: id.String(), By: "anon-BBBBBB", Level: 3, BurnAfterMs: 5000, AtMs: at.UnixMilli(),
		}},
		{"screenshot without a message", engine.Entry{Seq: 13, Kind: engine.EntrySecret, Secret: &engine.SecretEvent{
			Chat: chat, Event: "screenshot", By: "anon-BBBBBB", Level: engine.Level3, BurnAfter: 5 * time.Second, At: at,
		}}, pb.FrameType_SECRET_EVENT, &pb.SecretEvent{
			Seq: 13, Chat: chat.String(), Event: "screenshot", By: "anon-BBBBBB", Level: 3, BurnAfterMs: 5000, AtMs: at.UnixMilli(),
		}},
		{"invalid UTF-8 from outside", engine.Entry{Seq: 6, Kind: engine.EntryDing, Ding: &engine.DingEvent{
			ID: id, Recipient: "+15550100", Event: engine.LedgerReply, Channel: engine.ChannelSMS, Detail: "ok\xff", At: at,
		}}, pb.FrameType_DING_EVENT, &pb.DingEvent{
			Seq: 6, Id: id.String(), Recipient: "+15550100", Event: "reply", Channel: "sms", Detail: "ok\uFFFD", AtMs: at.UnixMilli(),
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := enc.AppendEntry(nil, c.in)
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

// A DELIVER built from the shared tail decodes exactly as one marshalled
// whole, for every recipient's seq.
func TestDeliverTailMatchesFullMarshal(t *testing.T) {
	var enc session.Encoder
	m := &engine.Message{ID: engine.ID{1, 2, 3}, From: "ana", To: []string{"all"}, Kind: engine.KindAnnouncement,
		Body: []byte("office closed"), Created: time.UnixMilli(1700000000000), Choices: []string{"ok"}, Flags: engine.FlagConfirm}
	other := &engine.Message{ID: engine.ID{9}, From: "bo", To: []string{"cy"}, Kind: engine.KindText, Body: []byte("hi"),
		Forward: engine.ID{1}, Quote: engine.ID{2}}
	secret := &engine.Message{ID: engine.ID{7}, From: "anon-AAAAAA", To: []string{"anon-BBBBBB"}, Kind: engine.KindText,
		Body: []byte("psst"), Chat: engine.ID{8}, Secret: &engine.SecretInfo{Level: engine.Level2, BurnAfter: time.Minute, Watermark: "anon-BBBBBB"}}
	idOr := func(id engine.ID) string {
		if id == (engine.ID{}) {
			return ""
		}
		return id.String()
	}
	for _, seq := range []uint64{0, 1, 127, 128, 1 << 40} {
		for _, msg := range []*engine.Message{m, m, other, secret, secret, m} {
			got := enc.AppendEntry(nil, engine.Entry{Seq: seq, Kind: engine.EntryMessage, Message: msg})
			d := &pb.Deliver{
				Seq: seq, Id: msg.ID.String(), From: msg.From, To: msg.To, Kind: pb.Kind(msg.Kind), Body: msg.Body,
				CreatedMs: msg.Created.UnixMilli(), Choices: msg.Choices, Confirm: msg.Flags&engine.FlagConfirm != 0,
				ForwardOf: idOr(msg.Forward), QuoteOf: idOr(msg.Quote), Chat: idOr(msg.Chat),
			}
			if si := msg.Secret; si != nil {
				d.Level, d.BurnAfterMs, d.Watermark = uint32(si.Level), si.BurnAfter.Milliseconds(), si.Watermark
				d.NoCopy, d.NoForward = true, true
			}
			want := wire.Encode(pb.FrameType_DELIVER, d)
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

// TestSecretMessageIsNotCached: the shared tail must not keep a secret
// message (its plaintext) alive after it was encoded.
func TestSecretMessageIsNotCached(t *testing.T) {
	var enc session.Encoder
	plain := &engine.Message{ID: engine.ID{1}, From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("hi")}
	for seq := uint64(1); seq <= 2; seq++ { // one to many: its tail is cached
		enc.AppendEntry(nil, engine.Entry{Seq: seq, Kind: engine.EntryMessage, Message: plain})
	}
	if enc.CachedMessage() != plain {
		t.Fatal("a message encoded twice in a row is not cached")
	}
	secret := &engine.Message{ID: engine.ID{2}, From: "anon-AAAAAA", To: []string{"anon-BBBBBB"}, Kind: engine.KindText,
		Body: []byte("psst"), Chat: engine.ID{3}, Secret: &engine.SecretInfo{Level: engine.Level1, BurnAfter: time.Minute}}
	for seq := uint64(3); seq <= 4; seq++ {
		enc.AppendEntry(nil, engine.Entry{Seq: seq, Kind: engine.EntryMessage, Message: secret})
	}
	if enc.CachedMessage() != plain || enc.SeenMessage() == secret {
		t.Fatal("the encoder holds on to the secret message")
	}
}

// TestEncodersKeepTheirOwnCache: the shared tail is state of one
// Encoder, so two servers in one process (two hubs) do not interfere.
func TestEncodersKeepTheirOwnCache(t *testing.T) {
	a := &engine.Message{ID: engine.ID{1}, From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("a")}
	b := &engine.Message{ID: engine.ID{2}, From: "bo", To: []string{"ana"}, Kind: engine.KindText, Body: []byte("b")}
	var one, two session.Encoder
	for seq := uint64(1); seq <= 2; seq++ {
		one.AppendEntry(nil, engine.Entry{Seq: seq, Kind: engine.EntryMessage, Message: a})
		two.AppendEntry(nil, engine.Entry{Seq: seq, Kind: engine.EntryMessage, Message: b})
	}
	if one.CachedMessage() != a || two.CachedMessage() != b {
		t.Fatal("one encoder's cache changed with the other's work")
	}
}

// TestEncoderConcurrentUse: the hub calls Encode from its publish
// goroutine and its catch-up workers at once, with messages to many and
// messages to one interleaved. Every frame must still be its own entry's
// (and -race must find nothing).
func TestEncoderConcurrentUse(t *testing.T) {
	msgs := make([]*engine.Message, 4)
	for i := range msgs {
		msgs[i] = &engine.Message{ID: engine.ID{byte(i + 1)}, From: "ana", To: []string{"bo"}, Kind: engine.KindText,
			Body: []byte{byte(i)}, Created: time.UnixMilli(1700000000000)}
	}
	var enc session.Encoder
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				m := msgs[(w+i/(w+1))%len(msgs)] // worker w sends each message w+1 times in a row
				seq := uint64(i + 1)
				b := enc.AppendEntry(nil, engine.Entry{Seq: seq, Kind: engine.EntryMessage, Message: m})
				got, err := wire.Decode(pb.FrameType_DELIVER, b[wire.HeaderLen:])
				d, _ := got.(*pb.Deliver)
				if err != nil || d.Seq != seq || d.Id != m.ID.String() || !bytes.Equal(d.Body, m.Body) {
					errs <- fmt.Errorf("frame %d of worker %d: %v %v, want message %s", i, w, d, err, m.ID)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
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
		var enc session.Encoder
		b.ReportAllocs()
		for b.Loop() {
			for seq := uint64(1); seq <= 10000; seq++ {
				buf = enc.AppendEntry(buf[:0], engine.Entry{Seq: seq, Kind: engine.EntryMessage, Message: m})
			}
		}
	})
}

// FuzzDeliver: whatever a message holds (names, body, choices with any
// bytes, flags, references, secret terms), its hand-written DELIVER
// decodes, and to what proto.Marshal would have written.
func FuzzDeliver(f *testing.F) {
	f.Add(uint64(1), "ana", "bo", []byte("hi"), "attend", uint32(0), int64(1700000000000), false, byte(0))
	f.Add(uint64(1<<40), "anon-AAAAAA", "anon-BBBBBB", []byte("psst"), "", uint32(3), int64(-5), true, byte(7))
	f.Add(uint64(0), "", "", []byte{}, "ok\xff", uint32(1), int64(0), true, byte(2))
	f.Fuzz(func(t *testing.T, seq uint64, from, to string, body []byte, choice string, level uint32, created int64, confirm bool, refs byte) {
		m := &engine.Message{ID: engine.ID{byte(seq), 9}, From: from, To: []string{to}, Kind: engine.KindDing, Body: body,
			Created: time.UnixMilli(created), Choices: []string{choice}}
		if confirm {
			m.Flags = engine.FlagConfirm
		}
		if refs&1 != 0 {
			m.Forward = engine.ID{1}
		}
		if refs&2 != 0 {
			m.Quote = engine.ID{2}
		}
		if refs&4 != 0 {
			m.Chat = engine.ID{3}
			m.Secret = &engine.SecretInfo{Level: engine.Level(level % 4), BurnAfter: time.Duration(created) * time.Millisecond, Watermark: to}
		}
		var enc session.Encoder
		got := enc.AppendEntry(nil, engine.Entry{Seq: seq, Kind: engine.EntryMessage, Message: m})
		n, ft, err := wire.ParseHeader(got, 1<<30)
		if err != nil || ft != pb.FrameType_DELIVER || n != len(got)-4 {
			t.Fatalf("header: %d %v %v", n, ft, err)
		}
		if _, err := wire.Decode(ft, got[wire.HeaderLen:]); err != nil && utf8.ValidString(from) && utf8.ValidString(to) {
			t.Fatalf("a DELIVER with valid names does not decode: %v", err)
		}
	})
}

// BenchmarkDeliverDistinct: encoding the DELIVERs of a catch-up, each a
// different 256-byte message (nothing shared). Baseline: proto.Marshal
// of each message built as a pb.Deliver, as before the hand-written
// encoder.
func BenchmarkDeliverDistinct(b *testing.B) {
	msgs := make([]*engine.Message, 512)
	for i := range msgs {
		msgs[i] = &engine.Message{ID: engine.ID{byte(i), byte(i >> 8), 7}, From: "ana", To: []string{"bo"}, Kind: engine.KindText,
			Body: make([]byte, 256), Created: time.UnixMilli(1700000000000 + int64(i))}
	}
	buf := make([]byte, 0, 512*400)
	b.Run("baseline=proto.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			buf = buf[:0]
			for i, m := range msgs {
				buf = wire.Append(buf, pb.FrameType_DELIVER, &pb.Deliver{Seq: uint64(i + 1), Id: m.ID.String(), From: m.From, To: m.To,
					Kind: pb.Kind(m.Kind), Body: m.Body, CreatedMs: m.Created.UnixMilli()})
			}
		}
	})
	b.Run("encoder", func(b *testing.B) {
		var enc session.Encoder
		b.ReportAllocs()
		for b.Loop() {
			buf = buf[:0]
			for i, m := range msgs {
				buf = enc.AppendEntry(buf, engine.Entry{Seq: uint64(i + 1), Kind: engine.EntryMessage, Message: m})
			}
		}
	})
}
