package engine_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// BenchmarkEscalation drives DINGs through their life on the commit loop,
// on Pebble and the fake clock. Each op is a round: dings DINGs from one
// sender to the same recipients, sent at once; their SMS step comes due
// (timers fire, sends are decided, the fake provider's outcomes are
// recorded); then every recipient confirms in the app, which stops the
// call step. ns/recipient is a round's time per recipient, and each
// recipient costs the commit loop about four ops.
//
//	go test ./engine -run '^$' -bench Escalation -benchtime 10x
func BenchmarkEscalation(b *testing.B) {
	for _, size := range []struct{ dings, recipients int }{{100, 5}, {5, 100}} {
		b.Run(fmt.Sprintf("dings=%d/recipients=%d", size.dings, size.recipients), func(b *testing.B) {
			db, err := pebblestore.Open(b.TempDir(), pebblestore.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			users, cts := fixedUsers{"ana": true}, contacts{}
			var to []string
			for i := range size.recipients {
				u := fmt.Sprintf("u%03d", i)
				users[u], cts[u] = true, engine.Contact{Name: u, Phone: fmt.Sprintf("+1555100%04d", i)}
				to = append(to, u)
			}
			env := newDingEnv(b, db, func(c *engine.Config) {
				c.Recipients, c.Contacts = users, cts
				c.Quotas = engine.Quotas{DingsPerSenderPerDay: -1, RecipientInterval: -1, SMSPerDay: -1, CallsPerDay: -1}
			})
			ctx := context.Background()
			ids := make([]engine.ID, size.dings)
			b.ReportAllocs()
			for b.Loop() {
				var wg sync.WaitGroup
				for i := range ids {
					wg.Go(func() {
						res, err := env.e.Ding(ctx, engine.DingRequest{From: "ana", To: to, Text: "db down", Policy: "inapp,sms@1m,voice@10m"})
						if err != nil {
							b.Error(err)
						}
						ids[i] = res.ID
					})
				}
				wg.Wait()
				env.clock.Advance(time.Minute)
				env.barrier(b)
				for _, id := range ids {
					for _, u := range to {
						wg.Add(1)
						env.e.ConfirmAsync(u, id, 0, func(_ engine.ConfirmResult, err error) {
							if err != nil {
								b.Error(err)
							}
							wg.Done()
						})
					}
				}
				wg.Wait()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*size.dings*size.recipients), "ns/recipient")
			if p := env.e.PendingSteps(); p != 0 {
				b.Fatalf("%d steps pending after every recipient confirmed", p)
			}
		})
	}
}
