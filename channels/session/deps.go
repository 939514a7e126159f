package session

import (
	"time"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
)

// The session's view of the rest of the server: small interfaces it owns,
// which internal/node fills with the engine, the hub, the token keys and
// the directory.

// Engine is what a session asks of the engine. The Async methods validate
// on the caller's goroutine, queue an operation and return at once; done
// runs exactly once, on the engine's publish loop, once the operation is
// durable (or with its error) and must not block. The others read
// committed state and may block on the store briefly. All are safe for
// concurrent use.
type Engine interface {
	SubmitAsync(s engine.Submission, done func(engine.SubmitResult, error))
	AckAsync(user, device string, seq uint64, done func(error))
	ReadAsync(user string, ids []engine.ID, done func(error))
	// ConfirmAsync's result says whether the confirmation counted.
	ConfirmAsync(user string, id engine.ID, answer int, done func(engine.ConfirmResult, error))
	CreateChatAsync(req engine.ChatRequest, done func(engine.Chat, error))
	ReportScreenshotAsync(user string, chat, msg engine.ID, done func(error))
	// SenderReceipts answers a sender's receipts query (secret chats by
	// pseudonym); ErrNotSender for anyone else.
	SenderReceipts(user string, id engine.ID) ([]engine.Receipt, error)
	// Head and Cursor are a stream's durable head and a device's stored
	// cursor, for the handshake.
	Head(user string) (uint64, error)
	Cursor(user, device string) (uint64, bool, error)
	// ResumeFrom is the first seq a device whose cursor is cursor will
	// be sent: cursor+1, or the first entry kept after it when retention
	// deleted what followed it.
	ResumeFrom(user string, cursor uint64) (uint64, error)
	// MaxBody is the largest body a submit may carry.
	MaxBody() int
}

// PushRegistry is an optional capability of Engine (found by type
// assertion): storing devices' push tokens and recording notifications
// opened (engine.Engine has it). The Async methods behave as Engine's.
type PushRegistry interface {
	RegisterPushTokenAsync(user string, t engine.PushToken, done func(error))
	RemovePushTokenAsync(user, device string, done func(error))
	PushOpenedAsync(user string, id engine.ID, device string, done func(error))
}

// Hub attaches a device to the live delivery of its user's stream. Safe
// for concurrent use; never blocks on I/O. JoinFunc adapts *fanout.Hub.
type Hub interface {
	// Join attaches device of user to ep, sending first (the WELCOME)
	// once the device is registered and then the stream from seq from on;
	// it returns the attachment and the endpoint of the same device's
	// previous connection, which the caller closes. It fails with
	// fanout.ErrNotOwner if this node does not serve user's stream, and
	// then sends nothing.
	Join(user, device string, ep fanout.Endpoint, from uint64, first []byte) (Attachment, fanout.Endpoint, error)
}

// Attachment is a device attached to a hub.
type Attachment interface {
	// Detach stops delivery to the device; idempotent.
	Detach()
	// Drained tells the hub the endpoint wrote out its queue, so a paused
	// catch-up may go on.
	Drained()
}

// JoinFunc is a Hub made of a hub's Join method that returns its own
// attachment type (*fanout.Hub's returns *fanout.Device).
func JoinFunc[A Attachment](join func(user, device string, ep fanout.Endpoint, from uint64, first []byte) (A, fanout.Endpoint, error)) Hub {
	return joinFunc[A](join)
}

type joinFunc[A Attachment] func(user, device string, ep fanout.Endpoint, from uint64, first []byte) (A, fanout.Endpoint, error)

func (f joinFunc[A]) Join(user, device string, ep fanout.Endpoint, from uint64, first []byte) (Attachment, fanout.Endpoint, error) {
	a, old, err := f(user, device, ep, from, first)
	if err != nil {
		return nil, old, err
	}
	return a, old, nil
}

// Tokens verifies client tokens (*auth.Keys implements it). Safe for
// concurrent use; CPU only.
type Tokens interface {
	Verify(token, kind string) (auth.Claims, error)
}

// Users says whether a user may connect: in the directory and not
// removed (*fanout.Directory implements it). Answers from memory; a
// cluster node's may wait a moment for its copy of the directory to bring
// a user created elsewhere (internal/node's dirUsers).
type Users interface {
	// AcceptsToken reports whether a client token of user for device,
	// issued at issued, may be used: the user is active and the token was
	// not revoked (fanout.Directory).
	AcceptsToken(user, device string, issued time.Time) bool
}

var (
	_ Engine     = (*engine.Engine)(nil)
	_ Attachment = (*fanout.Device)(nil)
	_ Tokens     = (*auth.Keys)(nil)
	_ Users      = (*fanout.Directory)(nil)
)
