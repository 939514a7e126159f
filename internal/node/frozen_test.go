package node_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// freezer is a TCP proxy on loopback in front of a node's HTTP port that
// can freeze: from Freeze on, it forwards nothing more either way and
// answers nothing, but keeps every connection open and accepts new ones,
// as a node that is paused, or a network that drops every packet, looks
// to the nodes talking to it (no error, no reset: only silence).
type freezer struct {
	ln     net.Listener
	target string
	frozen chan struct{} // closed by Freeze
	once   sync.Once
	held   atomic.Int64 // bytes read while frozen, never forwarded
	mu     sync.Mutex
	conns  []net.Conn
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target, frozen: make(chan struct{})}
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *freezer) addr() string { return f.ln.Addr().String() }

// Freeze stops all forwarding, for good.
func (f *freezer) Freeze() { f.once.Do(func() { close(f.frozen) }) }

func (f *freezer) isFrozen() bool {
	select {
	case <-f.frozen:
		return true
	default:
		return false
	}
}

func (f *freezer) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.track(c)
		go func() {
			u, err := net.Dial("tcp", f.target)
			if err != nil {
				c.Close()
				return
			}
			f.track(u)
			go f.pipe(u, c)
			f.pipe(c, u)
		}()
	}
}

func (f *freezer) track(c net.Conn) {
	f.mu.Lock()
	f.conns = append(f.conns, c)
	f.mu.Unlock()
}

// pipe copies from src to dst until either ends; once the proxy is
// frozen it counts and drops what it reads, and passes nothing on, not
// even src's close (the proxy's own close ends dst).
func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if f.isFrozen() {
				f.held.Add(int64(n))
			} else if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !f.isFrozen() {
				dst.Close() // passed on; once frozen, not even a close gets through
			}
			return
		}
	}
}

func (f *freezer) close() {
	f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
}

// A relay in flight to a node that froze (its process paused, its
// machine hung) is abandoned when the destination partition's new owner
// is announced, and sent again to it; it does not wait for the request
// to time out; so is an admin request a sent on to b. Node b is reached
// by node a only through a proxy, which freezes while a's relay to b's
// partition is in flight; b then hands the partition over to a (the test
// talks to b directly). The relay's timeout is an hour and the admin
// request has none: the message arrives, and the request is answered
// (503: retry), only if a abandons its requests to the frozen b.
func TestClusterRelayLeavesAFrozenOwner(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	ctx := context.Background()
	var proxy *freezer
	a, b := startPartCluster(t, coord, testLog(t), func(mc *node.MemberConfig) {
		node.SetRelayTimeout(&mc.Node, time.Hour)
		if mc.ID == "b" {
			proxy = newFreezer(t, mc.Node.HTTPAddr)
			mc.Advertise = "http://" + proxy.addr()
		}
	})
	users := []string{"ana", "bo", "cy", "di", "ed", "flo", "gus", "hal", "ivy", "jo"}
	addClusterUsers(t, b, []partNode{a, b}, named(users...)...)
	// from: a user of a partition a owns; to: one of a partition b owns.
	from, to := "", ""
	for _, u := range users {
		switch {
		case from == "" && a.n.Engines()[a.n.PartitionOf(u)] != nil:
			from = u
		case to == "" && b.n.Engines()[b.n.PartitionOf(u)] != nil:
			to = u
		}
	}
	if from == "" || to == "" {
		t.Fatalf("users %v: none on a (%q) or none on b (%q)", users, from, to)
	}
	moving := b.n.PartitionOf(to)
	dial := func(user, addrs string) *client.Client {
		c, err := client.Dial(ctx, client.Config{Addr: addrs, Token: nodetest.Token(t, a.n, user, "phone"), Device: "phone", MaxBackoff: 50 * time.Millisecond})
		if err != nil {
			t.Fatalf("dial %s: %v", user, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	sender := dial(from, a.n.SocketAddr())
	rc := dial(to, a.n.SocketAddr()+","+b.n.SocketAddr())
	got := receive(rc)
	delivered := func(id string, within time.Duration, why string) {
		t.Helper()
		got.wait(t, within, func(count map[string]int, _ []string) bool { return count[id] > 0 },
			func() string { return fmt.Sprintf("message %s not delivered within %v: %s", id, within, why) })
	}
	send := func(body string) string {
		t.Helper()
		res, err := sender.Send(ctx, []string{to}, []byte(body))
		if err != nil {
			t.Fatalf("send %q: %v", body, err)
		}
		return res.ID
	}
	// Through the proxy, while it forwards.
	delivered(send("before"), 20*time.Second, "the relay from a to b works")
	// A message homed in the moving partition, for an admin request about
	// it through a (sent on to its owner, ownerProxy).
	homed, err := rc.Send(ctx, []string{from}, []byte("from the moving partition"))
	if err != nil {
		t.Fatal(err)
	}
	proxy.Freeze()
	frozenID := send("while b is frozen") // acknowledged: a's partition and its standby
	nodetest.WaitFor(t, "a's relay request to reach the frozen proxy", 20*time.Second, func() bool { return proxy.held.Load() > 0 })
	// The admin request goes to b (frozen) too, and waits there.
	sentOn := metricSum(t, a.n, "ding_cluster_api_sent_on_total", "")
	answered := make(chan int, 1)
	go func() {
		answered <- getStatus(fmt.Sprintf("http://%s/v1/messages/%s/receipts", a.http, homed.ID), a.n.AdminToken())
	}()
	nodetest.WaitFor(t, "the admin request to be sent on to b", 20*time.Second, func() bool {
		return metricSum(t, a.n, "ding_cluster_api_sent_on_total", "") > sentOn
	})
	// b hands the partition over to a, its standby (asked directly).
	if code, apiErr := clusterCall(t, "POST", fmt.Sprintf("http://%s/v1/cluster/handover?p=%d", b.http, moving), b.n.AdminToken()); code != http.StatusAccepted {
		t.Fatalf("hand-over of partition %d: %d %v", moving, code, apiErr)
	}
	nodetest.WaitFor(t, "a to serve partition "+strconv.Itoa(moving), 20*time.Second, func() bool { return a.n.Engines()[moving] != nil })
	delivered(frozenID, 20*time.Second, "the relay request in flight to the frozen b was not abandoned (its timeout is an hour)")
	// The admin request to the frozen b is abandoned too, with an answer
	// to retry; asked again, a answers it itself.
	select {
	case code := <-answered:
		if code != http.StatusServiceUnavailable {
			t.Fatalf("the admin request sent on to the frozen b: %d, want 503 (retry)", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the admin request sent on to the frozen b still waits 20s after the hand-over")
	}
	if code, apiErr := clusterCall(t, "GET", fmt.Sprintf("http://%s/v1/messages/%s/receipts", a.http, homed.ID), a.n.AdminToken()); code != http.StatusOK {
		t.Fatalf("the admin request asked again: %d %v, want 200 from a", code, apiErr)
	}
	after := send("after the hand-over")
	delivered(after, 20*time.Second, "a relays to itself now")
	count, _ := got.snapshot()
	for id, n := range count {
		if n != 1 {
			t.Fatalf("message %s delivered %d times", id, n)
		}
	}
	if n := metricSum(t, a.n, "ding_relay_apply_errors_total", fmt.Sprintf(`reason="abandoned",to="%d"`, moving)); n < 1 {
		t.Fatalf("%v relay batches to partition %d counted abandoned, want at least 1", n, moving)
	}
}

// received keeps what a client receives (acknowledging each entry): how
// many times each message came, and in which order.
type received struct {
	mu      sync.Mutex
	count   map[string]int
	order   []string
	changed chan struct{} // (capacity 1) a message came
}

// receive starts keeping what c receives.
func receive(c *client.Client) *received {
	r := &received{count: map[string]int{}, changed: make(chan struct{}, 1)}
	go func() {
		for e := range c.Entries() {
			c.Ack(e.Seq)
			if e.Message == nil {
				continue
			}
			r.mu.Lock()
			r.count[e.Message.ID]++
			r.order = append(r.order, e.Message.ID)
			r.mu.Unlock()
			select {
			case r.changed <- struct{}{}:
			default:
			}
		}
	}()
	return r
}

// snapshot returns copies of what came so far.
func (r *received) snapshot() (map[string]int, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.count), slices.Clone(r.order)
}

// wait waits, for up to within, until ok holds of what came (looked at
// as each message comes); it fails t with why() otherwise.
func (r *received) wait(t *testing.T, within time.Duration, ok func(count map[string]int, order []string) bool, why func() string) {
	t.Helper()
	deadline := time.After(within)
	for {
		r.mu.Lock()
		done := ok(r.count, r.order)
		r.mu.Unlock()
		if done {
			return
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatal(why())
		}
	}
}

// A member that does not serve sends the admin API on to the owner (its
// stand-in, standin.go); a request in flight to an owner that froze is
// abandoned when the partition's new owner is announced, and answered
// 503 (retry), rather than held until the client gives up. Three members
// of one partition: a owns it, and the others reach its HTTP port only
// through a proxy that freezes; b is its standby; c, a spare, is asked.
// Then the partition moves to b: a hands it over (asked directly), or
// its lease lapses (released in the coordinator behind its back, as a
// frozen owner's runs out) and b takes it over, which only b can
// announce.
func TestStandInLeavesAFrozenOwner(t *testing.T) {
	t.Run("hand-over", func(t *testing.T) {
		standInLeavesAFrozenOwner(t, func(coord *cluster.MemCoord, a *node.Node) {
			if code, apiErr := clusterCall(t, "POST", "http://"+a.HTTPAddr()+"/v1/cluster/handover", a.AdminToken()); code != http.StatusAccepted {
				t.Fatalf("hand-over: %d %v", code, apiErr)
			}
		})
	})
	t.Run("lease lapsed", func(t *testing.T) {
		standInLeavesAFrozenOwner(t, func(coord *cluster.MemCoord, a *node.Node) {
			holder, epoch, err := coord.Lease(context.Background(), 0)
			if err != nil || holder != "a" {
				t.Fatalf("the lease: %q %v, want a's", holder, err)
			}
			if err := coord.ReleaseLease(context.Background(), 0, "a", epoch); err != nil {
				t.Fatal(err)
			}
		})
	})
}

func standInLeavesAFrozenOwner(t *testing.T, move func(coord *cluster.MemCoord, a *node.Node)) {
	coord := cluster.NewMemCoord(time.Now)
	_, runMember, stopMembers := memberRunner(t, false)
	defer stopMembers()
	var proxy *freezer
	httpOf := map[string]string{}
	member := func(id string, started chan<- *node.Node) {
		addr := nodetest.FreeAddr(t)
		httpOf[id] = addr
		advertise := "http://" + addr
		if id == "a" {
			proxy = newFreezer(t, addr)
			advertise = "http://" + proxy.addr()
		}
		runMember(node.MemberConfig{
			Node:  node.Config{DataDir: t.TempDir(), SocketAddr: nodetest.FreeAddr(t), HTTPAddr: addr, Logger: testLog(t)},
			Coord: coord, ID: id, Advertise: advertise, Secret: "s", LeaseTTL: time.Second,
			Started: func(n *node.Node) {
				if started != nil {
					started <- n
				}
			},
		})
	}
	startedA := make(chan *node.Node, 1)
	member("a", startedA)
	a := <-startedA
	member("b", nil)
	nodetest.WaitFor(t, "b to be the standby", 20*time.Second, func() bool {
		sb, _ := coord.Standby(context.Background(), 0)
		return sb == "b"
	})
	member("c", nil)
	nodetest.AddUsers(t, a, "ana")
	users := fmt.Sprintf("http://%s/v1/users/ana", httpOf["c"])
	// Sent on by c to a, through the proxy while it forwards.
	nodetest.WaitFor(t, "c to send a request on to a", 20*time.Second, func() bool {
		return getStatus(users, a.AdminToken()) == http.StatusOK
	})
	proxy.Freeze()
	answered := make(chan int, 1)
	go func() { answered <- getStatus(users, a.AdminToken()) }()
	nodetest.WaitFor(t, "c's request to reach the frozen proxy", 20*time.Second, func() bool { return proxy.held.Load() > 0 })
	move(coord, a)
	nodetest.WaitFor(t, "b to own the partition", 20*time.Second, func() bool {
		holder, _, _ := coord.Lease(context.Background(), 0)
		return holder == "b"
	})
	select {
	case code := <-answered:
		if code != http.StatusServiceUnavailable {
			t.Fatalf("the request c sent on to the frozen a: %d, want 503 (retry)", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the request c sent on to the frozen a still waits 20s after b owns the partition")
	}
	// Asked again, c sends it on to b, the new owner.
	nodetest.WaitFor(t, "c to send the request on to b", 20*time.Second, func() bool {
		return getStatus(users, a.AdminToken()) == http.StatusOK
	})
}

// getStatus sends GET url with an admin token and returns the answer's
// status, or -1 when none came; it has no timeout of its own (a request
// to a frozen node waits until something ends it).
func getStatus(url, token string) int {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	resp.Body.Close()
	return resp.StatusCode
}
