package push

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine"
)

// Default endpoints.
const (
	APNsProduction  = "https://api.push.apple.com"
	APNsDevelopment = "https://api.sandbox.push.apple.com"
	FCMEndpoint     = "https://fcm.googleapis.com"
)

// Config configures a Pusher. Without APNsKeyFile and without
// FCMCredentialsFile push is not configured: sends answer
// engine.ErrNotConfigured.
type Config struct {
	// APNsKeyFile is the .p8 signing key Apple issued (token-based auth),
	// with APNsKeyID and APNsTeamID. Read once by New; never logged.
	APNsKeyFile, APNsKeyID, APNsTeamID string
	// APNsEndpoint, when set, replaces both APNs environments' hosts (a
	// test fake, an on-premise relay): scheme://host[:port].
	APNsEndpoint string
	// FCMCredentialsFile is a Google service-account JSON file with the
	// firebase.messaging scope's rights. Read once by New; never logged.
	FCMCredentialsFile string
	// FCMEndpoint, when set, replaces https://fcm.googleapis.com;
	// FCMTokenURL, when set, replaces the credentials' token_uri.
	FCMEndpoint, FCMTokenURL string
	// TLSConfig, if set, is the providers' TLS (RootCAs for a fake or a
	// relay with a private CA).
	TLSConfig *tls.Config
	// CAFile, when set, is a PEM file of the CAs the endpoints' certificates
	// must chain to, instead of the system's (a relay with a private CA, a
	// local fake). Read by New; it replaces TLSConfig's RootCAs.
	CAFile string
	// Preview puts a plain message's text in its notification (never a
	// secret message's, nor a DING's unless Preview too); false: titles only.
	Preview bool
	// Coalesce is the least time between two message notifications to one
	// device; messages in between make one notification, sent when it
	// ends. Zero means 10s.
	Coalesce time.Duration
	// Grace is how long a connected device has to acknowledge a new
	// message before it is pushed all the same (a phone whose socket is
	// still open but asleep); zero means 5s, negative never (a connected
	// device is not pushed). Needs Deps.Streams (the devices' cursors);
	// without it connected devices are not pushed.
	Grace time.Duration
	// Workers is how many sends are in flight at once; zero means 64.
	Workers int
	// Queue bounds the message notifications waiting for a worker; one
	// more is dropped and counted (ding_push_dropped_total). Zero means
	// 65536.
	Queue int
	// Attempts is how many times one request is tried when the provider
	// answers 5xx or 429 or does not answer; zero means 3. A 4xx is final.
	Attempts int
	// MinBackoff and MaxBackoff bound the wait between attempts (doubled
	// from MinBackoff, with jitter; a Retry-After is honoured up to
	// MaxBackoff); zero means 500ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one request; zero means 10s.
	Timeout time.Duration
	// Rate, when positive, is the most requests per second to the
	// providers (the org's push rate limit); sends wait for their turn.
	Rate float64
	// Clock times the coalescing windows; nil means the system clock.
	Clock engine.Clock
	// Wait waits d between attempts; nil waits on a timer. Tests record
	// the waits here instead.
	Wait func(ctx context.Context, d time.Duration) error
	// Logger; nil means slog.Default(). Tokens and texts are never logged.
	Logger *slog.Logger
	// Registerer receives the metrics; nil means none are registered.
	Registerer prometheus.Registerer
}

// Configured reports whether a provider is configured.
func (c *Config) Configured() bool { return c.APNsKeyFile != "" || c.FCMCredentialsFile != "" }

// Validate checks c: APNs needs its key id and team id; endpoints are
// absolute https (or http to a loopback) URLs without a path; durations
// and counts are not negative.
func (c *Config) Validate() error {
	if c.APNsKeyFile != "" && (c.APNsKeyID == "" || c.APNsTeamID == "") {
		return errors.New("push: config: an APNs key needs its key id and team id")
	}
	for _, e := range []string{c.APNsEndpoint, c.FCMEndpoint, c.FCMTokenURL} {
		if e == "" {
			continue
		}
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" {
			return fmt.Errorf("push: config: endpoint %q is not an http(s) URL", e)
		}
	}
	if c.Coalesce < 0 || c.Workers < 0 || c.Queue < 0 || c.Attempts < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 || c.Timeout < 0 || c.Rate < 0 {
		return errors.New("push: config: durations and counts must not be negative")
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Coalesce == 0 {
		c.Coalesce = 10 * time.Second
	}
	if c.Workers == 0 {
		c.Workers = 64
	}
	if c.Grace == 0 {
		c.Grace = 5 * time.Second
	}
	if c.Queue == 0 {
		c.Queue = 65536
	}
	if c.Attempts == 0 {
		c.Attempts = 3
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 500 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Clock == nil {
		c.Clock = engine.SystemClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Wait == nil {
		c.Wait = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// SendError is a request a provider refused or did not answer. Its text
// never holds a token or a message.
type SendError struct {
	Provider string // engine.PushAPNs or engine.PushFCM
	Status   int    // the HTTP status; 0 when there was no answer
	Reason   string // APNs's reason or FCM's error code; "" for none
	// Dead: the provider says the token is no longer valid; the token
	// is removed (wraps engine.ErrUnregistered).
	Dead bool
	// Permanent: a 4xx; sending again fails the same way (wraps
	// engine.ErrRejected). Neither Dead nor Permanent: outcome unknown.
	Permanent bool
	// RetryAfter is the provider's Retry-After, if it gave one.
	RetryAfter time.Duration
}

func (e *SendError) Error() string {
	kind := "temporary"
	switch {
	case e.Dead:
		kind = "token unregistered"
	case e.Permanent:
		kind = "permanent"
	}
	if e.Status == 0 {
		return fmt.Sprintf("push: %s: no answer (%s)", e.Provider, kind)
	}
	return fmt.Sprintf("push: %s: %d %s (%s)", e.Provider, e.Status, e.Reason, kind)
}

// Unwrap makes a dead token errors.Is engine.ErrUnregistered and a
// permanent refusal engine.ErrRejected.
func (e *SendError) Unwrap() error {
	switch {
	case e.Dead:
		return engine.ErrUnregistered
	case e.Permanent:
		return engine.ErrRejected
	}
	return nil
}

// ProviderDetail implements engine.ProviderDetailer: "apns 410
// Unregistered", "fcm 503", "apns unreachable".
func (e *SendError) ProviderDetail() string {
	if e.Status == 0 {
		return e.Provider + " unreachable"
	}
	d := e.Provider + " " + strconv.Itoa(e.Status)
	if e.Reason != "" {
		d += " " + e.Reason
	}
	return d
}

// sender is one provider's client: one request, classified.
type sender interface {
	send(ctx context.Context, tok engine.PushToken, n *Note) (ref string, err error)
}

// Note is one notification, provider-neutral.
type Note struct {
	Title, Body string
	Badge       int  // unread count; -1: leave the badge as it is
	Urgent      bool // a DING: time-sensitive (iOS), high priority (Android)
	Critical    bool // a critical DING: a critical alert where allowed
	Secret      bool // a secret chat's: no sender, no text, nothing in the data
	// Ding is the DING's id (zero for a message), Choices its answers:
	// notification actions "ding.confirm.N" (1-based), and a plain
	// "ding.confirm.1" ("Confirm") without choices.
	Ding    engine.ID
	Choices []string
	// Collapse groups a device's notifications ("" for none).
	Collapse string
}

// ActionID is the identifier of the notification action that answers a
// DING with choice answer (1-based): the app confirms with it through the
// normal confirm (the socket's Confirm frame).
func ActionID(answer int) string { return "ding.confirm." + strconv.Itoa(answer) }

// sendRetry sends one request, retrying an unknown outcome (5xx, 429,
// no answer) with backoff, honouring Retry-After, up to cfg.Attempts.
func (p *Pusher) sendRetry(ctx context.Context, tok engine.PushToken, n *Note) (string, error) {
	s := p.senders[tok.Provider]
	if s == nil {
		return "", fmt.Errorf("push: %s: %w", tok.Provider, engine.ErrNotConfigured)
	}
	var last error
	for attempt := 1; ; attempt++ {
		if err := p.limit(ctx); err != nil {
			return "", err
		}
		rctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
		start := time.Now()
		ref, err := s.send(rctx, tok, n)
		cancel()
		p.m.observe(tok.Provider, time.Since(start), err)
		if err == nil {
			return ref, nil
		}
		last = err
		var se *SendError
		if errors.As(err, &se) && (se.Dead || se.Permanent) {
			return "", err
		}
		if attempt >= p.cfg.Attempts || ctx.Err() != nil {
			return "", last
		}
		d := p.cfg.MinBackoff << (attempt - 1)
		d += time.Duration(rand.Int64N(int64(d)/4 + 1))
		if se != nil && se.RetryAfter > 0 {
			d = se.RetryAfter
		}
		d = min(d, p.cfg.MaxBackoff)
		p.m.retries.WithLabelValues(tok.Provider).Inc()
		if err := p.cfg.Wait(ctx, d); err != nil {
			return "", last
		}
	}
}

// limit waits for the rate limit's next slot, if there is one.
func (p *Pusher) limit(ctx context.Context) error {
	if p.rate == nil {
		return nil
	}
	return p.rate.wait(ctx)
}

func (n *Note) isDing() bool { return n.Ding != (engine.ID{}) }
