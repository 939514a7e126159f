package engine_test

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
)

// Check finds nothing wrong in a store the engine wrote, and finds each
// kind of damage: a gap in a stream, a message entry whose message is
// gone, a cursor beyond the head.
func TestCheckFindsBrokenInvariants(t *testing.T) {
	st := memstore.New()
	e, err := engine.Open(engine.Config{Store: st, Recipients: fixedUsers{"ana": true, "bo": true}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var ids []engine.ID
	for range 5 {
		res, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("hi")})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.ID)
	}
	if err := e.Ack(ctx, "bo", "phone", 3); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := engine.Check(st)
	if err != nil || !r.OK() || r.Entries < 5 || r.Messages != 5 || r.Cursors != 1 {
		t.Fatalf("a sound store: %+v %v", r, err)
	}
	damage := func(what string, change func(), want string) {
		t.Helper()
		change()
		r, err := engine.Check(st)
		if err != nil {
			t.Fatal(err)
		}
		if r.OK() || !strings.Contains(strings.Join(r.Problems, "\n"), want) {
			t.Fatalf("%s: problems %q, want one with %q", what, r.Problems, want)
		}
	}
	damage("a message deleted", func() { deleteKey(t, st, engine.MessageKeyForTest(ids[1])) }, "is not stored")
	damage("a stream entry deleted", func() { deleteKey(t, st, engine.InboxKeyForTest("bo", 2)) }, "(a gap)")
	damage("a cursor beyond the head", func() { setKey(t, st, engine.CursorKeyForTest("bo", "laptop"), 99) }, "beyond the stream's head")
}

func deleteKey(t *testing.T, st store.Store, k []byte) {
	t.Helper()
	b := st.NewBatch()
	defer b.Close()
	b.Delete(k)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
}

func setKey(t *testing.T, st store.Store, k []byte, v uint64) {
	t.Helper()
	b := st.NewBatch()
	defer b.Close()
	b.Set(k, binary.BigEndian.AppendUint64(nil, v))
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
}
