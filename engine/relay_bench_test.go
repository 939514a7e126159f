package engine_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// BenchmarkRelay measures 1:1 messages between partitions beside the same
// messages within one, in the same run, each on Pebble in a temp dir:
//
//   - same-partition: 512 submitters on partition 0 send to users of
//     partition 0 (one engine, one store);
//   - cross-partition: the same submitters send to users of partition 1,
//     each message relayed by a pump (Outbox, then ApplyRelay on a second
//     engine on its own store, then AckRelay) as the in-process pump of
//     stage 4 will (cluster/PARTITIONS.md).
//
// ns/op is per message, from the first submit until the last message is
// durable in its recipient's stream: on the one engine when the submit is
// answered, across partitions when the destination's batch is. So the
// cross-partition figure includes the relay's two further fsyncs (the
// destination's batch, then the origin's acknowledgement), pipelined with
// the submits.
//
//	go test ./engine -run '^$' -bench 'Relay$' -benchtime 200000x -count 3
func BenchmarkRelay(b *testing.B) {
	for _, cross := range []bool{false, true} {
		name := "same-partition"
		if cross {
			name = "cross-partition"
		}
		b.Run(name+"/body=256/submitters=512", func(b *testing.B) {
			ctx := context.Background()
			a := openPlaced(b, 0, 0)
			to := "a"
			var dst *engine.Engine
			if cross {
				dst, to = openPlaced(b, 1, 0), "b"
			}
			// The pump: what is durable on a goes to dst, and is
			// acknowledged once dst holds it.
			var relayed, rounds atomic.Int64
			done := make(chan struct{}) // closed once b.N messages are relayed
			stop := make(chan struct{})
			pumped := make(chan error, 1)
			if cross {
				go func() {
					target := int64(b.N)
					for {
						select {
						case <-stop:
							pumped <- nil
							return
						case <-a.OutboxReady():
						}
						for {
							bt, err := a.Outbox(1, 0, 1024)
							if err != nil || len(bt.Records) == 0 {
								if err != nil {
									pumped <- err
									return
								}
								break
							}
							through, err := dst.ApplyRelay(ctx, bt)
							if err == nil {
								err = a.AckRelay(ctx, 1, through)
							}
							if err != nil {
								pumped <- err
								return
							}
							rounds.Add(1)
							if relayed.Add(int64(len(bt.Records))) == target {
								close(done)
							}
						}
					}
				}()
			}
			body := make([]byte, 256)
			var n atomic.Int64
			b.ReportAllocs()
			b.SetBytes(256)
			b.SetParallelism(256) // 512 submitters: GOMAXPROCS is 2 here
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					_, err := a.Submit(ctx, engine.Submission{
						From: fmt.Sprintf("a%d", i%1000), To: []string{fmt.Sprintf("%s%d", to, (i+1)%1000)},
						Kind: engine.KindText, Body: body,
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			if cross {
				select {
				case <-done:
				case err := <-pumped:
					b.Fatalf("pump: %v", err)
				}
			}
			b.StopTimer()
			close(stop)
			if cross {
				if err := <-pumped; err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(relayed.Load())/float64(max(rounds.Load(), 1)), "records/round")
				// Every message is in its recipient's stream on dst.
				var total uint64
				for u := range 1000 {
					h, err := dst.Head(fmt.Sprintf("b%d", u))
					if err != nil {
						b.Fatal(err)
					}
					total += h
				}
				if total != uint64(b.N) {
					b.Fatalf("partition 1's streams hold %d messages, want %d", total, b.N)
				}
			}
		})
	}
}

// BenchmarkAckRelayMany measures, at the origin, the acknowledgement of
// one relay record naming many users of another partition (a message to
// 10,000 of them, as an announcement to all makes one per partition):
// AckRelay writes each user's "sent" receipt unless one is there, in
// chunks of Config.FanoutChunk per op, then trims the record. ns/op is per
// user; the submit, Outbox and the destination's ApplyRelay are outside
// the timer. Pebble in a temp dir on both sides.
//
//	go test ./engine -run '^$' -bench 'AckRelayMany$' -benchtime 20x -count 3
func BenchmarkAckRelayMany(b *testing.B) {
	const users = 10_000
	ctx := context.Background()
	a, dst := openPlaced(b, 0, users), openPlaced(b, 1, users)
	to := make([]string, users)
	for i := range to {
		to[i] = fmt.Sprintf("b%05d", i)
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if _, err := a.Submit(ctx, engine.Submission{From: "a0", To: to, Kind: engine.KindText, Body: []byte("notice")}); err != nil {
			b.Fatal(err)
		}
		bt, err := a.Outbox(1, 0, 1024)
		if err != nil || len(bt.Records) != 1 {
			b.Fatalf("outbox: %d records, %v", len(bt.Records), err)
		}
		through, err := dst.ApplyRelay(ctx, bt)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := a.AckRelay(ctx, 1, through); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*users), "ns/user")
}

// openPlaced opens the engine of partition p (users "b..." are partition
// 1's, the others 0's) on Pebble in a temp dir; maxRecipients 0 is the
// engine's default.
func openPlaced(b *testing.B, p uint32, maxRecipients int) *engine.Engine {
	db, err := pebblestore.Open(b.TempDir(), pebblestore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	e, err := engine.Open(engine.Config{Store: db, Partition: p, Placement: placeByPrefix, MaxRecipients: maxRecipients})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	return e
}

// BenchmarkRelayWrites counts what a 1:1 message costs the stores, whole:
// the submit, its relay, the recipient's device acknowledging it, and the
// receipt's way back to the sender's partition, within one partition (one
// store) and across two (the origin's and the destination's), in rounds
// of 64 messages submitted and acknowledged concurrently, so that group
// commit batches them as it does under load. It reports the keys written
// (sets and deletions) and the bytes (keys and values) per message, over
// every store, on memstore: the figures are counts, not times. A cluster
// writes each store's batches twice more, on its standby.
//
//	go test ./engine -run '^$' -bench 'RelayWrites$' -benchtime 6400x
func BenchmarkRelayWrites(b *testing.B) {
	for _, cross := range []bool{false, true} {
		name := "same-partition"
		if cross {
			name = "cross-partition"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			var stores []*countingDeletes
			var nodes []*relayNode
			parts := 1
			if cross {
				parts = 2
			}
			for p := range parts {
				cs := &countingDeletes{Store: memstore.New()}
				stores = append(stores, cs)
				nodes = append(nodes, openRelayNode(b, cs, uint32(p), func(c *engine.Config) { c.Placement = placeByPrefix }))
			}
			a, dst, to := nodes[0].e, nodes[len(nodes)-1].e, "a"
			if cross {
				to = "b"
			}
			const round = 64
			body := make([]byte, 256)
			b.ResetTimer()
			for done := 0; done < b.N; done += round {
				var wg sync.WaitGroup
				for i := range round {
					wg.Go(func() {
						if _, err := a.Submit(ctx, engine.Submission{
							From: fmt.Sprintf("a%d", i), To: []string{fmt.Sprintf("%s%d", to, 1000+i)},
							Kind: engine.KindText, Body: body, ClientID: fmt.Sprintf("m%d", done+i),
						}); err != nil {
							b.Error(err)
						}
					})
				}
				wg.Wait()
				pump(b, nodes...) // (nothing to move within one partition)
				for i := range round {
					wg.Go(func() {
						user := fmt.Sprintf("%s%d", to, 1000+i)
						h, err := dst.Head(user)
						if err == nil {
							err = dst.Ack(ctx, user, "phone", h)
						}
						if err != nil {
							b.Error(err)
						}
					})
				}
				wg.Wait()
				pump(b, nodes...)
			}
			b.StopTimer()
			var keys, bytes int64
			for _, cs := range stores {
				keys, bytes = keys+cs.writes.Load(), bytes+cs.bytes.Load()
			}
			n := float64((b.N + round - 1) / round * round)
			b.ReportMetric(float64(keys)/n, "keys/msg")
			b.ReportMetric(float64(bytes)/n, "bytes/msg")
		})
	}
}

// placeByPrefix puts users "b…" in partition 1, the others in 0.
func placeByPrefix(u string) uint32 {
	if strings.HasPrefix(u, "b") {
		return 1
	}
	return 0
}
