package node

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// coordOwners answers the lease holder's published address, keeps it for
// its ttl, follows a move after it (or at once after Forget), and says
// when a partition has no owner or its owner no address.
func TestCoordOwners(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	c := cluster.NewMemCoord(clock)
	o := newCoordOwners(c, time.Second)
	o.now = clock
	if _, err := o.Owner(ctx, 3); err == nil || !strings.Contains(err.Error(), "no owner") {
		t.Fatalf("no lease: %v", err)
	}
	eb, ok, err := c.TakeLease(ctx, 3, "b", 0, 10*time.Second)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if _, err := o.Owner(ctx, 3); err == nil || !strings.Contains(err.Error(), "no address") {
		t.Fatalf("an owner without an address: %v", err)
	}
	if err := c.SetAddr(ctx, "b", "http://10.0.0.2:7080", time.Minute); err != nil {
		t.Fatal(err)
	}
	if url, err := o.Owner(ctx, 3); err != nil || url != "http://10.0.0.2:7080" {
		t.Fatalf("owner b: %q %v", url, err)
	}
	// The lease moves to c; the cached answer holds for its ttl.
	if err := c.ReleaseLease(ctx, 3, "b", eb); err != nil {
		t.Fatal(err)
	}
	ec, ok, err := c.TakeLease(ctx, 3, "c", 0, 10*time.Second)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := c.SetAddr(ctx, "c", "http://10.0.0.3:7080", time.Minute); err != nil {
		t.Fatal(err)
	}
	if url, _ := o.Owner(ctx, 3); url != "http://10.0.0.2:7080" {
		t.Fatalf("within the ttl: %q, want the cached answer", url)
	}
	o.Forget(3)
	if url, _ := o.Owner(ctx, 3); url != "http://10.0.0.3:7080" {
		t.Fatalf("after Forget: %q, want c's address", url)
	}
	// Back to b: the answer for c is kept for the ttl, then b is asked.
	if err := c.ReleaseLease(ctx, 3, "c", ec); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := c.TakeLease(ctx, 3, "b", 0, 10*time.Second); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if url, _ := o.Owner(ctx, 3); url != "http://10.0.0.3:7080" {
		t.Fatalf("within the ttl: %q, want c's cached address", url)
	}
	now = now.Add(2 * time.Second)
	if url, _ := o.Owner(ctx, 3); url != "http://10.0.0.2:7080" {
		t.Fatalf("after the ttl: %q, want b's address", url)
	}
}

// The directory's observer asks its owner for changes with a long poll.
// An owner frozen rather than dead (paused, its machine hung) never
// answers: the request is given up when the directory partition's new
// owner is announced (coordOwners.Moved), and otherwise changesSlack
// after its wait, never left to TCP's minutes.
func TestDirObserverLeavesAFrozenOwner(t *testing.T) {
	ctx := context.Background()
	const p = 4
	arrived, stop := make(chan struct{}, 4), make(chan struct{})
	frozen := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select { // never answers: only the client ends it (or the test's end)
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	defer frozen.Close()
	defer close(stop)
	c := cluster.NewMemCoord(time.Now)
	if _, ok, err := c.TakeLease(ctx, p, "b", 0, time.Hour); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := c.SetAddr(ctx, "b", frozen.URL, time.Hour); err != nil {
		t.Fatal(err)
	}
	db, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	owners := newCoordOwners(c, time.Minute)
	o, err := newDirObserver(c, p, "a", "secret", &http.Client{}, owners, slog.New(slog.DiscardHandler), db)
	if err != nil {
		t.Fatal(err)
	}
	// step runs one step of the observer against the frozen owner, and
	// ends it with the step's error, which must be want, within 10 s.
	step := func(wait time.Duration, end func(), want error, why string) {
		t.Helper()
		done := make(chan error, 1)
		go func() {
			_, _, err := o.step(ctx, wait)
			done <- err
		}()
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("the observer's request did not reach the owner")
		}
		end()
		select {
		case err := <-done:
			if !errors.Is(err, want) {
				t.Fatalf("%s: %v, want %v", why, err, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the request to the frozen owner still runs after 10s", why)
		}
	}
	// A wait of an hour: only the announcement ends it.
	step(time.Hour, func() { owners.Moved(p) }, errOwnerMoved, "after the announcement")
	// No announcement: given up changesSlack after its wait.
	defer func(s time.Duration) { changesSlack = s }(changesSlack)
	changesSlack = 50 * time.Millisecond
	step(0, func() {}, errNoAnswer, "without an announcement, past its wait and changesSlack")
}

// ownerMoves ends every request bound to what current returned at the
// next moved, with errOwnerMoved as the cause, and only those: one bound
// to a current taken after it runs on, one bound to a current taken
// before it ends at once; a request's own cancel ends only it; and the
// parent's end is not taken for a move.
func TestOwnerMovesEndsTheRequestsInFlight(t *testing.T) {
	var m ownerMoves
	parent, stop := context.WithCancel(context.Background())
	defer stop()
	before := m.current()
	r1, c1 := boundTo(parent, m.current())
	r2, c2 := boundTo(parent, m.current())
	r3, c3 := boundTo(parent, m.current())
	c3()
	if r1.Err() != nil || r2.Err() != nil || r3.Err() == nil {
		t.Fatalf("before moved: %v %v %v", r1.Err(), r2.Err(), r3.Err())
	}
	if ownerMovedErr(parent, r3) != nil {
		t.Fatal("a request's own cancel taken for a move")
	}
	m.moved()
	for i, r := range []context.Context{r1, r2} {
		select { // (AfterFunc ends them on a goroutine of its own)
		case <-r.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("request %d not ended by moved", i+1)
		}
		if ownerMovedErr(parent, r) == nil {
			t.Fatalf("request %d after moved: %v (cause %v)", i+1, r.Err(), context.Cause(r))
		}
	}
	c1()
	c2()
	// Bound after the move to a current taken before it: ended at once.
	late, cl := boundTo(parent, before)
	defer cl()
	if ownerMovedErr(parent, late) == nil {
		t.Fatalf("a request bound to a move already announced: %v", late.Err())
	}
	r4, c4 := boundTo(parent, m.current())
	defer c4()
	if r4.Err() != nil {
		t.Fatalf("a request made after moved: %v", r4.Err())
	}
	stop()
	if r4.Err() == nil || ownerMovedErr(parent, r4) != nil {
		t.Fatalf("the parent's end: %v, taken for a move: %v", r4.Err(), ownerMovedErr(parent, r4))
	}
}

// boundToOwner ends a request at a move only once the owner, asked
// again, is no longer the node it went to: a move announced by that node
// itself (its takeover, announced after the request reached it) leaves
// the request running, bound to the next move, which ends it when
// another node owns the partition. Its own cancel ends it, and no move
// after that asks the owner again.
func TestBoundToOwnerEndsOnlyWhenTheOwnerChanged(t *testing.T) {
	var m ownerMoves
	parent, stop := context.WithCancel(context.Background())
	defer stop()
	var owner atomic.Value
	owner.Store("c")
	asked, armed := make(chan bool, 4), make(chan bool, 4)
	still := func(context.Context) bool { ok := owner.Load() == "c"; asked <- ok; return ok }
	next := func() context.Context { ctx := m.current(); armed <- true; return ctx }
	wait := func(what string, ch chan bool) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s within 10s", what)
		}
	}
	r, cancel := boundToOwner(parent, m.current(), next, still)
	m.moved() // c announces its own takeover
	wait("look at the owner", asked)
	wait("wait for the next move", armed)
	if r.Err() != nil {
		t.Fatalf("ended by its own owner's announcement: %v", context.Cause(r))
	}
	owner.Store("d")
	m.moved() // d took over: c may be frozen
	wait("look at the owner", asked)
	select {
	case <-r.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("not ended once another node owned the partition")
	}
	if ownerMovedErr(parent, r) == nil {
		t.Fatalf("ended, but not for the move: %v", context.Cause(r))
	}
	cancel()

	r2, cancel2 := boundToOwner(parent, m.current(), next, still)
	cancel2()
	m.moved()
	if r2.Err() == nil || ownerMovedErr(parent, r2) != nil {
		t.Fatalf("its own cancel: %v, taken for a move: %v", r2.Err(), ownerMovedErr(parent, r2))
	}
	select {
	case <-asked:
		t.Fatal("a move after its cancel asked the owner again")
	default:
	}
}

// heldCoord holds each Lease lookup until the test releases it.
type heldCoord struct {
	cluster.Coord
	entered, release chan struct{}
}

func (h *heldCoord) Lease(ctx context.Context, p cluster.Partition) (string, uint64, error) {
	h.entered <- struct{}{}
	<-h.release
	return h.Coord.Lease(ctx, p)
}

// An owner looked up while its partition's move is announced is
// answered, but not kept: the next ask looks again (the answer may be
// the old owner's, which Moved just forgot).
func TestCoordOwnersKeepNoAnswerAMoveOvertook(t *testing.T) {
	ctx := context.Background()
	mc := cluster.NewMemCoord(time.Now)
	if _, ok, err := mc.TakeLease(ctx, 3, "b", 0, time.Hour); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := mc.SetAddr(ctx, "b", "http://10.0.0.2:7080", time.Hour); err != nil {
		t.Fatal(err)
	}
	h := &heldCoord{Coord: mc, entered: make(chan struct{}), release: make(chan struct{})}
	o := newCoordOwners(h, time.Hour)
	got := make(chan string, 1)
	go func() {
		url, _ := o.Owner(ctx, 3)
		got <- url
	}()
	<-h.entered
	o.Moved(3) // announced while the lookup runs
	h.release <- struct{}{}
	if url := <-got; url != "http://10.0.0.2:7080" {
		t.Fatalf("the lookup answered %q", url)
	}
	go func() {
		url, _ := o.Owner(ctx, 3)
		got <- url
	}()
	select {
	case <-h.entered: // looked up again: nothing was kept
		h.release <- struct{}{}
		<-got
	case url := <-got:
		t.Fatalf("answered %q from the cache, kept although a move overtook its lookup", url)
	}
	// A lookup no move overtook is kept.
	go func() {
		url, _ := o.Owner(ctx, 3)
		got <- url
	}()
	select {
	case <-h.entered:
		t.Fatal("looked up again: the answer before was not kept")
	case <-got:
	}
}

// A member's request to the owner it looked up ends when the lease
// moves, even when no announcement says so (they are hints, and may be
// lost): toHolder looks at the lease while it runs.
func TestMemberRequestEndsWhenTheLeaseMovesUnannounced(t *testing.T) {
	ctx := context.Background()
	c := cluster.NewMemCoord(time.Now)
	eb, ok, err := c.TakeLease(ctx, 0, "b", 0, time.Hour)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	m := &member{c: c, p: 0, mc: MemberConfig{LeaseTTL: 100 * time.Millisecond}, moves: &ownerMoves{}}
	rctx, cancel := m.toHolder(ctx, m.moves.current(), "b")
	defer cancel()
	// b still holds it: the request runs on across several looks.
	select {
	case <-rctx.Done():
		t.Fatalf("ended while b holds the lease: %v", context.Cause(rctx))
	case <-time.After(300 * time.Millisecond):
	}
	if err := c.ReleaseLease(ctx, 0, "b", eb); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := c.TakeLease(ctx, 0, "c", 0, time.Hour); err != nil || !ok {
		t.Fatal(ok, err)
	}
	select {
	case <-rctx.Done():
		if ownerMovedErr(ctx, rctx) == nil {
			t.Fatalf("ended with %v, want errOwnerMoved", context.Cause(rctx))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request to b still runs 10s after the lease moved to c")
	}
}
