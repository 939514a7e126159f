package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingmq/ding/engine/internal/pipeline"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	errAborted = errors.New("test: aborted")
	errFailed  = errors.New("test: failed")
	errPartial = errors.New("test: store read failed half-way") // aborts its batch
	errRefused = errors.New("test: refused")                    // the op's own refusal
)

// fakeStore is memstore whose batches can be held before they are durable,
// and made to fail to apply or to sync.
type fakeStore struct {
	*memstore.Store
	mu        sync.Mutex
	hold      chan struct{} // while non-nil, Wait blocks until it is closed
	failApply error
	failWait  map[int]error // by batch number (1 for the first applied)
	applied   int           // batches applied
	waits     chan struct{} // a batch was applied
}

func newFakeStore() *fakeStore {
	return &fakeStore{Store: memstore.New(), waits: make(chan struct{}, 1024)}
}

func (s *fakeStore) NewBatch() store.Batch { return &fakeBatch{Batch: s.Store.NewBatch(), s: s} }

type fakeBatch struct {
	store.Batch
	s *fakeStore
	n int // its number among applied batches
}

func (b *fakeBatch) Apply() error {
	b.s.mu.Lock()
	err := b.s.failApply
	if err == nil {
		b.s.applied++
		b.n = b.s.applied
	}
	b.s.mu.Unlock()
	if err != nil {
		return err
	}
	err = b.Batch.(store.Pipelined).Apply()
	b.s.waits <- struct{}{}
	return err
}

func (b *fakeBatch) Wait() error {
	b.s.mu.Lock()
	hold, err := b.s.hold, b.s.failWait[b.n]
	b.s.mu.Unlock()
	if hold != nil {
		<-hold
	}
	return err
}

// syncStore hides store.Pipelined: batches are committed with Commit(true).
type syncStore struct{ *memstore.Store }

func (s syncStore) NewBatch() store.Batch { return struct{ store.Batch }{s.Store.NewBatch()} }

// txn numbers entries like a stream: next, next+1, ... in apply order,
// and records the hooks the pipeline calls.
type txn struct {
	rec  *recorder
	b    store.Batch
	now  time.Time
	n    int // entries numbered in this batch
	last int // the batch's last number, once applied
}

type recorder struct {
	mu       sync.Mutex
	next     int      // the next number (commit loop only)
	calls    []string // hooks, in order
	durable  int      // the highest number made durable
	flushErr error    // what Flush returns
}

func (r *recorder) log(s string) {
	r.mu.Lock()
	r.calls = append(r.calls, s)
	r.mu.Unlock()
}

func (t *txn) Begin(b store.Batch, now time.Time) { t.b, t.now, t.n = b, now, 0; t.rec.log("begin") }
func (t *txn) Flush() error {
	t.rec.log("flush")
	t.rec.mu.Lock()
	defer t.rec.mu.Unlock()
	return t.rec.flushErr
}
func (t *txn) Applied() {
	t.rec.next += t.n
	t.last = t.rec.next
	t.rec.log("applied")
}
func (t *txn) Durable() {
	t.rec.mu.Lock()
	t.rec.durable = t.last
	t.rec.mu.Unlock()
	t.rec.log("durable")
}
func (t *txn) Published() { t.rec.log("published") }
func (t *txn) Abandon(err error, applied bool) {
	t.rec.log(fmt.Sprintf("abandon applied=%v", applied))
}

// number writes key with the entry's number and returns it.
func (t *txn) number(key string) int {
	n := t.rec.next + t.n + 1
	t.n++
	t.b.Set([]byte(key), []byte(fmt.Sprint(n)))
	return n
}

type harness struct {
	t   *testing.T
	p   *pipeline.Pipeline[*txn]
	st  store.Store
	rec *recorder
}

func start(t *testing.T, st store.Store, mut func(*pipeline.Config[*txn])) *harness {
	t.Helper()
	rec := &recorder{}
	cfg := pipeline.Config[*txn]{
		Store:   st,
		NewTxn:  func() *txn { return &txn{rec: rec} },
		Now:     func() time.Time { return time.Unix(1700000000, 0) },
		Aborts:  func(err error) bool { return errors.Is(err, errPartial) },
		Aborted: errAborted,
		Fail:    func(cause error) error { return fmt.Errorf("%w: %w", errFailed, cause) },
		Logger:  slog.New(slog.DiscardHandler),
	}
	if mut != nil {
		mut(&cfg)
	}
	p, err := pipeline.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, p: p, st: st, rec: rec}
	t.Cleanup(func() { p.Close(context.Background()) })
	return h
}

// answer is one op's answer.
type answer struct {
	n   int // the number the op got (0 if none)
	err error
}

// put enqueues an op that numbers key and returns where its answer comes.
func (h *harness) put(key string) <-chan answer {
	ch := make(chan answer, 1)
	var n int
	h.p.Enqueue(&pipeline.Op[*txn]{
		Apply: func(t *txn) error { n = t.number(key); return nil },
		Done:  func(err error) { ch <- answer{n, err} },
	})
	return ch
}

// putBg is put in the background lane; apply, if not nil, runs first.
func (h *harness) putBg(key string, apply func()) <-chan answer {
	return h.putOp(key, true, "", apply)
}

// putOp enqueues an op that numbers key, in the background lane if bg,
// with Op.Key opKey; apply, if not nil, runs first.
func (h *harness) putOp(key string, bg bool, opKey string, apply func()) <-chan answer {
	ch := make(chan answer, 1)
	var n int
	h.p.Enqueue(&pipeline.Op[*txn]{
		Apply: func(t *txn) error {
			if apply != nil {
				apply()
			}
			n = t.number(key)
			return nil
		},
		Done:       func(err error) { ch <- answer{n, err} },
		Background: bg,
		Key:        opKey,
	})
	return ch
}

func (h *harness) get(key string) (string, bool) {
	v, err := h.st.Get([]byte(key))
	if errors.Is(err, store.ErrNotFound) {
		return "", false
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return string(v), true
}

// gate enqueues an op that holds the commit loop until the returned
// func is called, so that the ops enqueued meanwhile share one batch.
func (h *harness) gate() func() {
	entered, release := make(chan struct{}), make(chan struct{})
	h.p.Enqueue(&pipeline.Op[*txn]{
		Apply: func(*txn) error { close(entered); <-release; return nil },
		Done:  func(error) {},
	})
	<-entered
	return func() { close(release) }
}

func recv(t *testing.T, ch <-chan answer) answer {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no answer within 10s")
		return answer{}
	}
}

func noAnswer(t *testing.T, ch <-chan answer) {
	t.Helper()
	select {
	case a := <-ch:
		t.Fatalf("answered %+v before the batch was durable", a)
	default:
	}
}

func TestAnswersOnlyOnceDurableAndBuildsTheNextBatchMeanwhile(t *testing.T) {
	fs := newFakeStore()
	hold := make(chan struct{})
	fs.hold = hold
	h := start(t, fs, nil)
	first := h.put("a")
	<-fs.waits // batch 1 is applied; its fsync is held
	if v, ok := h.get("a"); !ok || v != "1" {
		t.Fatalf("batch 1 not visible while its fsync is in flight: %q %v", v, ok)
	}
	second := h.put("b")
	<-fs.waits // batch 2 is built and applied while batch 1 is not durable
	if v, ok := h.get("b"); !ok || v != "2" {
		t.Fatalf("batch 2 was not applied during batch 1's fsync: %q %v", v, ok)
	}
	noAnswer(t, first)
	noAnswer(t, second)
	h.rec.mu.Lock()
	durable := h.rec.durable
	h.rec.mu.Unlock()
	if durable != 0 {
		t.Fatalf("Durable ran before any fsync completed (durable=%d)", durable)
	}
	close(hold)
	if a := recv(t, first); a.err != nil || a.n != 1 {
		t.Fatalf("first = %+v", a)
	}
	if a := recv(t, second); a.err != nil || a.n != 2 {
		t.Fatalf("second = %+v", a)
	}
}

func TestGroupCommitAndOrder(t *testing.T) {
	fs := newFakeStore()
	hold := make(chan struct{})
	fs.hold = hold
	h := start(t, fs, func(c *pipeline.Config[*txn]) { c.InFlight = 1 })
	first := h.put("k0")
	<-fs.waits
	// While batch 1 syncs, 200 ops queue up from 4 producers.
	const producers, each = 4, 50
	chans := make([][]<-chan answer, producers)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				chans[p] = append(chans[p], h.put(fmt.Sprintf("p%d-%d", p, i)))
			}
		}()
	}
	wg.Wait()
	close(hold)
	recv(t, first)
	seen := map[int]bool{}
	for p := range producers {
		last := 0
		for i, ch := range chans[p] {
			a := recv(t, ch)
			if a.err != nil {
				t.Fatal(a.err)
			}
			if a.n <= last {
				t.Fatalf("producer %d op %d got %d after %d: out of order", p, i, a.n, last)
			}
			last = a.n
			seen[a.n] = true
		}
	}
	for n := 2; n <= 1+producers*each; n++ {
		if !seen[n] {
			t.Fatalf("number %d never handed out: a gap", n)
		}
	}
	fs.mu.Lock()
	batches := fs.applied
	fs.mu.Unlock()
	// One batch for the first op; the 200 queued during its fsync share
	// a few (InFlight=1 lets one more be applied while the first syncs).
	if batches > 4 {
		t.Fatalf("%d batches for 201 ops queued behind one fsync: no group commit", batches)
	}
}

func TestAnOpThatAbortsItsBatchAbortsOnlyItself(t *testing.T) {
	h := start(t, newFakeStore(), nil)
	release := h.gate() // the next three share a batch
	before := h.put("before")
	bad := make(chan answer, 1)
	h.p.Enqueue(&pipeline.Op[*txn]{
		Apply: func(t *txn) error {
			t.b.Set([]byte("half"), []byte("written")) // part of its writes, then a read fails
			return fmt.Errorf("read rollup: %w", errPartial)
		},
		Done: func(err error) { bad <- answer{err: err} },
	})
	after := h.put("after")
	release()
	if a := recv(t, bad); !errors.Is(a.err, errPartial) {
		t.Fatalf("the aborting op got %v, want its own error", a.err)
	}
	for name, ch := range map[string]<-chan answer{"before": before, "after": after} {
		if a := recv(t, ch); a.err != nil {
			t.Fatalf("unrelated op %s got %v; want it committed", name, a.err)
		}
		if _, ok := h.get(name); !ok {
			t.Fatalf("unrelated op %s not in the store", name)
		}
	}
	if _, ok := h.get("half"); ok {
		t.Fatal("the aborting op's partial write reached the store")
	}
	// Numbers were handed out again in the rebuilt batch: no gap.
	if v, _ := h.get("before"); v != "1" {
		t.Fatalf("before = %s, want 1", v)
	}
	if v, _ := h.get("after"); v != "2" {
		t.Fatalf("after = %s, want 2 (no gap left by the discarded batch)", v)
	}
}

func TestRetriesExhaustedAnswerTheRestAborted(t *testing.T) {
	h := start(t, newFakeStore(), func(c *pipeline.Config[*txn]) { c.Retries = 1 })
	release := h.gate()
	var bads []chan answer
	for range 3 {
		ch := make(chan answer, 1)
		bads = append(bads, ch)
		h.p.Enqueue(&pipeline.Op[*txn]{
			Apply: func(*txn) error { return errPartial },
			Done:  func(err error) { ch <- answer{err: err} },
		})
	}
	good := h.put("good")
	release()
	// Two aborts use up the one retry; the third aborting op and the
	// good one are answered Aborted without being applied again.
	got := []error{recv(t, bads[0]).err, recv(t, bads[1]).err, recv(t, bads[2]).err, recv(t, good).err}
	want := []error{errPartial, errPartial, errAborted, errAborted}
	for i := range want {
		if !errors.Is(got[i], want[i]) {
			t.Fatalf("answers %v, want %v", got, want)
		}
	}
	if _, ok := h.get("good"); ok {
		t.Fatal("an op answered Aborted was committed")
	}
}

func TestAnOpsOwnRefusalKeepsTheBatch(t *testing.T) {
	h := start(t, newFakeStore(), nil)
	refused := make(chan answer, 1)
	h.p.Enqueue(&pipeline.Op[*txn]{
		Apply: func(*txn) error { return errRefused },
		Done:  func(err error) { refused <- answer{err: err} },
	})
	ok := h.put("ok")
	if a := recv(t, refused); !errors.Is(a.err, errRefused) {
		t.Fatalf("refused op got %v", a.err)
	}
	if a := recv(t, ok); a.err != nil || a.n != 1 {
		t.Fatalf("other op = %+v", a)
	}
}

func TestFlushErrorAbortsTheBatch(t *testing.T) {
	h := start(t, newFakeStore(), nil)
	h.rec.mu.Lock()
	h.rec.flushErr = errors.New("encode overlay")
	h.rec.mu.Unlock()
	if a := recv(t, h.put("x")); !errors.Is(a.err, errAborted) {
		t.Fatalf("op of a batch whose flush failed got %v, want Aborted", a.err)
	}
	if _, ok := h.get("x"); ok {
		t.Fatal("a batch whose flush failed was committed")
	}
	h.rec.mu.Lock()
	h.rec.flushErr = nil
	h.rec.mu.Unlock()
	if a := recv(t, h.put("y")); a.err != nil || a.n != 1 {
		t.Fatalf("next op = %+v; a flush error must not stop the pipeline", a)
	}
}

func TestApplyFailureStopsThePipeline(t *testing.T) {
	fs := newFakeStore()
	h := start(t, fs, nil)
	if a := recv(t, h.put("a")); a.err != nil {
		t.Fatal(a.err)
	}
	fs.mu.Lock()
	fs.failApply = errors.New("disk gone")
	fs.mu.Unlock()
	if a := recv(t, h.put("b")); !errors.Is(a.err, errFailed) {
		t.Fatalf("op of the failed batch got %v, want the Fail error", a.err)
	}
	fs.mu.Lock()
	fs.failApply = nil
	fs.mu.Unlock()
	if a := recv(t, h.put("c")); !errors.Is(a.err, errFailed) {
		t.Fatalf("op after the failure got %v, want the Fail error", a.err)
	}
	if !errors.Is(h.p.Err(), errFailed) {
		t.Fatalf("Err() = %v", h.p.Err())
	}
	if _, ok := h.get("c"); ok {
		t.Fatal("a write was applied after the pipeline failed")
	}
}

func TestSyncFailureFailsLaterAppliedBatchesToo(t *testing.T) {
	fs := newFakeStore()
	hold := make(chan struct{})
	fs.hold = hold
	fs.failWait = map[int]error{1: errors.New("fsync: EIO")} // batch 2's own sync would succeed
	h := start(t, fs, nil)
	first := h.put("a")
	<-fs.waits
	second := h.put("b") // applied on top of batch 1 while it syncs
	<-fs.waits
	close(hold)
	for name, ch := range map[string]<-chan answer{"first": first, "second": second} {
		if a := recv(t, ch); !errors.Is(a.err, errFailed) {
			t.Fatalf("%s got %v; a batch built on a failed one must not be answered durable", name, a.err)
		}
	}
	h.rec.mu.Lock()
	calls := slices.Clone(h.rec.calls)
	h.rec.mu.Unlock()
	if slices.Contains(calls, "durable") {
		t.Fatalf("Durable ran for a failed batch: %v", calls)
	}
	if n := countOf(calls, "abandon applied=true"); n != 2 {
		t.Fatalf("Abandon(applied) ran %d times, want 2: %v", n, calls)
	}
}

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

func TestStoreWithoutPipelinedCommitsSynced(t *testing.T) {
	h := start(t, syncStore{memstore.New()}, nil)
	for i := 1; i <= 3; i++ {
		if a := recv(t, h.put(fmt.Sprint("k", i))); a.err != nil || a.n != i {
			t.Fatalf("op %d = %+v", i, a)
		}
	}
	h.rec.mu.Lock()
	calls := slices.Clone(h.rec.calls)
	h.rec.mu.Unlock()
	// The first batch is durable before the next begins (no pipelining)
	// and published only once durable. Its publish runs on the publish
	// loop, which may come after the next batch began: where "published"
	// falls among the next batch's hooks is the scheduler's (make test
	// once saw it after the second batch's "applied").
	want := []string{"begin", "flush", "applied", "durable"}
	if len(calls) < 5 || !slices.Equal(calls[:4], want) {
		t.Fatalf("hooks %v, want %v first", calls, want)
	}
	if i := slices.Index(calls, "published"); i < 4 {
		t.Fatalf("hooks %v: the first publish came before the first batch was durable", calls)
	}
}

func TestCloseCommitsQueuedOpsThenRefuses(t *testing.T) {
	fs := newFakeStore()
	hold := make(chan struct{})
	fs.hold = hold
	h := start(t, fs, nil)
	first := h.put("a")
	<-fs.waits
	queued := h.put("b")
	queuedBg := h.putBg("c", nil)
	closed := make(chan error, 1)
	go func() { closed <- h.p.Close(context.Background()) }()
	// Close waits for the held batch; a deadline makes it give up.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := h.p.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with a deadline while a batch is held = %v", err)
	}
	var refused error
	h.p.Enqueue(&pipeline.Op[*txn]{Apply: func(*txn) error { return nil }, Done: func(err error) { refused = err }})
	if !errors.Is(refused, pipeline.ErrClosed) {
		t.Fatalf("Enqueue after Close: %v", refused)
	}
	close(hold)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for _, ch := range []<-chan answer{first, queued, queuedBg} {
		if a := recv(t, ch); a.err != nil {
			t.Fatalf("op queued before Close: %v", a.err)
		}
	}
}

// A burst of background work (a thousand devices acking at once) must not
// hold a submit queued after it for longer than one budget.
func TestBackgroundOpsYieldToForeground(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1700000000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	costly := func() { mu.Lock(); now = now.Add(time.Millisecond); mu.Unlock() } // each background op takes 1ms
	h := start(t, newFakeStore(), func(c *pipeline.Config[*txn]) {
		c.Now, c.BackgroundBudget = clock, 2*time.Millisecond
	})
	release := h.gate()
	var bg []<-chan answer
	for i := range 20 {
		bg = append(bg, h.putBg(fmt.Sprintf("bg%d", i), costly))
	}
	fg := h.put("fg")
	release()
	// The gate's batch takes background ops for its 2ms budget (two of
	// them), and the next batch takes the foreground op first.
	if a := recv(t, fg); a.err != nil || a.n != 3 {
		t.Fatalf("foreground op queued after 20 background ones got %+v, want number 3 (after one budget's worth)", a)
	}
	last := 0
	for i, ch := range bg {
		a := recv(t, ch)
		if a.err != nil {
			t.Fatal(a.err)
		}
		if a.n <= last {
			t.Fatalf("background op %d got %d after %d: the lane's order was lost", i, a.n, last)
		}
		last = a.n
	}
}

// An op keyed like earlier background ops (a device's READ after its
// ACKs) is applied after them; an op of another key overtakes them.
func TestKeyedOpsKeepTheirOrderAcrossLanes(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1700000000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	costly := func() { mu.Lock(); now = now.Add(time.Millisecond); mu.Unlock() }
	h := start(t, newFakeStore(), func(c *pipeline.Config[*txn]) {
		c.Now, c.BackgroundBudget = clock, 2*time.Millisecond
	})
	keyed := func(key string, bg bool, apply func()) <-chan answer { return h.putOp(key, bg, key, apply) }
	release := h.gate()
	var acks []<-chan answer
	for range 10 {
		acks = append(acks, keyed("u", true, costly))
	}
	read := keyed("u", false, nil)  // u's READ after u's ACKs
	other := keyed("v", false, nil) // another user's
	release()
	if a := recv(t, other); a.err != nil || a.n != 3 {
		t.Fatalf("another key's op got %+v, want number 3 (after one budget of background ops)", a)
	}
	if a := recv(t, read); a.err != nil || a.n != 12 {
		t.Fatalf("u's op after u's 10 background ops got %+v, want number 12 (after all of them)", a)
	}
	for i, ch := range acks {
		if a := recv(t, ch); a.err != nil || a.n == 3 || a.n > 11 {
			t.Fatalf("background op %d got %+v", i, a)
		}
	}
	// Once u's background ops are applied, u's ops take the foreground again.
	if a := recv(t, keyed("u", false, nil)); a.err != nil || a.n != 13 {
		t.Fatalf("u's next op got %+v, want 13", a)
	}
}

// Foreground work that fills every batch still lets one background op
// into each.
func TestBackgroundOpsAreNotStarved(t *testing.T) {
	h := start(t, newFakeStore(), func(c *pipeline.Config[*txn]) { c.MaxBatch = 1 })
	release := h.gate()
	var fg, bg []<-chan answer
	for i := range 5 {
		fg = append(fg, h.put(fmt.Sprintf("fg%d", i)))
	}
	for i := range 3 {
		bg = append(bg, h.putBg(fmt.Sprintf("bg%d", i), nil))
	}
	release()
	// Batches: gate+bg0, fg0+bg1, fg1+bg2, fg2, fg3, fg4.
	for i, want := range []int{1, 3, 5} {
		if a := recv(t, bg[i]); a.err != nil || a.n != want {
			t.Fatalf("background op %d got %+v, want number %d (one per batch beside a full foreground)", i, a, want)
		}
	}
	for i, want := range []int{2, 4, 6, 7, 8} {
		if a := recv(t, fg[i]); a.err != nil || a.n != want {
			t.Fatalf("foreground op %d got %+v, want number %d", i, a, want)
		}
	}
}

// A background op too heavy to fit beside the foreground ones (an
// announcement's fan-out chunk weighs a whole batch) waits for a batch of
// its own instead of making a submit wait for its build.
func TestHeavyBackgroundOpWaitsForItsOwnBatch(t *testing.T) {
	fs := newFakeStore()
	h := start(t, fs, func(c *pipeline.Config[*txn]) { c.MaxBatch = 4 })
	release := h.gate()
	ch := make(chan answer, 1)
	var n, batches int
	h.p.Enqueue(&pipeline.Op[*txn]{
		Apply: func(t *txn) error {
			n = t.number("heavy")
			fs.mu.Lock()
			batches = fs.applied // batches applied before this one
			fs.mu.Unlock()
			return nil
		},
		Done:       func(err error) { ch <- answer{n, err} },
		Weight:     4,
		Background: true,
	})
	small := h.put("small")
	release()
	if a := recv(t, small); a.err != nil || a.n != 1 {
		t.Fatalf("foreground op got %+v, want number 1: it waited for the heavy background op", a)
	}
	a := recv(t, ch)
	if a.err != nil || a.n != 2 {
		t.Fatalf("heavy background op got %+v, want number 2", a)
	}
	if batches != 2 {
		t.Fatalf("heavy background op built after %d batches were applied, want 2 (the gate's, the foreground op's): it shared a batch", batches)
	}
}

func TestBatchesUseTheClock(t *testing.T) {
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	h := start(t, newFakeStore(), func(c *pipeline.Config[*txn]) { c.Now = func() time.Time { return at } })
	ch := make(chan time.Time, 1)
	h.p.Enqueue(&pipeline.Op[*txn]{Apply: func(t *txn) error { ch <- t.now; return nil }, Done: func(error) {}})
	if got := <-ch; !got.Equal(at) {
		t.Fatalf("batch time %v, want the configured clock's %v", got, at)
	}
}
