package bench

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// IdleConfig sizes the idle scenario.
type IdleConfig struct {
	Bin, Tmp string
	Conns    int // authenticated idle connections, one user each
	// Hold keeps the server and connections up this long after measuring
	// (to take a heap profile with --pprof); zero means none.
	Hold time.Duration
}

// Idle opens Conns connections, each completing the handshake as its own
// user, then leaves them idle and reports dingd's RSS growth per connection.
// The baseline is the same server's RSS with the users created and no
// connection open.
func Idle(cfg IdleConfig) (Table, error) {
	srv, err := StartServer(cfg.Bin, cfg.Tmp, cfg.Conns)
	if err != nil {
		return Table{}, err
	}
	defer srv.Stop()
	time.Sleep(2 * time.Second) // let the server settle after the import
	before, err := srv.RSS()
	if err != nil {
		return Table{}, err
	}
	conns := make([]net.Conn, cfg.Conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	// Handshake in parallel, a few hundred at a time.
	var wg sync.WaitGroup
	errs := make(chan error, cfg.Conns)
	sem := make(chan struct{}, 4*runtime.NumCPU()*8)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := handshake(srv.Sock, srv.Token(fmt.Sprintf("u%d", i), "d"), "d")
			if err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return Table{}, err
	}
	open, _ := srv.Metric("ding_socket_connections")
	time.Sleep(3 * time.Second) // idle: let pooled goroutines and buffers go
	after, err := srv.RSS()
	if err != nil {
		return Table{}, err
	}
	per := float64(after-before) / float64(cfg.Conns)
	if cfg.Hold > 0 {
		fmt.Printf("idle: holding %d connections for %v\n", cfg.Conns, cfg.Hold)
		time.Sleep(cfg.Hold)
	}
	return Table{
		Scenario: "idle",
		Setup: fmt.Sprintf("%d authenticated idle connections over loopback (HELLO/WELCOME done, one user each), load generator in its own process. Baseline: the same dingd's RSS with the %d users created and no connection.",
			cfg.Conns, cfg.Conns),
		Rows: []Row{
			{"server RSS per connection", fmt.Sprintf("%.2f KiB", per/1024), "", "", "≤ 8 KiB"},
			{"server RSS", fmt.Sprintf("%.1f MiB", float64(after)/(1<<20)), fmt.Sprintf("%.1f MiB", float64(before)/(1<<20)), ratio(float64(after), float64(before)), ""},
			{"connections the server counted", fmt.Sprintf("%.0f", open), "", "", ""},
		},
	}, nil
}

// handshake opens an authenticated raw connection.
func handshake(addr, token, device string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(wire.Encode(pb.FrameType_HELLO, &pb.Hello{Version: wire.Version, Token: token, Device: device})); err != nil {
		c.Close()
		return nil, err
	}
	var hdr [wire.HeaderLen]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		c.Close()
		return nil, err
	}
	n, ft, err := wire.ParseHeader(hdr[:], 1<<20)
	if err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, make([]byte, n-1)); err != nil {
		c.Close()
		return nil, err
	}
	if ft != pb.FrameType_WELCOME {
		c.Close()
		return nil, fmt.Errorf("handshake answered %v", ft)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
