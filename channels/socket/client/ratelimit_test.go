package client_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
	"github.com/dingmq/ding/internal/ratelimit"
)

// TestReconnectWaitsOutALockout: a client whose address gets locked out
// (another program there failed to authenticate) and whose connection
// drops is refused once with RATE_LIMITED, then waits out the
// retry_after the server gave, with a backoff of a millisecond, instead
// of hammering the port; and it is back once the lockout ends.
func TestReconnectWaitsOutALockout(t *testing.T) {
	const lockout = 400 * time.Millisecond
	n := nodetest.Start(t, node.Config{Limits: ratelimit.Config{
		AuthFailures: ratelimit.Rate{N: 1, Per: time.Minute}, AuthLockout: lockout,
	}})
	nodetest.AddUsers(t, n, "ana")
	var mu sync.Mutex
	var conn net.Conn       // the client's current connection; guarded by mu
	var refused []time.Time // the attempts refused with RATE_LIMITED; guarded by mu
	up := make(chan struct{}, 4)
	var d net.Dialer
	c, err := client.Dial(context.Background(), client.Config{
		Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "ana", "phone"), Device: "phone",
		MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := d.DialContext(ctx, network, addr)
			mu.Lock()
			conn = nc
			mu.Unlock()
			return nc, err
		},
		OnSession: func(ev client.SessionEvent) {
			switch {
			case ev.Kind == client.SessionUp:
				up <- struct{}{}
			case ev.Kind == client.SessionDialFailed && errors.Is(ev.Err, client.ErrRateLimited):
				mu.Lock()
				refused = append(refused, ev.At)
				mu.Unlock()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-up
	// Another program on the same address fails once: locked out.
	var pe *client.Error
	if _, err := client.Dial(context.Background(), client.Config{Addr: n.SocketAddr(), Token: "forged", Device: "phone"}); !errors.As(err, &pe) || pe.Code != pb.Code_BAD_TOKEN {
		t.Fatalf("forged HELLO: %v", err)
	}
	mu.Lock()
	conn.Close() // the client's connection drops: it reconnects, into the lockout
	mu.Unlock()
	select {
	case <-up:
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not come back after the lockout")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refused) != 1 {
		t.Fatalf("%d attempts refused with RATE_LIMITED, want 1: the client did not wait out the retry_after", len(refused))
	}
}
