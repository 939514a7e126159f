package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TLSFiles are PEM files for TLS on loopback: a CA, a certificate it
// signed for 127.0.0.1 (a server's), and another (a client's).
type TLSFiles struct {
	CA, Cert, Key, ClientCert, ClientKey string
}

// cliFlags are redis-cli's flags to reach a server of f's over TLS.
func (f TLSFiles) cliFlags() []string {
	return []string{"--tls", "--cacert", f.CA, "--cert", f.ClientCert, "--key", f.ClientKey}
}

// NewTLSFiles writes a fresh CA and two certificates it signed into a
// temporary directory.
func NewTLSFiles(t testing.TB) TLSFiles {
	t.Helper()
	dir := t.TempDir()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "redistest CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	f := TLSFiles{CA: filepath.Join(dir, "ca.pem")}
	writePEM(t, f.CA, "CERTIFICATE", caDER)
	leaf := func(serial int64, name string, usage ...x509.ExtKeyUsage) (string, string) {
		k := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage,
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		cert, key := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, cert, "CERTIFICATE", der)
		writePEM(t, key, "EC PRIVATE KEY", kder)
		return cert, key
	}
	// The server's certificate is a client's too: a replica presents it
	// to its master, a sentinel to the servers.
	f.Cert, f.Key = leaf(2, "server", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	f.ClientCert, f.ClientKey = leaf(3, "client", x509.ExtKeyUsageClientAuth)
	return f
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// StartTLS runs a redis-server that speaks TLS only (no plain port) on a
// free loopback port, with f's server certificate, asking clients for a
// certificate f.CA signed (Redis's default, tls-auth-clients yes).
func StartTLS(t testing.TB, f TLSFiles, args ...string) *Server {
	t.Helper()
	port := freePort(t)
	all := append([]string{"--port", "0", "--tls-port", strconv.Itoa(port),
		"--tls-cert-file", f.Cert, "--tls-key-file", f.Key, "--tls-ca-cert-file", f.CA}, args...)
	// Ready once it accepts: PING needs TLS, which this package does
	// not speak to it (the tests' clients do).
	return start(t, port, dialable, all...)
}

// dialable is a readiness check for a server PING cannot reach (TLS):
// it accepts a connection.
func dialable(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err
}

// Sentinel is a Redis Sentinel deployment: a master, its replicas, and
// sentinels watching them under one master name.
type Sentinel struct {
	Master    *Server
	Replicas  []*Server
	Sentinels []*Server
	Name      string
	cli       func(addr string, args ...string) string // redis-cli to a sentinel
}

// SentinelConfig is a Sentinel deployment for StartSentinel.
type SentinelConfig struct {
	// Name is the master's name the sentinels watch it under.
	Name string
	// Password is the master's and replicas' (requirepass, and
	// masterauth for replication); SentinelPassword, if not empty, the
	// sentinels' own (their requirepass).
	Password, SentinelPassword string
	// Replicas and Sentinels are how many of each; the quorum is a
	// majority of the sentinels.
	Replicas, Sentinels int
	// DownAfter is how long after a master stops answering it is deemed
	// down and a replica promoted in its place.
	DownAfter time.Duration
	// TLS, if set, makes every server and sentinel speak TLS only
	// (replication and the sentinels' own links too), asking clients
	// for a certificate TLS.CA signed.
	TLS *TLSFiles
	// ServerArgs are more arguments for the master and replicas (an ACL
	// user, say).
	ServerArgs []string
}

// StartSentinel runs cfg's deployment. It returns once every replica is
// in sync and every sentinel knows the master, its replicas and the other
// sentinels.
func StartSentinel(t testing.TB, cfg SentinelConfig) *Sentinel {
	t.Helper()
	pw := cfg.Password
	auth := append([]string{"--requirepass", pw, "--masterauth", pw, "--repl-diskless-sync-delay", "0"}, cfg.ServerArgs...)
	server := func(args ...string) *Server {
		if cfg.TLS != nil {
			return StartTLS(t, *cfg.TLS, append(args, "--tls-replication", "yes")...)
		}
		return Start(t, args...)
	}
	var cliTLS []string
	if cfg.TLS != nil {
		cliTLS = cfg.TLS.cliFlags()
	}
	s := &Sentinel{Name: cfg.Name, Master: server(auth...)}
	mhost, mport, _ := net.SplitHostPort(s.Master.Addr)
	for range cfg.Replicas {
		s.Replicas = append(s.Replicas, server(append([]string{"--replicaof", mhost, mport}, auth...)...))
	}
	cli := cliBinary(t)
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range s.Replicas {
		for !strings.Contains(redisCLI(cli, r.Addr, pw, cliTLS, "info", "replication"), "master_link_status:up") {
			if time.Now().After(deadline) {
				t.Fatalf("replica %s not in sync with %s within 30s", r.Addr, s.Master.Addr)
			}
			time.Sleep(20 * time.Millisecond) // a replica syncing: nothing to wait on
		}
	}
	bin := Binary(t)
	name := cfg.Name
	for range cfg.Sentinels {
		dir := t.TempDir()
		port := freePort(t)
		conf := filepath.Join(dir, "sentinel.conf") // Sentinel rewrites it: its own file
		listen := fmt.Sprintf("port %d\n", port)
		if f := cfg.TLS; f != nil {
			listen = fmt.Sprintf("port 0\ntls-port %d\ntls-cert-file %s\ntls-key-file %s\ntls-ca-cert-file %s\ntls-replication yes\n", port, f.Cert, f.Key, f.CA)
		}
		if cfg.SentinelPassword != "" {
			listen += "requirepass " + cfg.SentinelPassword + "\n"
		}
		body := fmt.Sprintf("%sbind 127.0.0.1\ndir %s\nlogfile %s\n"+
			"sentinel monitor %s %s %s %d\nsentinel auth-pass %s %s\n"+
			"sentinel down-after-milliseconds %s %d\nsentinel failover-timeout %s 10000\nsentinel parallel-syncs %s 1\n",
			listen, dir, filepath.Join(dir, "redis.log"), name, mhost, mport, cfg.Sentinels/2+1, name, pw,
			name, cfg.DownAfter.Milliseconds(), name, name)
		if cfg.SentinelPassword != "" {
			// The sentinels reach one another with it (Redis 6.2+).
			body += "sentinel sentinel-pass " + cfg.SentinelPassword + "\n"
		}
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, conf, "--sentinel")
		if err := cmd.Start(); err != nil {
			t.Fatalf("start redis-server --sentinel: %v", err)
		}
		sv := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd}
		t.Cleanup(sv.Kill)
		ready := ping
		if cfg.TLS != nil {
			ready = dialable
		}
		waitReady(t, sv, dir, ready)
		s.Sentinels = append(s.Sentinels, sv)
	}
	s.cli = func(addr string, args ...string) string {
		return redisCLI(cli, addr, cfg.SentinelPassword, cliTLS, args...)
	}
	// Every sentinel must know the replicas (from the master's INFO) and
	// the other sentinels (hello messages) before a failover can elect
	// one and promote one.
	for _, sv := range s.Sentinels {
		for {
			out := s.cli(sv.Addr, "sentinel", "master", name)
			if sentinelField(out, "num-slaves") >= cfg.Replicas && sentinelField(out, "num-other-sentinels") >= cfg.Sentinels-1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sentinel %s does not know the deployment within 30s:\n%s", sv.Addr, out)
			}
			time.Sleep(50 * time.Millisecond) // the sentinels discover one another: nothing to wait on
		}
	}
	return s
}

// SentinelAddrs returns the sentinels' addresses, comma-separated.
func (s *Sentinel) SentinelAddrs() string {
	var a []string
	for _, sv := range s.Sentinels {
		a = append(a, sv.Addr)
	}
	return strings.Join(a, ",")
}

// MasterAddr asks the first sentinel that answers which address is the
// master now.
func (s *Sentinel) MasterAddr(t testing.TB) string {
	t.Helper()
	for _, sv := range s.Sentinels {
		out := strings.Fields(s.cli(sv.Addr, "sentinel", "get-master-addr-by-name", s.Name))
		if len(out) == 2 {
			return net.JoinHostPort(out[0], out[1])
		}
	}
	t.Fatal("no sentinel names a master")
	return ""
}

// redisCLI runs one command through redis-cli (authenticated with pw if
// not empty, with tls's flags) and returns its output, empty on error.
func redisCLI(cli, addr, pw string, tls []string, args ...string) string {
	host, port, _ := net.SplitHostPort(addr)
	pre := append([]string{"-h", host, "-p", port}, tls...)
	if pw != "" {
		pre = append(pre, "--no-auth-warning", "-a", pw)
	}
	out, err := exec.Command(cli, append(pre, args...)...).Output()
	if err != nil {
		return ""
	}
	return string(out)
}

// sentinelField reads a number from SENTINEL MASTER's answer as
// redis-cli prints it (a name line, then its value line); -1 if absent.
func sentinelField(out, name string) int {
	lines := strings.Split(out, "\n")
	for i := 0; i+1 < len(lines); i++ {
		if strings.TrimSpace(lines[i]) == name {
			if n, err := strconv.Atoi(strings.TrimSpace(lines[i+1])); err == nil {
				return n
			}
		}
	}
	return -1
}
