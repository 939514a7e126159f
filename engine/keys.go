package engine

import (
	"encoding/binary"
	"fmt"
	"math"
	"regexp"
	"time"
)

// Key prefixes. Every key in the store starts with one of these bytes; the
// full layout is drawn in the package doc.
const (
	prefixMessage      = 'm' // m | id(16)                       -> message record
	prefixInbox        = 'i' // i | user | 0x00 | seq(8, BE)     -> stream entry
	prefixCursor       = 'c' // c | user | 0x00 | device         -> seq(8)
	prefixWatermark    = 'w' // w | user                         -> seq(8): highest seq any device acked
	prefixReceipt      = 'r' // r | id(16) | user                -> receipt record
	prefixDedupe       = 'd' // d | sender | 0x00 | clientID     -> id(16)
	prefixDing         = 'g' // g | id(16)                       -> DING record (codec.go)
	prefixDingRcpt     = 'e' // e | id(16) | idx(2)              -> recipient's escalation state (codec.go)
	prefixLedger       = 'l' // l | id(16) | idx(2) | n(4)       -> ledger event (codec.go)
	prefixTimer        = 't' // t | due ms(8) | id(16) | idx(2) | n(4) -> empty
	prefixPhone        = 'p' // p | phone | 0x00 | id(16) | idx(2) -> empty: a pending DING for that phone
	prefixRef          = 'x' // x | provider ref                 -> id(16) | idx(2) | channel(1)
	prefixQuota        = 'q' // q | kind(1) | scope | 0x00 | sub -> count(8) or time ms(8)
	prefixPolicy       = 'y' // y | name                         -> policy spec (text)
	prefixCounter      = 'k' // k | name                         -> u64
	prefixPendingU     = 'v' // v | user | 0x00 | id(16) | idx(2) -> empty: a pending DING for that user
	prefixJob          = 'j' // j | id(16)                       -> fanout job (codec.go)
	prefixAudience     = 'a' // a | id(16) | chunk(4)            -> recipients not yet fanned out
	prefixRollup       = 'z' // z | day(4) | department          -> daily statistics (rollup.go)
	prefixUnanswered   = 'Z' // Z | day(4) | user               -> unanswered DINGs (8)
	prefixAnnouncement = 'n' // n | id(16)                    -> announcement counts (codec.go)
	prefixChat         = 's' // s | chat(16)                     -> secret chat (codec.go)
	prefixUserChat     = 'o' // o | user | 0x00 | chat(16)       -> empty: user's secret chats
	prefixSecret       = 'b' // b | id(16)                       -> a live secret message's state (secret.go)
	prefixUserSecret   = 'h' // h | user | 0x00 | id(16)         -> empty: user's live secret messages
	prefixFleeting     = 'f' // f | id(16)                       -> empty: a live level-3 message (its key is in memory only)
	prefixTrimmed      = 'T' // T | user                         -> seq(8): the stream's trim mark (retention.go)
	prefixOutbox       = 'O' // O | to(4) | seq(8)               -> relay record for partition to (relay.go, codec.go)
	prefixRelayed      = 'I' // I | from(4)                      -> seq(8): the last relay record of that origin applied here
	prefixHookEvent    = 'W' // W | seq(8)                       -> webhook event (webhook.go)
	prefixHook         = 'H' // H | subscription id              -> webhook subscription
	prefixHookCursor   = 'C' // C | subscription id              -> seq(8): the events it is done with
	prefixHookDead     = 'D' // D | subscription id | 0x00 | seq(8) -> a dead letter: the event and why it was parked
	prefixPushToken    = 'P' // P | user | 0x00 | device        -> push token record (push.go)
	// PrefixDirectory is reserved for the directory kept by package fanout:
	// u | ... (users, and later departments and groups).
	PrefixDirectory = 'u'
)

// ErrBadName is returned when a user or device name is not acceptable.
var ErrBadName = NewError(CodeBadRequest, "engine: bad name")

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$`)

// ValidName reports whether s may be used as a user or device name: 1 to 64
// characters of letters, digits and ._@+- starting with a letter or digit.
// Names never contain 0x00, which the key layout uses as a separator.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// CheckName returns an error naming what is wrong with a name.
func CheckName(what, s string) error {
	if !ValidName(s) {
		return fmt.Errorf("%w: %s %q", ErrBadName, what, s)
	}
	return nil
}

func messageKey(id ID) []byte {
	k := make([]byte, 17)
	k[0] = prefixMessage
	copy(k[1:], id[:])
	return k
}

func inboxPrefix(user string) []byte {
	k := make([]byte, 0, len(user)+10)
	k = append(k, prefixInbox)
	k = append(k, user...)
	return append(k, 0)
}

func inboxKey(user string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(inboxPrefix(user), seq)
}

func seqFromInboxKey(k []byte) (uint64, error) {
	if len(k) < 10 {
		return 0, ErrCorrupt
	}
	return binary.BigEndian.Uint64(k[len(k)-8:]), nil
}

func cursorPrefix(user string) []byte {
	k := make([]byte, 0, len(user)+2+32)
	k = append(k, prefixCursor)
	k = append(k, user...)
	return append(k, 0)
}

func cursorKey(user, device string) []byte { return append(cursorPrefix(user), device...) }

func watermarkKey(user string) []byte { return append([]byte{prefixWatermark}, user...) }

func receiptPrefix(id ID) []byte {
	k := make([]byte, 17, 17+16)
	k[0] = prefixReceipt
	copy(k[1:], id[:])
	return k
}

func receiptKey(id ID, user string) []byte { return append(receiptPrefix(id), user...) }

func dedupeKey(sender, clientID string) []byte {
	k := make([]byte, 0, 2+len(sender)+len(clientID))
	k = append(k, prefixDedupe)
	k = append(k, sender...)
	k = append(k, 0)
	return append(k, clientID...)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func parseU64(b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, ErrCorrupt
	}
	return binary.BigEndian.Uint64(b), nil
}

// EntryKind says what a stream entry carries.
type EntryKind uint8

const (
	// EntryMessage: a message addressed to the stream's user.
	EntryMessage EntryKind = 1
	// EntryReceipt: a receipt state change (see ReceiptEvent).
	EntryReceipt EntryKind = 2
	// EntryDing: an event of a DING's ledger (see DingEvent), in the
	// sender's stream; or a reminder in a recipient's.
	EntryDing EntryKind = 3
	// EntryBurn: a secret message burned (Entry.Burn is its id). It is
	// appended to both parties' streams, and it replaces the recipient's
	// message entry, so a device that had not received the message never
	// gets its content.
	EntryBurn EntryKind = 4
	// EntrySecret: an event of a secret chat (see SecretEvent).
	EntrySecret EntryKind = 5
)

// Message entry flags, so that an ack knows what it acknowledges without
// loading the message: entryFlagDing marks a DING (its ledger records
// per-device deliveries), entryFlagAnnouncement an announcement (its
// sender gets no receipt event per recipient).
const (
	entryFlagDing         = 1
	entryFlagAnnouncement = 2
	entryFlagSecret       = 4 // a secret message: a missing record means it burned
)

// Entry is one item of a user's stream, at a gap-free sequence number.
// Exactly the field of its Kind is set; the others are nil (Burn: zero).
// The pointed-to values are shared and must not be modified. Entries are
// made, copied and dropped by the hundred thousand in a fanout or a
// catch-up, so each kind's payload sits behind a pointer: an Entry is 64
// bytes, not the 376 of the payloads inline.
type Entry struct {
	Seq     uint64
	Kind    EntryKind
	flags   byte          // EntryMessage: entryFlagDing, ...
	Burn    ID            // EntryBurn: the burned message
	Message *Message      // EntryMessage
	Receipt *ReceiptEvent // EntryReceipt
	Ding    *DingEvent    // EntryDing
	Secret  *SecretEvent  // EntrySecret
}

// Stream entry layout (value of key 'i' + user + 0x00 + seq):
//
//	EntryMessage: | 1 | id(16) | sender (str) | [flags 1] |
//	EntryReceipt: | 2 | state 1 | at ms 8 | user (str) | n (uvarint) | n × id(16) |
//	EntryDing:    | 3 | ding id(16) | at ms 8 | index (uvarint) | recipient (str) | event (str) | channel 1 | device (str) | detail (str) |
//	EntryBurn:    | 4 | id(16) |
//	EntrySecret:  | 5 | chat(16) | at ms 8 | event (str) | message id(16) | by (str) | level 1 | burn after ms (uvarint) | you (str) | peer (str) |
//
// A message entry names its sender so that an ack can notify the sender
// without loading the message; its flags byte is present only when not
// zero (entryFlagDing).
func encodeEntry(e *Entry) []byte {
	switch e.Kind {
	case EntryMessage:
		b := make([]byte, 17, 19+len(e.Message.From))
		b[0] = byte(EntryMessage)
		copy(b[1:], e.Message.ID[:])
		b = appendStr(b, e.Message.From)
		var flags byte
		switch e.Message.Kind {
		case KindDing:
			flags = entryFlagDing
		case KindAnnouncement:
			flags = entryFlagAnnouncement
		}
		if e.Message.Chat != (ID{}) {
			flags |= entryFlagSecret
		}
		if flags != 0 {
			b = append(b, flags)
		}
		return b
	case EntryBurn:
		return append([]byte{byte(EntryBurn)}, e.Burn[:]...)
	case EntrySecret:
		s := e.Secret
		b := make([]byte, 0, 64+len(s.Event)+len(s.By)+len(s.You)+len(s.Peer))
		b = append(b, byte(EntrySecret))
		b = append(b, s.Chat[:]...)
		b = binary.BigEndian.AppendUint64(b, msOrZero(s.At))
		b = appendStr(b, s.Event)
		b = append(b, s.ID[:]...)
		b = appendStr(b, s.By)
		b = append(b, byte(s.Level))
		b = binary.AppendUvarint(b, uint64(s.BurnAfter.Milliseconds()))
		b = appendStr(b, s.You)
		return appendStr(b, s.Peer)
	case EntryDing:
		d := e.Ding
		b := make([]byte, 0, 40+len(d.Recipient)+len(d.Event)+len(d.Device)+len(d.Detail))
		b = append(b, byte(EntryDing))
		b = append(b, d.ID[:]...)
		b = binary.BigEndian.AppendUint64(b, msOrZero(d.At))
		b = binary.AppendUvarint(b, uint64(d.Index))
		b = appendStr(b, d.Recipient)
		b = appendStr(b, string(d.Event))
		b = append(b, byte(d.Channel))
		b = appendStr(b, d.Device)
		return appendStr(b, d.Detail)
	default:
		r := e.Receipt
		b := make([]byte, 0, 13+len(r.User)+16*len(r.IDs))
		b = append(b, byte(EntryReceipt), byte(r.State))
		b = binary.BigEndian.AppendUint64(b, msOrZero(r.At))
		b = appendStr(b, r.User)
		b = binary.AppendUvarint(b, uint64(len(r.IDs)))
		for _, id := range r.IDs {
			b = append(b, id[:]...)
		}
		return b
	}
}

// decodeEntry decodes a stream entry value. For EntryMessage the message is
// not loaded: its id and sender are returned and Message is left nil.
func decodeEntry(seq uint64, b []byte) (e Entry, id ID, sender []byte, err error) {
	if len(b) < 1 {
		return Entry{}, id, nil, ErrCorrupt
	}
	d := decoder{b: b[1:]}
	switch EntryKind(b[0]) {
	case EntryMessage:
		if len(d.b) < 16 {
			return Entry{}, id, nil, ErrCorrupt
		}
		copy(id[:], d.b[:16])
		d.b = d.b[16:]
		sender := d.bytes()
		var flags byte
		if len(d.b) == 1 {
			flags = d.b[0]
			d.b = d.b[1:]
		}
		if d.err || len(d.b) != 0 {
			return Entry{}, id, nil, ErrCorrupt
		}
		return Entry{Seq: seq, Kind: EntryMessage, flags: flags}, id, sender, nil
	case EntryDing:
		var ev DingEvent
		if len(d.b) < 16 {
			return Entry{}, id, nil, ErrCorrupt
		}
		copy(ev.ID[:], d.b[:16])
		d.b = d.b[16:]
		ev.At = timeOrZero(d.u64())
		ev.Index = int(d.uvarint())
		ev.Recipient = d.str()
		ev.Event = LedgerKind(d.str())
		ev.Channel = Channel(d.u8())
		ev.Device = d.str()
		ev.Detail = d.str()
		if d.err || len(d.b) != 0 || ev.Index > 1<<16 {
			return Entry{}, id, nil, ErrCorrupt
		}
		return Entry{Seq: seq, Kind: EntryDing, Ding: &ev}, ev.ID, nil, nil
	case EntryBurn:
		if len(d.b) != 16 {
			return Entry{}, id, nil, ErrCorrupt
		}
		copy(id[:], d.b)
		return Entry{Seq: seq, Kind: EntryBurn, Burn: id}, id, nil, nil
	case EntrySecret:
		var ev SecretEvent
		if len(d.b) < 16 {
			return Entry{}, id, nil, ErrCorrupt
		}
		copy(ev.Chat[:], d.b[:16])
		d.b = d.b[16:]
		ev.At = timeOrZero(d.u64())
		ev.Event = d.str()
		if len(d.b) < 16 {
			return Entry{}, id, nil, ErrCorrupt
		}
		copy(ev.ID[:], d.b[:16])
		d.b = d.b[16:]
		ev.By = d.str()
		ev.Level = Level(d.u8())
		after := d.uvarint()
		ev.You = d.str()
		ev.Peer = d.str()
		if d.err || len(d.b) != 0 || after > uint64(math.MaxInt64/int64(time.Millisecond)) {
			return Entry{}, id, nil, ErrCorrupt
		}
		ev.BurnAfter = time.Duration(after) * time.Millisecond
		return Entry{Seq: seq, Kind: EntrySecret, Secret: &ev}, ev.Chat, nil, nil
	case EntryReceipt:
		st := State(d.u8())
		at := d.u64()
		user := d.str()
		n := d.uvarint()
		if d.err || st < StateSent || st > StateConfirmed || n == 0 || n > MaxEventIDs || uint64(len(d.b)) != 16*n {
			return Entry{}, id, nil, ErrCorrupt
		}
		ids := make([]ID, n)
		for i := range ids {
			copy(ids[i][:], d.b[16*i:])
		}
		return Entry{Seq: seq, Kind: EntryReceipt, Receipt: &ReceiptEvent{
			IDs: ids, User: user, State: st, At: timeOrZero(at),
		}}, id, nil, nil
	}
	return Entry{}, id, nil, ErrCorrupt
}
