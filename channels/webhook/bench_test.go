package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/webhook"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// benchNode is an engine on Pebble with a dispatcher delivering to a
// loopback receiver that records when each event arrived.
type benchNode struct {
	eng  *engine.Engine
	disp *webhook.Dispatcher
	up   atomic.Bool // false: the receiver answers 503
	mu   sync.Mutex
	got  map[string]time.Time // first 2xx per event, by its user; guarded by mu
	n    atomic.Int64         // distinct events answered 2xx
	url  string               // the receiver's
	done chan struct{}        // signalled at each new event
}

func newBenchNode(b *testing.B) *benchNode {
	b.Helper()
	db, err := pebblestore.Open(b.TempDir(), pebblestore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	eng, err := engine.Open(engine.Config{Store: db})
	if err != nil {
		b.Fatal(err)
	}
	n := &benchNode{eng: eng, got: map[string]time.Time{}, done: make(chan struct{}, 1)}
	n.up.Store(true)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev struct {
			Data struct{ User string } `json:"data"`
		}
		json.NewDecoder(r.Body).Decode(&ev)
		if !n.up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		id := ev.Data.User
		n.mu.Lock()
		if _, dup := n.got[id]; !dup {
			n.got[id] = time.Now()
			n.n.Add(1)
		}
		n.mu.Unlock()
		select {
		case n.done <- struct{}{}:
		default:
		}
	}))
	n.url = rcv.URL
	if _, err := eng.AddWebhook(context.Background(), engine.Webhook{URL: rcv.URL, Events: []string{"user.added"}}); err != nil {
		b.Fatal(err)
	}
	// Retries after 10ms, doubling to 100ms: a receiver back up is found at once.
	if n.disp, err = webhook.New(webhook.Config{Sources: []webhook.Source{eng}, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		n.disp.Close()
		rcv.Close()
		eng.Close()
		db.Close()
	})
	return n
}

// commit adds users from..to-1 (one event each) from 16 goroutines and
// returns when each event's commit was answered.
func (n *benchNode) commit(b *testing.B, from, to int) map[string]time.Time {
	b.Helper()
	acked := make(map[string]time.Time, to-from)
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := atomic.Int64{}
	next.Store(int64(from))
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= to {
					return
				}
				u := fmt.Sprintf("u%d", i)
				if err := n.eng.Commit(context.Background(), engine.Change{Write: func(engine.Writer) error { return nil }, Added: []string{u}}); err != nil {
					b.Error(err)
					return
				}
				mu.Lock()
				acked[u] = time.Now()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return acked
}

func (n *benchNode) waitAll(b *testing.B, total int64, limit time.Duration) {
	b.Helper()
	deadline := time.After(limit)
	for n.n.Load() < total {
		select {
		case <-n.done:
		case <-deadline:
			b.Fatalf("%d of %d events delivered in %v", n.n.Load(), total, limit)
		}
	}
}

// BenchmarkWebhookDelivery: events committed and delivered to one
// subscription on loopback (one request in flight per subscription, each
// event acknowledged durably before the next): events/s delivered, and
// the p50/p99 from a change's durable answer to its event's arrival.
// "burst": b.N events committed at once by 16 writers (throughput; the
// latency is mostly queueing behind the burst). "paced": one event every
// 5 ms (200/s, a busy back office), the latency of an event on its own.
//
//	go test ./channels/webhook -run '^$' -bench WebhookDelivery -benchtime 3000x
func BenchmarkWebhookDelivery(b *testing.B) {
	b.Run("burst", func(b *testing.B) {
		n := newBenchNode(b)
		b.ResetTimer()
		start := time.Now()
		acked := n.commit(b, 0, b.N)
		n.waitAll(b, int64(b.N), 5*time.Minute)
		elapsed := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
		n.reportLatency(b, acked)
	})
	b.Run("baseline-post-loop", func(b *testing.B) {
		// The same receiver, POSTed to by one goroutine, one request in
		// flight, with no engine: the loopback HTTP ceiling.
		n := newBenchNode(b)
		ev := engine.WebhookEvent{Seq: 1, Type: engine.HookUserAdded, At: time.Now()}
		client := &http.Client{}
		b.ResetTimer()
		start := time.Now()
		for i := range b.N {
			ev.Data = []engine.Attr{engine.S("user", fmt.Sprintf("p%d", i))}
			resp, err := client.Post(n.url, "application/json", bytes.NewReader(webhook.Body("0", &ev)))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	})
	b.Run("paced", func(b *testing.B) {
		n := newBenchNode(b)
		acked := make(map[string]time.Time, b.N)
		tick := time.NewTicker(5 * time.Millisecond) // the load's pace, not a synchronisation
		defer tick.Stop()
		b.ResetTimer()
		for i := range b.N {
			<-tick.C
			u := fmt.Sprintf("u%d", i)
			if err := n.eng.Commit(context.Background(), engine.Change{Write: func(engine.Writer) error { return nil }, Added: []string{u}}); err != nil {
				b.Fatal(err)
			}
			acked[u] = time.Now()
		}
		n.waitAll(b, int64(b.N), time.Minute)
		b.StopTimer()
		n.reportLatency(b, acked)
	})
}

// reportLatency reports the p50 and p99 from each change's durable
// answer to its event's first 2xx.
func (n *benchNode) reportLatency(b *testing.B, acked map[string]time.Time) {
	n.mu.Lock()
	lat := make([]float64, 0, len(acked))
	for u, at := range acked {
		lat = append(lat, float64(max(0, n.got[u].Sub(at)))/float64(time.Millisecond))
	}
	n.mu.Unlock()
	slices.Sort(lat)
	b.ReportMetric(lat[len(lat)/2], "p50-ms")
	b.ReportMetric(lat[len(lat)*99/100], "p99-ms")
}

// BenchmarkWebhookBacklogRecovery: the receiver is down while a backlog
// builds (b.N events: at 10 events/s, 3000 is a 5-minute outage), then
// comes back; the time to deliver the whole backlog.
//
//	go test ./channels/webhook -run '^$' -bench WebhookBacklogRecovery -benchtime 3000x
func BenchmarkWebhookBacklogRecovery(b *testing.B) {
	n := newBenchNode(b)
	n.up.Store(false)
	n.commit(b, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	n.up.Store(true)
	n.waitAll(b, int64(b.N), 5*time.Minute)
	b.ReportMetric(time.Since(start).Seconds(), "drain-s")
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
