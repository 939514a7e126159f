// Package twiliotest is a fake Twilio on loopback, for tests: the REST
// endpoints that create messages and calls, fault injection, and the
// carrier's side, which sends signed status callbacks, keypresses and
// inbound texts to the webhooks under test.
//
// It does not import twilio-go: it parses requests and signs webhooks
// itself, so a test that passes is two independent implementations
// agreeing on the wire format, not one library talking to itself.
//
// Usage:
//
//	tw := twiliotest.NewServer("AC0123...", "token")
//	defer tw.Close()
//	n, _ := twilio.New(twilio.Config{..., APIURL: tw.URL()})
//	ref, _ := n.Send(ctx, o)                     // recorded by tw
//	code, body, err := tw.SMSStatus(ctx, ref, "delivered", "")
//
// REST endpoints served (form-encoded POST, HTTP Basic auth with the
// account SID and auth token):
//
//	POST /2010-04-01/Accounts/{AccountSid}/Messages.json  To, From, Body, StatusCallback
//	POST /2010-04-01/Accounts/{AccountSid}/Calls.json     To, From, Twiml or Url, StatusCallback, StatusCallbackEvent
//
// Errors are answered as Twilio answers them:
//
//	{"code": 21211, "message": "...", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}
package twiliotest

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// Request is one REST request the fake accepted (answered 201).
type Request struct {
	Kind string // "sms" or "call"
	SID  string // "SM…" or "CA…", as answered
	To   string
	From string
	// Body is the message text (sms).
	Body string
	// Twiml is the inline TwiML (call); URL is the TwiML URL if the call
	// was created with one instead.
	Twiml string
	URL   string
	// StatusCallback is where the carrier's status reports go.
	StatusCallback string
	// StatusCallbackEvents are the call events asked for (call).
	StatusCallbackEvents []string
	// GatherAction is the action URL of the first <Gather> in Twiml (call),
	// where Press posts the digits.
	GatherAction string
	At           time.Time
}

// Server is the fake. Its methods are safe for concurrent use.
type Server struct {
	accountSID, authToken string

	srv       *httptest.Server
	carrier   *http.Client // sends webhooks; its idle connections are closed by Close
	closing   chan struct{}
	closeOnce sync.Once

	mu         sync.Mutex
	reqs       []Request     // guarded by mu
	changed    chan struct{} // guarded by mu; closed and replaced when reqs grows
	failN      int           // guarded by mu
	failStatus int           // guarded by mu
	hangN      int           // guarded by mu
}

// NewServer starts a fake Twilio on 127.0.0.1 that accepts the given
// credentials. Close it when done.
func NewServer(accountSID, authToken string) *Server {
	s := newServer(accountSID, authToken)
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveREST))
	return s
}

// Listen starts a fake Twilio on addr (for local demos: dingd
// --twilio-api-url http://addr). Close it when done.
func Listen(addr, accountSID, authToken string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("twiliotest: listen: %w", err)
	}
	s := newServer(accountSID, authToken)
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serveREST))
	s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.Start()
	return s, nil
}

func newServer(accountSID, authToken string) *Server {
	return &Server{
		accountSID: accountSID,
		authToken:  authToken,
		closing:    make(chan struct{}),
		changed:    make(chan struct{}),
		carrier: &http.Client{
			Transport: &http.Transport{},
			Timeout:   10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
}

// URL is the fake's base URL (http://127.0.0.1:port), to use in place of
// https://api.twilio.com.
func (s *Server) URL() string { return s.srv.URL }

// AccountSID is the account the fake accepts.
func (s *Server) AccountSID() string { return s.accountSID }

// Close releases requests held by HangNext, stops the server (waiting for
// its handlers) and closes the carrier's idle connections. It is
// idempotent.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.srv.Close()
		s.carrier.CloseIdleConnections()
	})
}

// FailNext makes the next n REST requests answer the HTTP status (a
// Twilio-style JSON error) without being recorded.
func (s *Server) FailNext(n, status int) {
	s.mu.Lock()
	s.failN, s.failStatus = n, status
	s.mu.Unlock()
}

// HangNext makes the next n REST requests wait, unanswered and unrecorded,
// until the client gives up or the server is closed. HangNext is taken
// before FailNext.
func (s *Server) HangNext(n int) {
	s.mu.Lock()
	s.hangN = n
	s.mu.Unlock()
}

// Requests returns a copy of the accepted requests, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

// Count returns how many requests of kind ("sms" or "call"; "" for both)
// were accepted.
func (s *Server) Count(kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.countLocked(kind)
}

func (s *Server) countLocked(kind string) int {
	n := 0
	for _, r := range s.reqs {
		if kind == "" || r.Kind == kind {
			n++
		}
	}
	return n
}

// WaitFor waits until at least n requests of kind ("" for any) have been
// accepted, and returns those of that kind. It returns ctx's error if ctx
// ends first, or an error if the server is closed.
func (s *Server) WaitFor(ctx context.Context, kind string, n int) ([]Request, error) {
	for {
		s.mu.Lock()
		if s.countLocked(kind) >= n {
			var out []Request
			for _, r := range s.reqs {
				if kind == "" || r.Kind == kind {
					out = append(out, r)
				}
			}
			s.mu.Unlock()
			return out, nil
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("twiliotest: waiting for %d %q requests: %w", n, kind, ctx.Err())
		case <-s.closing:
			return nil, errors.New("twiliotest: server closed")
		}
	}
}

// Lookup returns the accepted request with the SID.
func (s *Server) Lookup(sid string) (Request, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.reqs {
		if r.SID == sid {
			return r, true
		}
	}
	return Request{}, false
}

var (
	restPath = regexp.MustCompile(`^/2010-04-01/Accounts/([^/]+)/(Messages|Calls)\.json$`)
	e164     = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)
)

// maxForm bounds a REST request body, as Twilio bounds its parameters.
const maxForm = 1 << 20

func (s *Server) serveREST(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	hang, fail := false, 0
	switch {
	case s.hangN > 0:
		s.hangN--
		hang = true
	case s.failN > 0:
		s.failN--
		fail = s.failStatus
	}
	s.mu.Unlock()
	if hang {
		select {
		case <-r.Context().Done():
		case <-s.closing:
		}
		return
	}
	if fail != 0 {
		writeError(w, fail, codeFor(fail), "injected failure")
		return
	}

	m := restPath.FindStringSubmatch(r.URL.Path)
	if m == nil {
		writeError(w, http.StatusNotFound, 20404, "The requested resource was not found")
		return
	}
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, 20004, "Method not allowed")
		return
	}
	user, pass, ok := r.BasicAuth()
	if !ok || !hmac.Equal([]byte(user), []byte(s.accountSID)) || !hmac.Equal([]byte(pass), []byte(s.authToken)) {
		writeError(w, http.StatusUnauthorized, 20003, "Authenticate")
		return
	}
	if m[1] != s.accountSID {
		writeError(w, http.StatusNotFound, 20404, "The requested resource was not found")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, 20001, "Could not parse the request parameters")
		return
	}
	f := r.PostForm
	req := Request{
		To:             f.Get("To"),
		From:           f.Get("From"),
		StatusCallback: f.Get("StatusCallback"),
		At:             time.Now(),
	}
	switch {
	case req.To == "":
		writeError(w, http.StatusBadRequest, 21604, "A 'To' phone number is required.")
		return
	case !e164.MatchString(req.To):
		writeError(w, http.StatusBadRequest, 21211, "The 'To' number is not a valid phone number.")
		return
	case req.From == "":
		writeError(w, http.StatusBadRequest, 21603, "A 'From' phone number is required.")
		return
	case !e164.MatchString(req.From):
		writeError(w, http.StatusBadRequest, 21212, "The 'From' number is not a valid phone number.")
		return
	case req.StatusCallback != "" && !absoluteURL(req.StatusCallback):
		writeError(w, http.StatusBadRequest, 21609, "The StatusCallback URL is not a valid URL.")
		return
	}

	if m[2] == "Messages" {
		req.Kind, req.SID, req.Body = "sms", newSID("SM"), f.Get("Body")
		if req.Body == "" {
			writeError(w, http.StatusBadRequest, 21602, "Message body is required.")
			return
		}
		if len([]rune(req.Body)) > 1600 {
			writeError(w, http.StatusBadRequest, 21617, "The concatenated message body exceeds the 1600 character limit.")
			return
		}
	} else {
		req.Kind, req.SID = "call", newSID("CA")
		req.Twiml, req.URL = f.Get("Twiml"), f.Get("Url")
		req.StatusCallbackEvents = f["StatusCallbackEvent"]
		switch {
		case req.Twiml == "" && req.URL == "":
			writeError(w, http.StatusBadRequest, 21205, "Url parameter is required.")
			return
		case req.Twiml != "":
			if len(req.Twiml) > 4000 {
				writeError(w, http.StatusBadRequest, 13002, "Twiml exceeds 4000 characters.")
				return
			}
			action, err := gatherAction(req.Twiml)
			if err != nil {
				writeError(w, http.StatusBadRequest, 12100, "Document parse failure: "+err.Error())
				return
			}
			req.GatherAction = action
		}
	}

	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(s.resource(req))
}

// resource is the JSON Twilio answers for a created message or call.
func (s *Server) resource(req Request) map[string]any {
	date := req.At.UTC().Format(time.RFC1123Z)
	base := "/2010-04-01/Accounts/" + s.accountSID
	res := map[string]any{
		"sid":          req.SID,
		"account_sid":  s.accountSID,
		"api_version":  "2010-04-01",
		"date_created": date,
		"date_updated": date,
		"direction":    "outbound-api",
		"from":         req.From,
		"to":           req.To,
		"price":        nil,
		"price_unit":   "USD",
		"status":       "queued",
	}
	if req.Kind == "sms" {
		uri := base + "/Messages/" + req.SID
		res["body"] = req.Body
		res["date_sent"] = nil
		res["error_code"] = nil
		res["error_message"] = nil
		res["messaging_service_sid"] = nil
		res["num_media"] = "0"
		res["num_segments"] = "1"
		res["uri"] = uri + ".json"
		res["subresource_uris"] = map[string]string{"media": uri + "/Media.json"}
	} else {
		uri := base + "/Calls/" + req.SID
		res["to_formatted"] = req.To
		res["from_formatted"] = req.From
		res["parent_call_sid"] = nil
		res["phone_number_sid"] = nil
		res["start_time"] = nil
		res["end_time"] = nil
		res["duration"] = nil
		res["answered_by"] = nil
		res["caller_name"] = nil
		res["uri"] = uri + ".json"
		res["subresource_uris"] = map[string]string{
			"notifications": uri + "/Notifications.json",
			"recordings":    uri + "/Recordings.json",
		}
	}
	return res
}

// gatherAction checks that twiml is well-formed XML with a <Response>
// root, and returns the action of its first <Gather> ("" if none).
func gatherAction(twiml string) (string, error) {
	d := xml.NewDecoder(strings.NewReader(twiml))
	action, depth := "", 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return action, nil
		}
		if err != nil {
			return "", err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 && t.Name.Local != "Response" {
				return "", fmt.Errorf("root element is <%s>, want <Response>", t.Name.Local)
			}
			depth++
			if t.Name.Local == "Gather" && action == "" {
				for _, a := range t.Attr {
					if a.Name.Local == "action" {
						action = a.Value
					}
				}
			}
		case xml.EndElement:
			depth--
		}
	}
}

func absoluteURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

func newSID(prefix string) string {
	var b [16]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// codeFor picks a Twilio error code for an injected HTTP status.
func codeFor(status int) int {
	switch status {
	case http.StatusBadRequest:
		return 21211
	case http.StatusUnauthorized:
		return 20003
	case http.StatusNotFound:
		return 20404
	case http.StatusTooManyRequests:
		return 20429
	case http.StatusInternalServerError:
		return 20500
	case http.StatusServiceUnavailable:
		return 20503
	}
	return 20000 + status
}

func writeError(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{
		"code":      code,
		"message":   msg,
		"more_info": fmt.Sprintf("https://www.twilio.com/docs/errors/%d", code),
		"status":    status,
	})
}

// Sign returns the X-Twilio-Signature Twilio sends with a POST of params
// to url: base64(HMAC-SHA1(authToken, url + each name+value, sorted by
// name, then by value for a repeated name)).
func Sign(authToken, url string, params url.Values) string {
	var b strings.Builder
	b.WriteString(url)
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		vs := slices.Clone(params[k])
		slices.Sort(vs)
		for _, v := range vs {
			b.WriteString(k)
			b.WriteString(v)
		}
	}
	h := hmac.New(sha1.New, []byte(authToken))
	h.Write([]byte(b.String()))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// Post sends params to url as Twilio sends a webhook: a form POST signed
// with the fake's auth token. It returns the status and body answered.
func (s *Server) Post(ctx context.Context, url string, params url.Values) (status int, body string, err error) {
	return s.PostSigned(ctx, url, params, Sign(s.authToken, url, params))
}

// PostSigned is Post with the given X-Twilio-Signature ("" sends none),
// to test forged or unsigned webhooks.
func (s *Server) PostSigned(ctx context.Context, url string, params url.Values, signature string) (status int, body string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(params.Encode()))
	if err != nil {
		return 0, "", fmt.Errorf("twiliotest: webhook: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("User-Agent", "TwilioProxy/1.1")
	if signature != "" {
		req.Header.Set("X-Twilio-Signature", signature)
	}
	resp, err := s.carrier.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("twiliotest: webhook: %w", err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(resp.Body, 1<<20)); err != nil {
		return resp.StatusCode, buf.String(), fmt.Errorf("twiliotest: webhook: read answer: %w", err)
	}
	return resp.StatusCode, buf.String(), nil
}

func (s *Server) lookupKind(sid, kind string) (Request, error) {
	r, ok := s.Lookup(sid)
	if !ok || r.Kind != kind {
		return Request{}, fmt.Errorf("twiliotest: no %s with sid %q", kind, sid)
	}
	return r, nil
}

// SMSStatus reports a message's status (queued, sent, delivered,
// undelivered, failed, ...) to its StatusCallback, with ErrorCode if
// errorCode is not empty.
func (s *Server) SMSStatus(ctx context.Context, sid, status, errorCode string) (int, string, error) {
	r, err := s.lookupKind(sid, "sms")
	if err != nil {
		return 0, "", err
	}
	if r.StatusCallback == "" {
		return 0, "", fmt.Errorf("twiliotest: message %s has no StatusCallback", sid)
	}
	p := url.Values{
		"MessageSid":    {sid},
		"SmsSid":        {sid},
		"MessageStatus": {status},
		"SmsStatus":     {status},
		"AccountSid":    {s.accountSID},
		"To":            {r.To},
		"From":          {r.From},
		"ApiVersion":    {"2010-04-01"},
	}
	if errorCode != "" {
		p.Set("ErrorCode", errorCode)
	}
	return s.Post(ctx, r.StatusCallback, p)
}

// CallStatus reports a call's status (initiated, ringing, in-progress,
// completed, busy, no-answer, failed, canceled) to its StatusCallback.
func (s *Server) CallStatus(ctx context.Context, sid, status string) (int, string, error) {
	r, err := s.lookupKind(sid, "call")
	if err != nil {
		return 0, "", err
	}
	if r.StatusCallback == "" {
		return 0, "", fmt.Errorf("twiliotest: call %s has no StatusCallback", sid)
	}
	return s.Post(ctx, r.StatusCallback, url.Values{
		"CallSid":    {sid},
		"CallStatus": {status},
		"AccountSid": {s.accountSID},
		"To":         {r.To},
		"From":       {r.From},
		"Direction":  {"outbound-api"},
		"ApiVersion": {"2010-04-01"},
	})
}

// Press posts digits to the call's <Gather> action, as when the callee
// presses keys.
func (s *Server) Press(ctx context.Context, callSID, digits string) (int, string, error) {
	r, err := s.lookupKind(callSID, "call")
	if err != nil {
		return 0, "", err
	}
	if r.GatherAction == "" {
		return 0, "", fmt.Errorf("twiliotest: call %s has no <Gather action>", callSID)
	}
	return s.Post(ctx, r.GatherAction, url.Values{
		"CallSid":    {callSID},
		"Digits":     {digits},
		"AccountSid": {s.accountSID},
		"To":         {r.To},
		"From":       {r.From},
		"CallStatus": {"in-progress"},
	})
}

// Reply posts an inbound text from the phone from to the number to, as
// Twilio posts to a number's messaging webhook at inboundURL.
func (s *Server) Reply(ctx context.Context, inboundURL, from, to, body string) (int, string, error) {
	sid := newSID("SM")
	return s.Post(ctx, inboundURL, url.Values{
		"MessageSid":  {sid},
		"SmsSid":      {sid},
		"AccountSid":  {s.accountSID},
		"From":        {from},
		"To":          {to},
		"Body":        {body},
		"NumMedia":    {"0"},
		"NumSegments": {"1"},
		"SmsStatus":   {"received"},
		"ApiVersion":  {"2010-04-01"},
	})
}
