package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// IngestConfig sizes the ingest scenario.
type IngestConfig struct {
	Bin, Tmp string
	// Against is a second dingd binary measured after Bin in the same
	// run, beside it in the table (dingbench --against); empty means none.
	Against     string
	Conns       int           // connections, each a user sending to the next one
	Payload     int           // body bytes; at least 8 (the submit time goes in the first 8)
	Warmup, Run time.Duration // each measured window follows its warm-up
	Baseline    int           // baseline goroutines
	// Raw drives the connections with hand-written frames instead of the Go
	// client library: the same protocol and the same server work (client
	// message ids, acks every 64 entries), less load-generator CPU on a
	// machine that the generator shares with the server.
	Raw bool
	// Rate, if set, runs the open loop alone, offering Rate submits/s
	// across the connections; zero means a closed loop to find the peak
	// acknowledged rate, then an open loop at half of it.
	Rate float64
	// TLS runs the closed loop against one dingd with its connections
	// plain, then against another with them over TLS (--tls-listen), in
	// the same run (IngestTLS).
	TLS bool
	// WS is TLS's counterpart for the WebSocket gateway: plain, then
	// through another dingd's --ws listener (the Go client's WebSocket
	// dialer; not with Raw).
	WS bool
}

// drain is how long after its window an open loop waits for the answers
// to its last submits before it fails.
const drain = 30 * time.Second

// ingestRun is one run of the ingest load against a fresh dingd.
type ingestRun struct {
	w                        *window
	rate                     float64 // open loop: offered submits/s; zero for a closed loop
	ack, del                 Latencies
	batchOps, framesPerFlush float64 // means over the run; zero when not scraped
	flushes                  float64
	// replWait is, in cluster mode, the owner's batches' wait for the
	// standby over the run (ding_cluster_replication_wait_seconds).
	replWait *Histogram
}

// Ingest: Conns connected users each submit Payload-byte messages to the
// next user (who is online). First, for Run after Warmup, in a closed loop
// (one submit at a time per connection): the peak acknowledged rate and
// its latencies. Then, against a fresh dingd, in an open loop offering
// half that rate (or Rate) with latencies timed from each submit's
// scheduled time. Beside them: synced single-key Pebble writes from
// Baseline goroutines for Run, measured first. With Against, the same two
// loops then run against that dingd, the open loop at the same offered
// rate.
func Ingest(cfg IngestConfig) (Table, error) {
	cfg.Payload = max(cfg.Payload, 8)
	if cfg.TLS && cfg.WS {
		return Table{}, errors.New("ingest: --ws and --tls together are not a scenario yet (idle --ws --tls is)")
	}
	if cfg.TLS {
		return ingestTLS(cfg)
	}
	if cfg.WS {
		return ingestWS(cfg)
	}
	fmt.Fprintf(os.Stderr, "ingest: baseline, %d goroutines writing to Pebble for %v\n", cfg.Baseline, cfg.Run)
	baseRate, baseLat, err := PebbleSyncWrites(cfg.Tmp, cfg.Baseline, cfg.Payload, cfg.Run)
	if err != nil {
		return Table{}, err
	}
	driver := "the Go client library"
	if cfg.Raw {
		driver = "hand-written frames (no client library)"
	}
	openRate := cfg.Rate // for both binaries: set by the first
	measure := func(bin string) (Table, error) {
		var closed *ingestRun
		if cfg.Rate == 0 {
			fmt.Fprintf(os.Stderr, "ingest: %s, closed loop, %d connections\n", bin, cfg.Conns)
			r, err := runIngest(cfg, bin, 0)
			if err != nil {
				return Table{}, err
			}
			closed = r
			if openRate == 0 {
				openRate = rate(r.w.acked.Load(), cfg.Run) / 2
			}
		}
		fmt.Fprintf(os.Stderr, "ingest: %s, open loop at %.0f msgs/s\n", bin, openRate)
		open, err := runIngest(cfg, bin, openRate)
		if err != nil {
			return Table{}, err
		}
		return ingestTable(cfg, closed, open, baseRate, baseLat), nil
	}
	t, err := Compare(cfg.Bin, cfg.Against, "the baseline", measure)
	if err != nil {
		return Table{}, err
	}
	setup := fmt.Sprintf("%d connections on loopback driven by %s, each a user submitting %d-byte messages to the next user (online), against a fresh dingd for each loop; %v warm-up, %v measured. ",
		cfg.Conns, driver, cfg.Payload, cfg.Warmup, cfg.Run)
	if cfg.Rate == 0 {
		setup += "Closed loop: one submit at a time per connection, for the peak acknowledged rate. Open loop: submits scheduled evenly at a fixed offered rate, half this dingd's closed-loop peak"
	} else {
		setup += "Open loop only: submits scheduled evenly at a fixed offered rate (--rate)"
	}
	if cfg.Against != "" {
		setup += " (the same rate for the --against dingd)"
	}
	setup += fmt.Sprintf(", several in flight per connection (up to the server's limit), every latency timed from the submit's scheduled time (no coordinated omission); a submit written more than %v late is behind schedule. "+
		"Baseline: %d goroutines doing synced single-key writes (`Set(k, v, pebble.Sync)`) of the same payload into a fresh Pebble for %v.",
		lateAfter, cfg.Baseline, cfg.Run)
	t.Setup = setup + t.Setup
	return t, nil
}

// runIngest starts dingd from bin and drives the load: a closed loop, or
// an open loop offering rate submits/s.
func runIngest(cfg IngestConfig, bin string, rate float64) (*ingestRun, error) {
	srv, err := StartServer(bin, cfg.Tmp, cfg.Conns)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	return runIngestOn(cfg, srv, rate)
}

// ingestBeside runs the closed loop against a plain dingd, then against
// one start makes (what: how its connections come), in the same run.
func ingestBeside(cfg IngestConfig, flag string, start func(string, string, int, ...string) (*Server, error), what string) (plain, other *ingestRun, err error) {
	run := func(start func(string, string, int, ...string) (*Server, error), what string) (*ingestRun, error) {
		fmt.Fprintf(os.Stderr, "ingest %s: %s, closed loop, %d connections\n", flag, what, cfg.Conns)
		srv, err := start(cfg.Bin, cfg.Tmp, cfg.Conns)
		if err != nil {
			return nil, err
		}
		defer srv.Stop()
		return runIngestOn(cfg, srv, 0)
	}
	if plain, err = run(StartServer, "plain"); err != nil {
		return nil, nil, err
	}
	if other, err = run(start, what); err != nil {
		return nil, nil, err
	}
	return plain, other, nil
}

// ingestTLS is the closed loop against a plain dingd, then against one
// whose connections are over TLS, in the same run.
func ingestTLS(cfg IngestConfig) (Table, error) {
	plain, overTLS, err := ingestBeside(cfg, "--tls", StartServerTLS, "over TLS")
	if err != nil {
		return Table{}, err
	}
	pr, tr := rate(plain.w.acked.Load(), cfg.Run), rate(overTLS.w.acked.Load(), cfg.Run)
	driver := "the Go client library"
	if cfg.Raw {
		driver = "hand-written frames"
	}
	return Table{
		Scenario: "ingest --tls",
		Setup: fmt.Sprintf("Closed loop, %d connections through %s, each a user submitting %d-byte messages to the next (online); %v warm-up, %v measured; against one dingd with plain connections, then another with them over TLS (TLS 1.3, ECDSA P-256; dingd --tls-listen), in the same run.",
			cfg.Conns, driver, cfg.Payload, cfg.Warmup, cfg.Run),
		Rows: []Row{
			{"acknowledged msgs/s", fmt.Sprintf("%.0f over TLS", tr), fmt.Sprintf("%.0f plain", pr), ratio(tr, pr), "≥ 0.7× plain" + met(tr >= 0.7*pr)},
			{"submit→ack p50 / p99", overTLS.ack.ms(0.5) + " / " + overTLS.ack.ms(0.99), plain.ack.ms(0.5) + " / " + plain.ack.ms(0.99), "", ""},
			{"submit→delivered p50 / p99", overTLS.del.ms(0.5) + " / " + overTLS.del.ms(0.99), plain.del.ms(0.5) + " / " + plain.del.ms(0.99), "", ""},
		},
		Notes: append(runNotes("Plain", plain), runNotes("TLS", overTLS)...),
	}, nil
}

// ingestWS is the closed loop against a plain dingd, then against one
// whose connections come through its WebSocket listener, in the same run.
func ingestWS(cfg IngestConfig) (Table, error) {
	if cfg.Raw {
		return Table{}, fmt.Errorf("ingest --ws drives the Go client (its WebSocket dialer), not --raw")
	}
	plain, overWS, err := ingestBeside(cfg, "--ws", StartServerWS, "over WebSocket")
	if err != nil {
		return Table{}, err
	}
	pr, wr := rate(plain.w.acked.Load(), cfg.Run), rate(overWS.w.acked.Load(), cfg.Run)
	return Table{
		Scenario: "ingest --ws",
		Setup: fmt.Sprintf("Closed loop, %d connections through the Go client library, each a user submitting %d-byte messages to the next (online); %v warm-up, %v measured; against one dingd with plain socket connections, then another with them through its WebSocket listener (dingd --ws; the client's WebSocket dialer, one frame per binary message), in the same run.",
			cfg.Conns, cfg.Payload, cfg.Warmup, cfg.Run),
		Rows: []Row{
			{"acknowledged msgs/s", fmt.Sprintf("%.0f over WebSocket", wr), fmt.Sprintf("%.0f plain", pr), ratio(wr, pr), "≥ 0.8× plain" + met(wr >= 0.8*pr)},
			{"submit→ack p50 / p99", overWS.ack.ms(0.5) + " / " + overWS.ack.ms(0.99), plain.ack.ms(0.5) + " / " + plain.ack.ms(0.99), "", ""},
			{"submit→delivered p50 / p99", overWS.del.ms(0.5) + " / " + overWS.del.ms(0.99), plain.del.ms(0.5) + " / " + plain.del.ms(0.99), "", ""},
		},
		Notes: append(runNotes("Plain", plain), runNotes("WebSocket", overWS)...),
	}, nil
}

// runIngestOn drives the ingest load against a running dingd whose users
// u0 .. u<Conns-1> exist.
func runIngestOn(cfg IngestConfig, srv *Server, rate float64) (*ingestRun, error) {
	drive := driveClients
	if cfg.Raw {
		drive = driveRaw
	}
	start := time.Now()
	r := &ingestRun{w: newWindow(start, cfg.Warmup, cfg.Run, cfg.Conns), rate: rate}
	pace := func(i, inflight int, send sendFunc) error { return closedLoop(i, r.w, send) }
	if rate > 0 {
		s := schedule{start: start, conns: cfg.Conns, rate: rate}
		pace = func(i, inflight int, send sendFunc) error { return openLoop(i, s, r.w, inflight, wallClock{}, send) }
	}
	if err := drive(cfg, srv, r.w, pace); err != nil {
		return nil, err
	}
	r.ack, r.del = r.w.latencies()
	m, err := srv.Scrape()
	if err != nil {
		return nil, err
	}
	if n := m.Sum("ding_engine_commit_batch_ops_count"); n > 0 {
		r.batchOps = m.Sum("ding_engine_commit_batch_ops_sum") / n
	}
	if h, err := m.Histogram("ding_cluster_replication_wait_seconds"); err == nil {
		r.replWait = &h
	}
	if r.flushes = m.Sum("ding_socket_flush_frames_count"); r.flushes > 0 {
		r.framesPerFlush = m.Sum("ding_socket_flush_frames_sum") / r.flushes
	}
	return r, nil
}

// ingestTable renders one dingd's runs: closed (nil with --rate) and open.
func ingestTable(cfg IngestConfig, closed, open *ingestRun, baseRate float64, baseLat Latencies) Table {
	perWrite := func(p float64) string { return baseLat.ms(p) + " per write" }
	var rows []Row
	var notes []string
	if closed != nil {
		r := rate(closed.w.acked.Load(), cfg.Run)
		rows = append(rows,
			Row{"closed loop: acknowledged msgs/s (peak)", fmt.Sprintf("%.0f", r), fmt.Sprintf("%.0f writes/s", baseRate), ratio(r, baseRate), "≥ 1× the baseline" + met(r >= baseRate)},
			Row{"closed loop: submit→ack p50", closed.ack.ms(0.5), perWrite(0.5), "", ""},
			Row{"closed loop: submit→ack p99", closed.ack.ms(0.99), perWrite(0.99), "", ""},
			Row{"closed loop: submit→delivered p99", closed.del.ms(0.99), "", "", ""},
			Row{"closed loop: delivered in window", fmt.Sprint(closed.w.delivered.Load()), "", "", ""},
		)
		notes = append(notes, runNotes("Closed loop", closed)...)
	}
	w := open.w
	offered := rate(w.scheduled.Load(), cfg.Run)
	achieved := rate(w.acked.Load(), cfg.Run)
	p99 := open.ack.Quantile(0.99)
	goal := ""
	if closed != nil {
		goal = "≤ 10 ms at half the peak" + met(p99 <= 10*time.Millisecond)
	}
	behind := fmt.Sprintf("%d of %d (%.2f%%); latest %s late; %d of them waited for an in-flight slot",
		w.behind.Load(), w.scheduled.Load(), 100*float64(w.behind.Load())/float64(max(w.scheduled.Load(), 1)),
		ms(time.Duration(w.maxLag.Load())), w.slotWaits.Load())
	rows = append(rows,
		Row{"open loop: offered msgs/s", fmt.Sprintf("%.0f", offered), "", "", ""},
		Row{"open loop: acknowledged msgs/s", fmt.Sprintf("%.0f", achieved), "", "", ""},
		Row{"open loop: submit→ack p50", open.ack.ms(0.5), perWrite(0.5), "", ""},
		Row{"open loop: submit→ack p99", ms(p99), perWrite(0.99), "", goal},
		Row{"open loop: submit→ack p99.9", open.ack.ms(0.999), perWrite(0.999), "", ""},
		Row{"open loop: submit→delivered p50", open.del.ms(0.5), "", "", ""},
		Row{"open loop: submit→delivered p99", open.del.ms(0.99), "", "", ""},
		Row{"open loop: submit→delivered p99.9", open.del.ms(0.999), "", "", ""},
		Row{"open loop: submits behind schedule", behind, "", "", ""},
		Row{"open loop: delivered in window", fmt.Sprint(w.delivered.Load()), "", "", ""},
	)
	if b := w.behind.Load(); b > w.scheduled.Load()/100 && w.slotWaits.Load() < b/2 {
		notes = append(notes, fmt.Sprintf("Open loop: %d submits were written late without waiting for an in-flight slot: the load generator's pacer woke late (it shares the CPUs with dingd), so part of their latency is the generator's, not the server's.", b-w.slotWaits.Load()))
	}
	notes = append(notes, runNotes("Open loop", open)...)
	return Table{Scenario: "ingest", Rows: rows, Notes: notes}
}

func runNotes(loop string, r *ingestRun) []string {
	var notes []string
	if r.batchOps > 0 {
		notes = append(notes, fmt.Sprintf("%s: mean group-commit batch over the run %.0f operations (submits, acks, reads) per fsync.", loop, r.batchOps))
	}
	if r.flushes > 0 {
		notes = append(notes, fmt.Sprintf("%s: write coalescing %.2f frames per socket write on average (%.0f writes).", loop, r.framesPerFlush, r.flushes))
	}
	return notes
}

// pacer runs connection i's submits through send until the window ends;
// inflight is how many the server lets a connection have unanswered.
type pacer func(i, inflight int, send sendFunc) error

// runSenders paces every connection's submits at once: sendOf(i) gives
// connection i's send function and the in-flight limit its server
// announced. It returns when all have ended, with the first error.
func runSenders(conns int, pace pacer, sendOf func(i int) (sendFunc, int)) error {
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	for i := range conns {
		send, inflight := sendOf(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pace(i, inflight, send); err != nil {
				firstErr.CompareAndSwap(nil, &err)
			}
		}()
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		return fmt.Errorf("send: %w", *err)
	}
	return nil
}

// stamped returns a body of n bytes stamped with t (stampBody).
func stamped(n int, t time.Time) []byte {
	body := make([]byte, n)
	stampBody(body, t)
	return body
}

// next is the user connection i sends to.
func next(i, conns int) []string { return []string{"u" + strconv.Itoa((i+1)%conns)} }

// driveClients runs the load through the Go client library.
func driveClients(cfg IngestConfig, srv *Server, w *window, pace pacer) error {
	clients := make([]*client.Client, cfg.Conns)
	addr := srv.Sock
	var dial func(context.Context, string, string) (net.Conn, error)
	switch {
	case srv.TLS != nil:
		addr = srv.TLSSock
	case srv.WSSock != "":
		addr, dial = srv.WSSock, (&client.WebSocket{}).Dial
	}
	for i := range clients {
		c, err := client.Dial(context.Background(), client.Config{
			Addr: addr, TLS: srv.TLS, Token: srv.Token(fmt.Sprintf("u%d", i), "d"), Device: "d", Buffer: 4096, Dial: dial,
		})
		if err != nil {
			return fmt.Errorf("dial %d: %w", i, err)
		}
		clients[i] = c
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	var receivers sync.WaitGroup
	stop := make(chan struct{}) // closed 2s after the senders ended
	for i, c := range clients {
		receivers.Add(1)
		go func() { // acks every 64 entries
			defer receivers.Done()
			for n := 1; ; n++ {
				select {
				case e, ok := <-c.Entries():
					if !ok {
						return
					}
					if e.Message != nil {
						w.deliver(i, e.Message.Body, time.Now())
					}
					if n%64 == 0 {
						c.Ack(e.Seq)
					}
				case <-stop:
					return
				}
			}
		}()
	}
	ctx, cancel := context.WithDeadline(context.Background(), w.to.Add(drain))
	defer cancel()
	err := runSenders(cfg.Conns, pace, func(i int) (sendFunc, int) {
		c, to := clients[i], next(i, cfg.Conns)
		return func(_ uint64, stamp time.Time) (time.Time, error) {
			_, err := c.Send(ctx, to, stamped(cfg.Payload, stamp))
			return time.Now(), err
		}, int(c.Welcome().GetMaxInflight())
	})
	time.AfterFunc(2*time.Second, func() { close(stop) })
	receivers.Wait()
	return err
}

// driveRaw runs the load with hand-written frames: per connection a
// reader and the pacer's senders.
func driveRaw(cfg IngestConfig, srv *Server, w *window, pace pacer) error {
	conns := make([]*rawConn, cfg.Conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.nc.Close()
			}
		}
	}()
	for i := range conns {
		c, err := dialRaw(srv, fmt.Sprintf("u%d", i), "d")
		if err != nil {
			return err
		}
		conns[i] = c
	}
	var readers sync.WaitGroup
	var readErr atomic.Value
	for i, c := range conns {
		readers.Add(1)
		go func() { // acks every 64 entries
			defer readers.Done()
			n := 0
			err := c.readLoop(func(msg proto.Message, at time.Time) error {
				var seq uint64
				switch m := msg.(type) {
				case *pb.Deliver:
					seq = m.Seq
					w.deliver(i, m.Body, at)
				case *pb.Receipt:
					seq = m.Seq
				default:
					return nil
				}
				if n++; n%64 == 0 {
					return c.write(wire.Encode(pb.FrameType_ACK, &pb.Ack{Seq: seq}))
				}
				return nil
			})
			if err != nil {
				readErr.CompareAndSwap(nil, fmt.Errorf("conn %d: %w", i, err))
			}
		}()
	}
	ctx, cancel := context.WithDeadline(context.Background(), w.to.Add(drain))
	defer cancel()
	err := runSenders(cfg.Conns, pace, func(i int) (sendFunc, int) {
		c, to, prefix := conns[i], next(i, cfg.Conns), fmt.Sprintf("bench-%d-", i)
		return func(ref uint64, stamp time.Time) (time.Time, error) {
			a, err := c.send(ctx, &pb.Submit{
				Ref: ref, To: to, Kind: pb.Kind_TEXT, Body: stamped(cfg.Payload, stamp), ClientMsgId: prefix + strconv.FormatUint(ref, 36),
			})
			return a.at, err
		}, int(c.welcome.GetMaxInflight())
	})
	for _, c := range conns {
		c.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	}
	readers.Wait()
	if rerr, _ := readErr.Load().(error); rerr != nil {
		return errors.Join(err, rerr)
	}
	return err
}
