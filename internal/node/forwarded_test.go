package node_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
	"github.com/dingmq/ding/internal/ratelimit"
)

// forwardedClient is an HTTPS client of the test's CA, presenting cert
// (nil: none), whose connections come from the loopback address from
// (127.0.0.2, ...: the members dial from 127.0.0.1, so the owner tells
// a client's address from a member's).
func forwardedClient(ca *nodetest.CA, cert *tls.Certificate, from string) *http.Client {
	tc := &tls.Config{RootCAs: ca.Pool}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, DialContext: d.DialContext}}
}

// apiDo sends an admin request and returns its status and JSON body.
func apiDo(t *testing.T, hc *http.Client, method, url, tok string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestClusterStandInCarriesTheClientsAddressAndCertificate: a member
// standing by (one partition) sends the admin API on to the owner with
// its signed word of the client (forwarded.go). So an admin who
// authenticates with a client certificate (mTLS) is served through it,
// its cluster routes included; the owner's audit log names the client's
// address; and a client's failed authentications lock out that client
// only, not every admin sending through the member. Before, the stand-in
// asked for no certificate (401 "missing bearer token"), and the owner
// counted every failure against the member's own address.
func TestClusterStandInCarriesTheClientsAddressAndCertificate(t *testing.T) {
	c := cluster.NewMemCoord(time.Now)
	ctx, runMember, stopMembers := memberRunner(t, true)
	defer stopMembers()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ca := nodetest.NewCA(t)
	certFile, keyFile := ca.ServerFiles(t)
	run := func(id string, started chan<- *node.Node) string {
		addr := nodetest.FreeAddr(t)
		runMember(node.MemberConfig{
			Node: node.Config{DataDir: t.TempDir(), SocketAddr: nodetest.FreeAddr(t), HTTPAddr: addr, Logger: quiet,
				TLSCert: certFile, TLSKey: keyFile, TLSClientCA: ca.File,
				Limits: ratelimit.Config{AuthFailures: ratelimit.Rate{N: 3, Per: time.Minute}, AuthLockout: time.Minute}},
			Coord: c, ID: id, Advertise: "https://" + addr, Secret: "s", LeaseTTL: time.Second, PeerCA: ca.File,
			Started: func(n *node.Node) {
				if started != nil {
					started <- n
				}
			},
		})
		return "https://" + addr
	}
	startedA := make(chan *node.Node, 1)
	owner := run("a", startedA)
	a := <-startedA
	standby := run("b", nil)
	nodetest.WaitFor(t, "b to become the standby", 20*time.Second, func() bool {
		sb, _ := c.Standby(ctx, 0)
		return sb == "b"
	})
	first := a.AdminToken()
	local := forwardedClient(ca, nil, "127.0.0.1")
	if code, out := apiDo(t, local, "POST", owner+"/v1/admins", first, map[string]any{"name": "ops", "role": "admin"}); code != http.StatusCreated {
		t.Fatalf("add admin ops: %d %v", code, out)
	}
	cert := ca.Client(t, time.Now().Add(-time.Minute), "ops", "ding:admin/ops")
	ops := forwardedClient(ca, &cert, "127.0.0.2")

	// The admin's certificate, through the member standing by.
	nodetest.WaitFor(t, "b's HTTPS port to stand in", 10*time.Second, func() bool {
		resp, err := local.Get(standby + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	if code, out := apiDo(t, ops, "GET", standby+"/v1/admins/me", "", nil); code != http.StatusOK || out["name"] != "ops" {
		t.Fatalf("GET /v1/admins/me with ops's certificate through the standby: %d %v, want 200 naming ops", code, out)
	}
	if code, out := apiDo(t, ops, "GET", standby+"/v1/cluster", "", nil); code != http.StatusOK || out["member"] != "b" {
		t.Fatalf("GET /v1/cluster with ops's certificate on the standby: %d %v, want 200 from b", code, out)
	}
	if code, out := apiDo(t, ops, "POST", standby+"/v1/users", "", map[string]any{"id": "zed", "name": "Zed"}); code/100 != 2 {
		t.Fatalf("POST /v1/users with ops's certificate through the standby: %d %v", code, out)
	}
	// The owner's audit log names ops and the client's address, not b's.
	_, audit := apiDo(t, local, "GET", owner+"/v1/audit?limit=1000", first, nil)
	var source string
	for _, e := range audit["entries"].([]any) {
		if e := e.(map[string]any); e["actor"] == "ops" && strings.Contains(e["target"].(string), "zed") {
			source, _ = e["source"].(string)
		}
	}
	if host, _, _ := net.SplitHostPort(source); host != "127.0.0.2" {
		t.Errorf("the audit entry of ops adding zed through the standby has source %q, want the client's 127.0.0.2", source)
	}

	// A client sending bad tokens through the standby is locked out
	// after 3 (the owner counts them against its address); an admin
	// sending through the same standby from another address is not.
	bad := forwardedClient(ca, nil, "127.0.0.3")
	for i := range 3 {
		if code, out := apiDo(t, bad, "GET", standby+"/v1/admins/me", "e30.e30.sig", nil); code != http.StatusUnauthorized {
			t.Fatalf("bad token %d through the standby: %d %v, want 401", i+1, code, out)
		}
	}
	if code, out := apiDo(t, bad, "GET", standby+"/v1/admins/me", first, nil); code != http.StatusTooManyRequests {
		t.Fatalf("the client that failed 3 times, through the standby: %d %v, want 429", code, out)
	}
	if code, out := apiDo(t, bad, "GET", owner+"/v1/admins/me", first, nil); code != http.StatusTooManyRequests {
		t.Fatalf("the client that failed 3 times, at the owner: %d %v, want 429 (locked out itself)", code, out)
	}
	if code, out := apiDo(t, local, "GET", standby+"/v1/admins/me", first, nil); code != http.StatusOK {
		t.Fatalf("another client through the same standby: %d %v, want 200 (not locked out)", code, out)
	}
	if code, out := apiDo(t, ops, "GET", standby+"/v1/cluster", "", nil); code != http.StatusOK {
		t.Fatalf("ops's certificate on the standby after the lockout of another client: %d %v, want 200", code, out)
	}

	// A client cannot pass itself off as forwarded, at the owner or
	// through the standby.
	for _, base := range []string{owner, standby} {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", base+"/v1/admins/me", nil)
		req.Header.Set("Authorization", "Bearer "+first)
		req.Header.Set("Ding-Forwarded", "eyJ2IjoxfQ.c2ln")
		resp, err := local.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(b), "assertion") {
			t.Fatalf("a client's own Ding-Forwarded header at %s: %s %s, want 401 naming the assertion", base, resp.Status, b)
		}
	}
}

// TestClusterPartitionsCarryTheClientsCertificate: with a member per
// partition, the admin API sends a directory change (dirProxy) and a
// request about another node's partition (ownerProxy) on with the
// member's signed word of the client. An admin who authenticates with a
// client certificate is served through either node; the directory's
// owner audits the client's address; bad tokens sent through the node
// that does not own the directory lock out their sender only. Before,
// both answered 401 "missing bearer token" to the certificate, and the
// directory's owner locked out the other node's address.
func TestClusterPartitionsCarryTheClientsCertificate(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	ctx := context.Background()
	ca := nodetest.NewCA(t)
	certFile, keyFile := ca.ServerFiles(t)
	a, b := startPartCluster(t, coord, testLog(t), func(mc *node.MemberConfig) {
		mc.Node.TLSCert, mc.Node.TLSKey, mc.Node.TLSClientCA = certFile, keyFile, ca.File
		mc.Node.Limits = ratelimit.Config{AuthFailures: ratelimit.Rate{N: 3, Per: time.Minute}, AuthLockout: time.Minute}
		mc.Advertise, mc.PeerCA = "https://"+mc.Node.HTTPAddr, ca.File
	})
	dirOwner, _, err := coord.Lease(ctx, cluster.Partition(testPartitions))
	if err != nil {
		t.Fatal(err)
	}
	owner, other := a, b // of the directory's partition
	if dirOwner == "b" {
		owner, other = b, a
	}
	first := a.n.AdminToken()
	local := forwardedClient(ca, nil, "127.0.0.1")
	via := "https://" + other.http
	if code, out := apiDo(t, local, "POST", via+"/v1/admins", first, map[string]any{"name": "ops", "role": "admin"}); code != http.StatusCreated {
		t.Fatalf("add admin ops through %s: %d %v", other.id, code, out)
	}
	cert := ca.Client(t, time.Now().Add(-time.Minute), "ops", "ding:admin/ops")
	ops := forwardedClient(ca, &cert, "127.0.0.2")

	// A directory change with the certificate through the node that does
	// not own the directory.
	users := []string{"ana", "bo", "cy", "di", "ed", "flo", "gus", "hal"}
	var batch []map[string]any
	for _, u := range users {
		batch = append(batch, map[string]any{"id": u, "name": u})
	}
	if code, out := apiDo(t, ops, "POST", via+"/v1/users/batch", "", map[string]any{"users": batch}); code/100 != 2 {
		t.Fatalf("POST /v1/users/batch with ops's certificate through %s: %d %v", other.id, code, out)
	}
	nodetest.WaitFor(t, "both directories to hold the users", 10*time.Second, func() bool {
		for _, u := range users {
			if !a.n.Directory().Active(u) || !b.n.Directory().Active(u) {
				return false
			}
		}
		return true
	})
	_, audit := apiDo(t, local, "GET", "https://"+owner.http+"/v1/audit?limit=1000", first, nil)
	found := false
	for _, e := range audit["entries"].([]any) {
		if e := e.(map[string]any); e["actor"] == "ops" {
			host, _, _ := net.SplitHostPort(e["source"].(string))
			found = found || host == "127.0.0.2"
		}
	}
	if !found {
		t.Errorf("no audit entry of ops on the directory's owner names the client's 127.0.0.2: %v", audit["entries"])
	}
	// A message from a user of a partition the node does not serve.
	from := ""
	for _, u := range users {
		if other.n.Engines()[other.n.PartitionOf(u)] == nil {
			from = u
			break
		}
	}
	if from == "" {
		t.Fatalf("none of %v in a partition %s does not serve", users, other.id)
	}
	if code, out := apiDo(t, ops, "POST", via+"/v1/messages", "", map[string]any{"from": from, "to": []string{"bo", "cy"}, "text": "sent on"}); code != http.StatusOK || out["id"] == nil {
		t.Fatalf("POST /v1/messages from %s with ops's certificate through %s: %d %v", from, other.id, code, out)
	}

	// Bad tokens through the node that does not own the directory lock
	// out their sender at the owner, and nobody else.
	bad := forwardedClient(ca, nil, "127.0.0.3")
	for i := range 3 {
		if code, out := apiDo(t, bad, "POST", via+"/v1/users", "e30.e30.sig", map[string]any{"id": "x", "name": "x"}); code != http.StatusUnauthorized {
			t.Fatalf("bad token %d through %s: %d %v, want 401", i+1, other.id, code, out)
		}
	}
	if code, out := apiDo(t, bad, "POST", "https://"+owner.http+"/v1/users", first, map[string]any{"id": "x", "name": "x"}); code != http.StatusTooManyRequests {
		t.Fatalf("the client that failed 3 times, at the directory's owner: %d %v, want 429", code, out)
	}
	if code, out := apiDo(t, local, "POST", via+"/v1/users", first, map[string]any{"id": "zed", "name": "Zed"}); code/100 != 2 {
		t.Fatalf("another client's directory change through %s: %d %v, want it made (not locked out)", other.id, code, out)
	}
}
