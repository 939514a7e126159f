package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// Cursor counts only the entries the application took from Entries: at
// Close, the ones waiting in the channel and in the client's queue are
// not counted, and a client dialled with the cursor gets them, once each
// and in order. Entries read from the channel after Close count.
func TestCursorCountsOnlyWhatTheAppTook(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, "ana", "bo")
	dial := func(cursor *uint64) *client.Client {
		c, err := client.Dial(context.Background(), client.Config{Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "bo", "phone"),
			Device: "phone", Cursor: cursor, Buffer: 4})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	bo := dial(nil)
	defer bo.Close()
	if seq, ok := bo.Cursor(); ok {
		t.Fatalf("cursor %d before any entry was taken, and no Config.Cursor", seq)
	}
	ids := fill(t, n, 20)
	for want := uint64(1); want <= 3; want++ {
		if e := next(t, bo); e.Seq != want {
			t.Fatalf("took seq %d, want %d", e.Seq, want)
		}
	}
	// The client has received more than the application took: 4 wait in
	// the channel (Buffer), the rest in the queue.
	nodetest.WaitFor(t, "a full Entries channel", 5*time.Second, func() bool { return len(bo.Entries()) == 4 })
	// While the client runs, the cursor may lag by an entry being handed
	// over (here: the one that refilled the channel), never run ahead.
	if seq, _ := bo.Cursor(); seq != 3 && seq != 2 {
		t.Fatalf("cursor %d while the client runs, want 3 (or 2)", seq)
	}
	bo.Close()
	if seq, ok := bo.Cursor(); seq != 3 || !ok {
		t.Fatalf("cursor after Close %d (%v), want 3: only what the application took", seq, ok)
	}
	// Reading out what is left in the channel moves the cursor.
	for want := uint64(4); want <= 5; want++ {
		if e, ok := <-bo.Entries(); !ok || e.Seq != want {
			t.Fatalf("after Close read seq %d (%v), want %d", e.Seq, ok, want)
		}
	}
	seq, _ := bo.Cursor()
	if seq != 5 {
		t.Fatalf("cursor %d after reading two more, want 5", seq)
	}

	again := dial(&seq)
	defer again.Close()
	for i := 5; i < len(ids); i++ {
		e := nextMessage(t, again)
		if e.Seq != uint64(i+1) || e.Message.ID != ids[i] {
			t.Fatalf("after the restart got seq %d (%s), want %d (%s)", e.Seq, e.Message.ID, i+1, ids[i])
		}
	}
	// While it runs, the cursor may still lag by the last entry (its send
	// completed, the pump has not counted it yet); Close makes it exact.
	if seq, _ := again.Cursor(); seq != uint64(len(ids)) && seq != uint64(len(ids)-1) {
		t.Fatalf("cursor %d after taking all while the client runs, want %d (or %d)", seq, len(ids), len(ids)-1)
	}
	again.Close()
	if seq, _ := again.Cursor(); seq != uint64(len(ids)) {
		t.Fatalf("cursor %d after taking all and Close, want %d", seq, len(ids))
	}
}
