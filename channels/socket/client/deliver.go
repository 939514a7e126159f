package client

import (
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// decodeDeliver decodes a DELIVER payload (pb.Deliver) straight into a
// Message, without building the generated struct: a catch-up is mostly
// DELIVERs, and the generic decoder cost more than the rest of the
// client's work per message. Body aliases payload, which the caller gives
// up. Fields it does not know are skipped, as proto decoders do; a
// malformed payload, or a string that is not UTF-8 (which proto refuses
// too), is wire.ErrBadPayload.
func decodeDeliver(payload []byte) (uint64, *Message, error) {
	var seq uint64
	m := &Message{}
	b := payload
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, nil, badDeliver(protowire.ParseError(n))
		}
		if !num.IsValid() {
			return 0, nil, badDeliver(fmt.Errorf("field number %d", num))
		}
		b = b[n:]
		var v uint64
		var raw []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			raw, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return 0, nil, badDeliver(protowire.ParseError(n))
		}
		b = b[n:]
		var err error
		switch {
		case typ == protowire.VarintType:
			switch num {
			case 1:
				seq = v
			case 5:
				m.Kind = pb.Kind(int32(v))
			case 7:
				m.Created = time.UnixMilli(int64(v))
			case 9:
				m.Confirm = v != 0
			case 13:
				m.Level = int(uint32(v))
			case 14:
				m.BurnAfter = time.Duration(int64(v)) * time.Millisecond
			case 15:
				m.NoCopy = v != 0
			case 16:
				m.NoForward = v != 0
			}
		case typ == protowire.BytesType:
			switch num {
			case 2:
				m.ID, err = str(raw)
			case 3:
				m.From, err = str(raw)
			case 4:
				var t string
				t, err = str(raw)
				m.To = append(m.To, t)
			case 6:
				m.Body = nil // the last occurrence wins; empty is nil, as proto3 decodes it
				if len(raw) > 0 {
					m.Body = raw[:len(raw):len(raw)]
				}
			case 8:
				var c string
				c, err = str(raw)
				m.Choices = append(m.Choices, c)
			case 10:
				m.ForwardOf, err = str(raw)
			case 11:
				m.QuoteOf, err = str(raw)
			case 12:
				m.Chat, err = str(raw)
			case 17:
				m.Watermark, err = str(raw)
			}
		}
		if err != nil {
			return 0, nil, err
		}
	}
	if m.Created.IsZero() {
		m.Created = time.UnixMilli(0)
	}
	return seq, m, nil
}

func str(b []byte) (string, error) {
	if !utf8.Valid(b) {
		return "", badDeliver(fmt.Errorf("string field is not UTF-8"))
	}
	return string(b), nil
}

func badDeliver(err error) error {
	return fmt.Errorf("%w: DELIVER: %v", wire.ErrBadPayload, err)
}
