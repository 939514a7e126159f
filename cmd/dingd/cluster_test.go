package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/twilio/twiliotest"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/internal/node/nodetest"
	"github.com/dingmq/ding/internal/redistest"
)

// pair is a cluster of dingd processes on one Redis (or Redis Cluster).
type pair struct {
	t        *testing.T
	redisURL string
	lease    string
	coord    cluster.Coord
	extra    []string // more dingd flags for every member
	env      []string // more environment for every member
}

func newPair(t *testing.T, redisURL, lease string) *pair {
	coord, closeRedis, err := cluster.DialRedis(cluster.RedisConfig{URL: redisURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeRedis() })
	return &pair{t: t, redisURL: redisURL, lease: lease, coord: coord}
}

// member launches dingd as member id on a new data dir (without waiting:
// only an owner becomes ready).
func (c *pair) member(id string) *proc {
	p := newProc(c.t, c.t.TempDir())
	c.launch(p, id)
	return p
}

// launch runs member id on p's data dir and addresses.
func (c *pair) launch(p *proc, id string) {
	p.env = append([]string{"DING_CLUSTER_SECRET=s3cret"}, c.env...)
	p.launch(c.t, p.args(append([]string{"--cluster", c.redisURL, "--node-id", id, "--advertise", "http://{http}", "--lease-ttl", c.lease}, c.extra...)...)...)
}

// waitStandby waits until the coordinator names id the standby.
func (c *pair) waitStandby(id string) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if sb, err := c.coord.Standby(context.Background(), 0); err == nil && sb == id {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s did not become the standby within 30s", id)
		}
		time.Sleep(20 * time.Millisecond) // polling the coordinator: nothing to wait on
	}
}

// start founds a cluster with owner a and standby b, and creates ana and
// bo (nothing is acknowledged before the standby joined).
func (c *pair) start() (a, b *proc) {
	c.t.Helper()
	a = c.member("a")
	a.waitReady(c.t, 30*time.Second)
	b = c.member("b")
	c.waitStandby("b")
	for _, u := range []string{"ana", "bo"} {
		if code := a.admin(c.t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil); code != 201 {
			c.t.Fatalf("create %s: %d", u, code)
		}
	}
	return a, b
}

// ackedThrough sends from ana to bo through p with n senders until at
// least min are acknowledged, runs during(), and returns the ids
// acknowledged by the time the senders stop.
func ackedThrough(t *testing.T, p *proc, n, min int, during func()) map[string]bool {
	t.Helper()
	s := startSenders(t, p, n)
	deadline := time.Now().Add(20 * time.Second)
	for s.count() < min {
		if time.Now().After(deadline) {
			t.Fatalf("only %d acks in 20s", s.count())
		}
		time.Sleep(5 * time.Millisecond)
	}
	during()
	return s.stop()
}

// requireStream reads bo's stream on p, gap-free, and fails unless it
// holds every id in acked; it returns bo's client.
func requireStream(t *testing.T, p *proc, acked map[string]bool) *client.Client {
	t.Helper()
	bo, err := client.Dial(context.Background(), client.Config{Addr: p.sock, Token: p.token(t, "bo", "phone"), Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bo.Close() })
	head := bo.Welcome().Head
	have := map[string]bool{}
	for seq := uint64(1); seq <= head; seq++ {
		select {
		case e, ok := <-bo.Entries():
			if !ok {
				t.Fatalf("client stopped at seq %d: %v", seq, bo.Err())
			}
			if e.Seq != seq {
				t.Fatalf("stream gap: got seq %d, want %d", e.Seq, seq)
			}
			if e.Message != nil {
				have[e.Message.ID] = true
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("stalled at seq %d of %d", seq, head)
		}
	}
	for id := range acked {
		if !have[id] {
			t.Fatalf("acknowledged message %s is not in bo's stream on the member serving now", id)
		}
	}
	return bo
}

// Cluster mode as a hot-standby pair of real dingd processes on a real
// redis-server: a founds the cluster, b joins as its standby (from a's
// snapshot over HTTP); clients send through a; a is killed with SIGKILL
// mid-flight; b takes over, and every message whose durable ack reached
// a client is in the recipient's stream on b, gap-free. Then a comes back
// and rejoins as b's standby.
func TestClusterFailoverLosesNothingAcknowledged(t *testing.T) {
	// The lease: 1s keeps the test short; DING_TEST_LEASE_TTL=3s measures
	// the default (bench/RESULTS.md).
	lease := "1s"
	if v := os.Getenv("DING_TEST_LEASE_TTL"); v != "" {
		lease = v
	}
	c := newPair(t, "redis://"+redistest.Start(t).Addr, lease)
	a, b := c.start()
	var killed time.Time
	acked := ackedThrough(t, a, 8, 500, func() {
		if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed = time.Now()
		<-a.exited
	})
	b.waitReady(t, 20*time.Second)
	writable := time.Since(killed)
	bo := requireStream(t, b, acked)
	t.Logf("%d acknowledged before SIGKILL, all on b; b serving %v after the kill (lease %s)", len(acked), writable.Round(time.Millisecond), lease)

	// dingctl cluster status's source: b owns at a newer epoch, no standby yet.
	var st struct {
		Member, Role, Owner, Standby string
		Epoch                        uint64
		Shipped                      uint64 `json:"shipped_seq"`
	}
	if code := b.admin(t, "GET", "/v1/cluster", nil, &st); code != 200 || st.Member != "b" || st.Role != "owner" || st.Owner != "b" || st.Standby != "" || st.Epoch < 2 {
		t.Fatalf("b's /v1/cluster: %d %+v", code, st)
	}

	// a comes back: it rejoins as b's standby, from b's snapshot.
	a2 := &proc{data: a.data, sock: a.sock, http: a.http, stderr: &syncBuffer{}}
	c.launch(a2, "a")
	c.waitStandby("a")
	if _, err := bo.Send(context.Background(), []string{"ana"}, []byte("replicated to a again")); err != nil {
		t.Fatalf("send after a rejoined: %v", err)
	}
	if code := b.admin(t, "GET", "/v1/cluster", nil, &st); code != 200 || st.Standby != "a" || st.Shipped == 0 {
		t.Fatalf("b's /v1/cluster after a rejoined: %d %+v", code, st)
	}
	req, _ := http.NewRequest("GET", "http://"+b.http+"/v1/cluster", nil)
	req.Header.Set("Authorization", "Bearer not-the-token")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Fatalf("/v1/cluster with a bad token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

// A paused owner (SIGSTOP) is taken over; when it wakes (SIGCONT) it gets
// nothing more acknowledged: every message its clients saw acknowledged,
// before the pause or after it, is on the new owner, and the old owner
// stops (exit status 1, deposed) instead of serving on.
func TestClusterPausedOwnerGetsNothingAcknowledgedAfterTakeover(t *testing.T) {
	c := newPair(t, "redis://"+redistest.Start(t).Addr, "1s")
	a, b := c.start()
	acked := ackedThrough(t, a, 4, 200, func() {
		if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		b.waitReady(t, 20*time.Second) // b took over while a sleeps
		if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		// a wakes with submits in flight and its clients still connected.
		if err := a.wait(t, 20*time.Second); err == nil {
			t.Fatal("the deposed owner exited 0; want exit status 1")
		}
	})
	requireStream(t, b, acked)
	if !strings.Contains(a.stderr.String(), "lost the partition's lease") {
		t.Fatalf("the old owner did not say it lost its lease:\n%s", a.stderr)
	}
	t.Logf("%d acknowledged through the old owner, all on the new one; the old owner stopped when it woke", len(acked))
}

// A planned switch: POST /v1/cluster/handover on the owner drains it, its
// standby takes over, and the old owner becomes the new owner's standby,
// without a restart; nothing acknowledged is lost.
func TestClusterHandover(t *testing.T) {
	c := newPair(t, "redis://"+redistest.Start(t).Addr, "1s")
	a := c.member("a")
	a.waitReady(t, 30*time.Second)
	if code := a.admin(t, "POST", "/v1/cluster/handover", nil, nil); code != 409 {
		t.Fatalf("handover without a standby: %d, want 409", code)
	}
	// dingctl says why, from the API's error shape (the cluster routes
	// answered one of their own before, and dingctl showed only the status).
	ctl := exec.Command(dingctlBinary(t), "--server", "http://"+a.http, "--data", a.data, "cluster", "handover")
	var ctlErr bytes.Buffer
	ctl.Stderr = &ctlErr
	if err := ctl.Run(); err == nil || !strings.Contains(ctlErr.String(), "CONFLICT: no standby to hand the partition over to") {
		t.Fatalf("dingctl cluster handover without a standby: %v, %q; want CONFLICT and why", err, ctlErr.String())
	}
	b := c.member("b")
	c.waitStandby("b")
	for _, u := range []string{"ana", "bo"} {
		if code := a.admin(t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil); code != 201 {
			t.Fatalf("create %s: %d", u, code)
		}
	}
	acked := ackedThrough(t, a, 2, 100, func() {})
	if code := a.admin(t, "POST", "/v1/cluster/handover", nil, nil); code != 202 {
		t.Fatalf("handover: %d, want 202", code)
	}
	b.waitReady(t, 20*time.Second)
	c.waitStandby("a") // a drained and rejoined, still running
	select {
	case <-a.exited:
		t.Fatalf("a exited on a hand-over: %v\n%s", a.exitErr, a.stderr)
	default:
	}
	bo := requireStream(t, b, acked)
	// Replicated to a again: a send through b is acknowledged.
	if _, err := bo.Send(context.Background(), []string{"ana"}, []byte("after the hand-over")); err != nil {
		t.Fatal(err)
	}
}

// Three members: an owner, its standby and a spare. Clients follow the
// partition's owner: one that dials a member that does not serve is
// redirected (NOT_OWNER) to the owner; when the owner is paused, the
// standby takes over, the spare joins as its standby (from its
// snapshot), and a sender's and a receiver's clients, given the
// members' addresses, find the new owner by themselves (silence, then
// the other addresses and redirects), resend what was not acknowledged,
// and resume. Every message the sender saw acknowledged reaches the
// receiver's device, once, in the order sent.
func TestClusterClientsFollowTheOwner(t *testing.T) {
	c := newPair(t, "redis://"+redistest.Start(t).Addr, "1s")
	c.extra = []string{"--idle-timeout", "1500ms"} // clients ping every 500ms and take 1.5s of silence for a dead server
	a, b := c.start()
	spare := c.member("c")
	memberStatus := func(via, tokenOf *proc) (st struct{ Member, Role, Owner string }) {
		t.Helper()
		if code := (&proc{data: tokenOf.data, http: via.http}).admin(t, "GET", "/v1/cluster", nil, &st); code != 200 {
			t.Fatalf("GET /v1/cluster on %s: %d", via.http, code)
		}
		return st
	}
	// The members that do not serve answer HTTP too: not ready, their
	// own status, and the admin API proxied to the owner.
	nodetest.WaitFor(t, "the spare's HTTP stand-in", 10*time.Second, func() bool { code, _ := readyz(spare.http); return code == 503 })
	if code, _ := readyz(b.http); code != 503 {
		t.Fatalf("the standby's /readyz: %d, want 503", code)
	}
	if st := memberStatus(b, b); st.Member != "b" || st.Role != "standby" || st.Owner != "a" {
		t.Fatalf("the standby's own status: %+v", st)
	}
	var user struct{ ID string }
	if code := b.admin(t, "GET", "/v1/users/ana", nil, &user); code != 200 || user.ID != "ana" {
		t.Fatalf("the admin API through the standby: %d %+v, want ana from the owner", code, user)
	}
	dial := func(user, addrs string) *client.Client {
		cl, err := client.Dial(context.Background(), client.Config{Addr: addrs, Token: a.token(t, user, "phone"), Device: "phone",
			DialTimeout: time.Second, MaxBackoff: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	bo := dial("bo", spare.sock+","+b.sock+","+a.sock) // a member that does not serve first
	if bo.Stats().Redirects != 1 {
		t.Fatalf("bo dialed the spare: %d redirects, want 1", bo.Stats().Redirects)
	}
	ana := dial("ana", a.sock+","+b.sock+","+spare.sock)

	// ana sends one message at a time, each until acknowledged.
	var (
		mu    sync.Mutex
		acked []string
	)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ctx.Err() == nil; i++ {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			res, err := ana.Send(sctx, []string{"bo"}, fmt.Appendf(nil, "m%d", i))
			cancel()
			if err == nil {
				mu.Lock()
				acked = append(acked, res.ID)
				mu.Unlock()
			}
		}
	}()
	nacked := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	nodetest.WaitFor(t, "acks before the pause", 20*time.Second, func() bool { return nacked() >= 50 })
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := nacked()
	b.waitReady(t, 20*time.Second)
	c.waitStandby("c")
	nodetest.WaitFor(t, "acks from the new owner", 30*time.Second, func() bool { return nacked() >= paused+50 })
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := a.wait(t, 20*time.Second); err == nil {
		t.Fatal("the deposed owner exited 0; want exit status 1")
	}
	stop()
	<-done
	if st := memberStatus(spare, b); st.Role != "standby" || st.Owner != "b" {
		t.Fatalf("the former spare's status after the failover: %+v, want b's standby", st)
	}

	mu.Lock()
	want := acked
	mu.Unlock()
	isAcked := map[string]bool{}
	for _, id := range want {
		isAcked[id] = true
	}
	var got []string
	seen := map[string]bool{}
	deadline := time.After(20 * time.Second)
	for len(got) < len(want) {
		select {
		case e, ok := <-bo.Entries():
			if !ok {
				t.Fatalf("bo's client stopped: %v", bo.Err())
			}
			if e.Message == nil {
				continue
			}
			if seen[e.Message.ID] {
				t.Fatalf("bo got %s twice", e.Message.ID)
			}
			seen[e.Message.ID] = true
			if isAcked[e.Message.ID] {
				got = append(got, e.Message.ID)
			}
			bo.Ack(e.Seq)
		case <-deadline:
			t.Fatalf("bo received %d of %d acknowledged messages", len(got), len(want))
		}
	}
	if !slices.Equal(got, want) {
		t.Fatal("bo received the acknowledged messages out of the order they were sent")
	}
	t.Logf("%d acknowledged (%d through the old owner), all received once and in order on the new one; ana reconnected %d times, bo %d (%d redirects)",
		len(want), paused, ana.Stats().Connects, bo.Stats().Connects, bo.Stats().Redirects)
}

// Three members; the standby dies (SIGKILL) while clients send. Writes
// wait for it, then the owner drops it (after two lease TTLs without its
// acks), the spare joins as the new standby from the owner's snapshot,
// and acknowledgements resume: every message acknowledged before, during
// and after is on the owner, and the new standby holds it too (it takes
// over when the owner is killed next).
func TestClusterDeadStandbyIsReplaced(t *testing.T) {
	c := newPair(t, "redis://"+redistest.Start(t).Addr, "1s")
	a, b := c.start()
	spare := c.member("c")
	var killed time.Time
	var stalled time.Duration
	s := startSenders(t, a, 4)
	nodetest.WaitFor(t, "acks before the kill", 20*time.Second, func() bool { return s.count() >= 100 })
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = time.Now()
	<-b.exited
	atKill := s.count()
	c.waitStandby("c")
	nodetest.WaitFor(t, "acks after the spare joined", 30*time.Second, func() bool { return s.count() >= atKill+100 })
	stalled = time.Since(killed)
	acked := s.stop()
	if !strings.Contains(a.stderr.String(), "the standby stopped acking") {
		t.Fatalf("the owner did not say why it dropped its standby:\n%s", a.stderr)
	}
	// The new standby has it all: kill the owner, and c serves every
	// acknowledged message.
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.exited
	spare.waitReady(t, 20*time.Second)
	requireStream(t, spare, acked)
	t.Logf("%d acknowledged; the standby's death stopped acknowledgements until the spare joined, %v after the kill (lease 1s); all on the spare after the owner's death too",
		len(acked), stalled.Round(time.Millisecond))
}

// Maintenance under load: clients send through the owner while the
// standby is drained (a spare takes its place), a new member joins as a
// spare, and then the owner itself is drained (it hands the partition to
// its standby and takes no role again). The clients follow the owner;
// every message acknowledged to them is on the member that serves at the
// end, once and in order; the drained members say so and can be stopped.
func TestClusterDrainUnderLoad(t *testing.T) {
	c := newPair(t, "redis://"+redistest.Start(t).Addr, "1s")
	c.extra = []string{"--idle-timeout", "1500ms"}
	a, b := c.start()
	cm := c.member("c")
	all := func(ps ...*proc) string {
		var s []string
		for _, p := range ps {
			s = append(s, p.sock)
		}
		return strings.Join(s, ",")
	}
	role := func(p *proc) string {
		var st struct{ Role string }
		(&proc{data: b.data, http: p.http}).admin(t, "GET", "/v1/cluster", nil, &st)
		return st.Role
	}
	drain := func(p *proc) {
		t.Helper()
		if code := (&proc{data: b.data, http: p.http}).admin(t, "POST", "/v1/cluster/drain", nil, nil); code != 202 {
			t.Fatalf("drain %s: %d", p.http, code)
		}
	}
	ana, err := client.Dial(context.Background(), client.Config{Addr: all(a, b, cm), Token: a.token(t, "ana", "phone"), Device: "phone",
		DialTimeout: time.Second, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer ana.Close()
	var (
		mu    sync.Mutex
		acked []string
	)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ctx.Err() == nil; i++ {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			res, err := ana.Send(sctx, []string{"bo"}, fmt.Appendf(nil, "m%d", i))
			cancel()
			if err == nil {
				mu.Lock()
				acked = append(acked, res.ID)
				mu.Unlock()
			}
		}
	}()
	nacked := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	more := func(what string) {
		t.Helper()
		n := nacked()
		nodetest.WaitFor(t, what, 30*time.Second, func() bool { return nacked() >= n+50 })
	}
	more("acks before the drains")

	drain(b) // the standby: the spare takes its place
	c.waitStandby("c")
	nodetest.WaitFor(t, "b drained", 10*time.Second, func() bool { return role(b) == "drained" })
	more("acks with c as the standby")
	d := c.member("d") // a new member joins, as a spare
	nodetest.WaitFor(t, "d's stand-in", 10*time.Second, func() bool { code, _ := readyz(d.http); return code == 503 })

	drain(a) // the owner: c takes the partition, d becomes its standby
	cm.waitReady(t, 20*time.Second)
	c.waitStandby("d")
	nodetest.WaitFor(t, "a drained", 10*time.Second, func() bool { return role(a) == "drained" })
	more("acks through c with d as its standby")
	stop()
	<-done
	// The owner's status lists every member, what it does, its build
	// and the replication protocol the build speaks.
	want := map[string]string{}
	for id, role := range map[string]string{"a": "drained", "b": "drained", "c": "owner", "d": "standby"} {
		want[id] = fmt.Sprintf("%s, protocol %d, build named", role, cluster.Protocol)
	}
	nodetest.WaitFor(t, "every member's status", 10*time.Second, func() bool {
		var st struct {
			Members []struct {
				ID, Role, HTTP, Build string
				Protocol              int
			}
		}
		(&proc{data: b.data, http: cm.http}).admin(t, "GET", "/v1/cluster", nil, &st)
		got := map[string]string{}
		for _, m := range st.Members {
			got[m.ID] = fmt.Sprintf("%s, protocol %d, build named", m.Role, m.Protocol)
			if m.Build == "" {
				got[m.ID] = fmt.Sprintf("%s, protocol %d, no build", m.Role, m.Protocol)
			}
		}
		return maps.Equal(got, want)
	})
	for _, p := range []*proc{a, b} { // drained: a clean stop
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := p.wait(t, 20*time.Second); err != nil {
			t.Fatalf("a drained member stopped with %v", err)
		}
	}
	mu.Lock()
	ids := map[string]bool{}
	for _, id := range acked {
		ids[id] = true
	}
	mu.Unlock()
	requireStream(t, cm, ids)
	t.Logf("%d acknowledged through two drains and a join; all on the member serving at the end", len(ids))
}

// Timers fire on the partition's current owner, also right after a
// failover: DING escalation steps that fall due while the owner is dead
// are sent by the new one (each once, at most one duplicate per step), and
// a secret message read just before the owner's death burns on the new
// owner on time.
func TestClusterTimersFireOnTheNewOwner(t *testing.T) {
	const sid, tok = "AC00000000000000000000000000000002", "secret0token0for0tests"
	fake := twiliotest.NewServer(sid, tok)
	defer fake.Close()
	c := newPair(t, "redis://"+redistest.Start(t).Addr, "1s")
	c.extra = []string{"--twilio-account-sid", sid, "--twilio-from", "+15005550006", "--public-url", "http://{http}",
		"--twilio-api-url", fake.URL(), "--burn-after", "5s"}
	c.env = []string{"TWILIO_AUTH_TOKEN=" + tok}
	a, b := c.start()
	spare := c.member("c")
	_ = spare

	// A secret chat, a message in it, read by bo: it burns 5s later.
	dial := func(user string) *client.Client {
		cl, err := client.Dial(context.Background(), client.Config{Addr: a.sock + "," + b.sock + "," + spare.sock,
			Token: a.token(t, user, "phone"), Device: "phone", DialTimeout: time.Second, MaxBackoff: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	ana, bo := dial("ana"), dial("bo")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	chat, err := ana.CreateChat(ctx, "bo", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := ana.SendChat(ctx, chat, []byte("burn after reading"))
	if err != nil {
		t.Fatal(err)
	}

	// A DING to 100 phones, its SMS step due in 3s.
	var numbers []string
	for i := range 100 {
		numbers = append(numbers, fmt.Sprintf("+1555777%04d", i))
	}
	var res map[string]any
	if code := a.admin(t, "POST", "/v1/dings", map[string]any{"from": "ana", "to": numbers, "text": "evacuate", "policy": "sms@3s"}, &res); code != 201 {
		t.Fatalf("ding: %d %v", code, res)
	}
	if err := bo.Read(ctx, secret.ID); err != nil {
		t.Fatal(err)
	}
	readAt := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-a.exited
	if n := fake.Count("sms"); n != 0 {
		t.Fatalf("%d SMS went out before the kill: the failover path is not exercised", n)
	}

	b.waitReady(t, 20*time.Second)
	// The new owner can still show the secret message until it burns:
	// its key came with the batch that stored it.
	tablet, err := client.Dial(ctx, client.Config{Addr: b.sock, Token: a.token(t, "bo", "tablet"), Device: "tablet"})
	if err != nil {
		t.Fatal(err)
	}
	defer tablet.Close()
	for shown := false; !shown; {
		select {
		case e := <-tablet.Entries():
			switch {
			case e.Message != nil && e.Message.ID == secret.ID:
				if string(e.Message.Body) != "burn after reading" {
					t.Fatalf("the secret message on the new owner: %q", e.Message.Body)
				}
				shown = true
			case e.Burn != nil && e.Burn.ID == secret.ID:
				t.Fatalf("the secret message burned on the new owner %v after it was read, before its 5s: its key did not reach the standby", time.Since(readAt))
			}
		case <-ctx.Done():
			t.Fatal("the secret message is not in bo's stream on the new owner")
		}
	}
	if _, err := fake.WaitFor(ctx, "sms", len(numbers)); err != nil {
		t.Fatalf("escalation after the failover: %v", err)
	}
	count := map[string]int{}
	for _, r := range fake.Requests() {
		count[r.To]++
	}
	for _, n := range numbers {
		if c := count[n]; c != 1 {
			t.Fatalf("%s got %d SMS, want 1", n, c)
		}
	}
	smsAt := time.Since(killed)
	for {
		select {
		case e, ok := <-bo.Entries():
			if !ok {
				t.Fatalf("bo's client stopped: %v", bo.Err())
			}
			if e.Burn != nil && e.Burn.ID == secret.ID {
				if d := time.Since(readAt); d < 4500*time.Millisecond {
					t.Fatalf("the secret message burned %v after it was read; want its 5s", d)
				}
				t.Logf("after SIGKILL of the owner: the DING's 100 SMS sent once each by the new owner within %v; the secret message burned %v after the kill",
					smsAt.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
				return
			}
		case <-ctx.Done():
			t.Fatal("the secret message did not burn on the new owner")
		}
	}
}

// --ack-replicas 0: the owner acknowledges with its standby paused
// (SIGSTOP), before it would drop it (the coordinator still names it
// while the acks flow); the standby, woken, catches up, and a planned
// stop of the owner (SIGTERM) waits for it before releasing the lease, so
// the standby takes over with every acknowledged message.
func TestClusterAckReplicasZero(t *testing.T) {
	c := newPair(t, "redis://"+redistest.Start(t).Addr, "3s")
	c.extra = []string{"--ack-replicas", "0"}
	a, b := c.start()
	s := startSenders(t, a, 4)
	nodetest.WaitFor(t, "acks with the standby up", 20*time.Second, func() bool { return s.count() >= 100 })
	if err := b.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	atStop := s.count()
	nodetest.WaitFor(t, "acks with the standby paused", 20*time.Second, func() bool { return s.count() >= atStop+200 })
	if sb, err := c.coord.Standby(context.Background(), 0); err != nil || sb != "b" {
		t.Fatalf("standby %q (%v): the acks above must have come while b was still the (paused) standby", sb, err)
	}
	if err := b.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	acked := s.stop()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-a.exited
	b.waitReady(t, 30*time.Second)
	requireStream(t, b, acked)
	if !strings.Contains(a.stderr.String(), "ack-replicas 0") {
		t.Fatalf("the owner did not say it acknowledges alone:\n%s", a.stderr)
	}
	t.Logf("%d acknowledged, %d of them while the standby was paused; all on it after the owner's planned stop", len(acked), len(acked)-atStop)
}

// A member that joins long after a takeover (more batches since than the
// stream keeps) starts from the snapshot it fetched, not from the state
// the new owner's store kept from its takeover: it catches up and acks.
// (It waited forever for entries from before the snapshot, which the
// bounded stream had trimmed: the owner then dropped it, again and again.)
func TestClusterStandbyJoinsLongAfterATakeover(t *testing.T) {
	c := newPair(t, "redis://"+redistest.Start(t).Addr, "1s")
	a, b := c.start()
	spare := c.member("c")
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.exited
	b.waitReady(t, 20*time.Second)
	c.waitStandby("c")
	shipped := func() uint64 {
		var st struct {
			Shipped uint64 `json:"shipped_seq"`
		}
		if code := b.admin(t, "GET", "/v1/cluster", nil, &st); code != 200 {
			t.Fatalf("b's /v1/cluster: %d", code)
		}
		return st.Shipped
	}
	atJoin := shipped()
	s := startSenders(t, b, 4)
	nodetest.WaitFor(t, "more batches than the stream keeps", 60*time.Second, func() bool { return shipped() > atJoin+1200 })
	// The standby dies; a, back with an empty data dir, joins from b's
	// snapshot in its place.
	if err := spare.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-spare.exited
	atKill := s.count()
	sinceTakeover := shipped() - atJoin
	a2 := c.member("a")
	c.waitStandby("a")
	nodetest.WaitFor(t, "acks with a as the standby", 30*time.Second, func() bool { return s.count() >= atKill+200 })
	acked := s.stop()
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-b.exited
	a2.waitReady(t, 20*time.Second)
	requireStream(t, a2, acked)
	t.Logf("%d acknowledged; a joined more than %d batches after c did and holds them all", len(acked), sinceTakeover)
}

// waitPeersRecorded waits until each of procs has recorded every member
// in ids in its data dir (cluster-peers.json: it reads the registry every
// third of a lease), which a recovery asks when Redis has lost it.
func waitPeersRecorded(t *testing.T, procs map[string]*proc, ids ...string) {
	t.Helper()
	for id, p := range procs {
		nodetest.WaitFor(t, id+"'s record of the members", 10*time.Second, func() bool {
			raw, err := os.ReadFile(filepath.Join(p.data, "cluster-peers.json"))
			if err != nil {
				return false
			}
			for _, m := range ids {
				if !strings.Contains(string(raw), `"`+m+`"`) {
					return false
				}
			}
			return true
		})
	}
}

// recoveredBy waits until one of procs logs that it recovered the
// partition after Redis lost its state, and returns its id.
func recoveredBy(t *testing.T, procs map[string]*proc, within time.Duration) string {
	t.Helper()
	var owner string
	nodetest.WaitFor(t, "the recovery", within, func() bool {
		for id, p := range procs {
			if strings.Contains(p.stderr.String(), "recovered the partition after the coordinator lost its state") {
				owner = id
				return true
			}
		}
		return false
	})
	return owner
}

// Redis loses everything (FLUSHALL: the lease, the epochs, the standby's
// name, the members' registry) under load: the members recover by
// themselves. The owner's renewal fails and it stands by; the members
// tell one another their fences; the one cluster.RecoveryChoice names
// (the old owner, or its standby, which holds every acknowledged batch)
// takes the partition at an epoch above every fence and serves, and
// another member joins it as its standby from its snapshot. Every
// message acknowledged before or after is there: after a kill -9 of the
// recovered owner, its standby serves them all.
func TestClusterRecoversWhenRedisLosesItsState(t *testing.T) {
	rs := redistest.Start(t)
	c := newPair(t, "redis://"+rs.Addr, "1s")
	a, b := c.start()
	spare := c.member("c")
	procs := map[string]*proc{"a": a, "b": b, "c": spare}
	t.Cleanup(func() {
		if t.Failed() {
			for id, p := range procs {
				t.Logf("--- %s's log:\n%s", id, p.stderr.String())
			}
		}
	})
	s := startSenders(t, a, 4)
	nodetest.WaitFor(t, "acks before the flush", 20*time.Second, func() bool { return s.count() >= 200 })
	waitPeersRecorded(t, procs, "a", "b", "c")
	rs.FlushAll(t)
	flushed := time.Now()
	owner := recoveredBy(t, procs, 60*time.Second)
	recovered := time.Since(flushed)
	if owner == "c" {
		t.Fatal("c, which holds no history, recovered the partition")
	}
	atRecovery := s.count()
	nodetest.WaitFor(t, "acks after the recovery", 60*time.Second, func() bool { return s.count() >= atRecovery+200 })
	resumed := time.Since(flushed)
	acked := s.stop()
	sb, err := c.coord.Standby(context.Background(), 0)
	if err != nil || sb == "" || sb == owner {
		t.Fatalf("standby after the recovery: %q %v (owner %s)", sb, err, owner)
	}
	if err := procs[owner].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-procs[owner].exited
	procs[sb].waitReady(t, 20*time.Second)
	requireStream(t, procs[sb], acked)
	t.Logf("%d acknowledged; %s recovered the partition %v after Redis lost its state and acks resumed by %v (lease 1s); all on %s, its standby, after its kill -9",
		len(acked), owner, recovered.Round(time.Millisecond), resumed.Round(time.Millisecond), sb)
}

// A new owner that acknowledged nothing at its epoch counts, in a
// recovery, by the history it took over with (cluster.OwnerLog). a owns,
// b is its only other member; a is killed, and b takes over with nobody
// left to be its standby, so nothing is acknowledged at its epoch. Redis
// loses its state: b, no longer serving, reports from its disk that its
// epoch is unreplicated, taken over from a's (GET /cluster/fence); a
// comes back with its disk and the recovery names a, the owner of the
// newest epoch anything was acknowledged at, not b, whose epoch is
// newer. (Both hold every acknowledged message here; a coordinator that
// rolls back past a takeover is where it matters: cluster's package doc
// and TestSimulation.) Every acknowledged message is on a, and after a
// kill -9 of a, on b, which followed it.
func TestClusterRecoveryCountsAnUnreplicatedOwnerByItsTakeover(t *testing.T) {
	rs := redistest.Start(t)
	c := newPair(t, "redis://"+rs.Addr, "1s")
	a, b := c.start()
	procs := map[string]*proc{"a": a, "b": b}
	t.Cleanup(func() {
		if t.Failed() {
			for id, p := range procs {
				t.Logf("--- %s's log:\n%s", id, p.stderr.String())
			}
		}
	})
	waitPeersRecorded(t, procs, "a", "b")
	acked := ackedThrough(t, a, 2, 100, func() {
		if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-a.exited
	})
	nodetest.WaitFor(t, "b's takeover", 20*time.Second, func() bool {
		holder, _, err := c.coord.Lease(context.Background(), 0)
		return err == nil && holder == "b"
	})
	rs.FlushAll(t)
	var f cluster.Fence
	nodetest.WaitFor(t, "b's fence from its disk", 20*time.Second, func() bool {
		var err error
		f, err = askFence(b)
		return err == nil && f.Held && !f.Serving
	})
	if !f.Unreplicated || f.Owner != "b" || f.TookOwner != "a" || f.TookEpoch == 0 || f.Epoch <= f.TookEpoch {
		t.Fatalf("b's fence after a takeover nothing was acknowledged at: %+v", f)
	}
	a2 := &proc{data: a.data, sock: a.sock, http: a.http, stderr: &syncBuffer{}}
	procs["a"] = a2
	c.launch(a2, "a")
	if owner := recoveredBy(t, procs, 60*time.Second); owner != "a" {
		t.Fatalf("%s recovered the partition; want a (b acknowledged nothing at its epoch %d)", owner, f.Epoch)
	}
	if holder, epoch, err := c.coord.Lease(context.Background(), 0); err != nil || holder != "a" || epoch <= f.Epoch {
		t.Fatalf("lease after the recovery: %q at %d (%v); want a above b's epoch %d", holder, epoch, err, f.Epoch)
	}
	a2.waitReady(t, 20*time.Second)
	requireStream(t, a2, acked)
	c.waitStandby("b")
	more := ackedThrough(t, a2, 2, 50, func() {})
	maps.Copy(acked, more)
	if err := a2.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a2.exited
	b.waitReady(t, 20*time.Second)
	requireStream(t, b, acked)
	t.Logf("%d acknowledged; b reported epoch %d unreplicated (taken over from %d), a recovered, then b served them all", len(acked), f.Epoch, f.TookEpoch)
}

// askFence reads p's GET /cluster/fence, as another member does.
func askFence(p *proc) (cluster.Fence, error) {
	req, err := http.NewRequest("GET", "http://"+p.http+"/cluster/fence", nil)
	if err != nil {
		return cluster.Fence{}, err
	}
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return cluster.Fence{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return cluster.Fence{}, fmt.Errorf("%s", resp.Status)
	}
	var f cluster.Fence
	err = json.NewDecoder(resp.Body).Decode(&f)
	return f, err
}

// The standby loses its disk and comes back while the coordinator still
// names it: it joins afresh from the owner's snapshot and is named again
// (the owner refused it, "has a standby", forever, so it never took
// over); then the owner dies and it serves every acknowledged message.
func TestClusterStandbyBackWithoutItsDiskTakesOverLater(t *testing.T) {
	c := newPair(t, "redis://"+redistest.Start(t).Addr, "1s")
	a, b := c.start()
	s := startSenders(t, a, 2)
	nodetest.WaitFor(t, "acks", 20*time.Second, func() bool { return s.count() >= 50 })
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-b.exited
	if err := os.RemoveAll(filepath.Join(b.data, "store")); err != nil {
		t.Fatal(err)
	}
	b2 := &proc{data: b.data, sock: b.sock, http: b.http, stderr: &syncBuffer{}}
	c.launch(b2, "b")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("b's log:\n%s\na's log:\n%s", b2.stderr, a.stderr)
		}
	})
	// b is the only other member: acknowledgements go on only once it
	// follows again as the named standby.
	atKill := s.count()
	nodetest.WaitFor(t, "acks with b back", 30*time.Second, func() bool { return s.count() >= atKill+100 })
	acked := s.stop()
	if sb, err := c.coord.Standby(context.Background(), 0); err != nil || sb != "b" {
		t.Fatalf("standby %q %v, want b", sb, err)
	}
	if strings.Contains(b2.stderr.String(), "did not name this member") {
		t.Fatalf("the owner refused its own standby:\n%s", b2.stderr)
	}
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.exited
	b2.waitReady(t, 20*time.Second)
	requireStream(t, b2, acked)
}

// A member gone for good without a drain holds up a recovery (it might
// hold the newest history) until the members are told to forget it:
// with a record of a third member that no longer exists, Redis's state
// lost stops everything; `dingctl cluster forget c` on both members lets
// them recover, with every acknowledged message.
func TestClusterForgetLetsARecoveryProceed(t *testing.T) {
	rs := redistest.Start(t)
	c := newPair(t, "redis://"+rs.Addr, "1s")
	a, b := c.start()
	ghost := c.member("c")
	waitPeersRecorded(t, map[string]*proc{"a": a, "b": b}, "c")
	if err := ghost.cmd.Process.Signal(syscall.SIGKILL); err != nil { // gone for good
		t.Fatal(err)
	}
	<-ghost.exited
	s := startSenders(t, a, 2)
	nodetest.WaitFor(t, "acks", 20*time.Second, func() bool { return s.count() >= 50 })
	rs.FlushAll(t)
	nodetest.WaitFor(t, "a waiting for c", 20*time.Second, func() bool {
		return strings.Contains(a.stderr.String(), "waits until every member answers")
	})
	if strings.Contains(a.stderr.String()+b.stderr.String(), "recovered the partition") {
		t.Fatal("recovered without hearing from c")
	}
	for _, p := range []*proc{a, b} {
		var res map[string]any
		if code := p.admin(t, "POST", "/v1/cluster/forget?member=c", nil, &res); code != 200 || res["known"] != true {
			t.Fatalf("forget on %s: %d %v", p.http, code, res)
		}
	}
	recoveredBy(t, map[string]*proc{"a": a, "b": b}, 30*time.Second)
	at := s.count()
	nodetest.WaitFor(t, "acks after the recovery", 30*time.Second, func() bool { return s.count() >= at+50 })
	acked := s.stop()
	owner, _, err := c.coord.Lease(context.Background(), 0)
	if err != nil || (owner != "a" && owner != "b") {
		t.Fatalf("owner %q %v", owner, err)
	}
	requireStream(t, map[string]*proc{"a": a, "b": b}[owner], acked)
}
