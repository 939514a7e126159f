package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/cluster/relay"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/keyring"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/fanout"
)

// Several partitions in one process (Config.Partitions, dingd
// --partitions; experimental: stage 4 of cluster/PARTITIONS.md).
//
// Users are spread over P partitions by
//
//	partition(user) = uint32(fanout.PartitionOf(user)) * P / 1024
//
// (contiguous ranges of the 1024 slots). Each partition has its own
// Pebble store and keyring and its own engine (engine.Config.Placement),
// which holds its users' streams and the messages they send; what one of
// its ops owes a user of another partition goes through its outbox, and
// one relay.Pump moves the outboxes to their destinations in process.
// The data directory then holds, instead of DATA/store and
// DATA/secret.keys:
//
//	DATA/partitions          P, recorded at the first start (placement
//	                         must never change under stored data)
//	DATA/dir/store           the directory's store, with its own engine
//	                         (no users) as the directory's Committer
//	DATA/p/N/store           partition N's store
//	DATA/p/N/secret.keys     partition N's keys of secret messages
//
// The stores share one block cache and file cache (pebblestore.Shared),
// with memtables of max(4 MiB, 64 MiB/P) each; each engine's message
// cache is 64 MiB/P. The engines' and publishers' metrics carry a
// partition label ("dir" for the directory's engine).
//
// Every engine reads the one in-memory directory (Recipients, Contacts,
// Active). One hub serves every user: its Source is the router
// (router.go), and each engine's Sink is a publisher of its own into it.
//
// Offboarding is two steps (PARTITIONS.md §2.4): the directory's change
// on the directory's engine, which every engine's commit loop sees at
// once (Directory.Active), then engine.Forget on every partition with the
// removal's audit seq. At each start the removals above each engine's
// ForgottenThrough are applied again (forgetRemoved), so an offboarding
// cut short by a crash is completed. When applying them fails (a full
// disk makes the engines read-only; a store failed), the node does not
// stop there: forgetLoop retries until they are applied, meanwhile the
// removed user is refused everywhere already (Directory.Active).
//
// Limits (refused with a clear error rather than done half):
//   - backups (POST /v1/backup and /v1/backup/verify answer 501),
//     --restore-from, and cluster mode (dingd check checks every store);
//   - the org's SMS, call and e-mail budgets (Quotas.SMSPerDay,
//     CallsPerDay, EmailsPerDay) are counted per partition, so the node
//     may send up to P times them;
//   - the disk reserve is raised to what P+1 stores' write-ahead logs
//     need (MinDiskReserve);
//   - see router.go for AdminStats' percentiles and inbound SMS.

// MaxPartitions is the most partitions Config.Partitions may ask for.
const MaxPartitions = 64

// PartitionsFile is the file in the data directory recording how many
// partitions its stores hold.
const PartitionsFile = "partitions"

// checkPartitionsConfig refuses a partition count out of range or with
// what does not work with several partitions yet.
func checkPartitionsConfig(cfg *Config) error {
	p := cfg.Partitions
	switch {
	case p < 0 || p > MaxPartitions:
		return fmt.Errorf("node: partitions %d: want 1 to %d", p, MaxPartitions)
	case p > 1 && cfg.Replicate != nil:
		return errors.New("node: --partitions is not supported in cluster mode yet")
	case p > 1 && cfg.RestoreFrom != "":
		return errors.New("node: --restore-from is not supported with --partitions yet (backups are of one store)")
	}
	return nil
}

// RecordedPartitions returns how many partitions dataDir's stores hold,
// as recorded at its first start with --partitions; 0 for a data dir of
// one store, or a new one.
func RecordedPartitions(dataDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, PartitionsFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("node: read %s: %w", PartitionsFile, err)
	}
	p, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || p < 2 || p > MaxPartitions {
		return 0, fmt.Errorf("node: %s holds %q, not a partition count from 2 to %d", filepath.Join(dataDir, PartitionsFile), b, MaxPartitions)
	}
	return p, nil
}

// checkLayout refuses to start p partitions on a data dir whose stores
// were made for another count (placement must never change under stored
// data), and records p at the first start with several partitions.
func checkLayout(dataDir string, p int) error {
	rec, err := RecordedPartitions(dataDir)
	if err != nil {
		return err
	}
	if p <= 1 {
		if rec > 1 {
			return fmt.Errorf("node: %s holds %d partitions (recorded in %s): start it with --partitions %d", dataDir, rec, PartitionsFile, rec)
		}
		return nil
	}
	if rec == p {
		return nil
	}
	if rec != 0 {
		return fmt.Errorf("node: %s holds %d partitions (recorded in %s), not %d: users' placement must never change under stored data; start it with --partitions %d", dataDir, rec, PartitionsFile, p, rec)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "store")); err == nil {
		return fmt.Errorf("node: %s holds the store of a single partition (store/): it cannot be started with --partitions %d; start it without --partitions", dataDir, p)
	}
	for _, d := range []string{"p", "dir"} {
		if _, err := os.Stat(filepath.Join(dataDir, d)); err == nil {
			return fmt.Errorf("node: %s holds partition stores (%s/) but no %s recording their count: refusing to guess it", dataDir, d, PartitionsFile)
		}
	}
	return writeFileAtomic(filepath.Join(dataDir, PartitionsFile), []byte(strconv.Itoa(p)+"\n"))
}

// writeFileAtomic writes path through a synced temporary file renamed
// into place, and syncs the directory.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("node: write %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		var d *os.File
		if d, err = os.Open(filepath.Dir(path)); err == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("node: write %s: %w", path, err)
	}
	return nil
}

// partitionSet is a node's partitions: their stores, keyrings and
// engines, the directory's store and engine, and the pump. Its fields
// are set by openPartitions and not changed after.
type partitionSet struct {
	n      uint32
	log    *slog.Logger
	dir    *fanout.Directory
	shared *pebblestore.Shared
	dirDB  *pebblestore.DB
	dirEng *engine.Engine
	dbs    []*pebblestore.DB
	rings  []*keyring.Ring
	engs   []*engine.Engine
	pump   *relay.Pump

	// forgetMu serialises forgetRemoved: each engine must apply the
	// removals in audit order (Forget skips one at or below its
	// watermark).
	forgetMu sync.Mutex

	// retryForget wakes forgetLoop (capacity 1, coalesced) after
	// forgetRemoved failed; stopForget ends it, forgetDone says it ended.
	retryForget chan struct{}
	stopForget  chan struct{}
	forgetDone  chan struct{}
	stopOnce    sync.Once
}

// of is the placement: user's partition.
func (s *partitionSet) of(user string) uint32 {
	return uint32(fanout.PartitionOf(user)) * s.n / fanout.Partitions
}

// all is every engine, the directory's last.
func (s *partitionSet) all() []*engine.Engine {
	return append(append([]*engine.Engine(nil), s.engs...), s.dirEng)
}

// openPartitions opens cfg.Partitions partitions (see the comment at the
// top of this file), the directory on its own store and engine, the hub,
// a publisher per engine and the pump.
func (n *Node) openPartitions(cfg Config, reg *prometheus.Registry, guard *diskGuard, closersp *[]func()) (w wiring, err error) {
	closers := *closersp
	defer func() { *closersp = closers }()
	p := cfg.Partitions
	set := &partitionSet{n: uint32(p), log: cfg.Logger,
		retryForget: make(chan struct{}, 1), stopForget: make(chan struct{}), forgetDone: make(chan struct{})}
	n.parts = set
	set.shared = pebblestore.NewShared(0, p+1, memTableBytes(p))
	closers = append(closers, set.shared.Close)
	open := func(dir string) (*pebblestore.DB, error) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
		db, err := pebblestore.Open(dir, pebblestore.Options{Logger: cfg.Logger, Shared: set.shared})
		if errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EAGAIN) {
			return nil, &DataDirInUseError{Dir: cfg.DataDir}
		}
		return db, err
	}
	if set.dirDB, err = open(filepath.Join(cfg.DataDir, "dir", "store")); err != nil {
		return w, err
	}
	closers = append(closers, func() { set.dirDB.Close() })
	set.dbs = make([]*pebblestore.DB, p)
	for i := range p {
		if set.dbs[i], err = open(partitionDir(cfg.DataDir, i, "store")); err != nil {
			return w, err
		}
		db := set.dbs[i]
		closers = append(closers, func() { db.Close() })
	}
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ding_store_used_bytes",
		Help: "Bytes the store's files take on disk (tables, write-ahead logs, manifests); retention keeps it flat. With partitions, all the stores together.",
	}, func() float64 {
		sum := set.dirDB.DiskUsage()
		for _, db := range set.dbs {
			sum += db.DiskUsage()
		}
		return float64(sum)
	})); err != nil {
		return w, fmt.Errorf("node: %w", err)
	}
	keys, backupRoot, ns, err := n.openCommon(cfg, reg, set.dirDB)
	if err != nil {
		return w, err
	}
	set.dir = n.dir
	wrap := func(part string) prometheus.Registerer {
		return prometheus.WrapRegistererWith(prometheus.Labels{"partition": part}, reg)
	}
	// The directory's engine: it holds no user, and only commits the
	// directory's changes (their audit entries, offboarding's decision).
	if set.dirEng, err = engine.Open(engine.Config{
		Store: set.dirDB, Clock: cfg.Clock, MaxBody: cfg.MaxBody, Logger: cfg.Logger.With("partition", "dir"),
		Registerer: wrap("dir"), MessageCacheBytes: -1,
	}); err != nil {
		return w, fmt.Errorf("node: directory engine: %w", err)
	}
	closers = append(closers, func() { set.dirEng.Close() })
	set.rings = make([]*keyring.Ring, p)
	set.engs = make([]*engine.Engine, p)
	for i := range p {
		if set.rings[i], err = keyring.Open(partitionDir(cfg.DataDir, i, SecretKeysFile)); err != nil {
			return w, fmt.Errorf("node: partition %d: %w", i, err)
		}
		ring := set.rings[i]
		closers = append(closers, func() { ring.Close() })
		var st store.Store = set.dbs[i]
		if cfg.wrapPartition != nil {
			st = cfg.wrapPartition(i, st)
		}
		if set.engs[i], err = engine.Open(engine.Config{
			Store: st, Clock: cfg.Clock, Recipients: n.dir, MaxBody: cfg.MaxBody,
			Logger: cfg.Logger.With("partition", i), Registerer: wrap(strconv.Itoa(i)),
			Contacts: n.dir, Notifier: ns.engine, Quotas: cfg.Quotas, NoCallFallback: cfg.NoCallFallback,
			Keys: ring, BurnAfter: cfg.BurnAfter, SecretUnreadTTL: cfg.SecretUnreadTTL,
			Retention: cfg.Retention, MessageCacheBytes: (64 << 20) / p,
			Partition: uint32(i), Placement: set.of,
		}); err != nil {
			return w, fmt.Errorf("node: partition %d: %w", i, err)
		}
		eng := set.engs[i]
		closers = append(closers, func() { eng.Close() })
	}
	if guard != nil {
		guard.attach(func(reason error) {
			for _, e := range set.all() {
				e.SetReadOnly(reason)
			}
		}, func() error {
			errs := []error{set.dirDB.Flush()}
			for _, db := range set.dbs {
				errs = append(errs, db.Flush())
			}
			return errors.Join(errs...)
		})
		n.guard = guard
	}
	n.unready = func() string {
		for i, e := range set.all() {
			if err := e.Err(); err != nil && !errors.Is(err, engine.ErrClosed) {
				name := "the directory's store"
				if i < len(set.engs) {
					name = fmt.Sprintf("partition %d's store", i)
				}
				return name + " failed a write; writes are refused until dingd restarts: " + err.Error()
			}
		}
		if guard != nil {
			return guard.Why()
		}
		return ""
	}
	n.dir.SetCommitter(set.dirEng)
	rt := &router{set: set}
	own := fanout.SingleNode{} // this node owns every partition
	if n.hub, err = fanout.NewHub(fanout.HubConfig{
		Source: rt, Encode: new(session.Encoder).AppendEntry, Ownership: own, Logger: cfg.Logger, Registerer: reg,
	}); err != nil {
		return w, err
	}
	closers = append(closers, n.hub.Close)
	// Delivery: each engine → its Publisher (the Sink) → the one hub.
	for i, e := range set.engs {
		pub, err := fanout.NewPublisher(fanout.PublisherConfig{
			Broker: fanout.NewLocalBroker(n.hub, own), Presence: n.hub,
			Logger: cfg.Logger, Registerer: wrap(strconv.Itoa(i)),
		})
		if err != nil {
			return w, err
		}
		e.SetSink(pub)
		e.SetPresence(n.hub)
	}
	origins, dests := map[uint32]relay.Origin{}, map[uint32]relay.Dest{}
	for i, e := range set.engs {
		origins[uint32(i)], dests[uint32(i)] = e, e
	}
	// The pump's backoff runs on the system clock, not cfg.Clock: a
	// test's fake clock standing still must not hold up a retry.
	if set.pump, err = relay.New(relay.Config{Origins: origins, Dests: dests, Registerer: reg, Logger: cfg.Logger}); err != nil {
		return w, fmt.Errorf("node: %w", err)
	}
	closers = append(closers, set.pump.Close) // closed before the engines
	go set.forgetLoop()
	closers = append(closers, set.stopForgetLoop)
	if _, err := set.forgetRemoved(context.Background()); err != nil {
		set.log.Error("applying the directory's removals to the partitions failed; retrying in the background", "err", err)
		set.wakeForget()
	}
	return wiring{sess: rt, api: rt, reports: rt, keys: keys, backupRoot: backupRoot, notifier: ns.twilio, email: ns.email, confirmer: rt,
		backupRefusal: "backups are not supported with --partitions (experimental) yet: stop dingd and copy the data dir instead"}, nil
}

// memTableBytes is the memtable size of each store of p partitions
// (and of the directory's): max(4 MiB, 64 MiB/p).
func memTableBytes(p int) int64 { return max(4<<20, (64<<20)/int64(max(p, 1))) }

// MinDiskReserve is the least disk reserve (Config.DiskReserve) a node
// of p partitions runs with; 0 for one partition, whose reserve is as
// configured. Each of the p+1 stores preallocates a write-ahead log of
// 110% of a memtable on its first write, and another when its memtable
// is flushed (the disk guard flushes them all when the disk fills), so
// the reserve must hold two per store, plus 32 MiB for the tables a
// flush writes: 208 MiB for 4 partitions, 182 MiB for 16, 604 MiB for
// 64. A smaller reserve let a store's write fail for want of space
// (found by TestDiskFullWithPartitions), which stops its engine until a
// restart; Start raises it, with a warning.
func MinDiskReserve(p int) int64 {
	if p <= 1 {
		return 0
	}
	return int64(p+1)*memTableBytes(p)*22/10 + 32<<20
}

// partitionDir is DATA/p/N/name.
func partitionDir(dataDir string, i int, name string) string {
	return filepath.Join(dataDir, "p", strconv.Itoa(i), name)
}

// forgetRemoved applies to every partition engine, in audit order, the
// directory's removals (audit action user.remove) above its
// ForgottenThrough: engine.Forget stops the pending DINGs whose home it
// is and burns the secret messages it holds. A removal of a user who is
// active again (added back since) is skipped: it was superseded, and
// forgetting them now would stop what they were sent since.
func (s *partitionSet) forgetRemoved(ctx context.Context) (engine.Offboarded, error) {
	s.forgetMu.Lock()
	defer s.forgetMu.Unlock()
	var did engine.Offboarded
	through := make([]uint64, len(s.engs))
	after := uint64(math.MaxUint64)
	for i, e := range s.engs {
		t, err := e.ForgottenThrough()
		if err != nil {
			return did, fmt.Errorf("partition %d: %w", i, err)
		}
		through[i], after = t, min(after, t)
	}
	for {
		es, err := s.dir.Audit(after, 500)
		if err != nil {
			return did, err
		}
		if len(es) == 0 {
			return did, nil
		}
		for _, a := range es {
			after = a.Seq
			if a.Action != "user.remove" || s.dir.Active(a.Target) {
				continue
			}
			for i, e := range s.engs {
				if a.Seq <= through[i] {
					continue
				}
				r, err := e.Forget(ctx, a.Target, a.Seq)
				if err != nil {
					return did, fmt.Errorf("partition %d: forget %s (audit %d): %w", i, a.Target, a.Seq, err)
				}
				did.DingsStopped += r.DingsStopped
				did.SecretsBurned += r.SecretsBurned
			}
		}
	}
}

// wakeForget asks forgetLoop to run forgetRemoved again.
func (s *partitionSet) wakeForget() {
	select {
	case s.retryForget <- struct{}{}:
	default:
	}
}

// forgetLoop runs forgetRemoved again after a failure, every second
// (real time: what it waits for is a disk or a store, not a clock), until
// it succeeds or the node stops. Owned by the partitionSet: stopped by
// stopForgetLoop before the engines shut down.
func (s *partitionSet) forgetLoop() {
	defer close(s.forgetDone)
	for {
		select {
		case <-s.stopForget:
			return
		case <-s.retryForget:
		}
		for done := false; !done; {
			t := time.NewTimer(time.Second)
			select {
			case <-s.stopForget:
				t.Stop()
				return
			case <-t.C:
			}
			// Not cancelled by a stop: the engines run until this loop
			// has ended, and Forget answers once its batch is durable or
			// refused.
			_, err := s.forgetRemoved(context.Background())
			if done = err == nil; done {
				s.log.Info("applied the directory's removals to every partition")
			} else {
				s.log.Warn("applying the directory's removals to the partitions failed again; retrying", "err", err)
			}
		}
	}
}

// stopForgetLoop ends forgetLoop and waits for it. Idempotent.
func (s *partitionSet) stopForgetLoop() {
	s.stopOnce.Do(func() { close(s.stopForget) })
	<-s.forgetDone
}

// offboardPartitions is Offboard with several partitions: the removal is
// decided, durably, on the directory's engine (every partition's commit
// loop then refuses the user: they read the same directory), the user's
// connections are closed, and every partition applies it (Forget). If
// that fails, the removal stands and is retried in the background
// (forgetLoop); a retry of the request, or the next start, completes it
// too.
func (n *Node) offboardPartitions(ctx context.Context, user string, actor fanout.Actor) error {
	if _, err := n.dir.RemoveUser(user, actor); err != nil {
		return fmt.Errorf("node: offboard %s: %w", user, err)
	}
	kicked := n.hub.Kick(user, fanout.ErrUserRemoved)
	did, err := n.parts.forgetRemoved(ctx)
	if err != nil {
		n.parts.wakeForget()
		return fmt.Errorf("node: offboard %s: removed from the directory, not yet on every partition (a retry completes it): %w", user, err)
	}
	n.log.Info("user offboarded", "user", user, "actor", actor.Name, "connections_closed", kicked,
		"dings_stopped", did.DingsStopped, "secrets_burned", did.SecretsBurned)
	return nil
}

// shutdownEngines closes the pump, then the partitions' engines, then the
// directory's.
func (s *partitionSet) shutdownEngines(ctx context.Context) error {
	s.stopForgetLoop()
	s.pump.Close()
	var errs []error
	var wg sync.WaitGroup
	errc := make([]error, len(s.engs))
	for i, e := range s.engs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.Shutdown(ctx); err != nil {
				errc[i] = fmt.Errorf("partition %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	errs = append(errs, errc...)
	if ctx.Err() == nil {
		if err := s.dirEng.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("directory: %w", err))
		}
	}
	return errors.Join(errs...)
}

// closeStores closes the keyrings, the stores and the shared caches,
// once the engines are shut down.
func (s *partitionSet) closeStores() []error {
	var errs []error
	for _, r := range s.rings {
		errs = append(errs, r.Close())
	}
	for _, db := range s.dbs {
		errs = append(errs, db.Close())
	}
	errs = append(errs, s.dirDB.Close())
	s.shared.Close()
	return errs
}

// Engines returns the partitions' engines, by partition (nil with one
// partition: Engine has it).
func (n *Node) Engines() []*engine.Engine {
	if n.parts == nil {
		return nil
	}
	return n.parts.engs
}

// PartitionOf returns the partition of user on this node (0 with one).
func (n *Node) PartitionOf(user string) int {
	if n.parts == nil {
		return 0
	}
	return int(n.parts.of(user))
}
