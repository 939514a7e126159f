package socket_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// startTLS starts a node with a TLS socket listener and bodies up to 64
// KiB (so that one frame spans several TLS records); it returns the node
// and a dialer of raw protocol connections over TLS.
func startTLS(t *testing.T) (*node.Node, func() *raw) {
	t.Helper()
	cert, key, caFile := nodetest.TLSFiles(t)
	n := nodetest.Start(t, node.Config{TLSCert: cert, TLSKey: key, TLSSocketAddr: "127.0.0.1:0", MaxBody: 64 << 10})
	nodetest.AddUsers(t, n, "ana", "bo")
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	return n, func() *raw {
		t.Helper()
		nc, err := tls.Dial("tcp", n.TLSSocketAddr(), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return &raw{t, nc}
	}
}

// The TLS port reads frames out of TLS records however they fall: a frame
// larger than a record (16 KiB of plaintext), many frames in one record,
// and a frame cut into many records of a few bytes each (the client
// writes each piece on its own). Every message is acknowledged and
// reaches its recipient whole, in order. The server decrypts on netpoll's
// event loop, one record at a time (tls.go), so this is what proves it
// never waits on a record it has already read.
func TestTLSFramesAcrossRecords(t *testing.T) {
	n, dial := startTLS(t)
	ana, bo := dial(), dial()
	ana.hello(nodetest.Token(t, n, "ana", "laptop"), "laptop")
	bo.hello(nodetest.Token(t, n, "bo", "phone"), "phone")

	var bodies [][]byte
	submit := func(ref uint64, body []byte) []byte {
		bodies = append(bodies, body)
		return wire.Encode(pb.FrameType_SUBMIT, &pb.Submit{Ref: ref, To: []string{"bo"}, Kind: pb.Kind_DATA, Body: body})
	}
	expectAcks := func(from, to uint64) {
		t.Helper()
		for ref := from; ref <= to; ref++ {
			if a := ana.expect(&pb.SubmitAck{}).(*pb.SubmitAck); a.Ref != ref {
				t.Fatalf("ack for ref %d, want %d", a.Ref, ref)
			}
		}
	}

	// One frame over three records.
	big := bytes.Repeat([]byte("0123456789abcdef"), 40<<10/16)
	ana.write(submit(1, big))
	expectAcks(1, 1)

	// Fifty frames in one record.
	var many []byte
	for i := range 50 {
		many = append(many, submit(uint64(2+i), []byte(fmt.Sprintf("small %d", i)))...)
	}
	ana.write(many)
	expectAcks(2, 51)

	// A frame in pieces of 7 bytes, each its own record; then a frame
	// whose header ends one record and whose body is the next.
	f := submit(52, bytes.Repeat([]byte{'x'}, 1000))
	for len(f) > 0 {
		k := min(7, len(f))
		ana.write(f[:k])
		f = f[k:]
	}
	expectAcks(52, 52)
	f = submit(53, []byte("header, then body"))
	ana.write(f[:wire.HeaderLen])
	ana.write(f[wire.HeaderLen:])
	expectAcks(53, 53)

	for i, want := range bodies {
		d := bo.expect(&pb.Deliver{}).(*pb.Deliver)
		if d.Seq != uint64(i+1) || !bytes.Equal(d.Body, want) {
			t.Fatalf("bo's entry %d: seq %d, %d bytes, want %d bytes", i+1, d.Seq, len(d.Body), len(want))
		}
	}

	// A malformed frame still gets its precise error over TLS.
	ana.write([]byte{0xff, 0xff, 0xff, 0xff, byte(pb.FrameType_SUBMIT)})
	ana.expectFatal(pb.Code_FRAME_TOO_LARGE)
}

// An idle TLS connection holds no goroutine: the TLS port runs on
// netpoll's event loop like the plain one (before, each TLS connection
// kept a goroutine blocked in its read, and its stack).
func TestIdleTLSConnectionsHoldNoGoroutine(t *testing.T) {
	n, dial := startTLS(t)
	const conns = 200
	// Warm up netpoll's worker pool and the client side, then count.
	warm := dial()
	warm.hello(nodetest.Token(t, n, "ana", "warm"), "warm")
	before := runtime.NumGoroutine()
	for i := range conns {
		r := dial()
		dev := fmt.Sprintf("d%d", i)
		r.hello(nodetest.Token(t, n, "ana", dev), dev)
	}
	// The handlers that served the HELLOs go back to netpoll's pool and
	// end when idle; what stays must not grow with the connections.
	var now int
	nodetest.WaitFor(t, "goroutines to settle", 10*time.Second, func() bool {
		now = runtime.NumGoroutine()
		return now-before < conns/4
	})
	t.Logf("%d idle TLS connections: goroutines %d -> %d", conns, before, now)
}
