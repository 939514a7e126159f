package session

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

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
	last atomic.Pointer[deliverTail]    // the cached tail
	seen atomic.Pointer[engine.Message] // the last message encoded: its tail is cached when it comes again
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

// appendDeliver appends the DELIVER frame of m at seq: the header, the seq
// (field 1) and the message's fields (appendDeliverTail), which decoders
// take in any order. A message to many shares one encoded tail; a secret
// message is never cached: it has one recipient, so there is nothing to
// share, and the cache would keep its plaintext (and the message) alive
// after it burns, until the next message came along.
func (enc *Encoder) appendDeliver(dst []byte, seq uint64, m *engine.Message) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, byte(pb.FrameType_DELIVER))
	if seq != 0 {
		dst = protowire.AppendTag(dst, 1, protowire.VarintType)
		dst = protowire.AppendVarint(dst, seq)
	}
	switch t := enc.last.Load(); {
	case isSecret(m):
		dst = appendDeliverTail(dst, m)
	case t != nil && t.msg == m:
		dst = append(dst, t.tail...)
	case enc.seen.Load() == m:
		// The same message again: one to many. Cache its tail.
		t = &deliverTail{m, appendDeliverTail(nil, m)}
		enc.last.Store(t)
		dst = append(dst, t.tail...)
	default:
		// Each message once (a catch-up): encode in place.
		enc.seen.Store(m)
		dst = appendDeliverTail(dst, m)
	}
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

// appendDeliverTail appends m's DELIVER fields 2 and up, as proto3 encodes
// them (a zero value is left out), written by hand: one DELIVER per
// message of a catch-up, and proto.Marshal of a built message cost a
// microsecond and several allocations each. TestDeliverTailMatchesFullMarshal
// holds it to what proto.Marshal writes for the same message.
//
// A secret message (m.Chat set) reaches here only as the engine's masked
// copy, whose From and To are pseudonyms and whose Secret says the chat's
// terms; every secret message is marked no_copy and no_forward.
func appendDeliverTail(dst []byte, m *engine.Message) []byte {
	dst = protowire.AppendTag(dst, 2, protowire.BytesType)
	dst = protowire.AppendVarint(dst, 26)
	dst = m.ID.Append(dst)
	dst = appendString(dst, 3, m.From)
	for _, t := range m.To {
		dst = protowire.AppendTag(dst, 4, protowire.BytesType)
		dst = protowire.AppendString(dst, t) // may be empty: repeated fields keep every element
	}
	dst = appendVarint(dst, 5, uint64(m.Kind))
	if len(m.Body) > 0 {
		dst = protowire.AppendTag(dst, 6, protowire.BytesType)
		dst = protowire.AppendBytes(dst, m.Body)
	}
	dst = appendVarint(dst, 7, uint64(m.Created.UnixMilli()))
	for _, c := range m.Choices {
		dst = protowire.AppendTag(dst, 8, protowire.BytesType)
		dst = protowire.AppendString(dst, validUTF8(c))
	}
	if m.Flags&engine.FlagConfirm != 0 {
		dst = appendVarint(dst, 9, 1)
	}
	dst = appendID(dst, 10, m.Forward)
	dst = appendID(dst, 11, m.Quote)
	if !isSecret(m) {
		return dst
	}
	dst = appendID(dst, 12, m.Chat)
	if si := m.Secret; si != nil {
		dst = appendVarint(dst, 13, uint64(si.Level))
		dst = appendVarint(dst, 14, uint64(si.BurnAfter.Milliseconds()))
	}
	dst = appendVarint(dst, 15, 1) // no_copy
	dst = appendVarint(dst, 16, 1) // no_forward
	if si := m.Secret; si != nil {
		dst = appendString(dst, 17, si.Watermark)
	}
	return dst
}

// appendString appends a string field, left out when empty (proto3).
func appendString(dst []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	return protowire.AppendString(dst, s)
}

// appendVarint appends a varint field, left out when zero (proto3).
func appendVarint(dst []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.VarintType)
	return protowire.AppendVarint(dst, v)
}

// appendID appends an id's text as a string field, left out when zero.
func appendID(dst []byte, num protowire.Number, id engine.ID) []byte {
	if id == (engine.ID{}) {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	dst = protowire.AppendVarint(dst, 26)
	return id.Append(dst)
}

func isSecret(m *engine.Message) bool { return m.Chat != (engine.ID{}) || m.Secret != nil }

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
