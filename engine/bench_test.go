package engine_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/keyring"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// BenchmarkSubmit measures durable submits through the engine alone (no
// network), with many concurrent submitters so that group commit works,
// beside the baseline of the same number of goroutines doing synced
// single-key writes into Pebble.
//
//	go test ./engine -run '^$' -bench Submit -benchtime 3s
func BenchmarkSubmit(b *testing.B) {
	for _, size := range []int{256, 4096} {
		for _, par := range []int{64, 512} {
			b.Run(fmt.Sprintf("engine/body=%d/submitters=%d", size, par), func(b *testing.B) {
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
				body := make([]byte, size)
				var n atomic.Int64
				b.ReportAllocs()
				b.SetBytes(int64(size))
				b.SetParallelism(par / 2) // GOMAXPROCS is 2 here
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						i := n.Add(1)
						_, err := e.Submit(context.Background(), engine.Submission{
							From: fmt.Sprintf("u%d", i%1000), To: []string{fmt.Sprintf("u%d", (i+1)%1000)},
							Kind: engine.KindText, Body: body,
						})
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
			b.Run(fmt.Sprintf("baseline-pebble-sync-set/body=%d/writers=%d", size, par), func(b *testing.B) {
				db, err := pebblestore.Open(b.TempDir(), pebblestore.Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer db.Close()
				val := make([]byte, size)
				var n atomic.Int64
				b.ReportAllocs()
				b.SetBytes(int64(size))
				b.SetParallelism(par / 2)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						k := binary.BigEndian.AppendUint64([]byte("k"), uint64(n.Add(1)))
						bt := db.NewBatch()
						bt.Set(k, val)
						if err := bt.Commit(true); err != nil {
							b.Error(err)
							return
						}
						bt.Close()
					}
				})
			})
		}
	}
}

// BenchmarkSecretSubmit measures durable submits in secret chats (the body
// sealed with its own key; levels 1-2 sync the keyring file before the
// store, level 3 keeps keys in memory) beside plain submits between the
// same pairs, in the same run.
//
//	go test ./engine -run '^$' -bench SecretSubmit -benchtime 3s
func BenchmarkSecretSubmit(b *testing.B) {
	for _, mode := range []string{"plain", "secret-level1", "secret-level3"} {
		b.Run(fmt.Sprintf("%s/body=256/submitters=64", mode), func(b *testing.B) {
			dir := b.TempDir()
			db, err := pebblestore.Open(filepath.Join(dir, "store"), pebblestore.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			ring, err := keyring.Open(filepath.Join(dir, "secret.keys"))
			if err != nil {
				b.Fatal(err)
			}
			defer ring.Close()
			e, err := engine.Open(engine.Config{Store: db, Keys: ring})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			const pairs = 500
			chats := make([]engine.ID, pairs)
			if mode != "plain" {
				level := engine.Level1
				if mode == "secret-level3" {
					level = engine.Level3
				}
				for i := range chats {
					ch, err := e.CreateChat(context.Background(), engine.ChatRequest{From: fmt.Sprintf("a%d", i), To: fmt.Sprintf("b%d", i), Level: level})
					if err != nil {
						b.Fatal(err)
					}
					chats[i] = ch.ID
				}
			}
			body := make([]byte, 256)
			var n atomic.Int64
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := int(n.Add(1)) % pairs
					s := engine.Submission{From: fmt.Sprintf("a%d", i), Kind: engine.KindText, Body: body}
					if mode == "plain" {
						s.To = []string{fmt.Sprintf("b%d", i)}
					} else {
						s.Chat = chats[i]
					}
					if _, err := e.Submit(context.Background(), s); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
