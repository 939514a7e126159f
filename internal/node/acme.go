package node

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// ACMEDir is the directory in the data directory that holds the ACME
// account key and the certificates obtained (mode 0700), unless
// ACMEConfig.CacheDir names another.
const ACMEDir = "acme"

// ACMEConfig has a node get the certificate of its HTTP port (and of its
// TLS socket listener) from an ACME CA such as Let's Encrypt, for a single
// node with a public name, instead of certificate files. The CA checks the
// name with the tls-alpn-01 challenge, which the HTTP port answers: the CA
// must reach it on port 443 at that name. Certificates are obtained at the
// first handshake naming a domain, cached, and renewed 30 days before they
// expire, without a restart; established connections keep theirs.
type ACMEConfig struct {
	// Domains are the DNS names to get certificates for; empty means no
	// ACME. A TLS client must name one of them (SNI): a handshake for
	// another name, or for none (a bare IP address), fails.
	Domains []string
	// Email is the account's contact for the CA's notices (expiry,
	// problems); empty means none.
	Email string
	// DirectoryURL is the CA's ACME directory; empty means Let's
	// Encrypt's (autocert.DefaultACMEDirectory). Its HTTPS is verified
	// with the system's roots (SSL_CERT_FILE adds a private CA's).
	DirectoryURL string
	// CacheDir holds the account key and the certificates; empty means
	// DataDir/acme. It is created, and kept, mode 0700.
	CacheDir string
}

// acmeCerts gets and renews certificates through an ACME CA. Its renewal
// timers belong to autocert, which offers no way to stop them: they end
// with the process.
type acmeCerts struct {
	m   *autocert.Manager
	dir string // the cache directory
}

// newACME checks cfg and prepares an ACME client; nothing is written or
// fetched until prepare and the first handshake.
func newACME(cfg ACMEConfig, dataDir string) (*acmeCerts, error) {
	for _, d := range cfg.Domains {
		if err := checkACMEDomain(d); err != nil {
			return nil, err
		}
	}
	dir := cfg.CacheDir
	if dir == "" {
		dir = filepath.Join(dataDir, ACMEDir)
	}
	return &acmeCerts{dir: dir, m: &autocert.Manager{
		// Asking for ACME is accepting the CA's terms: every ACME client
		// (certbot --agree-tos, Caddy) has its user do so.
		Prompt:     autocert.AcceptTOS,
		Cache:      autocert.DirCache(dir),
		HostPolicy: autocert.HostWhitelist(cfg.Domains...),
		Email:      cfg.Email,
		Client:     &acme.Client{DirectoryURL: cfg.DirectoryURL},
	}}, nil
}

// checkACMEDomain refuses what no ACME CA issues for through autocert: an
// IP address, a wildcard, a name without a dot.
func checkACMEDomain(d string) error {
	switch {
	case net.ParseIP(d) != nil:
		return fmt.Errorf("node: acme: %q is an IP address; ACME needs the server's DNS name", d)
	case strings.Contains(d, "*"):
		return fmt.Errorf("node: acme: %q is a wildcard, which needs the dns-01 challenge; give each name", d)
	case !strings.Contains(strings.Trim(d, "."), ".") || strings.ContainsAny(d, " /:"):
		return fmt.Errorf("node: acme: %q is no public DNS name such as ding.example.com", d)
	}
	return nil
}

// prepare creates the cache directory (mode 0700, tightened if it exists):
// it holds the account's private key and the certificates' keys.
func (a *acmeCerts) prepare() error {
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return fmt.Errorf("node: acme cache: %w", err)
	}
	if err := os.Chmod(a.dir, 0o700); err != nil {
		return fmt.Errorf("node: acme cache: %w", err)
	}
	return nil
}

// tlsConfig is the listeners' TLS configuration: TLS 1.2 and up, HTTP/1.1
// (as with certificate files), and the ALPN protocol of the tls-alpn-01
// challenge, which autocert answers in GetCertificate.
func (a *acmeCerts) tlsConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: a.m.GetCertificate,
		NextProtos: []string{"http/1.1", acme.ALPNProto}}
}
