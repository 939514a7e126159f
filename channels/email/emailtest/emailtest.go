// Package emailtest is a fake SMTP server on loopback for tests and local
// demos (cmd/fakesmtp): it records every message it accepts, can ask for
// AUTH PLAIN, offers STARTTLS or speaks implicit TLS with a certificate
// made at start-up, and can be told to answer the next messages with an
// SMTP error (a 451 to see a retry, a 550 to see a final failure). It is
// built on github.com/emersion/go-smtp, a maintained SMTP server library.
//
// Usage:
//
//	srv, err := emailtest.Start(emailtest.Config{Username: "ding", Password: "pw", STARTTLS: true})
//	if err != nil { ... }
//	defer srv.Close()
//	// point the e-mail notifier at srv.Addr(), trusting srv.RootCAs()
//	srv.FailNext(451, 1)               // the next message is refused, temporarily
//	msgs, err := srv.Wait(ctx, 1)      // blocks until one message was accepted
package emailtest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Config configures a Server. The zero value listens on 127.0.0.1:0,
// without TLS or authentication.
type Config struct {
	// Addr is the listen address; empty means 127.0.0.1:0. Only loopback
	// addresses are accepted: this server is a fake.
	Addr string
	// Username and Password, when set, make the server offer AUTH PLAIN
	// and refuse MAIL without it (530).
	Username, Password string
	// STARTTLS offers STARTTLS with a self-signed certificate for
	// 127.0.0.1 and localhost (RootCAs trusts it). With a Username, AUTH
	// is then only offered after STARTTLS.
	STARTTLS bool
	// ImplicitTLS speaks TLS from the first byte (SMTPS, as on port
	// 465) with the same certificate; it excludes STARTTLS.
	ImplicitTLS bool
}

// Message is a message the server accepted.
type Message struct {
	From string   // MAIL FROM
	To   []string // RCPT TO
	Data []byte   // the message as sent after DATA, headers and body
	// User is the authenticated user name ("" without AUTH); TLS is
	// whether the session was encrypted when the message was sent.
	User string
	TLS  bool
}

// Parse parses Data as an RFC 5322 message.
func (m Message) Parse() (*mail.Message, error) { return mail.ReadMessage(bytes.NewReader(m.Data)) }

// Text returns the message's decoded subject and its plain-text body
// (the text/plain part of a multipart message), transfer encoding
// undone.
func (m Message) Text() (subject, text string, err error) {
	pm, err := m.Parse()
	if err != nil {
		return "", "", err
	}
	subject, err = new(mime.WordDecoder).DecodeHeader(pm.Header.Get("Subject"))
	if err != nil {
		return "", "", err
	}
	mt, params, err := mime.ParseMediaType(pm.Header.Get("Content-Type"))
	if err != nil {
		return "", "", err
	}
	if !strings.HasPrefix(mt, "multipart/") {
		b, err := io.ReadAll(pm.Body)
		return subject, string(b), err
	}
	mr := multipart.NewReader(pm.Body, params["boundary"])
	for {
		p, err := mr.NextPart() // undoes quoted-printable
		if err != nil {
			return subject, "", fmt.Errorf("emailtest: no text/plain part: %w", err)
		}
		if strings.HasPrefix(p.Header.Get("Content-Type"), "text/plain") {
			b, err := io.ReadAll(p)
			return subject, string(b), err
		}
	}
}

// Server is a running fake SMTP server. Its methods are safe for
// concurrent use.
type Server struct {
	cfg   Config
	srv   *smtp.Server
	ln    net.Listener
	roots *x509.CertPool
	done  chan struct{} // closed when Serve returned

	mu      sync.Mutex
	msgs    []Message     // guarded by mu
	changed chan struct{} // guarded by mu; closed and replaced at each message
	fails   []int         // guarded by mu; SMTP codes for the next messages' DATA
	refused int           // guarded by mu; messages answered with an error
}

// Start listens and serves until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.STARTTLS && cfg.ImplicitTLS {
		return nil, errors.New("emailtest: STARTTLS and ImplicitTLS exclude each other")
	}
	addr := cfg.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("emailtest: address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("emailtest: address %q is not loopback", addr)
	}
	s := &Server{cfg: cfg, changed: make(chan struct{}), done: make(chan struct{})}
	s.srv = smtp.NewServer(smtp.BackendFunc(s.newSession))
	s.srv.Domain = "fakesmtp.localhost"
	s.srv.ReadTimeout, s.srv.WriteTimeout = 30*time.Second, 30*time.Second
	s.srv.MaxMessageBytes = 10 << 20
	s.srv.ErrorLog = discardLog{}
	var tlsCfg *tls.Config
	if cfg.STARTTLS || cfg.ImplicitTLS {
		cert, roots, err := selfSigned()
		if err != nil {
			return nil, err
		}
		s.roots = roots
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if cfg.STARTTLS {
		s.srv.TLSConfig = tlsCfg
	} else if !cfg.ImplicitTLS {
		s.srv.AllowInsecureAuth = true // AUTH PLAIN in the clear: loopback only
	}
	if s.ln, err = net.Listen("tcp", addr); err != nil {
		return nil, fmt.Errorf("emailtest: %w", err)
	}
	ln := s.ln
	if cfg.ImplicitTLS {
		ln = tls.NewListener(s.ln, tlsCfg)
	}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s, nil
}

// Addr is the address the server listens on (host:port).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// RootCAs trusts the server's certificate (nil without TLS).
func (s *Server) RootCAs() *x509.CertPool { return s.roots }

// Close stops the server and waits for it.
func (s *Server) Close() error {
	err := s.srv.Close()
	// Serve may not have registered the listener with the server yet, in
	// which case Close did not close it: close it here too.
	s.ln.Close()
	<-s.done
	if errors.Is(err, smtp.ErrServerClosed) {
		err = nil
	}
	return err
}

// FailNext makes the next n messages fail with SMTP code (4xx: temporary,
// 5xx: permanent), answered to their DATA.
func (s *Server) FailNext(code, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.fails = append(s.fails, code)
	}
}

// Messages returns the messages accepted so far, in order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// Refused returns how many messages were answered with an error (by
// FailNext).
func (s *Server) Refused() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// Wait blocks until the server accepted at least n messages, or ctx
// ends, and returns the messages accepted.
func (s *Server) Wait(ctx context.Context, n int) ([]Message, error) {
	return s.WaitFunc(ctx, func(m []Message) bool { return len(m) >= n })
}

// WaitFunc blocks until ok holds of the messages accepted, or ctx ends.
func (s *Server) WaitFunc(ctx context.Context, ok func([]Message) bool) ([]Message, error) {
	for {
		s.mu.Lock()
		msgs, ch := slices.Clone(s.msgs), s.changed
		s.mu.Unlock()
		if ok(msgs) {
			return msgs, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return msgs, fmt.Errorf("emailtest: %d messages accepted: %w", len(msgs), ctx.Err())
		}
	}
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: s, c: c}, nil
}

type session struct {
	s    *Server
	c    *smtp.Conn
	user string
	from string
	to   []string
}

var _ smtp.AuthSession = (*session)(nil)

func (x *session) AuthMechanisms() []string {
	if x.s.cfg.Username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (x *session) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain || x.s.cfg.Username == "" {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if username != x.s.cfg.Username || password != x.s.cfg.Password {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "authentication failed"}
		}
		x.user = username
		return nil
	}), nil
}

func (x *session) Mail(from string, _ *smtp.MailOptions) error {
	if x.s.cfg.Username != "" && x.user == "" {
		return smtp.ErrAuthRequired
	}
	x.from = from
	return nil
}

func (x *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	x.to = append(x.to, to)
	return nil
}

func (x *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	_, tlsOn := x.c.TLSConnectionState()
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.fails) > 0 {
		code := s.fails[0]
		s.fails = s.fails[1:]
		s.refused++
		return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{code / 100, 0, 0}, Message: "refused as told (emailtest.FailNext)"}
	}
	s.msgs = append(s.msgs, Message{From: x.from, To: slices.Clone(x.to), Data: b, User: x.user, TLS: tlsOn})
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

func (x *session) Reset() { x.from, x.to = "", nil }

func (x *session) Logout() error { return nil }

// selfSigned makes a certificate for 127.0.0.1, ::1 and localhost, valid
// for a day, and a pool that trusts it.
func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: "emailtest"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}

type discardLog struct{}

func (discardLog) Printf(string, ...any) {}
func (discardLog) Println(...any)        {}
