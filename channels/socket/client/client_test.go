package client_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket"
	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, nodetest.GoleakOptions...) }

// nextWhere returns the next entry that match accepts, skipping others,
// or fails after a deadline.
func nextWhere(t *testing.T, c *client.Client, what string, match func(client.Entry) bool) client.Entry {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case e, ok := <-c.Entries():
			if !ok {
				t.Fatalf("entries closed while waiting for %s: %v", what, c.Err())
			}
			if match(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s within 5s", what)
		}
	}
}

// next returns the next entry or fails after a deadline.
func next(t *testing.T, c *client.Client) client.Entry {
	t.Helper()
	return nextWhere(t, c, "entry", func(client.Entry) bool { return true })
}

func nextMessage(t *testing.T, c *client.Client) client.Entry {
	t.Helper()
	return nextWhere(t, c, "message", func(e client.Entry) bool { return e.Message != nil })
}

func nextReceipt(t *testing.T, c *client.Client) client.Entry {
	t.Helper()
	return nextWhere(t, c, "receipt", func(e client.Entry) bool { return e.Receipt != nil })
}

func send(t *testing.T, c *client.Client, body string, to ...string) client.SendResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := c.Send(ctx, to, []byte(body))
	if err != nil {
		t.Fatalf("send %q: %v", body, err)
	}
	return r
}

func TestOfflineRecipientGetsMessageAfterRestart(t *testing.T) {
	dir := t.TempDir()
	n := nodetest.Start(t, node.Config{DataDir: dir})
	nodetest.AddUsers(t, n, "ana", "bo")
	ana := nodetest.Dial(t, n, "ana", "phone", nil)
	res := send(t, ana, "are you there?", "bo")
	ana.Close()
	nodetest.Stop(t, n)

	n = nodetest.Start(t, node.Config{DataDir: dir})
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	e := nextMessage(t, bo)
	if e.Seq != 1 || e.Message.ID != res.ID || string(e.Message.Body) != "are you there?" || e.Message.From != "ana" {
		t.Fatalf("got %+v %+v", e, e.Message)
	}
}

func TestReadOnOneDeviceIsReadEverywhere(t *testing.T) {
	ctx := context.Background()
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, "ana", "bo")
	ana := nodetest.Dial(t, n, "ana", "phone", nil)
	phone := nodetest.Dial(t, n, "bo", "phone", nil)
	laptop := nodetest.Dial(t, n, "bo", "laptop", nil)

	res := send(t, ana, "meeting at 3", "bo")
	for _, c := range []*client.Client{phone, laptop} {
		if e := nextMessage(t, c); e.Message.ID != res.ID {
			t.Fatalf("device got %s, want %s", e.Message.ID, res.ID)
		}
	}
	phone.Ack(1)
	if ev := nextReceipt(t, ana); ev.Receipt.State != pb.State_DELIVERED || ev.Receipt.User != "bo" {
		t.Fatalf("sender event %+v, want bo delivered", ev.Receipt)
	}
	if err := phone.Read(ctx, res.ID); err != nil {
		t.Fatal(err)
	}
	if ev := nextReceipt(t, laptop); fmt.Sprint(ev.Receipt.IDs) != "["+res.ID+"]" || ev.Receipt.State != pb.State_READ_STATE {
		t.Fatalf("laptop event %+v, want read", ev.Receipt)
	}
	if ev := nextReceipt(t, ana); ev.Receipt.State != pb.State_READ_STATE {
		t.Fatalf("sender event %+v, want read", ev.Receipt)
	}
	rs, err := ana.Receipts(ctx, res.ID)
	if err != nil || len(rs) != 1 || rs[0].State != pb.State_READ_STATE || rs[0].ReadMs == 0 {
		t.Fatalf("receipts = %v, %v", rs, err)
	}
	// Only the sender may ask.
	if _, err := phone.Receipts(ctx, res.ID); !isCode(err, pb.Code_FORBIDDEN) {
		t.Fatalf("recipient querying receipts: %v, want FORBIDDEN", err)
	}
}

func isCode(err error, code pb.Code) bool {
	ce, ok := err.(*client.Error)
	return ok && ce.Code == code
}

func TestReconnectReplaysWithoutDuplicates(t *testing.T) {
	dir, sock := t.TempDir(), nodetest.FreeAddr(t)
	cfg := node.Config{DataDir: dir, SocketAddr: sock}
	n := nodetest.Start(t, cfg)
	nodetest.AddUsers(t, n, "ana", "bo")
	ana := nodetest.Dial(t, n, "ana", "web", nil)
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	for i := range 10 {
		send(t, ana, fmt.Sprint(i), "bo")
	}
	seen := map[uint64]int{}
	for range 10 {
		e := nextMessage(t, bo)
		seen[e.Seq]++
	}
	bo.Ack(5) // the app processed only half before the server went away

	// Restart the server under the connected clients; they reconnect.
	nodetest.Stop(t, n)
	n = nodetest.Start(t, cfg)
	nodetest.WaitFor(t, "reconnect", 10*time.Second, func() bool { return bo.Stats().Connects >= 2 && ana.Stats().Connects >= 2 })
	for i := 10; i < 15; i++ {
		send(t, ana, fmt.Sprint(i), "bo")
	}
	for range 5 {
		e := nextMessage(t, bo)
		seen[e.Seq]++
	}
	for seq := uint64(1); seq <= 15; seq++ {
		if seen[seq] != 1 {
			t.Fatalf("seq %d seen %d times (all: %v)", seq, seen[seq], seen)
		}
	}
	bo.Close()

	// The app restarts with the cursor it persisted (5): it gets 6..15 again,
	// exactly once each.
	again := nodetest.Dial(t, n, "bo", "phone", ptr(5))
	for seq := uint64(6); seq <= 15; seq++ {
		if e := nextMessage(t, again); e.Seq != seq {
			t.Fatalf("after app restart got seq %d, want %d", e.Seq, seq)
		}
	}
}

func ptr(v uint64) *uint64 { return &v }

func TestResumeFromAppCursor(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, "ana", "bo")
	ana := nodetest.Dial(t, n, "ana", "web", nil)
	for i := range 3 {
		send(t, ana, fmt.Sprint(i), "bo")
	}
	// The app already processed 1 and 2 in an earlier run.
	c, err := client.Dial(context.Background(), client.Config{
		Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone", Cursor: ptr(2),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if e := nextMessage(t, c); e.Seq != 3 {
		t.Fatalf("got seq %d, want 3", e.Seq)
	}
}

func TestSendRetriesAreStoredOnce(t *testing.T) {
	ctx := context.Background()
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, "ana", "bo")
	ana := nodetest.Dial(t, n, "ana", "web", nil)
	r1, err := ana.Send(ctx, []string{"bo"}, []byte("x"), client.WithClientID("retry-1"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := ana.Send(ctx, []string{"bo"}, []byte("x"), client.WithClientID("retry-1"))
	if err != nil {
		t.Fatal(err)
	}
	if r1.ID != r2.ID || r1.Duplicate || !r2.Duplicate {
		t.Fatalf("first %+v, retry %+v", r1, r2)
	}
	if h, _ := n.Engine().Head("bo"); h != 1 {
		t.Fatalf("bo's stream has %d entries, want 1", h)
	}
}

func TestBadTokenIsFatal(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, "bo")
	_, err := client.Dial(context.Background(), client.Config{Addr: n.SocketAddr(), Token: "garbage", Device: "phone"})
	if !isCode(err, pb.Code_BAD_TOKEN) {
		t.Fatalf("err = %v, want BAD_TOKEN", err)
	}
	_, err = client.Dial(context.Background(), client.Config{Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "bo", "phone"), Device: "laptop"})
	if !isCode(err, pb.Code_DEVICE_MISMATCH) {
		t.Fatalf("err = %v, want DEVICE_MISMATCH", err)
	}
}

// TestDuplicatesFromServerAreDropped plays a server that replays entries
// (messages, DING events, receipts, burns and secret chat events) the
// client already handed to the app, and checks the app sees each once, as
// the kind it was sent.
func TestDuplicatesFromServerAreDropped(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sessions := [][]uint64{{1, 2, 3}, {2, 3, 4}, {1, 4, 5}}
	served := make(chan error, 1)
	go func() {
		for _, seqs := range sessions {
			nc, err := ln.Accept()
			if err != nil {
				served <- err
				return
			}
			var hdr [wire.HeaderLen]byte
			if _, err := io.ReadFull(nc, hdr[:]); err != nil {
				served <- err
				return
			}
			n, _, _ := wire.ParseHeader(hdr[:], 1<<20)
			io.ReadFull(nc, make([]byte, n-1))
			out := wire.Encode(pb.FrameType_WELCOME, &pb.Welcome{MaxFrame: 1 << 16, PingIntervalMs: 60000})
			for _, s := range seqs {
				switch s {
				case 1:
					out = wire.Append(out, pb.FrameType_DELIVER, &pb.Deliver{Seq: s, Id: fmt.Sprint(s)})
				case 2:
					out = wire.Append(out, pb.FrameType_DING_EVENT, &pb.DingEvent{Seq: s, Id: fmt.Sprint(s), Event: "reminder"})
				case 3:
					out = wire.Append(out, pb.FrameType_RECEIPT, &pb.Receipt{Seq: s, Ids: []string{fmt.Sprint(s)}})
				case 4:
					out = wire.Append(out, pb.FrameType_BURN, &pb.Burn{Seq: s, Id: fmt.Sprint(s)})
				default:
					out = wire.Append(out, pb.FrameType_SECRET_EVENT, &pb.SecretEvent{Seq: s, Chat: fmt.Sprint(s), Event: "created"})
				}
			}
			nc.Write(out)
			nc.Close()
		}
		served <- nil
	}()
	c, err := client.Dial(context.Background(), client.Config{Addr: ln.Addr().String(), Token: "t", Device: "d", MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for want := uint64(1); want <= 5; want++ {
		e := next(t, c)
		if e.Seq != want {
			t.Fatalf("app got seq %d, want %d", e.Seq, want)
		}
		set := 0
		for _, p := range []bool{e.Message != nil, e.Ding != nil, e.Receipt != nil, e.Burn != nil, e.Secret != nil} {
			if p {
				set++
			}
		}
		ok := set == 1
		switch want {
		case 1:
			ok = ok && e.Message != nil && e.Message.ID == fmt.Sprint(want)
		case 2:
			ok = ok && e.Ding != nil && e.Ding.ID == fmt.Sprint(want) && e.Ding.Event == "reminder"
		case 3:
			ok = ok && e.Receipt != nil
		case 4:
			ok = ok && e.Burn != nil && *e.Burn == client.Burn{Seq: want, ID: fmt.Sprint(want)}
		default:
			ok = ok && e.Secret != nil && e.Secret.Chat == fmt.Sprint(want) && e.Secret.Event == "created"
		}
		if !ok {
			t.Fatalf("seq %d: entry %+v", want, e)
		}
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if d := c.Stats().Duplicates; d != 4 {
		t.Fatalf("dropped %d duplicates, want 4", d)
	}
}

func TestSendsStayWithinTheServersInflightLimit(t *testing.T) {
	n := nodetest.Start(t, node.Config{Socket: socket.Config{MaxInflight: 2}})
	nodetest.AddUsers(t, n, "ana", "bo")
	ana := nodetest.Dial(t, n, "ana", "web", nil)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := ana.Send(context.Background(), []string{"bo"}, []byte("x")); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("send: %v", err)
	}
	if h, _ := n.Engine().Head("bo"); h != 64 {
		t.Fatalf("bo's head %d, want 64", h)
	}
}

// TestSilentServerIsReplaced plays a server that completes the handshake
// and then says nothing, not even PONG: the client must give up on it and
// reconnect.
func TestSilentServerIsReplaced(t *testing.T) {
	c, err := client.Dial(context.Background(), client.Config{Addr: frozenServer(t, 20, false), Token: "t", Device: "d", MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nodetest.WaitFor(t, "a reconnect", 5*time.Second, func() bool { return c.Stats().Connects >= 2 })
}

// A message over the server's limit fails that one Send at once with
// MESSAGE_TOO_LARGE (the limit is in WELCOME): nothing is sent, the
// connection stays up, nothing is resent on the next connection, and the
// next Send goes through. So does a READ too large for one frame.
func TestOversizedRequestsFailAtOnceAndKeepTheConnection(t *testing.T) {
	n := nodetest.Start(t, node.Config{MaxBody: 64 << 10})
	nodetest.AddUsers(t, n, "ana", "bo")
	ana := nodetest.Dial(t, n, "ana", "phone", nil)
	w := ana.Welcome()
	if w.MaxBody != 64<<10 || w.MaxFrame == 0 {
		t.Fatalf("welcome limits: body %d, frame %d", w.MaxBody, w.MaxFrame)
	}
	send(t, ana, "hello", "bo") // the session is up
	before := ana.Stats()
	ctx := context.Background() // no deadline: a retry loop would hang here
	for _, size := range []int{int(w.MaxBody) + 1, 70 << 10, int(w.MaxFrame) + 10} {
		_, err := ana.Send(ctx, []string{"bo"}, make([]byte, size))
		if !isCode(err, pb.Code_MESSAGE_TOO_LARGE) {
			t.Fatalf("send of %d bytes = %v, want MESSAGE_TOO_LARGE", size, err)
		}
	}
	ids := make([]string, 0, 200000)
	for i := range cap(ids) {
		ids = append(ids, fmt.Sprintf("01J%023d", i))
	}
	if err := ana.Read(ctx, ids...); !isCode(err, pb.Code_FRAME_TOO_LARGE) {
		t.Fatalf("read of %d ids = %v, want FRAME_TOO_LARGE", len(ids), err)
	}
	// Exactly the limit is fine, on the same connection.
	if _, err := ana.Send(ctx, []string{"bo"}, make([]byte, w.MaxBody)); err != nil {
		t.Fatalf("send at the limit: %v", err)
	}
	send(t, ana, "still here", "bo")
	if after := ana.Stats(); after.Connects != before.Connects {
		t.Fatalf("the client reconnected (%d → %d connections): an oversized request cost the connection", before.Connects, after.Connects)
	}
}

// frozenServer plays a server that completes the handshake (WELCOME
// with ping interval pingMs) and then freezes: it keeps each connection
// open and reads on, but says nothing, as a paused process or a network
// dropping packets would. It returns its address.
func frozenServer(t *testing.T, pingMs uint32, answerFirst bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			if _, err := readTestFrame(nc); err != nil { // HELLO
				continue
			}
			nc.Write(wire.Encode(pb.FrameType_WELCOME, &pb.Welcome{MaxFrame: 1 << 16, PingIntervalMs: pingMs}))
			if answerFirst { // the first SUBMIT is acknowledged, then it freezes
				if msg, err := readTestFrame(nc); err == nil {
					if sub, ok := msg.(*pb.Submit); ok {
						nc.Write(wire.Encode(pb.FrameType_SUBMIT_ACK, &pb.SubmitAck{Ref: sub.Ref, Id: "01KBMA4Q7ZQ0000000000A1B2C"}))
					}
				}
			}
			go io.Copy(io.Discard, nc) // frozen: reads, answers nothing
		}
	}()
	return ln.Addr().String()
}

// readTestFrame reads and decodes one frame from a client, as a fake
// server does.
func readTestFrame(r io.Reader) (proto.Message, error) {
	var hdr [wire.HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n, ft, err := wire.ParseHeader(hdr[:], 1<<20)
	if err != nil {
		return nil, err
	}
	payload := make([]byte, n-1)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, err
	}
	return wire.Decode(ft, payload)
}

// leftFrozen dials a frozen server (frozenServer) with PongTimeout pong,
// calls act with the client, and waits for the session to end because a
// PING went unanswered, within within.
func leftFrozen(t *testing.T, pingMs uint32, answerFirst bool, pong, within time.Duration, act func(*client.Client)) {
	t.Helper()
	downs := make(chan error, 4)
	c, err := client.Dial(context.Background(), client.Config{Addr: frozenServer(t, pingMs, answerFirst), Token: "t", Device: "d", MinBackoff: time.Millisecond,
		PongTimeout: pong,
		OnSession: func(e client.SessionEvent) {
			if e.Kind == client.SessionDown {
				select {
				case downs <- e.Err:
				default:
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	act(c)
	select {
	case err := <-downs:
		if err == nil || !strings.Contains(err.Error(), "after a PING") {
			t.Fatalf("the session ended with %v, want the PING left unanswered", err)
		}
	case <-time.After(within):
		t.Fatalf("the client did not leave the frozen server within %v", within)
	}
	nodetest.WaitFor(t, "a reconnect", 10*time.Second, func() bool { return c.Stats().Connects >= 2 })
}

// TestFrozenServerIsLeftAfterAPing: an idle client takes a frozen server
// for gone PongTimeout after its first PING (a ping interval of 3 s
// here), not after three silent ping intervals (9 s), and says why.
func TestFrozenServerIsLeftAfterAPing(t *testing.T) {
	leftFrozen(t, 3000, false, 100*time.Millisecond, 30*time.Second, func(*client.Client) {})
}

// TestFrozenServerIsLeftWhenARequestGoesUnanswered: a client that sends
// to a frozen server pings once a quarter of PongTimeout passes without
// a word, and leaves it PongTimeout later, though its next ping interval
// is a minute away; also when the server answered the send before (the
// look after it finds that answer, and looks again for the next send).
func TestFrozenServerIsLeftWhenARequestGoesUnanswered(t *testing.T) {
	for _, answerFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("answered-first=%v", answerFirst), func(t *testing.T) {
			leftFrozen(t, 60_000, answerFirst, 400*time.Millisecond, 20*time.Second, func(c *client.Client) {
				send := func() error {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					_, err := c.Send(ctx, []string{"bo"}, []byte("to a frozen server"))
					return err
				}
				if answerFirst {
					if err := send(); err != nil {
						t.Fatalf("the send the server answered: %v", err)
					}
				}
				go send()
			})
		})
	}
}
