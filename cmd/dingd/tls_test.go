package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ding test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert, key, pool}
}

// issue writes a certificate for 127.0.0.1 with serial into certFile and
// keyFile.
func (ca *testCA) issue(t *testing.T, serial int64, certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "dingd"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	// Key first, then the certificate: a reload between the two writes
	// finds a pair that does not match and keeps the old one.
	writeFile(t, keyFile+".tmp", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})))
	writeFile(t, certFile+".tmp", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	for _, f := range []string{keyFile, certFile} {
		if err := os.Rename(f+".tmp", f); err != nil {
			t.Fatal(err)
		}
	}
}

// dingd with --tls-cert serves HTTPS on its HTTP port and, with
// --tls-listen, the socket protocol over TLS: the Go client works over
// it, verifying the server; a client with another CA is refused, plain
// HTTP gets no API, a plain HELLO on the TLS port gets no WELCOME; after
// SIGHUP new connections get the new certificate while an established
// one keeps working.
func TestTLSEverywhere(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca := newTestCA(t)
	ca.issue(t, 100, certFile, keyFile)
	p := newProc(t, t.TempDir())
	tlsSock := nodetest.FreeAddr(t)
	p.launch(t, p.args("--tls-cert", certFile, "--tls-key", keyFile, "--tls-listen", tlsSock)...)
	https := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool}}}
	nodetest.WaitFor(t, "dingd over HTTPS", 20*time.Second, func() bool {
		resp, err := https.Get("https://" + p.http + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	tok, err := os.ReadFile(filepath.Join(p.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"ana", "bo"} {
		req, _ := http.NewRequest("POST", "https://"+p.http+"/v1/users", strings.NewReader(`{"id":"`+u+`","name":"`+u+`"}`))
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		resp, err := https.Do(req)
		if err != nil || resp.StatusCode != 201 {
			t.Fatalf("create %s over HTTPS: %v %v", u, resp, err)
		}
		resp.Body.Close()
	}
	// Plain HTTP to the TLS port gets no API (Go's TLS server answers 400).
	if resp, err := http.Get("http://" + p.http + "/v1/users"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("plain HTTP to the HTTPS port: %d", resp.StatusCode)
		}
	}
	// Another CA: refused.
	other := newTestCA(t)
	if _, err := (&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: other.pool}}}).Get("https://" + p.http + "/healthz"); err == nil {
		t.Fatal("a client trusting another CA was served")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(user string, roots *x509.CertPool) (*client.Client, error) {
		return client.Dial(ctx, client.Config{Addr: tlsSock, Token: p.token(t, user, "phone"), Device: "phone",
			TLS: &tls.Config{RootCAs: roots}, DialTimeout: 3 * time.Second})
	}
	if _, err := dial("ana", other.pool); err == nil {
		t.Fatal("the Go client trusting another CA connected")
	}
	ana, err := dial("ana", ca.pool)
	if err != nil {
		t.Fatal(err)
	}
	defer ana.Close()
	bo, err := dial("bo", ca.pool)
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	res, err := ana.Send(ctx, []string{"bo"}, []byte("over TLS"))
	if err != nil {
		t.Fatal(err)
	}
	if e := nextMessageOf(t, bo); e.Message.ID != res.ID || string(e.Message.Body) != "over TLS" {
		t.Fatalf("bo got %+v", e.Message)
	}
	// A plain HELLO on the TLS port: no WELCOME.
	raw, err := net.DialTimeout("tcp", tlsSock, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	raw.Write(wire.Encode(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: p.token(t, "ana", "raw"), Device: "raw"}))
	raw.SetReadDeadline(time.Now().Add(3 * time.Second))
	var hdr [wire.HeaderLen]byte
	if _, err := raw.Read(hdr[:]); err == nil {
		if _, ft, err := wire.ParseHeader(hdr[:], 1<<20); err == nil && ft == pb.FrameType_WELCOME {
			t.Fatal("a plain HELLO on the TLS port was welcomed")
		}
	}
	raw.Close()

	// A new certificate, SIGHUP: new connections see it; ana's stays up.
	ca.issue(t, 200, certFile, keyFile)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	nodetest.WaitFor(t, "the new certificate", 10*time.Second, func() bool {
		c, err := tls.Dial("tcp", tlsSock, &tls.Config{RootCAs: ca.pool})
		if err != nil {
			return false
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64() == 200
	})
	if _, err := ana.Send(ctx, []string{"bo"}, []byte("after the reload")); err != nil {
		t.Fatalf("the established connection after the reload: %v", err)
	}
	if n := ana.Stats().Connects; n != 1 {
		t.Fatalf("ana reconnected across the reload (%d connects)", n)
	}
}

func nextMessageOf(t *testing.T, c *client.Client) client.Entry {
	t.Helper()
	for {
		select {
		case e, ok := <-c.Entries():
			if !ok {
				t.Fatalf("client stopped: %v", c.Err())
			}
			if e.Message != nil {
				return e
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no message within 10s")
		}
	}
}
