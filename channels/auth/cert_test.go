package auth_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/auth"
)

// TestCertIdentity: only one ding: URI SAN of the two documented forms
// names an identity; the common name never does.
func TestCertIdentity(t *testing.T) {
	nb := time.Unix(1_800_000_000, 0)
	cases := []struct {
		name string
		cn   string
		uris []string
		want auth.CertIdentity
		err  error
	}{
		{"admin", "", []string{"ding:admin/hr-sync"}, auth.CertIdentity{Admin: "hr-sync", Issued: nb}, nil},
		{"client", "", []string{"ding:client/ana/phone"}, auth.CertIdentity{User: "ana", Device: "phone", Issued: nb}, nil},
		{"other URIs are ignored", "", []string{"spiffe://corp/ns/x", "ding:client/ana/phone"}, auth.CertIdentity{User: "ana", Device: "phone", Issued: nb}, nil},
		{"a common name alone names nobody", "owner", nil, auth.CertIdentity{}, auth.ErrNoCertIdentity},
		{"a common name that looks like an identity", "ding:admin/owner", nil, auth.CertIdentity{}, auth.ErrNoCertIdentity},
		{"a foreign URI names nobody", "", []string{"https://ding.example.com/admin/owner"}, auth.CertIdentity{}, auth.ErrNoCertIdentity},
		{"two identities", "", []string{"ding:admin/a", "ding:admin/b"}, auth.CertIdentity{}, auth.ErrBadCertIdentity},
		{"hierarchical form", "", []string{"ding://admin/owner"}, auth.CertIdentity{}, auth.ErrBadCertIdentity},
		{"unknown kind", "", []string{"ding:root/owner"}, auth.CertIdentity{}, auth.ErrBadCertIdentity},
		{"admin with a device", "", []string{"ding:admin/owner/phone"}, auth.CertIdentity{}, auth.ErrBadCertIdentity},
		{"client without a device", "", []string{"ding:client/ana"}, auth.CertIdentity{}, auth.ErrBadCertIdentity},
		{"empty name", "", []string{"ding:client//phone"}, auth.CertIdentity{}, auth.ErrBadCertIdentity},
		{"query", "", []string{"ding:admin/owner?x=1"}, auth.CertIdentity{}, auth.ErrBadCertIdentity},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cert := &x509.Certificate{Subject: pkix.Name{CommonName: c.cn}, NotBefore: nb}
			for _, s := range c.uris {
				u, err := url.Parse(s)
				if err != nil {
					t.Fatal(err)
				}
				cert.URIs = append(cert.URIs, u)
			}
			got, err := auth.CertIdentityOf(cert)
			if !errors.Is(err, c.err) || (c.err != nil && err == nil) {
				t.Fatalf("err %v, want %v", err, c.err)
			}
			if got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}
