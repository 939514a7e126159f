package email

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/mail"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	gomail "github.com/wneessen/go-mail"

	"github.com/dingmq/ding/engine"
)

// TLS modes of Config.TLS.
const (
	// TLSStartTLS connects in the clear and upgrades with STARTTLS before
	// anything else is said; a server that does not offer it is an error
	// (the submission port, 587). The default.
	TLSStartTLS = "starttls"
	// TLSImplicit speaks TLS from the first byte (SMTPS, port 465).
	TLSImplicit = "tls"
	// TLSNone sends in the clear. Allowed only to a loopback address
	// (a local relay, a test server).
	TLSNone = "none"
)

// Config configures a Notifier. Without Addr e-mail is not configured:
// Send returns engine.ErrNotConfigured and the links answer 404.
type Config struct {
	// Addr is the SMTP server's host:port, such as smtp.example.com:587.
	Addr string
	// TLS is TLSStartTLS, TLSImplicit or TLSNone; empty means
	// TLSStartTLS.
	TLS string
	// Username and Password, when Username is set, authenticate with AUTH
	// PLAIN, which go-mail sends only over TLS or to a loopback server.
	// The password is never logged.
	Username, Password string
	// From is the sender, a bare address or with a display name
	// ("Ding <ding@example.com>").
	From string
	// PublicURL is the base URL where recipients reach dingd's HTTP port
	// (https://ding.example.com): links are PublicURL + "/email/confirm".
	// No path of its own.
	PublicURL string
	// Key signs the links (LoadOrCreateKey); at least KeySize bytes.
	Key []byte
	// LinkTTL is how long a link works; zero means 7 days (the longest a
	// policy may last, engine.MaxPolicySpan).
	LinkTTL time.Duration
	// Timeout bounds one send (connect, TLS, auth, the message); zero
	// means 30s. The context passed to Send can only shorten it.
	Timeout time.Duration
	// TLSConfig, if set, is used for the server's TLS (its RootCAs, for a
	// private CA or a test server); ServerName is set from Addr if empty.
	TLSConfig *tls.Config
	// Now is the clock of the links' expiry; nil means time.Now.
	Now func() time.Time
	// Logger; nil means slog.Default(). Addresses and texts are never
	// logged.
	Logger *slog.Logger
	// Registerer receives the metrics; nil means none are registered.
	Registerer prometheus.Registerer
}

// Configured reports whether an SMTP server was given.
func (c *Config) Configured() bool { return c.Addr != "" }

// Validate checks a configured Config: Addr is host:port; TLS is a known
// mode, TLSNone only to a loopback host; From is one address; PublicURL
// is an absolute http(s) URL without a path; Key is long enough. An
// unconfigured Config is valid.
func (c *Config) Validate() error {
	if !c.Configured() {
		return nil
	}
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil || host == "" {
		return fmt.Errorf("email: config: Addr must be host:port, got %q", c.Addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("email: config: Addr %q: bad port", c.Addr)
	}
	switch c.TLS {
	case "", TLSStartTLS, TLSImplicit:
	case TLSNone:
		if !loopback(host) {
			return fmt.Errorf("email: config: TLS %q is allowed only to a loopback server, not %q", TLSNone, host)
		}
	default:
		return fmt.Errorf("email: config: TLS must be %s, %s or %s, got %q", TLSStartTLS, TLSImplicit, TLSNone, c.TLS)
	}
	if _, err := mail.ParseAddress(c.From); err != nil {
		return fmt.Errorf("email: config: From must be an address like \"Ding <ding@example.com>\", got %q", c.From)
	}
	u, err := url.Parse(c.PublicURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("email: config: PublicURL must be scheme://host[:port], got %q", c.PublicURL)
	}
	switch {
	case len(c.Key) < KeySize:
		return fmt.Errorf("email: config: Key must have at least %d bytes", KeySize)
	case c.LinkTTL < 0 || c.Timeout < 0:
		return errors.New("email: config: LinkTTL and Timeout must not be negative")
	case c.Password != "" && c.Username == "":
		return errors.New("email: config: a Password needs a Username")
	}
	return nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Notifier sends DINGs' e-mail steps through SMTP and serves their
// confirmation links (Handler). It is safe for concurrent use.
type Notifier struct {
	cfg    Config
	host   string
	port   int
	public string // PublicURL without a trailing slash
	domain string // of From, for Message-IDs
	ttl    time.Duration
	now    func() time.Time
	log    *slog.Logger
	m      *metrics
}

var _ engine.Notifier = (*Notifier)(nil)

// New validates cfg and returns a Notifier. It fails if cfg is invalid or
// the metrics cannot be registered.
func New(cfg Config) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Notifier{cfg: cfg, ttl: cfg.LinkTTL, now: cfg.Now, log: cfg.Logger}
	if cfg.Configured() {
		var port string
		n.host, port, _ = net.SplitHostPort(cfg.Addr)
		n.port, _ = strconv.Atoi(port)
		n.public = strings.TrimRight(cfg.PublicURL, "/")
		from, _ := mail.ParseAddress(cfg.From)
		n.domain = from.Address[strings.LastIndexByte(from.Address, '@')+1:]
	}
	if n.ttl == 0 {
		n.ttl = engine.MaxPolicySpan
	}
	if n.cfg.Timeout == 0 {
		n.cfg.Timeout = 30 * time.Second
	}
	if n.now == nil {
		n.now = time.Now
	}
	if n.log == nil {
		n.log = slog.Default()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("email: metrics: %w", err)
	}
	n.m = m
	return n, nil
}

// Configured reports whether an SMTP server was given.
func (n *Notifier) Configured() bool { return n.cfg.Configured() }

// SendError is a failed send: the SMTP reply code when the server gave
// one (0 when it could not be reached or the session broke), and whether
// the failure is permanent (a 5xx: it wraps engine.ErrRejected). Its text
// never holds the recipient's address or the message.
type SendError struct {
	Code      int
	Permanent bool
	op        string
	cause     string // a safe description when Code is 0
}

func (e *SendError) Error() string {
	kind := "temporary"
	if e.Permanent {
		kind = "permanent"
	}
	if e.Code == 0 {
		return fmt.Sprintf("email: %s: %s (%s)", e.op, e.cause, kind)
	}
	return fmt.Sprintf("email: %s: smtp %d (%s)", e.op, e.Code, kind)
}

// Unwrap makes a permanent failure errors.Is engine.ErrRejected.
func (e *SendError) Unwrap() error {
	if e.Permanent {
		return engine.ErrRejected
	}
	return nil
}

// ProviderDetail implements engine.ProviderDetailer: "smtp 451", or
// "mail server unreachable".
func (e *SendError) ProviderDetail() string {
	if e.Code == 0 {
		if e.Permanent {
			return e.cause
		}
		return "mail server unreachable"
	}
	return "smtp " + strconv.Itoa(e.Code)
}

// Send sends o as an e-mail and returns its Message-ID. See the package
// doc and engine.Notifier for what its errors mean.
func (n *Notifier) Send(ctx context.Context, o engine.Outbound) (string, error) {
	if o.Channel != engine.ChannelEmail {
		return "", fmt.Errorf("email: send %s: %w", o.Channel, engine.ErrNotConfigured)
	}
	if !n.Configured() {
		return "", fmt.Errorf("email: send: %w", engine.ErrNotConfigured)
	}
	if a, err := mail.ParseAddress(o.To); err != nil || a.Address != o.To {
		n.m.sent("rejected")
		return "", &SendError{Permanent: true, op: "send", cause: "recipient's address is not valid"}
	}
	msg, id, err := n.compose(o)
	if err != nil {
		n.m.sent("rejected")
		return "", &SendError{Permanent: true, op: "compose", cause: "message could not be composed"}
	}
	c, err := gomail.NewClient(n.host, n.clientOptions()...)
	if err != nil {
		return "", fmt.Errorf("email: client: %w", err) // not a configuration Validate lets through
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	start := time.Now()
	err = c.DialAndSendWithContext(ctx, msg)
	n.m.latency(time.Since(start))
	if err != nil {
		se := classify(err)
		if se.Permanent {
			n.m.sent("rejected")
		} else {
			n.m.sent("error")
		}
		return "", se
	}
	n.m.sent("ok")
	if n.log.Enabled(ctx, slog.LevelDebug) {
		n.log.LogAttrs(ctx, slog.LevelDebug, "email: sent",
			slog.String("ding", o.Ding.String()), slog.Int("recipient", o.Recipient),
			slog.Int("attempt", o.Attempt), slog.String("message_id", id))
	}
	return id, nil
}

func (n *Notifier) clientOptions() []gomail.Option {
	opts := []gomail.Option{
		gomail.WithPort(n.port),
		gomail.WithTimeout(n.cfg.Timeout),
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if n.cfg.TLSConfig != nil {
		tc = n.cfg.TLSConfig.Clone()
	}
	if tc.ServerName == "" {
		tc.ServerName = n.host
	}
	switch n.cfg.TLS {
	case TLSImplicit:
		opts = append(opts, gomail.WithSSL(), gomail.WithTLSConfig(tc))
	case TLSNone:
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
	default:
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory), gomail.WithTLSConfig(tc))
	}
	if n.cfg.Username != "" {
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthPlain),
			gomail.WithUsername(n.cfg.Username), gomail.WithPassword(n.cfg.Password))
	}
	return opts
}

// classify maps a go-mail error to a SendError: an SMTP reply code of 5xx
// is permanent, 4xx temporary; without a code (no connection, a broken
// session, a TLS failure) the outcome is unknown, so temporary.
func classify(err error) *SendError {
	se := &SendError{op: "send", cause: "no answer from the mail server"}
	var ge *gomail.SendError
	var te *textproto.Error
	switch {
	case errors.As(err, &ge) && ge.ErrorCode() != 0:
		se.Code = ge.ErrorCode()
	case errors.As(err, &te):
		se.Code = te.Code
	}
	se.Permanent = se.Code >= 500 && se.Code < 600
	return se
}

// messageID makes a unique Message-ID for a send.
func (n *Notifier) messageID(o engine.Outbound) string {
	var r [6]byte
	rand.Read(r[:])
	return fmt.Sprintf("ding.%s.%d.%d.%s@%s", o.Ding, o.Recipient, o.Attempt, hex.EncodeToString(r[:]), n.domain)
}
