package node_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"github.com/dingmq/ding/channels/socket/client"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/email"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
	"github.com/dingmq/ding/internal/redistest"
)

// A pair of cluster members in one process on a real redis-server: the
// owner serves the cluster-only metrics of deploy/METRICS.md with the
// catalogued types (the Redis client's on both), and they say what
// happened (a standby, an epoch,
// batches replicated).
func TestClusterMetricsScrape(t *testing.T) {
	c, closeRedis, err := cluster.DialRedis(cluster.RedisConfig{URL: "redis://" + redistest.Start(t).Addr})
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	ctx, runMember, stopMembers := memberRunner(t, true)
	defer stopMembers()
	httpOf := map[string]string{}
	member := func(id string, started chan<- *node.Node) {
		addr := nodetest.FreeAddr(t)
		httpOf[id] = addr
		mc := node.MemberConfig{
			Node: node.Config{DataDir: t.TempDir(), SocketAddr: nodetest.FreeAddr(t), HTTPAddr: addr,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
			Coord: c, ID: id, Advertise: "http://" + addr, Secret: "s", LeaseTTL: time.Second,
			Started: func(n *node.Node) { started <- n },
		}
		runMember(mc)
	}
	startedA := make(chan *node.Node, 1)
	member("a", startedA)
	a := <-startedA
	member("b", make(chan *node.Node, 1))
	deadline := time.Now().Add(20 * time.Second)
	for {
		if sb, _ := c.Standby(ctx, 0); sb == "b" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b did not become the standby")
		}
		time.Sleep(10 * time.Millisecond) // polling the coordinator
	}
	nodetest.AddUsers(t, a, "ana", "bo")
	if _, err := a.Engine().Submit(ctx, engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("hi")}); err != nil {
		t.Fatal(err)
	}
	cat, err := parseCatalogue(catalogueFile)
	if err != nil {
		t.Fatal(err)
	}
	// The owner serves the owner's metrics; the standby, on its own HTTP
	// port, the metrics of a member not serving, and says it follows.
	sb := "http://" + httpOf["b"]
	nodetest.WaitFor(t, "b to hold the message", 10*time.Second, func() bool {
		return bytes.Contains(get(t, sb+"/metrics", ""), []byte("ding_cluster_standby_seq"))
	})
	for _, who := range []struct {
		name, url  string
		notServing bool
		want       []string
	}{
		{"the owner", "http://" + a.HTTPAddr(), false, []string{"ding_cluster_has_standby 1", "ding_cluster_epoch 1", "ding_cluster_replication_wait_seconds_count",
			`ding_redis_commands_total{command="xadd",result="ok"}`, `ding_redis_round_trip_seconds_count{command="xadd"}`}},
		{"the standby", sb, true, []string{`ding_cluster_member_state{state="standby"} 1`, `ding_cluster_member_state{state="spare"} 0`, "ding_cluster_standby_fence_epoch 1",
			`ding_redis_commands_total{command="xread",result="ok"}`}},
	} {
		scrape := get(t, who.url+"/metrics", "")
		fams, err := parseExposition(scrape)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, m := range cat {
			if !m.clusterOnly || m.notServing != who.notServing && !m.everyMember {
				continue
			}
			n++
			f, ok := fams[m.name]
			if !ok {
				t.Errorf("%s is in %s (line %d) but %s does not serve it", m.name, catalogueFile, m.line, who.name)
				continue
			}
			if f.typ != m.typ {
				t.Errorf("%s: catalogue says %s, %s's /metrics says %s", m.name, m.typ, who.name, f.typ)
			}
		}
		if n == 0 {
			t.Fatalf("no cluster-only metric for %s in the catalogue: the parsing is broken", who.name)
		}
		for _, want := range who.want {
			if !bytes.Contains(scrape, []byte(want)) {
				t.Errorf("%s's /metrics lacks %q", who.name, want)
			}
		}
		cmd := exec.Command(promtoolPath(t), "check", "metrics")
		cmd.Stdin = bytes.NewReader(scrape)
		if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics (%s): %v\n%s", who.name, err, out)
		}
	}
}

// get fetches url (with an admin token, if given) and returns the body of
// a 200.
func get(t *testing.T, url, token string) []byte {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b
}

// TestStandInServesTheNodesTLS: a member configured with a certificate
// stands in over HTTPS, as its node would serve: no plain HTTP port opens
// (it proxies the admin API, tokens and all, to the owner).
func TestStandInServesTheNodesTLS(t *testing.T) {
	c := cluster.NewMemCoord(time.Now)
	_, runMember, stopMembers := memberRunner(t, false)
	defer stopMembers()
	cert, key, caFile := nodetest.TLSFiles(t)
	run := func(id string, tlsOn bool, started chan<- *node.Node) string {
		addr := nodetest.FreeAddr(t)
		cfg := node.Config{DataDir: t.TempDir(), SocketAddr: nodetest.FreeAddr(t), HTTPAddr: addr,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		if tlsOn {
			cfg.TLSCert, cfg.TLSKey = cert, key
		}
		mc := node.MemberConfig{Node: cfg, Coord: c, ID: id, Advertise: "http://" + addr, Secret: "s", LeaseTTL: time.Second,
			Started: func(n *node.Node) { started <- n }}
		runMember(mc)
		return addr
	}
	startedA := make(chan *node.Node, 1)
	run("a", false, startedA)
	<-startedA
	addrB := run("b", true, make(chan *node.Node, 1))
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	https := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	nodetest.WaitFor(t, "b's stand-in over HTTPS", 10*time.Second, func() bool {
		resp, err := https.Get("https://" + addrB + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + addrB + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("b's stand-in answered plain HTTP")
		}
	}
}

// TestMembersOverHTTPSWithAPrivateCA: members that serve HTTPS with
// certificates from a private CA, advertised as https://, reach one
// another with PeerCA: the second joins as the standby from the first's
// snapshot, over HTTPS. Without it, the join cannot verify the owner.
func TestMembersOverHTTPSWithAPrivateCA(t *testing.T) {
	cert, key, caFile := nodetest.TLSFiles(t)
	for _, withCA := range []bool{true, false} {
		c := cluster.NewMemCoord(time.Now)
		ctx, runMember, stopMembers := memberRunner(t, false)
		run := func(id string, started chan<- *node.Node) {
			addr := nodetest.FreeAddr(t)
			mc := node.MemberConfig{Node: node.Config{DataDir: t.TempDir(), SocketAddr: nodetest.FreeAddr(t), HTTPAddr: addr,
				TLSCert: cert, TLSKey: key, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
				Coord: c, ID: id, Advertise: "https://" + addr, Secret: "s", LeaseTTL: time.Second,
				Started: func(n *node.Node) { started <- n }}
			if withCA {
				mc.PeerCA = caFile
			}
			runMember(mc)
		}
		startedA := make(chan *node.Node, 1)
		run("a", startedA)
		<-startedA
		run("b", make(chan *node.Node, 1))
		joined := false
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) && !joined {
			sb, _ := c.Standby(ctx, 0)
			joined = sb == "b"
			time.Sleep(10 * time.Millisecond) // polling the coordinator
		}
		stopMembers()
		if joined != withCA {
			t.Fatalf("PeerCA given %v: b joined %v", withCA, joined)
		}
	}
}

// TestStandInRedirectsTLSClientsToTheOwnersTLSSocket: a TLS client that
// reaches a member that does not serve, on its TLS socket port, is told
// (over TLS) the owner's TLS socket address, and its session starts there.
func TestStandInRedirectsTLSClientsToTheOwnersTLSSocket(t *testing.T) {
	cert, key, caFile := nodetest.TLSFiles(t)
	c := cluster.NewMemCoord(time.Now)
	ctx, runMember, stopMembers := memberRunner(t, false)
	defer stopMembers()
	run := func(id string, started chan<- *node.Node) (tlsSock string) {
		addr, tlsSock := nodetest.FreeAddr(t), nodetest.FreeAddr(t)
		mc := node.MemberConfig{Node: node.Config{DataDir: t.TempDir(), SocketAddr: nodetest.FreeAddr(t), HTTPAddr: addr,
			TLSCert: cert, TLSKey: key, TLSSocketAddr: tlsSock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
			Coord: c, ID: id, Advertise: "https://" + addr, Secret: "s", LeaseTTL: time.Second, PeerCA: caFile,
			Started: func(n *node.Node) { started <- n }}
		runMember(mc)
		return tlsSock
	}
	startedA := make(chan *node.Node, 1)
	tlsA := run("a", startedA)
	a := <-startedA
	tlsB := run("b", make(chan *node.Node, 1))
	nodetest.WaitFor(t, "b as the standby", 10*time.Second, func() bool { sb, _ := c.Standby(ctx, 0); return sb == "b" })
	nodetest.AddUsers(t, a, "ana")
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	var redirected []string
	cl, err := client.Dial(ctx, client.Config{Addr: tlsB, Token: nodetest.Token(t, a, "ana", "phone"), Device: "phone",
		TLS: &tls.Config{RootCAs: pool}, OnSession: func(e client.SessionEvent) {
			if e.Kind == client.SessionRedirect {
				redirected = append(redirected, e.Redirect)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Send(ctx, []string{"ana"}, []byte("over TLS, through a redirect")); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	<-cl.Done()
	if len(redirected) == 0 || redirected[0] != tlsA {
		t.Fatalf("redirects %v, want the owner's TLS socket %s", redirected, tlsA)
	}
}

// TestClusterEmailLinkKeyTravels: e-mail links are signed with the data
// dir's email-link.key; a standby joins with the owner's (in the
// snapshot's shared files), so that after a takeover it accepts the links
// the owner mailed.
func TestClusterEmailLinkKeyTravels(t *testing.T) {
	c := cluster.NewMemCoord(time.Now)
	ctx, runMember, stopMembers := memberRunner(t, true)
	defer stopMembers()
	dirs := map[string]string{}
	member := func(id string) {
		addr := nodetest.FreeAddr(t)
		dirs[id] = t.TempDir()
		mc := node.MemberConfig{
			Node: node.Config{DataDir: dirs[id], SocketAddr: nodetest.FreeAddr(t), HTTPAddr: addr,
				Email:  email.Config{Addr: "127.0.0.1:1", TLS: email.TLSNone, From: "ding@example.com", PublicURL: "http://" + addr},
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
			Coord: c, ID: id, Advertise: "http://" + addr, Secret: "s", LeaseTTL: time.Second,
		}
		runMember(mc)
	}
	member("a")
	nodetest.WaitFor(t, "a to own the partition", 20*time.Second, func() bool {
		h, _, _ := c.Lease(ctx, 0)
		return h == "a"
	})
	member("b")
	nodetest.WaitFor(t, "b to become the standby", 20*time.Second, func() bool {
		sb, _ := c.Standby(ctx, 0)
		return sb == "b"
	})
	ka, err := os.ReadFile(filepath.Join(dirs["a"], email.KeyFile))
	if err != nil || len(ka) == 0 {
		t.Fatalf("the owner's link key: %v", err)
	}
	kb, err := os.ReadFile(filepath.Join(dirs["b"], email.KeyFile))
	if err != nil || !bytes.Equal(ka, kb) {
		t.Fatalf("the standby's link key is not the owner's (%v): links mailed before a takeover would be refused after it", err)
	}
}

// memberRunner runs cluster members for a test: runMember starts one
// (node.RunMember) until stopMembers, which stops them all and waits for
// them; with check, a member that returns an error fails the test (some
// tests stop members that are bound to fail, such as one that cannot
// verify its owner). Call stopMembers (deferred) before the test's
// temporary directories go. ctx is the members' context.
func memberRunner(t *testing.T, check bool) (ctx context.Context, runMember func(node.MemberConfig), stopMembers func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var done []chan error
	var once sync.Once
	runMember = func(mc node.MemberConfig) {
		d := make(chan error, 1)
		done = append(done, d)
		go func() { d <- node.RunMember(ctx, mc) }()
	}
	stopMembers = func() {
		once.Do(func() {
			cancel()
			for _, d := range done {
				if err := <-d; err != nil && check {
					t.Errorf("member: %v", err)
				}
			}
		})
	}
	return ctx, runMember, stopMembers
}
