package cluster

import (
	"errors"
	"testing"
	"time"
)

func TestStandbyStateRoundTrip(t *testing.T) {
	for _, st := range []StandbyState{
		{},
		{FenceEpoch: 7, FenceOwner: "node-a", Seq: 1 << 40, Cursor: "1733000000000-3", Demoted: true},
		{FenceEpoch: 8, FenceOwner: "node-b", Seq: 3, Stale: true},
		{FenceEpoch: 9, FenceOwner: "node-c", Seq: 4, Demoted: true, Stale: true},
	} {
		got, err := decodeState(encodeState(st))
		if err != nil || got != st {
			t.Fatalf("round trip of %+v = %+v %v", st, got, err)
		}
	}
	full := encodeState(StandbyState{FenceEpoch: 7, FenceOwner: "node-a", Seq: 9, Cursor: "c"})
	for i := range full {
		if _, err := decodeState(full[:i]); err == nil {
			t.Fatalf("decoded a state cut at %d of %d bytes", i, len(full))
		}
	}
	if _, err := decodeState(append([]byte{2}, full[1:]...)); err == nil {
		t.Fatal("decoded an unknown version")
	}
}

// TestStandbyGoesStaleOnANewerOwner: a standby that reads an entry of a
// newer owner than the one whose history it follows fences it but does
// not splice it onto its own history (which need not be a prefix of the
// newer owner's): it applies and acks nothing more and may not take over.
func TestStandbyGoesStaleOnANewerOwner(t *testing.T) {
	ctx := t.Context()
	c := NewMemCoord(time.Now)
	l := &memLog{}
	sb := NewStandby(c, 0, "s", l, StandbyState{FenceEpoch: 1, FenceOwner: "a"})
	for _, e := range []Entry{
		{Epoch: 1, Owner: "a", Seq: 1, Data: []byte("a1")},
		{Epoch: 2, Owner: "b", Seq: 2, Data: []byte("b2")}, // b took over from a history without a1
		{Epoch: 2, Owner: "b", Seq: 3, Data: []byte("b3")},
	} {
		if err := c.Append(ctx, 0, e); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sb.Step(ctx, 10); err != nil {
		t.Fatal(err)
	}
	st := sb.State()
	if len(l.es) != 1 || !st.Stale || st.FenceEpoch != 2 || st.FenceOwner != "b" || st.Seq != 1 || !l.st.Stale {
		t.Fatalf("after a newer owner's entries: applied %d, state %+v (saved %+v)", len(l.es), st, l.st)
	}
	acks, _ := c.Acks(ctx, 0)
	if a, ok := acks["s"]; ok && a.Epoch == 2 {
		t.Fatalf("a stale standby acked %+v", a)
	}
	if err := c.SetStandby(ctx, 0, "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.TakeOver(ctx, time.Second); !errors.Is(err, ErrNotStandby) {
		t.Fatalf("a stale standby's takeover: %v", err)
	}
}
