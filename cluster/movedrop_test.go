package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/dingmq/ding/engine/store/pebblestore"
)

// In a move's second half (x replaced by y, both counted), dropping a
// stalled standby lets x go first and keeps y named; y itself asking to
// be released (it is drained) drops both, and the coordinator names
// nobody, rather than the owner counting y while the coordinator no
// longer names it.
func TestDroppingAStandbyInAMovesSecondHalf(t *testing.T) {
	ctx := context.Background()
	const p = Partition(0)
	c := NewMemCoord(time.Now)
	second := func() *ReplicatedStore {
		st, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		o := NewOwner(c, p, "o", 1, 0, "y")
		o.leaving = "x"
		rs, err := NewReplicatedStore(st, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rs.Close() })
		if err := c.SetStandby(ctx, p, "y"); err != nil {
			t.Fatal(err)
		}
		return rs
	}
	named := func() string {
		sb, err := c.Standby(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		return sb
	}

	rs := second()
	if err := rs.DropStandby(ctx, c); err != nil {
		t.Fatal(err)
	}
	if st := rs.Status(); st.Standby != "y" || st.Leaving != "" || named() != "y" {
		t.Fatalf("after dropping a stalled standby: %+v, named %q; want y counted and named, x let go", st, named())
	}
	if err := rs.DropStandby(ctx, c); err != nil {
		t.Fatal(err)
	}
	if st := rs.Status(); st.Standby != "" || named() != "" {
		t.Fatalf("after dropping again: %+v, named %q; want none", st, named())
	}

	rs = second()
	if err := rs.ReleaseStandby(ctx, c, "x"); err != nil {
		t.Fatal(err)
	}
	if st := rs.Status(); st.Standby != "y" || st.Leaving != "" || named() != "y" {
		t.Fatalf("after x asked to go: %+v, named %q; want y counted and named", st, named())
	}

	rs = second()
	if err := rs.ReleaseStandby(ctx, c, "y"); err != nil {
		t.Fatal(err)
	}
	if st := rs.Status(); st.Standby != "" || st.Leaving != "" || named() != "" {
		t.Fatalf("after y asked to go: %+v, named %q; want no standby counted or named", st, named())
	}
}
