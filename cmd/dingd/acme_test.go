package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pebbleca "github.com/letsencrypt/pebble/v2/ca"
	pebbledb "github.com/letsencrypt/pebble/v2/db"
	pebbleva "github.com/letsencrypt/pebble/v2/va"
	pebblewfe "github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// acmeName is the public name the ACME tests get certificates for; the
// test's DNS server resolves it to 127.0.0.1.
const acmeName = "ding.test"

// startPebble runs Pebble, Let's Encrypt's ACME test server, in-process on
// loopback, validating for real: its tls-alpn-01 challenges connect to
// 127.0.0.1:tlsPort (dingd's HTTP port), names resolved by a DNS server
// of the test's that answers 127.0.0.1 for every name. It returns the
// directory URL, the PEM file of the certificate Pebble's HTTPS serves
// (for dingd's SSL_CERT_FILE), and the pool of Pebble's root.
func startPebble(t *testing.T, tlsPort int) (dirURL, httpsCA string, root *x509.CertPool) {
	t.Helper()
	t.Setenv("PEBBLE_VA_NOSLEEP", "1") // read by pebbleva.New: no random wait before validating
	logger := log.New(testLogWriter{t}, "pebble ", 0)
	db := pebbledb.NewMemoryStore()
	ca := pebbleca.New(logger, db, "", "ecdsa", 0, 1, map[string]pebbleca.Profile{"default": {Description: "default"}})
	va := pebbleva.New(logger, 0, tlsPort, false, startLoopbackDNS(t), db)
	wfe := pebblewfe.New(logger, db, va, ca, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	srv := httptest.NewUnstartedServer(wfe.Handler())
	srv.Config.ErrorLog = logger
	srv.StartTLS()
	t.Cleanup(srv.Close)
	httpsCA = filepath.Join(t.TempDir(), "pebble-https.pem")
	writeFile(t, httpsCA, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))
	root = x509.NewCertPool()
	root.AddCert(ca.GetRootCert(0).Cert)
	return srv.URL + pebblewfe.DirectoryPath, httpsCA, root
}

// testLogWriter sends a logger's lines to t.Log.
type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startLoopbackDNS serves DNS over TCP (as Pebble asks) on loopback,
// answering every A question with 127.0.0.1 and every other with no
// records, and returns its address.
func startLoopbackDNS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, qu := range q.Question {
			if qu.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qu.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A: net.IPv4(127, 0, 0, 1)})
			}
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		srv.Shutdown()
		<-done
	})
	return ln.Addr().String()
}

// acmeClient is an HTTPS client that trusts only roots and reaches
// acmeName at addr.
func acmeClient(roots *x509.CertPool, addr string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
}

// dingd --acme-domain gets its HTTP port's certificate from an ACME CA
// (Pebble, validating the tls-alpn-01 challenge against dingd's HTTP port
// on loopback): an HTTPS client trusting only the CA's root is served a
// chain for the name, the admin API works over it, and so does the TLS
// socket listener (the Go client); the account and certificate are kept
// in DATA/acme (0700), and a restart serves the cached certificate
// without asking the CA again.
func TestACME(t *testing.T) {
	p := newProc(t, t.TempDir())
	_, port, _ := net.SplitHostPort(p.http)
	tlsPort, _ := strconv.Atoi(port)
	dirURL, httpsCA, root := startPebble(t, tlsPort)
	tlsSock := nodetest.FreeAddr(t)
	p.env = []string{"SSL_CERT_FILE=" + httpsCA} // dingd trusts Pebble's HTTPS
	args := p.args("--acme-domain", acmeName, "--acme-email", "ops@example.com", "--acme-directory", dirURL, "--tls-listen", tlsSock)
	p.launch(t, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dingd's stderr:\n%s", p.stderr)
		}
	})
	https := acmeClient(root, p.http)
	base := "https://" + net.JoinHostPort(acmeName, port)
	var leaf *x509.Certificate
	nodetest.WaitFor(t, "dingd over HTTPS with a certificate from the ACME CA", 60*time.Second, func() bool {
		resp, err := https.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		leaf = resp.TLS.PeerCertificates[0]
		return resp.StatusCode == 200
	})
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != acmeName {
		t.Fatalf("the certificate names %v, want [%s]", leaf.DNSNames, acmeName)
	}
	tok, err := os.ReadFile(filepath.Join(p.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"ana", "bo"} {
		req, _ := http.NewRequest("POST", base+"/v1/users", strings.NewReader(`{"id":"`+u+`","name":"`+u+`"}`))
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		resp, err := https.Do(req)
		if err != nil || resp.StatusCode != 201 {
			t.Fatalf("create %s over HTTPS: %v %v", u, resp, err)
		}
		resp.Body.Close()
	}
	// The socket protocol over TLS, with the same certificate.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(user string) *client.Client {
		t.Helper()
		c, err := client.Dial(ctx, client.Config{Addr: tlsSock, Token: p.token(t, user, "phone"), Device: "phone",
			TLS: &tls.Config{RootCAs: root, ServerName: acmeName}, DialTimeout: 3 * time.Second})
		if err != nil {
			t.Fatalf("%s over the TLS socket: %v", user, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ana, bo := dial("ana"), dial("bo")
	res, err := ana.Send(ctx, []string{"bo"}, []byte("over ACME's certificate"))
	if err != nil {
		t.Fatal(err)
	}
	if e := nextMessageOf(t, bo); e.Message.ID != res.ID {
		t.Fatalf("bo got %+v", e.Message)
	}
	// A client naming no name (SNI) or another gets no certificate.
	if _, err := tls.Dial("tcp", p.http, &tls.Config{InsecureSkipVerify: true}); err == nil {
		t.Fatal("a handshake without a server name got a certificate")
	}
	if _, err := tls.Dial("tcp", p.http, &tls.Config{InsecureSkipVerify: true, ServerName: "other.test"}); err == nil {
		t.Fatal("a handshake for another name got a certificate")
	}
	fi, err := os.Stat(filepath.Join(p.data, "acme"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("DATA/acme has mode %v, want 0700", fi.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(p.data, "acme", acmeName)); err != nil {
		t.Fatalf("the certificate is not cached: %v", err)
	}

	// A restart serves the cached certificate.
	ana.Close()
	bo.Close()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 20*time.Second); err != nil {
		t.Fatalf("dingd's stop: %v", err)
	}
	p.launch(t, args...)
	https = acmeClient(root, p.http)
	nodetest.WaitFor(t, "dingd over HTTPS after a restart", 30*time.Second, func() bool {
		resp, err := https.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		if s := resp.TLS.PeerCertificates[0].SerialNumber; s.Cmp(leaf.SerialNumber) != 0 {
			t.Fatalf("after a restart the certificate is %v, want the cached %v", s, leaf.SerialNumber)
		}
		return resp.StatusCode == 200
	})
}

// The acme-* settings: ACME excludes certificate files and cluster mode,
// each other acme-* setting needs acme-domain; one line each, exit status
// 2 when a flag is to blame.
func TestACMESettings(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"flags acme and tls-cert", []string{"--acme-domain", "ding.example.com", "--tls-cert", "c.pem", "--tls-key", "k.pem"}, nil,
			`^acme-domain \(from flag\) and tls-cert \(from flag\) exclude each other: ACME gets the certificate itself`},
		{"env acme, flag tls-key", []string{"--tls-key", "k.pem"}, map[string]string{"DING_ACME_DOMAIN": "ding.example.com"},
			`^acme-domain \(from env\) and tls-key \(from flag\) exclude each other`},
		{"env acme and tls-cert", nil, map[string]string{"DING_ACME_DOMAIN": "ding.example.com", "DING_TLS_CERT": "c.pem", "DING_TLS_KEY": "k.pem"},
			`^acme-domain \(from env\) and tls-cert \(from env\) exclude each other`},
		{"flag acme, file tls-client-ca", []string{"--acme-domain", "ding.example.com", "--config", tempFile(t, "dingd.toml", "tls-client-ca = \"ca.pem\"\n")}, nil,
			`^acme-domain \(from flag\) and tls-client-ca \(from file\): client certificates \(mTLS\) work with tls-cert and tls-key only`},
		{"flag email without a domain", []string{"--acme-email", "ops@example.com"}, nil,
			`^acme-email \(from flag\) needs acme-domain`},
		{"env directory without a domain", nil, map[string]string{"DING_ACME_DIRECTORY": "https://ca.example.com/dir"},
			`^acme-directory \(from env\) needs acme-domain`},
		{"flag acme in a cluster", []string{"--acme-domain", "ding.example.com", "--cluster", "redis://127.0.0.1:1", "--node-id", "a",
			"--advertise", "http://127.0.0.1:2", "--cluster-secret", "s"}, nil, `^acme-domain \(from flag\) is for a single node`},
		{"flag plain-HTTP directory", []string{"--acme-domain", "ding.example.com", "--acme-directory", "http://ca.example.com/dir"}, nil,
			`^acme-directory "http://ca.example.com/dir" \(from flag\): want the CA's https:// directory URL$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(tc.args, fakeEnv(tc.env))
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), "\n") || !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Fatalf("error %q does not match %s", err, tc.want)
			}
			want := 1
			if strings.Contains(err.Error(), "(from flag)") {
				want = 2
			}
			if got := exitCode(err); got != want {
				t.Fatalf("exit status %d for %q, want %d", got, err, want)
			}
		})
	}
	c, err := load([]string{"--acme-domain", " ding.example.com, chat.example.com "}, fakeEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.acme().Domains; strings.Join(got, "|") != "ding.example.com|chat.example.com" {
		t.Fatalf("domains %q", got)
	}
	// The real binary: a name ACME cannot have stops the start with one
	// line, before anything is written.
	data := t.TempDir()
	_, stderr, code := runDingd(t, nil, "--data", data, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--acme-domain", "10.0.0.1")
	if code != 1 || !strings.Contains(stderr, `node: acme: "10.0.0.1" is an IP address`) {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if ents, _ := os.ReadDir(data); len(ents) != 0 {
		t.Fatalf("the failed start left %v in the data dir", ents)
	}
}

// --print-config prints the acme-* settings and its output loads back.
func TestACMEPrintConfigRoundTrip(t *testing.T) {
	c, err := load([]string{"--acme-domain", "ding.example.com,chat.example.com", "--acme-email", "ops@example.com",
		"--acme-directory", "https://ca.example.com/acme/directory", "--tls-listen", ":7443"}, fakeEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := printConfig(&out, c); err != nil {
		t.Fatal(err)
	}
	c2, err := load([]string{"--config", tempFile(t, "printed.toml", out.String())}, fakeEnv(nil))
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, name := range []string{"acme-domain", "acme-email", "acme-directory", "tls-listen"} {
		s := lookupSetting(name)
		if a, b := s.format(c), s.format(c2); a != b || a == s.def || c2.from[name] != fromFile {
			t.Errorf("%s: printed %q, loaded back %q from %s", name, a, b, c2.from[name])
		}
	}
	// Let's Encrypt's directory is the default: printed, and read back as the zero.
	c, _ = load(nil, fakeEnv(nil))
	out.Reset()
	printConfig(&out, c)
	if !strings.Contains(out.String(), `acme-directory = "https://acme-v02.api.letsencrypt.org/directory"  # default`) {
		t.Errorf("--print-config without ACME:\n%s", out.String())
	}
}
