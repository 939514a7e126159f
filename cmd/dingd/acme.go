package main

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/dingmq/ding/internal/node"
)

// validateACME checks the acme-* settings: ACME excludes certificate
// files, client certificates (mTLS) and cluster mode, and its other
// settings need a domain.
func (c *config) validateACME() error {
	if c.ACMEDomain == "" {
		for _, s := range []struct{ name, v string }{{"acme-email", c.ACMEEmail}, {"acme-directory", c.ACMEDirectory}} {
			if s.v != "" {
				return c.mistake(fmt.Sprintf("%s (from %s) needs acme-domain, the name to get a certificate for", s.name, c.from[s.name]), s.name)
			}
		}
		return nil
	}
	for _, f := range []struct{ name, v string }{{"tls-cert", c.TLSCert}, {"tls-key", c.TLSKey}} {
		if f.v != "" {
			return c.mistake(fmt.Sprintf("acme-domain (from %s) and %s (from %s) exclude each other: ACME gets the certificate itself, %s serves one from a file; give one of them",
				c.from["acme-domain"], f.name, c.from[f.name], f.name), "acme-domain", f.name)
		}
	}
	if c.TLSClientCA != "" {
		return c.mistake(fmt.Sprintf("acme-domain (from %s) and tls-client-ca (from %s): client certificates (mTLS) work with tls-cert and tls-key only, for now",
			c.from["acme-domain"], c.from["tls-client-ca"]), "acme-domain", "tls-client-ca")
	}
	if c.Cluster != "" {
		return c.mistake(fmt.Sprintf("acme-domain (from %s) is for a single node; cluster members (cluster from %s) use tls-cert and tls-key",
			c.from["acme-domain"], c.from["cluster"]), "acme-domain", "cluster")
	}
	if c.ACMEDirectory != "" {
		if u, err := url.Parse(c.ACMEDirectory); err != nil || u.Scheme != "https" || u.Host == "" {
			return c.invalid("acme-directory", fmt.Sprintf("%q", c.ACMEDirectory), "want the CA's https:// directory URL")
		}
	}
	return nil
}

// mistake is an error with msg: a usageError if one of the settings
// named came from a flag.
func (c *config) mistake(msg string, names ...string) error {
	for _, n := range names {
		if c.from[n] == fromFlag {
			return usageError(msg)
		}
	}
	return errors.New(msg)
}

// acme is the node's ACME configuration: no domains without acme-domain.
func (c *config) acme() node.ACMEConfig {
	var domains []string
	for _, d := range strings.Split(c.ACMEDomain, ",") {
		if d = strings.TrimSpace(d); d != "" {
			domains = append(domains, d)
		}
	}
	return node.ACMEConfig{Domains: domains, Email: c.ACMEEmail, DirectoryURL: c.ACMEDirectory}
}
