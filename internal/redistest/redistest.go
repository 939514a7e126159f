// Package redistest starts real redis-server processes for tests, on
// loopback, each in its own temporary directory. `make test` installs
// redis-server (Debian's package) when it is missing.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/internal/testport"
)

// Server is one running redis-server.
type Server struct {
	Addr string // host:port on 127.0.0.1
	cmd  *exec.Cmd
}

// Binary returns redis-server's path, failing t with what to do when it
// is not installed.
func Binary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{os.Getenv("DING_REDIS_SERVER"), "redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server"} {
		if p == "" {
			continue
		}
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatal("redis-server not found: run `make test` (it installs Debian's redis-server) or set DING_REDIS_SERVER")
	return ""
}

// Start runs a redis-server with no persistence on a free loopback port
// and stops it when the test ends.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	port := freePort(t)
	return start(t, port, ping, append([]string{"--port", strconv.Itoa(port)}, args...)...)
}

// start runs a redis-server with no persistence, listening as args say,
// its address 127.0.0.1:port, and waits until ready(address) succeeds.
func start(t testing.TB, port int, ready func(addr string) error, args ...string) *Server {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	all := append([]string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log")}, args...)
	cmd := exec.Command(bin, all...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd}
	t.Cleanup(s.Kill)
	waitReady(t, s, dir, ready)
	return s
}

// waitReady polls ready(s.Addr) for up to 10 s, failing t with the log
// in dir if it never succeeds.
func waitReady(t testing.TB, s *Server, dir string, ready func(addr string) error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ready(s.Addr)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			t.Fatalf("redis-server on %s not ready within 10s: %v\n%s", s.Addr, err, log)
		}
		time.Sleep(20 * time.Millisecond) // polling a starting process: nothing to wait on
	}
}

// ping sends one PING in RESP and expects +PONG, or -NOAUTH from a
// server with a password (this package links no Redis client: go-redis
// belongs to package cluster).
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	// A server that asks for a password answers, and is ready.
	if line != "+PONG\r\n" && !strings.HasPrefix(line, "-NOAUTH") {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

func freePort(t testing.TB) int {
	t.Helper()
	return testport.Port(t) // below the ephemeral range: see testport
}

// Cluster is a Redis Cluster of real redis-server processes.
type Cluster struct {
	Nodes []*Server // masters first, as redis-cli --cluster create was given them
	tls   []string  // redis-cli's flags to reach the nodes (TLS)
}

// Kill stops one node with SIGKILL, as a crash would.
func (s *Server) Kill() { _ = s.cmd.Process.Kill(); _ = s.cmd.Wait() }

// StartCluster runs masters masters with replicas replicas each as one
// Redis Cluster (redis-cli --cluster create) and waits until every node
// reports cluster_state:ok. A replica is promoted about nodeTimeout after
// its master dies. Each node gets args too (an ACL user, say; the
// default user stays open, for redis-cli).
func StartCluster(t testing.TB, masters, replicas int, nodeTimeout time.Duration, args ...string) *Cluster {
	t.Helper()
	return startCluster(t, nil, masters, replicas, nodeTimeout, args...)
}

// StartClusterTLS is StartCluster with every node speaking TLS only, the
// cluster bus and replication too, with f's certificates.
func StartClusterTLS(t testing.TB, f TLSFiles, masters, replicas int, nodeTimeout time.Duration, args ...string) *Cluster {
	t.Helper()
	return startCluster(t, &f, masters, replicas, nodeTimeout, args...)
}

func startCluster(t testing.TB, f *TLSFiles, masters, replicas int, nodeTimeout time.Duration, args ...string) *Cluster {
	t.Helper()
	cli := cliBinary(t)
	c := &Cluster{}
	if f != nil {
		c.tls = f.cliFlags()
	}
	var addrs []string
	for range masters * (1 + replicas) {
		// The bus port is one of testport's too: by default it is the
		// client port + 10000, which may fall in the ephemeral range.
		all := append([]string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(testport.Port(t)),
			"--cluster-node-timeout", strconv.FormatInt(nodeTimeout.Milliseconds(), 10),
			"--repl-diskless-sync-delay", "0"}, args...) // replicas in sync at once, not after 5s
		var s *Server
		if f != nil {
			s = StartTLS(t, *f, append(all, "--tls-cluster", "yes", "--tls-replication", "yes")...)
		} else {
			s = Start(t, all...)
		}
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr)
	}
	create := append(append([]string{}, c.tls...), "--cluster", "create")
	create = append(append(create, addrs...), "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.Command(cli, create...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	// Ready when every node says the cluster is ok and every replica is
	// in sync with its master (a replica that never synced cannot be
	// promoted when its master dies).
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range c.Nodes {
		for !c.ready(cli, s) {
			if time.Now().After(deadline) {
				t.Fatalf("redis cluster not ready within 30s (node %s)", s.Addr)
			}
			time.Sleep(50 * time.Millisecond) // the nodes gossip and sync until they agree
		}
	}
	return c
}

// ready reports whether s says the cluster is ok and, if s is a replica,
// that its link to its master is up.
func (c *Cluster) ready(cli string, s *Server) bool {
	out := redisCLI(cli, s.Addr, "", c.tls, "cluster", "info")
	if !strings.Contains(out, "cluster_state:ok") {
		return false
	}
	out = redisCLI(cli, s.Addr, "", c.tls, "info", "replication")
	return strings.Contains(out, "role:master") || strings.Contains(out, "master_link_status:up")
}

// Addrs returns every node's address.
func (c *Cluster) Addrs() []string {
	var a []string
	for _, s := range c.Nodes {
		a = append(a, s.Addr)
	}
	return a
}

func cliBinary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("redis-cli"); err == nil {
		return p
	}
	t.Fatal("redis-cli not found: run `make test` (it installs Debian's redis-server, which brings it)")
	return ""
}

// MasterOf returns the node serving key's slot as master.
func (c *Cluster) MasterOf(t testing.TB, key string) *Server {
	t.Helper()
	cli := cliBinary(t)
	out := redisCLI(cli, c.Nodes[0].Addr, "", c.tls, "cluster", "keyslot", key)
	slot, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("cluster keyslot answered %q", out)
	}
	out = redisCLI(cli, c.Nodes[0].Addr, "", c.tls, "cluster", "nodes")
	// Lines: id ip:port@cport flags master ping pong epoch link slot-ranges...
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.Contains(f[2], "master") {
			continue
		}
		for _, r := range f[8:] {
			lo, hi, ok := strings.Cut(r, "-")
			if !ok {
				hi = lo
			}
			l, err1 := strconv.Atoi(lo)
			h, err2 := strconv.Atoi(hi)
			if err1 == nil && err2 == nil && l <= slot && slot <= h {
				addr, _, _ := strings.Cut(f[1], "@")
				for _, s := range c.Nodes {
					if s.Addr == addr {
						return s
					}
				}
			}
		}
	}
	t.Fatalf("no master found for slot %d", slot)
	return nil
}

// FlushAll empties s (FLUSHALL): a Redis that lost every write, as a
// replica promoted before it had any, or an operator's mistake.
func (s *Server) FlushAll(t testing.TB) {
	t.Helper()
	host, port, _ := net.SplitHostPort(s.Addr)
	if out, err := exec.Command(cliBinary(t), "-h", host, "-p", port, "FLUSHALL").CombinedOutput(); err != nil {
		t.Fatalf("redis-cli FLUSHALL: %v: %s", err, out)
	}
}
