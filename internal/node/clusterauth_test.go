package node_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// clusterCall sends an admin request and returns its status and the
// API's error object (nil on success).
func clusterCall(t *testing.T, method, url, token string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out struct {
		Error map[string]any `json:"error"`
	}
	if resp.StatusCode >= 300 {
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s %s: %s, not the API's error: %q", method, url, resp.Status, b)
		}
	}
	return resp.StatusCode, out.Error
}

// TestClusterRoutesTakeNamedAdmins: the /v1/cluster routes take named
// admins with their permissions (httpapi.ClusterRoutes), on the owner
// and on a member standing by (which asks the owner who the caller is),
// and nothing else: an operator reads the status but may not forget a
// member (403 naming cluster.write), a directory admin may not read it,
// a revoked or forged token gets 401. A member whose owner does not
// answer accepts the first-start token only. With MetricsAuth, /metrics
// takes the metrics permission on both alike (the standby's used to be
// open to all).
func TestClusterRoutesTakeNamedAdmins(t *testing.T) {
	c := cluster.NewMemCoord(time.Now)
	ctx, runMember, stopMembers := memberRunner(t, true)
	defer stopMembers()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	run := func(coord cluster.Coord, id, dataDir string, started chan<- *node.Node) string {
		addr := nodetest.FreeAddr(t)
		mc := node.MemberConfig{
			Node:  node.Config{DataDir: dataDir, SocketAddr: nodetest.FreeAddr(t), HTTPAddr: addr, Logger: quiet, MetricsAuth: true},
			Coord: coord, ID: id, Advertise: "http://" + addr, Secret: "s", LeaseTTL: time.Second,
			Started: func(n *node.Node) {
				if started != nil {
					started <- n
				}
			},
		}
		runMember(mc)
		return "http://" + addr
	}
	startedA := make(chan *node.Node, 1)
	run(c, "a", t.TempDir(), startedA)
	a := <-startedA
	standby := run(c, "b", t.TempDir(), nil)
	nodetest.WaitFor(t, "b to become the standby", 20*time.Second, func() bool {
		sb, _ := c.Standby(ctx, 0)
		return sb == "b"
	})

	owner := "http://" + a.HTTPAddr()
	addAdmin := func(name, role string) string {
		req, _ := http.NewRequest("POST", owner+"/v1/admins", strings.NewReader(`{"name":"`+name+`","role":"`+role+`"}`))
		req.Header.Set("Authorization", "Bearer "+a.AdminToken())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct{ Token string }
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 201 || out.Token == "" {
			t.Fatalf("add admin %s: %s %v", name, resp.Status, err)
		}
		return out.Token
	}
	sre, ops, hr, gone := addAdmin("sre", "operator"), addAdmin("ops", "admin"), addAdmin("hr", "directory"), addAdmin("gone", "admin")
	if code, e := clusterCall(t, "POST", owner+"/v1/admins/gone/revoke", a.AdminToken()); code != 200 {
		t.Fatalf("revoke: %d %v", code, e)
	}

	for _, m := range []struct{ name, url string }{{"the owner", owner}, {"the standby", standby}} {
		for _, tc := range []struct {
			who, tok, method, path string
			code                   int
			errCode, perm          string
		}{
			{"operator", sre, "GET", "/v1/cluster", 200, "", ""},
			{"admin", ops, "GET", "/v1/cluster", 200, "", ""},
			{"first-start owner", a.AdminToken(), "GET", "/v1/cluster", 200, "", ""},
			{"directory admin", hr, "GET", "/v1/cluster", 403, "FORBIDDEN", "cluster.read"},
			{"operator", sre, "POST", "/v1/cluster/forget?member=zz", 403, "FORBIDDEN", "cluster.write"},
			{"admin", ops, "POST", "/v1/cluster/forget?member=zz", 200, "", ""},
			{"revoked admin", gone, "GET", "/v1/cluster", 401, "UNAUTHENTICATED", ""},
			{"forged token", "e30.e30.sig", "GET", "/v1/cluster", 401, "UNAUTHENTICATED", ""},
			{"no token", "", "POST", "/v1/cluster/drain", 401, "UNAUTHENTICATED", ""},
			{"operator", sre, "GET", "/metrics", 200, "", ""},
			{"directory admin", hr, "GET", "/metrics", 403, "FORBIDDEN", "metrics"},
			{"no token", "", "GET", "/metrics", 401, "UNAUTHENTICATED", ""},
		} {
			code, e := clusterCall(t, tc.method, m.url+tc.path, tc.tok)
			if code != tc.code || (tc.errCode != "" && e["code"] != tc.errCode) || (tc.perm != "" && e["permission"] != tc.perm) {
				t.Errorf("%s on %s (%s %s): %d %v, want %d %s %s", tc.who, m.name, tc.method, tc.path, code, e, tc.code, tc.errCode, tc.perm)
			}
		}
	}

	// A member whose owner does not answer (its lease held by a node
	// whose address refuses connections) takes the first-start token it
	// copied with a snapshot, and no other.
	ghostCoord := cluster.NewMemCoord(time.Now)
	if _, ok, err := ghostCoord.TakeLease(ctx, 0, "ghost", 0, time.Hour); err != nil || !ok {
		t.Fatalf("ghost lease: %v %v", ok, err)
	}
	if err := ghostCoord.SetAddr(ctx, "ghost", "http://"+nodetest.FreeAddr(t), time.Hour); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, node.AdminTokenFile), []byte("first-start-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lone := run(ghostCoord, "lone", dir, nil)
	nodetest.WaitFor(t, "the lone member's HTTP port", 10*time.Second, func() bool {
		resp, err := http.Get(lone + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	if code, e := clusterCall(t, "GET", lone+"/v1/cluster", "first-start-token"); code != 200 {
		t.Errorf("the first-start token with no owner answering: %d %v, want 200", code, e)
	}
	code, e := clusterCall(t, "GET", lone+"/v1/cluster", ops)
	if code != 401 || e["code"] != "UNAUTHENTICATED" || !strings.Contains(e["detail"].(string), "no owner answers") {
		t.Errorf("a named admin with no owner answering: %d %v, want 401 saying no owner answers", code, e)
	}
}
