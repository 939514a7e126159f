package engine

import (
	"bytes"
	"testing"
	"time"
)

// Ids of an engine of a partition name it (HomeOf), stay strictly
// increasing within a millisecond, across milliseconds and when the clock
// steps back; other engines' ids name no partition.
func TestIDsNameTheirHome(t *testing.T) {
	t0 := time.UnixMilli(1_800_000_000_000)
	for _, home := range []uint32{0, 1, 255, 256, 1023, maxHome} {
		g := idGen{home: home, homed: true}
		var last ID
		for i := range 5000 {
			now := t0.Add(time.Duration(i/1000) * time.Millisecond) // 1,000 ids a millisecond
			if i == 4000 {
				now = t0 // the clock stepped back
			}
			id := g.next(now)
			if p, ok := HomeOf(id); !ok || p != home {
				t.Fatalf("home %d: id %s names %d (%v)", home, id, p, ok)
			}
			if i > 0 && bytes.Compare(id[:], last[:]) <= 0 {
				t.Fatalf("home %d: id %d %s is not after %s", home, i, id, last)
			}
			last = id
		}
	}
	var g idGen
	for i := range 5000 {
		if p, ok := HomeOf(g.next(t0.Add(time.Duration(i%7) * time.Millisecond))); ok {
			t.Fatalf("an id of an engine without partitions names partition %d", p)
		}
	}
}
