package client_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Config.PinSHA256: a server whose certificate's key has one of the pins
// is accepted; another (here, one the same CA signed) is refused with
// ErrPinMismatch, whose text names the server's pin; bad pins and pins
// without TLS are configuration errors.
func TestPinSHA256(t *testing.T) {
	ca := nodetest.NewCA(t)
	cert, key := ca.ServerFiles(t)
	otherCert, _ := ca.ServerFiles(t) // the same CA and name, another key
	n := nodetest.Start(t, node.Config{TLSCert: cert, TLSKey: key, TLSSocketAddr: "127.0.0.1:0"})
	nodetest.AddUsers(t, n, "bo")
	pin, otherPin := client.PinSHA256(readCert(t, cert)), client.PinSHA256(readCert(t, otherCert))
	dial := func(tlsCfg *tls.Config, pins ...string) error {
		c, err := client.Dial(context.Background(), client.Config{Addr: n.TLSSocketAddr(), TLS: tlsCfg, PinSHA256: pins,
			Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone", DialTimeout: 3 * time.Second})
		if err == nil {
			c.Close()
		}
		return err
	}
	roots := &tls.Config{RootCAs: ca.Pool}
	for _, c := range []struct {
		name string
		cfg  *tls.Config
		pins []string
		ok   bool
		want string // in the error
	}{
		{"its pin", roots, []string{pin}, true, ""},
		{"its pin in curl's form", roots, []string{"sha256//" + pin}, true, ""},
		{"one of two (a key rotation)", roots, []string{otherPin, pin}, true, ""},
		{"another key's pin", roots, []string{otherPin}, false, "sha256//" + pin},
		{"a pin does not replace the CA", &tls.Config{}, []string{pin}, false, "certificate"},
		{"a malformed pin", roots, []string{"abc"}, false, "base64"},
		{"a pin without TLS", nil, []string{pin}, false, "needs TLS"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := dial(c.cfg, c.pins...)
			if c.ok != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("%v, want ok %v / an error with %q", err, c.ok, c.want)
			}
			if c.name == "another key's pin" && !errors.Is(err, client.ErrPinMismatch) {
				t.Fatalf("%v is not ErrPinMismatch", err)
			}
		})
	}
}

// With a client certificate naming its device (dingd --tls-client-ca),
// Config.Token may be empty: the certificate authenticates the HELLO.
func TestClientCertificateInsteadOfToken(t *testing.T) {
	ca, clients := nodetest.NewCA(t), nodetest.NewCA(t)
	cert, key := ca.ServerFiles(t)
	n := nodetest.Start(t, node.Config{TLSCert: cert, TLSKey: key, TLSSocketAddr: "127.0.0.1:0", TLSClientCA: clients.File})
	nodetest.AddUsers(t, n, "ana", "bo")
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	ana, err := client.Dial(context.Background(), client.Config{Addr: n.TLSSocketAddr(), Device: "sensor",
		TLS: &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{clients.Client(t, time.Time{}, "", "ding:client/ana/sensor")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer ana.Close()
	res := send(t, ana, "no token here", "bo")
	if e := nextMessage(t, bo); e.Message.ID != res.ID || e.Message.From != "ana" {
		t.Fatalf("bo got %+v", e.Message)
	}
	if _, err := client.Dial(context.Background(), client.Config{Addr: n.TLSSocketAddr(), Device: "sensor",
		TLS: &tls.Config{RootCAs: ca.Pool}}); err == nil || !strings.Contains(err.Error(), "client certificate") {
		t.Fatalf("no token and no certificate: %v, want a configuration error", err)
	}
}
