package session

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/engine"
)

// Encoder turns stream entries into frames: DELIVER, RECEIPT, DING_EVENT,
// BURN and SECRET_EVENT. Its AppendEntry is the hub's Encode function.
// It is safe for concurrent use (the publish loop and the hub's catch-up
// workers call it at once). The zero value is ready.
//
// A message to many (an announcement) is delivered entry after entry with
// the same *engine.Message, so the Encoder keeps the DELIVER payload of
// the last message it encoded, without the seq: each recipient's frame is
// the header, its seq and that shared tail (encode once, write many).
type Encoder struct {
	last atomic.Pointer[deliverTail]
}

// deliverTail is a message's DELIVER payload without its seq: the same for
// every recipient.
type deliverTail struct {
	msg  *engine.Message
	tail []byte
}

// AppendEntry appends the frame for a stream entry to dst. It panics on an
// entry kind it does not know: sending one as another kind would hand
// clients a wrong entry at a valid seq.
//
// Strings that come from outside the engine's name rules (a DING's
// choices, an event's detail such as an SMS reply or a provider's status
// text) are made valid UTF-8 here, invalid bytes becoming U+FFFD: proto3
// refuses to encode anything else, and one bad reply must not stop a
// stream.
func (enc *Encoder) AppendEntry(dst []byte, e engine.Entry) []byte {
	switch e.Kind {
	case engine.EntryMessage:
		return enc.appendDeliver(dst, e.Seq, e.Message)
	case engine.EntryReceipt:
		r := e.Receipt
		ids := make([]string, len(r.IDs))
		for i, id := range r.IDs {
			ids[i] = id.String()
		}
		return wire.Append(dst, pb.FrameType_RECEIPT, &pb.Receipt{
			Seq: e.Seq, Ids: ids, User: r.User, State: pb.State(r.State), AtMs: r.At.UnixMilli(),
		})
	case engine.EntryDing:
		d := e.Ding
		var ch string
		if d.Channel != 0 {
			ch = d.Channel.String()
		}
		return wire.Append(dst, pb.FrameType_DING_EVENT, &pb.DingEvent{
			Seq: e.Seq, Id: d.ID.String(), Index: uint32(d.Index), Recipient: d.Recipient,
			Event: validUTF8(string(d.Event)), Channel: ch, Device: d.Device, Detail: validUTF8(d.Detail), AtMs: d.At.UnixMilli(),
		})
	case engine.EntryBurn:
		// The id and nothing else: the message is gone, and a burn must
		// not bring any of it back.
		return wire.Append(dst, pb.FrameType_BURN, &pb.Burn{Seq: e.Seq, Id: e.Burn.String()})
	case engine.EntrySecret:
		v := e.Secret
		return wire.Append(dst, pb.FrameType_SECRET_EVENT, &pb.SecretEvent{
			Seq: e.Seq, Chat: v.Chat.String(), Event: validUTF8(v.Event), Id: idOrEmpty(v.ID), By: v.By,
			Level: uint32(v.Level), BurnAfterMs: v.BurnAfter.Milliseconds(), You: v.You, Peer: v.Peer, AtMs: v.At.UnixMilli(),
		})
	}
	panic(fmt.Sprintf("session: stream entry %d of unknown kind %d", e.Seq, e.Kind))
}

// appendDeliver appends the DELIVER frame of m at seq. Protobuf decoders
// take fields in any order; seq (field 1) is written first, then the tail,
// which is what proto.Marshal writes for fields 2 and up.
//
// A secret message is marshalled whole, seq included, and never cached:
// it has one recipient, so there is nothing to share, and the cache would
// keep its plaintext (and the message) alive after it burns, until the
// next message came along.
func (enc *Encoder) appendDeliver(dst []byte, seq uint64, m *engine.Message) []byte {
	if isSecret(m) {
		d := deliverOf(m)
		d.Seq = seq
		return wire.Append(dst, pb.FrameType_DELIVER, d)
	}
	t := enc.last.Load()
	if t == nil || t.msg != m {
		tail, err := proto.MarshalOptions{}.Marshal(deliverOf(m))
		if err != nil {
			panic(fmt.Sprintf("session: marshal DELIVER: %v", err))
		}
		t = &deliverTail{m, tail}
		enc.last.Store(t)
	}
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, byte(pb.FrameType_DELIVER))
	if seq != 0 {
		dst = append(dst, 0x08) // field 1 (seq), varint
		dst = binary.AppendUvarint(dst, seq)
	}
	dst = append(dst, t.tail...)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

func isSecret(m *engine.Message) bool { return m.Chat != (engine.ID{}) || m.Secret != nil }

// deliverOf is m's DELIVER payload without the seq. A secret message
// (m.Chat set) reaches here only as the engine's masked copy, whose From
// and To are pseudonyms and whose Secret says the chat's terms; every
// secret message is marked no_copy and no_forward.
func deliverOf(m *engine.Message) *pb.Deliver {
	d := &pb.Deliver{
		Id: m.ID.String(), From: m.From, To: m.To, Kind: pb.Kind(m.Kind),
		Body: m.Body, CreatedMs: m.Created.UnixMilli(), Choices: validUTF8s(m.Choices),
		Confirm:   m.Flags&engine.FlagConfirm != 0,
		ForwardOf: idOrEmpty(m.Forward), QuoteOf: idOrEmpty(m.Quote),
	}
	if isSecret(m) {
		d.Chat = idOrEmpty(m.Chat)
		d.NoCopy, d.NoForward = true, true
	}
	if si := m.Secret; si != nil {
		d.Level = uint32(si.Level)
		d.BurnAfterMs = si.BurnAfter.Milliseconds()
		d.Watermark = si.Watermark
	}
	return d
}

// idOrEmpty is id's text, or "" for the zero id (none).
func idOrEmpty(id engine.ID) string {
	if id == (engine.ID{}) {
		return ""
	}
	return id.String()
}

func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

func validUTF8s(ss []string) []string {
	for i, s := range ss {
		if !utf8.ValidString(s) {
			out := slices.Clone(ss) // ss belongs to a shared message
			for j := i; j < len(out); j++ {
				out[j] = validUTF8(out[j])
			}
			return out
		}
	}
	return ss
}
