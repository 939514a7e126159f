package relay_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine"
)

// BenchmarkPump measures 1:1 messages from partition 0 to partition 1,
// each relayed by a Pump, with the destination in process (the engine
// itself, as dingd --partitions runs it) or behind its own HTTP server on
// loopback (HTTPDest and Handler: the wire form, the cluster secret,
// keys sealed; stage 5b), in the same run, both on Pebble in temp dirs.
// ns/op is per message, from the first submit until the last is in its
// recipient's stream at the destination. Both engines, both stores, the
// HTTP server and the load share this machine's cores: the figure is the
// relay's whole cost, and "http" against "in-process" is what the
// transport adds.
//
//	go test ./cluster/relay -run '^$' -bench Pump -benchtime 50000x -count 3
func BenchmarkPump(b *testing.B) {
	for _, transport := range []string{"in-process", "http"} {
		b.Run(transport+"/body=256/submitters=256", func(b *testing.B) {
			nodes := openNodes(b, 2, true)
			cfg := config(nodes, prometheus.NewRegistry(), nil)
			if transport == "http" {
				codec := testCodec(b)
				hns := serveNodes(b, nodes, codec)
				cfg = httpConfig(hns, codec, prometheus.NewRegistry())
			}
			startPump(b, cfg)
			const submitters = 256
			dst := nodes[1].e
			body := string(make([]byte, 256))
			per := (b.N + submitters - 1) / submitters
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, submitters)
			for i := range submitters {
				wg.Add(1)
				go func() {
					defer wg.Done()
					from, to := fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)
					for range per {
						if _, err := nodes[0].e.Submit(context.Background(), engine.Submission{From: from, To: []string{to}, Kind: engine.KindText, Body: []byte(body)}); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			// Every recipient's head reaching per: polled, as the pump
			// signals nothing a benchmark could wait on.
			for i := range submitters {
				u := fmt.Sprintf("b%d", i)
				for {
					h, err := dst.Head(u)
					if err != nil {
						b.Fatal(err)
					}
					if h >= uint64(per) {
						break
					}
					time.Sleep(100 * time.Microsecond)
				}
			}
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(el.Nanoseconds())/float64(per*submitters), "ns/msg")
		})
	}
}
