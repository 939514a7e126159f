package node

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// certReloader serves a certificate and key from files, and the pool of
// a client CA (mTLS) when it has one, and reloads them when asked
// (SIGHUP: Node.ReloadTLS) or when the files change (looked at no more
// than once a second, at a handshake); established connections keep the
// certificate they were made with.
type certReloader struct {
	certFile, keyFile string
	clientCAFile      string // "": no client certificates asked for

	mu        sync.Mutex
	cert      *tls.Certificate // guarded by mu
	clientCAs *x509.CertPool   // guarded by mu; nil without clientCAFile
	mtimes    [3]time.Time     // guarded by mu
	looked    time.Time        // guarded by mu
}

func newCertReloader(certFile, keyFile, clientCAFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, clientCAFile: clientCAFile}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) stat() ([3]time.Time, error) {
	var m [3]time.Time
	for i, f := range []string{r.certFile, r.keyFile, r.clientCAFile} {
		if f == "" {
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			return m, err
		}
		m[i] = fi.ModTime()
	}
	return m, nil
}

// Reload reads the files again; on an error the old certificate (and
// client CA) stays.
func (r *certReloader) Reload() error {
	m, err := r.stat()
	if err != nil {
		return fmt.Errorf("node: tls: %w", err)
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("node: tls: load %s and %s: %w", r.certFile, r.keyFile, err)
	}
	var pool *x509.CertPool
	if r.clientCAFile != "" {
		if pool, err = loadCertPool(r.clientCAFile); err != nil {
			return fmt.Errorf("node: tls: client CA: %w", err)
		}
	}
	r.mu.Lock()
	r.cert, r.clientCAs, r.mtimes, r.looked = &c, pool, m, time.Now()
	r.mu.Unlock()
	return nil
}

// loadCertPool reads a PEM file of one or more CA certificates.
func loadCertPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// current returns the certificate and client CA pool, reloading them
// first if the files changed.
func (r *certReloader) current() (*tls.Certificate, *x509.CertPool) {
	r.mu.Lock()
	stale := time.Since(r.looked) > time.Second
	if stale {
		r.looked = time.Now()
	}
	mtimes := r.mtimes
	r.mu.Unlock()
	if stale {
		if m, err := r.stat(); err == nil && m != mtimes {
			_ = r.Reload() // on an error the old ones stay; SIGHUP reports it
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cert, r.clientCAs
}

// clientPool is the client CA pool as it is now (current); nil without
// one, and for a nil r (no certificate files).
func (r *certReloader) clientPool() *x509.CertPool {
	if r == nil {
		return nil
	}
	_, pool := r.current()
	return pool
}

// GetCertificate is tls.Config.GetCertificate.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	cert, _ := r.current()
	return cert, nil
}

// tlsConfig is the listeners' TLS configuration: TLS 1.2 and up, Go's
// defaults otherwise. With a client CA, a client is asked for a
// certificate and, if it gives one, the handshake fails unless that CA
// signed it (tls.VerifyClientCertIfGiven); a client that gives none is
// served as before and authenticates with its token. Requiring one is
// not offered: the HTTP port also serves Twilio's webhooks, probes and
// browsers, none of which hold a client certificate. A session resumed
// from a ticket issued before a reload is checked against the CA as it
// is now by crypto/tls itself (TestClientCAReloadEndsResumedSessions).
func (r *certReloader) tlsConfig() *tls.Config {
	if r.clientCAFile == "" {
		return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, pool := r.current()
		return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*cert},
			ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}, nil
	}
	return cfg
}

// publicPlain reports whether a listener on addr (as bound) is reachable
// beyond this machine: not a loopback address.
func publicPlain(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return !ok || !tcp.IP.IsLoopback()
}

// registerPlaintext exports ding_plaintext_listeners{listener} (1 for a
// listener without TLS on an address other machines reach) and warns at
// start for each.
func registerPlaintext(reg prometheus.Registerer, log *slog.Logger, listeners map[string]bool) error {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ding_plaintext_listeners",
		Help: "1 for a listener without TLS on an address beyond loopback: tokens and messages cross the network readable."}, []string{"listener"})
	for name, plain := range listeners {
		v := 0.0
		if plain {
			v = 1
			log.Warn("PLAINTEXT: this listener has no TLS and is reachable from other machines; tokens and messages cross the network readable (dingd --tls-cert, --tls-listen)", "listener", name)
		}
		g.WithLabelValues(name).Set(v)
	}
	return reg.Register(g)
}
