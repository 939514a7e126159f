package nodetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TLSFiles writes, in a temporary directory, a CA's certificate and a
// certificate for 127.0.0.1 it signed with its key, for a node's TLS
// (node.Config.TLSCert, TLSKey) and its clients (caFile).
func TLSFiles(tb testing.TB) (certFile, keyFile, caFile string) {
	tb.Helper()
	ca := NewCA(tb)
	certFile, keyFile = ca.ServerFiles(tb)
	return certFile, keyFile, ca.File
}

// CA is a certificate authority made for one test: it signs servers'
// certificates and clients' (mTLS).
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	Pool *x509.CertPool // Cert alone
	File string         // Cert, PEM
	dir  string
	next atomic.Int64 // the next serial number
}

// NewCA makes a CA valid from an hour ago for two hours, and writes its
// certificate in a temporary directory.
func NewCA(tb testing.TB) *CA {
	tb.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ding test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{Cert: cert, Key: key, Pool: x509.NewCertPool(), dir: tb.TempDir()}
	ca.Pool.AddCert(cert)
	ca.next.Store(1)
	ca.File = filepath.Join(ca.dir, "ca.pem")
	writePEM(tb, ca.File, "CERTIFICATE", der)
	return ca
}

// issue signs tmpl (its key, serial and validity filled in here unless
// set) and returns the certificate's DER and its key.
func (ca *CA) issue(tb testing.TB, tmpl *x509.Certificate) ([]byte, *ecdsa.PrivateKey) {
	tb.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl.SerialNumber = big.NewInt(ca.next.Add(1))
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	tmpl.NotAfter = time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		tb.Fatal(err)
	}
	return der, key
}

// files writes a certificate and its key as PEM files.
func (ca *CA) files(tb testing.TB, der []byte, key *ecdsa.PrivateKey) (certFile, keyFile string) {
	tb.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	certFile, keyFile = filepath.Join(ca.dir, c.SerialNumber.String()+".pem"), filepath.Join(ca.dir, c.SerialNumber.String()+".key")
	kb, _ := x509.MarshalECPrivateKey(key)
	writePEM(tb, certFile, "CERTIFICATE", der)
	writePEM(tb, keyFile, "EC PRIVATE KEY", kb)
	return certFile, keyFile
}

// ServerFiles writes a server certificate for 127.0.0.1 and its key.
func (ca *CA) ServerFiles(tb testing.TB) (certFile, keyFile string) {
	tb.Helper()
	der, key := ca.issue(tb, &x509.Certificate{Subject: pkix.Name{CommonName: "dingd"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return ca.files(tb, der, key)
}

// ClientFiles writes a client certificate (mTLS) and its key: common
// name cn, URI SANs uris (such as "ding:admin/hr" or
// "ding:client/ana/phone"), valid from notBefore (zero: an hour ago)
// until an hour from now.
func (ca *CA) ClientFiles(tb testing.TB, notBefore time.Time, cn string, uris ...string) (certFile, keyFile string) {
	tb.Helper()
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, NotBefore: notBefore,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			tb.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, key := ca.issue(tb, tmpl)
	return ca.files(tb, der, key)
}

// Client is ClientFiles's certificate, loaded for a tls.Config.
func (ca *CA) Client(tb testing.TB, notBefore time.Time, cn string, uris ...string) tls.Certificate {
	tb.Helper()
	c, err := tls.LoadX509KeyPair(ca.ClientFiles(tb, notBefore, cn, uris...))
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func writePEM(tb testing.TB, file, typ string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
}
