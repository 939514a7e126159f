package node_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// Two nodes, each running a member per partition (4 partitions) on one
// MemCoord: the first founds every partition, the second takes the
// cluster's files and follows every partition as its standby; one
// partition is handed over to it. A message and its receipts cross
// between the nodes, a client dialling the node that does not serve its
// user is redirected, and when the first node stops the second takes its
// partitions over with everything acknowledged.
func TestClusterMemberPerPartition(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	const secret = "per-partition-secret"
	type started struct {
		id, dir, http, sock string
		n                   *node.Node
		halt                func() error // stops the node (idempotent), and returns its error
	}
	run := func(id, dir, addr, sock string) started {
		ch := make(chan *node.Node, 1)
		mctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		mc := node.MemberConfig{
			Node:  node.Config{DataDir: dir, SocketAddr: sock, HTTPAddr: addr, Logger: quiet, Partitions: testPartitions},
			Coord: coord, ID: id, Advertise: "http://" + addr, Secret: secret, LeaseTTL: time.Second,
			Started: func(n *node.Node) { ch <- n },
		}
		go func() { done <- node.RunMember(mctx, mc) }()
		var once sync.Once
		var err error
		halt := func() error {
			once.Do(func() { cancel(); err = <-done })
			return err
		}
		select {
		case n := <-ch:
			return started{id, dir, addr, sock, n, halt}
		case err := <-done:
			t.Fatalf("%s: %v", id, err)
		}
		return started{}
	}
	dirA, httpA, sockA := t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t)
	a := run("a", dirA, httpA, sockA)
	defer func() { _ = a.halt() }()
	nodetest.WaitFor(t, "a to found every partition", 20*time.Second, func() bool {
		for _, e := range a.n.Engines() {
			if e == nil {
				return false
			}
		}
		return true
	})
	b := run("b", t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t))
	defer func() {
		if err := b.halt(); err != nil {
			t.Errorf("b: %v", err)
		}
	}()
	if b.n.AdminToken() != a.n.AdminToken() {
		t.Fatal("b did not take the cluster's admin token before starting")
	}
	// The roles even out (balance): each node owns two partitions and
	// follows the other's two.
	served := func(n *node.Node) (ps []int) {
		for p, e := range n.Engines() {
			if e != nil {
				ps = append(ps, p)
			}
		}
		return ps
	}
	nodetest.WaitFor(t, "each node to own two partitions, with a standby each", 60*time.Second, func() bool {
		if len(served(a.n)) != 2 || len(served(b.n)) != 2 {
			return false
		}
		for p := range testPartitions {
			h, _, _ := coord.Lease(ctx, cluster.Partition(p))
			sb, _ := coord.Standby(ctx, cluster.Partition(p))
			if h == "" || sb == "" || h == sb {
				return false
			}
		}
		return true
	})
	// ana and a user of a partition the other node serves.
	users := []string{"ana", "bo", "cy", "di", "ed", "flo", "gus", "hal"}
	for _, n := range []*node.Node{a.n, b.n} { // the directory is each node's own until step 4
		nodetest.AddUsers(t, n, users...)
	}
	home := func(user string) started {
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
	// no partition, with a clear error.
	handover := func(from started, p string) int {
		req, _ := http.NewRequest("POST", "http://"+from.http+"/v1/cluster/handover?p="+p, nil)
		req.Header.Set("Authorization", "Bearer "+from.n.AdminToken())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	other := home(to)
	if code := handover(other, strconv.Itoa(a.n.PartitionOf("ana"))); code != http.StatusConflict {
		t.Fatalf("a hand-over of a partition the node does not own: %d, want 409", code)
	}
	if code := handover(other, "99"); code != http.StatusBadRequest {
		t.Fatalf("a hand-over of partition 99: %d, want 400", code)
	}

	// Status names the roles per partition.
	req, _ := http.NewRequest("GET", "http://"+other.http+"/v1/cluster", nil)
	req.Header.Set("Authorization", "Bearer "+other.n.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Partitions []struct {
			Partition int
			Role      string
		}
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || len(st.Partitions) != testPartitions || st.Partitions[other.n.PartitionOf(to)].Role != "owner" || st.Partitions[a.n.PartitionOf("ana")].Role != "standby" {
		t.Fatalf("%s's status: %+v (%v)", to, st, err)
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
		return len(served(other.n)) == testPartitions
	})
	if got := streamBodies(t, other.n, "ana"); !slices.Equal(got, []string{"reply"}) {
		t.Fatalf("ana's stream on %s after the takeover: %q", other.id, got)
	}
	h = run(h.id, h.dir, h.http, h.sock)
	defer func() { _ = h.halt() }()
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
		return len(served(h.n)) == 2 && len(served(other.n)) == 2
	})
	at := h.n
	if at.Engines()[at.PartitionOf(to)] == nil {
		at = other.n
	}
	if got := streamBodies(t, at, to); !slices.Equal(got, []string{"across nodes", "after the takeover"}) {
		t.Fatalf("%s's stream: %q", to, got)
	}
}

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
