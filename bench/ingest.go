package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
)

// IngestConfig sizes the ingest scenario.
type IngestConfig struct {
	Bin, Tmp    string
	Conns       int           // connections, each a user sending to the next one
	Payload     int           // body bytes
	Warmup, Run time.Duration // measured window follows the warmup
	Baseline    int           // baseline goroutines
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
	clients := make([]*client.Client, cfg.Conns)
	for i := range clients {
		c, err := client.Dial(context.Background(), client.Config{
			Addr: srv.Sock, Token: srv.Token(fmt.Sprintf("u%d", i), "d"), Device: "d", Buffer: 4096,
		})
		if err != nil {
			return Table{}, fmt.Errorf("dial %d: %w", i, err)
		}
		clients[i] = c
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()

	start := time.Now()
	measureFrom, measureTo := start.Add(cfg.Warmup), start.Add(cfg.Warmup+cfg.Run)
	var acked, delivered atomic.Int64
	ackLats := make([]Latencies, cfg.Conns)
	delLats := make([]Latencies, cfg.Conns)
	var wg sync.WaitGroup
	var sendErr atomic.Value
	for i, c := range clients {
		to := []string{fmt.Sprintf("u%d", (i+1)%cfg.Conns)}
		wg.Add(2)
		go func() { // sender
			defer wg.Done()
			body := make([]byte, cfg.Payload)
			for {
				t0 := time.Now()
				if !t0.Before(measureTo) {
					return
				}
				binary.BigEndian.PutUint64(body, uint64(t0.UnixNano()))
				if _, err := c.Send(context.Background(), to, body); err != nil {
					sendErr.CompareAndSwap(nil, err)
					return
				}
				if t0.After(measureFrom) {
					ackLats[i] = append(ackLats[i], time.Since(t0))
					acked.Add(1)
				}
			}
		}()
		go func() { // receiver
			defer wg.Done()
			deadline := time.NewTimer(cfg.Warmup + cfg.Run + 5*time.Second)
			defer deadline.Stop()
			n := 0
			for {
				select {
				case e, ok := <-c.Entries():
					if !ok {
						return
					}
					if e.Message == nil {
						continue
					}
					now := time.Now()
					sent := time.Unix(0, int64(binary.BigEndian.Uint64(e.Message.Body)))
					if sent.After(measureFrom) && sent.Before(measureTo) {
						delLats[i] = append(delLats[i], now.Sub(sent))
						delivered.Add(1)
					}
					if n++; n%64 == 0 {
						c.Ack(e.Seq)
					}
					if now.After(measureTo.Add(2 * time.Second)) {
						return
					}
				case <-deadline.C:
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := sendErr.Load().(error); err != nil {
		return Table{}, fmt.Errorf("send: %w", err)
	}
	var ack, del Latencies
	for i := range ackLats {
		ack.Merge(ackLats[i])
		del.Merge(delLats[i])
	}
	frames, _ := srv.Metric("ding_socket_flush_frames_sum")
	flushes, _ := srv.Metric("ding_socket_flush_frames_count")
	batch, _ := srv.Metric("ding_engine_commit_batch_ops_sum")
	batches, _ := srv.Metric("ding_engine_commit_batch_ops_count")
	dingRate := rate(acked.Load(), cfg.Run)

	baseRate, baseLat, err := PebbleSyncWrites(cfg.Tmp, cfg.Baseline, cfg.Payload, cfg.Run)
	if err != nil {
		return Table{}, err
	}
	t := Table{
		Scenario: "ingest",
		Setup: fmt.Sprintf("%d connections on loopback, each a user submitting %d-byte messages one at a time to the next user (online); %v warm-up, %v measured. Baseline: %d goroutines doing synced single-key writes (`Set(k, v, pebble.Sync)`) of the same payload into a fresh Pebble for %v.",
			cfg.Conns, cfg.Payload, cfg.Warmup, cfg.Run, cfg.Baseline, cfg.Run),
		Rows: []Row{
			{"acknowledged msgs/s", fmt.Sprintf("%.0f", dingRate), fmt.Sprintf("%.0f writes/s", baseRate), ratio(dingRate, baseRate), "≥ 3×"},
			{"submit→ack p50", ms(ack.Quantile(0.5)), ms(baseLat.Quantile(0.5)) + " per write", "", ""},
			{"submit→ack p99", ms(ack.Quantile(0.99)), ms(baseLat.Quantile(0.99)) + " per write", "", "< 10 ms"},
			{"submit→delivered p99", ms(del.Quantile(0.99)), "", "", ""},
			{"delivered in window", fmt.Sprint(delivered.Load()), "", "", ""},
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
