package session

import (
	"crypto/x509"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/channels/codes"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/ratelimit"
)

// Transport is one client connection as a session sees it: a way to write
// frames and to close. A transport adapter (package channels/socket for
// TCP through netpoll, and its WebSocket gateway) implements it, reads the
// connection's bytes into whole frames for Session.HandleFrame, and calls
// Session.Closed when the connection is gone.
type Transport interface {
	// Write writes frames, in order, as one write where it can (size is
	// their total length). The session calls it from one goroutine at a
	// time (its flusher), never while holding its own lock; it may block
	// up to the transport's write timeout. An error means the connection
	// is unusable; the session then closes it.
	Write(frames [][]byte, size int) error
	// Close closes the connection. It may be called more than once and
	// from any goroutine; the transport then calls Session.Closed once.
	Close() error
}

// PeerCertifier is an optional capability of a Transport (found by type
// assertion): a connection whose peer may have presented a client
// certificate that the TLS handshake verified against the server's client
// CA (mTLS). A HELLO without a token is then authenticated by the
// certificate, when it names a device (auth.CertIdentityOf).
type PeerCertifier interface {
	// PeerCertificate returns the verified leaf certificate, or nil if the
	// peer presented none. Called once, at the HELLO, after the TLS
	// handshake.
	PeerCertificate() *x509.Certificate
}

// closeGrace is how long a session that got a fatal error may take to
// flush it before its connection is closed regardless.
const closeGrace = time.Second

// maxReadIDs bounds the ids one READ frame may carry.
const maxReadIDs = 1000

// Session is the protocol state of one client connection: the handshake,
// the requests it hands to the engine, and its outbound queue. It
// implements fanout.Endpoint. See the package doc for who calls what.
type Session struct {
	m      *Manager
	t      Transport
	id     uint64
	opened int64 // unix nanos

	lastSeen atomic.Int64 // unix nanos of the last complete frame
	authed   atomic.Bool
	dead     atomic.Bool // a fatal error was queued: input is discarded
	inflight atomic.Int32
	dev      atomic.Pointer[Attachment]

	// Written once by the HELLO handler before authed is set; read only
	// by handlers after that (HandleFrame calls are serial).
	user, device string

	mu       sync.Mutex
	out      [][]byte    // queued frames; guarded by mu
	spare    [][]byte    // the flusher's recycled slice; owned by the flusher
	pending  int         // bytes in out plus the batch being flushed; guarded by mu
	flushing bool        // a flusher goroutine is running; guarded by mu
	closing  bool        // no more frames accepted; guarded by mu
	closed   bool        // the transport is gone; guarded by mu
	killer   *time.Timer // closes the transport if a fatal error cannot be flushed; guarded by mu
}

var _ fanout.Endpoint = (*Session)(nil)

// User returns the authenticated user, or "" before WELCOME.
func (s *Session) User() string {
	if !s.authed.Load() {
		return ""
	}
	return s.user
}

// Begin is called by the transport once it will report Closed: while the
// server drains, the session is told SHUTTING_DOWN at once.
func (s *Session) Begin() {
	if s.m.draining.Load() {
		s.fatal(pb.Code_SHUTTING_DOWN, 0, "server shutting down")
	}
}

// Dead reports whether the session queued a fatal error: the transport
// should discard further input.
func (s *Session) Dead() bool { return s.dead.Load() }

// HandleFrame handles one whole frame from the client. The transport calls
// it for one session from one goroutine at a time, in arrival order;
// payload is valid only during the call (it is decoded, not kept). It
// never waits on the engine: requests are handed off and answered later.
func (s *Session) HandleFrame(ft pb.FrameType, payload []byte) {
	if s.dead.Load() {
		return
	}
	s.lastSeen.Store(time.Now().UnixNano())
	m := s.m
	m.m.framesByType[byte(ft)].Inc()
	switch ft {
	case pb.FrameType_HELLO, pb.FrameType_SUBMIT, pb.FrameType_ACK, pb.FrameType_READ,
		pb.FrameType_PING, pb.FrameType_PONG, pb.FrameType_RECEIPTS_QUERY, pb.FrameType_CONFIRM,
		pb.FrameType_SECRET_CREATE, pb.FrameType_SCREENSHOT, pb.FrameType_PUSH_REGISTER, pb.FrameType_PUSH_OPENED:
	default:
		s.fatal(pb.Code_UNKNOWN_FRAME, 0, "not a client frame type: "+ft.String())
		return
	}
	if !s.authed.Load() && ft != pb.FrameType_HELLO {
		s.fatal(pb.Code_HANDSHAKE_REQUIRED, 0, "first frame must be HELLO")
		return
	}
	msg, err := wire.Decode(ft, payload)
	if err != nil {
		s.fatal(pb.Code_BAD_FRAME, 0, err.Error())
		return
	}
	switch f := msg.(type) {
	case *pb.Hello:
		s.hello(f)
	case *pb.Submit:
		s.submit(f)
	case *pb.Ack:
		m.cfg.Engine.AckAsync(s.user, s.device, f.Seq, func(err error) {
			if err != nil {
				s.fail(0, err)
			}
		})
	case *pb.Read:
		s.read(f)
	case *pb.Ping:
		s.Send(wire.Encode(pb.FrameType_PONG, &pb.Pong{Nonce: f.Nonce}))
	case *pb.Pong:
	case *pb.ReceiptsQuery:
		s.receipts(f)
	case *pb.Confirm:
		s.confirm(f)
	case *pb.SecretCreate:
		s.secretCreate(f)
	case *pb.Screenshot:
		s.screenshot(f)
	case *pb.PushRegister:
		s.pushRegister(f)
	case *pb.PushOpened:
		s.pushOpened(f)
	}
}

// Touch tells the session its client showed it is alive without a frame
// of the protocol (a WebSocket ping or pong): it counts against the idle
// timeout like a frame. Safe from any goroutine.
func (s *Session) Touch() {
	if !s.dead.Load() {
		s.lastSeen.Store(time.Now().UnixNano())
	}
}

// FrameError reports a frame the transport could not read: a length over
// the limit (wire.ErrTooLarge) or a malformed header. The session answers
// FRAME_TOO_LARGE or BAD_FRAME and closes; the transport discards the
// rest of the input.
func (s *Session) FrameError(err error) {
	code := pb.Code_BAD_FRAME
	if errors.Is(err, wire.ErrTooLarge) {
		code = pb.Code_FRAME_TOO_LARGE
	}
	s.fatal(code, 0, err.Error())
}

func (s *Session) hello(f *pb.Hello) {
	m := s.m
	if s.authed.Load() {
		s.fatal(pb.Code_BAD_FRAME, 0, "second HELLO")
		return
	}
	if f.Version != wire.Version {
		m.m.handshakes.WithLabelValues("bad_version").Inc()
		s.fatal(pb.Code_BAD_VERSION, 0, "this server speaks protocol version 1")
		return
	}
	// An address that failed to authenticate too often is refused before
	// its token is even looked at, whatever the token: that is what
	// makes guessing slow.
	src := s.source()
	if err := m.cfg.Limits.Check(ratelimit.Auth, src); err != nil {
		m.m.handshakes.WithLabelValues("rate_limited").Inc()
		s.fail(0, err) // fatal: a HELLO's error ends the connection
		return
	}
	user, device, issued, ok := s.helloIdentity(f)
	if !ok {
		m.cfg.Limits.AuthFailed(src)
		return
	}
	if !m.cfg.Users.AcceptsToken(user, device, issued) {
		// No such user, removed (offboarded), or the token (or the
		// certificate: issued at its NotBefore) was revoked (for good:
		// re-adding the user does not bring it back).
		m.m.handshakes.WithLabelValues("bad_token").Inc()
		m.cfg.Limits.AuthFailed(src)
		s.fatal(pb.Code_BAD_TOKEN, 0, "token invalid or revoked")
		return
	}
	e := m.cfg.Engine
	head, err := e.Head(user)
	if err != nil {
		s.streamUnreadable(user, "head", err)
		return
	}
	cursor := f.GetCursor()
	if f.Cursor == nil {
		var known bool
		if cursor, known, err = e.Cursor(user, device); err != nil {
			s.streamUnreadable(user, "cursor", err)
			return
		}
		if w := uint64(max(m.cfg.NewDeviceWindow, 0)); !known && w > 0 && head > w {
			cursor = head - w // a new device: the latest entries only
		}
	}
	cursor = min(cursor, head) // a client ahead of the server (restored backup) resumes at the head
	resume, err := e.ResumeFrom(user, cursor)
	if err != nil {
		s.streamUnreadable(user, "stream", err)
		return
	}
	s.user, s.device = user, device
	s.authed.Store(true)
	if a, ok := s.t.(interface{ Authenticated() }); ok {
		a.Authenticated() // the transport's count of connections not yet authenticated
	}
	// The WELCOME goes out through Join, once the device is registered:
	// a client that saw it and connects the same device again replaces
	// this session, never the reverse.
	welcome := wire.Encode(pb.FrameType_WELCOME, &pb.Welcome{
		User: s.user, Device: s.device, Head: head, ResumeFrom: resume,
		MaxFrame: uint32(m.cfg.MaxFrame), MaxBody: uint32(e.MaxBody()),
		MaxInflight: uint32(m.cfg.MaxInflight), PingIntervalMs: uint32(m.cfg.IdleTimeout.Milliseconds() / 3),
	})
	d, old, err := m.cfg.Hub.Join(s.user, s.device, s, cursor+1, welcome)
	if err != nil {
		// Another node serves this user's stream now (cluster mode: the
		// partition moved since Head): NOT_OWNER, which the client follows.
		s.streamUnreadable(user, "join", err)
		return
	}
	m.m.handshakes.WithLabelValues("ok").Inc()
	s.dev.Store(&d)
	if s.isClosing() {
		d.Detach() // closed while attaching; Closed may have missed d
	}
	if !m.cfg.Users.AcceptsToken(user, device, issued) {
		// Revoked (or the user removed) between the check above and the
		// Join: the revocation's kick may have missed this session.
		s.fatal(pb.Code_BAD_TOKEN, 0, "token revoked")
		return
	}
	if os, ok := old.(*Session); ok {
		os.fatal(pb.Code_REPLACED, 0, "the same device connected again")
	}
}

// helloIdentity is the device a HELLO authenticates: its token's, or,
// with no token, that of the verified client certificate of the
// connection (PeerCertifier), when it names one. On a refusal it has
// answered and closed, and returns ok false.
func (s *Session) helloIdentity(f *pb.Hello) (user, device string, issued time.Time, ok bool) {
	m := s.m
	if pc, isTLS := s.t.(PeerCertifier); isTLS && f.Token == "" {
		if cert := pc.PeerCertificate(); cert != nil {
			id, err := auth.CertIdentityOf(cert)
			switch {
			case err != nil || id.User == "":
				m.m.handshakes.WithLabelValues("bad_cert").Inc()
				s.fatal(pb.Code_BAD_TOKEN, 0, "no token, and the client certificate names no device (URI SAN ding:client/USER/DEVICE)")
				return "", "", time.Time{}, false
			case f.Device != "" && f.Device != id.Device:
				m.m.handshakes.WithLabelValues("device_mismatch").Inc()
				s.fatal(pb.Code_DEVICE_MISMATCH, 0, "device does not match the client certificate")
				return "", "", time.Time{}, false
			}
			return id.User, id.Device, id.Issued, true
		}
	}
	claims, err := m.cfg.Tokens.Verify(f.Token, auth.KindClient)
	switch {
	case errors.Is(err, auth.ErrExpired):
		m.m.handshakes.WithLabelValues("expired").Inc()
		s.fatal(pb.Code_TOKEN_EXPIRED, 0, "token expired")
		return "", "", time.Time{}, false
	case err != nil:
		m.m.handshakes.WithLabelValues("bad_token").Inc()
		s.fatal(pb.Code_BAD_TOKEN, 0, "token invalid")
		return "", "", time.Time{}, false
	case claims.Device != f.Device:
		m.m.handshakes.WithLabelValues("device_mismatch").Inc()
		s.fatal(pb.Code_DEVICE_MISMATCH, 0, "device does not match the token")
		return "", "", time.Time{}, false
	}
	return claims.User, claims.Device, claims.Issued(), true
}

func (s *Session) submit(f *pb.Submit) {
	if f.Kind < 0 || f.Kind > 255 {
		s.sendError(pb.Code_BAD_REQUEST, f.Ref, "unknown message kind", false) // would not fit engine.Kind
		return
	}
	sub := engine.Submission{
		From: s.user, To: f.To, Kind: engine.Kind(f.Kind), Body: f.Body, ClientID: f.ClientMsgId,
	}
	for _, r := range []struct {
		text string
		id   *engine.ID
	}{{f.Chat, &sub.Chat}, {f.ForwardOf, &sub.Forward}, {f.QuoteOf, &sub.Quote}} {
		if r.text == "" {
			continue
		}
		id, err := engine.ParseID(r.text)
		if err != nil {
			s.sendError(pb.Code_BAD_REQUEST, f.Ref, "malformed chat or message id", false)
			return
		}
		*r.id = id
	}
	if err := s.m.cfg.Limits.Check(ratelimit.Submit, s.user); err != nil {
		s.fail(f.Ref, err) // not stored; the same SUBMIT may be sent again after the wait
		return
	}
	if int(s.inflight.Add(1)) > s.m.cfg.MaxInflight {
		s.inflight.Add(-1)
		s.sendError(pb.Code_TOO_MANY_INFLIGHT, f.Ref, "wait for acks before submitting more", false)
		return
	}
	ref := f.Ref
	s.m.cfg.Engine.SubmitAsync(sub, func(res engine.SubmitResult, err error) {
		s.inflight.Add(-1)
		if err != nil {
			s.fail(ref, err)
			return
		}
		s.Send(wire.Encode(pb.FrameType_SUBMIT_ACK, &pb.SubmitAck{
			Ref: ref, Id: res.ID.String(), CreatedMs: res.Created.UnixMilli(), Duplicate: res.Duplicate,
		}))
	})
}

func (s *Session) read(f *pb.Read) {
	if len(f.Ids) == 0 || len(f.Ids) > maxReadIDs {
		s.sendError(pb.Code_BAD_REQUEST, f.Ref, "READ needs 1 to 1000 ids", false)
		return
	}
	ids := make([]engine.ID, len(f.Ids))
	for i, t := range f.Ids {
		id, err := engine.ParseID(t)
		if err != nil {
			s.sendError(pb.Code_BAD_REQUEST, f.Ref, "malformed message id", false)
			return
		}
		ids[i] = id
	}
	s.m.cfg.Engine.ReadAsync(s.user, ids, s.okOrFail(f.Ref))
}

// confirm hands a CONFIRM to the engine and answers OK once the
// confirmation is durable, like read. If the DING was already confirmed,
// the OK says with what (Ok.already_confirmed): this one changed nothing.
func (s *Session) confirm(f *pb.Confirm) {
	id, err := engine.ParseID(f.Id)
	if err != nil {
		s.sendError(pb.Code_BAD_REQUEST, f.Ref, "malformed message id", false)
		return
	}
	s.m.cfg.Engine.ConfirmAsync(s.user, id, int(f.Answer), func(r engine.ConfirmResult, err error) {
		if err != nil {
			s.fail(f.Ref, err)
			return
		}
		ok := &pb.Ok{Ref: f.Ref}
		if r.Already {
			ok.AlreadyConfirmed = &pb.Confirmation{Answer: uint32(r.Answer), Choice: r.Choice, Channel: r.By.String(), AtMs: msOrZero(r.At)}
		}
		s.Send(wire.Encode(pb.FrameType_OK, ok))
	})
}

// okOrFail is the done callback of a request answered OK{ref} once it is
// durable, or with its error.
func (s *Session) okOrFail(ref uint64) func(error) {
	return func(err error) {
		if err != nil {
			s.fail(ref, err)
			return
		}
		s.Send(wire.Encode(pb.FrameType_OK, &pb.Ok{Ref: ref}))
	}
}

// receipts answers RECEIPTS_QUERY from committed state. The engine names
// a secret message's recipient by pseudonym.
func (s *Session) receipts(f *pb.ReceiptsQuery) {
	id, err := engine.ParseID(f.Id)
	if err != nil {
		s.sendError(pb.Code_BAD_REQUEST, f.Ref, "malformed message id", false)
		return
	}
	rs, err := s.m.cfg.Engine.SenderReceipts(s.user, id)
	if errors.Is(err, engine.ErrNotFound) {
		s.sendError(pb.Code_NOT_FOUND, f.Ref, "no such message", false)
		return
	}
	if err != nil {
		s.fail(f.Ref, err) // ErrNotSender: FORBIDDEN
		return
	}
	out := &pb.Receipts{Ref: f.Ref, Id: f.Id}
	for _, r := range rs {
		out.Recipients = append(out.Recipients, &pb.RecipientState{
			User: r.User, State: pb.State(r.State), DeliveredMs: msOrZero(r.Delivered), ReadMs: msOrZero(r.Read),
			ConfirmedMs: msOrZero(r.Confirmed),
		})
	}
	s.Send(wire.Encode(pb.FrameType_RECEIPTS, out))
}

// secretCreate creates a secret chat between the session's user and
// f.To, and answers OK with the chat's id once it is durable.
func (s *Session) secretCreate(f *pb.SecretCreate) {
	const maxBurnMs = math.MaxInt64 / int64(time.Millisecond)
	switch {
	case f.Level < uint32(engine.Level1) || f.Level > uint32(engine.Level3):
		s.sendError(pb.Code_BAD_CHAT, f.Ref, "level must be 1, 2 or 3", false)
		return
	case f.BurnAfterMs < 0 || f.BurnAfterMs > maxBurnMs:
		s.sendError(pb.Code_BAD_CHAT, f.Ref, "burn_after_ms out of range", false)
		return
	}
	req := engine.ChatRequest{
		From: s.user, To: f.To, Level: engine.Level(f.Level),
		BurnAfter: time.Duration(f.BurnAfterMs) * time.Millisecond,
	}
	ref := f.Ref
	s.m.cfg.Engine.CreateChatAsync(req, func(ch engine.Chat, err error) {
		if err != nil {
			s.fail(ref, err)
			return
		}
		s.Send(wire.Encode(pb.FrameType_OK, &pb.Ok{Ref: ref, Id: ch.ID.String()}))
	})
}

// screenshot relays a screenshot report to the other participant of a
// level-3 chat, and answers OK once that is durable.
func (s *Session) screenshot(f *pb.Screenshot) {
	chat, err := engine.ParseID(f.Chat)
	if err != nil {
		s.sendError(pb.Code_BAD_REQUEST, f.Ref, "malformed chat id", false)
		return
	}
	var msg engine.ID
	if f.Id != "" {
		if msg, err = engine.ParseID(f.Id); err != nil {
			s.sendError(pb.Code_BAD_REQUEST, f.Ref, "malformed message id", false)
			return
		}
	}
	s.m.cfg.Engine.ReportScreenshotAsync(s.user, chat, msg, s.okOrFail(f.Ref))
}

// pushRegister stores (or removes) this device's push token, and
// answers OK once that is durable; BAD_REQUEST says what is wrong with
// it. An engine without the capability answers UNAVAILABLE.
func (s *Session) pushRegister(f *pb.PushRegister) {
	pr, ok := s.m.cfg.Engine.(PushRegistry)
	if !ok {
		s.sendError(pb.Code_UNAVAILABLE, f.Ref, "push registration is not served here", false)
		return
	}
	if f.Remove {
		pr.RemovePushTokenAsync(s.user, s.device, s.okOrFail(f.Ref))
		return
	}
	tok := engine.PushToken{Device: s.device, Provider: f.Provider, Token: f.Token, Topic: f.Topic, Sandbox: f.Sandbox, NoPreview: f.NoPreview, Mute: f.Mute}
	if err := tok.Check(); err != nil {
		s.fail(f.Ref, err)
		return
	}
	pr.RegisterPushTokenAsync(s.user, tok, s.okOrFail(f.Ref))
}

// pushOpened records that the user opened a DING's push notification.
func (s *Session) pushOpened(f *pb.PushOpened) {
	pr, ok := s.m.cfg.Engine.(PushRegistry)
	if !ok {
		s.sendError(pb.Code_UNAVAILABLE, f.Ref, "push registration is not served here", false)
		return
	}
	id, err := engine.ParseID(f.Id)
	if err != nil {
		s.sendError(pb.Code_BAD_REQUEST, f.Ref, "malformed DING id", false)
		return
	}
	pr.PushOpenedAsync(s.user, id, s.device, s.okOrFail(f.Ref))
}

func msOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// fail answers a request that failed in the engine, with the code the
// one table gives (package channels/codes); a server failure is logged.
func (s *Session) fail(ref uint64, err error) {
	a := codes.Of(err)
	if a.Internal() {
		s.m.log.Error("request failed", "conn", s.id, "user", s.user, "code", string(a.Code), "err", err)
	}
	e := &pb.Error{Code: a.Socket, Ref: ref, Detail: a.Detail, Retry: a.Retry, RetryAfterMs: retryAfterMs(a.RetryAfter)}
	if a.Fatal || !s.authed.Load() { // an error answering HELLO ends the connection
		e.Fatal = true
		s.fatalFrame(e)
		return
	}
	s.m.m.errors.WithLabelValues(a.Socket.String()).Inc()
	s.Send(wire.Encode(pb.FrameType_ERROR, e))
}

// retryAfterMs is d in whole milliseconds, rounded up, for
// Error.retry_after_ms.
func retryAfterMs(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	return uint32(min((d+time.Millisecond-1)/time.Millisecond, math.MaxUint32))
}

// source is the client's address as the transport gives it (an optional
// method Source), as ratelimit keys it; "" if the transport does not say.
func (s *Session) source() string {
	if t, ok := s.t.(interface{ Source() string }); ok {
		return ratelimit.Source(t.Source())
	}
	return ""
}

func (s *Session) sendError(code pb.Code, ref uint64, detail string, fatal bool) {
	if fatal {
		s.fatal(code, ref, detail)
		return
	}
	s.m.m.errors.WithLabelValues(code.String()).Inc()
	s.Send(wire.Encode(pb.FrameType_ERROR, &pb.Error{Code: code, Ref: ref, Detail: detail}))
}

// fatal queues a fatal ERROR frame and closes the connection once it is
// flushed (or after closeGrace). Later input is discarded.
// streamUnreadable ends a handshake whose reading of user's stream (what)
// failed: NOT_OWNER naming the owner when another node serves the user's
// partition (cluster mode), UNAVAILABLE when this node cannot serve it
// now (its partition is not attached, the engine is closing), both of
// which the client retries; INTERNAL otherwise.
func (s *Session) streamUnreadable(user, what string, err error) {
	if no, ok := errors.AsType[*fanout.NotOwnerError](err); ok {
		detail := "this node does not serve you now: connect to " + no.Owner
		if no.Owner == "" {
			detail = "no node serves you at this moment (a takeover in progress): retry shortly"
		}
		s.fatalFrame(&pb.Error{Code: pb.Code_NOT_OWNER, Detail: detail, Redirect: no.Owner, Fatal: true})
		return
	}
	if engine.CodeOf(err) == engine.CodeUnavailable {
		s.m.log.Info("handshake: the user's stream is not served here now", "user", user, "read", what, "err", err)
		s.fatal(pb.Code_UNAVAILABLE, 0, "this server cannot serve your stream now; reconnect")
		return
	}
	s.m.log.Error("handshake: read "+what, "user", user, "err", err)
	s.fatal(pb.Code_INTERNAL, 0, "internal error; reconnect")
}

func (s *Session) fatal(code pb.Code, ref uint64, detail string) {
	s.fatalFrame(&pb.Error{Code: code, Ref: ref, Detail: detail, Fatal: true})
}

// fatalFrame is fatal with the whole ERROR (e.Fatal set).
func (s *Session) fatalFrame(e *pb.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fatalErrorLocked(e)
}

func (s *Session) fatalLocked(code pb.Code, ref uint64, detail string) {
	s.fatalErrorLocked(&pb.Error{Code: code, Ref: ref, Detail: detail, Fatal: true})
}

func (s *Session) fatalErrorLocked(e *pb.Error) {
	if s.closing {
		return
	}
	s.m.m.errors.WithLabelValues(e.Code.String()).Inc()
	s.dead.Store(true)
	f := wire.Encode(pb.FrameType_ERROR, e)
	s.enqueueLocked(f) // past MaxPending if need be: it is the last frame
	s.closing = true
	t := s.t
	s.killer = time.AfterFunc(closeGrace, func() { _ = t.Close() })
}

func (s *Session) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Send implements fanout.Endpoint: it queues a frame and returns at once.
func (s *Session) Send(frame []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.pending+len(frame) > s.m.cfg.MaxPending {
		// Drop what is queued (it waits in the stream for the reconnect) so
		// that the reason is the next thing the client can read.
		s.m.m.slowConsumers.Inc()
		for _, f := range s.out {
			s.pending -= len(f)
		}
		clear(s.out)
		s.out = s.out[:0]
		s.fatalLocked(pb.Code_SLOW_CONSUMER, 0, "outbound queue overflowed; reconnect to resume")
		return false
	}
	s.enqueueLocked(frame)
	return true
}

// Room implements fanout.Endpoint: catch-up fills at most a quarter of
// MaxPending, so it can never overflow the queue itself.
func (s *Session) Room() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m.cfg.MaxPending/4 - s.pending
}

// Fail implements fanout.Endpoint.
func (s *Session) Fail(err error) {
	if errors.Is(err, fanout.ErrUserRemoved) {
		s.fatal(pb.Code_USER_REMOVED, 0, "this user was removed")
		return
	}
	if errors.Is(err, fanout.ErrTokenRevoked) {
		s.fatal(pb.Code_BAD_TOKEN, 0, "token revoked")
		return
	}
	if no, ok := errors.AsType[*fanout.NotOwnerError](err); ok {
		s.fatalFrame(&pb.Error{Code: pb.Code_NOT_OWNER, Detail: "this node does not serve you now: connect to " + no.Owner, Redirect: no.Owner, Fatal: true})
		return
	}
	if engine.CodeOf(err) == engine.CodeUnavailable {
		// The user's partition moved to another node (cluster mode), or
		// this node stops serving it: the client reconnects and is sent on.
		s.fatal(pb.Code_UNAVAILABLE, 0, "this server does not serve your stream now; reconnect")
		return
	}
	s.fatal(pb.Code_INTERNAL, 0, "internal error; reconnect")
}

// Closed tells the session its transport is gone: the device detaches and
// the session leaves the registry. The transport calls it once.
func (s *Session) Closed() {
	s.mu.Lock()
	s.closing, s.closed = true, true
	if s.killer != nil {
		s.killer.Stop()
	}
	s.mu.Unlock()
	if d := s.dev.Load(); d != nil {
		(*d).Detach()
	}
	s.m.unregister(s)
}

func (s *Session) enqueueLocked(frame []byte) {
	s.out = append(s.out, frame)
	s.pending += len(frame)
	if !s.flushing {
		s.flushing = true
		s.m.flushers.Add(1)
		go s.flushLoop()
	}
}

// flushLoop writes queued frames until the queue is empty, then exits:
// an idle session owns no goroutine. Everything queued during one write
// goes out in the next: one write for many frames under load.
func (s *Session) flushLoop() {
	defer s.m.flushers.Add(-1)
	// No yield before taking the queue: a new goroutine runs when the one
	// that started it (the publish loop, answering and delivering a whole
	// batch) blocks, so frames queued meanwhile go out together anyway.
	// A runtime.Gosched here sent every flusher to the back of the global
	// run queue: behind a thousand others under load, which held answers
	// for hundreds of milliseconds (p99 submit→ack 300 ms at half the
	// peak, open loop; bench/RESULTS.md).
	for {
		s.mu.Lock()
		if len(s.out) == 0 {
			s.flushing = false
			closing := s.closing
			s.mu.Unlock()
			if closing {
				_ = s.t.Close()
			}
			return
		}
		batch := s.out
		s.out = s.spare[:0]
		n := 0
		for _, f := range batch {
			n += len(f)
		}
		closed := s.closed
		s.mu.Unlock()
		err := errTransportClosed
		if !closed {
			err = s.t.Write(batch, n)
		}
		s.m.m.flushFrames.Observe(float64(len(batch)))
		s.m.m.bytesOut.Add(float64(n))
		clear(batch)
		s.spare = batch

		s.mu.Lock()
		s.pending -= n
		if err != nil {
			s.closing = true
			s.flushing = false
			s.out, s.pending = nil, 0
			s.mu.Unlock()
			_ = s.t.Close()
			return
		}
		s.mu.Unlock()
		if d := s.dev.Load(); d != nil {
			(*d).Drained()
		}
	}
}

var errTransportClosed = errors.New("session: connection closed")
