// Package pushtest is a fake APNs and a fake FCM on loopback, for tests
// and local demos (cmd/fakepush). Both speak TLS with a certificate made
// at start-up (RootCAs trusts it); the APNs fake speaks HTTP/2 only, as
// APNs does.
//
// They check what the real client libraries send:
//
//   - APNs (POST /3/device/TOKEN): HTTP/2; an "authorization: bearer JWT"
//     signed ES256 with the key WriteAPNsKey wrote, whose kid is the key id
//     and iss the team id; an apns-topic; a JSON body with "aps", at most
//     4096 bytes. Answers 200 with an apns-id, or {"reason"} with the
//     status APNs gives (403 InvalidProviderToken for a bad JWT).
//   - FCM: POST /token exchanges a JWT assertion (RS256 by the service
//     account WriteServiceAccount wrote, aud the token URL, scope
//     firebase.messaging) for an access token; POST
//     /v1/projects/PROJECT/messages:send takes {"message":{"token",...}}
//     with "authorization: Bearer ACCESS" and answers {"name"}, or a
//     google.rpc error with an FcmError errorCode and, for 429 and 503,
//     Retry-After.
//
// Every request that reached a send endpoint is recorded (Requests,
// Wait), refused or not. Fail makes the next sends to a token (or any
// token) answer an error, to see retries, dead tokens and refusals.
//
// Usage:
//
//	srv, err := pushtest.Start()
//	defer srv.Close()
//	keyFile, _ := srv.WriteAPNsKey(dir)          // for push.Config.APNsKeyFile with srv.KeyID, srv.TeamID
//	saFile, _ := srv.WriteServiceAccount(dir)    // for push.Config.FCMCredentialsFile
//	// push.Config{APNsEndpoint: srv.APNsURL(), FCMEndpoint: srv.FCMURL(), TLSConfig: &tls.Config{RootCAs: srv.RootCAs()}}
//	srv.Fail(pushtest.Failure{Token: tok, Status: 410, Reason: "Unregistered"})
//	reqs, err := srv.Wait(ctx, 1)
package pushtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Providers, as Request.Provider and Failure.Provider name them.
const (
	APNs = "apns"
	FCM  = "fcm"
)

// Request is one request to a send endpoint.
type Request struct {
	Provider string      // APNs or FCM
	Token    string      // the device token it was for
	Header   http.Header // as received
	Body     []byte      // as received
	Status   int         // what the fake answered
	At       time.Time
}

// JSON decodes the body into v.
func (r Request) JSON(v any) error { return json.Unmarshal(r.Body, v) }

// Failure is an error answer for the next sends.
type Failure struct {
	Provider string // APNs or FCM; "" for both
	Token    string // "" for any token
	Status   int    // the HTTP status
	// Reason is APNs's reason ("Unregistered", "BadDeviceToken",
	// "TooManyRequests") or FCM's errorCode ("UNREGISTERED",
	// "INVALID_ARGUMENT", "QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL").
	Reason string
	// RetryAfter, when positive, is sent as Retry-After (whole seconds).
	RetryAfter time.Duration
	// Times is how many sends it answers; zero means 1, negative for ever.
	Times int
}

// Server is the two fakes. Safe for concurrent use.
type Server struct {
	KeyID, TeamID, ProjectID string

	apns, fcm *httptest.Server
	apnsKey   *ecdsa.PrivateKey
	saKey     *rsa.PrivateKey
	saEmail   string

	mu       sync.Mutex
	reqs     []Request
	fails    []Failure
	access   map[string]bool // issued access tokens
	tokens   int             // access tokens issued
	changed  chan struct{}   // closed and replaced on every recorded request
	latency  time.Duration
	gate     chan struct{} // Pause: closed by Resume; nil when not paused
	held     int           // requests waiting at the gate
	every    int           // FailEvery's period; 0: none
	everyN   int
	everySt  int
	apnsSeen map[string]int // by path token
}

// Start starts both fakes on 127.0.0.1, on ports of the system's choice.
func Start() (*Server, error) { return StartAt("", "") }

// StartAt starts the fakes on the given loopback addresses ("" for
// 127.0.0.1:0), for cmd/fakepush.
func StartAt(apnsAddr, fcmAddr string) (*Server, error) {
	s := &Server{KeyID: "KEY1234567", TeamID: "TEAM123456", ProjectID: "ding-test",
		saEmail: "ding@ding-test.iam.gserviceaccount.com", access: map[string]bool{},
		changed: make(chan struct{}), apnsSeen: map[string]int{}}
	var err error
	if s.apnsKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	if s.saKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		return nil, err
	}
	s.apns = httptest.NewUnstartedServer(http.HandlerFunc(s.serveAPNs))
	s.fcm = httptest.NewUnstartedServer(http.HandlerFunc(s.serveFCM))
	for _, x := range []struct {
		srv  *httptest.Server
		addr string
	}{{s.apns, apnsAddr}, {s.fcm, fcmAddr}} {
		if x.addr != "" {
			host, _, err := net.SplitHostPort(x.addr)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				return nil, fmt.Errorf("pushtest: %q is not a loopback address: this server is a fake", x.addr)
			}
			ln, err := net.Listen("tcp", x.addr)
			if err != nil {
				return nil, fmt.Errorf("pushtest: %w", err)
			}
			x.srv.Listener.Close()
			x.srv.Listener = ln
		}
		x.srv.EnableHTTP2 = true
		x.srv.StartTLS()
	}
	return s, nil
}

// Close stops both.
func (s *Server) Close() {
	s.apns.Close()
	s.fcm.Close()
}

// APNsURL is the APNs fake's base URL (https://127.0.0.1:PORT).
func (s *Server) APNsURL() string { return s.apns.URL }

// FCMURL is the FCM fake's base URL; its token URL is FCMURL()+"/token".
func (s *Server) FCMURL() string { return s.fcm.URL }

// TLSConfig trusts both fakes' certificates.
func (s *Server) TLSConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(s.apns.Certificate())
	pool.AddCert(s.fcm.Certificate())
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// WriteCA writes the PEM of the fakes' certificates (self-signed) in dir
// and returns its path: what a client must trust (dingd --push-ca-file).
func (s *Server) WriteCA(dir string) (string, error) {
	var b []byte
	for _, c := range []*x509.Certificate{s.apns.Certificate(), s.fcm.Certificate()} {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	p := filepath.Join(dir, "pushtest-ca.pem")
	return p, os.WriteFile(p, b, 0o644)
}

// SetLatency makes every send answer after d (a provider's round trip,
// for benchmarks); zero means at once.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	s.latency = d
	s.mu.Unlock()
}

// WriteAPNsKey writes the APNs signing key as a .p8 file (PKCS#8 PEM, as
// Apple hands it out) in dir and returns its path.
func (s *Server) WriteAPNsKey(dir string) (string, error) {
	der, err := x509.MarshalPKCS8PrivateKey(s.apnsKey)
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "AuthKey_"+s.KeyID+".p8")
	return p, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// WriteServiceAccount writes a Google service-account JSON file whose
// token_uri is the fake's, in dir, and returns its path.
func (s *Server) WriteServiceAccount(dir string) (string, error) {
	der, err := x509.MarshalPKCS8PrivateKey(s.saKey)
	if err != nil {
		return "", err
	}
	b, _ := json.MarshalIndent(map[string]string{
		"type": "service_account", "project_id": s.ProjectID, "private_key_id": "k1",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": s.saEmail, "client_id": "1", "token_uri": s.fcm.URL + "/token",
	}, "", "  ")
	p := filepath.Join(dir, "service-account.json")
	return p, os.WriteFile(p, b, 0o600)
}

// Fail queues f.
func (s *Server) Fail(f Failure) {
	if f.Times == 0 {
		f.Times = 1
	}
	s.mu.Lock()
	s.fails = append(s.fails, f)
	s.mu.Unlock()
}

// Pause holds every send request, unanswered, until Resume (to let a
// client's backlog build up, for benchmarks).
func (s *Server) Pause() {
	s.mu.Lock()
	if s.gate == nil {
		s.gate = make(chan struct{})
	}
	s.mu.Unlock()
}

// Resume answers the held requests and stops holding new ones.
func (s *Server) Resume() {
	s.mu.Lock()
	if s.gate != nil {
		close(s.gate)
		s.gate = nil
	}
	s.mu.Unlock()
}

// Held returns how many requests wait for Resume.
func (s *Server) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held
}

// hold waits while the server is paused.
func (s *Server) hold(ctx context.Context) {
	s.mu.Lock()
	g := s.gate
	if g != nil {
		s.held++
	}
	s.mu.Unlock()
	if g == nil {
		return
	}
	select {
	case <-g:
	case <-ctx.Done():
	}
	s.mu.Lock()
	s.held--
	s.mu.Unlock()
}

// FailEvery answers every nth send with status (503 to watch retries).
func (s *Server) FailEvery(n, status int) {
	s.mu.Lock()
	s.every, s.everySt = n, status
	s.mu.Unlock()
}

// Requests returns the send requests so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// Count returns how many send requests were answered 200.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.reqs {
		if r.Status == 200 {
			n++
		}
	}
	return n
}

// Reset forgets the recorded requests.
func (s *Server) Reset() {
	s.mu.Lock()
	s.reqs = nil
	s.mu.Unlock()
}

// Wait blocks until at least n send requests were recorded (or ctx ends)
// and returns them.
func (s *Server) Wait(ctx context.Context, n int) ([]Request, error) {
	for {
		s.mu.Lock()
		if len(s.reqs) >= n {
			out := append([]Request(nil), s.reqs...)
			s.mu.Unlock()
			return out, nil
		}
		ch := s.changed
		have := len(s.reqs)
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("pushtest: %d of %d requests: %w", have, n, ctx.Err())
		}
	}
}

// AccessTokensIssued counts the FCM access tokens /token issued.
func (s *Server) AccessTokensIssued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens
}

// record records a request and returns the failure to answer, if any.
func (s *Server) record(r Request) (Failure, bool, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var f Failure
	found := false
	if s.every > 0 {
		s.everyN++
		if s.everyN%s.every == 0 {
			reason := "ServiceUnavailable"
			if r.Provider == FCM {
				reason = "UNAVAILABLE"
			}
			return Failure{Status: s.everySt, Reason: reason}, true, s.latency
		}
	}
	for i := range s.fails {
		c := &s.fails[i]
		if (c.Provider == "" || c.Provider == r.Provider) && (c.Token == "" || c.Token == r.Token) && c.Times != 0 {
			f, found = *c, true
			if c.Times > 0 {
				c.Times--
			}
			break
		}
	}
	return f, found, s.latency
}

func (s *Server) done(r Request) {
	s.mu.Lock()
	s.reqs = append(s.reqs, r)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *Server) serveAPNs(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	tok, ok := strings.CutPrefix(r.URL.Path, "/3/device/")
	req := Request{Provider: APNs, Token: tok, Header: r.Header.Clone(), Body: body, At: time.Now()}
	answer := func(status int, reason string) {
		req.Status = status
		w.Header().Set("apns-id", newID())
		if status != 200 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			m := map[string]any{"reason": reason}
			if status == 410 {
				m["timestamp"] = time.Now().UnixMilli()
			}
			json.NewEncoder(w).Encode(m)
		} else {
			w.WriteHeader(200)
		}
		s.done(req)
	}
	switch {
	case r.Method != http.MethodPost || !ok:
		answer(405, "MethodNotAllowed")
		return
	case r.ProtoMajor != 2:
		answer(400, "BadRequest: HTTP/2 only")
		return
	case !s.apnsJWTValid(r.Header.Get("authorization")):
		answer(403, "InvalidProviderToken")
		return
	case r.Header.Get("apns-topic") == "":
		answer(400, "MissingTopic")
		return
	case len(tok) < 64 || !isHex(tok):
		answer(400, "BadDeviceToken")
		return
	case len(body) == 0:
		answer(400, "PayloadEmpty")
		return
	case len(body) > 4096:
		answer(413, "PayloadTooLarge")
		return
	}
	var payload map[string]json.RawMessage
	if json.Unmarshal(body, &payload) != nil || payload["aps"] == nil {
		answer(400, "BadRequest")
		return
	}
	s.hold(r.Context())
	req.At = time.Now()
	f, fail, lat := s.record(req)
	if lat > 0 {
		t := time.NewTimer(lat)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	if fail {
		if f.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(f.RetryAfter/time.Second)))
		}
		answer(f.Status, f.Reason)
		return
	}
	answer(200, "")
}

func isHex(s string) bool { _, err := hex.DecodeString(s); return err == nil }

func (s *Server) apnsJWTValid(h string) bool {
	raw, ok := strings.CutPrefix(h, "bearer ")
	if !ok {
		return false
	}
	t, err := jwt.Parse(raw, func(t *jwt.Token) (any, error) {
		if t.Header["kid"] != s.KeyID {
			return nil, errors.New("kid")
		}
		return &s.apnsKey.PublicKey, nil
	}, jwt.WithValidMethods([]string{"ES256"}), jwt.WithIssuer(s.TeamID), jwt.WithIssuedAt())
	return err == nil && t.Valid
}

func (s *Server) serveFCM(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		s.serveFCMToken(w, r)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	req := Request{Provider: FCM, Header: r.Header.Clone(), Body: body, At: time.Now()}
	answer := func(status int, code string, retryAfter time.Duration) {
		req.Status = status
		w.Header().Set("Content-Type", "application/json")
		if retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
		}
		w.WriteHeader(status)
		if status == 200 {
			fmt.Fprintf(w, `{"name":"projects/%s/messages/%s"}`, s.ProjectID, newID())
		} else {
			msg := "fake FCM: " + code
			if code == "INVALID_ARGUMENT" {
				msg = "The registration token is not a valid FCM registration token" // FCM's words for a bad token
			}
			json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
				"code": status, "message": msg, "status": grpcStatus(status),
				"details": []any{map[string]any{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}},
			}})
		}
		s.done(req)
	}
	var msg struct {
		Message map[string]json.RawMessage `json:"message"`
	}
	switch {
	case r.Method != http.MethodPost || r.URL.Path != "/v1/projects/"+s.ProjectID+"/messages:send":
		answer(404, "NOT_FOUND", 0)
		return
	case !s.accessValid(r.Header.Get("authorization")):
		answer(401, "THIRD_PARTY_AUTH_ERROR", 0)
		return
	case json.Unmarshal(body, &msg) != nil || msg.Message == nil:
		answer(400, "INVALID_ARGUMENT", 0)
		return
	}
	_ = json.Unmarshal(msg.Message["token"], &req.Token)
	if req.Token == "" {
		answer(400, "INVALID_ARGUMENT", 0)
		return
	}
	s.hold(r.Context())
	req.At = time.Now()
	f, fail, lat := s.record(req)
	if lat > 0 {
		t := time.NewTimer(lat)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}
	if fail {
		answer(f.Status, f.Reason, f.RetryAfter)
		return
	}
	answer(200, "", 0)
}

func grpcStatus(status int) string {
	switch status {
	case 400:
		return "INVALID_ARGUMENT"
	case 401:
		return "UNAUTHENTICATED"
	case 403:
		return "PERMISSION_DENIED"
	case 404:
		return "NOT_FOUND"
	case 429:
		return "RESOURCE_EXHAUSTED"
	case 503:
		return "UNAVAILABLE"
	}
	return "INTERNAL"
}

func (s *Server) accessValid(h string) bool {
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.access[tok]
}

func (s *Server) serveFCMToken(w http.ResponseWriter, r *http.Request) {
	if r.ParseForm() != nil || r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		http.Error(w, `{"error":"unsupported_grant_type"}`, 400)
		return
	}
	t, err := jwt.Parse(r.PostForm.Get("assertion"), func(*jwt.Token) (any, error) { return &s.saKey.PublicKey, nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(s.saEmail), jwt.WithAudience(s.fcm.URL+"/token"))
	if err != nil || !t.Valid {
		http.Error(w, `{"error":"invalid_grant"}`, 400)
		return
	}
	claims, _ := t.Claims.(jwt.MapClaims)
	if scope, _ := claims["scope"].(string); !strings.Contains(scope, "https://www.googleapis.com/auth/firebase.messaging") {
		http.Error(w, `{"error":"invalid_scope"}`, 400)
		return
	}
	access := "ya29.fake-" + newID()
	s.mu.Lock()
	s.access[access] = true
	s.tokens++
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"access_token":%q,"expires_in":3600,"token_type":"Bearer"}`, access)
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
