// Package wire encodes and decodes the frames of Ding's socket protocol
// (see ../PROTOCOL.md). It is shared by the server and the Go client, has
// no network code and imports nothing of the server (a test in
// internal/layout enforces it): stream entries become frames in package
// channels/session.
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

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/pb"
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
	case pb.FrameType_PUSH_REGISTER:
		return &pb.PushRegister{}, nil
	case pb.FrameType_PUSH_OPENED:
		return &pb.PushOpened{}, nil
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
