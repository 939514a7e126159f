package engine_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// BenchmarkWebhookOutbox measures what the event outbox costs the commit
// path: durable directory changes that each write a record and add a user
// (the op writes one user.added event when a subscription wants it), with 64 concurrent
// committers, with no subscription, with one whose filter does not match
// (the check alone), and with one that matches (one event written per op,
// never acknowledged: the outbox grows as under a dead receiver).
//
//	go test ./engine -run '^$' -bench WebhookOutbox -benchtime 3s
func BenchmarkWebhookOutbox(b *testing.B) {
	for _, mode := range []struct {
		name   string
		events []string // nil: no subscription
	}{{"none", nil}, {"unmatched", []string{"ding.*"}}, {"matched", []string{"user.added"}}} {
		b.Run("subscription="+mode.name, func(b *testing.B) {
			db, err := pebblestore.Open(b.TempDir(), pebblestore.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			e, err := engine.Open(engine.Config{Store: db})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			if mode.events != nil {
				if _, err := e.AddWebhook(context.Background(), engine.Webhook{URL: "http://127.0.0.1:9/", Events: mode.events}); err != nil {
					b.Fatal(err)
				}
			}
			var n atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(32) // 64 committers on 2 CPUs
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					u := fmt.Sprintf("u%d", n.Add(1))
					rec := func(w engine.Writer) error {
						w.Set([]byte{engine.PrefixDirectory, 'b', 'e', 'n', 'c', 'h', ':', byte(len(u))}, []byte(u))
						return nil
					}
					if err := e.Commit(context.Background(), engine.Change{Write: rec, Added: []string{u}}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			if mode.name == "matched" && e.WebhookDurable() < uint64(b.N) {
				b.Fatalf("%d events for %d ops", e.WebhookDurable(), b.N)
			}
		})
	}
}
