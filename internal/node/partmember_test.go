package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/httpapi/openapitest"
	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/channels/twilio/twiliotest"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
	"github.com/dingmq/ding/internal/redistest"
)

// partNode is a cluster node with a member per partition, run in
// process by runPartNode.
type partNode struct {
	id, dir, http, sock string
	n                   *node.Node
	halt                func() error // stops the node (idempotent), and returns its error
}

// noticeHandler closes seen (once) when a record with message msg is
// logged, and passes every record on.
type noticeHandler struct {
	slog.Handler
	msg  string
	seen chan struct{}
	once *sync.Once
}

func (h *noticeHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(func() { close(h.seen) })
	}
	return h.Handler.Handle(ctx, r)
}

func (h *noticeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.Handler = h.Handler.WithAttrs(as)
	return &c
}

func (h *noticeHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.Handler = h.Handler.WithGroup(name)
	return &c
}

// testLog is a logger whose lines the test shows if it fails.
func testLog(t *testing.T) *slog.Logger {
	var mu sync.Mutex
	var logs bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("DING_TEST_LOGS") != "" {
			mu.Lock()
			t.Logf("the nodes' logs:\n%s", logs.String())
			mu.Unlock()
		}
	})
	return slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(b)
	}), nil))
}

// runPartNode runs node id of testPartitions partitions on coord, on dir
// and the addresses given, with the lease TTL 1s and mod's changes, and
// returns once it partNode.
func runPartNode(t *testing.T, coord cluster.Coord, log *slog.Logger, id, dir, addr, sock string, mod func(*node.MemberConfig)) partNode {
	t.Helper()
	ch := make(chan *node.Node, 1)
	mctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	mc := node.MemberConfig{
		Node:  node.Config{DataDir: dir, SocketAddr: sock, HTTPAddr: addr, Logger: log, Partitions: testPartitions},
		Coord: coord, ID: id, Advertise: "http://" + addr, Secret: "per-partition-secret", LeaseTTL: time.Second,
		Started: func(n *node.Node) { ch <- n },
	}
	if mod != nil {
		mod(&mc)
	}
	go func() { done <- node.RunMember(mctx, mc) }()
	var once sync.Once
	var err error
	halt := func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { _ = halt() })
	select {
	case n := <-ch:
		return partNode{id, dir, addr, sock, n, halt}
	case err := <-done:
		t.Fatalf("%s: %v", id, err)
	}
	return partNode{}
}

// addClusterUsers creates users through via's admin API (POST
// /v1/users/batch: a node that does not own the directory's partition
// proxies it to the one that does) and waits until every node's
// directory has them.
func addClusterUsers(t *testing.T, via partNode, all []partNode, users ...fanout.User) {
	t.Helper()
	type userJSON struct {
		ID    string `json:"id"`
		Name  string `json:"name"`
		Phone string `json:"phone,omitempty"`
	}
	body := struct {
		Users []userJSON `json:"users"`
	}{}
	for _, u := range users {
		body.Users = append(body.Users, userJSON{u.ID, u.Name, u.Phone})
	}
	b, _ := json.Marshal(body)
	// A 503 says the directory's partition moved while the change was on
	// its way (a hand-over just now): the API asks for a retry, which an
	// admin client does; on a retry the users may be there already (409).
	conflict := false
	for retried, deadline := false, time.Now().Add(10*time.Second); ; retried = true {
		req, _ := http.NewRequest("POST", "http://"+via.http+"/v1/users/batch", bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+via.n.AdminToken())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond) // the API's "retry": backing off, not waiting for an event
			continue
		}
		if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated || retried && resp.StatusCode == http.StatusConflict {
			conflict = resp.StatusCode == http.StatusConflict
			break
		}
		t.Fatalf("POST /v1/users/batch through %s: %s %s", via.id, resp.Status, msg)
	}
	// Read-your-writes through via: it answered once its copy held them
	// (a 409 answers a retry of a change made before).
	for _, u := range users {
		if !conflict && !via.n.Directory().Active(u.ID) {
			t.Fatalf("%s answered the change before its directory held %s", via.id, u.ID)
		}
	}
	nodetest.WaitFor(t, "every node's directory to hold the new users", 10*time.Second, func() bool {
		for _, pn := range all {
			for _, u := range users {
				if !pn.n.Directory().Active(u.ID) {
					return false
				}
			}
		}
		return true
	})
}

// named returns users with the ids given, each named by its id.
func named(ids ...string) []fanout.User {
	out := make([]fanout.User, len(ids))
	for i, id := range ids {
		out[i] = fanout.User{ID: id, Name: id}
	}
	return out
}

// servedBy returns the partitions n serves now.
func servedBy(n *node.Node) (ps []int) {
	for p, e := range n.Engines() {
		if e != nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// startPartCluster founds a cluster of two nodes, a then b, on coord, and
// waits until each owns half the partitions with the other as their
// standby.
func startPartCluster(t *testing.T, coord cluster.Coord, log *slog.Logger, mod func(*node.MemberConfig)) (a, b partNode) {
	t.Helper()
	a = runPartNode(t, coord, log, "a", t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t), mod)
	nodetest.WaitFor(t, "a to found every partition", 20*time.Second, func() bool { return len(servedBy(a.n)) == testPartitions })
	b = runPartNode(t, coord, log, "b", t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t), mod)
	if b.n.AdminToken() != a.n.AdminToken() {
		t.Fatal("b did not take the cluster's admin token before starting")
	}
	// The roles even out (balance): each node owns two partitions and
	// follows the other's two.
	nodetest.WaitFor(t, "each node to own two partitions, with a standby each", 60*time.Second, func() bool {
		if len(servedBy(a.n)) != 2 || len(servedBy(b.n)) != 2 {
			return false
		}
		for p := range testPartitions {
			h, _, _ := coord.Lease(context.Background(), cluster.Partition(p))
			sb, _ := coord.Standby(context.Background(), cluster.Partition(p))
			if h == "" || sb == "" || h == sb {
				return false
			}
		}
		return true
	})
	return a, b
}

// Two nodes, each running a member per partition (4 partitions) on one
// MemCoord: the first founds every partition, the second takes the
// cluster's files, and the roles even out (each owns two and follows the
// other's). A client dialling the node that does not serve its user is
// redirected; a message and its receipts cross between the nodes;
// hand-overs of a partition not owned, or of none, are refused. When the
// sender's node stops, the other takes its partitions over with the
// streams whole; the stopped node comes back, a send is acknowledged
// again, and the roles even out again.
func TestClusterMemberPerPartition(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	ctx := context.Background()
	log := testLog(t)
	a, b := startPartCluster(t, coord, log, nil)
	// ana and a user of a partition the other node serves.
	users := []string{"ana", "bo", "cy", "di", "ed", "flo", "gus", "hal"}
	addClusterUsers(t, b, []partNode{a, b}, named(users...)...)
	home := func(user string) partNode {
		if a.n.Engines()[a.n.PartitionOf(user)] != nil {
			return a
		}
		return b
	}
	to := ""
	for _, u := range users[1:] {
		if home(u).n != home("ana").n {
			to = u
			break
		}
	}
	if to == "" {
		t.Fatalf("no user among %v on the node not serving ana", users)
	}
	// A node answers a hand-over of a partition it does not own, and of
	// no partition, with a clear error; its status lists each partition's
	// role. Each answer as the API's OpenAPI document says.
	other := home(to)
	api := openapitest.New(t, "http://"+other.http)
	tok := other.n.AdminToken()
	api.Call(t, "POST /v1/cluster/handover", "/v1/cluster/handover?p="+strconv.Itoa(a.n.PartitionOf("ana")), tok, nil, http.StatusConflict)
	api.Call(t, "POST /v1/cluster/handover", "/v1/cluster/handover?p=99", tok, nil, http.StatusBadRequest)
	api.Call(t, "POST /v1/cluster/handover", "/v1/cluster/handover?p=1", "", nil, http.StatusUnauthorized)
	out := api.Call(t, "GET /v1/cluster", "/v1/cluster", tok, nil, http.StatusOK)
	roles := map[int]string{}
	ps, _ := out["partitions"].([]any)
	for _, p := range ps {
		m := p.(map[string]any)
		roles[int(m["partition"].(float64))], _ = m["role"].(string)
	}
	if len(roles) != testPartitions+1 || roles[other.n.PartitionOf(to)] != "owner" || roles[a.n.PartitionOf("ana")] != "standby" || out["role"] != "partitioned" {
		t.Fatalf("%s's status: %v", other.id, out)
	}

	both := a.n.SocketAddr() + "," + b.n.SocketAddr()
	dial := func(n *node.Node, user, addr string) *client.Client {
		c, err := client.Dial(ctx, client.Config{Addr: addr, Token: nodetest.Token(t, n, user, "phone"), Device: "phone"})
		if err != nil {
			t.Fatalf("dial %s: %v", user, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	h := home("ana")
	ana := dial(h.n, "ana", both)
	bo := dial(h.n, to, both) // ana's node does not serve him: it redirects him
	if s := bo.Stats(); s.Redirects != 1 {
		t.Fatalf("%s followed %d redirects, want 1", to, s.Redirects)
	}
	res, err := ana.Send(ctx, []string{to}, []byte("across nodes"))
	if err != nil {
		t.Fatal(err)
	}
	if m := firstDeliver(t, bo, res.ID); m == nil || string(m.Body) != "across nodes" {
		t.Fatalf("%s got %+v", to, m)
	}
	nextReceipt(t, ana, res.ID, pb.State_DELIVERED)
	if err := bo.Read(ctx, res.ID); err != nil {
		t.Fatal(err)
	}
	nextReceipt(t, ana, res.ID, pb.State_READ_STATE)
	// ana's node reports her partition's replication: its standby holds
	// the batches written (acked_seq), and once the writes stop, none
	// waits for it (unacked_batches, the lag, left out at 0).
	hapi := openapitest.New(t, "http://"+h.http)
	var anaPart map[string]any
	nodetest.WaitFor(t, "ana's partition's replication lag to reach 0 in "+h.id+"'s status", 10*time.Second, func() bool {
		hs := hapi.Call(t, "GET /v1/cluster", "/v1/cluster", h.n.AdminToken(), nil, http.StatusOK)
		hps, _ := hs["partitions"].([]any)
		for _, p := range hps {
			if m := p.(map[string]any); int(m["partition"].(float64)) == h.n.PartitionOf("ana") {
				anaPart = m
			}
		}
		return anaPart != nil && anaPart["unacked_batches"] == nil
	})
	if anaPart["role"] != "owner" || anaPart["standby"] != other.id || anaPart["acked_seq"] == nil || anaPart["acked_seq"].(float64) < 1 {
		t.Fatalf("ana's partition in %s's status: %v", h.id, anaPart)
	}
	reply, err := bo.Send(ctx, []string{"ana"}, []byte("reply"))
	if err != nil {
		t.Fatal(err)
	}
	if m := firstDeliver(t, ana, reply.ID); m == nil || string(m.Body) != "reply" {
		t.Fatalf("ana got %+v", m)
	}

	// ana's node stops: the other, the standby of ana's partition, takes
	// it over, with ana's stream as it was; ana's client reconnects there
	// and sends again, acknowledged once the stopped node, back, follows
	// the partitions again (ack-replicas 1).
	if err := h.halt(); err != nil {
		t.Fatalf("%s: %v", h.id, err)
	}
	nodetest.WaitFor(t, other.id+" to serve every partition", 20*time.Second, func() bool {
		return len(servedBy(other.n)) == testPartitions
	})
	if got := streamBodies(t, other.n, "ana"); !slices.Equal(got, []string{"reply"}) {
		t.Fatalf("ana's stream on %s after the takeover: %q", other.id, got)
	}
	h = runPartNode(t, coord, log, h.id, h.dir, h.http, h.sock, nil)
	res2, err := ana.Send(ctx, []string{to}, []byte("after the takeover"))
	if err != nil {
		t.Fatal(err)
	}
	if m := firstDeliver(t, bo, res2.ID); m == nil || string(m.Body) != "after the takeover" {
		t.Fatalf("%s got %+v", to, m)
	}
	// The roles even out again, and to's stream is whole on the node
	// serving it then.
	nodetest.WaitFor(t, "each node to own two partitions again", 60*time.Second, func() bool {
		return len(servedBy(h.n)) == 2 && len(servedBy(other.n)) == 2
	})
	at := h.n
	if at.Engines()[at.PartitionOf(to)] == nil {
		at = other.n
	}
	if got := streamBodies(t, at, to); !slices.Equal(got, []string{"across nodes", "after the takeover"}) {
		t.Fatalf("%s's stream: %q", to, got)
	}
}

// writerFunc is an io.Writer.
type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// streamBodies returns the bodies of the messages in user's stream on n
// (its partition's engine there), in order.
func streamBodies(t *testing.T, n *node.Node, user string) []string {
	t.Helper()
	e := n.Engines()[n.PartitionOf(user)]
	if e == nil {
		t.Fatalf("%s's partition is not served on this node", user)
	}
	es, err := e.Range(user, 1, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, en := range es {
		if en.Kind == engine.EntryMessage && en.Message != nil {
			out = append(out, string(en.Message.Body))
		}
	}
	return out
}

// Two nodes of partitions on a real redis-server share the org's SMS
// budget (cluster.RedisBudget): with a budget of 2, DINGs from senders
// on both nodes send two SMS in all, and the others are refused for the
// budget, where each node counting its own would have sent up to 2 each.
func TestClusterPartitionsShareTheSMSBudgetInRedis(t *testing.T) {
	coord, closeRedis, err := cluster.DialRedis(cluster.RedisConfig{URL: "redis://" + redistest.Start(t).Addr})
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	fake := twiliotest.NewServer(sid, token)
	t.Cleanup(fake.Close)
	a, b := startPartCluster(t, coord, testLog(t), func(mc *node.MemberConfig) {
		mc.Node.Twilio = twilio.Config{AccountSID: sid, AuthToken: token, From: fromNum, PublicURL: "http://127.0.0.1:1", APIURL: fake.URL(), Timeout: 300 * time.Millisecond}
		mc.Node.Quotas = engine.Quotas{RecipientInterval: -1, SMSPerDay: 2}
	})
	users := []fanout.User{{ID: "bo", Name: "Bo", Phone: boPhone}}
	for _, u := range []string{"ana", "cy", "di", "ed", "flo", "gus", "hal"} {
		users = append(users, fanout.User{ID: u, Name: u})
	}
	addClusterUsers(t, a, []partNode{a, b}, users...)
	// A sender on each node.
	senderOn := func(pn partNode) (string, *dingNode) {
		for _, u := range users[1:] {
			if pn.n.Engines()[pn.n.PartitionOf(u.ID)] != nil {
				return u.ID, &dingNode{n: pn.n, twilio: fake}
			}
		}
		t.Fatalf("no sender on %s", pn.id)
		return "", nil
	}
	fromA, onA := senderOn(a)
	fromB, onB := senderOn(b)
	ding := func(d *dingNode, from string) string {
		t.Helper()
		code, out, _ := d.api(t, "POST", "/v1/dings", map[string]any{"from": from, "to": []string{"bo"}, "text": "from " + from, "policy": "sms"})
		if code != http.StatusCreated {
			t.Fatalf("%s's DING: %d %v", from, code, out)
		}
		return out["id"].(string)
	}
	refused := func(d *dingNode, id string) {
		t.Helper()
		d.waitEvent(t, id, 0, "quota_refused")
		if _, _, raw := d.recipient(t, id, 0); !strings.Contains(fmt.Sprint(raw["events"]), engine.ReasonSMSBudget) {
			t.Fatalf("bo's ledger = %v, want the SMS step refused for the budget", raw)
		}
	}
	// a's first SMS takes a block of the org's count in Redis, granted
	// up to the limit (both sends); b, counting from Redis, has none left
	// (a budget per node would have let it send); a sends its second, and
	// its third is refused.
	ding(onA, fromA)
	onA.waitRequests(t, "sms", 1)
	refused(onB, ding(onB, fromB))
	ding(onA, fromA)
	onA.waitRequests(t, "sms", 2)
	refused(onA, ding(onA, fromA))
	if n := fake.Count("sms"); n != 2 {
		t.Fatalf("%d SMS sent with a budget of 2", n)
	}
	// Each node serves its Redis client's metrics once, not per
	// partition: no partition label.
	for _, pn := range []partNode{a, b} {
		fams, err := parseExposition(get(t, "http://"+pn.http+"/metrics", ""))
		if err != nil {
			t.Fatal(err)
		}
		f, ok := fams["ding_redis_commands_total"]
		if _, labelled := f.labels["partition"]; !ok || labelled || !slices.Contains(sortedKeys(f.labels["result"]), "ok") {
			t.Errorf("%s's ding_redis_commands_total: %+v", pn.id, f)
		}
	}
}

// standbyGaps records, from a MemCoord's every change of roles, the
// standby places that moved and the gaps: a partition's standby name
// gone ("") while its owner stayed (not the standby that took the
// partition over, whose name the new owner clears).
type standbyGaps struct {
	mu    sync.Mutex
	last  map[cluster.Partition][2]string
	moves int
	from  map[string]int // moves by the standby that gave the place up
	gaps  []string
}

func watchStandbyPlaces(c *cluster.MemCoord) *standbyGaps {
	g := &standbyGaps{last: map[cluster.Partition][2]string{}, from: map[string]int{}}
	c.Watch(func(p cluster.Partition, holder, standby string) {
		g.mu.Lock()
		defer g.mu.Unlock()
		prev := g.last[p]
		g.last[p] = [2]string{holder, standby}
		if holder == "" || holder != prev[0] || prev[1] == "" || prev[1] == holder || prev[1] == standby {
			return
		}
		if standby == "" {
			g.gaps = append(g.gaps, fmt.Sprintf("partition %d: owner %s, standby %s, then none", p, holder, prev[1]))
			return
		}
		g.moves++
		g.from[prev[1]]++
	})
	return g
}

// check fails t on a gap, or when fewer than minMoves places moved, or
// fewer than minFrom[node] from node.
func (g *standbyGaps) check(t *testing.T, minMoves int, minFrom map[string]int) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.gaps) > 0 {
		t.Errorf("a standby place left its partition without a standby: %q", g.gaps)
	}
	if g.moves < minMoves {
		t.Errorf("%d standby places moved, want at least %d", g.moves, minMoves)
	}
	for n, min := range minFrom {
		if g.from[n] < min {
			t.Errorf("%d standby places moved from %s, want at least %d", g.from[n], n, min)
		}
	}
	t.Logf("standby places moved: %d, by the node giving them up: %v", g.moves, g.from)
}

// Three nodes of partitions; c, holding roles, is drained (dingctl
// cluster drain): its partitions are handed over to their standbys and
// its standby places taken by the other nodes, it takes no role again,
// and a message between users of its former partitions is acknowledged
// and delivered. A node owning a partition with no standby refuses to
// drain. Standby places move (c taking some as it joins, a and b taking
// c's back) through the history: at no change of roles does a
// partition's standby name go while its owner stays.
func TestClusterPartitionsDrain(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	ctx := context.Background()
	log := testLog(t)
	// Nothing here dies, so a lease of 2s, not the tests' usual 1s:
	// under make test's load a test process has stalled for a second,
	// every lease lapsed and the send after the drain found its
	// partition between owners (UNAVAILABLE).
	ttl := func(mc *node.MemberConfig) { mc.LeaseTTL = 2 * time.Second }
	gaps := watchStandbyPlaces(coord)
	a := runPartNode(t, coord, log, "a", t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t), ttl)
	nodetest.WaitFor(t, "a to found every partition", 20*time.Second, func() bool { return len(servedBy(a.n)) == testPartitions })
	drain := func(pn partNode) int {
		req, _ := http.NewRequest("POST", "http://"+pn.http+"/v1/cluster/drain", nil)
		req.Header.Set("Authorization", "Bearer "+pn.n.AdminToken())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := drain(a); code != http.StatusConflict {
		t.Fatalf("drain of the only node: %d, want 409", code)
	}
	b := runPartNode(t, coord, log, "b", t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t), ttl)
	c := runPartNode(t, coord, log, "c", t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t), ttl)
	roles := func() (owner, standby [testPartitions]string) {
		for p := range testPartitions {
			owner[p], _, _ = coord.Lease(ctx, cluster.Partition(p))
			standby[p], _ = coord.Standby(ctx, cluster.Partition(p))
		}
		return owner, standby
	}
	nodetest.WaitFor(t, "c to own a partition and follow one, every partition with a standby", 90*time.Second, func() bool {
		o, s := roles()
		owns, follows := 0, 0
		for p := range testPartitions {
			if o[p] == "" || s[p] == "" || o[p] == s[p] {
				return false
			}
			if o[p] == "c" {
				owns++
			}
			if s[p] == "c" {
				follows++
			}
		}
		return owns > 0 && follows > 0
	})
	if code := drain(c); code != http.StatusAccepted {
		t.Fatalf("drain of c: %d, want 202", code)
	}
	// c's standby places when drained: each must move through the
	// history (a and b take them), none be let go.
	followedByC := 0
	if _, s := roles(); true {
		for _, sb := range s {
			if sb == "c" {
				followedByC++
			}
		}
	}
	nodetest.WaitFor(t, "c to hold no role, every partition owned and followed by a and b", 60*time.Second, func() bool {
		o, s := roles()
		for p := range testPartitions {
			if o[p] == "" || s[p] == "" || o[p] == "c" || s[p] == "c" || o[p] == s[p] {
				return false
			}
		}
		return len(servedBy(c.n)) == 0
	})
	// Each node's /metrics says what its member of each partition does:
	// c is drained in every one (the directory's included), and a and b
	// own and follow what the coordinator says (their standby_seq below,
	// once a message is written).
	nodetest.WaitFor(t, "the nodes' metrics to show the roles", 10*time.Second, func() bool {
		o, s := roles()
		for p := range testPartitions + 1 {
			label := strconv.Itoa(p)
			if p == testPartitions {
				label = "dir"
			}
			if metricValue(t, c.n, `ding_cluster_member_state{partition="`+label+`",state="drained"}`) != 1 {
				return false
			}
			if p == testPartitions {
				continue
			}
			for _, pn := range []partNode{a, b} {
				owner := metricValue(t, pn.n, `ding_cluster_member_state{partition="`+label+`",state="owner"}`)
				standby := metricValue(t, pn.n, `ding_cluster_member_state{partition="`+label+`",state="standby"}`)
				if (owner == 1) != (o[p] == pn.id) || (standby == 1) != (s[p] == pn.id) {
					return false
				}
				if s[p] == pn.id && metricValue(t, pn.n, `ding_cluster_standby_seq{partition="`+label+`"}`) < 0 {
					return false // not there (0: no batch written yet)
				}
			}
		}
		return true
	})
	users := []string{"ana", "bo", "cy", "di", "ed", "flo", "gus", "hal"}
	addClusterUsers(t, c, []partNode{a, b, c}, named(users...)...)
	addrs := a.n.SocketAddr() + "," + b.n.SocketAddr()
	dial := func(user string) *client.Client {
		cl, err := client.Dial(ctx, client.Config{Addr: addrs, Token: nodetest.Token(t, a.n, user, "phone"), Device: "phone"})
		if err != nil {
			t.Fatalf("dial %s: %v", user, err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	ana, bo := dial("ana"), dial("bo")
	res, err := ana.Send(ctx, []string{"bo"}, []byte("after the drain"))
	if err != nil {
		t.Fatal(err)
	}
	if m := firstDeliver(t, bo, res.ID); m == nil || string(m.Body) != "after the drain" {
		t.Fatalf("bo got %+v", m)
	}
	// ana's partition's standby holds the batch (acknowledged: it must)
	// and says so on /metrics.
	anaP := a.n.PartitionOf("ana")
	_, sb := roles()
	follower := a
	if sb[anaP] == b.id {
		follower = b
	}
	if v := metricValue(t, follower.n, `ding_cluster_standby_seq{partition="`+strconv.Itoa(anaP)+`"}`); v < 1 {
		t.Fatalf("%s, the standby of ana's partition %d, shows ding_cluster_standby_seq %v after an acknowledged send", follower.id, anaP, v)
	}
	// c stays out: after the send, it still holds no role.
	o, s := roles()
	for p := range testPartitions {
		if o[p] == "c" || s[p] == "c" {
			t.Fatalf("drained c took a role again: owners %q, standbys %q", o, s)
		}
	}
	gaps.check(t, 1, map[string]int{"c": followedByC})
}

// The directory is the cluster's: a user offboarded through the node
// that does not own the directory's partition is removed on every node,
// their connections closed wherever they are and their tokens refused
// everywhere; when the node owning the directory's partition stops, the
// other takes it over, and once the stopped node is back (its standby:
// ack-replicas 1) a change made through it is seen by both. The time
// from the offboarding request to the connections closed is logged.
func TestClusterDirectoryAcrossNodes(t *testing.T) {
	// On a real redis-server: its blocking stream reads (a MemCoord's
	// standby polls every quarter lease) make the offboarding's latency
	// measured here the one a cluster has.
	coord, closeRedis, err := cluster.DialRedis(cluster.RedisConfig{URL: "redis://" + redistest.Start(t).Addr})
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	ctx := context.Background()
	log := testLog(t)
	a, b := startPartCluster(t, coord, log, nil)
	nodes := map[string]*partNode{"a": &a, "b": &b}
	dirOwner := func() *partNode {
		h, _, _ := coord.Lease(ctx, cluster.Partition(testPartitions))
		return nodes[h]
	}
	own := dirOwner()
	if own == nil {
		t.Fatal("the directory's partition has no owner")
	}
	other := &a
	if own == &a {
		other = &b
	}
	users := []string{"ana", "bo", "cy", "di", "ed", "flo", "gus", "hal"}
	addClusterUsers(t, *other, []partNode{a, b}, named(users...)...)

	// Each user connected, wherever their partition is served.
	addrs := a.n.SocketAddr() + "," + b.n.SocketAddr()
	clients := map[string]*client.Client{}
	for _, u := range users {
		c, err := client.Dial(ctx, client.Config{Addr: addrs, Token: nodetest.Token(t, a.n, u, "phone"), Device: "phone"})
		if err != nil {
			t.Fatalf("dial %s: %v", u, err)
		}
		t.Cleanup(func() { c.Close() })
		clients[u] = c
	}
	// Offboard, through the node not owning the directory, a user served
	// by each node.
	var gone []string
	for _, pn := range []*partNode{&a, &b} {
		for _, u := range users {
			if pn.n.Engines()[pn.n.PartitionOf(u)] != nil && !slices.Contains(gone, u) {
				gone = append(gone, u)
				break
			}
		}
	}
	start := time.Now()
	for _, u := range gone {
		req, _ := http.NewRequest("DELETE", "http://"+other.http+"/v1/users/"+u, nil)
		req.Header.Set("Authorization", "Bearer "+other.n.AdminToken())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			t.Fatalf("offboard %s through %s: %s", u, other.id, resp.Status)
		}
	}
	answered := time.Since(start)
	for _, u := range gone {
		select {
		case _, ok := <-clients[u].Entries():
			for ok {
				_, ok = <-clients[u].Entries()
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s's connection stayed open after the offboarding", u)
		}
		if err := clients[u].Err(); err == nil || !strings.Contains(err.Error(), "USER_REMOVED") {
			t.Fatalf("%s's client ended with %v, want USER_REMOVED", u, err)
		}
	}
	t.Logf("offboarded %v through %s (the directory's partition on %s): answered in %v, their connections on both nodes closed %v after the first request", gone, other.id, own.id, answered.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	for _, pn := range []*partNode{&a, &b} {
		for _, u := range gone {
			if pn.n.Directory().Active(u) {
				t.Fatalf("%s is still active on %s", u, pn.id)
			}
			if _, err := client.Dial(ctx, client.Config{Addr: pn.n.SocketAddr(), Token: nodetest.Token(t, a.n, u, "tablet"), Device: "tablet"}); err == nil {
				t.Fatalf("%s, offboarded, connected to %s", u, pn.id)
			}
		}
	}

	// The directory's owner stops; the other takes the directory over;
	// the stopped node comes back and a change through it reaches both.
	if err := own.halt(); err != nil {
		t.Fatal(err)
	}
	survivor := other
	nodetest.WaitFor(t, survivor.id+" to own the directory's partition", 20*time.Second, func() bool { return dirOwner() == survivor })
	*own = runPartNode(t, coord, log, own.id, own.dir, own.http, own.sock, nil)
	addClusterUsers(t, *own, []partNode{a, b}, named("ivy")...)
	for _, u := range gone {
		if a.n.Directory().Active(u) || b.n.Directory().Active(u) {
			t.Fatalf("%s is active again after the directory's takeover", u)
		}
	}
}

// Twilio's callbacks reach the node owning the DING's partition: with
// the org's public URL on node a, a DING whose sender's partition b
// serves gets its SMS's delivery status (posted to a) in its ledger on
// b, and the recipient's SMS reply (posted to a) confirms it.
func TestClusterTwilioCallbacksReachTheDingsNode(t *testing.T) {
	coord, closeRedis, err := cluster.DialRedis(cluster.RedisConfig{URL: "redis://" + redistest.Start(t).Addr})
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	ctx := context.Background()
	fake := twiliotest.NewServer(sid, token)
	t.Cleanup(fake.Close)
	var public string // a's HTTP port: where Twilio posts, for every node
	a, b := startPartCluster(t, coord, testLog(t), func(mc *node.MemberConfig) {
		if public == "" {
			public = "http://" + mc.Node.HTTPAddr
		}
		mc.Node.Twilio = twilio.Config{AccountSID: sid, AuthToken: token, From: fromNum, PublicURL: public, APIURL: fake.URL(), Timeout: 300 * time.Millisecond}
		mc.Node.Quotas = engine.Quotas{RecipientInterval: -1}
	})
	if public != "http://"+a.http {
		t.Fatalf("the public URL is %s, not a's", public)
	}
	users := []fanout.User{{ID: "bo", Name: "Bo", Phone: boPhone}}
	for _, u := range []string{"ana", "cy", "di", "ed", "flo", "gus", "hal"} {
		users = append(users, fanout.User{ID: u, Name: u})
	}
	addClusterUsers(t, a, []partNode{a, b}, users...)
	from := ""
	for _, u := range users[1:] {
		if b.n.Engines()[b.n.PartitionOf(u.ID)] != nil {
			from = u.ID
			break
		}
	}
	if from == "" {
		t.Fatal("no sender on b")
	}
	onB := &dingNode{n: b.n, twilio: fake}
	code, out, _ := onB.api(t, "POST", "/v1/dings", map[string]any{"from": from, "to": []string{"bo"}, "text": "disk full", "policy": "sms"})
	if code != http.StatusCreated {
		t.Fatalf("DING: %d %v", code, out)
	}
	id := out["id"].(string)
	sms := onB.waitRequests(t, "sms", 1)[0]
	if !strings.HasPrefix(sms.StatusCallback, public+"/twilio/") {
		t.Fatalf("the SMS's status callback is %q, want under %s", sms.StatusCallback, public)
	}
	if code, _, err := fake.SMSStatus(ctx, sms.SID, "delivered", ""); err != nil || code != http.StatusOK {
		t.Fatalf("the status callback to a: %d %v", code, err)
	}
	onB.waitEvent(t, id, 0, "sms_delivered")
	if code, _, err := fake.Reply(ctx, public+"/twilio/sms/inbound", boPhone, fromNum, "1"); err != nil || code != http.StatusOK {
		t.Fatalf("the reply to a: %d %v", code, err)
	}
	onB.waitEvent(t, id, 0, "confirmed")
	// The route between nodes takes the cluster secret and a known kind.
	for _, c := range []struct {
		auth, body string
		want       int
	}{
		{"", `{"kind":"status","ref":"SM1"}`, http.StatusUnauthorized},
		{"Bearer not-the-secret", `{"kind":"status","ref":"SM1"}`, http.StatusUnauthorized},
		{"Bearer per-partition-secret", `{"kind":"nonsense"}`, http.StatusBadRequest},
		{"Bearer per-partition-secret", `not json`, http.StatusBadRequest},
		{"Bearer per-partition-secret", `{"kind":"status","ref":"SMunknown","event":1}`, http.StatusNotFound},
	} {
		req, _ := http.NewRequest("POST", "http://"+b.http+"/cluster/reports", strings.NewReader(c.body))
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("POST /cluster/reports %q (%q): %d, want %d", c.body, c.auth, resp.StatusCode, c.want)
		}
	}
}

// A named policy set through one node of a cluster of partitions is
// stored by every partition, whichever node serves it: a DING from a
// sender of each node's partitions uses it.
func TestClusterPolicySetOnEveryPartition(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	a, b := startPartCluster(t, coord, testLog(t), nil)
	on := func(pn partNode) *dingNode { return &dingNode{n: pn.n} }
	if code, out, _ := on(a).api(t, "PUT", "/v1/policies/night", map[string]any{"policy": "inapp,sms@5m until=confirmed"}); code >= 300 {
		t.Fatalf("PUT /v1/policies/night through a: %d %v", code, out)
	}
	for _, pn := range []partNode{a, b} {
		for p, e := range pn.n.Engines() {
			if e == nil {
				continue
			}
			if _, err := e.Policy("night"); err != nil {
				t.Fatalf("partition %d on %s lacks the policy set through a: %v", p, pn.id, err)
			}
		}
	}
	// Bad input between nodes is refused.
	req, _ := http.NewRequest("POST", "http://"+b.http+"/cluster/policies", strings.NewReader(`{"name":"x","policy":"teleport@1s"}`))
	req.Header.Set("Authorization", "Bearer per-partition-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a bad policy between nodes: %d, want 400", resp.StatusCode)
	}
}

// The admin statistics of a cluster of partitions count every
// partition, whichever node is asked: messages sent by users of every
// partition, on both nodes, are all in GET /v1/stats on either. A
// retention sweep asked of either sweeps every partition (it answers 503
// when a partition went unswept).
func TestClusterStatsCountEveryPartition(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	ctx := context.Background()
	a, b := startPartCluster(t, coord, testLog(t), nil)
	users := []string{"ana", "bo", "cy", "di", "ed", "flo", "gus", "hal"}
	addClusterUsers(t, a, []partNode{a, b}, named(users...)...)
	sent := 0
	for i, u := range users {
		for _, pn := range []partNode{a, b} {
			if e := pn.n.Engines()[pn.n.PartitionOf(u)]; e != nil {
				if _, err := e.Submit(ctx, engine.Submission{From: u, To: []string{users[(i+1)%len(users)]}, Kind: engine.KindText, Body: []byte("hi")}); err != nil {
					t.Fatal(err)
				}
				sent++
			}
		}
	}
	if sent != len(users) {
		t.Fatalf("sent %d messages, want one from each of %d users", sent, len(users))
	}
	for _, pn := range []partNode{a, b} {
		var got float64
		nodetest.WaitFor(t, "GET /v1/stats on "+pn.id+" to count every message", 10*time.Second, func() bool {
			code, out, _ := (&dingNode{n: pn.n}).api(t, "GET", "/v1/stats", nil)
			if code != http.StatusOK {
				t.Fatalf("GET /v1/stats on %s: %d %v", pn.id, code, out)
			}
			total, _ := out["total"].(map[string]any)
			counts, _ := total["counts"].(map[string]any)
			got, _ = counts["messages_sent"].(float64)
			return int(got) == sent
		})
		if code, out, _ := (&dingNode{n: pn.n}).api(t, "POST", "/v1/retention/sweep", nil); code != http.StatusOK {
			t.Fatalf("POST /v1/retention/sweep on %s: %d %v", pn.id, code, out)
		}
	}
}

// A partition handed over while a user of another partition sends into
// it. The relay's backoff is an hour here, and the new owner's attach of
// the partition is held back until a relay to it has been refused, so
// what the sender's node could not relay meanwhile can only go because
// the new owner's announcement (cluster.Announcer) woke the relay: every
// message is delivered, once and in order, long before the hour.
func TestClusterRelayToAMovedPartitionGoesAtOnce(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	ctx := context.Background()
	// The node handed over asks the new owner to continue from its own
	// history while the new owner still attaches (held): it is told 421
	// and must ask again, not copy a snapshot.
	askedEarly := make(chan struct{})
	log := slog.New(&noticeHandler{Handler: testLog(t).Handler(), msg: "the owner does not serve the partition yet; asking it again to continue from this member's history",
		seen: askedEarly, once: new(sync.Once)})
	var hold atomic.Int64 // 1 + the partition whose attach waits for release
	release := make(chan struct{})
	a, b := startPartCluster(t, coord, log, func(mc *node.MemberConfig) {
		node.SetRelayBackoff(&mc.Node, time.Hour, time.Hour)
		node.SetBeforeAttach(&mc.Node, func(p uint32) {
			if hold.Load() == int64(p)+1 {
				<-release
			}
		})
	})
	// Released before the nodes stop (cleanups run last first), also when
	// the test fails while the attach is held.
	let := sync.OnceFunc(func() { close(release) })
	t.Cleanup(let)
	users := []string{"ana", "bo", "cy", "di", "ed", "flo", "gus", "hal"}
	addClusterUsers(t, b, []partNode{a, b}, named(users...)...)
	h, other := a, b
	if h.n.Engines()[h.n.PartitionOf("ana")] == nil {
		h, other = b, a
	}
	// to: a user of the other partition ana's node owns; it moves to the
	// other node, and ana's node relays to it from then on.
	to := ""
	for _, u := range users[1:] {
		if p := h.n.PartitionOf(u); p != h.n.PartitionOf("ana") && h.n.Engines()[p] != nil {
			to = u
			break
		}
	}
	if to == "" {
		t.Fatalf("no user among %v in ana's node's other partition", users)
	}
	moving := h.n.PartitionOf(to)
	both := a.n.SocketAddr() + "," + b.n.SocketAddr()
	dial := func(user string) *client.Client {
		c, err := client.Dial(ctx, client.Config{Addr: both, Token: nodetest.Token(t, h.n, user, "phone"), Device: "phone", MaxBackoff: 50 * time.Millisecond})
		if err != nil {
			t.Fatalf("dial %s: %v", user, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ana, rc := dial("ana"), dial(to)
	got := receive(rc)
	var sent []string
	send := func() {
		t.Helper()
		res, err := ana.Send(ctx, []string{to}, []byte(fmt.Sprintf("message %d", len(sent))))
		if err != nil {
			t.Fatalf("send %d: %v", len(sent), err)
		}
		sent = append(sent, res.ID)
	}
	for range 3 {
		send()
	}
	hold.Store(int64(moving) + 1)
	if code, apiErr := clusterCall(t, "POST", fmt.Sprintf("http://%s/v1/cluster/handover?p=%d", h.http, moving), h.n.AdminToken()); code != http.StatusAccepted {
		t.Fatalf("hand-over of partition %d: %d %v", moving, code, apiErr)
	}
	// The other node holds the lease and is attaching the partition (held
	// back): what ana sends now is acknowledged in her partition, and its
	// relay is refused.
	nodetest.WaitFor(t, other.id+" to take partition "+strconv.Itoa(moving)+"'s lease", 20*time.Second, func() bool {
		holder, _, _ := coord.Lease(ctx, cluster.Partition(moving))
		return holder == other.id
	})
	for range 3 {
		send()
	}
	refused := func() float64 {
		return metricSum(t, h.n, "ding_relay_apply_errors_total", fmt.Sprintf(`to="%d"`, moving))
	}
	nodetest.WaitFor(t, "a relay to the moving partition to be refused", 20*time.Second, func() bool { return refused() > 0 })
	select {
	case <-askedEarly:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not ask the new owner, still attaching, to continue from its history within 20s", h.id)
	}
	let()
	for deadline := time.Now().Add(20 * time.Second); other.n.Engines()[moving] == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s does not serve partition %d 20s after its hand-over", other.id, moving)
		}
	}
	for range 3 {
		send()
	}
	got.wait(t, 30*time.Second, func(count map[string]int, _ []string) bool { return len(count) == len(sent) }, func() string {
		count, _ := got.snapshot()
		return fmt.Sprintf("%d of %d messages delivered 30s after the hand-over (relays refused: %v): the relay waits for its hour's backoff", len(count), len(sent), refused())
	})
	count, order := got.snapshot()
	for _, id := range sent {
		if count[id] != 1 {
			t.Fatalf("message %s delivered %d times", id, count[id])
		}
	}
	if !slices.Equal(order, sent) {
		t.Fatalf("delivered in the order %v, sent %v", order, sent)
	}
	t.Logf("%d messages through the hand-over of partition %d, %v relays refused meanwhile", len(sent), moving, refused())
	// The node handed over follows its successor from its own history,
	// without a snapshot (cluster.Owner.Continues), and says so.
	nodetest.WaitFor(t, h.id+" to follow partition "+strconv.Itoa(moving)+" from its own history", 20*time.Second, func() bool {
		return metricSum(t, h.n, "ding_cluster_standby_joins_total", fmt.Sprintf(`from="own_history",partition="%d"`, moving)) == 1
	})
}

// dirHeldCluster is startPartCluster (mod applied to both nodes) whose
// directory copies can be held back: own owns the directory's
// partition, lag does not; hold stops lag's copy before it applies the
// owner's next changes, let releases it (idempotent; deferred before the
// nodes stop).
func dirHeldCluster(t *testing.T, mod func(*node.MemberConfig)) (a, b, own, lag partNode, hold, let func()) {
	t.Helper()
	coord := cluster.NewMemCoord(time.Now)
	var holdOn atomic.Value // the id of the node whose copy is held
	holdOn.Store("")
	release := make(chan struct{})
	var once sync.Once
	let = func() { once.Do(func() { holdOn.Store(""); close(release) }) }
	a, b = startPartCluster(t, coord, testLog(t), func(mc *node.MemberConfig) {
		if mod != nil {
			mod(mc)
		}
		id := mc.ID
		node.SetBeforeDirApply(&mc.Node, func() {
			if holdOn.Load() == id {
				<-release
			}
		})
	})
	h, _, _ := coord.Lease(context.Background(), cluster.Partition(testPartitions))
	own, lag = a, b
	if h == b.id {
		own, lag = b, a
	}
	return a, b, own, lag, func() { holdOn.Store(lag.id) }, let
}

// metricSum scrapes n's /metrics and sums the series of name whose
// labels contain label (e.g. `to="2"`).
func metricSum(t *testing.T, n *node.Node, name, label string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + n.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for line := range strings.SplitSeq(string(raw), "\n") {
		series, v, ok := strings.Cut(line, " ")
		if !ok || (series != name && !strings.HasPrefix(series, name+"{")) || !strings.Contains(series, label) {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("%s: %v", series, err)
		}
		sum += f
	}
	return sum
}

// The first node of a cluster records its partition count in the
// coordinator; a node started later with another count, or as a cluster
// of one partition, is refused with a clear error before it serves,
// even when no member of the cluster is running to compare with.
func TestClusterRefusesAnotherPartitionCount(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	log := testLog(t)
	a := runPartNode(t, coord, log, "a", t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t), nil)
	if err := a.halt(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{0, 2, 8} {
		mc := node.MemberConfig{
			Node:  node.Config{DataDir: t.TempDir(), SocketAddr: nodetest.FreeAddr(t), HTTPAddr: nodetest.FreeAddr(t), Logger: log, Partitions: p},
			Coord: coord, ID: "b", Secret: "per-partition-secret", LeaseTTL: time.Second,
			Started: func(*node.Node) { t.Errorf("a node of %d partitions started in a cluster of %d", p, testPartitions) },
		}
		mc.Advertise = "http://" + mc.Node.HTTPAddr
		err := node.RunMember(context.Background(), mc)
		want := fmt.Sprintf("the cluster was created with %d partitions, this node runs %d", testPartitions, max(p, 1))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("a node of %d partitions: %v; want %q", p, err, want)
		}
	}
}

// Two fresh nodes started at the same moment (as a deployment's
// supervisor starts every node of a new cluster): neither holds any
// history, each knows of the other, and one of them (the smaller id)
// founds every partition; the other follows, and the roles even out.
func TestClusterTwoNodesFoundTogether(t *testing.T) {
	t.Run("together", func(t *testing.T) { foundTogether(t, true) })
	// b runs (its files decided) before a, the smaller id, starts: a takes
	// b's files, and founds the partitions.
	t.Run("b first", func(t *testing.T) { foundTogether(t, false) })
}

// foundTogether starts nodes a and b at once (together) or b then a,
// and checks that they found one cluster, with one set of node-wide
// files: the same admin token, and a token signed by either accepted by
// the other.
func foundTogether(t *testing.T, together bool) {
	coord := cluster.NewMemCoord(time.Now)
	log := testLog(t)
	nodes := map[string]partNode{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, id := range []string{"b", "a"} {
		wg.Go(func() {
			pn := runPartNode(t, coord, log, id, t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t), nil)
			mu.Lock()
			nodes[id] = pn
			mu.Unlock()
		})
		if !together {
			wg.Wait() // b started: past deciding its files
		}
	}
	wg.Wait()
	a, b := nodes["a"], nodes["b"]
	if a.n == nil || b.n == nil {
		t.Fatal("a node did not start")
	}
	if a.n.AdminToken() != b.n.AdminToken() {
		t.Fatal("the nodes started with different admin tokens: not one cluster's files")
	}
	nodetest.WaitFor(t, "every partition owned, with a standby on the other node", 60*time.Second, func() bool {
		for p := range testPartitions + 1 {
			h, _, _ := coord.Lease(context.Background(), cluster.Partition(p))
			sb, _ := coord.Standby(context.Background(), cluster.Partition(p))
			if h == "" || sb == "" || h == sb {
				return false
			}
		}
		return len(servedBy(a.n)) > 0 && len(servedBy(b.n)) > 0
	})
	// A token signed by one node is accepted by the other (one signing
	// secret): bo's client, given b's address first, is served wherever
	// his partition is.
	ctx := context.Background()
	addClusterUsers(t, a, []partNode{a, b}, named("ana", "bo")...)
	for _, pair := range [][2]partNode{{a, b}, {b, a}} {
		c, err := client.Dial(ctx, client.Config{Addr: pair[1].n.SocketAddr() + "," + pair[0].n.SocketAddr(), Token: nodetest.Token(t, pair[0].n, "bo", "phone-"+pair[0].id), Device: "phone-" + pair[0].id})
		if err != nil {
			t.Fatalf("a token signed by %s, dialling %s first: %v", pair[0].id, pair[1].id, err)
		}
		c.Close()
	}
}

// A client connecting through a node whose copy of the directory does
// not hold its user yet (created a moment ago through the directory's
// owner) is let in once the copy brings the user, not refused: the
// node's copy is held back here until the handshake is seen waiting
// (ding_cluster_directory_waits_total), then let go, and the dial
// succeeds. A token of a user no node knows is still refused (after the
// wait), and one of a removed user at once.
func TestClusterTokenOfAUserJustCreatedElsewhere(t *testing.T) {
	ctx := context.Background()
	a, b, own, lag, hold, let := dirHeldCluster(t, nil)
	defer let() // before the nodes stop (their cleanups)
	addClusterUsers(t, own, []partNode{a, b}, named("ana")...)
	hold()
	if code, out, _ := (&dingNode{n: own.n}).api(t, "POST", "/v1/users", map[string]any{"id": "zed", "name": "zed"}); code != http.StatusCreated {
		t.Fatalf("add zed through %s: %d %v", own.id, code, out)
	}
	if lag.n.Directory().Active("zed") {
		t.Fatalf("%s's copy holds zed while held back", lag.id)
	}
	dialed := make(chan error, 1)
	go func() {
		c, err := client.Dial(ctx, client.Config{Addr: lag.n.SocketAddr(), Token: nodetest.Token(t, own.n, "zed", "phone"), Device: "phone"})
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	nodetest.WaitFor(t, "the handshake on "+lag.id+" to wait for its copy", 10*time.Second, func() bool {
		select {
		case err := <-dialed:
			t.Fatalf("the dial ended before %s's copy held zed: %v", lag.id, err)
		default:
		}
		return metricSum(t, lag.n, "ding_cluster_directory_waits_total", "") == 1
	})
	let()
	if err := <-dialed; err != nil {
		t.Fatalf("zed, created a moment ago through %s, dialling %s: %v", own.id, lag.id, err)
	}
	refused := func(user string) error {
		_, err := client.Dial(ctx, client.Config{Addr: lag.n.SocketAddr(), Token: nodetest.Token(t, own.n, user, "phone"), Device: "phone"})
		if err == nil || !strings.Contains(err.Error(), "BAD_TOKEN") {
			t.Fatalf("%s dialling %s: %v, want BAD_TOKEN", user, lag.id, err)
		}
		return err
	}
	refused("ghost") // no node knows it: refused once the wait ends
	if code, _, _ := (&dingNode{n: own.n}).api(t, "DELETE", "/v1/users/ana", nil); code != http.StatusOK {
		t.Fatalf("remove ana: %d", code)
	}
	nodetest.WaitFor(t, lag.id+"'s copy to hold ana's removal", 10*time.Second, func() bool { return !lag.n.Directory().Active("ana") })
	refused("ana")
	if n := metricSum(t, lag.n, "ding_cluster_directory_waits_total", ""); n != 2 {
		t.Fatalf("%v handshakes waited for the copy, want 2 (zed's and ghost's, not the removed ana's)", n)
	}
	// The metrics deploy/METRICS.md lists for a cluster of partitions
	// only are served, with their types, by both nodes.
	cat, err := parseCatalogue(catalogueFile)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, pn := range []partNode{a, b} {
		fams, err := parseExposition(get(t, "http://"+pn.http+"/metrics", ""))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range cat {
			if !m.clusterPartitionsOnly {
				continue
			}
			checked++
			if f, ok := fams[m.name]; !ok || f.typ != m.typ {
				t.Errorf("%s (%s line %d, a %s) on %s: %+v", m.name, catalogueFile, m.line, m.typ, pn.id, f)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no metric for a cluster of partitions only in the catalogue: the parsing is broken")
	}
}

// A node whose copy of the directory fell further behind than the
// directory's owner keeps (held back here while the owner keeps 2 KiB)
// takes the owner's snapshot while it runs, without a restart: users
// added meanwhile can connect to it, and a user removed meanwhile is
// refused there and loses the connection it held. It used to stay
// behind, logging that the node needed a restart, and kept accepting the
// removed user.
func TestClusterCopyOfTheDirectoryTooFarBehindTakesTheSnapshot(t *testing.T) {
	ctx := context.Background()
	a, b, own, lag, hold, let := dirHeldCluster(t, func(mc *node.MemberConfig) { node.SetDirKeepRecent(&mc.Node, 2<<10) })
	defer let() // before the nodes stop (their cleanups)
	addClusterUsers(t, own, []partNode{a, b}, named("ana")...)
	// ana holds a connection to the lagging node.
	ana, err := client.Dial(ctx, client.Config{Addr: lag.n.SocketAddr(), Token: nodetest.Token(t, own.n, "ana", "phone"), Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	defer ana.Close()
	hold()
	var added []string
	for i := range 40 {
		id := fmt.Sprintf("user-added-while-%s-was-held-back-%02d", lag.id, i)
		if code, out, _ := (&dingNode{n: own.n}).api(t, "POST", "/v1/users", map[string]any{"id": id, "name": strings.Repeat("n", 100)}); code != http.StatusCreated {
			t.Fatalf("add %s through %s: %d %v", id, own.id, code, out)
		}
		added = append(added, id)
	}
	if code, _, _ := (&dingNode{n: own.n}).api(t, "DELETE", "/v1/users/ana", nil); code != http.StatusOK {
		t.Fatal("remove ana")
	}
	if !lag.n.Directory().Active("ana") || lag.n.Directory().Active(added[len(added)-1]) {
		t.Fatalf("%s's copy moved while held back", lag.id)
	}
	before := metricSum(t, lag.n, "ding_cluster_directory_snapshots_total", "")
	let()
	nodetest.WaitFor(t, lag.id+"'s copy to take the owner's snapshot and hold ana's removal", 20*time.Second, func() bool {
		return !lag.n.Directory().Active("ana") && lag.n.Directory().Active(added[len(added)-1])
	})
	if n := metricSum(t, lag.n, "ding_cluster_directory_snapshots_total", ""); n != before+1 {
		t.Fatalf("ding_cluster_directory_snapshots_total went %v -> %v, want one snapshot", before, n)
	}
	for _, id := range added {
		if !lag.n.Directory().Active(id) {
			t.Fatalf("%s's copy lacks %s after the snapshot", lag.id, id)
		}
	}
	c, err := client.Dial(ctx, client.Config{Addr: lag.n.SocketAddr(), Token: nodetest.Token(t, own.n, added[0], "phone"), Device: "phone"})
	if err != nil {
		t.Fatalf("%s, added while %s was held back, dialling it: %v", added[0], lag.id, err)
	}
	c.Close()
	if _, err := client.Dial(ctx, client.Config{Addr: lag.n.SocketAddr(), Token: nodetest.Token(t, own.n, "ana", "tablet"), Device: "tablet"}); err == nil || !strings.Contains(err.Error(), "BAD_TOKEN") && !strings.Contains(err.Error(), "USER_REMOVED") {
		t.Fatalf("ana, removed, dialling %s: %v, want refused", lag.id, err)
	}
	// The connection ana held is closed with USER_REMOVED.
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-ana.Entries():
			if !ok {
				if err := ana.Err(); err == nil || !strings.Contains(err.Error(), "USER_REMOVED") {
					t.Fatalf("ana's connection to %s ended with %v, want USER_REMOVED", lag.id, err)
				}
				return
			}
		case <-deadline:
			t.Fatalf("ana's connection to %s still open 10s after her removal reached it", lag.id)
		}
	}
}

// muteCoord is a node's view of a shared MemCoord whose acks can be
// lost: while muted, PutAck reports success and records nothing (the
// node's acks never reach the owner).
type muteCoord struct {
	*cluster.MemCoord
	muted atomic.Bool
}

func (c *muteCoord) PutAck(ctx context.Context, p cluster.Partition, a cluster.Ack) error {
	if c.muted.Load() {
		return nil
	}
	return c.MemCoord.PutAck(ctx, p, a)
}

// A standby whose acks stop reaching the owner is dropped by it (writes
// waited 2 lease TTLs); the dropped node, which followed on as if it
// were the standby, notices that the coordinator no longer names it and
// joins again, so the partition gets its standby back and the writes
// that waited are acknowledged. It used to follow on for ever, and with
// no spare node to take the place the partition's writes waited for
// good (make test: TestClusterPartitionsJoinAndDrainUnderLoad, a
// partition without a standby for 90 s with both nodes up).
func TestClusterDroppedStandbyJoinsAgain(t *testing.T) {
	mem := cluster.NewMemCoord(time.Now)
	ctx := context.Background()
	log := testLog(t)
	bc := &muteCoord{MemCoord: mem}
	a := runPartNode(t, mem, log, "a", t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t), nil)
	nodetest.WaitFor(t, "a to found every partition", 20*time.Second, func() bool { return len(servedBy(a.n)) == testPartitions })
	b := runPartNode(t, bc, log, "b", t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t), nil)
	p := -1
	nodetest.WaitFor(t, "a partition owned by a and followed by b", 60*time.Second, func() bool {
		for i := range testPartitions {
			h, _, _ := mem.Lease(ctx, cluster.Partition(i))
			sb, _ := mem.Standby(ctx, cluster.Partition(i))
			if h == "a" && sb == "b" && slices.Contains(servedBy(a.n), i) {
				p = i
				return true
			}
		}
		return false
	})
	user := ""
	for i := 0; user == ""; i++ {
		if u := fmt.Sprintf("u%d", i); a.n.PartitionOf(u) == p {
			user = u
		}
	}
	addClusterUsers(t, a, []partNode{a, b}, named(user)...)
	bc.muted.Store(true)
	sent := make(chan int, 1)
	go func() {
		code, _, _ := (&dingNode{n: a.n}).api(t, "POST", "/v1/messages", map[string]any{"from": user, "to": []string{user}, "text": "waits for a standby"})
		sent <- code
	}()
	nodetest.WaitFor(t, "a to drop b, whose acks stopped, as partition "+strconv.Itoa(p)+"'s standby", 20*time.Second, func() bool {
		sb, _ := mem.Standby(ctx, cluster.Partition(p))
		return sb == ""
	})
	bc.muted.Store(false)
	nodetest.WaitFor(t, "b to be partition "+strconv.Itoa(p)+"'s standby again", 30*time.Second, func() bool {
		sb, _ := mem.Standby(ctx, cluster.Partition(p))
		return sb == "b"
	})
	select {
	case code := <-sent:
		if code != http.StatusOK {
			t.Fatalf("the message that waited for a standby: %d", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the message that waited for a standby was not acknowledged 30s after b was named again")
	}
}

// cutCoord is a node's view of a shared MemCoord from which it can be
// cut off: while cut, it can neither renew nor take a lease (its Redis
// connection gone, as far as its leases go). It is cut off right after
// it appends an entry cutAfter reports true for, if set, and then calls
// onCut.
type cutCoord struct {
	*cluster.MemCoord
	cut      atomic.Bool
	cutAfter func(cluster.Entry) bool
	onCut    func()
}

func (c *cutCoord) Append(ctx context.Context, p cluster.Partition, e cluster.Entry) error {
	err := c.MemCoord.Append(ctx, p, e)
	if c.cutAfter != nil && c.cutAfter(e) && !c.cut.Swap(true) && c.onCut != nil {
		c.onCut()
	}
	return err
}

// cuttableFront is an HTTP front for a node, advertised as its address,
// that can be cut: from then on every connection through it is closed,
// the requests in flight too, so that the others reach the node no more,
// as if it had died.
type cuttableFront struct {
	srv *httptest.Server
	cut context.CancelFunc
}

func newCuttableFront(t *testing.T, target string) *cuttableFront {
	ctx, cancel := context.WithCancel(context.Background())
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ctx.Err() != nil {
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		rctx, stop := context.WithCancel(r.Context())
		defer stop()
		defer context.AfterFunc(ctx, stop)()
		rp.ServeHTTP(w, r.WithContext(rctx))
	}))
	t.Cleanup(func() { cancel(); srv.Close() })
	return &cuttableFront{srv: srv, cut: cancel}
}

var errCut = errors.New("test: cut off from the coordinator")

func (c *cutCoord) RenewLease(ctx context.Context, p cluster.Partition, node string, epoch uint64, ttl time.Duration) (bool, error) {
	if c.cut.Load() {
		return false, errCut
	}
	return c.MemCoord.RenewLease(ctx, p, node, epoch, ttl)
}

func (c *cutCoord) TakeLease(ctx context.Context, p cluster.Partition, node string, floor uint64, ttl time.Duration) (uint64, bool, error) {
	if c.cut.Load() {
		return 0, false, errCut
	}
	return c.MemCoord.TakeLease(ctx, p, node, floor, ttl)
}

// An owner that dies while a standby place of its moves is taken over by
// the standby the coordinator names. Here c takes b's place in one of
// a's partitions (balance: b, the only other node, followed them all),
// and c's acks never arrive, so the move cannot go past the hand-over
// entry; a is cut off as it ships that entry, from the coordinator (its
// leases lapse) and from the other nodes (its advertised address stops
// answering). b, still named, applies the entry as it catches up and
// takes the partition over; once c's acks flow again (b's partitions
// need a standby), the partition takes writes. Before a move had two
// halves, b was demoted by the hand-over entry, and nobody could take
// the partition over while a was away (b, demoted, could only join again
// from a snapshot of a's).
func TestClusterOwnerLostDuringAStandbyMoveIsTakenOver(t *testing.T) {
	mem := cluster.NewMemCoord(time.Now)
	ctx := context.Background()
	log := testLog(t)
	aHTTP := nodetest.FreeAddr(t)
	front := newCuttableFront(t, aHTTP)
	ac := &cutCoord{MemCoord: mem, cutAfter: func(e cluster.Entry) bool { return e.Standby == "c" }, onCut: front.cut}
	cc := &muteCoord{MemCoord: mem}
	cc.muted.Store(true)
	a := runPartNode(t, ac, log, "a", t.TempDir(), aHTTP, nodetest.FreeAddr(t), func(mc *node.MemberConfig) { mc.Advertise = front.srv.URL })
	nodetest.WaitFor(t, "a to found every partition", 20*time.Second, func() bool { return len(servedBy(a.n)) == testPartitions })
	b := runPartNode(t, mem, log, "b", t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t), nil)
	nodetest.WaitFor(t, "b to follow every partition of a's, the directory's too", 60*time.Second, func() bool {
		for i := range testPartitions + 1 {
			if sb, _ := mem.Standby(ctx, cluster.Partition(i)); sb != "b" {
				return false
			}
		}
		return true
	})
	users := named("u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9", "u10", "u11")
	addClusterUsers(t, a, []partNode{a, b}, users...)
	runPartNode(t, cc, log, "c", t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t), nil)
	// The hand-over entry naming c, in a partition's stream.
	p := -1
	nodetest.WaitFor(t, "a to hand one of b's places over to c", 60*time.Second, func() bool {
		for i := range testPartitions {
			es, _, err := mem.Entries(ctx, cluster.Partition(i), "", 1<<20)
			if err != nil {
				continue
			}
			for _, e := range es {
				if e.Standby == "c" {
					p = i
					return true
				}
			}
		}
		return false
	})
	if sb, _ := mem.Standby(ctx, cluster.Partition(p)); sb != "b" {
		t.Fatalf("partition %d's standby is %q with c not acking, want b", p, sb)
	}
	user := ""
	for _, u := range users {
		if a.n.PartitionOf(u.ID) == p {
			user = u.ID
		}
	}
	if user == "" {
		t.Fatalf("none of %d users in partition %d", len(users), p)
	}
	if !ac.cut.Load() {
		t.Fatal("a was not cut off as it shipped the hand-over entry")
	}
	nodetest.WaitFor(t, fmt.Sprintf("b to take partition %d over and serve it", p), 20*time.Second, func() bool {
		h, _, _ := mem.Lease(ctx, cluster.Partition(p))
		return h == "b" && slices.Contains(servedBy(b.n), p)
	})
	cc.muted.Store(false) // b's partitions need a standby to acknowledge anything
	code, _, _ := (&dingNode{n: b.n}).api(t, "POST", "/v1/messages", map[string]any{"from": user, "to": []string{user}, "text": "after the takeover"})
	if code != http.StatusOK {
		t.Fatalf("a message in partition %d after b took it over: %d", p, code)
	}
}

// An admin may use any node: a request about a user or a message of a
// partition another node serves (a message from that user, its
// receipts, the user's devices) is answered by that node, sent on by
// the one asked (ownerProxy), and an error there (an unknown recipient)
// comes back as it is. Before, the node asked answered 500 INTERNAL
// ("internal error; retry") for anything about another node's partition.
func TestClusterAdminAPIAnswersThroughAnyNode(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	log := testLog(t)
	a, b := startPartCluster(t, coord, log, nil)
	users := []string{"ana", "bo", "cy", "di", "ed", "flo", "gus", "hal"}
	addClusterUsers(t, b, []partNode{a, b}, named(users...)...)
	other := a // the node not serving ana's partition
	if a.n.Engines()[a.n.PartitionOf("ana")] != nil {
		other = b
	}
	api := openapitest.New(t, "http://"+other.http)
	tok := other.n.AdminToken()
	sentOn := func() float64 { return metricValue(t, other.n, "ding_cluster_api_sent_on_total") }
	if v := sentOn(); v != 0 {
		t.Fatalf("ding_cluster_api_sent_on_total %v before any request", v)
	}
	out := api.Call(t, "POST /v1/messages", "/v1/messages", tok, map[string]any{"from": "ana", "to": []string{"bo", "cy"}, "text": "through the other node"}, http.StatusOK)
	id, _ := out["id"].(string)
	if id == "" {
		t.Fatalf("no message id in %v", out)
	}
	rc := api.Call(t, "GET /v1/messages/{id}/receipts", "/v1/messages/"+id+"/receipts", tok, nil, http.StatusOK)
	if rc["id"] != id || rc["from"] != "ana" {
		t.Fatalf("receipts of the message through the other node: %v", rc)
	}
	api.Call(t, "GET /v1/users/{id}/devices", "/v1/users/ana/devices", tok, nil, http.StatusOK)
	bad := api.Call(t, "POST /v1/messages", "/v1/messages", tok, map[string]any{"from": "ana", "to": []string{"nobody"}, "text": "x"}, http.StatusUnprocessableEntity)
	if e, _ := bad["error"].(map[string]any); e["code"] != "UNKNOWN_RECIPIENT" {
		t.Fatalf("an unknown recipient through the other node: %v", bad)
	}
	if v := sentOn(); v != 4 {
		t.Fatalf("ding_cluster_api_sent_on_total %v after 4 requests about ana's partition, want 4", v)
	}
	// A request about the node's own partitions is answered there.
	mine := ""
	for _, u := range users {
		if other.n.Engines()[other.n.PartitionOf(u)] != nil {
			mine = u
			break
		}
	}
	if mine == "" {
		t.Fatalf("none of %v on %s", users, other.id)
	}
	api.Call(t, "GET /v1/users/{id}/devices", "/v1/users/"+mine+"/devices", tok, nil, http.StatusOK)
	if v := sentOn(); v != 4 {
		t.Fatalf("ding_cluster_api_sent_on_total %v after a request about %s's own partition, want 4", v, other.id)
	}
}
