package engine

import (
	"crypto/rand"
	"encoding/binary"
	"time"
)

// ID identifies a message. It sorts by creation time: the first 6 bytes are
// milliseconds since the Unix epoch, the last 10 are random at the start of
// each millisecond and incremented within it (the ULID layout), so IDs made
// by one generator are strictly increasing. An engine of a partition
// writes its partition into bytes 6-7 (see idGen and HomeOf). Its text
// form is 26 characters of Crockford base32.
type ID [16]byte

// ErrBadID is returned by ParseID when the text is not a valid ID.
var ErrBadID = NewError(CodeBadRequest, "engine: malformed message id")

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

var crockfordDec = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := 0; i < len(crockford); i++ {
		t[crockford[i]] = byte(i)
		t[crockford[i]|0x20] = byte(i) // lower case
	}
	return t
}()

// String returns the 26-character text form.
func (id ID) String() string {
	var out [26]byte
	return string(id.Append(out[:0]))
}

// Append appends the 26-character text form to dst, without
// allocating (frames encode ids by the thousand).
func (id ID) Append(dst []byte) []byte {
	var out [26]byte
	// 128 bits as 26 base32 digits: the first digit holds the top 3 bits.
	hi := binary.BigEndian.Uint64(id[:8])
	lo := binary.BigEndian.Uint64(id[8:])
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return append(dst, out[:]...)
}

// ParseID parses the text form produced by String.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 26 {
		return id, ErrBadID
	}
	var hi, lo uint64
	for i := 0; i < 26; i++ {
		d := crockfordDec[s[i]]
		if d == 0xff || (i == 0 && d > 7) {
			return id, ErrBadID
		}
		hi = hi<<5 | lo>>59
		lo = lo<<5 | uint64(d)
	}
	binary.BigEndian.PutUint64(id[:8], hi)
	binary.BigEndian.PutUint64(id[8:], lo)
	return id, nil
}

// Time returns the millisecond timestamp embedded in the ID.
func (id ID) Time() time.Time {
	var b [8]byte
	copy(b[2:], id[:6])
	return time.UnixMilli(int64(binary.BigEndian.Uint64(b[:])))
}

// idGen makes strictly increasing IDs. It is not safe for concurrent use;
// the commit loop owns it.
//
// An engine of a partition (Config.Placement set) makes ids that name it,
// so that a request about an id (its receipts, a DING's status, a Twilio
// callback) can be routed to the partition that holds it (HomeOf): bytes 6
// and 7 are 0x80|p>>8 and p&0xff, and within a millisecond only bytes 8-15
// are incremented. Other ids have byte 6 below 0x80.
type idGen struct {
	lastMS uint64
	last   ID
	home   uint32 // the partition ids name
	homed  bool   // ids name home
}

// maxHome is the largest partition an id can name (15 bits).
const maxHome = 1<<15 - 1

func (g *idGen) next(now time.Time) ID {
	ms := uint64(now.UnixMilli())
	if ms > g.lastMS {
		g.lastMS = ms
		var id ID
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], ms)
		copy(id[:6], b[2:])
		_, _ = rand.Read(id[6:])
		if g.homed {
			id[6], id[7] = 0x80|byte(g.home>>8), byte(g.home)
			id[8] &= 0x7f // leave room to increment within the millisecond
		} else {
			id[6] &= 0x7f
		}
		g.last = id
		return id
	}
	// Same (or an earlier, if the clock stepped back) millisecond: increment
	// the random part so order is kept.
	id := g.last
	low := 6
	if g.homed {
		low = 8
	}
	for i := 15; i >= low; i-- {
		id[i]++
		if id[i] != 0 {
			break
		}
	}
	g.last = id
	return id
}

// HomeOf returns the partition that made id, when it was made by an engine
// of a partition (Config.Placement set); false for other ids, which the
// single engine holds.
func HomeOf(id ID) (uint32, bool) {
	if id[6]&0x80 == 0 {
		return 0, false
	}
	return uint32(id[6]&0x7f)<<8 | uint32(id[7]), true
}

// MarshalText encodes the id as its 26-character text, so that JSON shows
// ids the way the protocol and the API take them.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText parses the 26-character text form.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// idAtMillis returns the smallest ID with timestamp ms.
func idAtMillis(ms int64) ID {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(ms))
	var id ID
	copy(id[:6], b[2:])
	return id
}
