package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/channels/webhook"
	"github.com/dingmq/ding/cluster"
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
// Each partition's engine, keyring and store are its runtime, which the
// node attaches at start; detachPartition and attachPartition stop and
// start serving one while the node runs (what a cluster node will do as
// its member loses and takes the partition's lease: stage 5a), its
// metrics on a registry of its own that /metrics gathers while it is
// attached.
//
// Every engine reads the one in-memory directory (Recipients, Contacts,
// Active). One hub serves every user: its Source is the router
// (router.go), and each engine's Sink is a publisher of its own into it.
//
// The org's SMS, call and e-mail budgets (Quotas.SMSPerDay, CallsPerDay,
// EmailsPerDay) hold for the node as a whole: each engine counts its own sends, and one
// sharedBudget (budget.go) counts them all.
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
// Outbound webhooks (internal/node/webhooks.go): every engine, the
// directory's included (user.added, user.removed), has its own event
// outbox; a subscription is stored on each, with the same id and secret,
// and has a cursor and a delivery worker on each. Event ids name the
// outbox ("evt_2_17", "evt_dir_5"); order holds per outbox.
//
// Limits (refused with a clear error rather than done half):
//   - backups (POST /v1/backup and /v1/backup/verify answer 501),
//     --restore-from, and cluster mode (dingd check checks every store);
//   - the disk reserve is raised to what P+1 stores' write-ahead logs
//     need (MinDiskReserve);
//   - see router.go for AdminStats' percentiles.

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

// partitionSet is a node's partitions: the runtime of each partition
// this node serves (its store, keyring and engine), the directory's store
// and engine, and the pump. The table of runtimes changes at run time
// (attach, detach: cluster mode serves a partition while its member owns
// it); a node of --partitions attaches every partition at start.
type partitionSet struct {
	n      uint32
	log    *slog.Logger
	dir    *fanout.Directory
	shared *pebblestore.Shared
	dirDB  *pebblestore.DB
	dirEng *engine.Engine
	pump   *relay.Pump
	hub    *fanout.Hub

	// parts[p] is partition p's runtime while this node serves it;
	// stores[p] its store from when it is opened until it is closed
	// (before the engine opens and after it closes: the org's budget
	// counts from the stores).
	parts  []atomic.Pointer[partRuntime]
	stores []atomic.Pointer[pebblestore.DB]
	// dirOwned holds the metrics of the directory's partition while this
	// cluster node owns it (dirmember.go).
	dirOwned atomic.Pointer[prometheus.Registry]
	// The webhook dispatcher delivers the outboxes this node serves
	// (webhooks.go): hookOn names those attached to it; hookDir is the
	// directory's outbox when this node delivers it (the directory's
	// engine; in a cluster, the directory partition's while this node
	// owns it). Guarded by hookMu.
	hookMu   sync.Mutex
	hookDisp *webhook.Dispatcher
	hookDir  *engine.Engine
	hookOn   map[string]bool
	// What a partition's engine is opened with besides its store.
	notifier engine.Notifier
	budget   engine.Budget
	// notServed makes the cause of the error for a user of a partition
	// this node does not serve now (cluster mode: a *fanout.NotOwnerError
	// naming the owner, which a session redirects its device by); nil
	// means none (notServedError).
	notServed atomic.Pointer[func(user string, p uint32) error]

	// forgetMu serialises forgetRemoved: each engine must apply the
	// removals in audit order (Forget skips one at or below its
	// watermark).
	forgetMu sync.Mutex

	// retryForget wakes forgetLoop (capacity 1, coalesced) after
	// forgetRemoved failed; stopForget ends forgetCtx, and with it the
	// loop and a Forget it waits for (one whose batch cannot become
	// durable: a partition with no standby); forgetDone says it ended.
	retryForget chan struct{}
	forgetCtx   context.Context
	stopForget  context.CancelFunc
	forgetDone  chan struct{}
}

// partRuntime is one partition as this node serves it.
type partRuntime struct {
	p    uint32
	db   *pebblestore.DB
	ring *keyring.Ring
	eng  *engine.Engine
	// reg holds the engine's and its publisher's metrics (labelled with
	// the partition); /metrics gathers it while the partition is
	// attached.
	reg *prometheus.Registry

	set       *partitionSet
	closeOnce sync.Once
	closeErr  error
}

// errNotServed is returned for a user (or an id) of a partition this
// node does not serve now, wrapped in a notServedError naming the
// partition when there is one.
var errNotServed = engine.NewError(engine.CodeUnavailable, "node: this user's partition is not served here now")

// notServedError is errNotServed for partition p: UNAVAILABLE (retry)
// to a client, and for the admin API an answer naming the partition
// (httpapi.Elsewhere), by which a cluster node sends the request on to
// the partition's owner (ownerProxy). cause, when set, is the error
// naming the owner (a *fanout.NotOwnerError: a session redirects its
// device by it).
type notServedError struct {
	p     uint32
	cause error
}

func (e *notServedError) Error() string {
	if e.cause != nil {
		return e.cause.Error()
	}
	return errNotServed.Error()
}

func (e *notServedError) Unwrap() []error {
	if e.cause != nil {
		return []error{errNotServed, e.cause}
	}
	return []error{errNotServed}
}

// ServedElsewhere implements httpapi.Elsewhere.
func (e *notServedError) ServedElsewhere() string { return strconv.FormatUint(uint64(e.p), 10) }

// runtime returns partition p's runtime, or nil if this node does not
// serve it now.
func (s *partitionSet) runtime(p uint32) *partRuntime {
	if p >= uint32(len(s.parts)) {
		return nil
	}
	return s.parts[p].Load()
}

// engineOf returns the engine of user's partition, or the error saying
// this node does not serve it.
func (s *partitionSet) engineOf(user string) (*engine.Engine, error) {
	p := s.of(user)
	if rt := s.runtime(p); rt != nil {
		return rt.eng, nil
	}
	e := &notServedError{p: p}
	if f := s.notServed.Load(); f != nil {
		e.cause = (*f)(user, p)
	}
	return nil, e
}

// attached returns the runtimes this node serves now, by partition.
func (s *partitionSet) attached() []*partRuntime {
	out := make([]*partRuntime, 0, len(s.parts))
	for i := range s.parts {
		if rt := s.parts[i].Load(); rt != nil {
			out = append(out, rt)
		}
	}
	return out
}

// engines returns the engines this node serves now, by partition.
func (s *partitionSet) engines() []*engine.Engine {
	rts := s.attached()
	out := make([]*engine.Engine, len(rts))
	for i, rt := range rts {
		out[i] = rt.eng
	}
	return out
}

// runtimeWrap is how a partition's runtime is opened in cluster mode
// (partmember.go): store wraps its store for its engine (a
// cluster.ReplicatedStore: every batch goes to the standby), given the
// partition's metrics registerer; keys wraps its keyring (a
// cluster.KeyShipper), after store.
type runtimeWrap struct {
	store func(db *pebblestore.DB, reg prometheus.Registerer) (store.Store, error)
	keys  func(engine.Keys) engine.Keys
}

// attachPartition opens partition p's store and engine and starts
// serving it (cluster mode: when this node's member takes it over, with
// wrap; nil opens it as it is).
func (n *Node) attachPartition(p uint32, wrap *runtimeWrap) error {
	s := n.parts
	if p >= s.n || s.parts[p].Load() != nil || s.stores[p].Load() != nil {
		return fmt.Errorf("node: partition %d is attached already, or being attached or detached", p)
	}
	db, err := s.openStore(partitionDir(n.cfg.DataDir, int(p), "store"), n.cfg)
	if err != nil {
		return err
	}
	s.stores[p].Store(db)
	rt, err := n.openRuntime(n.cfg, s, p, db, wrap)
	if err != nil {
		return err
	}
	if n.cfg.beforeAttach != nil {
		n.cfg.beforeAttach(p)
	}
	if err := s.attach(rt); err != nil {
		rt.close()
		return err
	}
	// Offboardings decided while another node served p (or before a
	// crash cut them short here) are applied to it now, or, when its
	// batch is not durable within forgetWait (a partition taken over
	// that waits for a standby), in the background: meanwhile the
	// commit loop refuses the removed users (Directory.Active). Waiting
	// on, the member serving the partition was held here, and with it
	// the node's stop.
	fctx, cancel := context.WithTimeout(context.Background(), forgetWait)
	_, err = s.forgetRemoved(fctx)
	cancel()
	if err != nil {
		s.log.Error("applying the directory's removals to a partition failed; retrying in the background", "partition", p, "err", err)
		s.wakeForget()
	}
	return nil
}

// detachPartition stops serving partition p (its users' connections are
// closed with why), shuts its engine down and closes its stores
// (cluster mode: when this node's member loses it).
func (n *Node) detachPartition(ctx context.Context, p uint32, why error) error {
	rt := n.parts.detach(p, why)
	if rt == nil {
		return fmt.Errorf("node: partition %d is not attached", p)
	}
	err := rt.eng.Shutdown(ctx)
	return errors.Join(err, rt.close())
}

// attach starts serving rt's partition: the router sends its users'
// calls to its engine, its publisher delivers into the hub, the pump
// drains its outbox, and the links to it from the partitions served here
// stop backing off.
func (s *partitionSet) attach(rt *partRuntime) error {
	if !s.parts[rt.p].CompareAndSwap(nil, rt) {
		return fmt.Errorf("node: partition %d is attached already", rt.p)
	}
	if err := s.pump.Attach(rt.p, rt.eng); err != nil {
		s.parts[rt.p].Store(nil)
		return fmt.Errorf("node: partition %d: %w", rt.p, err)
	}
	s.pump.Wake(rt.p) // what this node's other partitions owe it goes now
	s.hookAttach(rt.eng)
	return nil
}

// detach stops serving partition p and returns its runtime (nil if it
// was not attached), which nothing of the node uses any more: the router
// refuses its users, the pump no longer drains it, and its users'
// connections are closed with err (they reconnect to its new owner).
// The caller shuts the engine down and closes the stores.
func (s *partitionSet) detach(p uint32, err error) *partRuntime {
	rt := s.parts[p].Swap(nil)
	if rt == nil {
		return nil
	}
	s.pump.Detach(p)
	s.hookDetach(rt.eng.WebhookSource())
	if s.hub != nil {
		s.hub.KickWhere(func(user string) bool { return s.of(user) == p }, err)
	}
	return rt
}

// Gather implements prometheus.Gatherer: the metrics of the partitions
// attached now.
func (s *partitionSet) Gather() ([]*dto.MetricFamily, error) {
	var gs prometheus.Gatherers
	for _, rt := range s.attached() {
		gs = append(gs, rt.reg)
	}
	if r := s.dirOwned.Load(); r != nil {
		gs = append(gs, r)
	}
	return gs.Gather()
}

// of is the placement: user's partition.
func (s *partitionSet) of(user string) uint32 {
	return uint32(fanout.PartitionOf(user)) * s.n / fanout.Partitions
}

// all is every engine this node serves now, the directory's last.
func (s *partitionSet) all() []*engine.Engine {
	return append(s.engines(), s.dirEng)
}

// openPartitions opens cfg.Partitions partitions (see the comment at the
// top of this file), the directory on its own store and engine, the hub,
// the pump, and attaches every partition.
func (n *Node) openPartitions(cfg Config, reg *prometheus.Registry, guard *diskGuard, closersp *[]func()) (w wiring, err error) {
	closers := *closersp
	defer func() { *closersp = closers }()
	p := cfg.Partitions
	set := &partitionSet{n: uint32(p), log: cfg.Logger, parts: make([]atomic.Pointer[partRuntime], p), stores: make([]atomic.Pointer[pebblestore.DB], p),
		retryForget: make(chan struct{}, 1), forgetDone: make(chan struct{}), hookOn: map[string]bool{}}
	set.forgetCtx, set.stopForget = context.WithCancel(context.Background())
	n.parts = set
	set.shared = pebblestore.NewShared(0, p+1, memTableBytes(p))
	closers = append(closers, set.shared.Close)
	if set.dirDB, err = set.openStore(filepath.Join(cfg.DataDir, "dir", "store"), cfg); err != nil {
		return w, err
	}
	closers = append(closers, func() { set.dirDB.Close() })
	if cfg.peers != nil && cfg.peers.Metrics != nil {
		if err := reg.Register(cfg.peers.Metrics); err != nil {
			return w, fmt.Errorf("node: %w", err)
		}
	}
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ding_store_used_bytes",
		Help: "Bytes the store's files take on disk (tables, write-ahead logs, manifests); retention keeps it flat. With partitions, all the stores together.",
	}, func() float64 {
		sum := set.dirDB.DiskUsage()
		for _, rt := range set.attached() {
			sum += rt.db.DiskUsage()
		}
		return float64(sum)
	})); err != nil {
		return w, fmt.Errorf("node: %w", err)
	}
	keys, backupRoot, ns, err := n.openCommon(cfg, reg, set.dirDB)
	if err != nil {
		return w, err
	}
	closers = append(closers, ns.push.Close) // run after the engines' (in reverse)
	set.dir = n.dir
	// The directory's engine: it holds no user, and only commits the
	// directory's changes (their audit entries, offboarding's decision).
	if set.dirEng, err = engine.Open(engine.Config{
		Store: set.dirDB, Clock: cfg.Clock, MaxBody: cfg.MaxBody, Logger: cfg.Logger.With("partition", "dir"),
		Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"partition": "dir"}, reg), MessageCacheBytes: -1, HookSource: "dir",
	}); err != nil {
		return w, fmt.Errorf("node: directory engine: %w", err)
	}
	closers = append(closers, func() { set.dirEng.Close() })
	if guard != nil {
		guard.attach(func(reason error) {
			for _, e := range set.all() {
				e.SetReadOnly(reason)
			}
		}, func() error {
			errs := []error{set.dirDB.Flush()}
			for _, rt := range set.attached() {
				errs = append(errs, rt.db.Flush())
			}
			return errors.Join(errs...)
		})
		n.guard = guard
	}
	n.unready = func() string {
		for _, rt := range set.attached() {
			if err := rt.eng.Err(); err != nil && !errors.Is(err, engine.ErrClosed) {
				return fmt.Sprintf("partition %d's store failed a write; writes are refused until dingd restarts: %s", rt.p, err)
			}
		}
		if err := set.dirEng.Err(); err != nil && !errors.Is(err, engine.ErrClosed) {
			return "the directory's store failed a write; writes are refused until dingd restarts: " + err.Error()
		}
		if guard != nil {
			return guard.Why()
		}
		return ""
	}
	if cfg.peers != nil && cfg.peers.Directory != nil {
		n.dir.SetCommitter(cfg.peers.Directory) // the directory's partition's owner commits (dirmember.go)
	} else {
		n.dir.SetCommitter(set.dirEng)
		set.hookDir = set.dirEng
	}
	rt := &router{set: set}
	own := fanout.SingleNode{} // this node owns every partition
	if n.hub, err = fanout.NewHub(fanout.HubConfig{
		Source: rt, Encode: new(session.Encoder).AppendEntry, Ownership: own, Logger: cfg.Logger, Registerer: reg,
	}); err != nil {
		return w, err
	}
	set.hub = n.hub
	closers = append(closers, n.hub.Close)
	ns.pushDeps.set.Store(set)
	ns.pushDeps.hub.Store(n.hub)
	// The pump's backoff runs on the system clock, not cfg.Clock: a
	// test's fake clock standing still must not hold up a retry.
	dests := map[uint32]relay.Dest{}
	var routes map[string]http.Handler
	var codec *cluster.KeyCodec
	if cfg.peers != nil {
		if codec, err = cluster.NewKeyCodec(cfg.peers.Secret); err != nil {
			return w, fmt.Errorf("node: %w", err)
		}
	}
	for i := range p {
		d := routeDest{set: set}
		if cfg.peers != nil {
			d.remote = &relay.HTTPDest{To: uint32(i), Owner: cfg.peers.Owner, Client: cfg.peers.Client, Secret: cfg.peers.Secret, Sealer: codec, Timeout: cfg.relayTimeout}
			d.forget = cfg.peers.Forget
		}
		dests[uint32(i)] = d
	}
	if cfg.peers != nil {
		h, err := relay.Handler(relay.HandlerConfig{Secret: cfg.peers.Secret, Sealer: codec, Local: func(to uint32) (relay.Dest, bool) {
			if rt := set.runtime(to); rt != nil {
				return rt.eng, true
			}
			return nil, false
		}})
		if err != nil {
			return w, fmt.Errorf("node: %w", err)
		}
		routes = map[string]http.Handler{relay.RelayPath: h}
	}
	parallel := 1 // in process: one destination's batch at a time per origin (relay.Config.Parallel)
	if cfg.peers != nil {
		parallel = p // destinations on other nodes: each its own round trip
	}
	if set.pump, err = relay.New(relay.Config{Dests: dests, Parallel: parallel, Registerer: reg, Logger: cfg.Logger,
		MinBackoff: cfg.relayBackoff[0], MaxBackoff: cfg.relayBackoff[1]}); err != nil {
		return w, fmt.Errorf("node: %w", err)
	}
	closers = append(closers, set.pump.Close) // closed before the engines
	// One org budget for every partition (budget.go), counted from the
	// stores: all are opened before the first engine, which may send at
	// once (overdue escalation steps).
	set.notifier = ns.engine
	set.budget = &sharedBudget{log: cfg.Logger, used: map[budgetKey]uint64{}, stores: set.openStores}
	if cfg.peers != nil && cfg.peers.Budget != nil {
		set.budget = cfg.peers.Budget // the cluster's, in Redis
	}
	for i := range p {
		if !cfg.peers.serves(i) {
			continue
		}
		db, err := set.openStore(partitionDir(cfg.DataDir, i, "store"), cfg)
		if err != nil {
			return w, err
		}
		set.stores[i].Store(db)
		closers = append(closers, func() {
			if set.parts[i].Load() == nil { // an attached one is closed with its runtime
				db.Close()
			}
		})
	}
	for i := range p {
		if !cfg.peers.serves(i) {
			continue
		}
		rt, err := n.openRuntime(cfg, set, uint32(i), set.stores[i].Load(), nil)
		if err != nil {
			return w, err
		}
		if err := set.attach(rt); err != nil {
			rt.close()
			return w, err
		}
		closers = append(closers, func() { rt.close() })
	}
	closers = append(closers, set.pump.Close) // on a failed start: before the engines close
	go set.forgetLoop()
	closers = append(closers, set.stopForgetLoop)
	if _, err := set.forgetRemoved(context.Background()); err != nil {
		set.log.Error("applying the directory's removals to the partitions failed; retrying in the background", "err", err)
		set.wakeForget()
	}
	var reports twilio.Reports = rt
	if cfg.peers != nil && cfg.peers.WrapReports != nil {
		reports = cfg.peers.WrapReports(rt)
	}
	var api httpapi.Engine = rt
	if cfg.peers != nil && cfg.peers.WrapEngine != nil {
		api = cfg.peers.WrapEngine(rt)
	}
	w = wiring{sess: rt, api: api, reports: reports, keys: keys, backupRoot: backupRoot, notifier: ns.twilio, email: ns.email, confirmer: rt,
		gatherer: prometheus.Gatherers{reg, set}, routes: routes,
		backupRefusal: "backups are not supported with --partitions (experimental) yet: stop dingd and copy the data dir instead",
		hookSet:       set}
	hooks := &orgHooks{set: set}
	if cfg.peers != nil {
		hooks.peers, hooks.client, hooks.secret = cfg.peers.Others, cfg.peers.Client, cfg.peers.Secret
		if hooks.peers == nil {
			hooks.peers = func() []string { return nil }
		}
	}
	w.hooks = hooks
	return w, nil
}

// openStore opens a store of the partition set (in its own directory,
// sharing the set's caches).
func (s *partitionSet) openStore(dir string, cfg Config) (*pebblestore.DB, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	db, err := pebblestore.Open(dir, pebblestore.Options{Logger: cfg.Logger, Shared: s.shared})
	if errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EAGAIN) {
		return nil, &DataDirInUseError{Dir: cfg.DataDir}
	}
	return db, err
}

// openStores returns the partitions' stores open now (the org's budget
// counts from them).
func (s *partitionSet) openStores() []store.Store {
	var out []store.Store
	for i := range s.stores {
		if db := s.stores[i].Load(); db != nil {
			out = append(out, db)
		}
	}
	return out
}

// openRuntime opens partition i's keyring and engine on db (which it
// then owns: closed on failure and by the runtime's close), with its
// publisher into the hub and its metrics on a registry of its own; wrap,
// if set, wraps the store and the keyring (cluster mode).
func (n *Node) openRuntime(cfg Config, set *partitionSet, i uint32, db *pebblestore.DB, wrap *runtimeWrap) (_ *partRuntime, err error) {
	rt := &partRuntime{p: i, db: db, reg: prometheus.NewRegistry(), set: set}
	defer func() {
		if err != nil {
			rt.close()
		}
	}()
	if rt.ring, err = keyring.Open(partitionDir(cfg.DataDir, int(i), SecretKeysFile)); err != nil {
		return nil, fmt.Errorf("node: partition %d: %w", i, err)
	}
	reg := prometheus.WrapRegistererWith(prometheus.Labels{"partition": strconv.Itoa(int(i))}, rt.reg)
	var st store.Store = db
	var keys engine.Keys = rt.ring
	if wrap != nil {
		if st, err = wrap.store(db, reg); err != nil {
			return nil, fmt.Errorf("node: partition %d: %w", i, err)
		}
		keys = wrap.keys(keys)
	}
	if cfg.wrapPartition != nil {
		st = cfg.wrapPartition(int(i), st)
	}
	p := int(set.n)
	if rt.eng, err = engine.Open(engine.Config{
		Store: st, Clock: cfg.Clock, Recipients: n.dir, MaxBody: cfg.MaxBody,
		Logger: cfg.Logger.With("partition", i), Registerer: reg,
		Contacts: n.dir, Notifier: set.notifier, Quotas: cfg.Quotas, Budget: set.budget, NoCallFallback: cfg.NoCallFallback,
		Keys: keys, BurnAfter: cfg.BurnAfter, SecretUnreadTTL: cfg.SecretUnreadTTL,
		Retention: cfg.Retention, MessageCacheBytes: (64 << 20) / p,
		Partition: i, Placement: set.of,
	}); err != nil {
		return nil, fmt.Errorf("node: partition %d: %w", i, err)
	}
	// Delivery: the engine → its Publisher (the Sink) → the one hub.
	pub, err := fanout.NewPublisher(fanout.PublisherConfig{
		Broker: fanout.NewLocalBroker(n.hub, fanout.SingleNode{}), Presence: n.hub,
		Logger: cfg.Logger, Registerer: reg,
	})
	if err != nil {
		return nil, fmt.Errorf("node: partition %d: %w", i, err)
	}
	if n.pusher != nil && n.pusher.Configured() {
		rt.eng.SetSink(n.pusher.Sink(pub)) // devices without a connection are notified
	} else {
		rt.eng.SetSink(pub)
	}
	rt.eng.SetPresence(n.hub)
	return rt, nil
}

// close closes the runtime's engine, keyring and store (what is open),
// once all of it has been detached; idempotent.
func (rt *partRuntime) close() error {
	rt.closeOnce.Do(func() {
		var errs []error
		if rt.eng != nil {
			errs = append(errs, rt.eng.Close())
		}
		if rt.ring != nil {
			errs = append(errs, rt.ring.Close())
		}
		if rt.db != nil {
			rt.set.stores[rt.p].CompareAndSwap(rt.db, nil)
			errs = append(errs, rt.db.Close())
		}
		rt.closeErr = errors.Join(errs...)
	})
	return rt.closeErr
}

// routeDest is the pump's destination for a partition: its engine while
// this node serves it, else the node that does, over HTTP (remote, when
// the node has peers: stage 5b), else none for now (the records wait).
type routeDest struct {
	set    *partitionSet
	remote *relay.HTTPDest
	forget func(p uint32) // drops a stale owner after wrong_partition; may be nil
}

func (d routeDest) ApplyRelay(ctx context.Context, b engine.RelayBatch) (uint64, error) {
	if rt := d.set.runtime(b.To); rt != nil {
		return rt.eng.ApplyRelay(ctx, b)
	}
	if d.remote != nil {
		through, err := d.remote.ApplyRelay(ctx, b)
		if errors.Is(err, engine.ErrWrongPartition) && d.forget != nil {
			d.forget(b.To) // the pump's retry asks who owns it now
		}
		return through, err
	}
	return 0, fmt.Errorf("%w: partition %d is not served here now", engine.ErrWrongPartition, b.To)
}

// partitionPeers makes a node one of several serving the partitions
// (Config.peers; stage 5a): it serves only the partitions Attach lists
// (at start; more may be attached later), relays records for the others
// to the node Owner names, over HTTP with the cluster secret, and serves
// POST /cluster/relay for the partitions it serves. Every node must hold
// the same directory (stage 5c: observers of the directory's partition).
type partitionPeers struct {
	Attach []int
	// Owner returns the base URL of the node serving partition p now
	// (coordOwners.Owner in cluster mode); Forget, if set, is told when
	// that node answered that it does not (coordOwners.Forget).
	Owner  func(ctx context.Context, p uint32) (string, error)
	Forget func(p uint32)
	Secret string
	Client *http.Client // nil: http.DefaultClient
	// Budget, if set, counts the org's SMS and call budgets for the
	// whole cluster (cluster.RedisBudget) instead of for this node.
	Budget engine.Budget
	// Directory, if set, makes the directory the cluster's (dirmember.go):
	// DATA/dir/store is this node's copy of the directory's partition,
	// kept by an observer, and the directory's changes are committed by
	// that partition's owner; until this node owns it, Directory is the
	// directory's committer (refusing).
	Directory fanout.Committer
	// Users, if set, is what sessions check tokens against instead of
	// the node's directory (dirUsers: a cluster node's copy may lag).
	Users func(*fanout.Directory, prometheus.Registerer) (session.Users, error)
	// Others returns the other nodes' HTTP base URLs (webhook
	// subscriptions are changed on every node's outboxes).
	Others func() []string
	// WrapAPI, if set, wraps the admin API's handler (directory writes on
	// a node that does not own the directory go to its owner).
	WrapAPI func(http.Handler) http.Handler
	// WrapReports, if set, wraps what Twilio's callbacks report to (the
	// partitions served here) so that other nodes' partitions are asked
	// too (reports.go).
	WrapReports func(twilio.Reports) twilio.Reports
	// WrapEngine, if set, wraps the admin API's engine (the router):
	// org-wide settings across the cluster (orgwide.go).
	WrapEngine func(httpapi.Engine) httpapi.Engine
	// Metrics, if set, is registered with the node's metrics (what each
	// partition's member does: membersCollector).
	Metrics prometheus.Collector
}

// serves reports whether partition i is attached at start (every one
// without peers).
func (pp *partitionPeers) serves(i int) bool { return pp == nil || slices.Contains(pp.Attach, i) }

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
	rts := s.attached()
	through := make([]uint64, len(rts))
	after := uint64(math.MaxUint64)
	for i, rt := range rts {
		t, err := rt.eng.ForgottenThrough()
		if err != nil {
			return did, fmt.Errorf("partition %d: %w", rt.p, err)
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
			for i, rt := range rts {
				if a.Seq <= through[i] {
					continue
				}
				r, err := rt.eng.Forget(ctx, a.Target, a.Seq)
				if err != nil {
					return did, fmt.Errorf("partition %d: forget %s (audit %d): %w", rt.p, a.Target, a.Seq, err)
				}
				did.DingsStopped += r.DingsStopped
				did.SecretsBurned += r.SecretsBurned
			}
		}
	}
}

// wakeForget asks forgetLoop to run forgetRemoved again.
func (s *partitionSet) wakeForget() { poke(s.retryForget) }

// forgetWait bounds how long attaching a partition waits for its
// removals to be durable before leaving them to forgetLoop.
const forgetWait = 2 * time.Second

// forgetLoop runs forgetRemoved again after a failure, every second
// (real time: what it waits for is a disk or a store, not a clock), until
// it succeeds or the node stops. Owned by the partitionSet: stopped by
// stopForgetLoop before the engines shut down.
func (s *partitionSet) forgetLoop() {
	defer close(s.forgetDone)
	// A Forget waiting for a batch that cannot become durable (a
	// partition with no standby) ends at the stop; its batch is refused
	// when the engine shuts down.
	ctx := s.forgetCtx
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.retryForget:
		}
		for done := false; !done; {
			t := time.NewTimer(time.Second)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			_, err := s.forgetRemoved(ctx)
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
	s.stopForget()
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
	rts := s.attached()
	errc := make([]error, len(rts))
	for i, rt := range rts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := rt.eng.Shutdown(ctx); err != nil {
				errc[i] = fmt.Errorf("partition %d: %w", rt.p, err)
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

// closeStores closes the partitions' keyrings and stores, the
// directory's store and the shared caches, once the engines are shut
// down.
func (s *partitionSet) closeStores() []error {
	var errs []error
	for _, rt := range s.attached() {
		errs = append(errs, rt.close())
	}
	errs = append(errs, s.dirDB.Close())
	s.shared.Close()
	return errs
}

// Engines returns the partitions' engines, by partition, nil for a
// partition this node does not serve now (nil with one partition: Engine
// has it).
func (n *Node) Engines() []*engine.Engine {
	if n.parts == nil {
		return nil
	}
	out := make([]*engine.Engine, len(n.parts.parts))
	for i := range out {
		if rt := n.parts.parts[i].Load(); rt != nil {
			out[i] = rt.eng
		}
	}
	return out
}

// PartitionOf returns the partition of user on this node (0 with one).
func (n *Node) PartitionOf(user string) int {
	if n.parts == nil {
		return 0
	}
	return int(n.parts.of(user))
}
