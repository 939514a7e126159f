package client_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// fill sends n messages to "bo" from the engine directly (another user's
// traffic), each durable before the next.
func fill(t *testing.T, n *node.Node, count int) []string {
	t.Helper()
	var ids []string
	for i := range count {
		res, err := n.Engine().Submit(context.Background(), engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: fmt.Appendf(nil, "m%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.ID.String())
	}
	return ids
}

// A client that only sends, and never takes its entries, keeps getting
// its acknowledgements: the reader never waits for the application (it
// used to, once the 1,024-entry buffer was full, and Send hung).
func TestSendWorksWhileEntriesAreNotDrained(t *testing.T) {
	n := nodetest.Start(t, node.Config{DataDir: t.TempDir()})
	nodetest.AddUsers(t, n, "ana", "bo")
	bo, err := client.Dial(context.Background(), client.Config{Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone", Buffer: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	fill(t, n, 300) // far past the channel's 8
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := bo.Send(ctx, []string{"ana"}, fmt.Appendf(nil, "reply %d", i))
		cancel()
		if err != nil {
			t.Fatalf("send %d while 300 entries wait undrained: %v", i, err)
		}
	}
}

// Read (and the other requests) may be called from the goroutine that
// drains Entries, with many entries still arriving: their answers do not
// wait behind the entries.
func TestReadFromTheEntriesLoop(t *testing.T) {
	n := nodetest.Start(t, node.Config{DataDir: t.TempDir()})
	nodetest.AddUsers(t, n, "ana", "bo")
	bo, err := client.Dial(context.Background(), client.Config{Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone", Buffer: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	ids := fill(t, n, 500)
	read := 0
	for read < len(ids) {
		select {
		case e := <-bo.Entries():
			if e.Message == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := bo.Read(ctx, e.Message.ID)
			cancel()
			if err != nil {
				t.Fatalf("Read from the Entries loop, entry %d: %v", read, err)
			}
			read++
		case <-time.After(10 * time.Second):
			t.Fatalf("stalled after %d reads", read)
		}
	}
}

// Past MaxQueue the client keeps no more entries, and fetches them again
// once the application has drained half: every entry arrives once, in
// order.
func TestEntriesPastMaxQueueAreFetchedAgain(t *testing.T) {
	n := nodetest.Start(t, node.Config{DataDir: t.TempDir()})
	nodetest.AddUsers(t, n, "ana", "bo")
	bo, err := client.Dial(context.Background(), client.Config{Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone",
		Buffer: 4, MaxQueue: 32, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	ids := fill(t, n, 400)
	var last uint64
	for i := 0; i < len(ids); {
		select {
		case e := <-bo.Entries():
			if e.Seq != last+1 {
				t.Fatalf("seq %d after %d: a gap or a repeat", e.Seq, last)
			}
			last = e.Seq
			if e.Message == nil {
				continue
			}
			if e.Message.ID != ids[i] {
				t.Fatalf("message %d: %s, want %s", i, e.Message.ID, ids[i])
			}
			i++
		case <-time.After(10 * time.Second):
			t.Fatalf("stalled at seq %d", last)
		}
	}
	if bo.Stats().Refetches == 0 {
		t.Fatal("400 entries against a queue of 32 and no refetch: the bound was not reached")
	}
}

// A Send that times out says so with the client message id it used;
// sending again with it stores the message at most once.
func TestTimedOutSendRetriesSafely(t *testing.T) {
	n := nodetest.Start(t, node.Config{DataDir: t.TempDir()})
	nodetest.AddUsers(t, n, "ana", "bo")
	ana := nodetest.Dial(t, n, "ana", "phone", nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // ended before the server could answer
	_, err := ana.Send(ctx, []string{"bo"}, []byte("once"))
	var ue *client.UnsureError
	if !errors.As(err, &ue) || !errors.Is(err, context.Canceled) || ue.ClientMsgID == "" {
		t.Fatalf("a send whose context ended: %v, want an *UnsureError with its client message id", err)
	}
	for i := range 2 {
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := ana.Send(rctx, []string{"bo"}, []byte("once"), client.WithClientID(ue.ClientMsgID))
		rcancel()
		if err != nil {
			t.Fatalf("retry %d: %v", i, err)
		}
		if i == 1 && !res.Duplicate {
			t.Fatal("the second retry with the same id was stored again")
		}
	}
	if h, _ := n.Engine().Head("bo"); h > 1 {
		t.Fatalf("bo's stream holds %d entries, want the message once", h)
	}
}

// The smallest queue still refetches (MaxQueue is at least 2): every
// entry arrives, once, in order.
func TestTinyQueueStillDelivers(t *testing.T) {
	n := nodetest.Start(t, node.Config{DataDir: t.TempDir()})
	nodetest.AddUsers(t, n, "ana", "bo")
	bo, err := client.Dial(context.Background(), client.Config{Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone",
		Buffer: 1, MaxQueue: 1, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	ids := fill(t, n, 20)
	for i := range ids {
		e := nextMessage(t, bo)
		if e.Message.ID != ids[i] {
			t.Fatalf("message %d: %s, want %s", i, e.Message.ID, ids[i])
		}
	}
}

// TestRequestRightAfterDial: Dial returns once its connection is the
// client's, so a request made at once finds it (it answered "not
// connected; retry" when the session had not taken it yet).
func TestRequestRightAfterDial(t *testing.T) {
	n := nodetest.Start(t, node.Config{DataDir: t.TempDir()})
	nodetest.AddUsers(t, n, "ana", "bo")
	for i := range 30 {
		dev := fmt.Sprintf("d%d", i)
		c, err := client.Dial(context.Background(), client.Config{Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "bo", dev), Device: dev})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Receipts(context.Background(), "01M8ZZZZZZZZZZZZZZZZZZZZZZ")
		if err != nil && strings.Contains(err.Error(), "not connected") {
			t.Fatalf("dial %d: a request right after Dial: %v", i, err)
		}
		c.Close()
	}
}
