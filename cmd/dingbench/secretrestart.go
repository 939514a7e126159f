package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dingmq/ding/bench"
	"github.com/dingmq/ding/engine/keyring"
)

// restartFigures is phase 4's result: two more dingd processes, one
// holding Live level-1 messages and one holding Live plain messages,
// restarted in turn (SIGTERM, then exec until /readyz answers 200); then
// Live level-3 messages added to the plain one and one more restart.
type restartFigures struct {
	live                    int
	ringBytes               int64   // the level-1 server's keyring file
	load1, loadPlain, load3 float64 // msgs/s while loading (loadInflight in flight)
	withKeys, plain         bench.Latencies
	liveAfter               float64       // ding_secret_messages after the level-1 server's restarts
	withL3                  time.Duration // exec → /readyz
	l3AllBurned             time.Duration // exec → every level-3 message burned (dingd burns them after it is ready)
	l3Burned, l3LiveAfter   float64
}

const (
	loadPairs    = 50  // users sending to their pair while loading
	loadInflight = 800 // submits in flight while loading (8 per connection)
)

func restarts(cfg secretConfig) (restartFigures, error) {
	f := restartFigures{live: cfg.Live}
	keys, err := bench.StartServer(cfg.Bin, cfg.Tmp, 2*loadPairs)
	if err != nil {
		return f, err
	}
	defer keys.Stop()
	plain, err := bench.StartServer(cfg.Bin, cfg.Tmp, 2*loadPairs)
	if err != nil {
		return f, err
	}
	defer plain.Stop()
	if f.load1, err = loadLive(keys, cfg, 1); err != nil {
		return f, err
	}
	if f.loadPlain, err = loadLive(plain, cfg, 0); err != nil {
		return f, err
	}
	if f.ringBytes, err = fileSize(filepath.Join(keys.Data, "secret.keys")); err != nil {
		return f, err
	}
	for range cfg.Restarts {
		_, d, err := restart(plain)
		if err != nil {
			return f, err
		}
		f.plain = append(f.plain, d)
		if _, d, err = restart(keys); err != nil {
			return f, err
		}
		f.withKeys = append(f.withKeys, d)
	}
	s, err := keys.Scrape()
	if err != nil {
		return f, err
	}
	f.liveAfter = s["ding_secret_messages"]
	if f.load3, err = loadLive(plain, cfg, 3); err != nil {
		return f, err
	}
	started, withL3, err := restart(plain)
	if err != nil {
		return f, err
	}
	f.withL3 = withL3
	// The level-3 messages (unreadable once their keys died with the
	// process) are burned in the background after start-up: poll until
	// the counter has them all.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if s, err = plain.Scrape(); err != nil {
			return f, err
		}
		f.l3Burned, f.l3LiveAfter = burns(s, 3, "restart"), s["ding_secret_messages"]
		if f.l3Burned >= float64(cfg.Live) || time.Now().After(deadline) {
			f.l3AllBurned = time.Since(started)
			return f, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// restart stops dingd cleanly and starts it again on the same data. It
// returns when the exec was, and the time from it to the first 200 from
// /readyz.
func restart(srv *bench.Server) (started time.Time, ready time.Duration, err error) {
	if _, err := srv.Kill(syscall.SIGTERM); err != nil {
		return time.Time{}, 0, fmt.Errorf("stop dingd: %w", err)
	}
	started, readyAt, err := srv.Restart()
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("restart dingd: %w", err)
	}
	return started, readyAt.Sub(started), nil
}

// loadLive sends cfg.Live messages of a kind (0 plain, else a secret
// level) between loadPairs pairs of users, loadInflight at a time, and
// returns the rate. Nobody reads them, so secret ones stay live.
func loadLive(srv *bench.Server, cfg secretConfig, level int) (float64, error) {
	ps, err := dialUsers(srv, "u", 2*loadPairs)
	if err != nil {
		return 0, err
	}
	defer closeParties(ps)
	chats := make([]string, loadPairs)
	if level > 0 {
		err := forEach(loadPairs, 16, func(i int) error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			id, err := ps[2*i].c.CreateChat(ctx, ps[2*i+1].user, level, 0)
			chats[i] = id
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("create level-%d chats: %w", level, err)
		}
	}
	t0 := time.Now()
	err = forEach(cfg.Live, loadInflight, func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		j := i % len(ps)
		body := make([]byte, cfg.Payload)
		stamp(body, time.Now())
		var err error
		if level == 0 {
			_, err = ps[j].c.Send(ctx, []string{ps[j^1].user}, body)
		} else {
			_, err = ps[j].c.SendChat(ctx, chats[j/2], body)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("load %s messages: %w", kindName(level), err)
	}
	return float64(cfg.Live) / time.Since(t0).Seconds(), nil
}

// tempKeyring opens a fresh keyring file (package keyring, as dingd uses
// it) in a new directory under tmp; done closes it and removes the
// directory.
func tempKeyring(tmp string) (ring *keyring.Ring, path string, done func(), err error) {
	dir, err := os.MkdirTemp(tmp, "dingbench-keyring-")
	if err != nil {
		return nil, "", nil, err
	}
	path = filepath.Join(dir, "secret.keys")
	if ring, err = keyring.Open(path); err != nil {
		os.RemoveAll(dir)
		return nil, "", nil, err
	}
	return ring, path, func() { ring.Close(); os.RemoveAll(dir) }, nil
}

// keyringAlone is the bulk-burn baseline: n keys put into a fresh keyring
// file and synced, then erased 1,024 at a time (the most one timer batch
// burns), each Erase zeroing its slots and syncing the file, as a burn
// batch does. It returns erased keys/s, and the file's bytes per key
// before the erase (the keyring-size baseline).
func keyringAlone(tmp string, n int) (eraseRate, bytesPerKey float64, err error) {
	ring, path, done, err := tempKeyring(tmp)
	if err != nil {
		return 0, 0, err
	}
	defer done()
	ids := make([][16]byte, n)
	for i := range ids {
		var key [32]byte
		rand.Read(ids[i][:])
		rand.Read(key[:])
		if err := ring.Put(ids[i], key); err != nil {
			return 0, 0, err
		}
	}
	if err := ring.Sync(); err != nil {
		return 0, 0, err
	}
	size, err := fileSize(path)
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	for c := 0; c < n; c += 1024 {
		if err := ring.Erase(ids[c:min(c+1024, n)]); err != nil {
			return 0, 0, err
		}
	}
	return float64(n) / time.Since(t0).Seconds(), float64(size) / float64(n), nil
}

// keyringSyncCost is what the commit loop adds to a batch with n level-1
// or level-2 messages before Pebble's own write and fsync: n keys put into
// a keyring file (one pwrite each) and one Sync, timed in dingbench on the
// same disk, median of 20.
func keyringSyncCost(tmp string, n int) (time.Duration, error) {
	ring, _, done, err := tempKeyring(tmp)
	if err != nil {
		return 0, err
	}
	defer done()
	var ds bench.Latencies
	for range 20 {
		t0 := time.Now()
		for range n {
			var id [16]byte
			var key [32]byte
			rand.Read(id[:])
			if err := ring.Put(id, key); err != nil {
				return 0, err
			}
		}
		if err := ring.Sync(); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(t0))
	}
	return ds.Quantile(0.5), nil
}
