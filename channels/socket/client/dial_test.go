package client_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// proxy forwards TCP connections to a target, and can cut them all.
type proxy struct {
	ln       net.Listener
	target   string
	accepted atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn // guarded by mu
	wg       sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(func() { ln.Close(); p.cut(); p.wg.Wait() })
	return p
}

func (p *proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); io.Copy(out, in); out.Close() }()
		go func() { defer p.wg.Done(); io.Copy(in, out); in.Close() }()
	}
}

// cut closes every connection forwarded so far.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Config.Dial opens every connection: the first, and each reconnect. Here
// it routes an address that does not resolve through a proxy.
func TestDialHookOpensEveryConnection(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, "ana", "bo")
	p := startProxy(t, n.SocketAddr())
	var calls atomic.Int64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		calls.Add(1)
		if network != "tcp" || addr != "ding.invalid:7070" {
			return nil, errors.New("unexpected " + network + " " + addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, p.ln.Addr().String())
	}
	rec := newRecorder()
	bo, err := client.Dial(context.Background(), client.Config{Addr: "ding.invalid:7070", Dial: dial,
		Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone", OnSession: rec.on})
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	if calls.Load() != 1 || p.accepted.Load() != 1 {
		t.Fatalf("dial called %d times, proxy accepted %d, want 1 and 1", calls.Load(), p.accepted.Load())
	}
	rec.expect(t, client.SessionUp)
	ana := nodetest.Dial(t, n, "ana", "web", nil)
	res := send(t, ana, "through the proxy", "bo")
	if e := nextMessage(t, bo); e.Message.ID != res.ID {
		t.Fatalf("got %s, want %s", e.Message.ID, res.ID)
	}

	p.cut() // the transport fails under the client: it reconnects through the hook
	if ev := rec.expect(t, client.SessionDown); ev.Err == nil {
		t.Fatalf("session ended without an error: %+v", ev)
	}
	rec.expect(t, client.SessionUp)
	if calls.Load() != 2 || p.accepted.Load() != 2 {
		t.Fatalf("after the cut: dial called %d times, proxy accepted %d, want 2 and 2", calls.Load(), p.accepted.Load())
	}
	res = send(t, ana, "still through the proxy", "bo")
	if e := nextMessage(t, bo); e.Message.ID != res.ID {
		t.Fatalf("got %s, want %s", e.Message.ID, res.ID)
	}
}

// With Config.TLS, TLS runs over the connection Config.Dial returns: a
// proxy that only forwards bytes reaches the TLS port, and the server is
// verified against the name dialled.
func TestDialHookUnderTLS(t *testing.T) {
	cert, key, caFile := nodetest.TLSFiles(t)
	n := nodetest.Start(t, node.Config{TLSCert: cert, TLSKey: key, TLSSocketAddr: "127.0.0.1:0"})
	nodetest.AddUsers(t, n, "bo")
	p := startProxy(t, n.TLSSocketAddr())
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	var calls atomic.Int64
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		calls.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, p.ln.Addr().String())
	}
	// 127.0.0.1:1 is only a name here: the certificate is for 127.0.0.1.
	bo, err := client.Dial(context.Background(), client.Config{Addr: "127.0.0.1:1", Dial: dial, TLS: &tls.Config{RootCAs: roots},
		Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone", DialTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	bo.Close()
	if calls.Load() != 1 || p.accepted.Load() != 1 {
		t.Fatalf("dial called %d times, proxy accepted %d, want 1 and 1", calls.Load(), p.accepted.Load())
	}

	// The name dialled is verified: the certificate is not for localhost.
	_, err = client.Dial(context.Background(), client.Config{Addr: "localhost:1", Dial: dial, TLS: &tls.Config{RootCAs: roots},
		Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone", DialTimeout: 3 * time.Second})
	var ve *tls.CertificateVerificationError
	if !errors.As(err, &ve) {
		t.Fatalf("dial as localhost: %v, want a certificate verification error", err)
	}
}
