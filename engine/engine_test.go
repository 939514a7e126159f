package engine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Sink that records every delivered entry per user.
type recorder struct {
	mu  sync.Mutex
	got map[string][]engine.Entry
}

func (r *recorder) Deliver(user string, es []engine.Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = map[string][]engine.Entry{}
	}
	r.got[user] = append(r.got[user], es...)
}

func (r *recorder) entries(user string) []engine.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]engine.Entry(nil), r.got[user]...)
}

// wait returns user's entries once there are n of them. The sink runs on
// the commit loop right after the submitters are answered, so a test that
// has its ack may still be a moment ahead of the sink.
func (r *recorder) wait(t testing.TB, user string, n int) []engine.Entry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := r.entries(user)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink has %d entries for %s, want %d", len(got), user, n)
		}
		time.Sleep(time.Millisecond)
	}
}

type fixedUsers map[string]bool

func (f fixedUsers) Resolve(to []string) ([]string, error) {
	for _, u := range to {
		if !f[u] {
			return nil, fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, u)
		}
	}
	return to, nil
}

func openEngine(t testing.TB, st store.Store) (*engine.Engine, *recorder) {
	t.Helper()
	e, err := engine.Open(engine.Config{Store: st, Recipients: fixedUsers{"ana": true, "bo": true, "cy": true}})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	e.SetSink(rec)
	t.Cleanup(func() { e.Close() })
	return e, rec
}

func stores(t *testing.T) map[string]func(testing.TB) store.Store {
	return map[string]func(testing.TB) store.Store{
		"mem": func(testing.TB) store.Store { return memstore.New() },
		"pebble": func(tb testing.TB) store.Store {
			db, err := pebblestore.Open(tb.TempDir(), pebblestore.Options{})
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { db.Close() })
			return db
		},
	}
}

func send(t testing.TB, e *engine.Engine, from, body string, to ...string) engine.SubmitResult {
	t.Helper()
	r, err := e.Submit(context.Background(), engine.Submission{From: from, To: to, Kind: engine.KindText, Body: []byte(body)})
	if err != nil {
		t.Fatalf("submit %q: %v", body, err)
	}
	return r
}

func TestSubmitSequencesEveryRecipient(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			e, rec := openEngine(t, open(t))
			r1 := send(t, e, "ana", "one", "bo", "cy")
			r2 := send(t, e, "ana", "two", "bo")
			for _, c := range []struct {
				user  string
				bodys []string
			}{{"bo", []string{"one", "two"}}, {"cy", []string{"one"}}} {
				es, err := e.Range(c.user, 1, 100)
				if err != nil {
					t.Fatal(err)
				}
				if len(es) != len(c.bodys) {
					t.Fatalf("%s: %d entries, want %d", c.user, len(es), len(c.bodys))
				}
				for i, ent := range es {
					if ent.Seq != uint64(i+1) || string(ent.Message.Body) != c.bodys[i] {
						t.Fatalf("%s entry %d = seq %d %q", c.user, i, ent.Seq, ent.Message.Body)
					}
				}
				if got := rec.wait(t, c.user, len(c.bodys)); len(got) != len(c.bodys) {
					t.Fatalf("sink got %d entries for %s, want %d", len(got), c.user, len(c.bodys))
				}
			}
			if bytes.Compare(r1.ID[:], r2.ID[:]) >= 0 {
				t.Fatalf("ids not increasing: %s then %s", r1.ID, r2.ID)
			}
			m, err := e.Message(r1.ID)
			if err != nil || m.From != "ana" || fmt.Sprint(m.To) != "[bo cy]" {
				t.Fatalf("Message = %+v, %v", m, err)
			}
		})
	}
}

func TestSubmitRejectsBadInput(t *testing.T) {
	e, _ := openEngine(t, memstore.New())
	big := make([]byte, 64<<10+1)
	cases := []struct {
		name string
		sub  engine.Submission
		want error
	}{
		{"too large", engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: big}, engine.ErrTooLarge},
		{"no recipients", engine.Submission{From: "ana", Kind: engine.KindText}, engine.ErrNoRecipients},
		{"unknown recipient", engine.Submission{From: "ana", To: []string{"zed"}, Kind: engine.KindText}, engine.ErrUnknownRecipient},
		{"bad name", engine.Submission{From: "ana", To: []string{"b\x00o"}, Kind: engine.KindText}, engine.ErrBadName},
		{"bad kind", engine.Submission{From: "ana", To: []string{"bo"}, Kind: 99}, engine.ErrBadKind},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.Submit(context.Background(), c.sub)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
	if h, _ := e.Head("bo"); h != 0 {
		t.Fatalf("rejected submits reached bo's stream: head %d", h)
	}
}

func TestClientIDRetryReturnsOriginal(t *testing.T) {
	e, _ := openEngine(t, memstore.New())
	sub := engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("x"), ClientID: "c-1"}
	// Two retries racing in the same batch and one after it.
	var wg sync.WaitGroup
	res := make([]engine.SubmitResult, 3)
	for i := range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); res[i], _ = e.Submit(context.Background(), sub) }()
	}
	wg.Wait()
	res[2], _ = e.Submit(context.Background(), sub)
	if res[0].ID != res[1].ID || res[1].ID != res[2].ID {
		t.Fatalf("ids differ: %v", res)
	}
	if h, _ := e.Head("bo"); h != 1 {
		t.Fatalf("bo's head = %d, want 1 (one stored copy)", h)
	}
	// Another sender may use the same client id.
	other := sub
	other.From = "cy"
	r, _ := e.Submit(context.Background(), other)
	if r.Duplicate || r.ID == res[0].ID {
		t.Fatalf("client ids are not per sender: %+v", r)
	}
}

func receiptOf(t *testing.T, e *engine.Engine, id engine.ID, user string) engine.Receipt {
	t.Helper()
	rs, err := e.Receipts(id)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.User == user {
			return r
		}
	}
	t.Fatalf("no receipt for %s", user)
	return engine.Receipt{}
}

func TestReceiptsAckAndRead(t *testing.T) {
	ctx := context.Background()
	e, rec := openEngine(t, memstore.New())
	m := send(t, e, "ana", "hello", "bo", "cy")
	if r := receiptOf(t, e, m.ID, "bo"); r.State != engine.StateSent {
		t.Fatalf("bo state %v, want sent", r.State)
	}
	if err := e.Ack(ctx, "bo", "phone", 1); err != nil {
		t.Fatal(err)
	}
	if r := receiptOf(t, e, m.ID, "bo"); r.State != engine.StateDelivered || r.Delivered.IsZero() {
		t.Fatalf("bo receipt %+v, want delivered", r)
	}
	if err := e.Read(ctx, "bo", m.ID); err != nil {
		t.Fatal(err)
	}
	// A later ack from another device must not move it back.
	if err := e.Ack(ctx, "bo", "laptop", 1); err != nil {
		t.Fatal(err)
	}
	if r := receiptOf(t, e, m.ID, "bo"); r.State != engine.StateRead {
		t.Fatalf("bo state %v after second ack, want read", r.State)
	}
	if r := receiptOf(t, e, m.ID, "cy"); r.State != engine.StateSent {
		t.Fatalf("cy state %v, want sent", r.State)
	}
	// ana's stream: delivered then read, for bo.
	var evs []string
	for _, ent := range rec.wait(t, "ana", 2) {
		if ent.Kind != engine.EntryReceipt || len(ent.Receipt.IDs) != 1 || ent.Receipt.IDs[0] != m.ID {
			t.Fatalf("unexpected entry in sender stream: %+v", ent)
		}
		evs = append(evs, ent.Receipt.User+":"+ent.Receipt.State.String())
	}
	if fmt.Sprint(evs) != "[bo:delivered bo:read]" {
		t.Fatalf("sender events = %v", evs)
	}
	// bo's stream: the message, then his own read event for his other devices.
	bo := rec.wait(t, "bo", 2)
	if len(bo) != 2 || bo[1].Kind != engine.EntryReceipt || bo[1].Receipt.State != engine.StateRead || bo[1].Seq != 2 {
		t.Fatalf("bo stream = %+v", bo)
	}
	if err := e.Read(ctx, "cy", m.ID, engine.ID{}); !errors.Is(err, engine.ErrNotRecipient) {
		t.Fatalf("read of foreign id: %v, want ErrNotRecipient", err)
	}
	if r := receiptOf(t, e, m.ID, "cy"); r.State != engine.StateSent {
		t.Fatalf("failed read op changed cy's state to %v", r.State)
	}
	if err := e.Read(ctx, "ana", m.ID); !errors.Is(err, engine.ErrNotRecipient) {
		t.Fatalf("sender reading own message: %v, want ErrNotRecipient", err)
	}
}

func TestAckBeyondHeadRefused(t *testing.T) {
	ctx := context.Background()
	e, _ := openEngine(t, memstore.New())
	send(t, e, "ana", "x", "bo")
	if err := e.Ack(ctx, "bo", "phone", 2); !errors.Is(err, engine.ErrBadAck) {
		t.Fatalf("ack 2 of 1: %v, want ErrBadAck", err)
	}
	if c, ok, _ := e.Cursor("bo", "phone"); ok || c != 0 {
		t.Fatalf("cursor moved to %d", c)
	}
	if err := e.Ack(ctx, "bo", "phone", 1); err != nil {
		t.Fatal(err)
	}
	if c, _, _ := e.Cursor("bo", "phone"); c != 1 {
		t.Fatalf("cursor %d, want 1", c)
	}
}

func TestRestartRebuildsFromStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e, _ := engine.Open(engine.Config{Store: db})
	m1 := send(t, e, "ana", "one", "bo")
	send(t, e, "ana", "two", "bo")
	if err := e.Ack(ctx, "bo", "phone", 1); err != nil {
		t.Fatal(err)
	}
	e.Close()
	db.Close()

	db, err = pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	e, rec := openEngine(t, db)
	if h, _ := e.Head("bo"); h != 2 {
		t.Fatalf("head after restart = %d, want 2", h)
	}
	if c, _, _ := e.Cursor("bo", "phone"); c != 1 {
		t.Fatalf("cursor after restart = %d, want 1", c)
	}
	if r := receiptOf(t, e, m1.ID, "bo"); r.State != engine.StateDelivered {
		t.Fatalf("receipt after restart = %v", r.State)
	}
	m3 := send(t, e, "ana", "three", "bo")
	got := rec.wait(t, "bo", 1)
	if len(got) != 1 || got[0].Seq != 3 || got[0].Message.ID != m3.ID {
		t.Fatalf("after restart next entry = %+v, want seq 3", got)
	}
}

func TestConcurrentSubmitsAreGapFree(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			e, rec := openEngine(t, open(t))
			const writers, each = 16, 50
			var wg sync.WaitGroup
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						_, err := e.Submit(context.Background(), engine.Submission{
							From: "ana", To: []string{"bo", "cy"}, Kind: engine.KindText,
							Body: []byte(fmt.Sprintf("%d-%d", w, i)),
						})
						if err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			for _, u := range []string{"bo", "cy"} {
				got := rec.wait(t, u, writers*each)
				if len(got) != writers*each {
					t.Fatalf("%s: %d entries", u, len(got))
				}
				for i, ent := range got {
					if ent.Seq != uint64(i+1) {
						t.Fatalf("%s: entry %d has seq %d", u, i, ent.Seq)
					}
				}
			}
		})
	}
}

func TestClosedEngineRefuses(t *testing.T) {
	e, _ := openEngine(t, memstore.New())
	e.Close()
	e.Close() // idempotent
	_, err := e.Submit(context.Background(), engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("hi")})
	if !errors.Is(err, engine.ErrClosed) {
		t.Fatalf("submit after close: %v", err)
	}
}

// failingStore fails every commit, as a full or broken disk would.
type failingStore struct{ store.Store }

type failingBatch struct{ store.Batch }

func (f failingStore) NewBatch() store.Batch { return failingBatch{f.Store.NewBatch()} }
func (failingBatch) Commit(bool) error       { return errors.New("disk on fire") }

func TestCommitFailureIsNeverAcked(t *testing.T) {
	e, rec := openEngine(t, failingStore{memstore.New()})
	_, err := e.Submit(context.Background(), engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("hi")})
	if !errors.Is(err, engine.ErrFailed) {
		t.Fatalf("err = %v, want ErrFailed", err)
	}
	if len(rec.entries("bo")) != 0 {
		t.Fatal("a failed commit was delivered")
	}
	if _, err := e.Submit(context.Background(), engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("hi")}); !errors.Is(err, engine.ErrFailed) {
		t.Fatalf("second submit: %v, want ErrFailed", err)
	}
	if e.Err() == nil {
		t.Fatal("Err() nil after failure")
	}
}

func TestIDTextRoundTripAndOrder(t *testing.T) {
	e, _ := openEngine(t, memstore.New())
	var prev string
	for i := range 100 {
		r := send(t, e, "ana", "x", "bo")
		s := r.ID.String()
		back, err := engine.ParseID(s)
		if err != nil || back != r.ID {
			t.Fatalf("round trip %s: %v %v", s, back, err)
		}
		if i > 0 && s <= prev {
			t.Fatalf("text ids not sorted: %s after %s", s, prev)
		}
		if time.Since(r.Created) > time.Minute {
			t.Fatalf("created %v", r.Created)
		}
		prev = s
	}
	for _, bad := range []string{"", "short", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "0000000000000000000000000!"} {
		if _, err := engine.ParseID(bad); !errors.Is(err, engine.ErrBadID) {
			t.Errorf("ParseID(%q) err = %v", bad, err)
		}
	}
}

func TestReadSameIDTwiceCountsOnce(t *testing.T) {
	e, rec := openEngine(t, memstore.New())
	m := send(t, e, "ana", "x", "bo")
	if err := e.Read(context.Background(), "bo", m.ID, m.ID); err != nil {
		t.Fatal(err)
	}
	send(t, e, "cy", "marker", "ana") // a later entry in ana's stream
	got := rec.wait(t, "ana", 2)
	if len(got) != 2 || got[0].Kind != engine.EntryReceipt || got[1].Kind != engine.EntryMessage {
		t.Fatalf("ana's stream = %+v, want one read event then the marker", got)
	}
}

// syncGate is a store whose Commit applies the batch (visible to readers,
// as Pebble does before its WAL sync finishes) and then waits for the test
// to let the "fsync" complete.
type syncGate struct {
	store.Store
	applied, release chan struct{}
}

type gateBatch struct {
	store.Batch
	g *syncGate
}

func (g *syncGate) NewBatch() store.Batch { return gateBatch{g.Store.NewBatch(), g} }

func (b gateBatch) Commit(sync bool) error {
	if err := b.Batch.Commit(sync); err != nil {
		return err
	}
	b.g.applied <- struct{}{}
	<-b.g.release
	return nil
}

func TestRangeNeverReturnsEntriesBeforeTheirSync(t *testing.T) {
	g := &syncGate{Store: memstore.New(), applied: make(chan struct{}), release: make(chan struct{})}
	e, _ := openEngine(t, g)
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(g.release) }) }
	t.Cleanup(release) // runs before the engine's Close, even if the test fails
	done := make(chan error, 1)
	go func() {
		_, err := e.Submit(context.Background(), engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("x")})
		done <- err
	}()
	<-g.applied // the batch is readable in the store, its sync not yet done
	es, err := e.Range("bo", 1, 10)
	if err != nil || len(es) != 0 {
		t.Fatalf("Range during the sync returned %d entries (%v): a device could see a message a crash takes back", len(es), err)
	}
	if h, _ := e.Head("bo"); h != 0 {
		t.Fatalf("Head during the sync = %d, want 0", h)
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if es, _ := e.Range("bo", 1, 10); len(es) != 1 {
		t.Fatalf("Range after the sync returned %d entries, want 1", len(es))
	}
}

func TestOneAckOrReadMakesOneEventPerSender(t *testing.T) {
	ctx := context.Background()
	e, rec := openEngine(t, memstore.New())
	var fromAna []engine.ID
	for range 3 {
		fromAna = append(fromAna, send(t, e, "ana", "a", "bo").ID)
	}
	fromCy := send(t, e, "cy", "c", "bo").ID
	if err := e.Ack(ctx, "bo", "phone", 4); err != nil {
		t.Fatal(err)
	}
	ana := rec.wait(t, "ana", 1)
	if len(ana) != 1 || fmt.Sprint(ana[0].Receipt.IDs) != fmt.Sprint(fromAna) || ana[0].Receipt.State != engine.StateDelivered {
		t.Fatalf("ana's stream = %+v, want one delivered event for her 3 messages", ana)
	}
	if cy := rec.wait(t, "cy", 1); len(cy) != 1 || cy[0].Receipt.IDs[0] != fromCy {
		t.Fatalf("cy's stream = %+v", cy)
	}
	if err := e.Read(ctx, "bo", append(fromAna, fromCy)...); err != nil {
		t.Fatal(err)
	}
	ana = rec.wait(t, "ana", 2)
	if len(ana[1].Receipt.IDs) != 3 || ana[1].Receipt.State != engine.StateRead {
		t.Fatalf("ana's read event = %+v", ana[1])
	}
	bo := rec.wait(t, "bo", 5) // 4 messages, then one read event for all 4
	if own := bo[4].Receipt; len(own.IDs) != 4 || own.State != engine.StateRead {
		t.Fatalf("bo's own read event = %+v", bo[4])
	}
}

func TestEventsSplitAtMaxEventIDs(t *testing.T) {
	e, rec := openEngine(t, memstore.New())
	n := engine.MaxEventIDs + 5
	for range n {
		send(t, e, "ana", "a", "bo")
	}
	if err := e.Ack(context.Background(), "bo", "phone", uint64(n)); err != nil {
		t.Fatal(err)
	}
	ana := rec.wait(t, "ana", 2)
	if len(ana) != 2 || len(ana[0].Receipt.IDs) != engine.MaxEventIDs || len(ana[1].Receipt.IDs) != 5 {
		t.Fatalf("got %d events", len(ana))
	}
}

// TestEmptyMessagesAreRefused: a text that is empty or only white space,
// or empty data, is refused with a clear BAD_REQUEST; a forward needs no
// text of its own, and a body of other bytes is a message.
func TestEmptyMessagesAreRefused(t *testing.T) {
	e, _ := openEngine(t, memstore.New())
	ctx := context.Background()
	for _, c := range []struct {
		kind engine.Kind
		body string
	}{{engine.KindText, ""}, {engine.KindText, " \t\r\n "}, {engine.KindData, ""}} {
		_, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{"bo"}, Kind: c.kind, Body: []byte(c.body)})
		if !errors.Is(err, engine.ErrEmptyBody) || engine.CodeOf(err) != engine.CodeBadRequest {
			t.Errorf("kind %d body %q: %v, want ErrEmptyBody (BAD_REQUEST)", c.kind, c.body, err)
		}
	}
	orig, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte(" ok ")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Submit(ctx, engine.Submission{From: "bo", To: []string{"ana"}, Kind: engine.KindText, Forward: orig.ID}); err != nil {
		t.Fatalf("a forward without a text of its own: %v", err)
	}
	if _, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindData, Body: []byte{0}}); err != nil {
		t.Fatalf("one byte of data: %v", err)
	}
}
