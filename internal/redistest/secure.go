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
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage) (string, string) {
		k := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
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
	f.Cert, f.Key = leaf(2, "server", x509.ExtKeyUsageServerAuth)
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
	return start(t, port, func(addr string) error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}, all...)
}

// Sentinel is a Redis Sentinel deployment: a master, its replicas, and
// sentinels watching them under one master name.
type Sentinel struct {
	Master    *Server
	Replicas  []*Server
	Sentinels []*Server
	Name      string
}

// StartSentinel runs a master and replicas replicas (password pw, for
// clients and for replication) and sentinels sentinels (no password of
// their own) watching them as name, with a quorum of a majority of the
// sentinels. A master is deemed down downAfter after it stops answering,
// and a replica promoted in its place. It returns once every replica is
// in sync and every sentinel knows the master and its replicas. The
// master and replicas get serverArgs too (an ACL user, say).
func StartSentinel(t testing.TB, name, pw string, replicas, sentinels int, downAfter time.Duration, serverArgs ...string) *Sentinel {
	t.Helper()
	auth := append([]string{"--requirepass", pw, "--masterauth", pw, "--repl-diskless-sync-delay", "0"}, serverArgs...)
	s := &Sentinel{Name: name, Master: Start(t, auth...)}
	mhost, mport, _ := net.SplitHostPort(s.Master.Addr)
	for range replicas {
		s.Replicas = append(s.Replicas, Start(t, append([]string{"--replicaof", mhost, mport}, auth...)...))
	}
	cli := cliBinary(t)
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range s.Replicas {
		for !strings.Contains(redisCLI(cli, r.Addr, pw, "info", "replication"), "master_link_status:up") {
			if time.Now().After(deadline) {
				t.Fatalf("replica %s not in sync with %s within 30s", r.Addr, s.Master.Addr)
			}
			time.Sleep(20 * time.Millisecond) // a replica syncing: nothing to wait on
		}
	}
	bin := Binary(t)
	for range sentinels {
		dir := t.TempDir()
		port := freePort(t)
		conf := filepath.Join(dir, "sentinel.conf") // Sentinel rewrites it: its own file
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\n"+
			"sentinel monitor %s %s %s %d\nsentinel auth-pass %s %s\n"+
			"sentinel down-after-milliseconds %s %d\nsentinel failover-timeout %s 10000\nsentinel parallel-syncs %s 1\n",
			port, dir, filepath.Join(dir, "redis.log"), name, mhost, mport, sentinels/2+1, name, pw,
			name, downAfter.Milliseconds(), name, name)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, conf, "--sentinel")
		if err := cmd.Start(); err != nil {
			t.Fatalf("start redis-server --sentinel: %v", err)
		}
		sv := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd}
		t.Cleanup(sv.Kill)
		waitReady(t, sv, dir, ping)
		s.Sentinels = append(s.Sentinels, sv)
	}
	// Every sentinel must know the replicas (from the master's INFO) and
	// the other sentinels (hello messages) before a failover can elect
	// one and promote one.
	for _, sv := range s.Sentinels {
		for {
			out := redisCLI(cli, sv.Addr, "", "sentinel", "master", name)
			if sentinelField(out, "num-slaves") >= replicas && sentinelField(out, "num-other-sentinels") >= sentinels-1 {
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
	cli := cliBinary(t)
	for _, sv := range s.Sentinels {
		out := strings.Fields(redisCLI(cli, sv.Addr, "", "sentinel", "get-master-addr-by-name", s.Name))
		if len(out) == 2 {
			return net.JoinHostPort(out[0], out[1])
		}
	}
	t.Fatal("no sentinel names a master")
	return ""
}

// redisCLI runs one command through redis-cli (authenticated with pw if
// not empty) and returns its output, empty on error.
func redisCLI(cli, addr, pw string, args ...string) string {
	host, port, _ := net.SplitHostPort(addr)
	pre := []string{"-h", host, "-p", port}
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
