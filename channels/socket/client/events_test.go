package client_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// recorder collects the session events a client gives Config.OnSession.
type recorder struct {
	mu  sync.Mutex
	evs []client.SessionEvent // guarded by mu
	sig chan struct{}
	at  int // the next event next returns; test goroutine only
}

func newRecorder() *recorder { return &recorder{sig: make(chan struct{}, 1)} }

func (r *recorder) on(ev client.SessionEvent) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
	select {
	case r.sig <- struct{}{}:
	default:
	}
}

// next returns the next event, or fails after a deadline.
func (r *recorder) next(t *testing.T) client.SessionEvent {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		if r.at < len(r.evs) {
			ev := r.evs[r.at]
			r.at++
			r.mu.Unlock()
			return ev
		}
		r.mu.Unlock()
		select {
		case <-r.sig:
		case <-deadline:
			t.Fatalf("no session event within 10s (got %d)", r.at)
		}
	}
}

// expect returns the next event and fails unless it is of kind.
func (r *recorder) expect(t *testing.T, kind client.SessionEventKind) client.SessionEvent {
	t.Helper()
	ev := r.next(t)
	if ev.Kind != kind {
		t.Fatalf("session event %v (%+v), want %v", ev.Kind, ev, kind)
	}
	return ev
}

// The application sees each session: where it connected, the cursor it
// resumed from and the WELCOME; why it ended (here the server's fatal
// SHUTTING_DOWN, code and detail); the reconnect, resuming after what it
// had received; an address that failed; and the client's stop.
func TestSessionEvents(t *testing.T) {
	dir, sock, down := t.TempDir(), nodetest.FreeAddr(t), nodetest.FreeAddr(t)
	cfg := node.Config{DataDir: dir, SocketAddr: sock}
	n := nodetest.Start(t, cfg)
	nodetest.AddUsers(t, n, "ana", "bo")
	rec := newRecorder()
	bo, err := client.Dial(context.Background(), client.Config{Addr: down + "," + sock, Token: nodetest.Token(t, n, "bo", "phone"),
		Device: "phone", OnSession: rec.on, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()

	if ev := rec.expect(t, client.SessionDialFailed); ev.Addr != down || ev.Err == nil {
		t.Fatalf("failed attempt: %+v", ev)
	}
	ev := rec.expect(t, client.SessionUp)
	if ev.Addr != sock || ev.Session != 1 || ev.Reconnect || ev.Cursor != nil || ev.ResumeFrom != 1 || ev.Head != 0 ||
		ev.Welcome == nil || ev.Welcome.User != "bo" || ev.Welcome.MaxBody == 0 || ev.At.IsZero() {
		t.Fatalf("first session: %+v", ev)
	}

	ana := nodetest.Dial(t, n, "ana", "web", nil)
	for range 3 {
		send(t, ana, "x", "bo")
	}
	for range 3 {
		nextMessage(t, bo)
	}
	ana.Close()
	nodetest.Stop(t, n) // every session is told SHUTTING_DOWN
	ev = rec.expect(t, client.SessionDown)
	var pe *client.Error
	if ev.Session != 1 || !errors.As(ev.Err, &pe) || pe.Code != pb.Code_SHUTTING_DOWN || !pe.Fatal || pe.Detail == "" {
		t.Fatalf("end of the first session: %+v (err %v), want the server's fatal SHUTTING_DOWN", ev, ev.Err)
	}

	n = nodetest.Start(t, cfg)
	for {
		ev = rec.next(t)
		if ev.Kind == client.SessionDialFailed { // while the server was down
			continue
		}
		break
	}
	if ev.Kind != client.SessionUp || ev.Session != 2 || !ev.Reconnect || ev.Cursor == nil || *ev.Cursor != 3 ||
		ev.ResumeFrom != 4 || ev.Head != 3 {
		t.Fatalf("reconnect: %+v (cursor %v), want session 2 resuming after 3", ev, ev.Cursor)
	}

	bo.Close()
	if ev := rec.expect(t, client.SessionDown); ev.Session != 2 || !errors.Is(ev.Err, client.ErrClosed) {
		t.Fatalf("end of the second session: %+v", ev)
	}
	if ev := rec.expect(t, client.SessionClosed); !errors.Is(ev.Err, client.ErrClosed) {
		t.Fatalf("last event: %+v", ev)
	}
	select {
	case <-bo.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the last event")
	}
	for _, ev := range rec.evs {
		if ev.Dropped != 0 {
			t.Fatalf("event dropped: %+v", ev)
		}
	}
}

// A NOT_OWNER redirect is an event: who answered and where the client goes.
func TestSessionEventsShowRedirects(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, "bo")
	owner := n.SocketAddr()
	via := redirector(t, func() string { return owner })
	rec := newRecorder()
	bo, err := client.Dial(context.Background(), client.Config{Addr: via, Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone", OnSession: rec.on})
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	ev := rec.expect(t, client.SessionRedirect)
	var pe *client.Error
	if ev.Addr != via || ev.Redirect != owner || !errors.As(ev.Err, &pe) || pe.Code != pb.Code_NOT_OWNER {
		t.Fatalf("redirect event %+v", ev)
	}
	if ev := rec.expect(t, client.SessionUp); ev.Addr != owner {
		t.Fatalf("session on %s, want the owner %s", ev.Addr, owner)
	}
}

// flappingServer answers every HELLO with a WELCOME and hangs up at once:
// each connection makes a SessionUp and a SessionDown.
func flappingServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			nc.SetDeadline(time.Now().Add(5 * time.Second))
			var hdr [wire.HeaderLen]byte
			if _, err := io.ReadFull(nc, hdr[:]); err == nil {
				n, _, _ := wire.ParseHeader(hdr[:], 1<<20)
				io.ReadFull(nc, make([]byte, n-1))
				nc.Write(wire.Encode(pb.FrameType_WELCOME, &pb.Welcome{MaxFrame: 1 << 16, PingIntervalMs: 60000}))
			}
			nc.Close()
		}
	}()
	return ln.Addr().String()
}

// A callback that blocks holds up nothing: the client goes on
// reconnecting, and the events it could not take are counted and
// reported in the next one it gets, not dropped silently.
func TestSlowOnSessionHoldsNothingUp(t *testing.T) {
	addr := flappingServer(t)
	release := make(chan struct{})
	rec := newRecorder()
	first := true
	c, err := client.Dial(context.Background(), client.Config{Addr: addr, Token: "t", Device: "d",
		MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
		OnSession: func(ev client.SessionEvent) {
			if first {
				first = false
				<-release
			}
			rec.on(ev)
		}})
	if err != nil {
		t.Fatal(err)
	}
	nodetest.WaitFor(t, "events dropped while the callback blocks", 10*time.Second, func() bool { return c.Stats().EventsDropped > 0 })
	if c.Stats().Connects < 16 {
		t.Fatalf("%d connections while the callback blocked", c.Stats().Connects)
	}
	close(release)
	c.Close()
	<-c.Done()
	dropped := 0
	for _, ev := range rec.evs {
		dropped += ev.Dropped
	}
	if last := rec.evs[len(rec.evs)-1]; last.Kind != client.SessionClosed {
		t.Fatalf("last event %v, want closed", last.Kind)
	}
	if int64(dropped) != c.Stats().EventsDropped || dropped == 0 {
		t.Fatalf("events report %d dropped, stats %d", dropped, c.Stats().EventsDropped)
	}
}

// The callback may call Close: it does not wait for the callback.
func TestOnSessionMayClose(t *testing.T) {
	addr := flappingServer(t)
	var c *client.Client
	ready := make(chan struct{})
	c, err := client.Dial(context.Background(), client.Config{Addr: addr, Token: "t", Device: "d", MinBackoff: time.Millisecond,
		OnSession: func(ev client.SessionEvent) {
			<-ready
			if ev.Kind == client.SessionDown {
				c.Close()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	close(ready)
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Close from OnSession deadlocked")
	}
	if !errors.Is(c.Err(), client.ErrClosed) {
		t.Fatalf("err %v", c.Err())
	}
}
