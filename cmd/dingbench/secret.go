package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dingmq/ding/bench"
)

// The secret scenario measures secret chats (engine/secret.go) on a real
// dingd over loopback, each figure beside a baseline from the same run:
//
//  1. Submit throughput. Pairs of online users send to each other one
//     message at a time through the Go client: plain 1:1 messages, then in
//     a level-1 chat, then in a level-3 chat, in rotating windows, so each
//     kind runs at the same concurrency and body size and drift is shared.
//  2. Burn lateness. Thousands of level-3 chats (5 s burn delay) between
//     other online users; every recipient reads its messages at the same
//     moment, so the burns fall due within the same second; for each burn,
//     the time from its deadline to the BURN frame arriving at both
//     parties, beside time.AfterFunc timers set for the same deadlines in
//     dingbench, and the server's ding_secret_burn_lateness_seconds.
//  3. Bulk burns. Every message of phase 1 is read at once, level 3 (keys
//     in memory) first, then level 1 (keys in the keyring file, erased and
//     synced once per batch): burns/s, beside the keyring's own erase rate
//     measured in dingbench.
//  4. Costs: keyring bytes per live message, and dingd's restart time with
//     N live level-1 messages (start-up reconciles the keyring with the
//     store) beside a restart with N plain ones, and with N live level-3
//     messages (burned before the server is ready).
//
// A burn's deadline is known only within bounds: the server arms it at
// the commit of the READ, between the moment dingbench sent the READ and
// the moment its OK arrived. Lateness is reported from the earlier bound
// (READ sent + delay), which can only overstate it, and from the later one
// (OK + delay), which can only understate it.

// burnDelay is the level-3 chats' burn delay, the shortest allowed; dingd
// runs with --burn-after 5s so that level-1 messages burn as fast.
const burnDelay = 5 * time.Second

// secretConfig sizes the secret scenario.
type secretConfig struct {
	Bin, Tmp string
	Pairs    int           // phase 1: user pairs, both sending (2×Pairs connections); zero means 500
	Payload  int           // body bytes; zero means 256
	Warmup   time.Duration // phase 1: plain submits before the windows; zero means 2s
	Round    time.Duration // phase 1: each kind's window per round; zero means 2s, at least 2s
	Rounds   int           // phase 1: zero means 3
	Chats    int           // phase 2: level-3 chats, each between two users of its own; zero means 3000
	PerChat  int           // phase 2: messages per chat; zero means 2
	Live     int           // phase 4: live messages at a restart; zero means 50,000
	Restarts int           // phase 4: restarts of each server; zero means 3
	Pprof    string        // dingd --pprof address for the main server; empty: off
	Profile  string        // with Pprof: write dingd CPU profiles to Profile-<phase>.pprof
}

func (c *secretConfig) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Pairs, 500)
	def(&c.Payload, 256)
	def(&c.Rounds, 3)
	def(&c.Chats, 3000)
	def(&c.PerChat, 2)
	def(&c.Live, 50_000)
	def(&c.Restarts, 3)
	if c.Warmup <= 0 {
		c.Warmup = 2 * time.Second
	}
	c.Round = max(c.Round, 2*time.Second)
	c.Payload = max(c.Payload, 8) // the send time goes in the first 8 bytes
}

// secretRun is one run of the scenario.
type secretRun struct {
	cfg      secretConfig
	srv      *bench.Server
	profiles sync.WaitGroup // CPU profiles being fetched
	profErr  []error        // guarded by profMu
	profMu   sync.Mutex
}

// runSecret runs the scenario and returns its table.
func runSecret(cfg secretConfig) (bench.Table, error) {
	cfg.setDefaults()
	start := time.Now()
	args := []string{"--burn-after", burnDelay.String()}
	if cfg.Pprof != "" {
		args = append(args, "--pprof", cfg.Pprof)
	}
	srv, err := bench.StartServer(cfg.Bin, cfg.Tmp, 2*cfg.Pairs, args...)
	if err != nil {
		return bench.Table{}, err
	}
	defer srv.Stop()
	if err := srv.AddUsers("b", 0, 2*cfg.Chats); err != nil {
		return bench.Table{}, err
	}
	r := &secretRun{cfg: cfg, srv: srv}
	defer r.profiles.Wait()

	logf("secret: phase 1, submit throughput (%d connections)", 2*cfg.Pairs)
	tp, ps, err := r.throughput()
	if err != nil {
		return bench.Table{}, err
	}
	defer func() { closeParties(ps) }() // ps is nil once closed below
	ringA, err := fileSize(filepath.Join(srv.Data, "secret.keys"))
	if err != nil {
		return bench.Table{}, err
	}

	logf("secret: phase 2, burn lateness (%d level-3 chats, %d connections)", cfg.Chats, 2*cfg.Chats)
	lat, err := r.lateness()
	if err != nil {
		return bench.Table{}, err
	}

	logf("secret: phase 3, bulk reads and burns of phase 1's messages")
	plainReads, plainCPU, err := r.readPlain(ps)
	if err != nil {
		return bench.Table{}, fmt.Errorf("bulk plain reads: %w", err)
	}
	bulk3, err := r.burnRun(pairJobs(ps, 3), 3, "bulk-l3")
	if err != nil {
		return bench.Table{}, fmt.Errorf("bulk level-3 burns: %w", err)
	}
	bulk1, err := r.burnRun(pairJobs(ps, 1), 1, "bulk-l1")
	if err != nil {
		return bench.Table{}, fmt.Errorf("bulk level-1 burns: %w", err)
	}
	ringAfter, err := fileSize(filepath.Join(srv.Data, "secret.keys"))
	if err != nil {
		return bench.Table{}, err
	}
	closeParties(ps)
	ps = nil
	srv.Stop()

	logf("secret: phase 4, keyring erase baseline and restarts (%d live messages)", cfg.Live)
	erase, aloneBytes, err := keyringAlone(cfg.Tmp, bulk1.n)
	if err != nil {
		return bench.Table{}, err
	}
	l1 := tp.kinds[1]
	perBatch := 1
	if l1.batches > 0 {
		perBatch = max(1, int(l1.ops/l1.batches))
	}
	ringSync, err := keyringSyncCost(cfg.Tmp, perBatch)
	if err != nil {
		return bench.Table{}, err
	}
	rs, err := restarts(cfg)
	if err != nil {
		return bench.Table{}, err
	}
	r.profiles.Wait()
	for _, err := range r.profErr {
		logf("secret: %v", err)
	}
	return r.table(tp, lat, plainReads, plainCPU, bulk3, bulk1, erase, rs, keyringFigures{
		size: ringA, live1: float64(tp.kinds[1].received), after: ringAfter,
		syncCost: ringSync, syncKeys: perBatch, aloneBytes: aloneBytes,
	}, time.Since(start)), nil
}

// keyringFigures is the main server's keyring file after phase 1 and
// after every message burned.
type keyringFigures struct {
	size, after int64
	live1       float64 // live level-1 messages (all of phase 1's)
	// syncCost is syncKeys keys put and synced in a fresh keyring file:
	// what a level-1 batch of phase 1's mean size adds before its commit.
	syncCost time.Duration
	syncKeys int
	// aloneBytes is a fresh keyring file's bytes per key, holding phase
	// 3's level-1 keys in package keyring alone.
	aloneBytes float64
}

// profile fetches dingd's CPU profile over the next d into
// Profile-name.pprof, if profiling was asked for.
func (r *secretRun) profile(name string, d time.Duration) {
	if r.cfg.Pprof == "" || r.cfg.Profile == "" || name == "" {
		return
	}
	r.profiles.Add(1)
	go func() {
		defer r.profiles.Done()
		file := r.cfg.Profile + "-" + name + ".pprof"
		if err := bench.FetchProfile(r.cfg.Pprof, file, max(1, int(d.Seconds()))); err != nil {
			r.profMu.Lock()
			r.profErr = append(r.profErr, fmt.Errorf("profile %s: %w", name, err))
			r.profMu.Unlock()
			return
		}
		logf("secret: wrote %s", file)
	}()
}

func fileSize(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// logf reports progress on stderr (the table goes to stdout).
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}
