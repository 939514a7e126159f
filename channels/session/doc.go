// Package session is Ding's client protocol, independent of the transport
// that carries it: the handshake, the requests a device makes (SUBMIT,
// ACK, READ, CONFIRM, RECEIPTS_QUERY, SECRET_CREATE, SCREENSHOT, PING),
// the answers and pushed stream entries it gets, and the outbound queue
// with its slow-consumer policy. A transport is a small adapter: package
// channels/socket carries it over TCP (netpoll), and over WebSocket (its
// gateway: the same frames, one per binary WebSocket message).
//
//	mgr, _ := session.NewManager(session.Config{Engine: eng, Hub: hub, Tokens: keys, Users: dir})
//	s := mgr.Open(transport)    // a new connection
//	... arrange for s.Closed() when the connection goes ...
//	s.Begin()
//	s.HandleFrame(ft, payload)  // each whole frame received, in order
//
// # Who calls what
//
//	Manager.Open, Session.Begin      the transport, once per connection
//	Session.HandleFrame, FrameError  the transport's reader, one at a time per session
//	Session.Closed                   the transport, once, when the connection is gone
//	Transport.Write                  the session's flusher goroutine, one at a time
//	Transport.Close                  any goroutine (a fatal error, a flush failure, Shutdown)
//	Session.Send, Room, Fail         the hub (live pushes on the engine's publish loop,
//	                                 catch-up workers); request answers (the engine's
//	                                 publish loop)
//
// HandleFrame decodes, hands the request to the engine and returns: it
// never waits on an fsync. The engine answers on its publish loop, where
// the answer is queued like any frame.
//
// # The outbound queue
//
// Every frame goes through the session's bounded queue. The first frame
// queued on an idle session starts one flusher goroutine, which writes
// everything queued so far with one Transport.Write (frames queued during a
// write go out together in the next: write coalescing) and exits when the
// queue is empty, so an idle connection owns no goroutine. A queue past
// Config.MaxPending bytes marks a slow consumer: what is queued is dropped
// (it waits in the stream), SLOW_CONSUMER is queued and the connection is
// closed; its device resumes from its cursor after reconnecting. Catch-up
// fills at most a quarter of MaxPending (Room), so only live pushes to a
// device that does not read can overflow.
//
// A fatal error is queued past the limit as the last frame; input after it
// is discarded (Dead); the connection closes once it is flushed, or after
// a second if it cannot be. The Manager's one sweeper enforces the
// handshake and idle timeouts for every session.
//
// Errors from the engine are answered with the code, retry flag and
// detail of package channels/codes, the one table shared with the admin
// API.
//
// Abuse limits (Config.Limits, package internal/ratelimit): a SUBMIT over
// its user's rate is answered RATE_LIMITED with retry_after_ms and not
// handed on; a HELLO from a source address locked out after failed
// authentications is refused (fatal RATE_LIMITED) before its token is
// verified, and each failed HELLO counts against its address.
//
// Lock order: Session.mu is taken alone; the transport's own lock (if any)
// is never taken while holding it. The hub's locks (shard, device) may be
// held when it calls Send, Room or Fail, which take Session.mu.
package session
