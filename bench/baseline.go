package bench

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/engine/store/pebblestore"
)

// PebbleSyncWrites is the ingest baseline: workers goroutines each doing
// one synced single-key write (a one-op batch committed with sync, which is
// what pebble's Set(..., pebble.Sync) does) of a payload-byte value into a
// fresh Pebble, for d. It returns writes/s and the per-write latencies.
func PebbleSyncWrites(tmp string, workers, payload int, d time.Duration) (float64, Latencies, error) {
	dir, err := os.MkdirTemp(tmp, "dingbench-baseline-")
	if err != nil {
		return 0, nil, err
	}
	defer os.RemoveAll(dir)
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		return 0, nil, err
	}
	defer db.Close()
	var n atomic.Int64
	var wg sync.WaitGroup
	lats := make([]Latencies, workers)
	val := make([]byte, payload)
	stop := time.Now().Add(d)
	start := time.Now()
	var firstErr atomic.Value
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := make([]byte, 16)
			for i := 0; time.Now().Before(stop); i++ {
				binary.BigEndian.PutUint64(key, uint64(w))
				binary.BigEndian.PutUint64(key[8:], uint64(i))
				t0 := time.Now()
				b := db.NewBatch()
				b.Set(key, val)
				if err := b.Commit(true); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				b.Close()
				lats[w] = append(lats[w], time.Since(t0))
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, nil, fmt.Errorf("baseline write: %w", err)
	}
	var all Latencies
	for _, l := range lats {
		all.Merge(l)
	}
	return rate(n.Load(), time.Since(start)), all, nil
}

// PebbleScan is the resume baseline: write n entries of payload bytes into a
// fresh Pebble, then time one ordered scan over them. It returns entries/s.
func PebbleScan(tmp string, n, payload int) (float64, error) {
	dir, err := os.MkdirTemp(tmp, "dingbench-baseline-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	val := make([]byte, payload)
	for lo := 0; lo < n; lo += 10000 {
		b := db.NewBatch()
		for i := lo; i < min(lo+10000, n); i++ {
			b.Set(binary.BigEndian.AppendUint64([]byte("i"), uint64(i)), val)
		}
		if err := b.Commit(false); err != nil {
			return 0, err
		}
		b.Close()
	}
	start := time.Now()
	seen := 0
	err = db.Scan([]byte("i"), []byte("j"), func(k, v []byte) bool {
		seen += len(v) / payload
		return true
	})
	if err != nil {
		return 0, err
	}
	if seen != n {
		return 0, fmt.Errorf("baseline scan saw %d of %d", seen, n)
	}
	return rate(int64(n), time.Since(start)), nil
}
