package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// IngestConfig sizes the ingest scenario.
type IngestConfig struct {
	Bin, Tmp    string
	Conns       int           // connections, each a user sending to the next one
	Payload     int           // body bytes
	Warmup, Run time.Duration // measured window follows the warmup
	Baseline    int           // baseline goroutines
	// Raw drives the connections with hand-written frames instead of the Go
	// client library: the same protocol and the same server work (client
	// message ids, acks every 64 entries), less load-generator CPU on a
	// machine that the generator shares with the server.
	Raw bool
}

// window is what one ingest run measures, per connection.
type window struct {
	from, to         time.Time
	acked, delivered atomic.Int64
	ackLats, delLats []Latencies
}

func (w *window) ack(i int, t0 time.Time) {
	if t0.After(w.from) {
		w.ackLats[i] = append(w.ackLats[i], time.Since(t0))
		w.acked.Add(1)
	}
}

// deliver records a delivered body whose first 8 bytes are its send time.
func (w *window) deliver(i int, body []byte) {
	if len(body) < 8 {
		return
	}
	sent := time.Unix(0, int64(binary.BigEndian.Uint64(body)))
	if sent.After(w.from) && sent.Before(w.to) {
		w.delLats[i] = append(w.delLats[i], time.Since(sent))
		w.delivered.Add(1)
	}
}

// Ingest: Conns connected users each submit Payload-byte messages, one at a
// time, to the next user (who is online) for Warmup+Run. Reported over the
// Run window: acknowledged messages/s, submit→ack p50/p99 and
// submit→delivered p99, beside synced single-key Pebble writes from
// Baseline goroutines for the same time.
func Ingest(cfg IngestConfig) (Table, error) {
	srv, err := StartServer(cfg.Bin, cfg.Tmp, cfg.Conns)
	if err != nil {
		return Table{}, err
	}
	defer srv.Stop()
	drive, driver := driveClients, "the Go client library"
	if cfg.Raw {
		drive, driver = driveRaw, "hand-written frames (no client library)"
	}
	start := time.Now()
	w := &window{
		from: start.Add(cfg.Warmup), to: start.Add(cfg.Warmup + cfg.Run),
		ackLats: make([]Latencies, cfg.Conns), delLats: make([]Latencies, cfg.Conns),
	}
	if err := drive(cfg, srv, w); err != nil {
		return Table{}, err
	}
	var ack, del Latencies
	for i := range w.ackLats {
		ack.Merge(w.ackLats[i])
		del.Merge(w.delLats[i])
	}
	frames, _ := srv.Metric("ding_socket_flush_frames_sum")
	flushes, _ := srv.Metric("ding_socket_flush_frames_count")
	batch, _ := srv.Metric("ding_engine_commit_batch_ops_sum")
	batches, _ := srv.Metric("ding_engine_commit_batch_ops_count")
	dingRate := rate(w.acked.Load(), cfg.Run)

	baseRate, baseLat, err := PebbleSyncWrites(cfg.Tmp, cfg.Baseline, cfg.Payload, cfg.Run)
	if err != nil {
		return Table{}, err
	}
	t := Table{
		Scenario: "ingest",
		Setup: fmt.Sprintf("%d connections on loopback driven by %s, each a user submitting %d-byte messages one at a time to the next user (online); %v warm-up, %v measured. Baseline: %d goroutines doing synced single-key writes (`Set(k, v, pebble.Sync)`) of the same payload into a fresh Pebble for %v.",
			cfg.Conns, driver, cfg.Payload, cfg.Warmup, cfg.Run, cfg.Baseline, cfg.Run),
		Rows: []Row{
			{"acknowledged msgs/s", fmt.Sprintf("%.0f", dingRate), fmt.Sprintf("%.0f writes/s", baseRate), ratio(dingRate, baseRate), "≥ 3×"},
			{"submit→ack p50", ms(ack.Quantile(0.5)), ms(baseLat.Quantile(0.5)) + " per write", "", ""},
			{"submit→ack p99", ms(ack.Quantile(0.99)), ms(baseLat.Quantile(0.99)) + " per write", "", "< 10 ms"},
			{"submit→delivered p99", ms(del.Quantile(0.99)), "", "", ""},
			{"delivered in window", fmt.Sprint(w.delivered.Load()), "", "", ""},
		},
	}
	if batches > 0 {
		t.Notes = append(t.Notes, fmt.Sprintf("Mean group-commit batch over the run: %.0f operations (submits, acks, reads) per fsync.", batch/batches))
	}
	if flushes > 0 {
		t.Notes = append(t.Notes, fmt.Sprintf("Write coalescing: %.2f frames per socket write on average (%.0f writes).", frames/flushes, flushes))
	}
	return t, nil
}

// driveClients runs the load through the Go client library.
func driveClients(cfg IngestConfig, srv *Server, w *window) error {
	clients := make([]*client.Client, cfg.Conns)
	for i := range clients {
		c, err := client.Dial(context.Background(), client.Config{
			Addr: srv.Sock, Token: srv.Token(fmt.Sprintf("u%d", i), "d"), Device: "d", Buffer: 4096,
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
	var wg sync.WaitGroup
	var sendErr atomic.Value
	for i, c := range clients {
		to := []string{fmt.Sprintf("u%d", (i+1)%cfg.Conns)}
		wg.Add(2)
		go func() { // sender
			defer wg.Done()
			body := make([]byte, cfg.Payload)
			for t0 := time.Now(); t0.Before(w.to); t0 = time.Now() {
				binary.BigEndian.PutUint64(body, uint64(t0.UnixNano()))
				if _, err := c.Send(context.Background(), to, body); err != nil {
					sendErr.CompareAndSwap(nil, err)
					return
				}
				w.ack(i, t0)
			}
		}()
		go func() { // receiver: acks every 64 entries, stops 2s after the window
			defer wg.Done()
			stop := time.NewTimer(time.Until(w.to) + 2*time.Second)
			defer stop.Stop()
			for n := 1; ; n++ {
				select {
				case e, ok := <-c.Entries():
					if !ok {
						return
					}
					if e.Message != nil {
						w.deliver(i, e.Message.Body)
					}
					if n%64 == 0 {
						c.Ack(e.Seq)
					}
				case <-stop.C:
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := sendErr.Load().(error); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

// driveRaw runs the load with hand-written frames: per connection one
// sender (one submit in flight) and one reader.
func driveRaw(cfg IngestConfig, srv *Server, w *window) error {
	conns := make([]net.Conn, cfg.Conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range conns {
		c, err := handshake(srv.Sock, srv.Token(fmt.Sprintf("u%d", i), "d"), "d")
		if err != nil {
			return fmt.Errorf("conn %d: %w", i, err)
		}
		conns[i] = c
	}
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for i, nc := range conns {
		var wmu sync.Mutex
		write := func(b []byte) error {
			wmu.Lock()
			defer wmu.Unlock()
			_, err := nc.Write(b)
			return err
		}
		acks := make(chan error, 1)
		to := []string{fmt.Sprintf("u%d", (i+1)%cfg.Conns)}
		wg.Add(2)
		go func() { // sender
			defer wg.Done()
			body := make([]byte, cfg.Payload)
			prefix := fmt.Sprintf("bench-%d-", i)
			for ref := uint64(1); ; ref++ {
				t0 := time.Now()
				if !t0.Before(w.to) {
					return
				}
				binary.BigEndian.PutUint64(body, uint64(t0.UnixNano()))
				f := wire.Encode(pb.FrameType_SUBMIT, &pb.Submit{
					Ref: ref, To: to, Kind: pb.Kind_TEXT, Body: body, ClientMsgId: prefix + strconv.FormatUint(ref, 36),
				})
				if err := write(f); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				if err := <-acks; err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				w.ack(i, t0)
			}
		}()
		go func() { // reader
			defer wg.Done()
			defer close(acks)
			r := bufio.NewReaderSize(nc, 64<<10)
			nc.SetReadDeadline(w.to.Add(2 * time.Second))
			var hdr [wire.HeaderLen]byte
			for n := 1; ; n++ {
				if _, err := io.ReadFull(r, hdr[:]); err != nil {
					return // the deadline ends the run
				}
				size, ft, err := wire.ParseHeader(hdr[:], 1<<24)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				payload := make([]byte, size-1)
				if _, err := io.ReadFull(r, payload); err != nil {
					return
				}
				msg, err := wire.Decode(ft, payload)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				var seq uint64
				switch m := msg.(type) {
				case *pb.SubmitAck:
					acks <- nil
					continue
				case *pb.Error:
					acks <- fmt.Errorf("server error %v: %s", m.Code, m.Detail)
					return
				case *pb.Deliver:
					seq = m.Seq
					w.deliver(i, m.Body)
				case *pb.Receipt:
					seq = m.Seq
				default:
					continue
				}
				if n%64 == 0 {
					write(wire.Encode(pb.FrameType_ACK, &pb.Ack{Seq: seq}))
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return nil
}
