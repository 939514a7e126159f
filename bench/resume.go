package bench

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
)

// ResumeConfig sizes the resume scenario.
type ResumeConfig struct {
	Bin, Tmp string
	// Against is a second dingd binary measured after Bin in the same
	// run, beside it in the table (dingbench --against); empty means none.
	Against string
	Missed  int // messages the device missed
	Payload int
}

// Resume stores Missed messages for an offline device, then connects it and
// times the catch-up from the handshake to the last entry received (acking
// every 1,000 as a real client would). Baseline, measured first: one
// ordered scan over the same number of same-size entries in a fresh
// Pebble: the raw store's read rate, before any decoding, framing or
// network. With Against, that dingd is measured after Bin.
func Resume(cfg ResumeConfig) (Table, error) {
	baseRate, err := PebbleScan(cfg.Tmp, cfg.Missed, cfg.Payload)
	if err != nil {
		return Table{}, err
	}
	t, err := Compare(cfg.Bin, cfg.Against, "the baseline", func(bin string) (Table, error) {
		elapsed, err := resumeOnce(cfg, bin)
		if err != nil {
			return Table{}, err
		}
		dingRate := rate(int64(cfg.Missed), elapsed)
		return Table{Rows: []Row{
			{"catch-up msgs/s", fmt.Sprintf("%.0f", dingRate), fmt.Sprintf("%.0f entries/s", baseRate), ratio(dingRate, baseRate), "≥ 200,000"},
			{"catch-up time", ms(elapsed), "", "", ""},
		}}, nil
	})
	if err != nil {
		return Table{}, err
	}
	t.Scenario = "resume"
	t.Setup = fmt.Sprintf("A device that missed %d messages of %d bytes connects (cursor 0) and catches up over loopback through the Go client, acking every 1,000. Baseline: one ordered scan of %d entries of the same size in a fresh Pebble (the raw store read rate).",
		cfg.Missed, cfg.Payload, cfg.Missed) + t.Setup
	return t, nil
}

// resumeOnce runs the scenario against a dingd from bin and returns the
// catch-up time.
func resumeOnce(cfg ResumeConfig, bin string) (time.Duration, error) {
	srv, err := StartServer(bin, cfg.Tmp, 2)
	if err != nil {
		return 0, err
	}
	defer srv.Stop()
	// Fill the stream with 64 concurrent senders.
	sender, err := client.Dial(context.Background(), client.Config{Addr: srv.Sock, Token: srv.Token("u0", "d"), Device: "d"})
	if err != nil {
		return 0, err
	}
	defer sender.Close()
	var next atomic.Int64
	var wg sync.WaitGroup
	var sendErr atomic.Value
	body := make([]byte, cfg.Payload)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(cfg.Missed) {
				if _, err := sender.Send(context.Background(), []string{"u1"}, body); err != nil {
					sendErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := sendErr.Load().(error); err != nil {
		return 0, err
	}

	fmt.Fprintf(os.Stderr, "resume: %s catching up\n", bin)
	start := time.Now()
	c, err := client.Dial(context.Background(), client.Config{Addr: srv.Sock, Token: srv.Token("u1", "phone"), Device: "phone", Buffer: 8192})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	got := 0
	timeout := time.After(5 * time.Minute)
	for got < cfg.Missed {
		select {
		case e, ok := <-c.Entries():
			if !ok {
				return 0, fmt.Errorf("client stopped: %v", c.Err())
			}
			if e.Message != nil {
				got++
			}
			if got%1000 == 0 {
				c.Ack(e.Seq)
			}
		case <-timeout:
			return 0, fmt.Errorf("catch-up stalled at %d of %d", got, cfg.Missed)
		}
	}
	return time.Since(start), nil
}
