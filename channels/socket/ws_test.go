package socket_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket"
	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// startWS is start with the WebSocket listener too.
func startWS(t *testing.T, sc socket.Config) *node.Node {
	n := nodetest.Start(t, node.Config{Socket: sc, MaxBody: 1024, WSAddr: "127.0.0.1:0"})
	nodetest.AddUsers(t, n, "ana", "bo", "cy")
	return n
}

// wsRaw is a hand-driven WebSocket connection to the gateway.
type wsRaw struct {
	t  *testing.T
	nc net.Conn
}

// dialWSRaw opens url (ws://HOST:PORT/ws) with an Origin header if origin
// is set; the upgrade's error, if any, is returned.
func dialWSRaw(t *testing.T, url, origin string, control func(_, _ string, rc syscall.RawConn) error) (*wsRaw, error) {
	t.Helper()
	d := ws.Dialer{Timeout: 5 * time.Second}
	if origin != "" {
		d.Header = ws.HandshakeHeaderHTTP(http.Header{"Origin": {origin}})
	}
	if control != nil {
		nd := net.Dialer{Control: control}
		d.NetDial = nd.DialContext
	}
	nc, br, _, err := d.Dial(context.Background(), url)
	if err != nil {
		return nil, err
	}
	if br != nil {
		t.Fatal("the server sent before the client's first frame")
	}
	t.Cleanup(func() { nc.Close() })
	return &wsRaw{t, nc}, nil
}

func mustDialWS(t *testing.T, url string) *wsRaw {
	t.Helper()
	r, err := dialWSRaw(t, url, "", nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return r
}

func (r *wsRaw) writeMessage(op ws.OpCode, b []byte) {
	r.t.Helper()
	if err := wsutil.WriteClientMessage(r.nc, op, b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *wsRaw) send(ft pb.FrameType, m proto.Message) {
	r.t.Helper()
	r.writeMessage(ws.OpBinary, wire.Encode(ft, m))
}

// read returns the next frame, or the close (wsutil.ClosedError).
func (r *wsRaw) read() (proto.Message, error) {
	r.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		msgs, err := wsutil.ReadServerMessage(r.nc, nil)
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.OpCode {
			case ws.OpBinary:
				n, ft, err := wire.ParseHeader(m.Payload, 1<<24)
				if err != nil {
					return nil, err
				}
				if 4+n != len(m.Payload) {
					return nil, fmt.Errorf("a message of %d bytes holds a frame of %d", len(m.Payload), 4+n)
				}
				return wire.Decode(ft, m.Payload[wire.HeaderLen:])
			case ws.OpClose:
				code, reason := ws.ParseCloseFrameData(m.Payload)
				return nil, wsutil.ClosedError{Code: code, Reason: reason}
			case ws.OpPong:
				return &pb.Pong{Nonce: uint64(len(m.Payload))}, nil // the pong's payload length, for TestWSPingPong
			default:
				return nil, fmt.Errorf("unexpected message %v", m.OpCode)
			}
		}
	}
}

func (r *wsRaw) expect(want proto.Message) proto.Message {
	r.t.Helper()
	for {
		m, err := r.read()
		if err != nil {
			r.t.Fatalf("waiting for %T: %v", want, err)
		}
		if proto.MessageName(m) == proto.MessageName(want) {
			return m
		}
	}
}

// expectFatal reads until an ERROR with code arrives, then expects the
// close frame with closeCode.
func (r *wsRaw) expectFatal(code pb.Code, closeCode ws.StatusCode) {
	r.t.Helper()
	e := r.expect(&pb.Error{}).(*pb.Error)
	if e.Code != code || !e.Fatal {
		r.t.Fatalf("error %v (fatal %v) %q, want fatal %v", e.Code, e.Fatal, e.Detail, code)
	}
	_, err := r.read()
	var closed wsutil.ClosedError
	if !errors.As(err, &closed) || closed.Code != closeCode {
		r.t.Fatalf("after fatal %v: %v, want a close frame with code %d", code, err, closeCode)
	}
}

func (r *wsRaw) hello(tok, device string) *pb.Welcome {
	r.t.Helper()
	r.send(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: tok, Device: device})
	return r.expect(&pb.Welcome{}).(*pb.Welcome)
}

// dialWSClient connects the Go client over the WebSocket gateway at addr
// (--ws or the HTTP port).
func dialWSClient(t *testing.T, n *node.Node, addr, user, device string, cursor *uint64) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), client.Config{
		Addr: addr, Token: nodetest.Token(t, n, user, device), Device: device, Cursor: cursor,
		Dial: (&client.WebSocket{}).Dial,
	})
	if err != nil {
		t.Fatalf("dial %s/%s over WebSocket: %v", user, device, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func nextEntry(t *testing.T, c *client.Client, what string) client.Entry {
	t.Helper()
	select {
	case e := <-c.Entries():
		return e
	case <-time.After(5 * time.Second):
		t.Fatalf("no entry: %s", what)
	}
	return client.Entry{}
}

// A WebSocket client and a TCP client talk both ways, and receipts flow,
// on the --ws listener and on /ws of the HTTP port alike.
func TestWSChatsWithSocketClient(t *testing.T) {
	n := startWS(t, socket.Config{})
	for _, tc := range []struct{ name, addr string }{{"ws-listener", n.WSAddr()}, {"http-port", n.HTTPAddr()}} {
		t.Run(tc.name, func(t *testing.T) {
			ana := dialWSClient(t, n, tc.addr, "ana", "web-"+tc.name, nil)
			bo := nodetest.Dial(t, n, "bo", "phone-"+tc.name, nil)
			res, err := ana.Send(context.Background(), []string{"bo"}, []byte("hello from a browser"))
			if err != nil {
				t.Fatal(err)
			}
			var got client.Entry
			for got.Message == nil || got.Message.ID != res.ID {
				got = nextEntry(t, bo, "ana's message at bo")
			}
			if string(got.Message.Body) != "hello from a browser" || got.Message.From != "ana" {
				t.Fatalf("bo got %q from %s", got.Message.Body, got.Message.From)
			}
			if err := bo.Read(context.Background(), res.ID); err != nil {
				t.Fatal(err)
			}
			for {
				e := nextEntry(t, ana, "bo's read receipt at ana")
				if e.Receipt != nil && e.Receipt.State == pb.State_READ_STATE && e.Receipt.User == "bo" {
					break
				}
			}
			back, err := bo.Send(context.Background(), []string{"ana"}, []byte("and back"))
			if err != nil {
				t.Fatal(err)
			}
			for {
				e := nextEntry(t, ana, "bo's answer at ana")
				if e.Message != nil && e.Message.ID == back.ID && string(e.Message.Body) == "and back" {
					break
				}
			}
		})
	}
}

// A WebSocket device that reconnects resumes from its cursor: it gets
// exactly what it missed, once, in order.
func TestWSResumeAfterReconnect(t *testing.T) {
	n := startWS(t, socket.Config{})
	ana := nodetest.Dial(t, n, "ana", "phone", nil)
	send := func(i int) {
		t.Helper()
		if _, err := ana.Send(context.Background(), []string{"bo"}, fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	bo := dialWSClient(t, n, n.WSAddr(), "bo", "web", new(uint64))
	for i := 1; i <= 5; i++ {
		send(i)
	}
	var last uint64
	for want := uint64(1); want <= 5; want++ {
		e := nextEntry(t, bo, "live entry")
		if e.Seq != want || string(e.Message.Body) != fmt.Sprintf("m%d", want) {
			t.Fatalf("got seq %d %q, want %d", e.Seq, e.Message.Body, want)
		}
		last = e.Seq
	}
	bo.Ack(3) // processed 1..3; 4 and 5 must come again
	nodetest.WaitFor(t, "the ack to be stored", 5*time.Second, func() bool {
		c, ok, _ := n.Engine().Cursor("bo", "web")
		return ok && c == 3
	})
	bo.Close()
	nodetest.WaitFor(t, "bo to be offline", 5*time.Second, func() bool { return !n.Hub().Online("bo") })
	nodetest.WaitFor(t, "no WebSocket connection left", 5*time.Second, func() bool { return wsConnections(t, n) == 0 })
	for i := 6; i <= 10; i++ {
		send(i)
	}
	if last != 5 {
		t.Fatalf("last %d", last)
	}
	bo2 := dialWSClient(t, n, n.WSAddr(), "bo", "web", nil) // the stored cursor: 3
	for want := uint64(4); want <= 10; want++ {
		e := nextEntry(t, bo2, "resumed entry")
		if e.Seq != want || string(e.Message.Body) != fmt.Sprintf("m%d", want) {
			t.Fatalf("got seq %d %q, want %d", e.Seq, e.Message.Body, want)
		}
	}
	select {
	case e := <-bo2.Entries():
		t.Fatalf("an entry past the last: %d", e.Seq)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestWSOriginPolicy(t *testing.T) {
	n := startWS(t, socket.Config{WSOrigins: []string{"https://app.example.com"}})
	for _, tc := range []struct {
		name, origin string
		ok           bool
	}{
		{"no origin (not a browser)", "", true},
		{"same origin", "http://HOST", true},
		{"allowed", "https://app.example.com", true},
		{"forged", "https://evil.example.com", false},
		{"same host, other port", "http://127.0.0.1:1", false},
	} {
		for _, ep := range []struct{ name, addr string }{{"ws-listener", n.WSAddr()}, {"http-port", n.HTTPAddr()}} {
			t.Run(tc.name+"/"+ep.name, func(t *testing.T) {
				origin := tc.origin
				if origin == "http://HOST" {
					origin = "http://" + ep.addr
				}
				r, err := dialWSRaw(t, "ws://"+ep.addr+"/ws", origin, nil)
				if !tc.ok {
					var rej ws.StatusError
					if !errors.As(err, &rej) || int(rej) != http.StatusForbidden {
						t.Fatalf("upgrade: %v, want 403", err)
					}
					return
				}
				if err != nil {
					t.Fatalf("upgrade: %v", err)
				}
				r.hello(nodetest.Token(t, n, "cy", "d-"+ep.name), "d-"+ep.name)
			})
		}
	}
}

// Bad input gets the socket's precise error, then a close frame with the
// code PROTOCOL.md names, and a bystander on the same node is unaffected.
func TestWSBadInput(t *testing.T) {
	n := startWS(t, socket.Config{})
	bystander := nodetest.Dial(t, n, "cy", "phone", nil)
	ana := nodetest.Dial(t, n, "ana", "phone", nil)
	maxFrame := 1024 + 4<<10
	for _, tc := range []struct {
		name      string
		hello     bool // HELLO first
		op        ws.OpCode
		msg       []byte
		code      pb.Code
		closeCode ws.StatusCode
	}{
		{"text message", true, ws.OpText, []byte(`{"hello":1}`), pb.Code_BAD_FRAME, 1003},
		{"malformed protobuf", true, ws.OpBinary, append([]byte{0, 0, 0, 4, byte(pb.FrameType_SUBMIT)}, 0xff, 0xff, 0xff), pb.Code_BAD_FRAME, 4001},
		{"oversized message", true, ws.OpBinary, wire.Encode(pb.FrameType_SUBMIT, &pb.Submit{To: []string{"bo"}, Body: make([]byte, maxFrame)}), pb.Code_FRAME_TOO_LARGE, 1009},
		{"two frames in one message", true, ws.OpBinary, append(wire.Encode(pb.FrameType_PING, &pb.Ping{Nonce: 1}), wire.Encode(pb.FrameType_PING, &pb.Ping{Nonce: 2})...), pb.Code_BAD_FRAME, 4001},
		{"no HELLO first", false, ws.OpBinary, wire.Encode(pb.FrameType_PING, &pb.Ping{Nonce: 1}), pb.Code_HANDSHAKE_REQUIRED, 4005},
		{"bad token", false, ws.OpBinary, wire.Encode(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: "forged", Device: "web"}), pb.Code_BAD_TOKEN, 4007},
	} {
		for _, ep := range []struct{ name, addr string }{{"ws-listener", n.WSAddr()}, {"http-port", n.HTTPAddr()}} {
			t.Run(tc.name+"/"+ep.name, func(t *testing.T) {
				r := mustDialWS(t, "ws://"+ep.addr+"/ws")
				if tc.hello {
					r.hello(nodetest.Token(t, n, "bo", "web"), "web")
				}
				r.writeMessage(tc.op, tc.msg)
				r.expectFatal(tc.code, tc.closeCode)
				// The bystander still sends and receives.
				res, err := ana.Send(context.Background(), []string{"cy"}, []byte(tc.name))
				if err != nil {
					t.Fatal(err)
				}
				for {
					e := nextEntry(t, bystander, "the bystander's message")
					if e.Message != nil && e.Message.ID == res.ID {
						break
					}
				}
			})
		}
	}
}

func TestWSPingPong(t *testing.T) {
	n := startWS(t, socket.Config{})
	r := mustDialWS(t, "ws://"+n.WSAddr()+"/ws")
	r.hello(nodetest.Token(t, n, "bo", "web"), "web")
	r.writeMessage(ws.OpPing, []byte("abc"))
	if p, ok := r.expect(&pb.Pong{}).(*pb.Pong); !ok || p.Nonce != 3 {
		t.Fatalf("got %v, want a pong with the ping's 3 bytes", p)
	}
	// The protocol's own PING works as on the socket.
	r.send(pb.FrameType_PING, &pb.Ping{Nonce: 42})
	if p := r.expect(&pb.Pong{}).(*pb.Pong); p.Nonce != 42 {
		t.Fatalf("PONG nonce %d", p.Nonce)
	}
}

// A WebSocket client that stops reading is cut as a slow consumer with
// the socket's error; another WebSocket client goes on.
func TestWSSlowConsumerIsCut(t *testing.T) {
	for _, ep := range []string{"ws-listener", "http-port"} {
		t.Run(ep, func(t *testing.T) { testWSSlowConsumer(t, ep == "http-port") })
	}
}

func testWSSlowConsumer(t *testing.T, httpPort bool) {
	n := startWS(t, socket.Config{MaxPending: 64 << 10})
	addr := n.WSAddr()
	if httpPort {
		addr = n.HTTPAddr()
	}
	small := func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}
	slow, err := dialWSRaw(t, "ws://"+addr+"/ws", "", small)
	if err != nil {
		t.Fatal(err)
	}
	slow.hello(nodetest.Token(t, n, "bo", "web"), "web")
	other := dialWSClient(t, n, addr, "cy", "web", nil)
	ana := nodetest.Dial(t, n, "ana", "phone", nil)
	var sent atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n.Hub().Online("bo") && sent.Load() < 100000 {
				if _, err := ana.Send(context.Background(), []string{"bo"}, make([]byte, 1000)); err != nil {
					t.Error(err)
					return
				}
				sent.Add(1)
			}
		}()
	}
	wg.Wait()
	if n.Hub().Online("bo") {
		t.Fatal("never disconnected")
	}
	// Reading again within the close grace lets the server finish its
	// write: the last frame is SLOW_CONSUMER, then the close (4017).
	var last proto.Message
	var end error
	for {
		m, err := slow.read()
		if err != nil {
			end = err
			break
		}
		last = m
	}
	if e, ok := last.(*pb.Error); !ok || e.Code != pb.Code_SLOW_CONSUMER || !e.Fatal {
		t.Fatalf("last frame %v, want fatal SLOW_CONSUMER", last)
	}
	var closed wsutil.ClosedError
	if !errors.As(end, &closed) || closed.Code != socket.WSCloseErrorBase+ws.StatusCode(pb.Code_SLOW_CONSUMER) {
		t.Fatalf("end %v, want close %d", end, socket.WSCloseErrorBase+int(pb.Code_SLOW_CONSUMER))
	}
	res, err := ana.Send(context.Background(), []string{"cy"}, []byte("still here"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		e := nextEntry(t, other, "the other WebSocket client's message")
		if e.Message != nil && e.Message.ID == res.ID {
			break
		}
	}
}

// Shutdown tells WebSocket clients SHUTTING_DOWN and closes them (4020),
// on both endpoints.
func TestWSShutdownClosesConnections(t *testing.T) {
	n := startWS(t, socket.Config{})
	a := mustDialWS(t, "ws://"+n.WSAddr()+"/ws")
	a.hello(nodetest.Token(t, n, "bo", "web"), "web")
	b := mustDialWS(t, "ws://"+n.HTTPAddr()+"/ws")
	b.hello(nodetest.Token(t, n, "cy", "web"), "web")
	if got := wsConnections(t, n); got != 2 {
		t.Fatalf("ding_websocket_connections %v, want 2", got)
	}
	nodetest.Stop(t, n)
	a.expectFatal(pb.Code_SHUTTING_DOWN, socket.WSCloseErrorBase+ws.StatusCode(pb.Code_SHUTTING_DOWN))
	b.expectFatal(pb.Code_SHUTTING_DOWN, socket.WSCloseErrorBase+ws.StatusCode(pb.Code_SHUTTING_DOWN))
}

// wsConnections reads ding_websocket_connections from /metrics.
func wsConnections(t *testing.T, n *node.Node) float64 {
	t.Helper()
	resp, err := http.Get("http://" + n.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ding_websocket_connections "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatal("no ding_websocket_connections in /metrics")
	return 0
}

// Idle connections on the --ws listener hold no goroutine: the event
// loop reads them.
func TestIdleWSConnectionsHoldNoGoroutine(t *testing.T) {
	n := startWS(t, socket.Config{})
	nodetest.AddUsers(t, n, "dee")
	before := runtime.NumGoroutine()
	const conns = 200
	for i := range conns {
		r := mustDialWS(t, "ws://"+n.WSAddr()+"/ws")
		dev := fmt.Sprintf("web%d", i)
		r.send(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: nodetest.Token(t, n, "dee", dev), Device: dev})
		r.expect(&pb.Welcome{})
	}
	// The test's own side holds no goroutine either (plain net.Conns).
	nodetest.WaitFor(t, "the flushers to exit", 5*time.Second, func() bool { return runtime.NumGoroutine() < before+conns/10 })
}

// A WebSocket message may come in fragments.
func TestWSFragmentedMessage(t *testing.T) {
	n := startWS(t, socket.Config{})
	r := mustDialWS(t, "ws://"+n.WSAddr()+"/ws")
	hello := wire.Encode(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: nodetest.Token(t, n, "bo", "web"), Device: "web"})
	half := len(hello) / 2
	for i, part := range [][]byte{hello[:half], hello[half:]} {
		f := ws.NewFrame(ws.OpBinary, i == 1, bytes.Clone(part))
		if i == 1 {
			f.Header.OpCode = ws.OpContinuation
		}
		if err := ws.WriteFrame(r.nc, ws.MaskFrame(f)); err != nil {
			t.Fatal(err)
		}
	}
	r.expect(&pb.Welcome{})
}

// With TLS, /ws on the HTTPS port and the --ws listener are wss://: the
// Go client's WebSocket dialer with its own TLS configuration talks to a
// TCP client, big messages (several TLS records) go through whole both
// ways, a bad token gets its error and close code, and idle wss
// connections on --ws hold no goroutine.
func TestWSS(t *testing.T) {
	cert, key, caFile := nodetest.TLSFiles(t)
	n := nodetest.Start(t, node.Config{TLSCert: cert, TLSKey: key, MaxBody: 64 << 10, WSAddr: "127.0.0.1:0"})
	nodetest.AddUsers(t, n, "ana", "bo", "cy")
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	tlsCfg := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	for _, ep := range []struct{ name, addr string }{{"ws-listener", n.WSAddr()}, {"https-port", n.HTTPAddr()}} {
		t.Run(ep.name, func(t *testing.T) {
			ana, err := client.Dial(context.Background(), client.Config{
				Addr: ep.addr, Token: nodetest.Token(t, n, "ana", "web-"+ep.name), Device: "web-" + ep.name,
				Dial: (&client.WebSocket{TLS: tlsCfg}).Dial,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer ana.Close()
			body := bytes.Repeat([]byte("0123456789abcdef"), 3000) // 48,000 bytes
			for i := range 3 {
				res, err := ana.Send(context.Background(), []string{"bo"}, body)
				if err != nil {
					t.Fatal(err)
				}
				for {
					e := nextEntry(t, bo, "ana's big message")
					if e.Message != nil && e.Message.ID == res.ID {
						if !bytes.Equal(e.Message.Body, body) {
							t.Fatalf("body %d changed on the way", i)
						}
						break
					}
				}
				back, err := bo.Send(context.Background(), []string{"ana"}, body)
				if err != nil {
					t.Fatal(err)
				}
				for {
					e := nextEntry(t, ana, "bo's big message")
					if e.Message != nil && e.Message.ID == back.ID {
						if !bytes.Equal(e.Message.Body, body) {
							t.Fatalf("body %d changed on the way back", i)
						}
						break
					}
				}
			}
			// A bad token: BAD_TOKEN, then close 4007.
			d := ws.Dialer{TLSConfig: tlsCfg, Timeout: 5 * time.Second}
			nc, _, _, err := d.Dial(context.Background(), "wss://"+ep.addr+"/ws")
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			r := &wsRaw{t, nc}
			r.send(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: "forged", Device: "web"})
			r.expectFatal(pb.Code_BAD_TOKEN, socket.WSCloseErrorBase+ws.StatusCode(pb.Code_BAD_TOKEN))
		})
	}
	t.Run("idle-holds-no-goroutine", func(t *testing.T) {
		before := runtime.NumGoroutine()
		const conns = 100
		for i := range conns {
			d := ws.Dialer{TLSConfig: tlsCfg, Timeout: 5 * time.Second}
			nc, _, _, err := d.Dial(context.Background(), "wss://"+n.WSAddr()+"/ws")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { nc.Close() })
			r := &wsRaw{t, nc}
			dev := fmt.Sprintf("w%d", i)
			r.hello(nodetest.Token(t, n, "cy", dev), dev)
		}
		// The test's side holds no goroutine either (crypto/tls conns).
		nodetest.WaitFor(t, "the flushers to exit", 5*time.Second, func() bool { return runtime.NumGoroutine() < before+conns/10 })
	})
}

// WebSocket pings count as activity: a client that sends only them is
// not closed as idle, and one that sends nothing is, with IDLE_TIMEOUT
// and 4018.
func TestWSPingsKeepAlive(t *testing.T) {
	n := startWS(t, socket.Config{IdleTimeout: 600 * time.Millisecond})
	pinger := mustDialWS(t, "ws://"+n.WSAddr()+"/ws")
	pinger.hello(nodetest.Token(t, n, "bo", "web"), "web")
	silent := mustDialWS(t, "ws://"+n.WSAddr()+"/ws")
	silent.hello(nodetest.Token(t, n, "cy", "web"), "web")
	for deadline := time.Now().Add(1500 * time.Millisecond); time.Now().Before(deadline); {
		pinger.writeMessage(ws.OpPing, nil)
		pinger.expect(&pb.Pong{})
		time.Sleep(100 * time.Millisecond) // the pace of a keepalive, not a wait for a condition
	}
	pinger.send(pb.FrameType_PING, &pb.Ping{Nonce: 9})
	if p := pinger.expect(&pb.Pong{}).(*pb.Pong); p.Nonce != 9 {
		t.Fatalf("PONG nonce %d after the pings", p.Nonce)
	}
	silent.expectFatal(pb.Code_IDLE_TIMEOUT, socket.WSCloseErrorBase+ws.StatusCode(pb.Code_IDLE_TIMEOUT))
}

// FuzzWSInput writes arbitrary bytes after the upgrade: whatever they
// are, the server answers or closes, and another client on the same node
// is unaffected.
func FuzzWSInput(f *testing.F) {
	mask := func(op byte, fin bool, p []byte) []byte {
		b0 := op
		if fin {
			b0 |= 0x80
		}
		out := []byte{b0, 0x80 | byte(len(p)), 1, 2, 3, 4}
		start := len(out)
		out = append(out, p...)
		ws.Cipher(out[start:], [4]byte{1, 2, 3, 4}, 0)
		return out
	}
	ping := wire.Encode(pb.FrameType_PING, &pb.Ping{Nonce: 1})
	f.Add(mask(2, true, ping))
	f.Add(mask(1, true, []byte("text")))
	f.Add(append(mask(2, false, ping[:3]), mask(0, true, ping[3:])...))
	f.Add(mask(9, true, []byte("ping")))
	f.Add(mask(8, true, []byte{3, 232}))
	f.Add([]byte{0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4})
	f.Add([]byte{0x82, 0x05, 0, 0, 0, 1, 10}) // unmasked
	f.Add([]byte{})
	n := nodetest.Start(f, node.Config{MaxBody: 1024, WSAddr: "127.0.0.1:0"})
	nodetest.AddUsers(f, n, "bo")
	f.Fuzz(func(t *testing.T, in []byte) {
		r := mustDialWS(t, "ws://"+n.WSAddr()+"/ws")
		if _, err := r.nc.Write(in); err != nil {
			t.Fatal(err)
		}
		r.nc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		for {
			if _, err := wsutil.ReadServerMessage(r.nc, nil); err != nil {
				break // closed, or nothing more to say (the rest of a frame is awaited)
			}
		}
		r.nc.Close()
		ok := mustDialWS(t, "ws://"+n.WSAddr()+"/ws")
		ok.send(pb.FrameType_HELLO, &pb.Hello{Version: 1, Token: nodetest.Token(t, n, "bo", "web"), Device: "web"})
		ok.expect(&pb.Welcome{})
		ok.send(pb.FrameType_PING, &pb.Ping{Nonce: 5})
		ok.expect(&pb.Pong{})
	})
}

// A device that catches up over WebSocket gets each frame of its backlog
// in a message of its own, as PROTOCOL.md promises: the hub encodes a
// user's entries together (several frames back to back in one buffer),
// and the gateway must not put them in one WebSocket message (wsRaw.read
// fails on a message holding more than one frame).
func TestWSCatchUpSendsOneFramePerMessage(t *testing.T) {
	n := startWS(t, socket.Config{})
	ana := nodetest.Dial(t, n, "ana", "phone", nil)
	for i := range 20 {
		if _, err := ana.Send(context.Background(), []string{"bo"}, []byte(fmt.Sprintf("backlog %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, addr := range []string{n.WSAddr(), n.HTTPAddr()} {
		r := mustDialWS(t, "ws://"+addr+"/ws")
		r.hello(nodetest.Token(t, n, "bo", "web-"+addr), "web-"+addr)
		for i := range 20 {
			d := r.expect(&pb.Deliver{}).(*pb.Deliver)
			if got, want := string(d.GetBody()), fmt.Sprintf("backlog %d", i); got != want {
				t.Fatalf("%s: entry %d: %q, want %q", addr, i, got, want)
			}
		}
	}
}
