package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// IdleConfig sizes the idle scenario.
type IdleConfig struct {
	Bin, Tmp string
	// Against is a second dingd binary measured after Bin in the same
	// run, beside it in the table (dingbench --against); empty means none.
	Against string
	Conns   int // authenticated idle connections, one user each
	// Hold keeps the server and connections up this long after measuring
	// (to take a heap profile with --pprof); zero means none.
	Hold time.Duration
	// TLS also opens the connections over TLS (dingd --tls-listen), to a
	// second dingd in the same run: RSS per TLS connection beside the
	// plain one's.
	TLS bool
	// WS also opens the connections over the WebSocket gateway (dingd
	// --ws), to a second dingd in the same run: RSS per WebSocket
	// connection beside the plain one's.
	WS bool
	// Profiling serves dingd's pprof (with Hold, for a heap profile).
	Profiling Profiling
}

// Idle opens Conns connections, each completing the handshake as its own
// user, then leaves them idle and reports dingd's RSS growth per connection.
// The baseline is the same server's RSS with the users created and no
// connection open (each binary's own, with Against: its row "server RSS,
// no connection").
func Idle(cfg IdleConfig) (Table, error) {
	if cfg.WS {
		return idleWS(cfg)
	}
	if cfg.TLS {
		return idleTLS(cfg)
	}
	t, err := Compare(cfg.Bin, cfg.Against, "", func(bin string) (Table, error) {
		r, err := idleOnce(cfg, bin, viaPlain)
		return r.Table, err
	})
	if err != nil {
		return Table{}, err
	}
	t.Scenario = "idle"
	setup := fmt.Sprintf("%d authenticated idle connections over loopback (HELLO/WELCOME done, one user each), load generator in its own process. Baseline: the same dingd's RSS with the %d users created and no connection.",
		cfg.Conns, cfg.Conns)
	if cfg.Against != "" {
		setup += " The baseline column is this dingd's; the --against dingd's own is in the row \"server RSS, no connection\"."
	}
	t.Setup = setup + t.Setup
	return t, nil
}

// idleTLS measures RSS per connection on a plain dingd, then on one with
// TLS (its connections over --tls-listen), in the same run.
func idleTLS(cfg IdleConfig) (Table, error) {
	plain, err := idleOnce(cfg, cfg.Bin, viaPlain)
	if err != nil {
		return Table{}, err
	}
	overTLS, err := idleOnce(cfg, cfg.Bin, viaTLS)
	if err != nil {
		return Table{}, err
	}
	pp, tp := plain.perConn, overTLS.perConn
	return Table{
		Scenario: "idle --tls",
		Setup:    fmt.Sprintf("%d authenticated idle connections over loopback to one dingd, then as many over TLS (TLS 1.3, ECDSA P-256 certificate; dingd --tls-listen, crypto/tls over netpoll, on the event loop) to another, in the same run; RSS growth per connection against each dingd's own RSS with the users created and no connection.", cfg.Conns),
		Rows: []Row{
			{"server RSS per connection", fmt.Sprintf("%.2f KiB over TLS", tp/1024), fmt.Sprintf("%.2f KiB plain", pp/1024), ratio(tp, pp), "≤ 2× plain" + met(tp <= 2*pp)},
			{"server RSS, no connection", fmt.Sprintf("%.1f MiB", float64(overTLS.before)/(1<<20)), fmt.Sprintf("%.1f MiB", float64(plain.before)/(1<<20)), "", ""},
			{"connections the server counted", fmt.Sprintf("%.0f", overTLS.open), fmt.Sprintf("%.0f", plain.open), "", ""},
		},
	}, nil
}

// idleWS measures RSS per connection on a plain dingd, then on one whose
// connections come through its WebSocket listener, in the same run.
func idleWS(cfg IdleConfig) (Table, error) {
	plain, err := idleOnce(cfg, cfg.Bin, viaPlain)
	if err != nil {
		return Table{}, err
	}
	v, scenario, label, what := viaWS, "idle --ws", "over WebSocket", "WebSocket listener (dingd --ws: gobwas/ws on netpoll's event loop; one frame per binary message)"
	if cfg.TLS {
		v, scenario, label, what = viaWSS, "idle --ws --tls", "over wss", "WebSocket listener over TLS (dingd --ws with --tls-cert: wss, crypto/tls on netpoll's event loop; TLS 1.3, ECDSA P-256)"
	}
	overWS, err := idleOnce(cfg, cfg.Bin, v)
	if err != nil {
		return Table{}, err
	}
	pp, wp := plain.perConn, overWS.perConn
	return Table{
		Scenario: scenario,
		Setup:    fmt.Sprintf("%d authenticated idle connections over loopback to one dingd's socket port, then as many to another's %s, in the same run; RSS growth per connection against each dingd's own RSS with the users created and no connection.", cfg.Conns, what),
		Rows: []Row{
			{"server RSS per connection", fmt.Sprintf("%.2f KiB %s", wp/1024, label), fmt.Sprintf("%.2f KiB plain", pp/1024), ratio(wp, pp), "≤ 12 KiB" + met(wp <= 12*1024)},
			{"server RSS, no connection", fmt.Sprintf("%.1f MiB", float64(overWS.before)/(1<<20)), fmt.Sprintf("%.1f MiB", float64(plain.before)/(1<<20)), "", ""},
			{"connections the server counted", fmt.Sprintf("%.0f", overWS.open), fmt.Sprintf("%.0f", plain.open), "", ""},
		},
	}, nil
}

// via is how the load generator reaches dingd.
type via int

const (
	viaPlain via = iota // the socket port
	viaTLS              // --tls-listen
	viaWS               // --ws
	viaWSS              // --ws with TLS
)

// idleRun is one idle measurement.
type idleRun struct {
	Table
	perConn      float64
	before, open float64
}

// idleOnce runs the scenario against a dingd from bin, through the
// socket port, --tls-listen or --ws.
func idleOnce(cfg IdleConfig, bin string, v via) (idleRun, error) {
	start := StartServer
	switch v {
	case viaTLS:
		start = StartServerTLS
	case viaWS:
		start = StartServerWS
	case viaWSS:
		start = StartServerWSS
	}
	srv, err := start(bin, cfg.Tmp, cfg.Conns, cfg.Profiling.dingdArgs()...)
	if err != nil {
		return idleRun{}, err
	}
	defer srv.Stop()
	time.Sleep(2 * time.Second) // let the server settle after the import
	before, err := srv.RSS()
	if err != nil {
		return idleRun{}, err
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
			var c net.Conn
			var err error
			switch tok := srv.Token(fmt.Sprintf("u%d", i), "d"); v {
			case viaTLS:
				c, _, err = handshakeTLS(srv.TLSSock, srv.TLS, tok, "d")
			case viaWS, viaWSS:
				c, _, err = handshakeWS(srv.WSSock, srv.TLS, tok, "d")
			default:
				c, _, err = handshake(srv.Sock, tok, "d")
			}
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
		return idleRun{}, err
	}
	open, _ := srv.Metric("ding_socket_connections")
	time.Sleep(3 * time.Second) // idle: let pooled goroutines and buffers go
	after, err := srv.RSS()
	if err != nil {
		return idleRun{}, err
	}
	per := float64(after-before) / float64(cfg.Conns)
	if cfg.Hold > 0 {
		fmt.Printf("idle: holding %d connections for %v\n", cfg.Conns, cfg.Hold)
		time.Sleep(cfg.Hold)
	}
	return idleRun{perConn: per, before: float64(before), open: open, Table: Table{
		Rows: []Row{
			{"server RSS per connection", fmt.Sprintf("%.2f KiB", per/1024), "", "", "≤ 8 KiB"},
			{"server RSS", fmt.Sprintf("%.1f MiB", float64(after)/(1<<20)), fmt.Sprintf("%.1f MiB", float64(before)/(1<<20)), ratio(float64(after), float64(before)), ""},
			{"server RSS, no connection", fmt.Sprintf("%.1f MiB", float64(before)/(1<<20)), "", "", ""},
			{"connections the server counted", fmt.Sprintf("%.0f", open), "", "", ""},
		},
	}}, nil
}

// handshake opens an authenticated raw connection and returns it with the
// server's WELCOME.
func handshake(addr, token, device string) (net.Conn, *pb.Welcome, error) {
	return handshakeTLS(addr, nil, token, device)
}

// handshakeTLS is handshake over TLS with tc (plain when nil).
func handshakeTLS(addr string, tc *tls.Config, token, device string) (net.Conn, *pb.Welcome, error) {
	var c net.Conn
	var err error
	if tc != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, tc)
	} else {
		c, err = net.DialTimeout("tcp", addr, 10*time.Second)
	}
	if err != nil {
		return nil, nil, err
	}
	w, err := hello(c, &pb.Hello{Version: wire.Version, Token: token, Device: device})
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, w, nil
}

// handshakeWS is handshake over the WebSocket gateway at addr (--ws),
// through the Go client's WebSocket dialer (wss with tc).
func handshakeWS(addr string, tc *tls.Config, token, device string) (net.Conn, *pb.Welcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := (&client.WebSocket{TLS: tc}).Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	w, err := hello(c, &pb.Hello{Version: wire.Version, Token: token, Device: device})
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, w, nil
}

// hello sends h on c and reads the WELCOME that answers it, within 30s.
// refusedHello is a HELLO answered with an ERROR (hello's error).
type refusedHello struct{ e *pb.Error }

func (r *refusedHello) Error() string {
	return fmt.Sprintf("HELLO refused: %v: %s", r.e.Code, r.e.Detail)
}

func hello(c net.Conn, h *pb.Hello) (*pb.Welcome, error) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(wire.Encode(pb.FrameType_HELLO, h)); err != nil {
		return nil, err
	}
	msg, err := readFrame(c, 1<<20)
	if err != nil {
		return nil, err
	}
	if e, ok := msg.(*pb.Error); ok {
		return nil, &refusedHello{e}
	}
	w, ok := msg.(*pb.Welcome)
	if !ok {
		return nil, fmt.Errorf("handshake answered %T", msg)
	}
	c.SetDeadline(time.Time{})
	return w, nil
}
