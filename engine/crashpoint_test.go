package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/engine/store/pebblestore/crashfs"
	"github.com/dingmq/ding/internal/fakeclock"
)

// Crash points (issue 13). TestCrashPoints runs one workload that goes
// through every step of the commit and publish path (submits 1:1 and to
// a group, an ack, a read, a DING and its timer, a confirmation, a secret
// message, its read and its burn, an announcement and its fan-out, a
// retention sweep), on Pebble over crashfs, once to number the file
// system's write operations (from opening the store to closing it), then
// again for every one of them (or every -crash.stride'th), in each mode:
//
//	fail  that operation fails with an I/O error (the others succeed)
//	stop  the power goes off just before it: the store is reopened from
//	      what was synced then, and answers given after it never happened
//	torn  stop, with half of the unsynced blocks kept (a torn write)
//
// After each run the store is reopened from what the disk kept, checked
// (engine.Check: streams gap-free, nothing half-applied), and the engine
// is opened on it with its clock past every timer of the workload, and
// left to finish what it resumes (fan-outs, escalation steps, burns).
// Then every promise of an op answered OK before the fault is checked:
// each message is in each recipient's stream with its body (a secret
// message read before the crash: burned, its key gone; once the
// retention sweep started, a message may be gone from a stream it
// trimmed); an ack's cursor and receipts, a read's and a confirmation's
// receipts stand; the DING's SMS step was sent once, or twice at most
// across the restart, and not after the confirmation. The engine must accept a new message at the
// next seq, engine.Check must find nothing again, and every op answered
// after the fault must have got a typed, retryable error (UNAVAILABLE).
//
// Two passes: serial, where the store's batches are synced one at a time
// (syncedApply) so that the operations are numbered the same every run
// and any point replays exactly; and overlap, as in production, where a
// batch's fsync overlaps the next batch's apply and Pebble may write two
// of the fan-out's chunks in one write or two (the numbering can vary
// there), which alone would catch an answer given before its fsync.
//
// The runs happen in a child process (the test binary again), so that a
// run that kills the process is seen rather than ending the test: Pebble
// panics, by design, when some writes fail (a MANIFEST write, the close
// of a write-ahead log while rotating it, a directory's fsync), and such
// a point is reported as stopped by Pebble (what it leaves on disk is
// what stop mode checks at the same point). The process dying anywhere
// else, or after the store reported the failure, fails the test.
//
//	go test ./engine -run TestCrashPoints -crash.all -v                 # every point, and the matrices
//	go test ./engine -run TestCrashPoints/serial -crash.point 57 -v    # replay one point in this process, with logs
//	go test ./engine -run TestCrashPoints/serial -crash.point 57 -crash.modes stop -v
//
// (Replayed in this process, a point that Pebble stops panics the test
// binary: that is the point.)
var (
	crashAll     = flag.Bool("crash.all", false, "TestCrashPoints: run every crash point, not a strided sample")
	crashPoint   = flag.Int("crash.point", 0, "TestCrashPoints: run only this crash point, in this process, with logs")
	crashModes   = flag.String("crash.modes", "fail,stop,torn", "TestCrashPoints: the modes to run")
	crashStride  = flag.Int("crash.stride", 0, "TestCrashPoints: run every n-th point (zero: chosen to fit make test)")
	crashOverlap = flag.Bool("crash.overlap", false, "TestCrashPoints: (internal) the child's pass is the overlap one")
	crashChild   = flag.String("crash.child", "", "TestCrashPoints: (internal) the runs a child process makes, as mode:point ...")
)

// crashBudget is about how many runs a pass makes without -crash.all
// (each takes a few milliseconds, tens under the race detector): the
// points are strided beyond it. Today's 91 points in 3 modes fit, so
// make test runs every point.
const crashBudget = 300

var crashPlans = map[string]crashfs.Plan{
	"fail": {Mode: crashfs.Fail},
	"stop": {Mode: crashfs.Stop},
	"torn": {Mode: crashfs.Stop, Unsynced: 50, Seed: 13},
}

// crashOutcome is what one run found.
type crashOutcome struct {
	Mode    string   `json:"mode"`
	Point   int      `json:"point"`
	Step    string   `json:"step"`    // the workload step in flight at the point
	Op      string   `json:"op"`      // the operation
	Opened  bool     `json:"opened"`  // the store opened (else the fault was in its Open)
	Acked   int      `json:"acked"`   // messages acknowledged (before the crash)
	Kept    int      `json:"kept"`    // other promises of ops answered OK (receipts, cursor, SMS, burn)
	Refused int      `json:"refused"` // ops answered with an error
	Failed  bool     `json:"failed"`  // the engine stopped writing (ErrFailed)
	Broken  []string `json:"broken"`  // the contract's broken promises
	Stopped string   `json:"stopped"` // the process died: its panic
}

func runCrashPoint(t *testing.T, mode string, n int, overlap, verbose bool, onFailure func()) crashOutcome {
	plan := crashPlans[mode]
	plan.At = n
	r := newCrashRun(t, plan, overlap, verbose)
	r.onFailure = onFailure
	r.workload()
	r.verify()
	if verbose {
		for _, m := range r.acked {
			t.Logf("acknowledged before the fault, during %q: %s %q to %v", m.step, m.id, m.body, m.to)
		}
		for _, e := range r.errored {
			t.Logf("refused: %s", e)
		}
	}
	return crashOutcome{Mode: mode, Point: n, Step: r.hitStep, Op: r.hitOp, Opened: r.opened,
		Acked: len(r.acked), Kept: len(r.promises), Refused: len(r.errored), Failed: r.engineErr != nil, Broken: r.failed}
}

func TestCrashPoints(t *testing.T) {
	if *crashChild != "" {
		crashChildRuns(t, strings.Fields(*crashChild), *crashOverlap)
		return
	}
	if testing.Short() && *crashPoint == 0 && !*crashAll {
		t.Skip("crash points: not in -short")
	}
	t.Run("serial", func(t *testing.T) { crashPoints(t, false) })
	t.Run("overlap", func(t *testing.T) { crashPoints(t, true) })
}

// crashPoints is one pass: serial (each batch synced before the next is
// applied: the operations are numbered the same every run) or overlap
// (as in production: Pebble may write the fan-out's chunks to its log in
// one write or two, so the numbering can vary there from run to run).
func crashPoints(t *testing.T, overlap bool) {
	count := func() ([]crashfs.Op, []string) {
		r := newCrashRun(t, crashfs.Plan{}, overlap, false)
		r.workload()
		r.verify()
		if len(r.failed) > 0 {
			t.Fatalf("the workload fails without a fault: %v", r.failed)
		}
		return r.fs.Ops(), r.opSteps
	}
	// Number the operations, twice: in the serial pass the numbering
	// must not depend on scheduling, or a point would not replay.
	ops, steps := count()
	if again, _ := count(); !slices.Equal(opKinds(ops), opKinds(again)) {
		msg := fmt.Sprintf("the workload numbered its write operations differently in two runs (%d, then %d): %s",
			len(ops), len(again), diffOps(ops, again))
		if !overlap {
			t.Fatalf("%s: points would not replay", msg)
		}
		t.Log(msg)
	}
	var modes []string
	for _, m := range strings.Split(*crashModes, ",") {
		if _, ok := crashPlans[m]; !ok {
			t.Fatalf("-crash.modes: unknown mode %q", m)
		}
		modes = append(modes, m)
	}
	if *crashPoint > 0 {
		for _, mode := range modes {
			t.Logf("crash point %d (%s): %s", *crashPoint, mode, opAt(ops, *crashPoint))
			o := runCrashPoint(t, mode, *crashPoint, overlap, true, nil)
			t.Logf("%+v", o)
			reportCrashPoint(t, o)
		}
		return
	}
	stride := *crashStride
	if stride == 0 && !*crashAll {
		stride = (len(ops)*len(modes) + crashBudget - 1) / crashBudget
	}
	stride = max(1, stride)
	var runs []string
	for _, mode := range modes {
		for n := 1; n <= len(ops); n += stride {
			runs = append(runs, fmt.Sprintf("%s:%d", mode, n))
		}
	}
	t.Logf("%d write operations; %d runs in modes %v (every %d)", len(ops), len(runs), modes, stride)
	outcomes := crashChildren(t, runs, overlap, ops, steps)
	for _, o := range outcomes {
		reportCrashPoint(t, o)
	}
	t.Logf("the matrix (bench/RESULTS.md):\n%s", crashMatrix(ops, steps, modes, outcomes))
}

func reportCrashPoint(t *testing.T, o crashOutcome) {
	t.Helper()
	if len(o.Broken) > 0 {
		t.Errorf("crash point %d (%s), %s, during %q:\n\t%s\n\treplay: go test ./engine -run %s -crash.point %d -crash.modes %s -v",
			o.Point, o.Mode, o.Op, o.Step, strings.Join(o.Broken, "\n\t"), t.Name(), o.Point, o.Mode)
	}
}

// crashChildRuns makes the runs in a child process and prints each
// outcome on its own line for the parent.
func crashChildRuns(t *testing.T, runs []string, overlap bool) {
	for _, run := range runs {
		mode, p, _ := strings.Cut(run, ":")
		n, err := strconv.Atoi(p)
		if err != nil || crashPlans[mode].Mode == crashfs.Count {
			t.Fatalf("-crash.child: bad run %q", run)
		}
		fmt.Printf("crashpoint: start %s\n", run)
		// Told the parent, in case the process dies after it.
		failure := sync.OnceFunc(func() { fmt.Printf("crashpoint: failure reported %s\n", run) })
		b, err := json.Marshal(runCrashPoint(t, mode, n, overlap, false, failure))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("crashpoint: done %s\n", b)
	}
}

// crashChildren makes the runs in child processes: when one dies, the
// run in flight is recorded as stopped with its panic, and a new child
// goes on with the next.
func crashChildren(t *testing.T, runs []string, overlap bool, ops []crashfs.Op, steps []string) []crashOutcome {
	var out []crashOutcome
	for len(runs) > 0 {
		args := []string{"-test.run=^TestCrashPoints$", "-test.count=1", "-test.timeout=5m", "-crash.child=" + strings.Join(runs, " ")}
		if overlap {
			args = append(args, "-crash.overlap")
		}
		cmd := exec.Command(os.Args[0], args...)
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		err := cmd.Run()
		done := 0
		for _, line := range strings.Split(buf.String(), "\n") {
			if j, ok := strings.CutPrefix(line, "crashpoint: done "); ok {
				var o crashOutcome
				if err := json.Unmarshal([]byte(j), &o); err != nil {
					t.Fatalf("child: %v: %s", err, line)
				}
				out = append(out, o)
				done++
			}
		}
		if done == len(runs) && err == nil {
			return out
		}
		if done == len(runs) {
			t.Fatalf("the child made every run, then failed: %v\n%s", err, buf.String())
		}
		// The child died during runs[done]. Pebble may stop the process
		// at the fault itself (its policy); not once the store reported
		// it: the engine then stops writing and must live on (reads,
		// its shutdown, the store's Close).
		mode, p, _ := strings.Cut(runs[done], ":")
		n, _ := strconv.Atoi(p)
		o := crashOutcome{Mode: mode, Point: n, Op: opAt(ops, n), Stopped: firstPanicLine(buf.String())}
		if n >= 1 && n <= len(steps) {
			o.Step = steps[n-1]
		}
		switch {
		case strings.Contains(buf.String(), "crashpoint: failure reported "+runs[done]+"\n"):
			o.Broken = []string{"the process died after the store had reported the failure:\n" + tail(buf.String(), 60)}
		case !stoppedByPebble(buf.String()):
			o.Broken = []string{"the process died outside Pebble:\n" + tail(buf.String(), 60)}
		}
		out = append(out, o)
		runs = runs[done+1:]
	}
	return out
}

// stoppedByPebble reports whether a dead child's output shows a panic
// raised by Pebble itself (its own panic, or its Logger.Fatalf): Pebble's
// policy on writes it cannot recover from. The panicking function is the
// first frame of the first goroutine's trace, or the frame after its last
// panic( (a panic raised again, or one that a deferred unlock turned into
// a fatal error).
func stoppedByPebble(out string) bool {
	_, trace, ok := strings.Cut(out, " [running]:\n")
	if !ok {
		return false
	}
	trace, _, _ = strings.Cut(trace, "\n\n")
	var frames []string
	for _, line := range strings.Split(trace, "\n") {
		if line != "" && !strings.HasPrefix(line, "\t") {
			frames = append(frames, line)
		}
	}
	for i := len(frames) - 1; i >= 0; i-- {
		if strings.HasPrefix(frames[i], "panic(") {
			frames = frames[i+1:]
			break
		}
	}
	for _, f := range frames {
		if strings.Contains(f, "pebblestore.slogLogger.Fatalf") {
			continue
		}
		return strings.HasPrefix(f, "github.com/cockroachdb/pebble/")
	}
	return false
}

func firstPanicLine(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ") || strings.HasPrefix(line, "\tfatal error: ") {
			return strings.TrimSpace(line)
		}
	}
	return "(no panic line)"
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}

func opKinds(ops []crashfs.Op) []string {
	out := make([]string, len(ops))
	for i, o := range ops {
		out[i] = o.Kind + " " + o.Path
	}
	return out
}

func opAt(ops []crashfs.Op, n int) string {
	if n < 1 || n > len(ops) {
		return fmt.Sprintf("op %d: beyond the %d of the counting run", n, len(ops))
	}
	return ops[n-1].String()
}

func diffOps(a, b []crashfs.Op) string {
	for i := range min(len(a), len(b)) {
		if a[i].Kind != b[i].Kind || a[i].Path != b[i].Path {
			return fmt.Sprintf("first difference: %s, then %s", a[i], b[i])
		}
	}
	return "one is a prefix of the other"
}

// crashRun is one run of the workload on one plan, and its verification.
type crashRun struct {
	t       *testing.T
	plan    crashfs.Plan
	overlap bool // a batch's fsync may overlap the next one's apply (else syncedApply)
	fs      *crashfs.FS
	clock   *fakeclock.Clock
	keys    *crashKeys
	dir     *crashDirectory
	sends   *fakeNotifier
	log     *slog.Logger

	db *pebblestore.DB
	e  *engine.Engine

	// mu guards what the workload's answers record, and the crash
	// instant: answers after it were never seen by anyone.
	mu        sync.Mutex
	step      string                // the workload step in flight
	crashed   bool                  // a stop plan's power loss happened
	keysLeft  map[[16]byte][32]byte // the durable keys at the crash
	acked     []ackedMessage
	promises  []crashPromise
	dingSent  int      // SMS sent for the DING before the crash
	swept     bool     // the retention sweep started: acknowledged messages may be gone below a trim mark
	errored   []string // ops answered with an error (after a fault: the engine said no)
	hitStep   string   // the step in flight at the plan's operation
	hitOp     string
	opSteps   []string // the step in flight at each operation
	opened    bool     // the store opened
	engineErr error    // what stopped the engine from writing (before the crash)
	onFailure func()   // called when an op is first refused, or the engine stopped writing

	failed []string // broken promises
}

// ackedMessage is a message whose submit (or DING, or announcement) was
// answered OK: it must be in each of to's streams after any crash.
type ackedMessage struct {
	id     engine.ID
	body   string
	to     []string
	secret bool // or burned instead
	step   string
}

func newCrashRun(t *testing.T, plan crashfs.Plan, overlap, verbose bool) *crashRun {
	r := &crashRun{t: t, plan: plan, overlap: overlap, clock: fakeclock.New(t0), keys: newCrashKeys(), dir: newCrashDirectory(), sends: &fakeNotifier{}}
	r.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	if verbose {
		r.log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	r.plan.OnHit = func(op crashfs.Op) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.hitStep, r.hitOp = r.step, op.String()
		if plan.Mode == crashfs.Stop {
			r.crashed = true
			r.keysLeft = r.keys.durableKeys()
			r.dingSent = len(r.sends.all())
		}
	}
	r.plan.Observe = func(op crashfs.Op) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.opSteps = append(r.opSteps, r.step)
	}
	r.fs = crashfs.New(r.plan)
	return r
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func (r *crashRun) fail(format string, args ...any) {
	r.failed = append(r.failed, fmt.Sprintf(format, args...))
}

func (r *crashRun) setStep(s string) {
	r.mu.Lock()
	r.step = s
	r.mu.Unlock()
}

// answered records an op's answer: a message acknowledged, or an error.
// An answer after a stop plan's crash is dropped (the process was dead).
func (r *crashRun) answered(err error, m *ackedMessage, promises ...crashPromise) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.crashed {
		return err == nil
	}
	if err != nil {
		if r.onFailure != nil {
			r.onFailure()
		}
		r.errored = append(r.errored, fmt.Sprintf("%s: %v", r.step, err))
		// An op refused after a fault: with a typed, retryable code,
		// never a client error or an untyped one.
		if c := engine.CodeOf(err); c != engine.CodeUnavailable && c != engine.CodeAborted {
			r.fail("%s: answered %v (code %s), want UNAVAILABLE or ABORTED", r.step, err, c)
		}
		return false
	}
	if m != nil {
		m.step = r.step
		r.acked = append(r.acked, *m)
	}
	for _, p := range promises {
		p.step = r.step
		r.promises = append(r.promises, p)
	}
	return true
}

// crashPromise is what an op answered OK promised, checked after the
// restart: check returns what is wrong, or "".
type crashPromise struct {
	step  string
	check func(e *engine.Engine) string
}

func promise(check func(e *engine.Engine) string) crashPromise { return crashPromise{check: check} }

// receiptAtLeast promises that user's receipt of id is at least state,
// unless retention deleted the message.
func (r *crashRun) receiptAtLeast(id engine.ID, user string, state engine.State) crashPromise {
	return promise(func(e *engine.Engine) string {
		rs, err := e.Receipts(id)
		if errors.Is(err, engine.ErrNotFound) && r.retained(e, id) {
			return ""
		}
		if err != nil {
			return fmt.Sprintf("receipts of %s: %v", id, err)
		}
		for _, rc := range rs {
			if rc.User == user {
				if rc.State < state {
					return fmt.Sprintf("%s's receipt of %s is %v, below %v", user, id, rc.State, state)
				}
				return ""
			}
		}
		return fmt.Sprintf("%s has no receipt of %s", user, id)
	})
}

func (r *crashRun) cfg() engine.Config {
	var st store.Store = r.db
	if !r.overlap {
		st = syncedApply{r.db}
	}
	return engine.Config{
		Store: st, Clock: r.clock, Recipients: r.dir, Contacts: r.dir, Keys: r.keys,
		Notifier: r.sends, FanoutChunk: 2, DispatchWorkers: 1, Logger: r.log,
		Retention: engine.Retention{MaxAge: time.Hour, Interval: -1}, // swept by the workload alone
	}
}

func (r *crashRun) engineFailed() bool { return r.e == nil || r.e.Err() != nil }

// waitUntil polls cond until it holds, the engine has failed (what it
// waits for will then never come), or 10 s have passed (a failure).
func (r *crashRun) waitUntil(what string, cond func() bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if r.engineFailed() {
			return false
		}
		if time.Now().After(deadline) {
			r.fail("%s: still waiting for %s after 10s", r.step, what)
			return false
		}
		time.Sleep(200 * time.Microsecond)
	}
	return true
}

// workload runs the steps in order, each waiting for its answers (so
// that the file system's operations are numbered the same every run).
// After a fault every step still runs: its ops must be answered with
// errors, and what waits for their effects gives up.
func (r *crashRun) workload() {
	ctx := context.Background()
	r.setStep("open")
	db, err := pebblestore.Open("data", pebblestore.Options{FS: r.fs.VFS(), Logger: r.log})
	if err != nil {
		r.setStep("open refused")
		return // nothing was acknowledged; the image must still open
	}
	r.db, r.opened = db, true
	if r.e, err = engine.Open(r.cfg()); err != nil {
		r.fail("engine open on a fresh store: %v", err)
		db.Close()
		return
	}
	sink := &recorder{}
	r.e.SetSink(sink)
	e := r.e

	submit := func(step string, s engine.Submission, to ...string) engine.ID {
		r.setStep(step)
		res, err := e.Submit(ctx, s)
		r.answered(err, &ackedMessage{id: res.ID, body: string(s.Body), to: to, secret: s.Chat != engine.ID{}})
		return res.ID
	}
	m1 := submit("submit 1:1", engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("hello bo"), ClientID: "c1"}, "bo")
	submit("submit to a group", engine.Submission{From: "ana", To: []string{"group:team"}, Kind: engine.KindText, Body: []byte("hello team")}, "bo", "cy")

	r.setStep("ack")
	head, _ := e.Head("bo")
	r.answered(e.Ack(ctx, "bo", "phone", head), nil, r.receiptAtLeast(m1, "bo", engine.StateDelivered),
		promise(func(e *engine.Engine) string {
			if c, ok, err := e.Cursor("bo", "phone"); err != nil || !ok || c < head {
				return fmt.Sprintf("bo's phone acked seq %d; its cursor is %d (%v, %v)", head, c, ok, err)
			}
			return ""
		}))
	r.setStep("read")
	r.answered(e.Read(ctx, "bo", m1), nil, r.receiptAtLeast(m1, "bo", engine.StateRead))

	r.setStep("ding")
	// One recipient, so one SMS: two sends' outcomes would share a batch
	// or not, depending on timing.
	d, err := e.Ding(ctx, engine.DingRequest{From: "ana", To: []string{"bo"}, Text: "db down", Policy: "inapp,sms@1m until=confirmed"})
	// Its SMS step is sent at least once, a restart adding at most one
	// duplicate (r.sends is the restarted engine's).
	smsSent := promise(func(*engine.Engine) string {
		after := len(r.sends.all())
		if total := r.dingSent + after; total < 1 || total > 2 {
			return fmt.Sprintf("the DING's SMS step was sent %d times before the crash and %d after, want once or twice in all", r.dingSent, after)
		}
		return ""
	})
	if r.answered(err, &ackedMessage{id: d.ID, body: "db down", to: []string{"bo"}}, smsSent) {
		r.setStep("ding timer")
		r.clock.Advance(time.Minute)
		r.waitUntil("the SMS step", func() bool { return len(r.sends.all()) == 1 })
		r.settle() // its outcome is recorded
		r.setStep("confirm")
		noMoreSMS := promise(func(*engine.Engine) string {
			if n := len(r.sends.all()); n > 0 {
				return fmt.Sprintf("the DING was confirmed; its SMS step was sent %d times after the restart", n)
			}
			return ""
		})
		r.answered(e.Confirm(ctx, "bo", d.ID, 0), nil, r.receiptAtLeast(d.ID, "bo", engine.StateConfirmed), noMoreSMS)
	}

	r.setStep("create secret chat")
	ch, err := e.CreateChat(ctx, engine.ChatRequest{From: "ana", To: "bo", Level: engine.Level1})
	if r.answered(err, nil) {
		sm := submit("secret submit", engine.Submission{From: "ana", Chat: ch.ID, Kind: engine.KindText, Body: []byte("burn me")}, "bo")
		r.setStep("secret read")
		// Read, it burns 30 s later: after the restart (whose clock is
		// past that) neither its body nor its key is left.
		burned := promise(func(e *engine.Engine) string {
			es, err := e.Range("bo", 1, 10000)
			switch {
			case err != nil:
				return err.Error()
			case messageIn(es, sm) != nil || !hasBurn(es, sm) && !r.trimmed(e, "bo"):
				return fmt.Sprintf("secret message %s was read and is not burned: %s", sm, describeStream(es))
			case e.LiveSecrets() != 0:
				return fmt.Sprintf("%d live secret messages after the burn", e.LiveSecrets())
			}
			if _, ok := r.keys.Get(sm); ok {
				return fmt.Sprintf("secret message %s burned; its key is still there", sm)
			}
			return ""
		})
		if r.answered(e.Read(ctx, "bo", sm), nil, burned) {
			r.setStep("burn")
			r.clock.Advance(31 * time.Second)
			if r.waitUntil("the burn", func() bool { return e.LiveSecrets() == 0 }) {
				r.barrier()
			}
		}
	}

	// The fan-out's chunks start as soon as the announcement is durable:
	// one step for both.
	r.setStep("announce, fan-out")
	a, err := e.Announce(ctx, engine.Announcement{From: "ana", To: []string{engine.AllStaff}, Text: "all hands at 3"})
	if r.answered(err, &ackedMessage{id: a.ID, body: "all hands at 3", to: r.dir.users}) {
		if r.waitUntil("the fan-out", func() bool { n, err := e.PendingFanout(a.ID); return err == nil && n == 0 }) {
			r.barrier()
		}
	}

	// Two hours on, everything above is past retention (an hour): the
	// sweep deletes entries and messages through the background lane,
	// keeping each stream's last entry (its head).
	r.setStep("retention sweep")
	r.clock.Advance(2 * time.Hour)
	r.mu.Lock()
	r.swept = !r.crashed
	r.mu.Unlock()
	if _, err := e.Sweep(ctx); err != nil {
		r.answered(err, nil)
	}

	r.setStep("shutdown")
	err = e.Close() // the error that stopped it from writing, if any
	r.mu.Lock()
	if !r.crashed {
		r.engineErr = err
		if err != nil && r.onFailure != nil {
			r.onFailure()
		}
	}
	r.mu.Unlock()
	if err != nil && (!errors.Is(err, engine.ErrFailed) || engine.CodeOf(err) != engine.CodeUnavailable) {
		r.fail("engine shutdown: %v (code %s), want ErrFailed (UNAVAILABLE)", err, engine.CodeOf(err))
	}
	r.setStep("close")
	_ = db.Close() // its error is the fault's; what it left is checked next
	r.setStep("closed")
}

// barrier waits until what was applied is durable (the last fan-out
// chunk, the burn), unless the engine failed.
func (r *crashRun) barrier() {
	if err := r.e.Barrier(context.Background()); err != nil && !r.engineFailed() {
		r.fail("%s: barrier: %v", r.step, err)
	}
}

// settle fires what is due and waits for the sends' outcomes, unless the
// engine failed.
func (r *crashRun) settle() {
	if r.engineFailed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.e.Settle(ctx); err != nil && !r.engineFailed() {
		r.fail("%s: settle: %v", r.step, err)
	}
}

// verify reopens the store from what the disk kept and checks the
// contract.
func (r *crashRun) verify() {
	img := r.fs.Image()
	keys := r.keys
	if r.crashed {
		keys = &crashKeys{cur: r.keysLeft, durable: maps.Clone(r.keysLeft), pending: map[[16]byte]bool{}}
	} else {
		keys.crash()
	}
	db, err := pebblestore.Open("data", pebblestore.Options{FS: img.VFS(), Logger: r.log})
	if err != nil {
		if len(r.acked) > 0 || !strings.HasPrefix(r.hitStep, "open") {
			r.fail("the store does not open after the crash: %v", err)
		}
		return
	}
	defer db.Close()
	if rep, err := engine.Check(db); err != nil || !rep.OK() {
		r.fail("check after the crash: %v %v", err, rep.Problems)
	}
	if !r.crashed {
		r.dingSent = len(r.sends.all())
	}
	r.db, r.keys, r.sends = db, keys, &fakeNotifier{}
	e, err := engine.Open(r.cfg())
	if err != nil {
		r.fail("the engine does not open after the crash: %v", err)
		return
	}
	r.e = e
	e.SetSink(&recorder{})
	ctx := context.Background()
	// Let it finish what it resumes: fan-outs, due timers (the clock
	// moves past every step and burn of the workload), burns.
	r.setStep("recovery")
	r.clock.Advance(2 * time.Minute)
	r.waitUntil("the resumed fan-outs", e.FanoutIdle)
	r.settle()
	if err := e.Barrier(ctx); err != nil {
		r.fail("barrier after the crash: %v", err)
	}
	for _, p := range r.promises {
		if msg := p.check(e); msg != "" {
			r.fail("%s: %s", p.step, msg)
		}
	}

	streams := map[string][]engine.Entry{}
	for _, u := range r.dir.users {
		es, err := e.Range(u, 1, 10000)
		if err != nil {
			r.fail("range %s after the crash: %v", u, err)
		}
		for i, ent := range es {
			if ent.Seq != uint64(i+1) {
				r.fail("stream %s: entry %d has seq %d", u, i+1, ent.Seq)
				break
			}
		}
		streams[u] = es
	}
	for _, m := range r.acked {
		for _, u := range m.to {
			got := messageIn(streams[u], m.id)
			switch {
			case got != nil && string(got.Body) == m.body:
			case got != nil:
				r.fail("%s: acknowledged message %s is in %s's stream with body %q, want %q", m.step, m.id, u, got.Body, m.body)
			case m.secret && hasBurn(streams[u], m.id):
			case r.trimmed(e, u):
				// Past retention: the sweep may have deleted it.
			default:
				r.fail("%s: acknowledged message %s (%q) is not in %s's stream: %s", m.step, m.id, m.body, u, describeStream(streams[u]))
			}
		}
	}
	// The engine writes again, at the next seq.
	head := uint64(len(streams["cy"]))
	res, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{"cy"}, Kind: engine.KindText, Body: []byte("after the crash")})
	if err != nil {
		r.fail("submit after the crash: %v", err)
	} else if es, err := e.Range("cy", head+1, 10); err != nil || len(es) != 1 || es[0].Message == nil || es[0].Message.ID != res.ID {
		r.fail("the message submitted after the crash is not cy's seq %d: %v %+v", head+1, err, es)
	}
	if err := e.Close(); err != nil {
		r.fail("engine close after the crash: %v", err)
	}
	if rep, err := engine.Check(db); err != nil || !rep.OK() {
		r.fail("check after the restart's recovery: %v %v", err, rep.Problems)
	}
}

// trimmed reports whether the workload's retention sweep may have
// deleted entries of user's stream: it started before the crash, and
// the stream has a trim mark.
func (r *crashRun) trimmed(e *engine.Engine, user string) bool {
	m, err := e.TrimMark(user)
	return r.swept && err == nil && m > 0
}

// retained reports whether the workload's retention sweep deleted the
// message id: it started before the crash, and the message is gone.
func (r *crashRun) retained(e *engine.Engine, id engine.ID) bool {
	_, err := e.Message(id)
	return r.swept && errors.Is(err, engine.ErrNotFound)
}

// describeStream lists a stream's entries, for a failure's message.
func describeStream(es []engine.Entry) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "\n\t\t%d %v", e.Seq, e.Kind)
		switch {
		case e.Message != nil:
			fmt.Fprintf(&b, " %s from %s %q", e.Message.ID, e.Message.From, e.Message.Body)
		case e.Kind == engine.EntryBurn:
			fmt.Fprintf(&b, " %s", e.Burn)
		}
	}
	return b.String()
}

// syncedApply is the store with one difference for the crash points'
// sake: a batch's Apply returns only once the batch is synced (Wait then
// returns the sync's outcome). The engine goes the same way (Apply on the
// commit loop, Wait on the publish loop) but builds its next batch only
// after this one's fsync, so that Pebble never writes two batches to its
// log in one write or in two depending on timing, and the operations are
// numbered the same every run. What the overlap adds (a batch applied
// after one whose fsync failed is not answered as durable) is
// pipeline_test's TestSyncFailureFailsLaterAppliedBatchesToo, and
// -crash.overlap runs the crash points with it.
type syncedApply struct{ *pebblestore.DB }

func (s syncedApply) NewBatch() store.Batch { return &syncedApplyBatch{Batch: s.DB.NewBatch()} }

type syncedApplyBatch struct {
	store.Batch
	synced error
}

func (b *syncedApplyBatch) Apply() error {
	p := b.Batch.(store.Pipelined)
	if err := p.Apply(); err != nil {
		return err
	}
	b.synced = p.Wait()
	return nil
}

func (b *syncedApplyBatch) Wait() error { return b.synced }

// crashDirectory is the directory of the workload: three users, a group
// of two, every user with a phone.
type crashDirectory struct{ users []string }

func newCrashDirectory() *crashDirectory { return &crashDirectory{users: []string{"ana", "bo", "cy"}} }

func (d *crashDirectory) Resolve(to []string) ([]string, error) {
	var out []string
	for _, t := range to {
		switch {
		case t == engine.AllStaff:
			out = append(out, d.users...)
		case t == "group:team":
			out = append(out, "bo", "cy")
		case slices.Contains(d.users, t):
			out = append(out, t)
		default:
			return nil, fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, t)
		}
	}
	return out, nil
}

func (d *crashDirectory) Contact(user string) (engine.Contact, error) {
	phones := map[string]string{"ana": anaPhone, "bo": boPhone, "cy": cyPhone}
	p, ok := phones[user]
	if !ok {
		return engine.Contact{}, fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, user)
	}
	return engine.Contact{Name: user, Phone: p}, nil
}

// crashKeys is a keyring that loses, at a crash, what was not synced, as
// package keyring's file does: Put is durable after Sync, Erase at once.
type crashKeys struct {
	mu      sync.Mutex
	cur     map[[16]byte][32]byte // guarded by mu
	durable map[[16]byte][32]byte // guarded by mu
	pending map[[16]byte]bool     // put, not yet synced; guarded by mu
}

func newCrashKeys() *crashKeys {
	return &crashKeys{cur: map[[16]byte][32]byte{}, durable: map[[16]byte][32]byte{}, pending: map[[16]byte]bool{}}
}

func (k *crashKeys) Put(id [16]byte, key [32]byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cur[id], k.pending[id] = key, true
	return nil
}

func (k *crashKeys) Sync() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for id := range k.pending {
		if key, ok := k.cur[id]; ok {
			k.durable[id] = key
		}
	}
	clear(k.pending)
	return nil
}

func (k *crashKeys) Get(id [16]byte) ([32]byte, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	key, ok := k.cur[id]
	return key, ok
}

func (k *crashKeys) Erase(ids [][16]byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, id := range ids {
		delete(k.cur, id)
		delete(k.durable, id)
		delete(k.pending, id)
	}
	return nil
}

func (k *crashKeys) Each(fn func(id [16]byte) bool) {
	k.mu.Lock()
	ids := slices.Collect(maps.Keys(k.cur))
	k.mu.Unlock()
	for _, id := range ids {
		if !fn(id) {
			return
		}
	}
}

func (k *crashKeys) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.cur)
}

// durableKeys returns the keys a crash now would leave.
func (k *crashKeys) durableKeys() map[[16]byte][32]byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return maps.Clone(k.durable)
}

// crash forgets what was not synced.
func (k *crashKeys) crash() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cur, k.pending = maps.Clone(k.durable), map[[16]byte]bool{}
}

// crashMatrix tabulates the outcomes by the workload step each point
// falls in (as the counting run numbered them) and mode, in Markdown.
func crashMatrix(ops []crashfs.Op, steps []string, modes []string, outcomes []crashOutcome) string {
	var order []string
	kinds := map[string]map[string]int{} // step -> file kind -> operations
	for i, o := range ops {
		s := steps[i]
		if kinds[s] == nil {
			order = append(order, s)
			kinds[s] = map[string]int{}
		}
		kinds[s][fileKind(o.Path)]++
	}
	type cell struct{ runs, refused, stopped, openFailed, absorbed, broken, acked int }
	cells := map[string]map[string]*cell{}
	for _, o := range outcomes {
		s := "?"
		if o.Point >= 1 && o.Point <= len(steps) {
			s = steps[o.Point-1]
		}
		if cells[s] == nil {
			cells[s] = map[string]*cell{}
		}
		c := cells[s][o.Mode]
		if c == nil {
			c = &cell{}
			cells[s][o.Mode] = c
		}
		c.runs++
		c.acked += o.Acked
		switch {
		case len(o.Broken) > 0:
			c.broken++
		case o.Stopped != "":
			c.stopped++
		case !o.Opened:
			c.openFailed++
		case o.Failed:
			c.refused++
		default:
			c.absorbed++
		}
	}
	var b strings.Builder
	runs, acked, kept := 0, 0, 0
	for _, o := range outcomes {
		runs, acked, kept = runs+1, acked+o.Acked, kept+o.Kept
	}
	fmt.Fprintf(&b, "%d runs; after them, %d acknowledged messages and %d other promises of ops answered OK were checked\n\n", runs, acked, kept)
	b.WriteString("| step | write operations |")
	for _, m := range modes {
		fmt.Fprintf(&b, " %s |", m)
	}
	b.WriteString("\n|---|---|")
	for range modes {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, s := range order {
		var ks []string
		for _, k := range []string{"WAL", "MANIFEST", "table", "other"} {
			if n := kinds[s][k]; n > 0 {
				ks = append(ks, fmt.Sprintf("%d %s", n, k))
			}
		}
		fmt.Fprintf(&b, "| %s | %s |", s, strings.Join(ks, ", "))
		for _, m := range modes {
			c := cells[s][m]
			if c == nil {
				b.WriteString(" – |")
				continue
			}
			var parts []string
			for _, p := range []struct {
				n    int
				what string
			}{
				{c.refused, "engine stopped writing (UNAVAILABLE)"}, {c.absorbed, "absorbed"}, {c.openFailed, "open failed"},
				{c.stopped, "stopped by Pebble"}, {c.broken, "**broken**"},
			} {
				if p.n > 0 {
					parts = append(parts, fmt.Sprintf("%d %s", p.n, p.what))
				}
			}
			if m != "fail" && c.broken == 0 {
				parts = []string{fmt.Sprintf("%d ok", c.runs)}
			}
			fmt.Fprintf(&b, " %s |", strings.Join(parts, ", "))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// fileKind names what a Pebble file is, for the matrix.
func fileKind(path string) string {
	switch {
	case strings.HasSuffix(path, ".log"):
		return "WAL"
	case strings.Contains(path, "/MANIFEST-"):
		return "MANIFEST"
	case strings.HasSuffix(path, ".sst"):
		return "table"
	}
	return "other"
}
