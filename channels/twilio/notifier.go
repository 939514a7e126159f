package twilio

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twilio/twilio-go/client"
	api "github.com/twilio/twilio-go/rest/api/v2010"

	"github.com/dingmq/ding/engine"
)

// Config configures a Notifier. With AccountSID and AuthToken both empty
// Twilio is not configured: Send returns engine.ErrNotConfigured and the
// webhooks answer 404.
type Config struct {
	// AccountSID and AuthToken are the account's credentials. twilio-go
	// accepts letters and digits only.
	AccountSID, AuthToken string
	// From is the caller id and sender, in E.164 ("+15005550006").
	From string
	// PublicURL is the base URL where Twilio reaches Handler, such as
	// https://ding.example.com; webhook URLs are PublicURL + "/twilio/...".
	// It has no path: Handler serves absolute paths.
	PublicURL string
	// APIURL replaces https://api.twilio.com as the REST API's base URL
	// (scheme and host only), for a Twilio-compatible gateway or a fake on
	// loopback. Empty means Twilio.
	APIURL string
	// Timeout bounds each REST request; zero means 10s. The context
	// passed to Send can only shorten it.
	Timeout time.Duration
	// HTTPClient's Transport carries the REST requests; nil, or a nil
	// Transport, means a clone of http.DefaultTransport that keeps 32 idle
	// connections per host. Its Timeout is not used (see
	// Timeout) and redirects are not followed.
	HTTPClient *http.Client
	// Logger; nil means slog.Default(). Phone numbers and texts are never
	// logged.
	Logger *slog.Logger
	// Registerer receives the metrics; nil means none are registered.
	Registerer prometheus.Registerer
}

var (
	e164 = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)
	// twilio-go refuses credentials with other characters (before sending).
	alphanumeric = regexp.MustCompile(`^[A-Za-z0-9]+$`)
)

// Configured reports whether the config has credentials.
func (c *Config) Configured() bool { return c.AccountSID != "" || c.AuthToken != "" }

// Validate checks a configured Config: both credentials, an E.164 From, an
// absolute http(s) PublicURL without a path, and APIURL if set. An
// unconfigured Config is valid.
func (c *Config) Validate() error {
	if !c.Configured() {
		return nil
	}
	switch {
	case c.AccountSID == "" || c.AuthToken == "":
		return errors.New("twilio: config: AccountSID and AuthToken must be set together")
	case !alphanumeric.MatchString(c.AccountSID) || !alphanumeric.MatchString(c.AuthToken):
		return errors.New("twilio: config: AccountSID and AuthToken must be letters and digits only")
	case !e164.MatchString(c.From):
		return errors.New("twilio: config: From must be an E.164 number like +15005550006")
	case c.Timeout < 0:
		return errors.New("twilio: config: Timeout must not be negative")
	}
	if _, err := baseURL("PublicURL", c.PublicURL); err != nil {
		return err
	}
	if c.APIURL != "" {
		if _, err := baseURL("APIURL", c.APIURL); err != nil {
			return err
		}
	}
	return nil
}

// baseURL parses an absolute http(s) URL with no path (a trailing slash is
// allowed), query or fragment.
func baseURL(field, s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("twilio: config: %s must be an absolute http(s) URL, got %q", field, s)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("twilio: config: %s must be scheme://host[:port] only, got %q", field, s)
	}
	return u, nil
}

// Notifier sends SMS and calls through Twilio and serves its webhooks. It
// is safe for concurrent use.
type Notifier struct {
	cfg       Config
	public    string   // PublicURL without a trailing slash
	api       *url.URL // nil means api.twilio.com
	transport http.RoundTripper
	timeout   time.Duration
	log       *slog.Logger
	m         *metrics
	validator client.RequestValidator // checks webhook signatures
}

var _ engine.Notifier = (*Notifier)(nil)

// New validates cfg and returns a Notifier. It fails if cfg is invalid or
// the metrics cannot be registered.
// defaultTransport is http.DefaultTransport keeping enough idle
// connections per host for every dispatch worker: the default keeps 2, so
// concurrent sends opened a new connection (a TCP and TLS handshake with
// api.twilio.com) most of the time.
func defaultTransport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 32
	return t
}

func New(cfg Config) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Notifier{
		cfg:       cfg,
		public:    strings.TrimRight(cfg.PublicURL, "/"),
		transport: defaultTransport(),
		timeout:   cfg.Timeout,
		log:       cfg.Logger,
		validator: newValidator(cfg.AuthToken),
	}
	if cfg.APIURL != "" {
		n.api, _ = baseURL("APIURL", cfg.APIURL)
	}
	if cfg.HTTPClient != nil && cfg.HTTPClient.Transport != nil {
		n.transport = cfg.HTTPClient.Transport
	}
	if n.timeout == 0 {
		n.timeout = 10 * time.Second
	}
	if n.log == nil {
		n.log = slog.Default()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("twilio: metrics: %w", err)
	}
	n.m = m
	return n, nil
}

// Configured reports whether Twilio credentials were given.
func (n *Notifier) Configured() bool { return n.cfg.Configured() }

// Send sends o as an SMS or a call and returns its Twilio SID. See the
// package doc and engine.Notifier for what its errors mean. It never puts
// the phone number or the text in an error.
func (n *Notifier) Send(ctx context.Context, o engine.Outbound) (ref string, err error) {
	var op, kind string
	switch o.Channel {
	case engine.ChannelSMS:
		op, kind = "send sms", "sms"
	case engine.ChannelVoice:
		op, kind = "place call", "call"
	default:
		return "", fmt.Errorf("twilio: send %s: %w", o.Channel, engine.ErrNotConfigured)
	}
	if !n.Configured() {
		return "", fmt.Errorf("twilio: %s: %w", op, engine.ErrNotConfigured)
	}
	if !e164.MatchString(o.To) {
		n.m.requests(kind, "rejected")
		return "", fmt.Errorf("twilio: %s: recipient's number is not E.164: %w", op, engine.ErrRejected)
	}

	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	rt := &sendTransport{ctx: ctx, api: n.api, base: n.transport}
	c := &client.Client{
		Credentials: client.NewCredentials(n.cfg.AccountSID, n.cfg.AuthToken),
		HTTPClient: &http.Client{
			Transport:     rt,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	c.SetAccountSid(n.cfg.AccountSID)
	// Built by hand rather than with client.NewRequestHandler, which reads
	// TWILIO_EDGE and TWILIO_REGION from the environment and would move
	// requests to another host.
	svc := api.NewApiService(&client.RequestHandler{Client: c})

	start := time.Now()
	var sid *string
	switch o.Channel {
	case engine.ChannelSMS:
		sid, err = n.sendSMS(svc, o)
	case engine.ChannelVoice:
		sid, err = n.placeCall(svc, o)
	}
	if !errors.Is(err, errTooLong) { // refused before any request
		n.m.latency(kind, time.Since(start))
	}
	if err == nil && (sid == nil || *sid == "") {
		err = errors.New("answer has no sid")
	}
	if err != nil {
		err = n.redact(rt.status, err)
		if rejected(rt.status, err) {
			n.m.requests(kind, "rejected")
			return "", fmt.Errorf("twilio: %s: %w: %w", op, engine.ErrRejected, err)
		}
		n.m.requests(kind, "error")
		return "", fmt.Errorf("twilio: %s: %w", op, err)
	}
	n.m.requests(kind, "ok")
	if n.log.Enabled(ctx, slog.LevelDebug) {
		n.log.LogAttrs(ctx, slog.LevelDebug, "twilio: "+op,
			slog.String("ding", o.Ding.String()), slog.Int("recipient", o.Recipient),
			slog.Int("attempt", o.Attempt), slog.String("sid", *sid))
	}
	return *sid, nil
}

// errTooLong is wrapped with ErrRejected: Twilio refuses such a request.
var errTooLong = errors.New("too long for Twilio")

func (n *Notifier) sendSMS(svc *api.ApiService, o engine.Outbound) (*string, error) {
	body := smsBody(o.Text, o.Choices)
	if utf8.RuneCountInString(body) > maxSMSRunes {
		return nil, fmt.Errorf("message body: %w", errTooLong)
	}
	p := &api.CreateMessageParams{}
	p.SetTo(o.To)
	p.SetFrom(n.cfg.From)
	p.SetBody(body)
	p.SetStatusCallback(n.public + pathSMSStatus)
	msg, err := svc.CreateMessage(p)
	if err != nil {
		return nil, err
	}
	return msg.Sid, nil
}

func (n *Notifier) placeCall(svc *api.ApiService, o engine.Outbound) (*string, error) {
	twiml := callTwiml(o.Text, o.Choices, n.public+pathGather)
	if utf8.RuneCountInString(twiml) > maxTwiml {
		return nil, fmt.Errorf("twiml: %w", errTooLong)
	}
	p := &api.CreateCallParams{}
	p.SetTo(o.To)
	p.SetFrom(n.cfg.From)
	p.SetTwiml(twiml)
	p.SetStatusCallback(n.public + pathCallStatus)
	p.SetStatusCallbackMethod(http.MethodPost)
	p.SetStatusCallbackEvent([]string{"initiated", "ringing", "answered", "completed"})
	call, err := svc.CreateCall(p)
	if err != nil {
		return nil, err
	}
	return call.Sid, nil
}

// restError is Twilio's error answer without its message, which can
// quote the phone number.
type restError struct {
	status, code int // HTTP status (0 if not sent), Twilio error code
}

func (e *restError) Error() string {
	if e.status == 0 {
		return fmt.Sprintf("refused before sending: Twilio error %d", e.code)
	}
	return fmt.Sprintf("HTTP %d: Twilio error %d (https://www.twilio.com/docs/errors/%d)", e.status, e.code, e.code)
}

// redact replaces a twilio-go TwilioRestError by a restError, and names
// the host actually asked in a transport error (twilio-go's request still
// names api.twilio.com when APIURL replaces it).
func (n *Notifier) redact(status int, err error) error {
	var ue *url.Error
	if n.api != nil && errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.Scheme, u.Host = n.api.Scheme, n.api.Host
			ue.URL = u.String()
		}
	}
	var te *client.TwilioRestError
	if !errors.As(err, &te) {
		return err
	}
	if status == 0 && te.Status != 0 {
		// twilio-go refused the request itself (its credential check).
		return &restError{code: te.Code}
	}
	return &restError{status: status, code: te.Code}
}

// rejected reports whether a failed request certainly was not accepted and
// would fail again: Twilio answered 4xx other than 408 (timeout) and 429
// (rate limit), or the request was refused before it was sent.
func rejected(status int, err error) bool {
	if errors.Is(err, errTooLong) {
		return true
	}
	var re *restError
	if status == 0 {
		// Nothing was answered: either twilio-go refused the request
		// itself, certainly, or the connection failed, which is unknown.
		return errors.As(err, &re) && re.status == 0
	}
	return status >= 400 && status < 500 &&
		status != http.StatusRequestTimeout && status != http.StatusTooManyRequests
}
