package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// Push tokens.
//
// A device that cannot hold a socket (a phone with the app in the
// background) registers a push token: an APNs device token with its
// bundle id and environment, or an FCM registration token. The engine
// keeps one per (user, device), replaced when the device registers again,
// under
//
//	P | user | 0x00 | device   -> push token record (JSON: rare writes, never on a message's path)
//
// so that a user's tokens are one range scan. They go when the provider
// says the token is dead (RemovePushToken, called by channels/push) and
// when the user is offboarded (forgetUser), in the offboarding batch.
//
// A DING's push step (ChannelPush) is decided like an e-mail step: the
// Outbound names the user (To), and the Notifier (channels/push) sends to
// every device of theirs that has a token. A user with none gets
// no_push_device in the ledger.

// Push providers of PushToken.Provider.
const (
	PushAPNs = "apns"
	PushFCM  = "fcm"
)

// PushToken is one device's push registration.
type PushToken struct {
	Device   string `json:"-"`
	Provider string `json:"p"`           // PushAPNs or PushFCM
	Token    string `json:"t"`           // the provider's device token. Never log it.
	Topic    string `json:"b,omitempty"` // APNs: the app's bundle id
	Sandbox  bool   `json:"s,omitempty"` // APNs: the development environment
	// NoPreview keeps message previews off this device's notifications
	// when the server allows them (dingd --push-preview); Mute keeps
	// message notifications off it (a DING's push step still reaches it).
	NoPreview bool      `json:"np,omitempty"`
	Mute      bool      `json:"m,omitempty"`
	Updated   time.Time `json:"u"`
}

// ErrBadPushToken is returned (wrapped, with the reason) for a push
// registration that cannot be stored.
var ErrBadPushToken = NewError(CodeBadRequest, "engine: bad push token")

// ErrUnregistered is wrapped by a Notifier error when every device the
// push was for answered that its token is dead (APNs 410 or
// BadDeviceToken, FCM UNREGISTERED): the tokens were removed, and a
// retry would reach nobody.
var ErrUnregistered = NewError(CodeInternal, "engine: push token unregistered")

var (
	apnsTokenRE  = regexp.MustCompile(`^[0-9a-fA-F]{64,200}$`)
	fcmTokenRE   = regexp.MustCompile(`^[A-Za-z0-9_:\-.]+$`)
	bundleIDRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.\-]{0,154}$`)
	maxPushToken = 4096
)

// Check returns an error (wrapping ErrBadPushToken) naming what is wrong
// with t: the provider, the token's shape for it, or a missing bundle id.
func (t PushToken) Check() error {
	if err := CheckName("device", t.Device); err != nil {
		return fmt.Errorf("%w: device %q is not a valid name", ErrBadPushToken, t.Device)
	}
	switch t.Provider {
	case PushAPNs:
		if !apnsTokenRE.MatchString(t.Token) {
			return fmt.Errorf("%w: an APNs device token is 64 or more hex digits", ErrBadPushToken)
		}
		if !bundleIDRE.MatchString(t.Topic) {
			return fmt.Errorf("%w: an APNs registration needs the app's bundle id (topic), such as com.example.ding", ErrBadPushToken)
		}
	case PushFCM:
		if len(t.Token) < 16 || len(t.Token) > maxPushToken || !fcmTokenRE.MatchString(t.Token) {
			return fmt.Errorf("%w: an FCM registration token is 16 to 4096 characters of letters, digits and _:-.", ErrBadPushToken)
		}
		if t.Sandbox || t.Topic != "" {
			return fmt.Errorf("%w: topic and sandbox are for APNs only", ErrBadPushToken)
		}
	default:
		return fmt.Errorf("%w: provider %q (want %s or %s)", ErrBadPushToken, t.Provider, PushAPNs, PushFCM)
	}
	return nil
}

func pushPrefix(user string) []byte {
	k := make([]byte, 0, len(user)+2+16)
	k = append(k, prefixPushToken)
	k = append(k, user...)
	return append(k, 0)
}

func pushKey(user, device string) []byte { return append(pushPrefix(user), device...) }

// RegisterPushToken stores t for (user, t.Device), replacing the device's
// earlier registration. ErrBadPushToken: t is not valid; ErrRemoved: the
// user is offboarded.
func (e *Engine) RegisterPushToken(ctx context.Context, user string, t PushToken) (PushToken, error) {
	if err := CheckName("user", user); err != nil {
		return PushToken{}, err
	}
	if err := t.Check(); err != nil {
		return PushToken{}, err
	}
	err := e.apply(ctx, func(c *txn, now time.Time) error {
		if c.removed[user] {
			return fmt.Errorf("%w: user %q is removed", ErrBadPushToken, user)
		}
		t.Updated = now.Truncate(time.Millisecond).UTC()
		b, err := json.Marshal(&t)
		if err != nil {
			return err
		}
		c.batch.Set(pushKey(user, t.Device), b)
		return nil
	})
	if err != nil {
		return PushToken{}, err
	}
	e.notePushTokens()
	return t, nil
}

// RemovePushToken deletes (user, device)'s registration if it still holds
// token (a registration made since is kept); token "" removes whatever it
// holds. It reports whether one was removed.
func (e *Engine) RemovePushToken(ctx context.Context, user, device, token string) (bool, error) {
	removed := false // read only once the op has answered
	err := e.apply(ctx, func(c *txn, now time.Time) error {
		removed = false
		k := pushKey(user, device)
		v, err := c.e.st.Get(k) // registrations are rare: one in the same batch is not seen
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if token != "" {
			var t PushToken
			if json.Unmarshal(v, &t) != nil || t.Token != token {
				return nil
			}
		}
		c.batch.Delete(k)
		removed = true
		return nil
	})
	if err != nil {
		return false, err
	}
	if removed {
		e.notePushTokens()
	}
	return removed, nil
}

// PushTokens returns user's registrations, by device.
func (e *Engine) PushTokens(user string) ([]PushToken, error) {
	p := pushPrefix(user)
	var out []PushToken
	var derr error
	err := e.st.Scan(p, prefixEnd(p), func(k, v []byte) bool {
		var t PushToken
		if err := json.Unmarshal(v, &t); err != nil {
			derr = fmt.Errorf("engine: push token of %q: %w", k[len(p):], ErrCorrupt)
			return false
		}
		t.Device = string(k[len(p):])
		out = append(out, t)
		return true
	})
	if err == nil {
		err = derr
	}
	return out, err
}

// PushTokenCount counts the stored registrations (a scan: for a gauge
// read at scrape time, cached for a second by the caller if need be).
func (e *Engine) PushTokenCount() int64 {
	if v := e.pushTokenN.Load(); v >= 0 {
		return v
	}
	var n int64
	p := []byte{prefixPushToken}
	_ = e.st.Scan(p, prefixEnd(p), func(k, v []byte) bool { n++; return true })
	e.pushTokenN.Store(n)
	return n
}

// notePushTokens drops the cached count; the next PushTokenCount scans.
func (e *Engine) notePushTokens() { e.pushTokenN.Store(-1) }

// forgetPushTokens deletes every registration of user (offboarding).
func (c *txn) forgetPushTokens(user string) {
	p := pushPrefix(user)
	c.batch.DeleteRange(p, prefixEnd(p))
	c.e.notePushTokens() // before it is durable: a scrape in between may count them once more
}

// hasPushToken reports whether user has a registration, as the store
// has it (registrations are not written in escalation batches).
func (c *txn) hasPushToken(user string) bool {
	p := pushPrefix(user)
	found := false
	_ = c.e.st.Scan(p, prefixEnd(p), func(k, v []byte) bool { found = true; return false })
	return found
}

// PushOpened records, in the DING's ledger, that user opened the push
// notification of DING id (the app reports it; confirming is a separate,
// normal Confirm). ErrNotFound or ErrNotRecipient as for Confirm.
func (e *Engine) PushOpened(ctx context.Context, user string, id ID, device string) error {
	return e.apply(ctx, func(c *txn, now time.Time) error { return c.pushOpened(user, id, device, now) })
}

func (c *txn) pushOpened(user string, id ID, device string, now time.Time) error {
	rec, err := c.ding(id)
	if err != nil {
		return err
	}
	for idx, r := range rec.Recipients {
		if r != user {
			continue
		}
		s, err := c.state(id, idx)
		if err != nil {
			return err
		}
		return c.ledger(id, idx, s, rec, DingEvent{Event: LedgerPushOpened, Channel: ChannelPush, Device: clip(device, 64), At: now})
	}
	return fmt.Errorf("%w: %s", ErrNotRecipient, id)
}

// recordPushResult records what the push providers answered a DING's
// push step. A push has no delivery report to wait for: the providers'
// acceptance is its outcome. Dead tokens (ErrUnregistered) are final, as
// are refusals (4xx); an unknown outcome (5xx, 429, no answer, after the
// notifier's own retries) is retried with backoff.
func (c *txn) recordPushResult(t sendTask, rec *dingRecord, s *rcptState, ref string, sendErr error, now time.Time) error {
	ev := DingEvent{Channel: ChannelPush, At: now}
	var pd ProviderDetailer
	detail := ""
	if errors.As(sendErr, &pd) {
		detail = clip(pd.ProviderDetail(), 64)
	}
	switch {
	case sendErr == nil:
		c.e.metrics.step(ChannelPush, "sent")
		ev.Event, ev.Detail = LedgerPushSent, clip(ref, 128)
		return c.ledger(t.id, t.idx, s, rec, ev)
	case errors.Is(sendErr, ErrNotConfigured):
		c.e.metrics.step(ChannelPush, "not_configured")
		ev.Event = LedgerNotConfigured
		return c.ledger(t.id, t.idx, s, rec, ev)
	case errors.Is(sendErr, ErrUnregistered):
		c.e.metrics.step(ChannelPush, "unregistered")
		ev.Event, ev.Detail = LedgerPushUnregistered, detail
		return c.ledger(t.id, t.idx, s, rec, ev)
	case errors.Is(sendErr, ErrRejected):
		c.e.metrics.step(ChannelPush, "rejected")
		if detail == "" {
			detail = "rejected"
		}
		ev.Event, ev.Detail = LedgerPushFailed, detail+"; permanent, not retried"
		return c.ledger(t.id, t.idx, s, rec, ev)
	default:
		c.e.metrics.step(ChannelPush, "error")
		if s.Status != StatusPending {
			return nil
		}
		if detail == "" {
			detail = "push provider unreachable"
		}
		ev.Event, ev.Detail = LedgerPushFailed, detail+"; temporary"
		if err := c.ledger(t.id, t.idx, s, rec, ev); err != nil {
			return err
		}
		return c.retryLater(t.id, t.idx, s, rec, ChannelPush, t.attempt, now)
	}
}

// RegisterPushTokenAsync is RegisterPushToken that does not wait: done is
// called once, on the commit loop, when the registration is durable or
// has failed. It must not block.
func (e *Engine) RegisterPushTokenAsync(user string, t PushToken, done func(error)) {
	if err := CheckName("user", user); err != nil {
		done(err)
		return
	}
	if err := t.Check(); err != nil {
		done(err)
		return
	}
	e.applyAsync(func(c *txn, now time.Time) error {
		if c.removed[user] {
			return fmt.Errorf("%w: user %q is removed", ErrBadPushToken, user)
		}
		t.Updated = now.Truncate(time.Millisecond).UTC()
		b, err := json.Marshal(&t)
		if err != nil {
			return err
		}
		c.batch.Set(pushKey(user, t.Device), b)
		return nil
	}, func(err error) { e.notePushTokens(); done(err) })
}

// RemovePushTokenAsync removes (user, device)'s registration, whatever it
// holds, without waiting (done as for RegisterPushTokenAsync).
func (e *Engine) RemovePushTokenAsync(user, device string, done func(error)) {
	e.applyAsync(func(c *txn, now time.Time) error {
		c.batch.Delete(pushKey(user, device))
		return nil
	}, func(err error) { e.notePushTokens(); done(err) })
}

// PushOpenedAsync is PushOpened that does not wait.
func (e *Engine) PushOpenedAsync(user string, id ID, device string, done func(error)) {
	e.applyAsync(func(c *txn, now time.Time) error { return c.pushOpened(user, id, device, now) }, done)
}
