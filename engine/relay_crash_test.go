package engine_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/engine/store/pebblestore/crashfs"
)

// TestRelayCrashPoints takes the power away from one partition's disk at
// each write operation (a strided sample) of a workload of messages
// between two partitions: 1:1 and to a local user too, each way, with
// pumps (Outbox, ApplyRelay, AckRelay) and acks whose receipt events are
// relayed back. After the crash both partitions reopen from their disks,
// the pump runs until both outboxes are empty, and then:
//
//   - every message acknowledged before the crash is in each recipient's
//     stream on the recipient's partition, exactly once;
//   - no stream holds a message twice;
//   - engine.Check finds every invariant held on both stores.
//
// What happens to one side after the other lost its power is cut off as
// it is in the world: the workload stops at the first step that would
// hand the other side something the crashed disk may not hold (an
// Outbox read, an ApplyRelay answer), and an answer given after the crash
// point is not counted as acknowledged. "stop" loses every unsynced
// write; "torn" keeps a random half of the unsynced blocks.
//
//	go test ./engine -run TestRelayCrashPoints -v
func TestRelayCrashPoints(t *testing.T) {
	modes := map[string]crashfs.Plan{
		"stop": {Mode: crashfs.Stop},
		"torn": {Mode: crashfs.Stop, Unsynced: 50, Seed: 7},
	}
	for _, side := range []int{0, 1} {
		// Number the crashed side's write operations in a run without a
		// fault; the workload must hold its promises then too.
		r := newRelayCrashRun(t, side, crashfs.Plan{})
		r.workload()
		ops := len(r.fs[side].Ops())
		if problems := r.verify(); len(problems) > 0 {
			t.Fatalf("without a crash: %v", problems)
		}
		const budget = 120 // runs per side and mode, to fit make test
		stride := max(1, (ops+budget-1)/budget)
		if testing.Short() {
			stride *= 4
		}
		runs, cut, creating := 0, 0, 0
		for _, mode := range []string{"stop", "torn"} {
			for at := 1; at <= ops; at += stride {
				plan := modes[mode]
				plan.At = at
				r := newRelayCrashRun(t, side, plan)
				if r.creating = r.down(); r.creating {
					creating++
				}
				r.workload()
				if r.stoppedAt != "" {
					cut++
				}
				if problems := r.verify(); len(problems) > 0 {
					t.Fatalf("partition %d's disk lost its power at operation %d (%s) during %q: %v\n\t(%d acknowledged before)",
						side, at, mode, r.stoppedAt, problems, len(r.acked))
				}
				runs++
			}
		}
		t.Logf("partition %d: %d write operations, %d crash runs (every %d), %d cut the workload short, %d hit the stores' creation", side, ops, runs, stride, cut, creating)
		if cut == 0 {
			t.Fatalf("partition %d: no crash point was reached: the test proves nothing", side)
		}
	}
}

// relayCrashRun is one run: partitions 0 (alice, carol) and 1 (bob, dave),
// each on a crashfs disk; the disk of partition side carries out plan.
type relayCrashRun struct {
	t     *testing.T
	side  int
	fs    [2]*crashfs.FS
	dbs   [2]*pebblestore.DB
	es    [2]*engine.Engine
	acked []ackedMsg
	// stoppedAt names the step the crash cut short ("" if the workload ran
	// to its end).
	stoppedAt string
	// creating: the power went off while the stores were being made.
	creating bool
}

type ackedMsg struct {
	id engine.ID
	to []string
}

func newRelayCrashRun(t *testing.T, side int, plan crashfs.Plan) *relayCrashRun {
	r := &relayCrashRun{t: t, side: side}
	for p := range 2 {
		pl := crashfs.Plan{}
		if p == side {
			pl = plan
		}
		r.fs[p] = crashfs.New(pl)
		r.open(p, r.fs[p])
	}
	return r
}

func (r *relayCrashRun) open(p int, fs *crashfs.FS) {
	if err := r.tryOpen(p, fs); err != nil {
		r.t.Fatal(err)
	}
}

func (r *relayCrashRun) tryOpen(p int, fs *crashfs.FS) error {
	db, err := pebblestore.Open("data", pebblestore.Options{FS: fs.VFS()})
	if err != nil {
		return fmt.Errorf("partition %d: open: %w", p, err)
	}
	e, err := engine.Open(engine.Config{Store: db, Partition: uint32(p), Placement: placeUser})
	if err != nil {
		db.Close()
		return fmt.Errorf("partition %d: engine: %w", p, err)
	}
	e.SetSink(&recorder{})
	r.dbs[p], r.es[p] = db, e
	return nil
}

func (r *relayCrashRun) close() {
	for p := range 2 {
		if r.es[p] != nil {
			r.es[p].Close()
			r.dbs[p].Close()
			r.es[p], r.dbs[p] = nil, nil
		}
	}
}

// down reports whether the crashed side's power went off.
func (r *relayCrashRun) down() bool {
	_, hit := r.fs[r.side].Hit()
	return hit
}

// send submits a message; it counts as acknowledged only if it was
// answered before the crash point.
func (r *relayCrashRun) send(from, body string, to ...string) {
	p := placeUser(from)
	res, err := r.es[p].Submit(context.Background(), engine.Submission{From: from, To: to, Kind: engine.KindText, Body: []byte(body)})
	if err != nil {
		if int(p) == r.side && r.down() {
			return
		}
		r.t.Fatalf("submit %q: %v", body, err)
	}
	if !r.down() {
		r.acked = append(r.acked, ackedMsg{id: res.ID, to: to})
	}
}

// pump moves from's durable outbox records to the other partition once.
// It returns false when the crash cut it short.
func (r *relayCrashRun) pump(from int) bool {
	ctx := context.Background()
	to := 1 - from
	b, err := r.es[from].Outbox(uint32(to), 0, 64)
	if err != nil {
		r.t.Fatalf("outbox %d->%d: %v", from, to, err)
	}
	if from == r.side && r.down() {
		return false // what it read may not be on the disk
	}
	if len(b.Records) == 0 {
		return true
	}
	through, err := r.es[to].ApplyRelay(ctx, b)
	if to == r.side && r.down() {
		return false // its answer never left
	}
	if err != nil {
		r.t.Fatalf("apply %d->%d: %v", from, to, err)
	}
	if err := r.es[from].AckRelay(ctx, uint32(to), through); err != nil && !(from == r.side && r.down()) {
		r.t.Fatalf("ack %d->%d: %v", from, to, err)
	}
	return true
}

// ackAll acknowledges user's stream to its head on device d1.
func (r *relayCrashRun) ackAll(user string) {
	p := placeUser(user)
	h, err := r.es[p].Head(user)
	if err == nil && h > 0 {
		err = r.es[p].Ack(context.Background(), user, "d1", h)
	}
	if err != nil && !(int(p) == r.side && r.down()) {
		r.t.Fatalf("ack %s: %v", user, err)
	}
}

// workload runs until its end or the first step the crash cuts short,
// then closes both partitions.
func (r *relayCrashRun) workload() {
	defer r.close()
	step := func(name string, f func() bool) bool {
		if !f() || r.down() {
			r.stoppedAt = name
			return false
		}
		return true
	}
	for i := range 6 {
		ok := step(fmt.Sprintf("send %d", i), func() bool {
			r.send("alice", fmt.Sprintf("a%d", i), "bob", "carol")
			return true
		}) && step(fmt.Sprintf("reply %d", i), func() bool {
			r.send("dave", fmt.Sprintf("d%d", i), "alice")
			return true
		})
		if ok && i%2 == 1 {
			ok = step("pump 0->1", func() bool { return r.pump(0) }) &&
				step("pump 1->0", func() bool { return r.pump(1) }) &&
				step("acks", func() bool { r.ackAll("bob"); r.ackAll("alice"); return true }) &&
				step("pump receipts", func() bool { return r.pump(1) && r.pump(0) })
		}
		if !ok {
			return
		}
	}
}

// verify reopens both partitions from what their disks hold, pumps until
// both outboxes are empty, and returns the promises broken.
func (r *relayCrashRun) verify() (problems []string) {
	r.t.Helper()
	defer r.close()
	for p := range 2 {
		r.fs[p] = r.fs[p].Image() // only counts: the power stays on
		if err := r.tryOpen(p, r.fs[p]); err != nil {
			if r.creating && p == r.side && len(r.acked) == 0 {
				// Pebble had not finished making the store: there is
				// nothing in it to lose, and whether such a store opens is
				// Pebble's business (TestCrashPoints covers Open's points).
				return nil
			}
			return []string{err.Error()}
		}
	}
	for range 20 {
		moved := false
		for from := range 2 {
			b, err := r.es[from].Outbox(uint32(1-from), 0, 64)
			if err != nil {
				return []string{fmt.Sprintf("outbox of %d after the restart: %v", from, err)}
			}
			if len(b.Records) == 0 {
				continue
			}
			if !r.pump(from) {
				return []string{"the pump stopped after the restart"}
			}
			moved = true
		}
		if !moved {
			break
		}
	}
	for from := range 2 {
		if b, err := r.es[from].Outbox(uint32(1-from), 0, 1); err != nil || len(b.Records) > 0 {
			problems = append(problems, fmt.Sprintf("partition %d's outbox does not empty: %v %v", from, b.Records, err))
		}
	}
	// Each stream: its messages once each.
	seen := map[string]map[engine.ID]int{}
	for _, u := range []string{"alice", "bob", "carol", "dave"} {
		es, err := r.es[placeUser(u)].Range(u, 1, 1000)
		if err != nil {
			problems = append(problems, fmt.Sprintf("range %s: %v", u, err))
			continue
		}
		seen[u] = map[engine.ID]int{}
		for _, e := range es {
			if e.Kind == engine.EntryMessage {
				if seen[u][e.Message.ID]++; seen[u][e.Message.ID] == 2 {
					problems = append(problems, fmt.Sprintf("%s's stream holds message %s twice", u, e.Message.ID))
				}
			}
		}
	}
	for _, m := range r.acked {
		for _, u := range m.to {
			if seen[u][m.id] == 0 {
				problems = append(problems, fmt.Sprintf("acknowledged message %s is not in %s's stream", m.id, u))
			}
		}
	}
	for p := range 2 {
		if err := r.es[p].Barrier(context.Background()); err != nil {
			problems = append(problems, fmt.Sprintf("partition %d: %v", p, err))
		}
		rep, err := engine.Check(r.dbs[p])
		if err != nil || !rep.OK() {
			problems = append(problems, fmt.Sprintf("partition %d: check: %v %v", p, rep.Problems, err))
		}
	}
	return problems
}
