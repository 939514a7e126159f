package engine_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// BenchmarkRange measures the catch-up read: a device reading a stream of
// 256-byte messages in 512-entry chunks (what the hub's catch-up does),
// from the store (the cache of recent messages off) and from the cache.
// One op is one entry. The baseline is a raw ordered scan of the same
// stream's inbox keys in the same store.
//
//	go test ./engine -run '^$' -bench Range -benchtime 3s
func BenchmarkRange(b *testing.B) {
	const n = 50_000
	for _, mode := range []string{"store", "cache"} {
		b.Run(mode, func(b *testing.B) {
			db, err := pebblestore.Open(b.TempDir(), pebblestore.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			cache := 64 << 20
			if mode == "store" {
				cache = -1
			}
			e, err := engine.Open(engine.Config{Store: db, MessageCacheBytes: cache})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			fill(b, e, n)
			if mode == "store" {
				if err := db.Flush(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			from := uint64(1)
			for i := 0; i < b.N; {
				es, err := e.Range("bo", from, 512)
				if err != nil {
					b.Fatal(err)
				}
				i += len(es)
				if from += uint64(len(es)); from > n {
					from = 1
				}
			}
		})
	}
}

// fill sends n messages from 8 senders to bo.
func fill(b *testing.B, e *engine.Engine, n int) {
	b.Helper()
	body := make([]byte, 256)
	var wg sync.WaitGroup
	for s := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n / 8 {
				if _, err := e.Submit(context.Background(), engine.Submission{From: fmt.Sprintf("s%d", s), To: []string{"bo"}, Kind: engine.KindText, Body: body}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
