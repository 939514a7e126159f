package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// redisClient starts a redis-server for the test and returns a client.
func redisClient(t *testing.T) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// coordEnv is a Coord under test and a way to let its leases lapse.
type coordEnv struct {
	c Coord
	// keep bounds the stream (StreamKeep).
	keep func(n int)
	// lapse returns once a lease taken with ttl has expired.
	lapse func(ttl time.Duration)
}

// The contract every Coord keeps, checked on MemCoord and on a real
// redis-server.
func TestCoordContract(t *testing.T) {
	envs := map[string]func(t *testing.T) coordEnv{
		"mem": func(t *testing.T) coordEnv {
			var mu sync.Mutex
			now := time.Unix(1_800_000_000, 0)
			c := NewMemCoord(func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
			return coordEnv{c, func(n int) { c.StreamKeep = n }, func(d time.Duration) { mu.Lock(); now = now.Add(d + time.Millisecond); mu.Unlock() }}
		},
		"redis": func(t *testing.T) coordEnv {
			c := NewRedisCoord(redisClient(t))
			return coordEnv{c, func(n int) { c.StreamKeep = n }, func(d time.Duration) { waitLapse(t, c, d) }}
		},
	}
	for name, mk := range envs {
		t.Run(name, func(t *testing.T) {
			t.Run("lease", func(t *testing.T) { testLease(t, mk(t)) })
			t.Run("stream", func(t *testing.T) { testStream(t, mk(t)) })
			t.Run("stream bound", func(t *testing.T) { testStreamBound(t, mk(t)) })
			t.Run("acks and standby", func(t *testing.T) { testAcks(t, mk(t)) })
			t.Run("members", func(t *testing.T) { testMembers(t, mk(t)) })
			t.Run("announce", func(t *testing.T) { testAnnounce(t, mk(t)) })
			t.Run("ack notices", func(t *testing.T) { testAckNotices(t, mk(t)) })
			t.Run("waiting reads", func(t *testing.T) { testReadEntries(t, mk(t)) })
			t.Run("partition count", func(t *testing.T) { testPartitionCount(t, mk(t)) })
		})
	}
}

// sharedRedisContract checks on c, one Redis of the test's own, the part
// of the Coord contract that holds on any Redis (single, Sentinel, Redis
// Cluster), the keys of one partition at a time: not the stream bound or
// the member registry, which TestCoordContract checks on one redis-server.
func sharedRedisContract(t *testing.T, c *RedisCoord) {
	t.Helper()
	env := coordEnv{c, func(n int) { c.StreamKeep = n }, func(d time.Duration) { waitLapse(t, c, d) }}
	t.Run("lease", func(t *testing.T) { testLease(t, env) })
	t.Run("stream", func(t *testing.T) { testStream(t, env) })
	t.Run("acks and standby", func(t *testing.T) { testAcks(t, env) })
	t.Run("announce", func(t *testing.T) { testAnnounce(t, env) })
	t.Run("ack notices", func(t *testing.T) { testAckNotices(t, env) })
	t.Run("waiting reads", func(t *testing.T) { testReadEntries(t, env) })
	t.Run("partition count", func(t *testing.T) { testPartitionCount(t, env) })
}

// waitLapse waits until Redis has expired a lease of ttl: it polls the
// lease itself, the thing under test, with a deadline.
func waitLapse(t *testing.T, c Coord, ttl time.Duration) {
	deadline := time.Now().Add(ttl + 5*time.Second)
	for {
		holder, _, err := c.Lease(context.Background(), 7)
		if err != nil {
			t.Fatal(err)
		}
		if holder == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease of %v still held by %s after %v", ttl, holder, ttl+5*time.Second)
		}
		time.Sleep(ttl / 10) // waiting for time to pass is what this is
	}
}

// testPartitionCount: the first claim records the count; later claims,
// of the same count or another, get the recorded one.
func testPartitionCount(t *testing.T, env coordEnv) {
	pc, ok := env.c.(PartitionCounter)
	if !ok {
		t.Fatalf("%T is not a PartitionCounter", env.c)
	}
	ctx := context.Background()
	for _, claim := range []int{4, 4, 8, 1} {
		if got, err := pc.ClaimPartitions(ctx, claim); err != nil || got != 4 {
			t.Fatalf("claim of %d: %d, %v; want 4 (the first claim's)", claim, got, err)
		}
	}
}

// testAnnounce: every listener hears each announcement made after its
// Listen returned, in no promised order.
func testAnnounce(t *testing.T, env coordEnv) {
	a, ok := env.c.(Announcer)
	if !ok {
		t.Fatalf("%T is not an Announcer", env.c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	heard := [2]chan Partition{make(chan Partition, 8), make(chan Partition, 8)}
	for _, ch := range heard {
		if err := a.Listen(ctx, func(p Partition) { ch <- p }); err != nil {
			t.Fatal(err)
		}
	}
	want := []Partition{3, 0, 3, 12}
	for _, p := range want {
		if err := a.Announce(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	for i, ch := range heard {
		var got []Partition
		for len(got) < len(want) {
			select {
			case p := <-ch:
				got = append(got, p)
			case <-time.After(10 * time.Second):
				t.Fatalf("listener %d heard %v, want %v", i, got, want)
			}
		}
		slices.Sort(got) // a Redis Cluster may pass them on in another order
		if want := slices.Sorted(slices.Values(want)); !slices.Equal(got, want) {
			t.Fatalf("listener %d heard %v, want %v", i, got, want)
		}
	}
}

// testAckNotices: an ack put is passed, as put, to the watchers of its
// partition and no other, and is recorded all the same.
func testAckNotices(t *testing.T, env coordEnv) {
	n, ok := env.c.(AckNotifier)
	if !ok {
		t.Fatalf("%T is not an AckNotifier", env.c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	heard5, heard6 := make(chan Ack, 64), make(chan Ack, 64)
	if err := n.WatchAcks(ctx, 5, func(a Ack) { heard5 <- a }); err != nil {
		t.Fatal(err)
	}
	if err := n.WatchAcks(ctx, 6, func(a Ack) { heard6 <- a }); err != nil {
		t.Fatal(err)
	}
	// Put until each watcher hears one (a second channel joins the
	// subscription without waiting for Redis to confirm it).
	hear := func(p Partition, ch chan Ack, a Ack) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; {
			if err := env.c.PutAck(ctx, p, a); err != nil {
				t.Fatal(err)
			}
			select {
			case got := <-ch:
				if got != a {
					t.Fatalf("partition %d's watcher heard %+v, want %+v", p, got, a)
				}
				return
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("partition %d's watcher heard nothing within 10s", p)
			}
		}
	}
	a5 := Ack{Standby: "b", Epoch: 3, Owner: "a", Seq: 17}
	hear(5, heard5, a5)
	hear(6, heard6, Ack{Standby: "c", Epoch: 4, Owner: "a", Seq: 2})
	a6 := Ack{Standby: "c", Epoch: 4, Owner: "a", Seq: 3}
	hear(6, heard6, a6)
	// 5's watcher may still hear repeats of a5 (put again until it was
	// heard, and delivered late), but nothing put for 6.
	for drained := false; !drained; {
		select {
		case a := <-heard5:
			if a != a5 {
				t.Fatalf("partition 5's watcher heard %+v, put for partition 6", a)
			}
		default:
			drained = true
		}
	}
	acks, err := env.c.Acks(ctx, 5)
	if err != nil || acks["b"] != a5 {
		t.Fatalf("partition 5's recorded acks: %+v, %v; want %+v", acks, err, a5)
	}
}

// testReadEntries: a waiting read returns at once what the stream holds
// after its cursor (at most n), and otherwise the first entry to come.
func testReadEntries(t *testing.T, env coordEnv) {
	r, ok := env.c.(EntryReader)
	if !ok {
		t.Fatalf("%T is not an EntryReader", env.c)
	}
	ctx, p := context.Background(), Partition(9)
	for seq := uint64(1); seq <= 3; seq++ {
		if err := env.c.Append(ctx, p, Entry{Epoch: 1, Owner: "a", Seq: seq, Data: []byte{byte(seq)}}); err != nil {
			t.Fatal(err)
		}
	}
	seqs := func(es []Entry) (out []uint64) {
		for _, e := range es {
			out = append(out, e.Seq)
		}
		return out
	}
	es, cursor, err := r.ReadEntries(ctx, p, "", 2, time.Hour)
	if err != nil || !slices.Equal(seqs(es), []uint64{1, 2}) {
		t.Fatalf("first read: %v, %v; want seqs 1 and 2", seqs(es), err)
	}
	es, cursor, err = r.ReadEntries(ctx, p, cursor, 2, time.Hour)
	if err != nil || !slices.Equal(seqs(es), []uint64{3}) || es[0].Data[0] != 3 {
		t.Fatalf("second read: %v, %v; want seq 3", seqs(es), err)
	}
	if es, c2, err := r.ReadEntries(ctx, p, cursor, 2, 50*time.Millisecond); err != nil || len(es) != 0 || c2 != cursor {
		t.Fatalf("a read with nothing new for 50ms: %v, cursor %q (was %q), %v; want nothing, the cursor unmoved", seqs(es), c2, cursor, err)
	}
	type read struct {
		es  []Entry
		err error
	}
	done := make(chan read, 1)
	go func() {
		es, _, err := r.ReadEntries(ctx, p, cursor, 2, time.Hour)
		done <- read{es, err}
	}()
	if err := env.c.Append(ctx, p, Entry{Epoch: 1, Owner: "a", Seq: 4}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-done:
		if got.err != nil || !slices.Equal(seqs(got.es), []uint64{4}) {
			t.Fatalf("a waiting read: %v, %v; want seq 4", seqs(got.es), got.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting read did not return within 10s of an append")
	}
}

func testLease(t *testing.T, env coordEnv) {
	ctx, c, p := context.Background(), env.c, Partition(7)
	const ttl = 300 * time.Millisecond
	if h, e, err := c.Lease(ctx, p); err != nil || h != "" || e != 0 {
		t.Fatalf("new partition's lease = %q %d %v", h, e, err)
	}
	e1, ok, err := c.TakeLease(ctx, p, "a", 0, ttl)
	if err != nil || !ok || e1 != 1 {
		t.Fatalf("first take = %d %v %v, want epoch 1", e1, ok, err)
	}
	if e, ok, err := c.TakeLease(ctx, p, "b", 0, ttl); err != nil || ok || e != e1 {
		t.Fatalf("take of a live lease by another = %d %v %v, want refused with epoch %d", e, ok, err, e1)
	}
	if h, e, _ := c.Lease(ctx, p); h != "a" || e != e1 {
		t.Fatalf("lease = %q %d", h, e)
	}
	if ok, err := c.RenewLease(ctx, p, "b", e1, ttl); err != nil || ok {
		t.Fatalf("renew by a non-holder = %v %v", ok, err)
	}
	if ok, err := c.RenewLease(ctx, p, "a", e1+1, ttl); err != nil || ok {
		t.Fatalf("renew at the wrong epoch = %v %v", ok, err)
	}
	if ok, err := c.RenewLease(ctx, p, "a", e1, ttl); err != nil || !ok {
		t.Fatalf("renew by the holder = %v %v", ok, err)
	}
	env.lapse(ttl)
	if ok, _ := c.RenewLease(ctx, p, "a", e1, ttl); ok {
		t.Fatal("renewed an expired lease")
	}
	// b takes the lapsed lease with min above the counter: the epoch
	// jumps past min and never goes back.
	e2, ok, err := c.TakeLease(ctx, p, "b", 10, ttl)
	if err != nil || !ok || e2 != 11 {
		t.Fatalf("take after lapse with min 10 = %d %v %v, want 11", e2, ok, err)
	}
	e3, ok, err := c.TakeLease(ctx, p, "b", 0, ttl) // the holder again: a new epoch
	if err != nil || !ok || e3 != 12 {
		t.Fatalf("holder's own retake = %d %v %v, want 12", e3, ok, err)
	}
	if err := c.ReleaseLease(ctx, p, "a", e3); err != nil {
		t.Fatal(err)
	}
	if h, _, _ := c.Lease(ctx, p); h != "b" {
		t.Fatalf("release by a non-holder freed the lease (holder %q)", h)
	}
	if err := c.ReleaseLease(ctx, p, "b", e3); err != nil {
		t.Fatal(err)
	}
	if h, e, _ := c.Lease(ctx, p); h != "" || e != 12 {
		t.Fatalf("after release: %q %d, want free at epoch 12", h, e)
	}
	if e, ok, _ := c.TakeLease(ctx, p, "c", 0, ttl); !ok || e != 13 {
		t.Fatalf("take after release = %d %v, want 13", e, ok)
	}
}

// testStreamBound: the stream keeps its latest StreamKeep entries (Redis
// trims approximately: at most one stream node, 100 entries, more) and
// drops older ones.
func testStreamBound(t *testing.T, env coordEnv) {
	ctx, c := context.Background(), env.c
	const keep, n = 100, 1000
	env.keep(keep)
	for i := range n {
		if err := c.Append(ctx, 1, Entry{Epoch: 1, Owner: "a", Seq: uint64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	es, _, err := c.Entries(ctx, 1, "", 2*n)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) < keep || len(es) > keep+100 {
		t.Fatalf("the stream holds %d entries after %d appends, want %d to %d", len(es), n, keep, keep+100)
	}
	for i, e := range es {
		if want := uint64(n - len(es) + i + 1); e.Seq != want {
			t.Fatalf("entry %d has seq %d, want %d: the latest entries in order", i, e.Seq, want)
		}
	}
}

func testStream(t *testing.T, env coordEnv) {
	ctx, c := context.Background(), env.c
	var want []Entry
	for i := range 5 {
		e := Entry{Epoch: 3, Owner: "a", Seq: uint64(i + 1), Data: []byte(fmt.Sprintf("batch\x00%d", i))}
		if i == 4 {
			e = Entry{Epoch: 3, Owner: "a", Seq: 5, Standby: "c"}
		}
		if err := c.Append(ctx, 1, e); err != nil {
			t.Fatal(err)
		}
		want = append(want, e)
	}
	if err := c.Append(ctx, 2, Entry{Epoch: 1, Owner: "x", Seq: 1}); err != nil {
		t.Fatal(err)
	}
	var got []Entry
	cursor := ""
	for {
		es, next, err := c.Entries(ctx, 1, cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 0 {
			if next != cursor {
				t.Fatalf("an empty read moved the cursor %q → %q", cursor, next)
			}
			break
		}
		got, cursor = append(got, es...), next
	}
	if len(got) != len(want) {
		t.Fatalf("read %d entries, want %d (another partition's leaked in?)", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Epoch != w.Epoch || g.Owner != w.Owner || g.Seq != w.Seq || g.Standby != w.Standby || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("entry %d = %+v, want %+v", i, g, w)
		}
	}
	if err := c.Append(ctx, 1, Entry{Epoch: 4, Owner: "b", Seq: 6}); err != nil {
		t.Fatal(err)
	}
	es, _, err := c.Entries(ctx, 1, cursor, 10)
	if err != nil || len(es) != 1 || es[0].Seq != 6 {
		t.Fatalf("read after the cursor = %+v %v, want only the new entry", es, err)
	}
}

// testMembers: a member's status is listed until it expires.
func testMembers(t *testing.T, env coordEnv) {
	ctx := context.Background()
	reg, ok := env.c.(Registry)
	if !ok {
		t.Fatalf("%T is not a Registry", env.c)
	}
	a := Member{Role: "owner", HTTP: "http://a:7080", Socket: "a:7070", Epoch: 3, Seq: 42, At: time.UnixMilli(1_800_000_000_000).UTC()}
	if err := reg.SetMember(ctx, "a", a, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetMember(ctx, "b", Member{Role: "standby"}, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// A lease of the same ttl taken after b's status: lapse waits for it,
	// so b's has expired by then.
	if _, _, err := env.c.TakeLease(ctx, 7, "x", 0, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	ms, err := reg.Members(ctx)
	if err != nil || len(ms) != 2 || ms["a"] != a || ms["b"].Role != "standby" {
		t.Fatalf("members = %+v %v, want a and b", ms, err)
	}
	env.lapse(200 * time.Millisecond) // b's status expires with the lease
	if ms, err := reg.Members(ctx); err != nil || len(ms) != 1 || ms["a"] != a {
		t.Fatalf("members after b's expired = %+v %v, want a alone", ms, err)
	}
}

func testAcks(t *testing.T, env coordEnv) {
	ctx, c := context.Background(), env.c
	if acks, err := c.Acks(ctx, 1); err != nil || len(acks) != 0 {
		t.Fatalf("acks of a new partition = %v %v", acks, err)
	}
	a1 := Ack{Standby: "b", Epoch: 2, Owner: "a", Seq: 10}
	a2 := Ack{Standby: "c", Epoch: 3, Owner: "c", Seq: 11}
	for _, a := range []Ack{{Standby: "b", Epoch: 2, Owner: "a", Seq: 9}, a1, a2} {
		if err := c.PutAck(ctx, 1, a); err != nil {
			t.Fatal(err)
		}
	}
	acks, err := c.Acks(ctx, 1)
	if err != nil || len(acks) != 2 || acks["b"] != a1 || acks["c"] != a2 {
		t.Fatalf("acks = %v %v, want each node's last", acks, err)
	}
	if sb, err := c.Standby(ctx, 1); err != nil || sb != "" {
		t.Fatalf("standby of a new partition = %q %v", sb, err)
	}
	if err := c.SetStandby(ctx, 1, "b"); err != nil {
		t.Fatal(err)
	}
	if sb, _ := c.Standby(ctx, 1); sb != "b" {
		t.Fatalf("standby = %q, want b", sb)
	}
	if err := c.SetStandby(ctx, 1, ""); err != nil {
		t.Fatal(err)
	}
	if sb, _ := c.Standby(ctx, 1); sb != "" {
		t.Fatalf("standby after clearing = %q", sb)
	}
	if a, err := c.Addr(ctx, "zz"); err != nil || a != "" {
		t.Fatalf("unknown node's address = %q %v", a, err)
	}
	if err := c.SetAddr(ctx, "b", "http://127.0.0.1:1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if a, err := c.Addr(ctx, "b"); err != nil || a != "http://127.0.0.1:1" {
		t.Fatalf("address = %q %v", a, err)
	}
}

// memLog is a history in memory.
type memLog struct {
	mu  sync.Mutex
	es  []Entry
	st  StandbyState
	bad error
}

func (l *memLog) Apply(e Entry, _ StandbyState) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e.Seq != uint64(len(l.es))+1 {
		l.bad = fmt.Errorf("apply %d onto %d", e.Seq, len(l.es))
		return l.bad
	}
	l.es = append(l.es, e)
	return nil
}

func (l *memLog) SaveState(st StandbyState) error { l.mu.Lock(); l.st = st; l.mu.Unlock(); return nil }

// The protocol on a real redis-server: an owner ships, its standby
// applies and acks, acknowledgements follow the acks; the owner stops
// renewing (as a paused process would), the standby takes over once the
// lease lapses, and the old owner learns it is fenced and can get
// nothing more acknowledged.
func TestProtocolOnRedis(t *testing.T) {
	ctx := context.Background()
	c := NewRedisCoord(redisClient(t))
	const p, ttl = Partition(3), 500 * time.Millisecond
	epoch, ok, err := c.TakeLease(ctx, p, "a", 0, ttl)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	owner := NewOwner(c, p, "a", epoch, 0, "")
	bLog := &memLog{}
	standby := NewStandby(c, p, "b", bLog, StandbyState{FenceEpoch: epoch, FenceOwner: "a"})
	if err := c.SetStandby(ctx, p, "b"); err != nil {
		t.Fatal(err)
	}
	owner.SetStandby("b")

	for i := range 10 {
		if _, err := owner.Ship(ctx, []byte(fmt.Sprintf("m%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if acked, err := owner.Poll(ctx); err != nil || acked != 0 {
		t.Fatalf("acked before the standby applied anything = %d %v", acked, err)
	}
	if n, err := standby.Step(ctx, 100); err != nil || n != 10 {
		t.Fatalf("standby applied %d %v, want 10", n, err)
	}
	if acked, err := owner.Poll(ctx); err != nil || acked != 10 {
		t.Fatalf("acked = %d %v, want 10", acked, err)
	}
	// While a's lease is live, b may not take over.
	if _, err := standby.TakeOver(ctx, ttl); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("takeover under a live lease = %v, want ErrLeaseHeld", err)
	}
	// a stops renewing; its lease lapses on Redis's clock.
	waitLapseOf(t, c, p)
	newOwner, err := standby.TakeOver(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if newOwner.Epoch() <= epoch {
		t.Fatalf("new epoch %d not above %d", newOwner.Epoch(), epoch)
	}
	// The old owner wakes and ships more: nothing of it is acknowledged.
	if _, err := owner.Ship(ctx, []byte("late")); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Poll(ctx); !errors.Is(err, ErrFenced) {
		t.Fatalf("old owner's poll after the takeover = %v, want ErrFenced", err)
	}
	if _, err := owner.Ship(ctx, []byte("later")); !errors.Is(err, ErrFenced) {
		t.Fatalf("fenced owner's ship = %v, want ErrFenced", err)
	}
	if len(bLog.es) != 10 {
		t.Fatalf("the new owner's history holds %d batches, want the 10 acknowledged", len(bLog.es))
	}
}

func waitLapseOf(t *testing.T, c Coord, p Partition) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		holder, _, err := c.Lease(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		if holder == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease still held by %s after 10s", holder)
		}
		time.Sleep(20 * time.Millisecond) // waiting for Redis's clock to expire it
	}
}

// The coordinator on a real Redis Cluster (3 masters, 3 replicas),
// logged in as an ACL user with RedisACL's rights: the same contract (each partition's keys share a hash tag, so its scripts
// run on one node), then a master is killed with SIGKILL: Redis Cluster
// promotes its replica, and the coordinator works again by itself, on
// the same partition, without restarting anything.
func TestCoordOnRedisCluster(t *testing.T) {
	acl := append([]string{"--user", "dingd", "on", ">dingd-pw"}, strings.Fields(RedisACL)...)
	rc := redistest.StartCluster(t, 3, 1, time.Second, acl...)
	c, closeRedis, err := DialRedis(RedisConfig{URL: "redis://dingd:dingd-pw@" + strings.Join(rc.Addrs(), ",")})
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	rdb := c.rdb
	sharedRedisContract(t, c)
	if t.Failed() {
		return
	}

	ctx := context.Background()
	const p = Partition(42)
	cc := rdb.(*redis.ClusterClient)
	slot, err := cc.ClusterKeySlot(ctx, key(p, "lease")).Result()
	if err != nil {
		t.Fatal(err)
	}
	var master *redistest.Server
	slots, err := cc.ClusterSlots(ctx).Result()
	for _, s := range slots {
		if int64(s.Start) <= slot && slot <= int64(s.End) && len(s.Nodes) > 0 {
			for _, n := range rc.Nodes {
				if n.Addr == s.Nodes[0].Addr {
					master = n
				}
			}
		}
	}
	if err != nil || master == nil {
		t.Fatalf("no master found for slot %d: %v", slot, err)
	}
	recoversFromMasterKill(t, c, p, master.Kill, func() {
		for _, n := range rc.Nodes {
			if n != master {
				out, _ := exec.Command("redis-cli", "-h", "127.0.0.1", "-p", n.Addr[strings.LastIndex(n.Addr, ":")+1:], "cluster", "nodes").CombinedOutput()
				t.Logf("%s:\n%s", n.Addr, out)
				break
			}
		}
	})
}

// recoversFromMasterKill takes partition p's lease on c and watches its
// acks, then kill()s the Redis master holding p's keys (a replica is
// promoted: Redis Cluster's or Sentinel's failover) and waits until c
// works again by itself, without restarting anything: p's lease can be
// read and its stream appended to, and the watcher, subscribed again,
// hears the acks put from then on. diag logs what Redis says if it does
// not within 30 s.
func recoversFromMasterKill(t *testing.T, c *RedisCoord, p Partition, kill, diag func()) {
	t.Helper()
	ctx := context.Background()
	if _, ok, err := c.TakeLease(ctx, p, "a", 0, time.Minute); err != nil || !ok {
		t.Fatalf("take before the failover: %v %v", ok, err)
	}
	// An owner watching its acks across the failover (its subscription
	// is on the master that dies: the channel shares the partition's
	// hash tag).
	heard := make(chan Ack, 1024)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if err := c.WatchAcks(wctx, p, func(a Ack) { heard <- a }); err != nil {
		t.Fatal(err)
	}
	kill()
	killed := time.Now()
	deadline := killed.Add(30 * time.Second)
	for {
		// Any answer (the lease may or may not have survived: Redis
		// replicates asynchronously) means the partition's keys are served
		// again.
		_, _, err := c.Lease(ctx, p)
		if err == nil {
			if err = c.Append(ctx, p, Entry{Epoch: 9, Owner: "b", Seq: 1}); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			diag()
			t.Fatalf("the coordinator did not recover within 30s of the master's death: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // waiting for Redis Cluster's failover
	}
	t.Logf("coordinator usable again %v after SIGKILL of the master of partition %d's keys", time.Since(killed).Round(time.Millisecond), p)
	// go-redis subscribes again on another node: the watcher hears the
	// acks put from then on (those put meanwhile are lost: a notice is a
	// hint, and the owner reads the recorded acks when none comes).
	want := Ack{Standby: "b", Epoch: 9, Owner: "a", Seq: 1}
	for {
		if err := c.PutAck(ctx, p, want); err != nil && time.Now().After(deadline) {
			t.Fatalf("put ack after the failover: %v", err)
		}
		select {
		case a := <-heard:
			if a != want {
				t.Fatalf("heard %+v after the failover, want %+v", a, want)
			}
			t.Logf("the ack watcher heard again %v after the SIGKILL", time.Since(killed).Round(time.Millisecond))
			return
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the ack watcher heard nothing within 30s of the master's death")
		}
	}
}

// TestReadEntriesEndsWithItsContext: a standby waiting on an empty
// stream (a blocking XREAD of an hour here) returns as soon as its
// context ends, not when the block does: the member stops its follower so
// to take a released partition over at once. And a waiting read returns
// the entry appended meanwhile, in the same round trip, with the cursor
// after it; a read that finds entries returns at once, at most n of
// them, where Entries would have.
func TestReadEntriesEndsWithItsContext(t *testing.T) {
	rdb := redisClient(t)
	c := NewRedisCoord(rdb)
	ctx, cancel := context.WithCancel(context.Background())
	type read struct {
		es     []Entry
		cursor string
		err    error
	}
	done := make(chan read, 1)
	readAsync := func(ctx context.Context, cursor string) {
		go func() {
			es, cur, err := c.ReadEntries(ctx, 3, cursor, 2, time.Hour)
			done <- read{es, cur, err}
		}()
	}
	blocked := func() {
		// Redis holds the XREAD blocked (go-redis gives up by itself a
		// call whose context ended before it was sent).
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			list, err := rdb.ClientList(context.Background()).Result()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(list, "cmd=xread") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no blocked XREAD in Redis's client list:\n%s", list)
			}
		}
	}
	readAsync(ctx, "")
	blocked()
	cancel()
	select {
	case r := <-done:
		if !errors.Is(r.err, context.Canceled) || len(r.es) != 0 || r.cursor != "" {
			t.Fatalf("ReadEntries after its context ended: %d entries, cursor %q, %v; want none, the cursor unmoved, context.Canceled", len(r.es), r.cursor, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadEntries did not return when its context ended")
	}
	// The cancelled XREAD is still blocked in Redis (go-redis lets it
	// run out); the next read is another, on another connection.
	readAsync(context.Background(), "")
	want := Entry{Epoch: 1, Owner: "a", Seq: 1, Data: []byte("x")}
	if err := c.Append(context.Background(), 3, want); err != nil {
		t.Fatal(err)
	}
	var r read
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ReadEntries did not return when an entry was appended")
	}
	if r.err != nil || len(r.es) != 1 || r.es[0].Seq != 1 || string(r.es[0].Data) != "x" || r.es[0].Owner != "a" {
		t.Fatalf("ReadEntries once an entry came: %+v, %v; want the entry appended", r.es, r.err)
	}
	for seq := uint64(2); seq <= 4; seq++ {
		if err := c.Append(context.Background(), 3, Entry{Epoch: 1, Owner: "a", Seq: seq}); err != nil {
			t.Fatal(err)
		}
	}
	es, cursor, err := c.ReadEntries(context.Background(), 3, r.cursor, 2, time.Hour)
	wantEs, wantCursor, werr := c.Entries(context.Background(), 3, r.cursor, 2)
	if err != nil || werr != nil || len(es) != 2 || es[0].Seq != 2 || es[1].Seq != 3 || cursor != wantCursor || len(wantEs) != 2 {
		t.Fatalf("ReadEntries after entry 1 with 3 waiting: %+v, cursor %q, %v; Entries: %+v, cursor %q, %v; want seqs 2 and 3 and one cursor", es, cursor, err, wantEs, wantCursor, werr)
	}
}

// TestAckNoticesReachTheirWatchers: an ack put for a partition reaches
// that partition's watchers, exactly as put (node ids are free text),
// and nobody else's; a watcher whose context ended gets nothing more;
// the channel is left once nobody watches it.
func TestAckNoticesReachTheirWatchers(t *testing.T) {
	rdb := redisClient(t)
	c := NewRedisCoord(rdb)
	ctx := context.Background()
	got3, got3b, got4 := make(chan Ack, 8), make(chan Ack, 8), make(chan Ack, 8)
	ctx3, stop3 := context.WithCancel(ctx)
	ctx4, stop4 := context.WithCancel(ctx)
	defer stop4()
	if err := c.WatchAcks(ctx3, 3, func(a Ack) { got3 <- a }); err != nil {
		t.Fatal(err)
	}
	if err := c.WatchAcks(ctx, 3, func(a Ack) { got3b <- a }); err != nil {
		t.Fatal(err)
	}
	if err := c.WatchAcks(ctx4, 4, func(a Ack) { got4 <- a }); err != nil {
		t.Fatal(err)
	}
	next := func(ch chan Ack) Ack {
		t.Helper()
		select {
		case a := <-ch:
			return a
		case <-time.After(10 * time.Second):
			t.Fatal("no notice within 10s")
			return Ack{}
		}
	}
	// The second watcher subscribed on the connection the first opened,
	// without waiting for Redis to confirm: put until it hears one.
	first := Ack{Standby: "node b 7", Epoch: 9, Owner: "node a", Seq: 41}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := c.PutAck(ctx, 4, first); err != nil {
			t.Fatal(err)
		}
		select {
		case a := <-got4:
			if a != first {
				t.Fatalf("notice %+v, want %+v", a, first)
			}
		case <-time.After(20 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("partition 4's watcher heard nothing within 10s")
			}
			continue
		}
		break
	}
	want := Ack{Standby: "b", Epoch: 9, Owner: "a 1", Seq: 42}
	if err := c.PutAck(ctx, 3, want); err != nil {
		t.Fatal(err)
	}
	if a, b := next(got3), next(got3b); a != want || b != want {
		t.Fatalf("partition 3's watchers heard %+v and %+v, want %+v", a, b, want)
	}
	acks, err := c.Acks(ctx, 3)
	if err != nil || acks["b"] != want {
		t.Fatalf("the recorded ack: %+v, %v; want %+v", acks, err, want)
	}
	stop3()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c.acks.mu.Lock()
		n := len(c.acks.watchers[3])
		c.acks.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stopped watcher is still registered after 10s")
		}
	}
	later := Ack{Standby: "b", Epoch: 9, Owner: "a 1", Seq: 43}
	if err := c.PutAck(ctx, 3, later); err != nil {
		t.Fatal(err)
	}
	if b := next(got3b); b != later {
		t.Fatalf("the remaining watcher heard %+v, want %+v", b, later)
	}
	select {
	case a := <-got3:
		t.Fatalf("the stopped watcher heard %+v", a)
	case a := <-got4:
		t.Fatalf("partition 4's watcher heard partition 3's %+v", a)
	default:
	}
	stop4()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		n, err := rdb.PubSubNumSub(ctx, ackChannel(4)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n[ackChannel(4)] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("partition 4's channel is still subscribed 10s after its last watcher stopped")
		}
	}
}

// TestAckNoticeEncoding: a notice decodes to the ack encoded, whatever
// the node ids hold, and a mangled one is refused.
func TestAckNoticeEncoding(t *testing.T) {
	for _, a := range []Ack{{Standby: "b", Epoch: 1, Owner: "a", Seq: 0}, {Standby: "", Epoch: 2, Owner: "x y", Seq: 9}, {Standby: "s 1 2", Epoch: 1 << 60, Owner: "", Seq: 1 << 62}} {
		got, err := decodeAckNotice(encodeAckNotice(a))
		if err != nil || got != a {
			t.Fatalf("%+v came back as %+v, %v", a, got, err)
		}
	}
	for _, bad := range []string{"", "1 2", "1 2 9 ab", "x 2 1 ab", "1 2 -1 ab"} {
		if a, err := decodeAckNotice(bad); err == nil {
			t.Fatalf("%q decoded as %+v, want an error", bad, a)
		}
	}
	if p, ok := partitionOfAckChannel(ackChannel(17)); !ok || p != 17 {
		t.Fatalf("ackChannel(17) read back as %d, %v", p, ok)
	}
}
