// Package nodetest starts real Ding nodes for tests: a Pebble store in a
// temporary directory, the socket gateway and the admin API on 127.0.0.1
// with ephemeral ports.
package nodetest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/testport"
)

// Start starts a node in dir (a new temp dir when empty) and stops it at
// the end of the test. cfg's DataDir and addresses are filled in when empty.
func Start(tb testing.TB, cfg node.Config) *node.Node {
	tb.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = tb.TempDir()
	}
	if cfg.SocketAddr == "" {
		cfg.SocketAddr = "127.0.0.1:0"
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	n, err := node.Start(cfg)
	if err != nil {
		tb.Fatalf("start node: %v", err)
	}
	tb.Cleanup(func() { Stop(tb, n) })
	return n
}

// Stop shuts a node down (idempotent).
func Stop(tb testing.TB, n *node.Node) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		tb.Errorf("shutdown: %v", err)
	}
}

// AddUsers creates users with the given ids.
func AddUsers(tb testing.TB, n *node.Node, ids ...string) {
	tb.Helper()
	for _, id := range ids {
		if _, err := n.Directory().PutUser(fanout.User{ID: id, Name: id}); err != nil {
			tb.Fatal(err)
		}
	}
}

// Token mints a client token for user's device, valid for an hour.
func Token(tb testing.TB, n *node.Node, user, device string) string {
	tb.Helper()
	k, err := auth.LoadOrCreate(n.DataDir())
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := k.MintClient(user, device, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// WaitFor polls cond until it holds or the deadline passes.
func WaitFor(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// GoleakOptions are the goroutines a node leaves behind by design: netpoll's
// pollers and task pool and Pebble's cache release loop are process-wide
// and live as long as the process.
var GoleakOptions = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/cloudwego/netpoll.(*defaultPoll).Wait"),
	goleak.IgnoreAnyFunction("github.com/bytedance/gopkg/util/gopool.(*worker).run.func1"),
	goleak.IgnoreTopFunction("github.com/cockroachdb/pebble/v2/internal/cache.(*shard).releaseLoop"),
}

// FreeAddr returns a loopback address nothing listens on now, so that a
// node can be started (and restarted) on a known address; from below the
// ephemeral range, which outbound connections take from (testport).
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	return testport.Addr(tb)
}

// Dial connects the Go client as user's device (resuming after cursor when
// it is not nil) and closes it at the end of the test.
func Dial(tb testing.TB, n *node.Node, user, device string, cursor *uint64) *client.Client {
	tb.Helper()
	c, err := client.Dial(context.Background(), client.Config{
		Addr: n.SocketAddr(), Token: Token(tb, n, user, device), Device: device, Cursor: cursor,
	})
	if err != nil {
		tb.Fatalf("dial %s/%s: %v", user, device, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}
