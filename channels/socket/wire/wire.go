// Package wire encodes and decodes the frames of Ding's socket protocol
// (see ../PROTOCOL.md). It is shared by the server and the Go client and
// has no network code.
//
// Frame layout:
//
//	 0               4     5
//	+---------------+-----+---------------------------+
//	| length (BE32) | type| payload (protobuf, pb.*)  |
//	+---------------+-----+---------------------------+
//
// length counts the type byte and the payload, so it is at least 1. A
// reader first reads the 5-byte header, checks length against its limit,
// then reads length-1 payload bytes.
//
//	b := wire.Append(nil, pb.FrameType_PING, &pb.Ping{Nonce: 7})
//	n, t, err := wire.ParseHeader(b[:wire.HeaderLen], maxFrame)
//	msg, err := wire.Decode(t, b[wire.HeaderLen:wire.HeaderLen+n-1])
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/engine"
)

// Version is the protocol version this package speaks.
const Version = 1

// HeaderLen is the size of a frame header.
const HeaderLen = 5

// Errors from ParseHeader and Decode.
var (
	// ErrTooLarge is returned when a header announces more than the limit.
	ErrTooLarge = errors.New("wire: frame too large")
	// ErrEmpty is returned for a length of zero (no type byte).
	ErrEmpty = errors.New("wire: empty frame")
	// ErrUnknownType is returned by Decode for a type byte it does not know.
	ErrUnknownType = errors.New("wire: unknown frame type")
	// ErrBadPayload is returned by Decode when the payload does not parse.
	ErrBadPayload = errors.New("wire: malformed payload")
)

// Append appends the frame for m to dst.
func Append(dst []byte, t pb.FrameType, m proto.Message) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, byte(t))
	dst, err := proto.MarshalOptions{}.MarshalAppend(dst, m)
	if err != nil {
		panic(fmt.Sprintf("wire: marshal %v: %v", t, err)) // only invalid UTF-8 in a string can fail
	}
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

// Encode returns the frame for m.
func Encode(t pb.FrameType, m proto.Message) []byte {
	return Append(make([]byte, 0, HeaderLen+proto.Size(m)), t, m)
}

// ParseHeader returns the length (type byte plus payload) and type of the
// frame starting with hdr, which must hold HeaderLen bytes. max is the
// largest length accepted.
func ParseHeader(hdr []byte, max int) (int, pb.FrameType, error) {
	n := binary.BigEndian.Uint32(hdr)
	if n == 0 {
		return 0, 0, ErrEmpty
	}
	if uint64(n) > uint64(max) {
		return 0, 0, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, n, max)
	}
	return int(n), pb.FrameType(hdr[4]), nil
}

// New returns an empty message of the type a frame type carries.
func New(t pb.FrameType) (proto.Message, error) {
	switch t {
	case pb.FrameType_HELLO:
		return &pb.Hello{}, nil
	case pb.FrameType_WELCOME:
		return &pb.Welcome{}, nil
	case pb.FrameType_SUBMIT:
		return &pb.Submit{}, nil
	case pb.FrameType_SUBMIT_ACK:
		return &pb.SubmitAck{}, nil
	case pb.FrameType_DELIVER:
		return &pb.Deliver{}, nil
	case pb.FrameType_RECEIPT:
		return &pb.Receipt{}, nil
	case pb.FrameType_ACK:
		return &pb.Ack{}, nil
	case pb.FrameType_READ:
		return &pb.Read{}, nil
	case pb.FrameType_OK:
		return &pb.Ok{}, nil
	case pb.FrameType_PING:
		return &pb.Ping{}, nil
	case pb.FrameType_PONG:
		return &pb.Pong{}, nil
	case pb.FrameType_ERROR:
		return &pb.Error{}, nil
	case pb.FrameType_RECEIPTS_QUERY:
		return &pb.ReceiptsQuery{}, nil
	case pb.FrameType_RECEIPTS:
		return &pb.Receipts{}, nil
	case pb.FrameType_DING_EVENT:
		return &pb.DingEvent{}, nil
	case pb.FrameType_CONFIRM:
		return &pb.Confirm{}, nil
	case pb.FrameType_BURN:
		return &pb.Burn{}, nil
	case pb.FrameType_SECRET_EVENT:
		return &pb.SecretEvent{}, nil
	case pb.FrameType_SECRET_CREATE:
		return &pb.SecretCreate{}, nil
	case pb.FrameType_SCREENSHOT:
		return &pb.Screenshot{}, nil
	}
	return nil, fmt.Errorf("%w: %d", ErrUnknownType, t)
}

// Decode parses a payload of type t. The result does not alias payload.
func Decode(t pb.FrameType, payload []byte) (proto.Message, error) {
	m, err := New(t)
	if err != nil {
		return nil, err
	}
	if err := proto.Unmarshal(payload, m); err != nil {
		return nil, fmt.Errorf("%w: %v: %v", ErrBadPayload, t, err)
	}
	return m, nil
}

// AppendEntry appends the DELIVER, RECEIPT, DING_EVENT, BURN or
// SECRET_EVENT frame for a stream entry. It panics on an entry kind it
// does not know: sending one as another kind would hand clients a wrong
// entry at a valid seq.
//
// Strings that come from outside the engine's name rules (a DING's
// choices, an event's detail such as an SMS reply or a provider's status
// text) are made valid UTF-8 here, invalid bytes becoming U+FFFD: proto3
// refuses to encode anything else, and one bad reply must not stop a
// stream.
func AppendEntry(dst []byte, e engine.Entry) []byte {
	switch e.Kind {
	case engine.EntryMessage:
		return appendDeliver(dst, e.Seq, e.Message)
	case engine.EntryReceipt:
		r := e.Receipt
		ids := make([]string, len(r.IDs))
		for i, id := range r.IDs {
			ids[i] = id.String()
		}
		return Append(dst, pb.FrameType_RECEIPT, &pb.Receipt{
			Seq: e.Seq, Ids: ids, User: r.User, State: pb.State(r.State), AtMs: r.At.UnixMilli(),
		})
	case engine.EntryDing:
		d := e.Ding
		var ch string
		if d.Channel != 0 {
			ch = d.Channel.String()
		}
		return Append(dst, pb.FrameType_DING_EVENT, &pb.DingEvent{
			Seq: e.Seq, Id: d.ID.String(), Index: uint32(d.Index), Recipient: d.Recipient,
			Event: validUTF8(string(d.Event)), Channel: ch, Device: d.Device, Detail: validUTF8(d.Detail), AtMs: d.At.UnixMilli(),
		})
	case engine.EntryBurn:
		// The id and nothing else: the message is gone, and a burn must
		// not bring any of it back.
		return Append(dst, pb.FrameType_BURN, &pb.Burn{Seq: e.Seq, Id: e.Burn.String()})
	case engine.EntrySecret:
		v := e.Secret
		return Append(dst, pb.FrameType_SECRET_EVENT, &pb.SecretEvent{
			Seq: e.Seq, Chat: v.Chat.String(), Event: validUTF8(v.Event), Id: idOrEmpty(v.ID), By: v.By,
			Level: uint32(v.Level), BurnAfterMs: v.BurnAfter.Milliseconds(), You: v.You, Peer: v.Peer, AtMs: v.At.UnixMilli(),
		})
	}
	panic(fmt.Sprintf("wire: stream entry %d of unknown kind %d", e.Seq, e.Kind))
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

// deliverTail is a message's DELIVER payload without its seq: the same for
// every recipient.
type deliverTail struct {
	msg  *engine.Message
	tail []byte
}

// lastTail caches the tail of the last message encoded. A message to many
// (an announcement) is delivered entry after entry with the same
// *engine.Message, so it is marshalled once and each recipient's frame is
// the header, its seq and the shared tail: encode once, write many.
var lastTail atomic.Pointer[deliverTail]

// appendDeliver appends the DELIVER frame of m at seq. Protobuf decoders
// take fields in any order; seq (field 1) is written first, then the tail,
// which is what proto.Marshal writes for fields 2 and up.
//
// A secret message is marshalled whole, seq included, and never cached:
// it has one recipient, so there is nothing to share, and the cache would
// keep its plaintext (and the message) alive after it burns, until the
// next message came along.
func appendDeliver(dst []byte, seq uint64, m *engine.Message) []byte {
	if isSecret(m) {
		d := deliverOf(m)
		d.Seq = seq
		return Append(dst, pb.FrameType_DELIVER, d)
	}
	t := lastTail.Load()
	if t == nil || t.msg != m {
		tail, err := proto.MarshalOptions{}.Marshal(deliverOf(m))
		if err != nil {
			panic(fmt.Sprintf("wire: marshal DELIVER: %v", err))
		}
		t = &deliverTail{m, tail}
		lastTail.Store(t)
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
