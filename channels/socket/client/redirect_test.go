package client_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket"
	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// redirector runs a socket.Redirector on a loopback port whose route is
// whatever *to holds when a HELLO arrives.
func redirector(t *testing.T, to func() string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &socket.Redirector{Route: func(context.Context, *pb.Hello) string { return to() }, HandshakeTimeout: time.Second}
	r.Serve(ln)
	t.Cleanup(func() { r.Close() })
	return ln.Addr().String()
}

// A client that reaches a node not serving it (a cluster's standby) is
// told where to go and follows: it works on the owner as if it had dialed
// it. A redirect to nowhere (a takeover in progress) is a NOT_OWNER error
// that Dial reports.
func TestClientFollowsNotOwnerRedirect(t *testing.T) {
	n := nodetest.Start(t, node.Config{DataDir: t.TempDir()})
	nodetest.AddUsers(t, n, "ana", "bo")
	owner := n.SocketAddr()
	via := redirector(t, func() string { return owner })

	ana, err := client.Dial(context.Background(), client.Config{Addr: via, Token: nodetest.Token(t, n, "ana", "phone"), Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	defer ana.Close()
	if got := ana.Stats().Redirects; got != 1 {
		t.Fatalf("redirects %d, want 1", got)
	}
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	res := send(t, ana, "redirected", "bo")
	if e := nextMessage(t, bo); e.Message.ID != res.ID {
		t.Fatalf("bo got %s, want %s", e.Message.ID, res.ID)
	}

	nowhere := redirector(t, func() string { return "" })
	_, err = client.Dial(context.Background(), client.Config{Addr: nowhere, Token: nodetest.Token(t, n, "ana", "tablet"), Device: "tablet"})
	var pe *client.Error
	if !errors.As(err, &pe) || pe.Code != pb.Code_NOT_OWNER || pe.Redirect != "" {
		t.Fatalf("dial through a redirector that knows no owner: %v, want NOT_OWNER without an address", err)
	}
}

// A client given several addresses dials past one that is down, and after
// its node goes away for good it finds the node serving it through the
// others (here: the restarted node behind a redirector), resuming its
// stream without losing or repeating an entry.
func TestClientTriesEveryAddress(t *testing.T) {
	dir := t.TempDir()
	sock := nodetest.FreeAddr(t)
	n := nodetest.Start(t, node.Config{DataDir: dir, SocketAddr: sock})
	nodetest.AddUsers(t, n, "ana", "bo")
	down := nodetest.FreeAddr(t) // nothing listens here
	var owner string
	via := redirector(t, func() string { return owner })

	bo, err := client.Dial(context.Background(), client.Config{Addr: down + "," + sock + "," + via,
		Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone", MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	ana := nodetest.Dial(t, n, "ana", "phone", nil)
	first := send(t, ana, "one", "bo")
	if e := nextMessage(t, bo); e.Message.ID != first.ID {
		t.Fatalf("got %s, want %s", e.Message.ID, first.ID)
	}
	ana.Close()
	nodetest.Stop(t, n)

	// The node comes back on another port, known only to the redirector.
	n = nodetest.Start(t, node.Config{DataDir: dir})
	owner = n.SocketAddr()
	ana = nodetest.Dial(t, n, "ana", "phone", nil)
	defer ana.Close()
	second := send(t, ana, "two", "bo")
	e := nextMessage(t, bo)
	if e.Message.ID != second.ID {
		t.Fatalf("after the move got %s, want %s (nothing repeated)", e.Message.ID, second.ID)
	}
	if bo.Stats().Redirects < 1 {
		t.Fatal("the client found the moved node without a redirect?")
	}
}

// The redirector answers bad input as the gateway does: a precise fatal
// error, and the connection closed.
func TestRedirectorRefusesBadInput(t *testing.T) {
	via := redirector(t, func() string { return "127.0.0.1:1" })
	huge := make([]byte, 5)
	binary.BigEndian.PutUint32(huge, 1<<20)
	huge[4] = byte(pb.FrameType_HELLO)
	for _, c := range []struct {
		name  string
		frame []byte
		want  pb.Code
	}{
		{"oversized", huge, pb.Code_FRAME_TOO_LARGE},
		{"not a hello", wire.Encode(pb.FrameType_PING, &pb.Ping{Nonce: 1}), pb.Code_HANDSHAKE_REQUIRED},
		{"garbage payload", []byte{0, 0, 0, 3, byte(pb.FrameType_HELLO), 0xff, 0xff}, pb.Code_BAD_FRAME},
		{"empty frame", []byte{0, 0, 0, 0, 0}, pb.Code_BAD_FRAME},
		{"wrong version", wire.Encode(pb.FrameType_HELLO, &pb.Hello{Version: 9, Token: "t", Device: "d"}), pb.Code_BAD_VERSION},
		{"hello", wire.Encode(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: "t", Device: "d"}), pb.Code_NOT_OWNER},
	} {
		t.Run(c.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", via)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := nc.Write(c.frame); err != nil {
				t.Fatal(err)
			}
			var hdr [wire.HeaderLen]byte
			if _, err := io.ReadFull(nc, hdr[:]); err != nil {
				t.Fatal(err)
			}
			n, ft, err := wire.ParseHeader(hdr[:], 1<<16)
			if err != nil || ft != pb.FrameType_ERROR {
				t.Fatalf("answer %v %v, want an ERROR", ft, err)
			}
			payload := make([]byte, n-1)
			if _, err := io.ReadFull(nc, payload); err != nil {
				t.Fatal(err)
			}
			m, err := wire.Decode(ft, payload)
			if err != nil {
				t.Fatal(err)
			}
			e := m.(*pb.Error)
			if e.Code != c.want || !e.Fatal {
				t.Fatalf("got %v fatal=%v, want fatal %v", e.Code, e.Fatal, c.want)
			}
			if c.want == pb.Code_NOT_OWNER && e.Redirect != "127.0.0.1:1" {
				t.Fatalf("redirect %q", e.Redirect)
			}
			if _, err := nc.Read(hdr[:1]); err != io.EOF {
				t.Fatalf("after the error: %v, want the connection closed", err)
			}
		})
	}
}

// Closing a redirector does not wait for a client that connected and sent
// nothing (the member closing it is about to serve on its port).
func TestRedirectorClosesAtOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &socket.Redirector{Route: func(context.Context, *pb.Hello) string { return "" }, HandshakeTimeout: time.Minute}
	r.Serve(ln)
	idle, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	// The connection is being answered once a byte from the client gets
	// read; a partial header makes sure of it.
	if _, err := idle.Write([]byte{0, 0}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for an idle client (its handshake timeout is a minute)")
	}
}
