package socket

import (
	"context"
	"errors"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudwego/netpoll"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
)

const (
	codeBadFrame          = pb.Code_BAD_FRAME
	codeFrameTooLarge     = pb.Code_FRAME_TOO_LARGE
	codeUnknownFrame      = pb.Code_UNKNOWN_FRAME
	codeBadVersion        = pb.Code_BAD_VERSION
	codeHandshakeRequired = pb.Code_HANDSHAKE_REQUIRED
	codeHandshakeTimeout  = pb.Code_HANDSHAKE_TIMEOUT
	codeBadToken          = pb.Code_BAD_TOKEN
	codeTokenExpired      = pb.Code_TOKEN_EXPIRED
	codeDeviceMismatch    = pb.Code_DEVICE_MISMATCH
	codeBadRequest        = pb.Code_BAD_REQUEST
	codeTooManyInflight   = pb.Code_TOO_MANY_INFLIGHT
	codeForbidden         = pb.Code_FORBIDDEN
	codeSlowConsumer      = pb.Code_SLOW_CONSUMER
	codeIdleTimeout       = pb.Code_IDLE_TIMEOUT
	codeReplaced          = pb.Code_REPLACED
	codeShuttingDown      = pb.Code_SHUTTING_DOWN
	codeNotFound          = pb.Code_NOT_FOUND
	codeUnavailable       = pb.Code_UNAVAILABLE
	codeInternal          = pb.Code_INTERNAL
	codeBadChat           = pb.Code_BAD_CHAT
)

// closeGrace is how long a connection that got a fatal error may take to
// flush it before it is closed regardless.
const closeGrace = time.Second

// maxReadIDs bounds the ids one READ frame may carry.
const maxReadIDs = 1000

// connKey carries the *conn from OnPrepare to OnRequest: netpoll's own
// mechanism for per-connection state is the context it hands back.
type connKey struct{}

// conn is one client connection. It implements fanout.Endpoint.
type conn struct {
	s      *Server
	nc     netpoll.Connection
	id     uint64
	opened int64 // unix nanos

	lastSeen atomic.Int64 // unix nanos of the last complete frame
	authed   atomic.Bool
	dead     atomic.Bool // a fatal error was queued: input is discarded
	inflight atomic.Int32
	dev      atomic.Pointer[fanout.Device]

	// Written once by the HELLO handler before authed is set; read only
	// by handlers after that (handlers run one at a time per connection).
	user, device string

	mu       sync.Mutex
	out      [][]byte    // queued frames; guarded by mu
	spare    [][]byte    // the flusher's recycled slice; owned by the flusher
	pending  int         // bytes in out plus the batch being flushed; guarded by mu
	flushing bool        // a flusher goroutine is running; guarded by mu
	closing  bool        // no more frames accepted; guarded by mu
	closed   bool        // netpoll closed the connection: never touch its buffers again; guarded by mu
	killer   *time.Timer // closes the connection if a fatal error cannot be flushed; guarded by mu
}

var _ fanout.Endpoint = (*conn)(nil)

func (s *Server) onPrepare(nc netpoll.Connection) context.Context {
	now := time.Now().UnixNano()
	c := &conn{s: s, nc: nc, id: s.nextID.Add(1), opened: now}
	c.lastSeen.Store(now)
	s.register(c)
	// Close callbacks run newest first, so this one runs before netpoll's
	// own releases the connection's buffers; flushLoop writes into them
	// only under c.mu and only while closed is false.
	_ = nc.AddCloseCallback(func(netpoll.Connection) error {
		c.mu.Lock()
		c.closing, c.closed = true, true
		if c.killer != nil {
			c.killer.Stop()
		}
		c.mu.Unlock()
		if d := c.dev.Load(); d != nil {
			d.Detach()
		}
		s.unregister(c)
		return nil
	})
	if s.draining.Load() {
		c.fatal(codeShuttingDown, 0, "server shutting down")
	}
	return context.WithValue(context.Background(), connKey{}, c)
}

// onRequest reads every complete frame and hands it off. It blocks only
// while a frame is partly received (bounded by the read timeout).
func (s *Server) onRequest(ctx context.Context, nc netpoll.Connection) error {
	c, _ := ctx.Value(connKey{}).(*conn)
	if c == nil {
		return nc.Close()
	}
	r := nc.Reader()
	for r.Len() > 0 {
		if c.dead.Load() {
			_ = r.Skip(r.Len())
			return r.Release()
		}
		hdr, err := r.Peek(wire.HeaderLen)
		if err != nil {
			return nc.Close() // timed out inside a frame, or closed
		}
		n, ft, err := wire.ParseHeader(hdr, s.cfg.MaxFrame)
		if err != nil {
			code := codeBadFrame
			if errors.Is(err, wire.ErrTooLarge) {
				code = codeFrameTooLarge
			}
			c.fatal(code, 0, err.Error())
			_ = r.Skip(r.Len())
			return r.Release()
		}
		frame, err := r.Next(4 + n)
		if err != nil {
			return nc.Close()
		}
		c.lastSeen.Store(time.Now().UnixNano())
		c.handle(ft, frame[wire.HeaderLen:])
		_ = r.Release()
	}
	return nil
}

func (c *conn) handle(ft pb.FrameType, payload []byte) {
	s := c.s
	s.m.framesByType[byte(ft)].Inc()
	switch ft {
	case pb.FrameType_HELLO, pb.FrameType_SUBMIT, pb.FrameType_ACK, pb.FrameType_READ,
		pb.FrameType_PING, pb.FrameType_PONG, pb.FrameType_RECEIPTS_QUERY, pb.FrameType_CONFIRM,
		pb.FrameType_SECRET_CREATE, pb.FrameType_SCREENSHOT:
	default:
		c.fatal(codeUnknownFrame, 0, "not a client frame type: "+ft.String())
		return
	}
	if !c.authed.Load() && ft != pb.FrameType_HELLO {
		c.fatal(codeHandshakeRequired, 0, "first frame must be HELLO")
		return
	}
	msg, err := wire.Decode(ft, payload)
	if err != nil {
		c.fatal(codeBadFrame, 0, err.Error())
		return
	}
	switch m := msg.(type) {
	case *pb.Hello:
		c.hello(m)
	case *pb.Submit:
		c.submit(m)
	case *pb.Ack:
		s.cfg.Engine.AckAsync(c.user, c.device, m.Seq, func(err error) {
			if err != nil {
				c.fail(0, err)
			}
		})
	case *pb.Read:
		c.read(m)
	case *pb.Ping:
		c.Send(wire.Encode(pb.FrameType_PONG, &pb.Pong{Nonce: m.Nonce}))
	case *pb.Pong:
	case *pb.ReceiptsQuery:
		c.receipts(m)
	case *pb.Confirm:
		c.confirm(m)
	case *pb.SecretCreate:
		c.secretCreate(m)
	case *pb.Screenshot:
		c.screenshot(m)
	}
}

func (c *conn) hello(m *pb.Hello) {
	s := c.s
	if c.authed.Load() {
		c.fatal(codeBadFrame, 0, "second HELLO")
		return
	}
	if m.Version != wire.Version {
		s.m.handshakes.WithLabelValues("bad_version").Inc()
		c.fatal(codeBadVersion, 0, "this server speaks protocol version 1")
		return
	}
	claims, err := s.cfg.Keys.Verify(m.Token, auth.KindClient)
	switch {
	case errors.Is(err, auth.ErrExpired):
		s.m.handshakes.WithLabelValues("expired").Inc()
		c.fatal(codeTokenExpired, 0, "token expired")
		return
	case err != nil:
		s.m.handshakes.WithLabelValues("bad_token").Inc()
		c.fatal(codeBadToken, 0, "token invalid")
		return
	case claims.Device != m.Device:
		s.m.handshakes.WithLabelValues("device_mismatch").Inc()
		c.fatal(codeDeviceMismatch, 0, "device does not match the token")
		return
	}
	if !s.cfg.Directory.Active(claims.User) {
		// No such user, or removed (offboarded): their tokens stop working.
		s.m.handshakes.WithLabelValues("bad_token").Inc()
		c.fatal(codeBadToken, 0, "token invalid")
		return
	}
	e := s.cfg.Engine
	head, err := e.Head(claims.User)
	if err != nil {
		s.log.Error("handshake: read head", "user", claims.User, "err", err)
		c.fatal(codeInternal, 0, "internal error; reconnect")
		return
	}
	cursor := m.GetCursor()
	if m.Cursor == nil {
		if cursor, _, err = e.Cursor(claims.User, claims.Device); err != nil {
			s.log.Error("handshake: read cursor", "user", claims.User, "err", err)
			c.fatal(codeInternal, 0, "internal error; reconnect")
			return
		}
	}
	cursor = min(cursor, head) // a client ahead of the server (restored backup) resumes at the head
	c.user, c.device = claims.User, claims.Device
	c.authed.Store(true)
	s.m.handshakes.WithLabelValues("ok").Inc()
	c.Send(wire.Encode(pb.FrameType_WELCOME, &pb.Welcome{
		User: c.user, Device: c.device, Head: head, ResumeFrom: cursor + 1,
		MaxFrame: uint32(s.cfg.MaxFrame), MaxBody: uint32(e.MaxBody()),
		MaxInflight: uint32(s.cfg.MaxInflight), PingIntervalMs: uint32(s.cfg.IdleTimeout.Milliseconds() / 3),
	}))
	d, old := s.cfg.Hub.Attach(c.user, c.device, c, cursor+1)
	c.dev.Store(d)
	if c.isClosing() {
		d.Detach() // closed while attaching; the close callback may have missed d
	}
	if oc, ok := old.(*conn); ok {
		oc.fatal(codeReplaced, 0, "the same device connected again")
	}
}

func (c *conn) submit(m *pb.Submit) {
	if m.Kind < 0 || m.Kind > 255 {
		c.sendError(codeBadRequest, m.Ref, "unknown message kind", false) // would not fit engine.Kind
		return
	}
	sub := engine.Submission{
		From: c.user, To: m.To, Kind: engine.Kind(m.Kind), Body: m.Body, ClientID: m.ClientMsgId,
	}
	for _, f := range []struct {
		text string
		id   *engine.ID
	}{{m.Chat, &sub.Chat}, {m.ForwardOf, &sub.Forward}, {m.QuoteOf, &sub.Quote}} {
		if f.text == "" {
			continue
		}
		id, err := engine.ParseID(f.text)
		if err != nil {
			c.sendError(codeBadRequest, m.Ref, "malformed chat or message id", false)
			return
		}
		*f.id = id
	}
	if int(c.inflight.Add(1)) > c.s.cfg.MaxInflight {
		c.inflight.Add(-1)
		c.sendError(codeTooManyInflight, m.Ref, "wait for acks before submitting more", false)
		return
	}
	ref := m.Ref
	c.s.cfg.Engine.SubmitAsync(sub, func(res engine.SubmitResult, err error) {
		c.inflight.Add(-1)
		if err != nil {
			c.fail(ref, err)
			return
		}
		c.Send(wire.Encode(pb.FrameType_SUBMIT_ACK, &pb.SubmitAck{
			Ref: ref, Id: res.ID.String(), CreatedMs: res.Created.UnixMilli(), Duplicate: res.Duplicate,
		}))
	})
}

func (c *conn) read(m *pb.Read) {
	if len(m.Ids) == 0 || len(m.Ids) > maxReadIDs {
		c.sendError(codeBadRequest, m.Ref, "READ needs 1 to 1000 ids", false)
		return
	}
	ids := make([]engine.ID, len(m.Ids))
	for i, s := range m.Ids {
		id, err := engine.ParseID(s)
		if err != nil {
			c.sendError(codeBadRequest, m.Ref, "malformed message id", false)
			return
		}
		ids[i] = id
	}
	ref := m.Ref
	c.s.cfg.Engine.ReadAsync(c.user, ids, func(err error) {
		if err != nil {
			c.fail(ref, err)
			return
		}
		c.Send(wire.Encode(pb.FrameType_OK, &pb.Ok{Ref: ref}))
	})
}

// confirm hands a CONFIRM to the engine and answers OK once the
// confirmation is durable, like read.
func (c *conn) confirm(m *pb.Confirm) {
	id, err := engine.ParseID(m.Id)
	if err != nil {
		c.sendError(codeBadRequest, m.Ref, "malformed message id", false)
		return
	}
	ref := m.Ref
	c.s.cfg.Engine.ConfirmAsync(c.user, id, int(m.Answer), func(err error) {
		if err != nil {
			c.fail(ref, err)
			return
		}
		c.Send(wire.Encode(pb.FrameType_OK, &pb.Ok{Ref: ref}))
	})
}

// receipts answers RECEIPTS_QUERY from committed state. The engine names
// a secret message's recipient by pseudonym.
func (c *conn) receipts(m *pb.ReceiptsQuery) {
	id, err := engine.ParseID(m.Id)
	if err != nil {
		c.sendError(codeBadRequest, m.Ref, "malformed message id", false)
		return
	}
	rs, err := c.s.cfg.Engine.SenderReceipts(c.user, id)
	switch {
	case errors.Is(err, engine.ErrNotFound):
		c.sendError(codeNotFound, m.Ref, "no such message", false)
		return
	case err != nil:
		c.fail(m.Ref, err) // ErrNotSender: FORBIDDEN
		return
	}
	out := &pb.Receipts{Ref: m.Ref, Id: m.Id}
	for _, r := range rs {
		out.Recipients = append(out.Recipients, &pb.RecipientState{
			User: r.User, State: pb.State(r.State), DeliveredMs: msOrZero(r.Delivered), ReadMs: msOrZero(r.Read),
			ConfirmedMs: msOrZero(r.Confirmed),
		})
	}
	c.Send(wire.Encode(pb.FrameType_RECEIPTS, out))
}

// secretCreate creates a secret chat between the connection's user and
// m.To, and answers OK with the chat's id once it is durable.
func (c *conn) secretCreate(m *pb.SecretCreate) {
	const maxBurnMs = math.MaxInt64 / int64(time.Millisecond)
	switch {
	case m.Level < uint32(engine.Level1) || m.Level > uint32(engine.Level3):
		c.sendError(codeBadChat, m.Ref, "level must be 1, 2 or 3", false)
		return
	case m.BurnAfterMs < 0 || m.BurnAfterMs > maxBurnMs:
		c.sendError(codeBadChat, m.Ref, "burn_after_ms out of range", false)
		return
	}
	req := engine.ChatRequest{
		From: c.user, To: m.To, Level: engine.Level(m.Level),
		BurnAfter: time.Duration(m.BurnAfterMs) * time.Millisecond,
	}
	ref := m.Ref
	c.s.cfg.Engine.CreateChatAsync(req, func(ch engine.Chat, err error) {
		if err != nil {
			c.fail(ref, err)
			return
		}
		c.Send(wire.Encode(pb.FrameType_OK, &pb.Ok{Ref: ref, Id: ch.ID.String()}))
	})
}

// screenshot relays a screenshot report to the other participant of a
// level-3 chat, and answers OK once that is durable.
func (c *conn) screenshot(m *pb.Screenshot) {
	chat, err := engine.ParseID(m.Chat)
	if err != nil {
		c.sendError(codeBadRequest, m.Ref, "malformed chat id", false)
		return
	}
	var msg engine.ID
	if m.Id != "" {
		if msg, err = engine.ParseID(m.Id); err != nil {
			c.sendError(codeBadRequest, m.Ref, "malformed message id", false)
			return
		}
	}
	ref := m.Ref
	c.s.cfg.Engine.ReportScreenshotAsync(c.user, chat, msg, func(err error) {
		if err != nil {
			c.fail(ref, err)
			return
		}
		c.Send(wire.Encode(pb.FrameType_OK, &pb.Ok{Ref: ref}))
	})
}

func msOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// fail reports an engine error to the client with its typed code.
func (c *conn) fail(ref uint64, err error) {
	code, fatal, detail := CodeOf(err)
	if code == codeInternal {
		c.s.log.Error("request failed", "conn", c.id, "user", c.user, "err", err)
	}
	c.sendError(code, ref, detail, fatal)
}

// CodeOf maps an engine error to the protocol's code, whether it ends the
// connection, and a detail safe to show the client.
func CodeOf(err error) (code pb.Code, fatal bool, detail string) {
	switch {
	case errors.Is(err, engine.ErrTooLarge):
		return pb.Code_MESSAGE_TOO_LARGE, false, err.Error()
	case errors.Is(err, engine.ErrUnknownRecipient):
		return pb.Code_UNKNOWN_RECIPIENT, false, err.Error()
	case errors.Is(err, engine.ErrNoRecipients), errors.Is(err, engine.ErrTooManyRecipients),
		errors.Is(err, engine.ErrBadName), errors.Is(err, engine.ErrBadKind):
		return codeBadRequest, false, err.Error()
	case errors.Is(err, engine.ErrNotRecipient):
		return pb.Code_NOT_RECIPIENT, false, err.Error()
	case errors.Is(err, engine.ErrNotFound):
		return codeNotFound, false, err.Error()
	case errors.Is(err, engine.ErrNotDing):
		return pb.Code_NOT_DING, false, err.Error()
	case errors.Is(err, engine.ErrBadAnswer):
		return pb.Code_BAD_ANSWER, false, err.Error()
	case errors.Is(err, engine.ErrBadAck):
		return pb.Code_BAD_ACK, true, err.Error()
	case errors.Is(err, engine.ErrNoForward):
		return pb.Code_NO_FORWARD, false, err.Error()
	case errors.Is(err, engine.ErrNotMember):
		return pb.Code_NOT_MEMBER, false, err.Error()
	case errors.Is(err, engine.ErrBadChat):
		return codeBadChat, false, err.Error()
	case errors.Is(err, engine.ErrNotSender):
		return codeForbidden, false, "only the sender may query receipts"
	case errors.Is(err, engine.ErrClosed), errors.Is(err, engine.ErrFailed):
		return codeUnavailable, false, "server cannot accept writes now; retry later"
	}
	return codeInternal, false, "internal error; retry"
}

func (c *conn) sendError(code pb.Code, ref uint64, detail string, fatal bool) {
	if fatal {
		c.fatal(code, ref, detail)
		return
	}
	c.s.m.errors.WithLabelValues(code.String()).Inc()
	c.Send(wire.Encode(pb.FrameType_ERROR, &pb.Error{Code: code, Ref: ref, Detail: detail}))
}

// fatal queues a fatal ERROR frame and closes the connection once it is
// flushed (or after closeGrace). Later input is discarded.
func (c *conn) fatal(code pb.Code, ref uint64, detail string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fatalLocked(code, ref, detail)
}

func (c *conn) fatalLocked(code pb.Code, ref uint64, detail string) {
	if c.closing {
		return
	}
	c.s.m.errors.WithLabelValues(code.String()).Inc()
	c.dead.Store(true)
	f := wire.Encode(pb.FrameType_ERROR, &pb.Error{Code: code, Ref: ref, Detail: detail, Fatal: true})
	c.enqueueLocked(f) // past MaxPending if need be: it is the last frame
	c.closing = true
	nc := c.nc
	c.killer = time.AfterFunc(closeGrace, func() { _ = nc.Close() })
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// Send implements fanout.Endpoint.
func (c *conn) Send(frame []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	if c.pending+len(frame) > c.s.cfg.MaxPending {
		// Drop what is queued (it waits in the stream for the reconnect) so
		// that the reason is the next thing the client can read.
		c.s.m.slowConsumers.Inc()
		for _, f := range c.out {
			c.pending -= len(f)
		}
		clear(c.out)
		c.out = c.out[:0]
		c.fatalLocked(codeSlowConsumer, 0, "outbound queue overflowed; reconnect to resume")
		return false
	}
	c.enqueueLocked(frame)
	return true
}

// Room implements fanout.Endpoint: catch-up fills at most a quarter of
// MaxPending, so it can never overflow the queue itself.
func (c *conn) Room() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s.cfg.MaxPending/4 - c.pending
}

// Fail implements fanout.Endpoint.
func (c *conn) Fail(err error) {
	if errors.Is(err, fanout.ErrUserRemoved) {
		c.fatal(pb.Code_USER_REMOVED, 0, "this user was removed")
		return
	}
	c.fatal(codeInternal, 0, "internal error; reconnect")
}

func (c *conn) enqueueLocked(frame []byte) {
	c.out = append(c.out, frame)
	c.pending += len(frame)
	if !c.flushing {
		c.flushing = true
		c.s.flushers.Add(1)
		go c.flushLoop()
	}
}

// flushLoop writes queued frames until the queue is empty, then exits.
// Everything queued during one flush goes out in the next: one syscall for
// many frames under load.
func (c *conn) flushLoop() {
	defer c.s.flushers.Add(-1)
	w := c.nc.Writer()
	// Let the goroutine that queued the first frame go on queueing (the
	// engine answers and delivers a whole commit batch at once) before
	// taking the queue: more frames per write syscall under load, nothing
	// lost when idle.
	runtime.Gosched()
	for {
		c.mu.Lock()
		if len(c.out) == 0 {
			c.flushing = false
			closing := c.closing
			c.mu.Unlock()
			if closing {
				_ = c.nc.Close()
			}
			return
		}
		batch := c.out
		c.out = c.spare[:0]
		n := 0
		for _, f := range batch {
			n += len(f)
		}
		var err error
		if c.closed {
			err = errors.New("connection closed")
		} else {
			// One buffer node sized for the batch: one copy, one iovec.
			var buf []byte
			if buf, err = w.Malloc(n); err == nil {
				off := 0
				for _, f := range batch {
					off += copy(buf[off:], f)
				}
			}
		}
		c.mu.Unlock()
		if err == nil {
			err = w.Flush()
		}
		c.s.m.flushFrames.Observe(float64(len(batch)))
		c.s.m.bytesOut.Add(float64(n))
		clear(batch)
		c.spare = batch

		c.mu.Lock()
		c.pending -= n
		if err != nil {
			c.closing = true
			c.flushing = false
			c.out, c.pending = nil, 0
			c.mu.Unlock()
			_ = c.nc.Close()
			return
		}
		c.mu.Unlock()
		if d := c.dev.Load(); d != nil {
			d.Drained()
		}
	}
}
