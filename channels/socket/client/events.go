package client

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dingmq/ding/channels/socket/pb"
)

// SessionEventKind says what happened to the client's connection.
type SessionEventKind int

const (
	// SessionUp: a handshake succeeded and a session started on Addr.
	// Session, Reconnect, Cursor, ResumeFrom, Head and Welcome are set.
	SessionUp SessionEventKind = iota + 1
	// SessionDown: the session that started with the SessionUp of the same
	// Session ended; Err says why. The client reconnects unless a
	// SessionClosed follows.
	SessionDown
	// SessionRedirect: Addr answered NOT_OWNER (cluster mode), in its
	// handshake or later, naming Redirect as the node serving this user
	// now; the client connects there next. Err is the *Error.
	SessionRedirect
	// SessionDialFailed: a connection attempt to Addr failed (dial, TLS,
	// handshake, or a server that refused the HELLO); Err says why. The
	// client tries again with backoff unless a SessionClosed follows.
	SessionDialFailed
	// SessionClosed: the client stopped for good; Err is what Client.Err
	// returns (ErrClosed after Close). It is the last event.
	SessionClosed
)

func (k SessionEventKind) String() string {
	switch k {
	case SessionUp:
		return "up"
	case SessionDown:
		return "down"
	case SessionRedirect:
		return "redirect"
	case SessionDialFailed:
		return "dial failed"
	case SessionClosed:
		return "closed"
	}
	return fmt.Sprintf("SessionEventKind(%d)", int(k))
}

// SessionEvent is something that happened to the client's connection,
// given to Config.OnSession. Which fields are set depends on Kind.
type SessionEvent struct {
	Kind SessionEventKind
	At   time.Time
	// Addr is the server's address (host:port) as the client dialled it:
	// one of Config.Addr's, or a redirect's.
	Addr string
	// Session numbers the sessions (successful handshakes) of this client
	// from 1, as Stats.Connects counts them; SessionDown carries the
	// number of the session that ended. Zero for the other kinds.
	Session int64
	// Reconnect (SessionUp): not the client's first session.
	Reconnect bool
	// Cursor (SessionUp) is the cursor the HELLO carried: the last seq the
	// client had received before this session (Config.Cursor on the first
	// one); nil when it sent none and the server resumed from the
	// device's stored cursor, its last Ack.
	Cursor *uint64
	// ResumeFrom and Head (SessionUp) are the WELCOME's: the first seq this
	// session sends, and the newest seq of the stream at the handshake.
	// ResumeFrom <= *Cursor means the server's stream is shorter than
	// what the client had seen (a restore from backup): the client follows
	// the server (PROTOCOL.md §4). ResumeFrom > *Cursor+1 means the
	// server's retention deleted the entries in between.
	ResumeFrom, Head uint64
	// Welcome (SessionUp) is the whole WELCOME: user, device, and the
	// limits (max_body, max_frame, max_inflight, ping interval).
	Welcome *pb.Welcome
	// Redirect (SessionRedirect) is the node the client connects to next.
	Redirect string
	// Err is why a session ended or an attempt failed: an *Error for an
	// ERROR frame from the server (its Code, Detail and, for NOT_OWNER,
	// Redirect; see errors.As), ErrRefetch when the client itself
	// reconnected to fetch entries again, ErrClosed after Close, or else
	// the transport's error (io.EOF: the server closed without an ERROR;
	// io.ErrUnexpectedEOF: it closed in the middle of a frame, which is
	// how a slow consumer's disconnect usually looks, PROTOCOL.md §4; an
	// error wrapping os.ErrDeadlineExceeded: the server sent nothing, not
	// even a PONG, for three ping intervals).
	Err error
	// Dropped is how many events right before this one OnSession did not
	// get because it fell behind (see Config.OnSession); also counted in
	// Stats.EventsDropped.
	Dropped int
}

// ErrRefetch is a SessionDown event's Err when the client closed the
// connection itself, to fetch again entries it did not keep past
// Config.MaxQueue; it reconnects at once.
var ErrRefetch = errors.New("client: reconnecting to fetch entries not kept past MaxQueue")

// maxEvents bounds the session events waiting for OnSession. They come a
// few per connection, so only a callback that blocks for long fills it.
const maxEvents = 64

// events hands session events to Config.OnSession, in order, on a
// goroutine of its own: the client never waits for the callback, and the
// callback may call any method of the client, Close included. Past
// maxEvents waiting, the oldest is dropped and counted in the next one's
// Dropped.
type events struct {
	fn      func(SessionEvent)
	mu      sync.Mutex
	q       []SessionEvent // guarded by mu
	final   bool           // SessionClosed was queued: nothing more is; guarded by mu
	sig     chan struct{}  // cap 1: something was queued
	dropped int64          // guarded by mu
}

func newEvents(fn func(SessionEvent)) *events {
	return &events{fn: fn, sig: make(chan struct{}, 1)}
}

// emit queues ev; it never blocks. A nil *events (no OnSession) drops it.
func (es *events) emit(ev SessionEvent) {
	if es == nil {
		return
	}
	ev.At = time.Now()
	es.mu.Lock()
	if es.final {
		es.mu.Unlock()
		return
	}
	if len(es.q) == maxEvents {
		es.q[1].Dropped += es.q[0].Dropped + 1
		es.q[0] = SessionEvent{}
		es.q = es.q[1:]
		es.dropped++
	}
	es.q = append(es.q, ev)
	es.final = ev.Kind == SessionClosed
	es.mu.Unlock()
	select {
	case es.sig <- struct{}{}:
	default:
	}
}

// droppedCount returns how many events were dropped.
func (es *events) droppedCount() int64 {
	if es == nil {
		return 0
	}
	es.mu.Lock()
	defer es.mu.Unlock()
	return es.dropped
}

// loop calls fn for each event until it has delivered SessionClosed.
func (es *events) loop() {
	for range es.sig {
		for {
			es.mu.Lock()
			if len(es.q) == 0 {
				es.mu.Unlock()
				break
			}
			ev := es.q[0]
			es.q[0] = SessionEvent{}
			es.q = es.q[1:]
			es.mu.Unlock()
			es.fn(ev)
			if ev.Kind == SessionClosed {
				return
			}
		}
	}
}
