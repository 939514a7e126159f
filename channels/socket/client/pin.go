package client

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// ErrPinMismatch is returned (wrapped, by Dial and by the function
// VerifyPins returns) when the server's certificate verified but its
// public key matches none of the pins: another server, or a certificate
// rotated to a new key without the pins being updated. Not retryable
// until the pins or the server change.
var ErrPinMismatch = errors.New("client: server certificate matches no pinned key")

// PinSHA256 is the pin of a certificate: the standard base64 of the
// SHA-256 of its SubjectPublicKeyInfo (as HPKP and curl --pinnedpubkey
// take it). A pin survives a renewal that keeps the key. From a PEM file:
//
//	openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der |
//		openssl dgst -sha256 -binary | base64
func PinSHA256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// VerifyPins returns a tls.Config.VerifyConnection that accepts a
// connection only if the server's leaf certificate has the public key of
// one of pins (PinSHA256; a "sha256//" prefix is allowed). It runs after
// the usual verification of the chain and the name, which it does not
// replace. Its error names the server's pin, so that a new one can be
// checked out of band.
func VerifyPins(pins []string) (func(tls.ConnectionState) error, error) {
	if len(pins) == 0 {
		return nil, errors.New("client: no pin given")
	}
	var want [][]byte
	for _, p := range pins {
		b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(strings.TrimSpace(p), "sha256//"))
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("client: pin %q: want the base64 of a SHA-256 (44 characters)", p)
		}
		want = append(want, b)
	}
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%w: the server sent no certificate", ErrPinMismatch)
		}
		sum := sha256.Sum256(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
		for _, w := range want {
			if bytes.Equal(w, sum[:]) {
				return nil
			}
		}
		return fmt.Errorf("%w: the server's is sha256//%s", ErrPinMismatch, base64.StdEncoding.EncodeToString(sum[:]))
	}, nil
}

// pinnedTLS returns cfg with pins checked on every connection (after
// cfg's own VerifyConnection, if it has one).
func pinnedTLS(cfg *tls.Config, pins []string) (*tls.Config, error) {
	verify, err := VerifyPins(pins)
	if err != nil {
		return nil, err
	}
	cfg = cfg.Clone()
	if prev := cfg.VerifyConnection; prev != nil {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if err := prev(cs); err != nil {
				return err
			}
			return verify(cs)
		}
	} else {
		cfg.VerifyConnection = verify
	}
	return cfg, nil
}
