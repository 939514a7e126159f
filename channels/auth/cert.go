package auth

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Client certificates (mTLS). When dingd has a client CA
// (--tls-client-ca), a certificate that CA signed may stand in for a
// token, but only if it names a Ding identity explicitly, in one URI
// subject alternative name of the scheme "ding" (opaque form, no "//"):
//
//	ding:admin/NAME          the admin NAME of the admin API (its role and scope)
//	ding:client/USER/DEVICE  the device DEVICE of the user USER, on the socket port
//
// The subject's common name is never read: a company CA issues CN=alice
// for many purposes, and none of them should open Ding. A certificate with
// no ding: URI names nobody; one with two is refused, whatever they say.
// Names cannot contain "/" (engine.ValidName), so the split is unambiguous.
//
// Like a token, a certificate counts as issued at its NotBefore: a
// revocation (of a user's tokens, of a device's, offboarding; an admin
// added again after a revocation) ends every certificate issued before it.

// URIScheme is the scheme of the URI SAN that names a certificate's identity.
const URIScheme = "ding"

// Sentinel errors of CertIdentityOf.
var (
	// ErrNoCertIdentity is returned for a certificate with no ding: URI SAN.
	ErrNoCertIdentity = errors.New("auth: client certificate names no Ding identity (URI SAN ding:admin/NAME or ding:client/USER/DEVICE)")
	// ErrBadCertIdentity is returned for a certificate whose ding: URI is
	// malformed, or that has more than one.
	ErrBadCertIdentity = errors.New("auth: client certificate's Ding identity is malformed")
)

// CertIdentity is what a client certificate says: an admin, or a user's
// device (exactly one of Admin and User is set).
type CertIdentity struct {
	Admin        string
	User, Device string
	// Issued is the certificate's NotBefore.
	Issued time.Time
}

// CertIdentityOf returns the identity c names. The caller has verified c's
// chain (crypto/tls with a client CA) and its validity period.
func CertIdentityOf(c *x509.Certificate) (CertIdentity, error) {
	var found []string
	for _, u := range c.URIs {
		if strings.EqualFold(u.Scheme, URIScheme) {
			if u.Opaque == "" || u.RawQuery != "" || u.Fragment != "" {
				return CertIdentity{}, fmt.Errorf("%w: want ding:admin/NAME or ding:client/USER/DEVICE", ErrBadCertIdentity)
			}
			found = append(found, u.Opaque)
		}
	}
	switch len(found) {
	case 0:
		return CertIdentity{}, ErrNoCertIdentity
	case 1:
	default:
		return CertIdentity{}, fmt.Errorf("%w: %d ding: URIs; want one", ErrBadCertIdentity, len(found))
	}
	parts := strings.Split(found[0], "/")
	for _, p := range parts {
		if p == "" {
			return CertIdentity{}, fmt.Errorf("%w: an empty name", ErrBadCertIdentity)
		}
	}
	switch {
	case parts[0] == "admin" && len(parts) == 2:
		return CertIdentity{Admin: parts[1], Issued: c.NotBefore}, nil
	case parts[0] == "client" && len(parts) == 3:
		return CertIdentity{User: parts[1], Device: parts[2], Issued: c.NotBefore}, nil
	}
	return CertIdentity{}, fmt.Errorf("%w: want ding:admin/NAME or ding:client/USER/DEVICE", ErrBadCertIdentity)
}
