package node

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// certReloader serves a certificate and key from files and reloads them
// when asked (SIGHUP: Node.ReloadTLS) or when the files change (looked at
// no more than once a second, at a handshake); established connections
// keep the certificate they were made with.
type certReloader struct {
	certFile, keyFile string

	mu     sync.Mutex
	cert   *tls.Certificate // guarded by mu
	mtimes [2]time.Time     // guarded by mu
	looked time.Time        // guarded by mu
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) stat() ([2]time.Time, error) {
	var m [2]time.Time
	for i, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return m, err
		}
		m[i] = fi.ModTime()
	}
	return m, nil
}

// Reload reads the files again; on an error the old certificate stays.
func (r *certReloader) Reload() error {
	m, err := r.stat()
	if err != nil {
		return fmt.Errorf("node: tls: %w", err)
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("node: tls: load %s and %s: %w", r.certFile, r.keyFile, err)
	}
	r.mu.Lock()
	r.cert, r.mtimes, r.looked = &c, m, time.Now()
	r.mu.Unlock()
	return nil
}

// GetCertificate is tls.Config.GetCertificate.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	stale := time.Since(r.looked) > time.Second
	if stale {
		r.looked = time.Now()
	}
	cert, mtimes := r.cert, r.mtimes
	r.mu.Unlock()
	if stale {
		if m, err := r.stat(); err == nil && m != mtimes {
			if err := r.Reload(); err == nil {
				r.mu.Lock()
				cert = r.cert
				r.mu.Unlock()
			}
		}
	}
	return cert, nil
}

// tlsConfig is the listeners' TLS configuration: TLS 1.2 and up, Go's
// defaults otherwise.
func (r *certReloader) tlsConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
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
