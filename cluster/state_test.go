package cluster

import (
	"testing"
)

func TestStandbyStateRoundTrip(t *testing.T) {
	for _, st := range []StandbyState{
		{},
		{FenceEpoch: 7, FenceOwner: "node-a", Seq: 1 << 40, Cursor: "1733000000000-3", Demoted: true},
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
