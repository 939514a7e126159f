package engine

import (
	"encoding/binary"
	"time"
)

// Kind says what a message's body is. Clients render by kind.
type Kind uint8

const (
	// KindText is UTF-8 text.
	KindText Kind = 1
	// KindData is an opaque application payload.
	KindData Kind = 2
	// KindDing is an urgent UTF-8 text that escalates until read or
	// confirmed. Only Engine.Ding creates it; its id is the DING's id.
	KindDing Kind = 3
	// KindAnnouncement is UTF-8 text to all staff, a department or a
	// group. Only Engine.Announce creates it. Its sender is not pushed a
	// receipt event per recipient (announcement statistics answer that).
	KindAnnouncement Kind = 4
)

// Message flags.
const (
	// FlagConfirm: recipients are asked to confirm (a must-confirm
	// announcement); Engine.Confirm records it.
	FlagConfirm uint32 = 1
	// FlagViaAPI: a back-office system sent the message through the admin
	// API (Submission.ViaAPI); its receipts are webhook events
	// (message.delivered, message.read), people's messages' are not.
	FlagViaAPI uint32 = 2
)

// Valid reports whether k is a kind clients may submit.
func (k Kind) Valid() bool { return k == KindText || k == KindData }

// Message is one stored message. Its body is stored once, however many
// recipients it has.
type Message struct {
	ID       ID
	From     string
	To       []string
	Kind     Kind
	Body     []byte
	Created  time.Time // millisecond precision
	ClientID string    // optional; deduplicates sender retries
	// Choices is a DING's response menu ("attend", "decline"); a recipient
	// confirms with a choice's 1-based number. Empty for other kinds.
	Choices []string
	// Flags: FlagConfirm.
	Flags uint32
	// Forward and Quote name the message this one forwards or quotes
	// (zero for none). A secret message can be neither (ErrNoForward).
	Forward, Quote ID
	// Chat is the secret chat the message was sent in (zero for none).
	// Its body is stored encrypted with a key of its own (secret.go).
	Chat ID
	// Secret is set only on the copies of a secret message that the
	// engine hands out (to the Sink, from Range): their From and To are
	// the participants' pseudonyms, never their user ids.
	Secret *SecretInfo
}

// ErrCorrupt is returned when a stored record cannot be decoded.
var ErrCorrupt = NewError(CodeInternal, "engine: corrupt record")

// Message record layout (value of key 'm' + id):
//
//	+---------+-------------+------+--------------+-----------+-----------+------------------+----------+
//	| ver=1 1 | created ms 8| kind | from (str)   | nTo uvarint | to (str)... | clientID (str) | body (bytes)
//	+---------+-------------+------+--------------+-----------+-----------+------------------+----------+
//
// where (str) and (bytes) are a uvarint length followed by the bytes.
// Version 2 appends | nChoices uvarint | choice (str)... | [flags uvarint] |
// after the body; it is written only when there are choices or flags.
// Version 3 appends | nChoices uvarint | choice (str)... | flags uvarint |
// refs 1 | [forward 16] | [quote 16] | [chat 16] | after the body, refs
// saying which ids follow (bit 0 forward, 1 quote, 2 chat); it is written
// only when one of them is set. A secret message's body is its ciphertext
// (secret.go).
const (
	messageVersion        = 1
	messageVersionChoices = 2
	messageVersionRefs    = 3
)

const (
	refForward = 1
	refQuote   = 2
	refChat    = 4
)

func (m *Message) refs() byte {
	var r byte
	if m.Forward != (ID{}) {
		r |= refForward
	}
	if m.Quote != (ID{}) {
		r |= refQuote
	}
	if m.Chat != (ID{}) {
		r |= refChat
	}
	return r
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func encodeMessage(m *Message) []byte {
	n := 1 + 8 + 1 + 2 + len(m.From) + 2 + len(m.ClientID) + 3 + len(m.Body)
	for _, t := range m.To {
		n += 1 + len(t)
	}
	for _, c := range m.Choices {
		n += 1 + len(c)
	}
	refs := m.refs()
	b := make([]byte, 0, n+49)
	switch {
	case refs != 0:
		b = append(b, messageVersionRefs)
	case len(m.Choices) > 0 || m.Flags != 0:
		b = append(b, messageVersionChoices)
	default:
		b = append(b, messageVersion)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(m.Created.UnixMilli()))
	b = append(b, byte(m.Kind))
	b = appendStr(b, m.From)
	b = binary.AppendUvarint(b, uint64(len(m.To)))
	for _, t := range m.To {
		b = appendStr(b, t)
	}
	b = appendStr(b, m.ClientID)
	b = binary.AppendUvarint(b, uint64(len(m.Body)))
	b = append(b, m.Body...)
	if len(m.Choices) > 0 || m.Flags != 0 || refs != 0 {
		b = binary.AppendUvarint(b, uint64(len(m.Choices)))
		for _, c := range m.Choices {
			b = appendStr(b, c)
		}
		if m.Flags != 0 || refs != 0 {
			b = binary.AppendUvarint(b, uint64(m.Flags))
		}
	}
	if refs != 0 {
		b = append(b, refs)
		for _, r := range []struct {
			bit byte
			id  ID
		}{{refForward, m.Forward}, {refQuote, m.Quote}, {refChat, m.Chat}} {
			if refs&r.bit != 0 {
				b = append(b, r.id[:]...)
			}
		}
	}
	return b
}

type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) u8() byte {
	if len(d.b) < 1 {
		d.err = true
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) u64() uint64 {
	if len(d.b) < 8 {
		d.err = true
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = true
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err || n > uint64(len(d.b)) {
		d.err = true
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.bytes()) }

// decodeMessage decodes a record; the returned message does not alias b.
func decodeMessage(id ID, b []byte) (*Message, error) {
	d := decoder{b: b}
	ver := d.u8()
	if ver < messageVersion || ver > messageVersionRefs {
		return nil, ErrCorrupt
	}
	m := &Message{ID: id}
	m.Created = time.UnixMilli(int64(d.u64()))
	m.Kind = Kind(d.u8())
	m.From = d.str()
	n := d.uvarint()
	if n > uint64(len(d.b)) { // each name takes at least one byte
		return nil, ErrCorrupt
	}
	m.To = make([]string, 0, n)
	for i := uint64(0); i < n && !d.err; i++ {
		m.To = append(m.To, d.str())
	}
	m.ClientID = d.str()
	m.Body = append([]byte(nil), d.bytes()...)
	if ver >= messageVersionChoices {
		n := d.uvarint()
		if n > uint64(len(d.b)) {
			return nil, ErrCorrupt
		}
		for i := uint64(0); i < n && !d.err; i++ {
			m.Choices = append(m.Choices, d.str())
		}
		if len(d.b) > 0 {
			f := d.uvarint()
			if f > 1<<31 {
				return nil, ErrCorrupt
			}
			m.Flags = uint32(f)
		}
	}
	if ver == messageVersionRefs {
		refs := d.u8()
		if refs == 0 || refs&^(refForward|refQuote|refChat) != 0 {
			return nil, ErrCorrupt
		}
		for _, r := range []struct {
			bit byte
			id  *ID
		}{{refForward, &m.Forward}, {refQuote, &m.Quote}, {refChat, &m.Chat}} {
			if refs&r.bit != 0 {
				if len(d.b) < 16 {
					return nil, ErrCorrupt
				}
				copy(r.id[:], d.b[:16])
				d.b = d.b[16:]
			}
		}
	}
	if d.err || len(d.b) != 0 {
		return nil, ErrCorrupt
	}
	return m, nil
}
