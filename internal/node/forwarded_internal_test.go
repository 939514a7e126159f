package node

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/httpapi"
)

// TestForwardedAssertionIsCheckedWhole: a request another member sent on
// is served as its client's (address, certificate) only when the
// assertion is signed with the cluster's key, names the request's method
// and path, and is less than a minute old; any other is refused with 401
// and never served as the member's own; a member's assertion refused for
// its time says so in the log (the members' clocks are off). A request
// without one is served as it came.
func TestForwardedAssertionIsCheckedWhole(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	var logged bytes.Buffer
	f := newForwarder("cluster secret", slog.New(slog.NewTextHandler(&logged, nil)))
	f.now = func() time.Time { return now }
	leaf := adminCert(t, "ops", now.Add(-time.Hour), now.Add(time.Hour))
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	clientCAs := func() *x509.CertPool { return roots } // the receiving node's client CA
	type seen struct {
		addr string
		cert *x509.Certificate
	}
	var got *seen
	h := f.accept(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = &seen{r.RemoteAddr, httpapi.ClientCert(r)}
		if r.Header.Get(forwardedHeader) != "" {
			t.Error("the assertion reached the handler")
		}
	}), func() *x509.CertPool { return clientCAs() })
	// in is the client's request as the first member saw it: from
	// 192.0.2.7 over TLS with the admin's verified certificate.
	in := httptest.NewRequest("POST", "https://a:7080/v1/users?x=1", nil)
	in.RemoteAddr = "192.0.2.7:5555"
	in.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}
	sent := func(signer *forwarder, method, target string, mod func(*http.Request)) *http.Request {
		out := httptest.NewRequest(method, target, nil)
		out.RemoteAddr = "127.0.0.1:40000" // the first member's address
		signer.assert(out, in)
		if mod != nil {
			mod(out)
		}
		return out
	}
	serve := func(r *http.Request) int {
		got = nil
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}

	if code := serve(sent(f, "POST", "http://b:7080/v1/users?x=1", nil)); code != 200 || got == nil {
		t.Fatalf("a good assertion: %d", code)
	}
	if got.addr != "192.0.2.7:5555" || got.cert == nil || !got.cert.Equal(leaf) {
		t.Fatalf("served as %q with certificate %v, want the client's address and certificate", got.addr, got.cert)
	}
	// A client without a certificate: the member's TLS connection, had it
	// one, is not taken for the client's.
	plain := *in
	plain.TLS = nil
	out := httptest.NewRequest("GET", "https://b:7080/v1/admins/me", nil)
	f.assert(out, &plain)
	out.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}
	if code := serve(out); code != 200 || got.cert != nil || got.addr != "192.0.2.7:5555" {
		t.Fatalf("a client without a certificate: %d, served with %v from %q", code, got.cert, got.addr)
	}
	// No assertion: as it came.
	r := httptest.NewRequest("GET", "http://b:7080/v1/admins/me", nil)
	r.RemoteAddr = "198.51.100.1:1"
	if code := serve(r); code != 200 || got.addr != "198.51.100.1:1" {
		t.Fatalf("no assertion: %d from %q", code, got.addr)
	}

	// Within the minute, either way.
	for _, skew := range []time.Duration{-forwardedMaxAge + time.Second, forwardedMaxAge - time.Second} {
		r := sent(f, "POST", "http://b:7080/v1/users?x=1", nil)
		f.now = func() time.Time { return now.Add(-skew) }
		code := serve(r)
		f.now = func() time.Time { return now }
		if code != 200 || got == nil || got.addr != "192.0.2.7:5555" {
			t.Errorf("an assertion %v off the clock: %d, want it served as the client's", skew, code)
		}
	}
	if logged.Len() != 0 {
		t.Fatalf("logged before any refusal: %s", logged.String())
	}

	other := newForwarder("another cluster", slog.New(slog.NewTextHandler(io.Discard, nil)))
	other.now = f.now
	for _, tc := range []struct {
		name string
		r    *http.Request
	}{
		{"signed with another cluster's secret", sent(other, "POST", "http://b:7080/v1/users?x=1", nil)},
		{"another method", sent(f, "POST", "http://b:7080/v1/users?x=1", func(r *http.Request) { r.Method = "DELETE" })},
		{"another path", sent(f, "POST", "http://b:7080/v1/users?x=1", func(r *http.Request) { r.URL.Path = "/v1/admins" })},
		{"another query", sent(f, "POST", "http://b:7080/v1/users?x=1", func(r *http.Request) { r.URL.RawQuery = "x=2" })},
		{"another client address", sent(f, "POST", "http://b:7080/v1/users?x=1", func(r *http.Request) {
			p, sig, _ := strings.Cut(r.Header.Get(forwardedHeader), ".")
			raw, _ := base64.RawURLEncoding.DecodeString(p)
			var a forwarded
			_ = json.Unmarshal(raw, &a)
			a.From = "203.0.113.9:1"
			raw, _ = json.Marshal(a)
			r.Header.Set(forwardedHeader, base64.RawURLEncoding.EncodeToString(raw)+"."+sig)
		})},
		{"no signature", sent(f, "POST", "http://b:7080/v1/users?x=1", func(r *http.Request) {
			p, _, _ := strings.Cut(r.Header.Get(forwardedHeader), ".")
			r.Header.Set(forwardedHeader, p)
		})},
		{"garbage", sent(f, "POST", "http://b:7080/v1/users?x=1", func(r *http.Request) { r.Header.Set(forwardedHeader, "%%%") })},
		{"empty", sent(f, "POST", "http://b:7080/v1/users?x=1", func(r *http.Request) { r.Header.Set(forwardedHeader, "") })},
		{"a second value beside a good one", sent(f, "POST", "http://b:7080/v1/users?x=1", func(r *http.Request) { r.Header.Add(forwardedHeader, "x.y") })},
		{"oversized", sent(f, "POST", "http://b:7080/v1/users?x=1", func(r *http.Request) {
			r.Header.Set(forwardedHeader, strings.Repeat("A", forwardedMaxLen+1))
		})},
	} {
		if code := serve(tc.r); code != http.StatusUnauthorized || got != nil {
			t.Errorf("%s: %d (served: %v), want 401 and not served", tc.name, code, got != nil)
		}
	}
	// Signed over a minute ago, or a minute ahead: refused, and logged
	// (only a member could sign it: its clock is off).
	for _, skew := range []time.Duration{-forwardedMaxAge - time.Second, forwardedMaxAge + time.Second} {
		logged.Reset()
		old := sent(f, "POST", "http://b:7080/v1/users?x=1", nil)
		f.now = func() time.Time { return now.Add(-skew) }
		code := serve(old)
		f.now = func() time.Time { return now }
		if code != http.StatusUnauthorized || got != nil {
			t.Errorf("an assertion %v off the clock: %d, want 401", skew, code)
		}
		if !strings.Contains(logged.String(), "clock") {
			t.Errorf("an assertion %v off the clock refused without a word in the log: %q", skew, logged.String())
		}
	}
	// The certificate is verified again, against the receiving node's
	// client CA as it is now: refused where that CA does not sign it (the
	// nodes' --tls-client-ca differ, or it changed), where the node has
	// none, and once the certificate expired.
	other2 := x509.NewCertPool()
	other2.AddCert(adminCert(t, "ops", now.Add(-time.Hour), now.Add(time.Hour)))
	expired := adminCert(t, "ops", now.Add(-2*time.Hour), now.Add(-time.Minute))
	withExpired := x509.NewCertPool()
	withExpired.AddCert(expired)
	for _, tc := range []struct {
		name string
		cas  func() *x509.CertPool
		cert *x509.Certificate
	}{
		{"another client CA", func() *x509.CertPool { return other2 }, leaf},
		{"no client CA", func() *x509.CertPool { return nil }, leaf},
		{"an expired certificate", func() *x509.CertPool { return withExpired }, expired},
	} {
		clientCAs = tc.cas
		in.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{tc.cert}}}
		code := serve(sent(f, "POST", "http://b:7080/v1/users?x=1", nil))
		if code != http.StatusUnauthorized || got != nil {
			t.Errorf("%s: %d (served: %v), want 401", tc.name, code, got != nil)
		}
	}
	clientCAs = func() *x509.CertPool { return roots }
	in.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}
	if code := serve(sent(f, "POST", "http://b:7080/v1/users?x=1", nil)); code != 200 || got == nil || !got.cert.Equal(leaf) {
		t.Fatalf("the certificate back in the client CA: %d", code)
	}

	// A node outside a cluster (no secret) neither signs nor checks.
	if newForwarder("", nil) != nil {
		t.Fatal("a forwarder without a cluster secret")
	}
}

// adminCert is a self-signed certificate naming admin name, valid from
// notBefore to notAfter (its own root in the receiving node's pool).
func adminCert(t *testing.T, name string, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("ding:admin/" + name)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: notBefore, NotAfter: notAfter, URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
