// Package storetest is the conformance suite every store.Store passes.
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/dingmq/ding/engine/store"
)

// Run runs the suite against stores made by open, one fresh store per case.
func Run(t *testing.T, open func(t testing.TB) store.Store) {
	cases := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"GetMissing", testGetMissing},
		{"BatchAtomicVisibility", testBatch},
		{"ScanOrderAndBounds", testScan},
		{"ScanStopsEarly", testScanStop},
		{"Last", testLast},
		{"GetMany", testGetMany},
		{"DeleteThenSet", testDelete},
		{"DeleteRange", testDeleteRange},
		{"ValuesAreCopies", testCopies},
		{"ConcurrentCommits", testConcurrent},
		{"Closed", testClosed},
		{"PipelinedApplyThenWait", testPipelined},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, open(t)) })
	}
}

func commit(t *testing.T, s store.Store, kv ...string) {
	t.Helper()
	b := s.NewBatch()
	defer b.Close()
	for i := 0; i+1 < len(kv); i += 2 {
		b.Set([]byte(kv[i]), []byte(kv[i+1]))
	}
	if err := b.Commit(true); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

func testGetMissing(t *testing.T, s store.Store) {
	if _, err := s.Get([]byte("nope")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get missing: err = %v, want ErrNotFound", err)
	}
	if _, _, err := s.Last([]byte("a"), []byte("b")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Last on empty: err = %v, want ErrNotFound", err)
	}
}

func testBatch(t *testing.T, s store.Store) {
	b := s.NewBatch()
	b.Set([]byte("a"), []byte("1"))
	b.Set([]byte("b"), []byte("2"))
	if b.Len() != 2 {
		t.Fatalf("Len = %d, want 2", b.Len())
	}
	if _, err := s.Get([]byte("a")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("uncommitted write visible: %v", err)
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()
	for k, want := range map[string]string{"a": "1", "b": "2"} {
		v, err := s.Get([]byte(k))
		if err != nil || string(v) != want {
			t.Fatalf("Get %s = %q, %v; want %q", k, v, err, want)
		}
	}
}

func testScan(t *testing.T, s store.Store) {
	commit(t, s, "p/3", "c", "p/1", "a", "p/2", "b", "q/1", "x", "o/9", "y")
	var got []string
	err := s.Scan([]byte("p/"), []byte("p0"), func(k, v []byte) bool {
		got = append(got, string(k)+"="+string(v))
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "[p/1=a p/2=b p/3=c]"
	if fmt.Sprint(got) != want {
		t.Fatalf("Scan = %v, want %s", got, want)
	}
	got = nil
	_ = s.Scan([]byte("p/2"), nil, func(k, v []byte) bool { got = append(got, string(k)); return true })
	if fmt.Sprint(got) != "[p/2 p/3 q/1]" {
		t.Fatalf("Scan with nil upper = %v", got)
	}
}

func testScanStop(t *testing.T, s store.Store) {
	commit(t, s, "a", "1", "b", "2", "c", "3")
	n := 0
	_ = s.Scan([]byte("a"), nil, func(k, v []byte) bool { n++; return n < 2 })
	if n != 2 {
		t.Fatalf("Scan visited %d keys after stop, want 2", n)
	}
}

func testLast(t *testing.T, s store.Store) {
	commit(t, s, "i/a/1", "x", "i/a/2", "y", "i/b/1", "z")
	k, v, err := s.Last([]byte("i/a/"), []byte("i/a0"))
	if err != nil || string(k) != "i/a/2" || string(v) != "y" {
		t.Fatalf("Last = %q %q %v, want i/a/2 y", k, v, err)
	}
}

func testGetMany(t *testing.T, s store.Store) {
	commit(t, s, "k1", "a", "k3", "c", "k5", "e")
	var got []string
	keys := [][]byte{[]byte("k0"), []byte("k1"), []byte("k3"), []byte("k4"), []byte("k5"), []byte("k9"), []byte("k1")}
	err := s.GetMany(keys, func(i int, v []byte) {
		got = append(got, fmt.Sprintf("%d=%s/%v", i, v, v != nil))
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "[0=/false 1=a/true 2=c/true 3=/false 4=e/true 5=/false 6=a/true]"
	if fmt.Sprint(got) != want {
		t.Fatalf("GetMany = %v, want %s", got, want)
	}
}

func testDelete(t *testing.T, s store.Store) {
	commit(t, s, "k", "1")
	b := s.NewBatch()
	b.Delete([]byte("k"))
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := s.Get([]byte("k")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get after delete: %v", err)
	}
	n := 0
	_ = s.Scan(nil, nil, func(k, v []byte) bool { n++; return true })
	if n != 0 {
		t.Fatalf("Scan after delete saw %d keys", n)
	}
	commit(t, s, "k", "2")
	if v, _ := s.Get([]byte("k")); string(v) != "2" {
		t.Fatalf("Get after re-set = %q", v)
	}
}

func testDeleteRange(t *testing.T, s store.Store) {
	commit(t, s, "a", "1", "b1", "2", "b2", "3", "c", "4")
	b := s.NewBatch()
	b.Set([]byte("b3"), []byte("5")) // before the range delete: removed
	b.DeleteRange([]byte("b"), []byte("c"))
	b.Set([]byte("b9"), []byte("6"))        // after it: kept
	b.DeleteRange([]byte("z"), []byte("a")) // empty range: nothing
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()
	var got []string
	_ = s.Scan(nil, nil, func(k, v []byte) bool { got = append(got, string(k)+"="+string(v)); return true })
	if want := []string{"a=1", "b9=6", "c=4"}; !slices.Equal(got, want) {
		t.Fatalf("after DeleteRange: %v, want %v", got, want)
	}
}

func testCopies(t *testing.T, s store.Store) {
	k, v := []byte("key"), []byte("val")
	b := s.NewBatch()
	b.Set(k, v)
	k[0], v[0] = 'X', 'X'
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()
	got, err := s.Get([]byte("key"))
	if err != nil || string(got) != "val" {
		t.Fatalf("batch did not copy: %q %v", got, err)
	}
	got[0] = 'Y'
	again, _ := s.Get([]byte("key"))
	if string(again) != "val" {
		t.Fatalf("Get did not return a copy: %q", again)
	}
}

func testConcurrent(t *testing.T, s store.Store) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				b := s.NewBatch()
				b.Set([]byte(fmt.Sprintf("w%d/%03d", w, i)), []byte{byte(i)})
				if err := b.Commit(true); err != nil {
					errs <- err
					return
				}
				b.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n := 0
	_ = s.Scan(nil, nil, func(k, v []byte) bool {
		if !bytes.HasPrefix(k, []byte("w")) {
			t.Errorf("unexpected key %q", k)
		}
		n++
		return true
	})
	if n != 400 {
		t.Fatalf("found %d keys, want 400", n)
	}
}

func testClosed(t *testing.T, s store.Store) {
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get([]byte("a")); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Get after Close: %v, want ErrClosed", err)
	}
}

// testPipelined checks store.Pipelined where a store's batches implement
// it: writes are visible once Apply returns, batches applied in turn are
// seen in that order, and Wait returns nil once they are durable.
func testPipelined(t *testing.T, s store.Store) {
	b1, b2 := s.NewBatch(), s.NewBatch()
	p1, ok := b1.(store.Pipelined)
	if !ok {
		b1.Close()
		b2.Close()
		t.Skip("batches do not implement store.Pipelined")
	}
	p2 := b2.(store.Pipelined)
	b1.Set([]byte("p"), []byte("1"))
	b2.Set([]byte("p"), []byte("2"))
	b2.Set([]byte("q"), []byte("2"))
	if err := p1.Apply(); err != nil {
		t.Fatalf("Apply 1: %v", err)
	}
	if v, err := s.Get([]byte("p")); err != nil || string(v) != "1" {
		t.Fatalf("after Apply 1: Get = %q, %v; want 1", v, err)
	}
	if err := p2.Apply(); err != nil {
		t.Fatalf("Apply 2: %v", err)
	}
	if v, err := s.Get([]byte("p")); err != nil || string(v) != "2" {
		t.Fatalf("after Apply 2: Get = %q, %v; want the later batch's 2", v, err)
	}
	for i, p := range []store.Pipelined{p1, p2} {
		if err := p.Wait(); err != nil {
			t.Fatalf("Wait %d: %v", i+1, err)
		}
	}
	b1.Close()
	b2.Close()
	if v, err := s.Get([]byte("q")); err != nil || string(v) != "2" {
		t.Fatalf("after Wait: Get q = %q, %v; want 2", v, err)
	}
}
