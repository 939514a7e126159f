// Package client is the Go client library for Ding's socket protocol.
//
// A Client keeps one device connected: it reconnects with backoff and
// resumes the stream where it left off, resends unacknowledged submits
// (deduplicated by the server through their client message ids), and drops
// entries it already handed to the application, so the application sees
// each stream entry once, in order. Its reader never waits for the
// application: acknowledgements and answers keep arriving however slowly
// Entries is drained, so Send, Read, Confirm and Receipts may be called
// from the goroutine that drains it (entries beyond Config.MaxQueue are
// fetched again later, not lost).
//
//	c, err := client.Dial(ctx, client.Config{Addr: "127.0.0.1:7070", Token: tok, Device: "phone"})
//	defer c.Close()
//	res, err := c.Send(ctx, []string{"bo"}, []byte("hi"))   // returns after the durable ack
//	for e := range c.Entries() {
//		switch {
//		case e.Message != nil: ...   // kind DING: show Choices, then c.Confirm(ctx, e.Message.ID, n)
//		case e.Receipt != nil: ...
//		case e.Ding != nil: ...      // a DING's progress, or a reminder
//		case e.Burn != nil: ...      // delete the secret message e.Burn.ID everywhere
//		case e.Secret != nil: ...    // a secret chat was created, or a screenshot reported
//		}
//		c.Ack(e.Seq)                                   // cumulative; the server stores it
//	}
//
// The package's Example is a runnable application: it sends, takes its
// entries in one goroutine, and reads and confirms from there.
//
// # Cursors
//
// To resume exactly where it stopped, an application persists the seq of
// the last entry it processed and passes it as Config.Cursor on the next
// start. Client.Cursor gives the seq of the last entry the application
// took from Entries, and nothing the client merely received: after
// Close, entries still waiting in the Entries channel (or in the client's
// queue) are not counted, so a client dialled with that cursor gets them
// again. Entries left in the channel may still be read after Close, and
// Cursor then counts them too.
//
//	c.Close()
//	if seq, ok := c.Cursor(); ok {
//		save(seq) // next start: Config{Cursor: &seq, ...}
//	}
//
// Without a Config.Cursor the server resumes from the device's stored
// cursor: the last Ack, so ack only what was processed.
//
// # Session events and the dialer
//
// Config.OnSession is told what happens to the connection: each session
// that starts (the address, the cursor the HELLO carried, the WELCOME's
// resume_from, head and limits), each that ends and why (the server's
// fatal ERROR, code and detail, as an *Error, or the transport's error),
// each NOT_OWNER redirect in a cluster, each failed attempt, and the
// client's stop. It runs on a goroutine of its own and never holds up
// the client; events it falls behind on are counted, not lost silently.
//
//	cfg.OnSession = func(ev client.SessionEvent) {
//		slog.Info("ding session", "event", ev.Kind, "addr", ev.Addr, "resume_from", ev.ResumeFrom, "err", ev.Err)
//	}
//
// Config.Dial, when set, opens every connection (each address, each
// redirect, each reconnect), for a proxy or a custom resolver; with
// Config.TLS set, TLS runs on top of the connection it returns.
//
// # Secret chats
//
// CreateChat opens one with another user, SendChat sends in
// it, and Screenshot reports a screenshot (level 3). Their messages arrive
// with Message.Chat set and pseudonyms in From and To; the application must
// honour NoCopy and NoForward, render Watermark, and delete the message
// when its Burn entry arrives (see PROTOCOL.md §13).
//
//	chat, err := c.CreateChat(ctx, "bo", 2, 0)
//	res, err := c.SendChat(ctx, chat, []byte("for your eyes only"))
package client

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// Config configures a Client. Addr and Device are required, and Token
// unless TLS presents a client certificate (mTLS).
type Config struct {
	// Addr is the server's socket address (host:port), or, for a
	// cluster, several separated by commas: the client connects to the
	// first that answers, follows a NOT_OWNER redirect to the node that
	// serves its user, and, when that node is lost, tries the same
	// node first, then the others in turn (PROTOCOL.md §4, "Cluster mode").
	Addr string
	// Token is the device's client token. It may be empty when TLS
	// presents a client certificate (Certificates or
	// GetClientCertificate) that the server's client CA signed and that
	// names this device in a URI SAN ding:client/USER/DEVICE (dingd
	// --tls-client-ca); the server then authenticates the certificate.
	Token  string
	Device string
	// Cursor is the last sequence number the application processed in an
	// earlier run (Client.Cursor at the end of that run, if it processed
	// each entry as it took it); nil means resume from the cursor the
	// server stored, the device's last Ack.
	Cursor *uint64
	// TLS, when set, connects over TLS (dingd --tls-listen) and verifies
	// the server with it (RootCAs: the CA that signed the server's
	// certificate; nil RootCAs: the system's roots; an empty ServerName
	// is taken from the address dialled).
	TLS *tls.Config
	// PinSHA256, when set (with TLS), accepts a server only if its
	// certificate's public key has one of these pins (PinSHA256: base64 of
	// the SHA-256 of the SubjectPublicKeyInfo), on top of the usual
	// verification; a mismatch fails with ErrPinMismatch. Give two during
	// a key rotation.
	PinSHA256 []string
	// Dial, when set, opens every connection the client makes: to each
	// address of Addr, to redirects, on every reconnect; network is
	// "tcp". It may route through a proxy, resolve names its own way or
	// set socket options. With TLS set, the TLS handshake runs over the
	// connection it returns. ctx ends when the attempt's DialTimeout
	// does. nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnSession, when set, is told what happens to the connection: each
	// session that starts (with the cursor it resumed from and the
	// WELCOME) and ends (with the server's ERROR or the transport's
	// error), each NOT_OWNER redirect, each failed attempt, and last the
	// client's stop (see SessionEvent). It is called on a goroutine of
	// its own, one event at a time, in order; the client never waits for
	// it, and it may call any method of the client, Close included. If it
	// falls behind by more than 64 events, the oldest are dropped and the
	// next event it gets says how many (SessionEvent.Dropped); nothing is
	// dropped silently. Events start with Dial's own attempts, but if
	// Dial fails there is no client and no call: its error says why. The
	// last call (SessionClosed) may come after Close returns; Done is
	// closed after it.
	OnSession func(SessionEvent)
	// SendTimeout bounds a Send whose context has no deadline; zero means
	// one minute. (A Send that times out returns an *UnsureError.)
	SendTimeout time.Duration
	// Buffer is the capacity of the Entries channel; zero means 1024.
	Buffer int
	// MaxQueue bounds the entries received and not yet taken from
	// Entries (beyond Buffer); zero means 65536. The connection's reader
	// never waits for the application: acks and answers (Send, Read,
	// Confirm, Receipts) keep arriving however slowly Entries is drained,
	// so those calls may be made from the goroutine that drains it. Past
	// MaxQueue, newer entries are not kept; once the application has
	// drained half the queue, the client reconnects and the server sends
	// them again (nothing is lost, nothing repeated); a Read, Confirm or
	// Receipts in flight at that moment fails as on any disconnect, and
	// may be retried.
	MaxQueue int
	// MaxInflight bounds unacknowledged submits; zero means 256 (the
	// server's default limit). A lower limit announced by the server in
	// WELCOME wins.
	MaxInflight int
	// MinBackoff and MaxBackoff bound reconnect delays; zero means 50ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// DialTimeout bounds one connection attempt and handshake; zero means 5s.
	DialTimeout time.Duration
	// PongTimeout is how long, after each PING it sends, the client waits
	// for the server to send anything (its PONG, or any byte of any
	// frame) before it takes the server for gone and connects again (to
	// another node of a cluster, if this one does not answer); zero means
	// a third of the server's ping interval (10 s at dingd's default). It
	// pings every ping interval, and also when a request it sent (a
	// SUBMIT, or one awaiting an answer) is followed by nothing at all
	// from the server for a quarter of PongTimeout. A server that froze
	// (paused, its machine hung, the network to it dropping packets)
	// sends no reset: a client with something to send leaves it within
	// 1.25 PongTimeout (12.5 s by default), an idle one within a ping
	// interval and a PongTimeout (40 s); without this it would notice
	// only after three silent ping intervals (90 s).
	PongTimeout time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Message is a message delivered in the stream.
type Message struct {
	ID      string
	From    string
	To      []string
	Kind    pb.Kind
	Body    []byte
	Created time.Time
	// Choices is a DING's response menu (Kind DING only; may be empty):
	// Confirm with 1 for the first choice.
	Choices []string
	// Confirm: the sender asks for a confirmation (a must-confirm
	// announcement): Confirm with answer 0.
	Confirm bool
	// ForwardOf and QuoteOf name the message this one forwards or quotes
	// (empty for none).
	ForwardOf, QuoteOf string

	// Chat is the secret chat the message was sent in; empty for an
	// ordinary message. For a secret message From and To are the
	// participants' pseudonyms, and the fields below apply.
	Chat string
	// Level is the chat's privacy level, 1 to 3.
	Level int
	// BurnAfter: the message burns this long after its first read; a
	// Burn entry with its ID then arrives.
	BurnAfter time.Duration
	// NoCopy and NoForward are true for every secret message: do not let
	// the user copy its body, and offer no forward or quote (the server
	// refuses one with NO_FORWARD).
	NoCopy, NoForward bool
	// Watermark is, from level 2, the recipient's pseudonym, to render
	// over the message.
	Watermark string
}

// Receipt is a receipt event: User's state for the messages IDs moved
// forward (one ack or read makes one event per sender).
type Receipt struct {
	IDs   []string
	User  string
	State pb.State
	At    time.Time
}

// DingEvent is an event of a DING. The sender's stream gets one for each
// event of each recipient's ledger (delivered, read, confirmed, sms_queued,
// call_initiated, digits, ...; see PROTOCOL.md); a recipient's stream gets
// Event "reminder" when an in-app reminder step fires.
type DingEvent struct {
	ID        string // the DING, which is also its message's id
	Index     int    // the recipient's position in the DING's sorted recipients
	Recipient string // user id, or E.164 phone number for someone outside the app
	Event     string
	Channel   string // "inapp", "sms", "voice", or empty
	Device    string // for "delivered"
	Detail    string // for "confirmed": the answer and its choice, "2 decline"
	At        time.Time
}

// Burn says a secret message burned: delete it, and anything made from
// it, at once. It carries the id only. In the recipient's stream it may
// stand at the seq of a message that was never delivered.
type Burn struct {
	Seq uint64 // the entry's seq, as Entry.Seq
	ID  string // the burned message
}

// SecretEvent is an event of a secret chat. People are named by their
// pseudonyms in the chat.
type SecretEvent struct {
	Chat      string
	Event     string // "created" or "screenshot"; treat others as informational
	ID        string // screenshot: the message on screen, if the reporter said
	By        string // who created the chat or took the screenshot
	Level     int
	BurnAfter time.Duration
	You, Peer string // created: this user's pseudonym and the other's
	At        time.Time
}

// Entry is one stream entry; exactly one of Message, Receipt, Ding, Burn
// and Secret is set.
type Entry struct {
	Seq     uint64
	Message *Message
	Receipt *Receipt
	Ding    *DingEvent
	Burn    *Burn
	Secret  *SecretEvent
}

// SendResult answers a durable Send.
type SendResult struct {
	ID        string
	Created   time.Time
	Duplicate bool
}

// tooLarge checks a frame, and a submit's body (body >= 0), against the
// limits in the server's WELCOME w (none known: nil).
func tooLarge(w *pb.Welcome, frame []byte, body int) error {
	if w == nil {
		return nil
	}
	if w.MaxBody > 0 && body > int(w.MaxBody) {
		return &Error{Code: pb.Code_MESSAGE_TOO_LARGE, Detail: fmt.Sprintf("body of %d bytes; the server accepts at most %d (not sent)", body, w.MaxBody)}
	}
	if n := len(frame) - 4; w.MaxFrame > 0 && n > int(w.MaxFrame) {
		return &Error{Code: pb.Code_FRAME_TOO_LARGE, Detail: fmt.Sprintf("frame of %d bytes; the server accepts at most %d (not sent)", n, w.MaxFrame)}
	}
	return nil
}

// Error is an ERROR frame from the server, or a request the client
// refused to send because the server would refuse it (MESSAGE_TOO_LARGE,
// FRAME_TOO_LARGE against the limits in its WELCOME).
type Error struct {
	Code   pb.Code
	Detail string
	Fatal  bool
	// Retry says the same request may be sent again as it is (a Send
	// with the same client message id is stored once), after RetryAfter.
	Retry bool
	// RetryAfter is, for RATE_LIMITED, how long to wait before sending
	// the request again.
	RetryAfter time.Duration
	// Redirect is, for NOT_OWNER, the node to connect to instead.
	Redirect string
}

func (e *Error) Error() string { return fmt.Sprintf("ding: %v: %s", e.Code, e.Detail) }

// Is makes errors.Is(err, ErrRateLimited) true for RATE_LIMITED.
func (e *Error) Is(target error) bool {
	return target == ErrRateLimited && e.Code == pb.Code_RATE_LIMITED
}

// ErrRateLimited is matched (errors.Is) by an *Error of code
// RATE_LIMITED: a Send over the user's rate of submits (not stored;
// send it again after the error's RetryAfter), or a connection refused
// because its address failed to authenticate too often (the client
// reconnects by itself, not before RetryAfter).
var ErrRateLimited = errors.New("client: rate limited")

// errorOf is the *Error of an ERROR frame.
func errorOf(m *pb.Error) *Error {
	return &Error{Code: m.Code, Detail: m.Detail, Fatal: m.Fatal, Retry: m.Retry,
		RetryAfter: time.Duration(m.RetryAfterMs) * time.Millisecond, Redirect: m.Redirect}
}

// maxInbound bounds frames from the server. It is not the server's
// max_frame (which limits what the server accepts): a message sent through
// the admin API with many recipients encodes larger than any submit.
const maxInbound = 16 << 20

// ErrClosed is returned by calls on a closed client.
var ErrClosed = errors.New("client: closed")

// Stats counts what the client did.
type Stats struct {
	Connects   int64 // successful handshakes
	Duplicates int64 // entries dropped because they were already delivered
	Redirects  int64 // NOT_OWNER redirects followed (cluster mode)
	Refetches  int64 // reconnects to fetch again entries not kept past MaxQueue
	// EventsDropped counts session events Config.OnSession did not get
	// because it fell behind.
	EventsDropped int64
}

// Client is one connected device. Its methods are safe for concurrent use.
type Client struct {
	cfg Config
	log *slog.Logger

	entries chan Entry
	sem     chan struct{} // inflight submits

	ev *events // Config.OnSession's; nil without one. Its lock is taken alone or inside mu.

	// up is closed once the first session holds its connection: Dial
	// returns then, so that a request right after Dial finds it.
	up     chan struct{}
	upOnce sync.Once

	mu       sync.Mutex
	nc       net.Conn                // current connection, nil while disconnected; guarded by mu
	ncReason error                   // why the client itself closed nc (ErrRefetch); guarded by mu
	welcome  *pb.Welcome             // guarded by mu
	nextRef  uint64                  // guarded by mu
	submits  map[uint64]*pendingSub  // guarded by mu
	requests map[uint64]chan reqDone // READ, CONFIRM, RECEIPTS_QUERY, SECRET_CREATE and SCREENSHOT waiters; guarded by mu
	acked    uint64                  // guarded by mu
	err      error                   // terminal error; guarded by mu

	wmu sync.Mutex // serialises writes to nc

	idPrefix string        // random, per client: generated client message ids start with it
	idSeq    atomic.Uint64 // counter for generated client message ids

	delivered atomic.Uint64 // last seq handed to the app (reader goroutine writes)
	haveDeliv atomic.Bool
	stats     struct{ connects, dups, refetches atomic.Int64 }

	// Entries received and not yet handed to the application (pump);
	// overflow: past MaxQueue, newer ones are not kept.
	qmu      sync.Mutex
	queue    []Entry // guarded by qmu
	overflow bool    // guarded by qmu
	// stale: this connection overflowed, so what it delivers from now on
	// lies past a gap; dropped until the next session. Guarded by qmu.
	stale bool
	qsig  chan struct{}

	// What the application took from Entries (Cursor): the seqs of the
	// entries the pump handed to the channel, the newest cap(entries)+1
	// of them in a ring, and how many it handed. An entry is counted once
	// its send has completed, so the count of taken ones (handed minus
	// those still in the channel) is never ahead of the application.
	hmu     sync.Mutex
	handed  []uint64 // guarded by hmu
	nHanded uint64   // guarded by hmu

	quit chan struct{}
	// asked (capacity 1) tells the session that a request went out (a
	// SUBMIT, or one awaiting an answer): if the server then says nothing
	// for a quarter of PongTimeout, the session pings at once rather than
	// at the next ping interval, so that a server that froze is found out
	// soon after the client needs it.
	asked    chan struct{}
	quitOnce sync.Once
	runDone  chan struct{} // runLoop has returned
	pumpDone chan struct{} // pump has returned and closed Entries
	done     chan struct{} // every goroutine of the client has returned

	// The addresses to connect to (Config.Addr); used by Dial, then only
	// by runLoop. last is the one the last handshake succeeded on
	// (perhaps a redirect's), tried first; next the seed tried after it.
	seeds     []string
	last      string
	next      int
	redirects atomic.Int64
}

// maxRedirects bounds the NOT_OWNER redirects one connection attempt
// follows (a cluster in the middle of a move may point back and forth).
const maxRedirects = 3

type pendingSub struct {
	ref    uint64
	frame  []byte
	body   int // the body's length, checked against each server's max_body
	done   chan subDone
	sentOn net.Conn // the connection it was last written to; guarded by c.mu
}

type subDone struct {
	res SendResult
	err error
}

type reqDone struct {
	msg proto.Message
	err error
}

// Dial connects and completes the handshake once, so that a bad token or
// address is reported here; after that the client reconnects by itself.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	var seeds []string
	for a := range strings.SplitSeq(cfg.Addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			seeds = append(seeds, a)
		}
	}
	clientCert := cfg.TLS != nil && (len(cfg.TLS.Certificates) > 0 || cfg.TLS.GetClientCertificate != nil)
	if len(seeds) == 0 || (cfg.Token == "" && !clientCert) || cfg.Device == "" {
		return nil, errors.New("client: Addr, Token (or a TLS client certificate) and Device are required")
	}
	if len(cfg.PinSHA256) > 0 {
		if cfg.TLS == nil {
			return nil, errors.New("client: PinSHA256 needs TLS")
		}
		var err error
		if cfg.TLS, err = pinnedTLS(cfg.TLS, cfg.PinSHA256); err != nil {
			return nil, err
		}
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = 1024
	}
	if cfg.MaxQueue == 0 {
		cfg.MaxQueue = 65536
	}
	cfg.MaxQueue = max(cfg.MaxQueue, 2)
	if cfg.SendTimeout == 0 {
		cfg.SendTimeout = time.Minute
	}
	if cfg.MaxInflight == 0 {
		cfg.MaxInflight = 256
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 50 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Client{
		cfg: cfg, log: cfg.Logger,
		entries:  make(chan Entry, cfg.Buffer),
		sem:      make(chan struct{}, cfg.MaxInflight),
		submits:  map[uint64]*pendingSub{},
		requests: map[uint64]chan reqDone{},
		handed:   make([]uint64, cfg.Buffer+1),
		quit:     make(chan struct{}),
		asked:    make(chan struct{}, 1),
		runDone:  make(chan struct{}),
		pumpDone: make(chan struct{}),
		done:     make(chan struct{}),
		up:       make(chan struct{}),
		seeds:    seeds,
	}
	if cfg.OnSession != nil {
		c.ev = newEvents(cfg.OnSession)
	}
	var rb [12]byte
	rand.Read(rb[:])
	c.idPrefix = hex.EncodeToString(rb[:]) + "-"
	if cfg.Cursor != nil {
		c.delivered.Store(*cfg.Cursor)
		c.haveDeliv.Store(true)
		c.acked = *cfg.Cursor
	}
	// Each address once: a cluster's first node may be the one that is down.
	var l *link
	var err error
	for range seeds {
		if l, err = c.connect(ctx); err == nil || ctx.Err() != nil {
			break
		}
		var pe *Error
		if errors.As(err, &pe) && fatalCode(pe.Code) {
			break
		}
	}
	if err != nil {
		return nil, err // no client, so no events: the error says why
	}
	c.welcome = l.w
	if m := int(l.w.MaxInflight); m > 0 && m < cap(c.sem) {
		c.sem = make(chan struct{}, m) // the server allows fewer: never trip TOO_MANY_INFLIGHT
	}
	c.qsig = make(chan struct{}, 1)
	go c.pump()
	go c.runLoop(l)
	go func() {
		if c.ev != nil {
			c.ev.loop() // until SessionClosed, which runLoop sends last
		}
		<-c.runDone
		<-c.pumpDone
		close(c.done)
	}()
	// The session takes the connection on its own goroutine: wait for it,
	// or a Read or Confirm right after Dial would find none ("not
	// connected; retry").
	select {
	case <-c.up:
	case <-c.done:
	case <-ctx.Done():
	}
	return c, nil
}

// Entries delivers stream entries in order, each once. It is closed when
// the client stops for good (Close, or a fatal error: see Err).
func (c *Client) Entries() <-chan Entry { return c.entries }

// Err returns the error that stopped the client, or nil.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Done is closed when the client has stopped and every goroutine it
// started has returned, Config.OnSession's included.
func (c *Client) Done() <-chan struct{} { return c.done }

// Cursor returns the seq of the last entry the application took from
// Entries: the value to persist and pass as Config.Cursor to the next
// Dial. Entries the client received and the application did not take are
// not counted, so a client dialled with it gets them again: those in the
// client's queue, and those still in the Entries channel when Close
// returns. The channel's entries may still be read after Close (it is
// closed behind them); Cursor then counts them too. While the client
// runs, Cursor may lag behind by an entry being handed over, never run
// ahead. ok is false when the application took none and Config.Cursor
// was nil (the next Dial may then leave Cursor nil as well).
//
// Taken is not processed: an application that hands entries on to be
// processed elsewhere persists the seq it finished processing instead.
func (c *Client) Cursor() (seq uint64, ok bool) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	waiting := uint64(len(c.entries)) // handed, not taken
	if c.nHanded <= waiting {
		if c.cfg.Cursor != nil {
			return *c.cfg.Cursor, true
		}
		return 0, false
	}
	i := (c.nHanded - 1 - waiting) % uint64(len(c.handed))
	return c.handed[i], true
}

// Stats returns counters.
func (c *Client) Stats() Stats {
	return Stats{Connects: c.stats.connects.Load(), Duplicates: c.stats.dups.Load(), Redirects: c.redirects.Load(),
		Refetches: c.stats.refetches.Load(), EventsDropped: c.ev.droppedCount()}
}

// Welcome returns the server's most recent WELCOME.
func (c *Client) Welcome() *pb.Welcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.welcome
}

// Close disconnects and stops the client. Pending calls fail with
// ErrClosed. It returns once the connection is closed and no entry is
// being handed to Entries, so Cursor is exact from then on; entries left
// in the channel may still be read. Config.OnSession may still be
// getting its last events: Done is closed after it has.
func (c *Client) Close() error {
	c.stop(ErrClosed)
	<-c.runDone
	<-c.pumpDone
	return nil
}

func (c *Client) stop(err error) {
	c.quitOnce.Do(func() {
		c.mu.Lock()
		if c.err == nil {
			c.err = err
		}
		if c.nc != nil {
			c.nc.Close()
		}
		c.mu.Unlock()
		close(c.quit)
	})
}

// link is a connection whose handshake succeeded.
type link struct {
	nc     net.Conn
	w      *pb.Welcome
	addr   string
	cursor *uint64 // the HELLO's; nil: none was sent
}

// connect connects to the address that worked last, or else the next
// seed, following NOT_OWNER redirects; an address that fails is not
// tried first again.
func (c *Client) connect(ctx context.Context) (*link, error) {
	addr := c.last
	if addr == "" {
		addr = c.seeds[c.next]
		c.next = (c.next + 1) % len(c.seeds)
	}
	for hops := 0; ; hops++ {
		l, err := c.handshake(ctx, addr)
		if err == nil {
			c.last = addr
			return l, nil
		}
		c.last = ""
		var pe *Error
		if errors.As(err, &pe) && pe.Code == pb.Code_NOT_OWNER && pe.Redirect != "" && hops < maxRedirects {
			c.log.Debug("redirected", "from", addr, "to", pe.Redirect)
			c.redirects.Add(1)
			c.ev.emit(SessionEvent{Kind: SessionRedirect, Addr: addr, Redirect: pe.Redirect, Err: pe})
			addr = pe.Redirect
			continue
		}
		c.ev.emit(SessionEvent{Kind: SessionDialFailed, Addr: addr, Err: err})
		return nil, err
	}
}

// dial opens a connection to addr through Config.Dial, with TLS on top
// when Config.TLS is set.
func (c *Client) dial(ctx context.Context, addr string) (net.Conn, error) {
	dial := c.cfg.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	nc, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if c.cfg.TLS == nil {
		return nc, nil
	}
	cfg := c.cfg.TLS
	if cfg.ServerName == "" {
		// As tls.Dialer does: verify the name dialled.
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	return tc, nil
}

// handshake dials addr and performs the handshake.
func (c *Client) handshake(ctx context.Context, addr string) (*link, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	nc, err := c.dial(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	hello := &pb.Hello{Version: wire.Version, Token: c.cfg.Token, Device: c.cfg.Device}
	if c.haveDeliv.Load() {
		cur := c.delivered.Load()
		hello.Cursor = &cur
	}
	if _, err := nc.Write(wire.Encode(pb.FrameType_HELLO, hello)); err != nil {
		nc.Close()
		return nil, fmt.Errorf("client: send hello to %s: %w", addr, err)
	}
	ft, msg, err := readFrame(nc, maxInbound)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("client: handshake with %s: %w", addr, err)
	}
	nc.SetDeadline(time.Time{})
	switch m := msg.(type) {
	case *pb.Welcome:
		return &link{nc: nc, w: m, addr: addr, cursor: hello.Cursor}, nil
	case *pb.Error:
		nc.Close()
		return nil, errorOf(m)
	}
	nc.Close()
	return nil, fmt.Errorf("client: handshake with %s: unexpected %v", addr, ft)
}

func readFrame(r io.Reader, max int) (pb.FrameType, proto.Message, error) {
	ft, payload, err := readPayload(r, max)
	if err != nil {
		return 0, nil, err
	}
	msg, err := wire.Decode(ft, payload)
	return ft, msg, err
}

// readPayload reads one frame: its type and a payload of its own (never
// reused, so what is decoded from it may alias it).
func readPayload(r io.Reader, max int) (pb.FrameType, []byte, error) {
	var hdr [wire.HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n, ft, err := wire.ParseHeader(hdr[:], max)
	if err != nil {
		return 0, nil, err
	}
	payload := make([]byte, n-1)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	return ft, payload, nil
}

// fatalCode reports whether reconnecting cannot help.
func fatalCode(code pb.Code) bool {
	switch code {
	case pb.Code_BAD_TOKEN, pb.Code_TOKEN_EXPIRED, pb.Code_DEVICE_MISMATCH, pb.Code_BAD_VERSION, pb.Code_REPLACED, pb.Code_USER_REMOVED:
		return true
	}
	return false
}

// runLoop owns the connection: it runs one session, then reconnects.
func (c *Client) runLoop(l *link) {
	defer close(c.runDone)
	defer func() { c.ev.emit(SessionEvent{Kind: SessionClosed, Err: c.Err()}) }()
	backoff := c.cfg.MinBackoff
	var notBefore time.Duration // RATE_LIMITED's retry_after: the next attempt waits at least this
	for {
		if l != nil {
			backoff = c.cfg.MinBackoff
			err := c.session(l)
			notBefore = retryAfter(err)
			var pe *Error
			if errors.As(err, &pe) && fatalCode(pe.Code) {
				c.stop(pe)
			}
			if errors.As(err, &pe) && pe.Code == pb.Code_NOT_OWNER {
				c.last = pe.Redirect // the node that serves this user now ("": try the seeds)
				if pe.Redirect != "" {
					c.redirects.Add(1)
					c.ev.emit(SessionEvent{Kind: SessionRedirect, Addr: l.addr, Redirect: pe.Redirect, Err: pe})
				}
			}
		}
		select {
		case <-c.quit:
			c.failAll(c.Err())
			return
		default:
		}
		// Back off with jitter, then reconnect.
		t := time.NewTimer(max(backoff/2+mrand.N(backoff/2+1), notBefore))
		select {
		case <-c.quit:
			t.Stop()
			c.failAll(c.Err())
			return
		case <-t.C:
		}
		backoff = min(backoff*2, c.cfg.MaxBackoff)
		var err error
		l, err = c.connect(context.Background())
		notBefore = retryAfter(err)
		if err != nil {
			var pe *Error
			if errors.As(err, &pe) && fatalCode(pe.Code) {
				c.stop(pe)
			}
			c.log.Debug("reconnect failed", "err", err)
			l = nil
		}
	}
}

// retryAfter is how long a RATE_LIMITED err asks to wait; 0 for any
// other error.
func retryAfter(err error) time.Duration {
	var pe *Error
	if errors.As(err, &pe) && pe.Code == pb.Code_RATE_LIMITED {
		return pe.RetryAfter
	}
	return 0
}

// session serves one connection until it fails, and says why.
func (c *Client) session(l *link) error {
	nc, w := l.nc, l.w
	n := c.stats.connects.Add(1)
	c.mu.Lock()
	if c.err != nil { // closed meanwhile
		c.mu.Unlock()
		nc.Close()
		return c.err
	}
	c.nc, c.welcome = nc, w
	c.upOnce.Do(func() { close(c.up) })
	c.ev.emit(SessionEvent{Kind: SessionUp, Addr: l.addr, Session: n, Reconnect: n > 1, Cursor: l.cursor,
		ResumeFrom: w.ResumeFrom, Head: w.Head, Welcome: w})
	// A server whose stream is shorter than what this client has seen (a
	// restore from backup) resumes at its head: follow it, or every new
	// entry would look like a duplicate and every ack would be refused.
	if last := w.ResumeFrom - 1; c.haveDeliv.Load() && last < c.delivered.Load() {
		c.log.Warn("server resumed behind this client's cursor", "cursor", c.delivered.Load(), "resume_from", w.ResumeFrom)
		c.delivered.Store(last)
	}
	c.qmu.Lock()
	c.stale = false // entries of this session follow the last one kept
	c.qmu.Unlock()
	c.acked = min(c.acked, w.Head)
	acked := c.acked
	// Resend what was not acknowledged, in order (the server deduplicates),
	// unless Send already wrote it on this connection. A submit this
	// server would refuse as too large fails instead (it was queued before
	// any WELCOME told the limits, or a server's limits went down).
	var pending []*pendingSub
	for ref, p := range c.submits {
		if err := tooLarge(w, p.frame, p.body); err != nil {
			p.done <- subDone{err: err}
			delete(c.submits, ref)
			continue
		}
		if p.sentOn != nc {
			p.sentOn = nc
			pending = append(pending, p)
		}
	}
	c.mu.Unlock()
	slices.SortFunc(pending, func(a, b *pendingSub) int { return cmp.Compare(a.ref, b.ref) })
	resend := make([][]byte, len(pending))
	for i, p := range pending {
		resend[i] = p.frame
	}
	if acked > 0 {
		c.write(wire.Encode(pb.FrameType_ACK, &pb.Ack{Seq: acked}))
	}
	for _, f := range resend {
		c.write(f)
	}

	ping := time.Duration(w.PingIntervalMs) * time.Millisecond
	if ping <= 0 {
		ping = 30 * time.Second
	}
	pongWait := c.cfg.PongTimeout
	if pongWait <= 0 {
		pongWait = ping / 3
	}
	heard := &heardConn{Conn: nc}
	heard.last.Store(time.Now().UnixNano())
	readErr := make(chan error, 1)
	go func() { readErr <- c.readLoop(heard, maxInbound, 3*ping) }()
	t := time.NewTicker(ping)
	defer t.Stop()
	pong := time.NewTimer(pongWait)
	pong.Stop()
	defer pong.Stop()
	var pinged int64 // unix ns of the PING the pong timer waits on
	probe := time.NewTimer(pongWait)
	probe.Stop()
	defer probe.Stop()
	var lastAsked int64 // unix ns of the last request that went out (asked)
	probing := false    // the probe timer is armed
	var err error
loop:
	for {
		select {
		case err = <-readErr:
			break loop
		case <-c.quit:
			nc.Close()
			err = <-readErr
			break loop
		case <-t.C:
			pinged = time.Now().UnixNano()
			c.write(wire.Encode(pb.FrameType_PING, &pb.Ping{Nonce: uint64(pinged)}))
			pong.Reset(pongWait)
		case <-c.asked:
			// A request went out: look, a quarter of PongTimeout after
			// the last one, whether the server said anything since.
			lastAsked = time.Now().UnixNano()
			if !probing {
				probing = true
				probe.Reset(pongWait / 4)
			}
		case <-probe.C:
			probing = false
			last := heard.last.Load()
			if last >= lastAsked {
				continue // heard since the last request went out
			}
			if due := time.Duration(lastAsked-time.Now().UnixNano()) + pongWait/4; due > 0 {
				probing = true // requests went out since: look again then
				probe.Reset(due)
				continue
			}
			// Nothing at all since the last request (a live server
			// answers it, or something else, well within that): ping now
			// rather than at the next ping interval. A busy session hears
			// the server all the time, and pings no more than before.
			if pinged <= last {
				pinged = time.Now().UnixNano()
				c.write(wire.Encode(pb.FrameType_PING, &pb.Ping{Nonce: uint64(pinged)}))
				pong.Reset(pongWait)
			}
		case <-pong.C:
			if heard.last.Load() >= pinged {
				continue // the server spoke since the PING
			}
			c.mu.Lock()
			c.ncReason = fmt.Errorf("client: server silent for %v after a PING (PongTimeout): taken for gone", pongWait)
			c.mu.Unlock()
			nc.Close()
		}
	}
	c.mu.Lock()
	c.nc = nil
	switch {
	case c.err != nil: // Close (which closed nc)
		err = c.err
	case c.ncReason != nil:
		err = c.ncReason
	}
	c.ncReason = nil
	// Requests other than SUBMIT are not resent; their callers retry.
	for ref, ch := range c.requests {
		ch <- reqDone{err: fmt.Errorf("client: disconnected: %w", err)}
		delete(c.requests, ref)
	}
	c.mu.Unlock()
	nc.Close()
	c.ev.emit(SessionEvent{Kind: SessionDown, Addr: l.addr, Session: n, Err: err})
	return err
}

// heardConn is a connection that notes when it last read anything: the
// pong timer's evidence that the server is alive (a frame still arriving
// counts, however large and slow).
type heardConn struct {
	net.Conn
	last atomic.Int64 // unix ns of the last read that returned bytes
}

func (h *heardConn) Read(p []byte) (int, error) {
	n, err := h.Conn.Read(p)
	if n > 0 {
		h.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// readLoop reads frames until the connection fails. A server that sends
// nothing, not even the PONGs to our PINGs, for silence is taken for dead
// (and sooner, by the pong timer, which closes the connection).
func (c *Client) readLoop(nc net.Conn, max int, silence time.Duration) error {
	// Buffered: a catch-up arrives as many frames per TCP read, and two
	// reads (header, payload) per frame straight from the socket would be
	// two syscalls each.
	r := bufio.NewReaderSize(nc, 64<<10)
	for {
		nc.SetReadDeadline(time.Now().Add(silence))
		ft, payload, err := readPayload(r, max)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("client: server silent for %v: %w", silence, err)
		}
		if err != nil {
			return err
		}
		if ft == pb.FrameType_DELIVER {
			// Most of a stream: decoded by hand, not through proto.
			seq, m, err := decodeDeliver(payload)
			if err != nil {
				return err
			}
			c.deliver(Entry{Seq: seq, Message: m})
			continue
		}
		msg, err := wire.Decode(ft, payload)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pb.Burn:
			c.deliver(Entry{Seq: m.Seq, Burn: &Burn{Seq: m.Seq, ID: m.Id}})
		case *pb.SecretEvent:
			c.deliver(Entry{Seq: m.Seq, Secret: &SecretEvent{
				Chat: m.Chat, Event: m.Event, ID: m.Id, By: m.By, Level: int(m.Level),
				BurnAfter: time.Duration(m.BurnAfterMs) * time.Millisecond, You: m.You, Peer: m.Peer, At: time.UnixMilli(m.AtMs),
			}})
		case *pb.Receipt:
			c.deliver(Entry{Seq: m.Seq, Receipt: &Receipt{IDs: m.Ids, User: m.User, State: m.State, At: time.UnixMilli(m.AtMs)}})
		case *pb.DingEvent:
			c.deliver(Entry{Seq: m.Seq, Ding: &DingEvent{
				ID: m.Id, Index: int(m.Index), Recipient: m.Recipient, Event: m.Event, Channel: m.Channel,
				Device: m.Device, Detail: m.Detail, At: time.UnixMilli(m.AtMs),
			}})
		case *pb.SubmitAck:
			c.finishSubmit(m.Ref, subDone{res: SendResult{ID: m.Id, Created: time.UnixMilli(m.CreatedMs), Duplicate: m.Duplicate}})
		case *pb.Ok:
			c.finishRequest(m.Ref, reqDone{msg: m})
		case *pb.Receipts:
			c.finishRequest(m.Ref, reqDone{msg: m})
		case *pb.Error:
			pe := errorOf(m)
			if m.Fatal {
				// The request that cost the connection is answered, not
				// resent on the next one.
				if m.Ref != 0 {
					c.finishSubmit(m.Ref, subDone{err: pe})
					c.finishRequest(m.Ref, reqDone{err: pe})
				}
				return pe
			}
			if m.Ref != 0 {
				c.finishSubmit(m.Ref, subDone{err: pe})
				c.finishRequest(m.Ref, reqDone{err: pe})
			} else {
				c.log.Warn("server error", "code", m.Code, "detail", m.Detail)
			}
		case *pb.Ping:
			c.write(wire.Encode(pb.FrameType_PONG, &pb.Pong{Nonce: m.Nonce}))
		}
	}
}

// deliver hands an entry to the app unless it was handed over already.
func (c *Client) deliver(e Entry) {
	if c.haveDeliv.Load() && e.Seq <= c.delivered.Load() {
		c.stats.dups.Add(1)
		return
	}
	c.qmu.Lock()
	switch {
	case c.overflow || c.stale:
		// Not kept: the reconnect after the queue drains fetches it
		// again, resuming right after the last one kept. (Seqs need not
		// be consecutive: retention may delete entries.)
	case len(c.queue) >= c.cfg.MaxQueue:
		c.overflow, c.stale = true, true
	default:
		c.queue = append(c.queue, e)
		c.delivered.Store(e.Seq)
		c.haveDeliv.Store(true)
	}
	c.qmu.Unlock()
	select {
	case c.qsig <- struct{}{}:
	default:
	}
}

// pump hands the queued entries to the application, in order, and after
// an overflow reconnects once half the queue is drained (the server sends
// what was not kept again). It closes Entries when the client stops.
func (c *Client) pump() {
	defer close(c.pumpDone)
	defer close(c.entries)
	for {
		select {
		case <-c.qsig:
		case <-c.quit:
			return
		}
		for {
			c.qmu.Lock()
			if len(c.queue) == 0 {
				c.qmu.Unlock()
				break
			}
			e := c.queue[0]
			c.queue[0] = Entry{}
			c.queue = c.queue[1:]
			refetch := c.overflow && len(c.queue) <= c.cfg.MaxQueue/2
			if refetch {
				c.overflow = false
			}
			c.qmu.Unlock()
			if refetch {
				c.stats.refetches.Add(1)
				c.mu.Lock()
				if c.nc != nil {
					c.ncReason = ErrRefetch
					c.nc.Close() // runLoop reconnects, resuming after the last entry kept
				}
				c.mu.Unlock()
			}
			if !c.hand(e) {
				return
			}
		}
	}
}

// hand sends e to Entries and counts it as handed (see Cursor); false
// means the client stopped first.
func (c *Client) hand(e Entry) bool {
	// Room in the channel: send and count at once, so that Cursor never
	// sees the one without the other.
	c.hmu.Lock()
	select {
	case c.entries <- e:
		c.handedLocked(e.Seq)
		c.hmu.Unlock()
		return true
	default:
	}
	c.hmu.Unlock()
	// Full: wait for the application without holding hmu. Until the send
	// is counted, Cursor may count one entry too few, never one too many.
	select {
	case c.entries <- e:
		c.hmu.Lock()
		c.handedLocked(e.Seq)
		c.hmu.Unlock()
		return true
	case <-c.quit:
		return false
	}
}

func (c *Client) handedLocked(seq uint64) {
	c.handed[c.nHanded%uint64(len(c.handed))] = seq
	c.nHanded++
}

func (c *Client) finishSubmit(ref uint64, d subDone) {
	c.mu.Lock()
	p, ok := c.submits[ref]
	delete(c.submits, ref)
	c.mu.Unlock()
	if ok {
		p.done <- d
	}
}

func (c *Client) finishRequest(ref uint64, d reqDone) {
	c.mu.Lock()
	ch, ok := c.requests[ref]
	delete(c.requests, ref)
	c.mu.Unlock()
	if ok {
		ch <- d
	}
}

func (c *Client) failAll(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for ref, p := range c.submits {
		p.done <- subDone{err: err}
		delete(c.submits, ref)
	}
	for ref, ch := range c.requests {
		ch <- reqDone{err: err}
		delete(c.requests, ref)
	}
}

// write sends a frame on the current connection; a failure is left to the
// reader to notice (the connection is then replaced).
func (c *Client) write(frame []byte) {
	c.mu.Lock()
	nc := c.nc
	c.mu.Unlock()
	if nc == nil {
		return
	}
	c.writeTo(nc, frame)
}

// ask tells the session a request went out (see asked).
func (c *Client) ask() {
	select {
	case c.asked <- struct{}{}:
	default:
	}
}

func (c *Client) writeTo(nc net.Conn, frame []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	nc.SetWriteDeadline(time.Now().Add(c.cfg.DialTimeout))
	if _, err := nc.Write(frame); err != nil {
		nc.Close()
	}
}

// SendOption adjusts one Send.
type SendOption func(*pb.Submit)

// WithKind sets the message kind (default TEXT). Kind DING is refused
// with BAD_REQUEST: DINGs are sent through the admin API, which escalates
// them.
func WithKind(k pb.Kind) SendOption { return func(s *pb.Submit) { s.Kind = k } }

// WithForwardOf marks the message as a forward of id, a message this user
// sent or received. A secret message cannot be forwarded: NO_FORWARD.
func WithForwardOf(id string) SendOption { return func(s *pb.Submit) { s.ForwardOf = id } }

// WithQuoteOf marks the message as quoting id, a message this user sent or
// received. A secret message cannot be quoted: NO_FORWARD.
func WithQuoteOf(id string) SendOption { return func(s *pb.Submit) { s.QuoteOf = id } }

// WithClientID sets the client message id (default: one unique to this
// client and message, kept across the client's own resends). Set it when
// the application itself may retry a send, for example after a restart.
func WithClientID(id string) SendOption { return func(s *pb.Submit) { s.ClientMsgId = id } }

// Send submits a message and returns once the server has it durably. If
// the connection drops first, it is resent on the next connection with the
// same client message id, so it is stored once. If ctx ends first (or
// Config.SendTimeout, for a ctx without deadline) the outcome is unknown:
// the error is an *UnsureError whose ClientMsgID, given again with
// WithClientID, makes a retry store the message at most once. A body over the server's max_body (from its
// WELCOME) fails at once with an *Error of code MESSAGE_TOO_LARGE and is
// not sent; the connection is unaffected. A send over the user's rate
// limit fails with an *Error of code RATE_LIMITED (errors.Is
// ErrRateLimited), Retry set and RetryAfter saying when to send it again;
// it was not stored, and the client does not resend it by itself.
func (c *Client) Send(ctx context.Context, to []string, body []byte, opts ...SendOption) (SendResult, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.SendTimeout)
		defer cancel()
	}
	sub := &pb.Submit{To: to, Kind: pb.Kind_TEXT, Body: body}
	for _, o := range opts {
		o(sub)
	}
	if sub.ClientMsgId == "" {
		// A random prefix per client and a counter: unique without a
		// system call per message.
		sub.ClientMsgId = c.idPrefix + strconv.FormatUint(c.idSeq.Add(1), 36)
	}
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return SendResult{}, &UnsureError{ClientMsgID: sub.ClientMsgId, Err: ctx.Err()} // not sent, in fact
	case <-c.quit:
		return SendResult{}, c.Err()
	}
	defer func() { <-c.sem }()
	p := &pendingSub{done: make(chan subDone, 1)}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return SendResult{}, c.err
	}
	c.nextRef++
	sub.Ref = c.nextRef
	p.ref, p.body = sub.Ref, len(body)
	p.frame = wire.Encode(pb.FrameType_SUBMIT, sub)
	// A message the server would refuse fails here, at once: sent, it
	// would cost the connection (FRAME_TOO_LARGE is fatal) and, resent on
	// every reconnect, every connection after it.
	if err := tooLarge(c.welcome, p.frame, p.body); err != nil {
		c.mu.Unlock()
		return SendResult{}, err
	}
	c.submits[sub.Ref] = p
	// Write on the connection current now; a session that starts later
	// resends it (see session), one that started earlier cannot have.
	nc := c.nc
	p.sentOn = nc
	c.mu.Unlock()
	if nc != nil {
		c.writeTo(nc, p.frame)
		c.ask()
	}
	select {
	case d := <-p.done:
		return d.res, d.err
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.submits, sub.Ref)
		c.mu.Unlock()
		return SendResult{}, &UnsureError{ClientMsgID: sub.ClientMsgId, Err: ctx.Err()}
	}
}

// UnsureError is Send's answer when its context ended before the
// server's: the message may or may not be stored. Send it again with
// WithClientID(ClientMsgID) and the server stores it at most once (the
// answer then says Duplicate if the first one was). errors.Is sees the
// context's error through it.
type UnsureError struct {
	ClientMsgID string
	Err         error
}

func (e *UnsureError) Error() string {
	return fmt.Sprintf("client: send unconfirmed (%v): resend with WithClientID(%q) to store it at most once", e.Err, e.ClientMsgID)
}

func (e *UnsureError) Unwrap() error { return e.Err }

// SendChat sends a message in a secret chat (see CreateChat): the other
// participant receives it. It is Send otherwise (durable ack, resent on
// reconnect, deduplicated). Errors from the server include NOT_MEMBER (not
// your chat, or no such chat) and NO_FORWARD (WithForwardOf or WithQuoteOf
// in a secret chat).
func (c *Client) SendChat(ctx context.Context, chat string, body []byte, opts ...SendOption) (SendResult, error) {
	return c.Send(ctx, nil, body, append(slices.Clip(opts), func(s *pb.Submit) { s.Chat = chat })...)
}

// Ack tells the server that every entry up to seq was processed. Acks are
// cumulative and cheap; call it as often as convenient.
func (c *Client) Ack(seq uint64) {
	c.mu.Lock()
	if seq <= c.acked {
		c.mu.Unlock()
		return
	}
	c.acked = seq
	c.mu.Unlock()
	c.write(wire.Encode(pb.FrameType_ACK, &pb.Ack{Seq: seq}))
}

func (c *Client) request(ctx context.Context, build func(ref uint64) []byte) (proto.Message, error) {
	ch := make(chan reqDone, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	if c.nc == nil {
		c.mu.Unlock()
		return nil, errors.New("client: not connected; retry")
	}
	c.nextRef++
	ref := c.nextRef
	frame := build(ref)
	if err := tooLarge(c.welcome, frame, -1); err != nil { // a READ of too many ids
		c.mu.Unlock()
		return nil, err
	}
	c.requests[ref] = ch
	c.mu.Unlock()
	c.write(frame)
	c.ask()
	select {
	case d := <-ch:
		return d.msg, d.err
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.requests, ref)
		c.mu.Unlock()
		return nil, ctx.Err()
	}
}

// Read marks messages read, on every device of this user, and returns once
// that is durable.
func (c *Client) Read(ctx context.Context, ids ...string) error {
	_, err := c.request(ctx, func(ref uint64) []byte {
		return wire.Encode(pb.FrameType_READ, &pb.Read{Ref: ref, Ids: ids})
	})
	return err
}

// Confirm confirms a DING this user received, with answer: the 1-based
// number of one of its choices, or 0 to confirm without choosing. It stops
// the DING's escalation for this user and returns once that is durable.
// Confirming again succeeds and changes nothing. Errors from the server
// are *Error with code NOT_FOUND, NOT_DING, NOT_RECIPIENT or BAD_ANSWER
// (do not retry unchanged), or UNAVAILABLE (retry later).
func (c *Client) Confirm(ctx context.Context, id string, answer int) error {
	_, err := c.ConfirmCheck(ctx, id, answer)
	return err
}

// Receipts returns each recipient's state for a message this user sent.
func (c *Client) Receipts(ctx context.Context, id string) ([]*pb.RecipientState, error) {
	m, err := c.request(ctx, func(ref uint64) []byte {
		return wire.Encode(pb.FrameType_RECEIPTS_QUERY, &pb.ReceiptsQuery{Ref: ref, Id: id})
	})
	if err != nil {
		return nil, err
	}
	return m.(*pb.Receipts).Recipients, nil
}

// CreateChat opens a secret chat with the user to at level 1, 2 or 3 and
// returns its id once it is durable. burnAfter is how long after its first
// read a message burns: zero means the server's default, and only level 3
// may choose it (whole seconds, at least 5s). Both participants then get a
// SecretEvent "created" naming their pseudonyms. Errors from the server
// are *Error with code BAD_CHAT, UNKNOWN_RECIPIENT or BAD_REQUEST (do not
// retry unchanged), or UNAVAILABLE (retry later; a chat may have been
// created).
func (c *Client) CreateChat(ctx context.Context, to string, level int, burnAfter time.Duration) (string, error) {
	if level < 0 || level > math.MaxUint32 {
		return "", fmt.Errorf("client: create chat: level %d out of range", level)
	}
	m, err := c.request(ctx, func(ref uint64) []byte {
		return wire.Encode(pb.FrameType_SECRET_CREATE, &pb.SecretCreate{
			Ref: ref, To: to, Level: uint32(level), BurnAfterMs: burnAfter.Milliseconds(),
		})
	})
	if err != nil {
		return "", err
	}
	return m.(*pb.Ok).Id, nil
}

// Screenshot reports that the user took a screenshot in a level-3 secret
// chat, of the message msgID if not empty; the other participant gets a
// SecretEvent "screenshot". It returns once that is durable. Errors from
// the server: BAD_CHAT below level 3, NOT_MEMBER.
func (c *Client) Screenshot(ctx context.Context, chat, msgID string) error {
	_, err := c.request(ctx, func(ref uint64) []byte {
		return wire.Encode(pb.FrameType_SCREENSHOT, &pb.Screenshot{Ref: ref, Chat: chat, Id: msgID})
	})
	return err
}
