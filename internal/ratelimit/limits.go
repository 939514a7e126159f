// Package ratelimit gives Ding's abuse limits: token buckets per user,
// per admin and per source address, with idle keys dropped so that memory
// stays bounded, and a lockout of source addresses that fail to
// authenticate too often.
//
// These are not the engine's DING quotas (engine.Quotas: DINGs per sender
// per day, per recipient, the SMS and call budgets), which are the
// organisation's policy and are stored; these protect the server from one
// client, admin or address that sends far more than any person does, and
// live in memory (a restart resets them).
//
//	l, _ := ratelimit.New(ratelimit.Config{UserSubmits: ratelimit.Rate{N: 100, Burst: 500}})
//	if ok, wait := l.Allow(ratelimit.Submit, user); !ok {
//		return &ratelimit.Error{What: ratelimit.Submit, RetryAfter: wait}
//	}
//
// The edges (channels/session, channels/httpapi) ask before they hand a
// request on; an answer over a limit is RATE_LIMITED (socket) or 429
// (HTTP), with how long to wait, through the one table of channels/codes.
package ratelimit

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine"
)

// What names a limit; it is the label of ding_rate_limited_total.
type What string

// The limits.
const (
	Submit       What = "submit"        // a user's messages, over the socket and the admin API (keyed by the sender)
	Ding         What = "ding"          // a user's DINGs (keyed by the sender)
	AdminRequest What = "admin_request" // an admin's /v1 requests (keyed by the admin's name)
	TokenMint    What = "token_mint"    // an admin's client token mints (keyed by the admin's name)
	Auth         What = "auth"          // attempts to authenticate from a source address locked out for its failures
)

var allWhat = []What{Submit, Ding, AdminRequest, TokenMint, Auth}

// Config sets the limits. A zero Rate is no limit.
type Config struct {
	UserSubmits   Rate // per user
	UserDings     Rate // per user
	AdminRequests Rate // per admin
	TokenMints    Rate // per admin
	// AuthFailures is how many failed authentications a source address
	// may have (a HELLO with a bad token, an HTTP 401) before its further
	// attempts are refused for AuthLockout.
	AuthFailures Rate
	// AuthLockout is how long; zero means a minute.
	AuthLockout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Registerer receives ding_rate_limited_total; nil means none.
	Registerer prometheus.Registerer
	// Logger is told when an address is locked out; nil means none.
	Logger *slog.Logger
}

// Limits are the limits of one server. A nil *Limits limits nothing.
// Safe for concurrent use.
type Limits struct {
	buckets map[What]*Keyed // read-only after New; nil entries are off
	lockFor time.Duration
	log     *slog.Logger // nil: none
	counter *prometheus.CounterVec
}

// New returns the limits of cfg.
func New(cfg Config) (*Limits, error) {
	lockFor := cfg.AuthLockout
	if lockFor <= 0 {
		lockFor = time.Minute
	}
	l := &Limits{lockFor: lockFor, log: cfg.Logger, buckets: map[What]*Keyed{
		Submit:       NewKeyed(cfg.UserSubmits, 0, cfg.Now),
		Ding:         NewKeyed(cfg.UserDings, 0, cfg.Now),
		AdminRequest: NewKeyed(cfg.AdminRequests, 0, cfg.Now),
		TokenMint:    NewKeyed(cfg.TokenMints, 0, cfg.Now),
		Auth:         NewKeyed(cfg.AuthFailures, lockFor, cfg.Now),
	}}
	l.counter = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ding_rate_limited_total",
		Help: "Requests refused by a rate limit, by limit: submit, ding (per user), admin_request, token_mint (per admin), auth (an attempt to authenticate from a source address locked out after failures).",
	}, []string{"what"})
	for _, w := range allWhat {
		l.counter.WithLabelValues(string(w)) // every series exists from the start
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(l.counter); err != nil {
			return nil, fmt.Errorf("ratelimit: %w", err)
		}
	}
	return l, nil
}

// Allow takes one request of what for key: a user's id (Submit, Ding),
// an admin's name (AdminRequest, TokenMint). For Auth, key is a source
// address (see Source) and nothing is taken: Allow says whether it is
// locked out. Over the limit, it counts the refusal and returns false and
// how long to wait.
func (l *Limits) Allow(what What, key string) (ok bool, retryAfter time.Duration) {
	if l == nil {
		return true, 0
	}
	if what == Auth {
		locked, wait := l.buckets[Auth].Locked(key)
		ok, retryAfter = !locked, wait
	} else {
		ok, retryAfter = l.buckets[what].Take(key)
	}
	if !ok {
		l.counter.WithLabelValues(string(what)).Inc()
	}
	return ok, retryAfter
}

// Check is Allow as an error: nil, or an *Error.
func (l *Limits) Check(what What, key string) error {
	if ok, wait := l.Allow(what, key); !ok {
		return &Error{What: what, RetryAfter: wait}
	}
	return nil
}

// AuthFailed counts a failed authentication from source (see Source); the
// failure that reaches the limit locks it out.
func (l *Limits) AuthFailed(source string) {
	if l == nil {
		return
	}
	if l.buckets[Auth].Fail(source) && l.log != nil {
		l.log.Warn("source locked out after failed authentications", "source", source, "for", l.lockFor)
	}
}

// On reports whether what is limited at all.
func (l *Limits) On(what What) bool { return l != nil && l.buckets[what] != nil }

// Source is the key of a client's address for Auth: the IP address
// without its port, or, for IPv6, its /64 (the block one host is
// usually given, so one host cannot dodge the lockout by changing
// address).
func Source(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is4() {
		return ip.String()
	}
	p, _ := ip.WithZone("").Prefix(64)
	return p.String()
}

// CodeRateLimited is the code of a request refused by a limit; retrying
// after Error.RetryAfter is safe.
const CodeRateLimited = engine.CodeRateLimited

// Error is a request refused by a limit. errors.Is(err, ErrLimited)
// holds for it.
type Error struct {
	What       What
	RetryAfter time.Duration // when a retry may succeed
}

// ErrLimited is matched by every *Error.
var ErrLimited = engine.NewError(CodeRateLimited, "ratelimit: rate limited")

func (e *Error) Error() string { return "ratelimit: " + e.Detail() }

// Detail is what a client is told: which limit, and when to retry.
func (e *Error) Detail() string {
	what := map[What]string{
		Submit:       "too many messages from this user",
		Ding:         "too many DINGs from this user",
		AdminRequest: "too many requests from this admin",
		TokenMint:    "too many client tokens minted by this admin",
		Auth:         "too many failed authentications from this address",
	}[e.What]
	if what == "" {
		what = "too many requests"
	}
	return fmt.Sprintf("%s; retry in %s", what, roundUp(e.RetryAfter))
}

// ErrorCode implements engine.Coded.
func (e *Error) ErrorCode() engine.Code { return CodeRateLimited }

// Is makes errors.Is(err, ErrLimited) true.
func (e *Error) Is(target error) bool { return target == ErrLimited }

// roundUp is d rounded up to a whole millisecond (a whole second above
// one), for people.
func roundUp(d time.Duration) time.Duration {
	if d >= time.Second {
		return (d + time.Second - 1).Truncate(time.Second)
	}
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}
