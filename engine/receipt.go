package engine

import (
	"encoding/binary"
	"time"
)

// State is a recipient's receipt state for one message. States only move
// forward: Sent < Delivered < Read < Confirmed.
type State uint8

const (
	// StateSent: stored in the recipient's stream, not yet acknowledged by
	// any of their devices.
	StateSent State = 1
	// StateDelivered: some device of the recipient acknowledged it.
	StateDelivered State = 2
	// StateRead: some device of the recipient marked it read.
	StateRead State = 3
	// StateConfirmed: the recipient confirmed a DING (in the app, by SMS
	// reply or by a keypress in a call). Confirmed implies read.
	StateConfirmed State = 4
)

func (s State) String() string {
	switch s {
	case StateSent:
		return "sent"
	case StateDelivered:
		return "delivered"
	case StateRead:
		return "read"
	case StateConfirmed:
		return "confirmed"
	}
	return "unknown"
}

// Receipt is one recipient's state for one message.
type Receipt struct {
	User      string
	State     State
	Delivered time.Time // zero until delivered
	Read      time.Time // zero until read
	Confirmed time.Time // zero until confirmed (DINGs only)
}

// Receipt record layout (value of key 'r' + id + user):
//
//	+---------+------------------+-------------+--------------------+
//	| state 1 | delivered ms 8   | read ms 8   | [confirmed ms 8]   |   (0 = not yet)
//	+---------+------------------+-------------+--------------------+
//
// The confirmed time is present only in state Confirmed (25 bytes).
func encodeReceipt(r Receipt) []byte {
	n := 17
	if r.State == StateConfirmed {
		n = 25
	}
	b := make([]byte, n)
	b[0] = byte(r.State)
	binary.BigEndian.PutUint64(b[1:], msOrZero(r.Delivered))
	binary.BigEndian.PutUint64(b[9:], msOrZero(r.Read))
	if n == 25 {
		binary.BigEndian.PutUint64(b[17:], msOrZero(r.Confirmed))
	}
	return b
}

func decodeReceipt(user string, b []byte) (Receipt, error) {
	switch {
	case len(b) == 17 && b[0] >= byte(StateSent) && b[0] <= byte(StateRead):
	case len(b) == 25 && b[0] == byte(StateConfirmed):
	default:
		return Receipt{}, ErrCorrupt
	}
	r := Receipt{
		User:      user,
		State:     State(b[0]),
		Delivered: timeOrZero(binary.BigEndian.Uint64(b[1:])),
		Read:      timeOrZero(binary.BigEndian.Uint64(b[9:])),
	}
	if len(b) == 25 {
		r.Confirmed = timeOrZero(binary.BigEndian.Uint64(b[17:]))
	}
	return r, nil
}

func msOrZero(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.UnixMilli())
}

func timeOrZero(ms uint64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(int64(ms))
}

// ReceiptEvent is a stream entry telling a user that a recipient's state
// for some messages moved forward at one time. One ack or one read makes one
// event per sender (with every message of that sender it moved, up to
// MaxEventIDs), not one per message; the reader's own stream gets one when
// they read, so that their other devices learn it too.
type ReceiptEvent struct {
	IDs   []ID   // the messages, in stream order
	User  string // the recipient whose state changed
	State State
	At    time.Time
}

// MaxEventIDs bounds the message ids one receipt event carries; more
// changes make more events.
const MaxEventIDs = 1000
