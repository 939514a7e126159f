package engine_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// relayPlace puts users in partitions: alice and carol in 0, bob and dave
// in 1; in the group test, aN in 0, bN in 1, cN in 2.
var relayPlace = map[string]uint32{
	"alice": 0, "carol": 0, "bob": 1, "dave": 1,
	"a0": 0, "a1": 0, "a2": 0, "b0": 1, "b1": 1, "b2": 1, "c0": 2, "c1": 2, "c2": 2,
}

func placeUser(u string) uint32 { return relayPlace[u] }

// relayNode is one partition's engine on its store.
type relayNode struct {
	e   *engine.Engine
	rec *recorder
	st  store.Store
	reg *prometheus.Registry
}

func openRelayNode(t testing.TB, st store.Store, p uint32, mod func(*engine.Config)) *relayNode {
	t.Helper()
	n := &relayNode{st: st, rec: &recorder{}, reg: prometheus.NewRegistry()}
	cfg := engine.Config{Store: st, Partition: p, Placement: placeUser, Registerer: n.reg}
	if mod != nil {
		mod(&cfg)
	}
	e, err := engine.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.SetSink(n.rec)
	t.Cleanup(func() { e.Close() })
	n.e = e
	return n
}

// memNodes opens partitions 0..n-1 on memstores.
func memNodes(t testing.TB, n int, mod func(*engine.Config)) []*relayNode {
	t.Helper()
	nodes := make([]*relayNode, n)
	for p := range nodes {
		nodes[p] = openRelayNode(t, memstore.New(), uint32(p), mod)
	}
	return nodes
}

// pebbleNode is a partition on Pebble that a test can restart.
type pebbleNode struct {
	*relayNode
	dir   string
	db    *pebblestore.DB
	close func()
}

func openPebbleNode(t testing.TB, dir string, p uint32) *pebbleNode {
	t.Helper()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n := &pebbleNode{relayNode: openRelayNode(t, db, p, nil), dir: dir, db: db}
	var once sync.Once
	n.close = func() {
		once.Do(func() {
			n.e.Close()
			db.Close()
		})
	}
	t.Cleanup(n.close)
	return n
}

// restart closes the engine and its store and opens them again.
func (n *pebbleNode) restart(t testing.TB, p uint32) *pebbleNode {
	t.Helper()
	n.close()
	return openPebbleNode(t, n.dir, p)
}

// pump moves every outbox's records to their partitions until none is
// left: Outbox, ApplyRelay, AckRelay, each batch through the wire codec
// (throughWire: every relay scenario checks that it carries the batch). It returns how many records it
// moved.
func pump(t testing.TB, nodes ...*relayNode) int {
	t.Helper()
	ctx := context.Background()
	moved := 0
	for range 100 {
		progress := false
		for _, from := range nodes {
			for to, dest := range nodes {
				if dest == from {
					continue
				}
				b, err := from.e.Outbox(uint32(to), 0, 64)
				if err != nil {
					t.Fatal(err)
				}
				if len(b.Records) == 0 {
					continue
				}
				b = throughWire(t, b) // as stage 5 sends it to another node
				through, err := dest.e.ApplyRelay(ctx, b)
				if err != nil {
					t.Fatalf("apply %d->%d: %v", b.From, b.To, err)
				}
				if want := b.Records[len(b.Records)-1].Seq; through != want {
					t.Fatalf("apply %d->%d: through %d, want %d", b.From, b.To, through, want)
				}
				if err := from.e.AckRelay(ctx, uint32(to), through); err != nil {
					t.Fatal(err)
				}
				moved += len(b.Records)
				progress = true
			}
		}
		if !progress {
			return moved
		}
	}
	t.Fatal("the outboxes never emptied")
	return moved
}

// checkStores runs engine.Check on each node's store.
func checkStores(t testing.TB, nodes ...*relayNode) {
	t.Helper()
	for p, n := range nodes {
		if err := n.e.Barrier(context.Background()); err != nil {
			t.Fatal(err)
		}
		r, err := engine.Check(n.st)
		if err != nil || !r.OK() {
			t.Fatalf("partition %d: Check: %v %v", p, r.Problems, err)
		}
	}
}

func outboxOf(t testing.TB, n *relayNode, to uint32) []engine.RelayRecord {
	t.Helper()
	b, err := n.e.Outbox(to, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	return b.Records
}

func headOf(t testing.TB, e *engine.Engine, user string) uint64 {
	t.Helper()
	h, err := e.Head(user)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestRelayOneToOne(t *testing.T) {
	nodes := memNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	m := send(t, a.e, "alice", "hello", "bob", "carol")
	if err := a.e.Barrier(context.Background()); err != nil { // the submit's batch is published
		t.Fatal(err)
	}
	if got := a.rec.wait(t, "carol", 1); len(got) != 1 || got[0].Message.ID != m.ID {
		t.Fatalf("carol on A got %+v", got)
	}
	if got := a.rec.entries("bob"); len(got) != 0 {
		t.Fatalf("A's sink delivered to bob, of partition 1: %+v", got)
	}
	if h := headOf(t, a.e, "bob"); h != 0 {
		t.Fatalf("A.Head(bob) = %d, want 0", h)
	}
	out := outboxOf(t, a, 1)
	if len(out) != 1 || out[0].Seq != 1 || out[0].Kind != engine.RelayMessage || fmt.Sprint(out[0].Users) != "[bob]" || out[0].Msg == nil || out[0].Msg.ID != m.ID {
		t.Fatalf("A.Outbox(1) = %+v, want one message record for [bob]", out)
	}
	if dests, err := a.e.OutboxDests(); err != nil || fmt.Sprint(dests) != "[1]" {
		t.Fatalf("OutboxDests = %v, %v", dests, err)
	}

	if n := pump(t, a, b); n != 1 {
		t.Fatalf("pumped %d records, want 1", n)
	}
	got := b.rec.wait(t, "bob", 1)
	if len(got) != 1 || got[0].Seq != 1 || got[0].Kind != engine.EntryMessage || got[0].Message.ID != m.ID || string(got[0].Message.Body) != "hello" {
		t.Fatalf("bob on B got %+v", got)
	}
	ma, err := a.e.Message(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := b.e.Message(m.ID)
	if err != nil || !reflect.DeepEqual(ma, mb) {
		t.Fatalf("B.Message = %+v (%v), want %+v", mb, err, ma)
	}
	if r := receiptOf(t, b.e, m.ID, "bob"); r.State != engine.StateSent {
		t.Fatalf("bob's receipt on B is %v, want sent", r.State)
	}
	if es, _ := b.e.Range("bob", 1, 10); len(es) != 1 || es[0].Message.ID != m.ID {
		t.Fatalf("B.Range(bob) = %+v", es)
	}
	if out := outboxOf(t, a, 1); len(out) != 0 {
		t.Fatalf("A.Outbox(1) after the acknowledgement = %+v", out)
	}
	if dests, err := a.e.OutboxDests(); err != nil || len(dests) != 0 {
		t.Fatalf("OutboxDests after the acknowledgement = %v, %v", dests, err)
	}
	checkStores(t, a, b)
}

func TestRelayApplyIsIdempotent(t *testing.T) {
	ctx := context.Background()
	a := openPebbleNode(t, t.TempDir(), 0)
	b := openPebbleNode(t, t.TempDir(), 1)
	m := send(t, a.e, "alice", "once", "bob")
	batch, err := a.e.Outbox(1, 0, 10)
	if err != nil || len(batch.Records) != 1 {
		t.Fatalf("Outbox = %+v, %v", batch, err)
	}
	for i := range 2 {
		through, err := b.e.ApplyRelay(ctx, batch)
		if err != nil || through != 1 {
			t.Fatalf("apply #%d: through %d, %v", i+1, through, err)
		}
		if h := headOf(t, b.e, "bob"); h != 1 {
			t.Fatalf("after apply #%d bob's head is %d, want 1", i+1, h)
		}
	}

	// A restarts before its AckRelay: the record comes again.
	a = a.restart(t, 0)
	again, err := a.e.Outbox(1, 0, 10)
	if err != nil || len(again.Records) != 1 || again.Records[0].Seq != 1 || again.Records[0].Msg.ID != m.ID {
		t.Fatalf("Outbox after the restart = %+v, %v", again, err)
	}
	if through, err := b.e.ApplyRelay(ctx, again); err != nil || through != 1 {
		t.Fatalf("apply after the restart: through %d, %v", through, err)
	}
	if h := headOf(t, b.e, "bob"); h != 1 {
		t.Fatalf("bob's head is %d, want 1", h)
	}

	// A record with a new seq for the same message: the receipt says bob
	// has it.
	dup := again.Records[0]
	dup.Seq = 2
	through, err := b.e.ApplyRelay(ctx, engine.RelayBatch{From: 0, To: 1, Records: []engine.RelayRecord{dup}})
	if err != nil || through != 2 {
		t.Fatalf("apply of a new seq for the same message: through %d, %v", through, err)
	}
	// And both in one batch, once more for a user who has none yet.
	both := dup
	both.Seq, both.Users = 3, []string{"bob", "dave"}
	twice := both
	twice.Seq = 4
	through, err = b.e.ApplyRelay(ctx, engine.RelayBatch{From: 0, To: 1, Records: []engine.RelayRecord{both, twice}})
	if err != nil || through != 4 {
		t.Fatalf("apply of one message twice in a batch: through %d, %v", through, err)
	}
	if h, d := headOf(t, b.e, "bob"), headOf(t, b.e, "dave"); h != 1 || d != 1 {
		t.Fatalf("heads bob %d, dave %d; want 1 and 1", h, d)
	}
	if err := b.e.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if got := b.rec.entries("bob"); len(got) != 1 {
		t.Fatalf("B's sink delivered %d entries to bob, want 1", len(got))
	}
	if err := a.e.AckRelay(ctx, 1, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.e.AckRelay(ctx, 1, 1); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := a.e.AckRelay(ctx, 1, 2); !errors.Is(err, engine.ErrBadRelay) {
		t.Fatalf("an acknowledgement beyond the outbox: %v, want ErrBadRelay", err)
	}
	if out := outboxOf(t, a.relayNode, 1); len(out) != 0 {
		t.Fatalf("Outbox after AckRelay = %+v", out)
	}
	checkStores(t, a.relayNode, b.relayNode)
}

// pipeGate is syncGate for a pipelined store (store.Pipelined, as Pebble
// is): Apply makes the batch visible and the engine runs its applied
// hooks and builds the next batch, while Wait holds the "fsync" until
// the test lets it complete. With syncGate, whose Commit holds, a
// record published when applied would not be told apart from one
// published when durable.
type pipeGate struct {
	store.Store
	applied, release chan struct{}
}

type pipeGateBatch struct {
	store.Batch
	g *pipeGate
}

func (g *pipeGate) NewBatch() store.Batch { return pipeGateBatch{g.Store.NewBatch(), g} }

func (b pipeGateBatch) Apply() error {
	if err := b.Batch.(store.Pipelined).Apply(); err != nil {
		return err
	}
	b.g.applied <- struct{}{}
	return nil
}

func (b pipeGateBatch) Wait() error {
	<-b.g.release
	return b.Batch.(store.Pipelined).Wait()
}

func submitErr(e *engine.Engine, from, to string) error {
	_, err := e.Submit(context.Background(), engine.Submission{From: from, To: []string{to}, Kind: engine.KindText, Body: []byte("x")})
	return err
}

func TestRelayOnlyDurable(t *testing.T) {
	for _, c := range []struct {
		name      string
		pipelined bool
		gate      func(inner store.Store, applied, release chan struct{}) store.Store
	}{
		{"fsync held in Commit", false, func(inner store.Store, applied, release chan struct{}) store.Store {
			return &syncGate{Store: inner, applied: applied, release: release}
		}},
		{"fsync held after Apply", true, func(inner store.Store, applied, release chan struct{}) store.Store {
			return &pipeGate{Store: inner, applied: applied, release: release}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			inner, applied, releaseC := memstore.New(), make(chan struct{}), make(chan struct{})
			a := openRelayNode(t, c.gate(inner, applied, releaseC), 0, nil)
			var releaseOnce sync.Once
			release := func() { releaseOnce.Do(func() { close(releaseC) }) }
			t.Cleanup(release) // before the engine's Close, even if the test fails
			done := make(chan error, 1)
			go func() { done <- submitErr(a.e, "alice", "bob") }()
			<-applied // the batch is in the store; its fsync is held
			local := make(chan error, 1)
			if c.pipelined {
				// A second batch is applied only after the first's
				// applied hooks have run: what they publish is visible now.
				go func() { local <- submitErr(a.e, "alice", "carol") }()
				<-applied
			}
			if _, err := inner.Get(engine.OutboxKeyForTest(1, 1)); err != nil {
				t.Fatalf("the outbox record is not in the applied batch: %v", err)
			}
			if out := outboxOf(t, a, 1); len(out) != 0 {
				t.Fatalf("Outbox during the fsync = %+v: a record a crash could take back", out)
			}
			select {
			case <-a.e.OutboxReady():
				t.Fatal("OutboxReady fired before the fsync")
			default:
			}
			release()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if c.pipelined {
				if err := <-local; err != nil {
					t.Fatal(err)
				}
			}
			if out := outboxOf(t, a, 1); len(out) != 1 {
				t.Fatalf("Outbox after the fsync = %+v, want one record", out)
			}
			select {
			case <-a.e.OutboxReady():
			case <-time.After(5 * time.Second):
				t.Fatal("OutboxReady did not fire after the fsync")
			}
		})
	}
	t.Run("failed commit", func(t *testing.T) {
		inner := memstore.New()
		a := openRelayNode(t, failingStore{inner}, 0, nil)
		_, err := a.e.Submit(context.Background(), engine.Submission{From: "alice", To: []string{"bob"}, Kind: engine.KindText, Body: []byte("x")})
		if !errors.Is(err, engine.ErrFailed) {
			t.Fatalf("submit: %v, want ErrFailed", err)
		}
		if out := outboxOf(t, a, 1); len(out) != 0 {
			t.Fatalf("Outbox after a failed commit = %+v", out)
		}
		select {
		case <-a.e.OutboxReady():
			t.Fatal("OutboxReady fired for a failed commit")
		default:
		}
		if n, err := engine.RelayKeys(inner); err != nil || n != 0 {
			t.Fatalf("%d relay keys in the store (%v), want 0", n, err)
		}
	})
}

func TestRelayGroupOncePerPartition(t *testing.T) {
	nodes := memNodes(t, 3, func(c *engine.Config) { c.FanoutChunk = 2 })
	to := []string{"a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"}
	m := send(t, nodes[0].e, "a0", "to all", to...)
	for p, want := range map[uint32]string{1: "[b0 b1 b2]", 2: "[c0 c1 c2]"} {
		out := outboxOf(t, nodes[0], p)
		if len(out) != 1 || out[0].Kind != engine.RelayMessage || fmt.Sprint(out[0].Users) != want {
			t.Fatalf("A.Outbox(%d) = %+v, want one record for %s", p, out, want)
		}
	}
	if n := pump(t, nodes...); n != 2 {
		t.Fatalf("pumped %d records, want 2", n)
	}
	for p, n := range nodes {
		waitFanout(t, n.e, m.ID)
		want := 3.0 // each destination fans out its 3 users with its own job
		if p == 0 {
			want = 0 // 2 local users: written with the message
		}
		if got := counterValue(t, n.reg, "ding_engine_fanout_entries_total"); got != want {
			t.Fatalf("partition %d wrote %v entries by fanout job, want %v", p, got, want)
		}
	}
	for _, u := range to {
		n := nodes[placeUser(u)]
		es, err := n.e.Range(u, 1, 10)
		if err != nil || len(es) != 1 || es[0].Message.ID != m.ID {
			t.Fatalf("%s's stream on partition %d = %+v, %v", u, placeUser(u), es, err)
		}
		if r := receiptOf(t, n.e, m.ID, u); r.State != engine.StateSent {
			t.Fatalf("%s's receipt is %v", u, r.State)
		}
	}
	checkStores(t, nodes...)
}

func TestRelayReceiptEventsReachTheSender(t *testing.T) {
	ctx := context.Background()
	nodes := memNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	m := send(t, a.e, "alice", "hi", "bob")
	pump(t, a, b)
	if err := b.e.Ack(ctx, "bob", "phone", 1); err != nil {
		t.Fatal(err)
	}
	if h := headOf(t, b.e, "alice"); h != 0 {
		t.Fatalf("B.Head(alice) = %d, want 0", h)
	}
	// The origin makes alice's event from bob's receipt (stage 2).
	out := outboxOf(t, b, 0)
	if len(out) != 1 || out[0].Kind != engine.RelayReceipt || out[0].User != "bob" || out[0].State != engine.StateDelivered ||
		out[0].Device != "phone" || fmt.Sprint(out[0].IDs) != fmt.Sprint([]engine.ID{m.ID}) {
		t.Fatalf("B.Outbox(0) = %+v, want one receipt of bob's", out)
	}
	pump(t, a, b)
	got := a.rec.wait(t, "alice", 1)
	if len(got) != 1 || got[0].Seq != 1 || got[0].Kind != engine.EntryReceipt || got[0].Receipt.User != "bob" || got[0].Receipt.State != engine.StateDelivered {
		t.Fatalf("alice's stream on A = %+v", got)
	}
	if err := b.e.Read(ctx, "bob", m.ID); err != nil {
		t.Fatal(err)
	}
	pump(t, a, b)
	got = a.rec.wait(t, "alice", 2)
	if len(got) != 2 || got[1].Seq != 2 || got[1].Receipt.State != engine.StateRead {
		t.Fatalf("alice's stream on A after the read = %+v", got)
	}
	if r := receiptOf(t, b.e, m.ID, "bob"); r.State != engine.StateRead {
		t.Fatalf("bob's receipt on B is %v, want read", r.State)
	}
	if r := receiptOf(t, a.e, m.ID, "bob"); r.State != engine.StateRead {
		t.Fatalf("bob's receipt on A is %v, want read", r.State)
	}
	checkStores(t, a, b)
}

func TestRelaySeqSurvivesAckAndRestart(t *testing.T) {
	a := openPebbleNode(t, t.TempDir(), 0)
	b := openRelayNode(t, memstore.New(), 1, nil)
	send(t, a.e, "alice", "one", "bob")
	pump(t, a.relayNode, b)
	if out := outboxOf(t, a.relayNode, 1); len(out) != 0 {
		t.Fatalf("outbox after the pump = %+v", out)
	}
	a = a.restart(t, 0)
	m2 := send(t, a.e, "alice", "two", "bob")
	out := outboxOf(t, a.relayNode, 1)
	if len(out) != 1 || out[0].Seq != 2 {
		t.Fatalf("the record after an acknowledgement and a restart = %+v, want seq 2", out)
	}
	pump(t, a.relayNode, b)
	es, err := b.e.Range("bob", 1, 10)
	if err != nil || len(es) != 2 || es[1].Message.ID != m2.ID {
		t.Fatalf("bob's stream on B = %+v, %v: the second message was dropped as a duplicate", es, err)
	}
	checkStores(t, a.relayNode, b)
}

func TestRelayGapAndWrongPartition(t *testing.T) {
	ctx := context.Background()
	nodes := memNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	m := send(t, a.e, "alice", "x", "bob")
	good, err := a.e.Outbox(1, 0, 10)
	if err != nil || len(good.Records) != 1 {
		t.Fatalf("Outbox = %+v, %v", good, err)
	}
	gap := good
	gap.Records = []engine.RelayRecord{good.Records[0]}
	gap.Records[0].Seq = 2
	wrong := good
	wrong.To = 2
	holes := good
	holes.Records = []engine.RelayRecord{good.Records[0], good.Records[0]}
	holes.Records[1].Seq = 3
	for _, c := range []struct {
		name string
		b    engine.RelayBatch
		want error
	}{
		{"gap", gap, engine.ErrRelayGap},
		{"wrong partition", wrong, engine.ErrWrongPartition},
		{"not consecutive", holes, engine.ErrBadRelay},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := b.e.ApplyRelay(ctx, c.b); !errors.Is(err, c.want) {
				t.Fatalf("ApplyRelay: %v, want %v", err, c.want)
			}
			if err := b.e.Barrier(ctx); err != nil {
				t.Fatal(err)
			}
			if h := headOf(t, b.e, "bob"); h != 0 {
				t.Fatalf("bob's head is %d", h)
			}
			if _, err := b.e.Message(m.ID); !errors.Is(err, engine.ErrNotFound) {
				t.Fatalf("the message was stored: %v", err)
			}
			if n, err := engine.RelayKeys(b.st); err != nil || n != 0 {
				t.Fatalf("%d relay keys written (%v)", n, err)
			}
		})
	}
	// The watermark did not move: the record at seq 1 still applies.
	if through, err := b.e.ApplyRelay(ctx, good); err != nil || through != 1 {
		t.Fatalf("ApplyRelay after the refusals: through %d, %v", through, err)
	}
	if h := headOf(t, b.e, "bob"); h != 1 {
		t.Fatalf("bob's head is %d, want 1", h)
	}
}

// TestNoPlacementWritesNoRelayKeys: without a Placement (every caller
// before partitions), the usual workload writes none of the relay's keys.
func TestNoPlacementWritesNoRelayKeys(t *testing.T) {
	ctx := context.Background()
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			st := open(t)
			e, _ := openEngine(t, st)
			m := send(t, e, "ana", "hi", "bo", "cy")
			if err := e.Ack(ctx, "bo", "phone", 1); err != nil {
				t.Fatal(err)
			}
			if err := e.Read(ctx, "bo", m.ID); err != nil {
				t.Fatal(err)
			}
			send(t, e, "bo", "re", "ana")
			if err := e.Barrier(ctx); err != nil {
				t.Fatal(err)
			}
			if n, err := engine.RelayKeys(st); err != nil || n != 0 {
				t.Fatalf("%d relay keys (%v), want 0", n, err)
			}
			if out, err := e.Outbox(1, 0, 10); err != nil || len(out.Records) != 0 {
				t.Fatalf("Outbox = %+v, %v", out, err)
			}
			if _, err := e.ApplyRelay(ctx, engine.RelayBatch{From: 1, To: 0}); !errors.Is(err, engine.ErrWrongPartition) {
				t.Fatalf("ApplyRelay without a Placement: %v, want ErrWrongPartition", err)
			}
			r, err := engine.Check(st)
			if err != nil || !r.OK() || r.Outbox != 0 {
				t.Fatalf("Check = %+v, %v", r, err)
			}
		})
	}
}

// TestCrossPartitionSecretChatWorks: a secret chat with a user of another
// partition is created (stage 3; relay_secret_test.go tests it whole), in
// its creator's partition only; DINGs across partitions work too (stage 2).
func TestCrossPartitionSecretChatWorks(t *testing.T) {
	ctx := context.Background()
	nodes := memNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	if _, err := b.e.CreateChat(ctx, engine.ChatRequest{From: "alice", To: "bob", Level: engine.Level1}); !errors.Is(err, engine.ErrCrossPartition) || engine.CodeOf(err) != engine.CodeBadRequest {
		t.Fatalf("a secret chat created outside its creator's partition: %v, want ErrCrossPartition", err)
	}
	if n, err := engine.RelayKeys(b.st); err != nil || n != 0 {
		t.Fatalf("%d relay keys (%v), want 0", n, err)
	}
	ch, err := a.e.CreateChat(ctx, engine.ChatRequest{From: "alice", To: "bob", Level: engine.Level1})
	if err != nil {
		t.Fatalf("a secret chat with another partition: %v", err)
	}
	if out := outboxOf(t, a, 1); len(out) != 1 || out[0].Kind != engine.RelayChat || out[0].Chat.ID != ch.ID {
		t.Fatalf("A.Outbox(1) after the chat = %+v", out)
	}
	pump(t, a, b)
	if got, err := b.e.Chat(ch.ID); err != nil || fmt.Sprint(got) != fmt.Sprint(ch) {
		t.Fatalf("the chat at B: %+v, %v", got, err)
	}
	if _, err := a.e.CreateChat(ctx, engine.ChatRequest{From: "alice", To: "carol", Level: engine.Level1}); err != nil {
		t.Fatalf("a local secret chat: %v", err)
	}
	if _, err := a.e.Ding(ctx, engine.DingRequest{From: "alice", To: []string{"carol", "bob"}, Text: "down", Policy: "inapp"}); err != nil {
		t.Fatalf("a DING to one local and one remote user: %v", err)
	}
	if out := outboxOf(t, a, 1); len(out) != 1 || out[0].Kind != engine.RelayMessage || fmt.Sprint(out[0].Users) != "[bob]" {
		t.Fatalf("A.Outbox(1) after the DING = %+v", out)
	}
	checkStores(t, a, b)
}

// TestRelayLostMessageIsSkipped: a record whose message is gone (lost:
// retention keeps outboxed messages) is reported by Check, comes out of
// Outbox without its message, and moves the destination's watermark
// without delivering anything, so the pump does not stall on it.
func TestRelayLostMessageIsSkipped(t *testing.T) {
	ctx := context.Background()
	nodes := memNodes(t, 2, func(c *engine.Config) { c.MessageCacheBytes = -1 }) // the cache would still have it
	a, b := nodes[0], nodes[1]
	m := send(t, a.e, "alice", "x", "bob")
	if err := engine.DeleteMessageRecord(a.st, m.ID); err != nil {
		t.Fatal(err)
	}
	if r, err := engine.Check(a.st); err != nil || r.OK() || r.Outbox != 1 {
		t.Fatalf("Check = %+v, %v; want the lost message reported", r, err)
	}
	out := outboxOf(t, a, 1)
	if len(out) != 1 || out[0].Msg != nil {
		t.Fatalf("Outbox = %+v, want one record without its message", out)
	}
	if through, err := b.e.ApplyRelay(ctx, engine.RelayBatch{From: 0, To: 1, Records: out}); err != nil || through != 1 {
		t.Fatalf("ApplyRelay: through %d, %v", through, err)
	}
	if h := headOf(t, b.e, "bob"); h != 0 {
		t.Fatalf("bob's head is %d, want 0", h)
	}
	// Its acknowledgement writes no receipt at the origin for the lost
	// message.
	if err := a.e.AckRelay(ctx, 1, 1); err != nil {
		t.Fatal(err)
	}
	if rs, err := a.e.Receipts(m.ID); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("Receipts of the lost message at A = %+v, %v", rs, err)
	}
}
