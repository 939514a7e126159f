// Package node assembles one Ding server from its parts: the Pebble store,
// the keyring of secret messages' keys, the engine, the directory and hub,
// the socket gateway and the admin HTTP API. cmd/dingd reads flags and the
// environment into a Config and calls Start; integration tests call Start
// directly on 127.0.0.1:0.
//
// The data directory:
//
//	DATA/store/         the Pebble store (what POST /v1/backup copies)
//	DATA/secret.keys    the keys of secret messages of levels 1 and 2
//	                    (engine/keyring); outside the store, so that a
//	                    backup holds no key and erasing one is immediate
//	DATA/admin.token    the first owner's admin token (mode 0600): admin
//	                    "owner", who adds the other admins
//	                    (POST /v1/admins); revoked like any other once
//	                    another owner exists
//	DATA/jwt.secret     the token signing secret (channels/auth)
//	DATA/dingd.lock     locked (flock) while a server runs; names its PID
//
// Start binds the listeners first, so that a port already taken is found
// before anything is written in the data directory; then it locks the
// directory, restores a backup if asked (atomically: restore.go), and
// opens the store, then the keyring, then the engine; Shutdown closes
// them in the reverse order and releases the lock last.
package node

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/channels/email"
	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/channels/push"
	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/channels/socket"
	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/channels/web"
	"github.com/dingmq/ding/channels/webhook"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/keyring"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/ratelimit"
)

// AdminTokenFile is the file in the data directory holding the admin token.
const AdminTokenFile = "admin.token"

// SecretKeysFile is the file in the data directory holding the keys of
// secret messages (engine/keyring). It is not under the store directory,
// so backups (Pebble checkpoints of the store) never contain it.
const SecretKeysFile = "secret.keys"

// Config configures a node. Zero values are the production defaults.
type Config struct {
	// DataDir holds the store, the signing secret and the admin token;
	// empty means ./ding-data.
	DataDir string
	// SocketAddr is the client socket listen address; empty means :7070.
	SocketAddr string
	// HTTPAddr is the admin API listen address; empty means :7080.
	HTTPAddr string
	// TLSCert and TLSKey, when set, are the PEM files of the certificate
	// the HTTP port serves TLS with, and the TLS socket listener too
	// (reloaded on ReloadTLS and when the files change).
	TLSCert, TLSKey string
	// WSAddr, when set, is a listener of the WebSocket gateway (the
	// socket protocol's frames, one per binary WebSocket message, on
	// netpoll's event loop; channels/socket ws.go), beside /ws on the
	// HTTP port, which is always served; both are wss:// when the node
	// has TLS (TLSCert or ACME). Its origin policy is Socket.WSOrigins.
	// Empty: none.
	WSAddr string
	// TLSSocketAddr, when set (with TLSCert or ACME), is a listener
	// carrying the socket protocol over TLS, beside the plain one.
	TLSSocketAddr string
	// TLSClientCA, when set (with TLSCert), is a PEM file of the CA(s)
	// whose client certificates the HTTP port and the TLS socket listener
	// ask for and verify (mTLS, tls.VerifyClientCertIfGiven): a
	// certificate naming an admin (ding:admin/NAME) or a device
	// (ding:client/USER/DEVICE) stands in for its token (channels/auth,
	// CertIdentityOf). Reloaded with the certificate. Empty: none asked for.
	TLSClientCA string
	// ACME, when its Domains are set, gets the certificate of the HTTP
	// port and of the TLS socket listener from an ACME CA (acme.go)
	// instead of TLSCert and TLSKey, which it excludes.
	ACME ACMEConfig
	// MaxHTTPConnsPerSource and MaxHTTPConns bound the HTTP port's open
	// connections per source address and in all (more are closed as
	// soon as accepted); zero means 64 and 1024, negative no bound.
	MaxHTTPConnsPerSource, MaxHTTPConns int
	// DiskReserve is the free space below which writes are refused (the
	// disk is nearly full, diskguard.go); zero means 128 MiB, negative no
	// guard.
	DiskReserve int64
	// BackupDir is the only directory POST /v1/backup writes under; empty
	// means DataDir/backups. It is created, and kept, mode 0700.
	BackupDir string
	// RestoreFrom, when set, is a backup (a directory POST /v1/backup
	// wrote) that Start verifies and makes the store of DataDir, which
	// must hold none, once the listeners are bound and the directory
	// locked. If Start fails after the restore, the restored store is
	// removed again: a failed start can be retried as it was. Not in
	// cluster mode (a member joins from its owner's snapshot).
	RestoreFrom string
	// MaxBody is the largest message body; zero means 64 KiB.
	MaxBody int
	// MetricsAuth puts /metrics behind an admin token with the "metrics"
	// permission (httpapi.Config.MetricsAuth); false serves it to all.
	MetricsAuth bool
	// Socket tunes the gateway; its Engine, Hub, Keys, Directory, Limits,
	// Logger and Registerer are filled in by Start.
	Socket socket.Config
	// Limits are the abuse limits per user, admin and source address
	// (package internal/ratelimit), kept in this node's memory; its Now,
	// Registerer and Logger are filled in by Start. Zero fields are no limit
	// (unlike most of this Config: the production defaults are dingd's
	// settings).
	Limits ratelimit.Config
	// Clock; nil means the system clock.
	Clock engine.Clock
	// Logger; nil means slog.Default().
	Logger *slog.Logger

	// Twilio configures SMS and voice escalation; without an account SID
	// and auth token those steps are recorded as not configured. Its
	// Logger and Registerer are filled in by Start.
	Twilio twilio.Config
	// Email configures e-mail escalation steps (SMTP); without an Addr
	// those steps are recorded as not configured. Its Key (the data
	// dir's email.KeyFile, created if missing), Now, Logger and
	// Registerer are filled in by Start.
	Email email.Config
	// Push configures push notifications (APNs, FCM): DINGs' push steps
	// and notifications of new messages to devices without a connection;
	// without credentials, push steps are recorded as not configured. Its
	// Clock, Logger and Registerer are filled in by Start. Not served with
	// several Partitions yet.
	Push push.Config
	// Quotas bound DINGs; zero fields take the engine's defaults.
	Quotas engine.Quotas
	// NoCallFallback turns off the SMS sent when an escalation call fails.
	NoCallFallback bool
	// DrainDelay is how long Shutdown keeps serving with /readyz answering
	// 503 before it drains, so that load balancers stop sending new
	// clients; zero means none.
	DrainDelay time.Duration

	// BurnAfter is how long after its first read a secret message burns,
	// and the longest burn delay a level-3 chat may choose; zero means the
	// engine's default (30s). At least engine.MinBurnAfter.
	BurnAfter time.Duration
	// SecretUnreadTTL is how long an unread secret message of level 2 or
	// 3 lives before it burns; zero means the engine's default (24h).
	SecretUnreadTTL time.Duration
	// Retention is what the engine deletes in the background (streams,
	// messages, bookkeeping); zero keeps streams and messages forever.
	Retention engine.Retention
	// Webhooks tune the delivery of outbound event webhooks (package
	// channels/webhook); zero fields take its defaults.
	Webhooks WebhooksConfig

	// Replicate, when set, wraps the node's Pebble store for the engine
	// and the directory (cluster mode: a cluster.ReplicatedStore). The
	// node still closes the Pebble store itself.
	Replicate func(db *pebblestore.DB, reg prometheus.Registerer) (store.Store, error)
	// WrapKeys, when set, wraps the keyring of secret messages' keys for
	// the engine (cluster mode: a cluster.KeyShipper, whose keys ride with
	// the replicated batches). It is called after Replicate.
	WrapKeys func(engine.Keys) engine.Keys
	// Routes are extra handlers on the HTTP listener, by ServeMux pattern
	// (cluster mode: /cluster/).
	Routes map[string]http.Handler

	// Partitions, when 2 to MaxPartitions, runs that many partitions in
	// this process (experimental; partitions.go): users are spread over
	// them, each with its own store and engine, and messages between them
	// are relayed. Zero or 1 means one store and one engine, as always.
	// The count is recorded in the data dir at the first start; a start
	// with another count is refused. Not with Replicate or RestoreFrom.
	Partitions int

	// locked: the caller (RunMember) holds the data directory's lock, so
	// Start does not take it.
	locked bool
	// wrapPartition, when set (by tests), wraps partition i's store for
	// its engine, as Replicate wraps the one store.
	wrapPartition func(i int, st store.Store) store.Store
	// peers, when set with Partitions, makes this node one of several
	// serving the partitions (a cluster node with a member per
	// partition, partmember.go; tests set it too): see partitionPeers.
	peers *partitionPeers
	// fwd, when set (a cluster member), checks the assertions of requests
	// other members send on (forwarded.go) around everything the HTTP
	// port serves.
	fwd *forwarder
	// relayBackoff, when set (by tests), is the relay pump's MinBackoff
	// and MaxBackoff.
	relayBackoff [2]time.Duration
	// relayTimeout, when set (by tests), bounds one relay request to
	// another node (relay.HTTPDest.Timeout; zero: its default, 30 s).
	relayTimeout time.Duration
	// beforeDirApply, when set (by tests), is called before a cluster
	// node's copy of the directory applies the owner's changes.
	beforeDirApply func()
	// dirKeepRecent, when positive (set by tests), replaces dirKeepRecent.
	dirKeepRecent int
	// beforeAttach, when set (by tests), is called before a partition's
	// runtime is attached (after its store is opened).
	beforeAttach func(p uint32)
}

// WebhooksConfig tunes outbound event webhooks: webhook.Config's
// fields of the same names (zero: 10s, 72h, 1s, 10m, no rate bound).
type WebhooksConfig struct {
	Timeout, Horizon, MinBackoff, MaxBackoff time.Duration
	Rate                                     int
}

// AddrInUseError is returned by Start when a listen address is taken
// (EADDRINUSE): another server, often another dingd, holds the port. Not
// retryable until it is freed.
type AddrInUseError struct {
	Listener string // "socket", "http", "TLS socket" or "websocket"
	Addr     string // as configured
	Err      error
}

func (e *AddrInUseError) Error() string {
	return fmt.Sprintf("node: the %s port %s is in use", e.Listener, e.Addr)
}

func (e *AddrInUseError) Unwrap() error { return e.Err }

// listenError describes a failure to listen on addr: an *AddrInUseError
// if the address is taken, else err with the operation.
func listenError(listener, addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return &AddrInUseError{Listener: listener, Addr: addr, Err: err}
	}
	return fmt.Errorf("node: listen %s %s: %w", listener, addr, err)
}

// Node is a running server.
type Node struct {
	cfg        Config
	log        *slog.Logger
	db         *pebblestore.DB
	secretKeys *keyring.Ring  // secret messages' keys; closed after the engine
	unready    func() string  // why /readyz refuses although the node runs (a failed store write, the disk guard)
	guard      *diskGuard     // nil: no disk guard
	certs      *certReloader  // nil: no certificate files
	acme       *acmeCerts     // nil: no ACME
	serverTLS  *tls.Config    // the listeners' TLS; nil: none
	tlsSockLn  net.Listener   // the TLS socket listener; nil: none
	wsLn       net.Listener   // the WebSocket listener; nil: none
	eng        *engine.Engine // nil with several partitions
	parts      *partitionSet  // nil with one partition
	hub        *fanout.Hub
	pusher     *push.Pusher // stopped after the engine
	dir        *fanout.Directory
	sock       *socket.Server
	sockLn     net.Listener
	api        *httpapi.API
	hookDisp   *webhook.Dispatcher // outbound event webhooks; closed before the engines
	httpSrv    *http.Server
	httpLn     net.Listener
	lock       *os.File // holds the data directory's lock; nil if the caller holds it
	adminToken string
	ready      atomic.Bool

	wg       sync.WaitGroup
	stopOnce sync.Once
	stopErr  error
}

// Start opens the store and starts serving.
func Start(cfg Config) (_ *Node, err error) {
	if cfg.DataDir == "" {
		cfg.DataDir = "ding-data"
	}
	if cfg.SocketAddr == "" {
		cfg.SocketAddr = ":7070"
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = ":7080"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := checkPartitionsConfig(&cfg); err != nil {
		return nil, err
	}
	// The closers use this local n: the result is nil on an error.
	n := &Node{cfg: cfg, log: cfg.Logger}
	var closers []func()
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()
	// The listeners first: a port already taken is found before anything
	// is created in the data dir (a restored store, a signing secret, an
	// admin token).
	if n.sockLn, err = socket.Listen(cfg.SocketAddr); err != nil {
		return nil, listenError("socket", cfg.SocketAddr, err)
	}
	closers = append(closers, func() { n.sockLn.Close() })
	if n.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, listenError("http", cfg.HTTPAddr, err)
	}
	closers = append(closers, func() { n.httpLn.Close() })
	if cfg.WSAddr != "" {
		if n.wsLn, err = net.Listen("tcp", cfg.WSAddr); err != nil {
			return nil, listenError("websocket", cfg.WSAddr, err)
		}
		closers = append(closers, func() { n.wsLn.Close() })
	}
	reg := prometheus.NewRegistry()
	perSource, total := cmp.Or(cfg.MaxHTTPConnsPerSource, 64), cmp.Or(cfg.MaxHTTPConns, 1024)
	if n.httpLn, err = newLimitListener(n.httpLn, max(perSource, 0), max(total, 0), reg); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	acmeOn := len(cfg.ACME.Domains) > 0
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") || (cfg.TLSSocketAddr != "" && cfg.TLSCert == "" && !acmeOn) {
		return nil, errors.New("node: tls: a certificate and its key go together, and a TLS socket listener needs them (or ACME)")
	}
	if acmeOn && cfg.TLSCert != "" {
		return nil, errors.New("node: tls: certificate files and ACME exclude each other")
	}
	if acmeOn && cfg.Replicate != nil {
		return nil, errors.New("node: tls: ACME is for a single node; cluster members use certificate files")
	}
	if cfg.TLSClientCA != "" && cfg.TLSCert == "" {
		return nil, errors.New("node: tls: a client CA (mTLS) needs the server's own certificate and key")
	}
	if err := registerPlaintext(reg, cfg.Logger, map[string]bool{
		"socket":    publicPlain(n.sockLn.Addr()),
		"http":      cfg.TLSCert == "" && !acmeOn && publicPlain(n.httpLn.Addr()),
		"websocket": n.wsLn != nil && cfg.TLSCert == "" && !acmeOn && publicPlain(n.wsLn.Addr()),
	}); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	if cfg.TLSCert != "" {
		if n.certs, err = newCertReloader(cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA); err != nil {
			return nil, err
		}
		n.serverTLS = n.certs.tlsConfig()
	}
	if acmeOn {
		if n.acme, err = newACME(cfg.ACME, cfg.DataDir); err != nil {
			return nil, err
		}
		n.serverTLS = n.acme.tlsConfig()
	}
	if n.serverTLS != nil {
		n.httpLn = tls.NewListener(n.httpLn, n.serverTLS)
		if cfg.TLSSocketAddr != "" {
			if n.tlsSockLn, err = net.Listen("tcp", cfg.TLSSocketAddr); err != nil {
				return nil, listenError("TLS socket", cfg.TLSSocketAddr, err)
			}
			closers = append(closers, func() { n.tlsSockLn.Close() })
		}
	}
	// Every listener is bound: now the data dir.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("node: data dir: %w", err)
	}
	if !cfg.locked {
		if n.lock, err = lockDataDir(cfg.DataDir); err != nil {
			return nil, err
		}
		closers = append(closers, func() { n.lock.Close() })
	}
	if err := checkLayout(cfg.DataDir, cfg.Partitions); err != nil {
		return nil, err
	}
	if n.acme != nil {
		if err := n.acme.prepare(); err != nil {
			return nil, err
		}
	}
	if cfg.RestoreFrom != "" {
		if cfg.Replicate != nil {
			return nil, errors.New("node: a cluster member does not restore a backup; it joins from its owner's snapshot")
		}
		st, err := restore(cfg.RestoreFrom, cfg.DataDir)
		if err != nil {
			return nil, err
		}
		// Runs after the store's closer: a start that fails from here on
		// leaves the data dir as it found it, ready for the same restore.
		closers = append(closers, func() { os.RemoveAll(filepath.Join(cfg.DataDir, "store")) })
		cfg.Logger.Warn("restored the store from a backup: secret messages burn at this start (their keys are not in backups); client tokens signed before need the old jwt.secret, or new tokens",
			"from", cfg.RestoreFrom, "keys", st.Keys, "bytes", st.Bytes)
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfoGauge())
	if err := registerDiskMetrics(reg, cfg.DataDir); err != nil {
		return nil, err
	}

	var guard *diskGuard
	if cfg.DiskReserve >= 0 {
		reserve := cmp.Or(cfg.DiskReserve, 128<<20)
		if least := MinDiskReserve(cfg.Partitions); reserve < least {
			cfg.Logger.Warn("raising the disk reserve: with partitions every store preallocates write-ahead logs of its own",
				"partitions", cfg.Partitions, "asked_bytes", reserve, "reserve_bytes", least)
			reserve = least
		}
		if guard, err = newDiskGuard(cfg.DataDir, uint64(reserve), cfg.Logger, reg); err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
		guard.prepare()
		closers = append(closers, guard.Close)
	}
	var w wiring
	if cfg.Partitions > 1 {
		if w, err = n.openPartitions(cfg, reg, guard, &closers); err != nil {
			return nil, err
		}
	} else if w, err = n.openSingle(cfg, reg, guard, &closers); err != nil {
		return nil, err
	}
	if err := n.serve(cfg, reg, w, &closers); err != nil {
		return nil, err
	}
	n.ready.Store(true)
	if n.parts != nil {
		n.log.Info("ding started", "data", cfg.DataDir, "socket", n.SocketAddr(), "http", n.HTTPAddr(), "partitions", cfg.Partitions)
	} else {
		n.log.Info("ding started", "data", cfg.DataDir, "socket", n.SocketAddr(), "http", n.HTTPAddr())
	}
	return n, nil
}

// wiring is what the edges (socket sessions, admin API, webhooks) are
// given: the engine itself with one partition, the router with several.
type wiring struct {
	sess    session.Engine
	api     httpapi.Engine
	reports twilio.Reports
	backup  store.Checkpointer // nil: backups refused
	// backupRefusal, when set, is why backups are refused (a 501 with it).
	backupRefusal string
	keys          *auth.Keys
	backupRoot    string
	notifier      *twilio.Notifier
	email         *email.Notifier
	// confirmer is what e-mail links confirm through: the engine, or the
	// router (to the DING's home).
	confirmer email.Confirmer
	// gatherer serves /metrics; nil means the node's registry alone.
	gatherer prometheus.Gatherer
	// routes are more handlers on the HTTP listener (beside Config.Routes).
	routes map[string]http.Handler
	// hooks manages webhook subscriptions and hookSources are the outboxes
	// the dispatcher delivers (each engine's), or hookSet attaches them to
	// it as it serves them (partitions); hooksRefusal, when set, is why
	// there are none (a 501 with it).
	hooks        httpapi.Webhooks
	hookSources  []webhook.Source
	hookSet      *partitionSet
	hooksRefusal string
}

// notifiers are the outbound channels a node opens: Twilio for SMS and
// calls, SMTP for e-mail, and the engine's view of them.
type notifiers struct {
	twilio *twilio.Notifier
	email  *email.Notifier
	push   *push.Pusher
	// pushDeps are bound to the engine and the hub once they are open.
	pushDeps *pushDeps
	engine   engine.Notifier
}

// openCommon is what a node opens the same way with one partition or
// several: the token keys and the admin token, the backup root, the
// directory on dirStore (n.dir), and the Twilio and e-mail notifiers.
func (n *Node) openCommon(cfg Config, reg prometheus.Registerer, dirStore store.Store) (keys *auth.Keys, backupRoot string, ns notifiers, err error) {
	if keys, err = auth.LoadOrCreate(cfg.DataDir); err != nil {
		return nil, "", ns, err
	}
	if backupRoot, err = backupDir(cfg); err != nil {
		return nil, "", ns, err
	}
	if n.adminToken, err = loadOrCreateAdminToken(cfg.DataDir, keys, cfg.Logger); err != nil {
		return nil, "", ns, err
	}
	if n.dir, err = fanout.OpenDirectory(dirStore, cfg.Clock); err != nil {
		return nil, "", ns, err
	}
	tc := cfg.Twilio
	tc.Logger, tc.Registerer = cfg.Logger, reg
	if ns.twilio, err = twilio.New(tc); err != nil {
		return nil, "", ns, fmt.Errorf("node: %w", err)
	}
	if !ns.twilio.Configured() {
		cfg.Logger.Warn("Twilio is not configured: SMS and voice escalation steps will be recorded as not configured")
	}
	ec := cfg.Email
	ec.Logger, ec.Registerer = cfg.Logger, reg
	if cfg.Clock != nil {
		ec.Now = cfg.Clock.Now
	}
	if ec.Configured() {
		if ec.Key, err = email.LoadOrCreateKey(filepath.Join(cfg.DataDir, email.KeyFile)); err != nil {
			return nil, "", ns, fmt.Errorf("node: %w", err)
		}
	}
	if ns.email, err = email.New(ec); err != nil {
		return nil, "", ns, fmt.Errorf("node: %w", err)
	}
	nots := engine.Notifiers{engine.ChannelSMS: ns.twilio, engine.ChannelVoice: ns.twilio, engine.ChannelEmail: ns.email}
	pc := cfg.Push
	pc.Logger, pc.Registerer = cfg.Logger, reg
	if cfg.Clock != nil {
		pc.Clock = cfg.Clock
	}
	ns.pushDeps = &pushDeps{dir: n.dir}
	if ns.push, err = push.New(pc, push.Deps{Tokens: ns.pushDeps, Presence: ns.pushDeps, Streams: pushStreams{ns.pushDeps}, Name: ns.pushDeps.name}); err != nil {
		return nil, "", ns, fmt.Errorf("node: %w", err)
	}
	n.pusher = ns.push
	if ns.push.Configured() {
		nots[engine.ChannelPush] = ns.push
	}
	ns.engine = nots
	return keys, backupRoot, ns, nil
}

// openSingle opens the one store and the one engine of a node with one
// partition, with the directory, the hub and the publisher.
func (n *Node) openSingle(cfg Config, reg *prometheus.Registry, guard *diskGuard, closersp *[]func()) (w wiring, err error) {
	closers := *closersp
	defer func() { *closersp = closers }()
	if n.db, err = pebblestore.Open(filepath.Join(cfg.DataDir, "store"), pebblestore.Options{Logger: cfg.Logger}); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EAGAIN) {
			// Its lock file was free: a process that is no dingd of this
			// version holds the store.
			return w, &DataDirInUseError{Dir: cfg.DataDir}
		}
		return w, err
	}
	closers = append(closers, func() { n.db.Close() })
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ding_store_used_bytes",
		Help: "Bytes the store's files take on disk (tables, write-ahead logs, manifests); retention keeps it flat.",
	}, func() float64 { return float64(n.db.DiskUsage()) })); err != nil {
		return w, fmt.Errorf("node: %w", err)
	}
	var st store.Store = n.db
	if cfg.Replicate != nil {
		if st, err = cfg.Replicate(n.db, reg); err != nil {
			return w, fmt.Errorf("node: %w", err)
		}
	}
	keys, backupRoot, ns, err := n.openCommon(cfg, reg, st)
	if err != nil {
		return w, err
	}
	closers = append(closers, ns.push.Close) // run after the engine's (in reverse)
	if n.secretKeys, err = keyring.Open(filepath.Join(cfg.DataDir, SecretKeysFile)); err != nil {
		return w, fmt.Errorf("node: %w", err)
	}
	closers = append(closers, func() { n.secretKeys.Close() })
	var secretKeys engine.Keys = n.secretKeys
	if cfg.WrapKeys != nil {
		secretKeys = cfg.WrapKeys(n.secretKeys)
	}
	if n.eng, err = engine.Open(engine.Config{
		Store: st, Clock: cfg.Clock, Recipients: n.dir, MaxBody: cfg.MaxBody,
		Logger: cfg.Logger, Registerer: reg,
		Contacts: n.dir, Notifier: ns.engine, Quotas: cfg.Quotas, NoCallFallback: cfg.NoCallFallback,
		PushConfigured: ns.push.Configured(),
		Keys:           secretKeys, BurnAfter: cfg.BurnAfter, SecretUnreadTTL: cfg.SecretUnreadTTL,
		Retention: cfg.Retention,
	}); err != nil {
		return w, err
	}
	closers = append(closers, func() { n.eng.Close() })
	if guard != nil {
		guard.attach(n.eng.SetReadOnly, n.db.Flush)
		n.guard = guard
	}
	n.unready = func() string {
		if err := n.eng.Err(); err != nil && !errors.Is(err, engine.ErrClosed) {
			// The store failed a write: the engine refuses every write
			// until a restart (which finds everything acknowledged).
			return "the store failed a write; writes are refused until dingd restarts: " + err.Error()
		}
		if guard != nil {
			return guard.Why()
		}
		return ""
	}
	n.dir.SetCommitter(n.eng)
	own := fanout.SingleNode{} // one node owns every partition
	if n.hub, err = fanout.NewHub(fanout.HubConfig{
		Source: n.eng, Encode: new(session.Encoder).AppendEntry, Ownership: own, Logger: cfg.Logger, Registerer: reg,
	}); err != nil {
		return w, err
	}
	closers = append(closers, n.hub.Close)
	// Delivery: engine → Publisher (the Sink) → Broker → hub → endpoints.
	// On one node the broker hands the entries straight to the hub, and
	// the hub's registry is the presence.
	pub, err := fanout.NewPublisher(fanout.PublisherConfig{
		Broker: fanout.NewLocalBroker(n.hub, own), Presence: n.hub,
		Logger: cfg.Logger, Registerer: reg,
	})
	if err != nil {
		return w, err
	}
	ns.pushDeps.eng.Store(n.eng)
	ns.pushDeps.hub.Store(n.hub)
	if ns.push.Configured() {
		// Devices without a connection are notified of new messages.
		n.eng.SetSink(ns.push.Sink(pub))
	} else {
		n.eng.SetSink(pub)
	}
	n.eng.SetPresence(n.hub)
	return wiring{sess: n.eng, api: n.eng, reports: n.eng, backup: n.db, keys: keys, backupRoot: backupRoot,
		notifier: ns.twilio, email: ns.email, confirmer: n.eng,
		hooks: n.eng, hookSources: []webhook.Source{n.eng}}, nil
}

// serve starts the edges on the engine(s) w names: the rate limits, the
// socket gateway and the admin API, and their listeners' goroutines.
func (n *Node) serve(cfg Config, reg *prometheus.Registry, w wiring, closersp *[]func()) (err error) {
	closers := *closersp
	defer func() { *closersp = closers }()
	keys, backupRoot, notifier := w.keys, w.backupRoot, w.notifier
	lc := cfg.Limits
	lc.Registerer, lc.Logger = reg, cfg.Logger
	if cfg.Clock != nil {
		lc.Now = cfg.Clock.Now
	}
	limits, err := ratelimit.New(lc)
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	sc := cfg.Socket
	sc.Engine, sc.Hub, sc.Keys, sc.Directory, sc.Logger, sc.Registerer = w.sess, session.JoinFunc(n.hub.Join), keys, n.dir, cfg.Logger, reg
	if cfg.peers != nil && cfg.peers.Users != nil {
		if sc.Directory, err = cfg.peers.Users(n.dir, reg); err != nil {
			return err
		}
	}
	sc.Limits = limits
	if n.sock, err = socket.New(sc); err != nil {
		return err
	}
	closers = append(closers, func() { n.sock.Shutdown(context.Background()) })
	gatherer := w.gatherer
	if gatherer == nil {
		gatherer = reg
	}
	if len(w.hookSources) > 0 || w.hookSet != nil {
		wc := cfg.Webhooks
		if n.hookDisp, err = webhook.New(webhook.Config{
			Sources: w.hookSources, Timeout: wc.Timeout, Horizon: wc.Horizon, MinBackoff: wc.MinBackoff, MaxBackoff: wc.MaxBackoff,
			Rate: wc.Rate, Clock: cfg.Clock, Registerer: reg, Logger: cfg.Logger,
		}); err != nil {
			return fmt.Errorf("node: %w", err)
		}
		closers = append(closers, n.hookDisp.Close)
		if w.hookSet != nil {
			w.hookSet.setHooks(n.hookDisp)
		}
	}
	api, err := httpapi.New(httpapi.Config{
		Engine: w.api, Directory: n.dir, Keys: keys, Backup: w.backup, BackupRoot: backupRoot, Gatherer: gatherer,
		VerifyBackup: func(dir string) (any, error) { return pebblestore.Verify(dir) }, BackupRefusal: w.backupRefusal,
		Ready: n.ready.Load, Unready: n.unready, Logger: cfg.Logger, Registerer: reg,
		Webhooks: notifier.Handler(w.reports), EmailLinks: w.email.Handler(w.confirmer), Offboarder: n, Revoker: n, Presence: n.hub, MetricsAuth: cfg.MetricsAuth,
		Limits: limits, Hooks: w.hooks, HooksRefusal: w.hooksRefusal,
	})
	if err != nil {
		return err
	}
	n.api = api
	mux := http.NewServeMux()
	for pattern, h := range cfg.Routes {
		mux.Handle(pattern, h)
	}
	for pattern, h := range w.routes {
		mux.Handle(pattern, h)
	}
	mux.Handle("/ws", n.sock.WSHandler()) // the WebSocket gateway, a goroutine per connection (WSAddr holds none)
	mux.Handle("/app/", web.App())        // the users' web app (channels/web), on /ws of this origin
	mux.Handle("GET /app", http.RedirectHandler("/app/", http.StatusMovedPermanently))
	mux.Handle("/console/", web.Console()) // the admin console (channels/web), on the admin API of this origin
	mux.Handle("GET /console", http.RedirectHandler("/console/", http.StatusMovedPermanently))
	if cfg.peers != nil && cfg.peers.WrapAPI != nil {
		mux.Handle("/", cfg.peers.WrapAPI(api))
	} else {
		mux.Handle("/", api)
	}
	handler := cfg.fwd.accept(mux, n.certs.clientPool)
	// Timeouts bound what an idle or trickling client holds (with the
	// connection bounds of limitListener): headers in 10s, a whole request
	// in 30s, an idle keep-alive 60s. No write timeout: a snapshot for a
	// joining cluster member streams the whole store.
	n.httpSrv = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second}
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		if err := n.sock.Serve(n.sockLn); err != nil {
			n.log.Error("socket server stopped", "err", err)
		}
	}()
	if n.tlsSockLn != nil {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := n.sock.ServeTLS(n.tlsSockLn, n.serverTLS); err != nil {
				n.log.Error("TLS socket server stopped", "err", err)
			}
		}()
	}
	if n.wsLn != nil {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := n.sock.ServeWS(n.wsLn, n.serverTLS); err != nil { // wss with the node's TLS
				n.log.Error("WebSocket server stopped", "err", err)
			}
		}()
	}
	go func() {
		defer n.wg.Done()
		if err := n.httpSrv.Serve(n.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("http server stopped", "err", err)
		}
	}()
	return nil
}

func loadOrCreateAdminToken(dir string, keys *auth.Keys, log *slog.Logger) (string, error) {
	p := filepath.Join(dir, AdminTokenFile)
	b, err := os.ReadFile(p)
	if err == nil {
		tok := strings.TrimSpace(string(b))
		if _, err := keys.Verify(tok, auth.KindAdmin); err != nil {
			return "", fmt.Errorf("node: %s does not hold a valid admin token for this data dir", p)
		}
		return tok, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("node: read admin token: %w", err)
	}
	tok, err := keys.MintAdminFor(fanout.FirstOwner, 0, time.Time{}) // the first owner's, for good (fanout.FirstOwner)
	if err != nil {
		return "", err
	}
	if err := auth.WriteFileSync(p, []byte(tok+"\n")); err != nil {
		return "", fmt.Errorf("node: write admin token: %w", err)
	}
	log.Info("created admin token; dingctl --data reads it", "file", p)
	return tok, nil
}

// Offboard removes a user for good (contract point 6), in one atomic
// batch: the directory marks them removed, which takes them out of every
// group and department and makes their tokens fail at the next handshake;
// their pending DINGs stop; every live secret message they sent or
// received burns (its key erased once the batch is durable; the other
// participant gets the burn entry). Once that is durable, their live
// connections are closed, with USER_REMOVED. Nothing more is delivered to
// them: every op applied after the removal sees them removed, so sends to
// them are refused and fanouts still in progress skip them. Idempotent: a
// retry stops and burns whatever is left.
func (n *Node) Offboard(ctx context.Context, user string, actor fanout.Actor) error {
	if n.parts != nil {
		return n.offboardPartitions(ctx, user, actor)
	}
	var did engine.Offboarded
	_, err := n.dir.RemoveUserWith(user, actor, func(ch engine.Change) error {
		var err error
		did, err = n.eng.Offboard(ctx, user, ch)
		return err
	})
	if err != nil {
		return fmt.Errorf("node: offboard %s: %w", user, err)
	}
	kicked := n.hub.Kick(user, fanout.ErrUserRemoved)
	n.log.Info("user offboarded", "user", user, "actor", actor.Name, "connections_closed", kicked,
		"dings_stopped", did.DingsStopped, "secrets_burned", did.SecretsBurned)
	return nil
}

// RevokeTokens revokes user's client tokens issued until now (all, or
// device's), durably, then closes the live connections that used them
// (BAD_TOKEN).
func (n *Node) RevokeTokens(ctx context.Context, user, device string, actor fanout.Actor) (int, error) {
	if _, err := n.dir.RevokeTokens(user, device, actor); err != nil {
		return 0, fmt.Errorf("node: revoke tokens of %s: %w", user, err)
	}
	closed := n.hub.KickDevice(user, device, fanout.ErrTokenRevoked)
	n.log.Info("client tokens revoked", "user", user, "device", device, "actor", actor.Name, "connections_closed", closed)
	return closed, nil
}

// ReloadTLS reads the certificate and key files again (SIGHUP); new
// connections get the new certificate, established ones keep theirs.
// With ACME (or no TLS) it does nothing: autocert renews by itself.
func (n *Node) ReloadTLS() error {
	if n.certs == nil {
		return nil
	}
	return n.certs.Reload()
}

// TLSSocketAddr is the address of the TLS socket listener ("" if none).
func (n *Node) TLSSocketAddr() string {
	if n.tlsSockLn == nil {
		return ""
	}
	return n.tlsSockLn.Addr().String()
}

// WSAddr is the address of the WebSocket listener ("" if none; /ws on
// the HTTP port is always served).
func (n *Node) WSAddr() string {
	if n.wsLn == nil {
		return ""
	}
	return n.wsLn.Addr().String()
}

// SocketAddr is the address the socket gateway listens on.
func (n *Node) SocketAddr() string { return n.sockLn.Addr().String() }

// HTTPAddr is the address the admin API listens on.
func (n *Node) HTTPAddr() string { return n.httpLn.Addr().String() }

// DataDir is the node's data directory.
func (n *Node) DataDir() string { return n.cfg.DataDir }

// AdminToken returns the first owner's admin token (DATA/admin.token).
func (n *Node) AdminToken() string { return n.adminToken }

// Engine, Hub, Directory and Socket expose the parts, for tests and tools.
// Engine is nil with several partitions (Engines has them).
func (n *Node) Engine() *engine.Engine       { return n.eng }
func (n *Node) Hub() *fanout.Hub             { return n.hub }
func (n *Node) Directory() *fanout.Directory { return n.dir }
func (n *Node) Socket() *socket.Server       { return n.sock }
func (n *Node) API() *httpapi.API            { return n.api }

// Shutdown drains and stops: /readyz turns false, clients are told
// SHUTTING_DOWN and disconnected, the HTTP server finishes its requests,
// the engine commits what it has queued, and the keyring and the store
// are closed. Every step honours ctx: if its deadline passes, Shutdown
// returns (an error wrapping ctx.Err()) without waiting further; the
// store then stays open under the engine's remaining goroutines.
// Idempotent: later calls return the first call's result.
func (n *Node) Shutdown(ctx context.Context) error {
	n.stopOnce.Do(func() {
		n.ready.Store(false)
		if d := n.cfg.DrainDelay; d > 0 {
			n.log.Info("not ready; draining after the delay", "delay", d)
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
		var errs []error
		errs = append(errs, n.sock.Shutdown(ctx))
		errs = append(errs, n.httpSrv.Shutdown(ctx))
		served := make(chan struct{})
		go func() { n.wg.Wait(); close(served) }()
		select {
		case <-served:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("node: listeners still serving: %w", ctx.Err()))
		}
		if n.hookDisp != nil {
			n.hookDisp.Close() // before the engines: it acknowledges through them
		}
		var engErr error
		if n.parts != nil {
			engErr = n.parts.shutdownEngines(ctx)
		} else {
			engErr = n.eng.Shutdown(ctx)
		}
		if err := engErr; err != nil {
			errs = append(errs, fmt.Errorf("node: engine: %w", err))
			if ctx.Err() != nil {
				// The engine's goroutines still use the keyring and the
				// store: leave them open (the process is about to exit;
				// what is durable is on disk, and the rest was never
				// acknowledged).
				n.hub.Close()
				n.stopErr = errors.Join(errs...)
				n.log.Error("ding stopped before the engine finished; store left open", "err", n.stopErr)
				return
			}
		}
		if n.pusher != nil {
			n.pusher.Close()
		}
		n.hub.Close()
		if n.guard != nil {
			n.guard.Close()
		}
		if n.parts != nil {
			errs = append(errs, n.parts.closeStores()...)
		} else {
			errs = append(errs, n.secretKeys.Close()) // after the engine: its commit loop writes keys
			errs = append(errs, n.db.Close())
		}
		if n.lock != nil {
			n.lock.Close() // last: the store is closed
		}
		n.stopErr = errors.Join(errs...)
		n.log.Info("ding stopped")
	})
	return n.stopErr
}

// backupDir creates the backup root (mode 0700, tightened if it exists)
// and returns its real path.
func backupDir(cfg Config) (string, error) {
	dir := cfg.BackupDir
	if dir == "" {
		dir = filepath.Join(cfg.DataDir, "backups")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("node: backup dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", fmt.Errorf("node: backup dir: %w", err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("node: backup dir: %w", err)
	}
	return filepath.Abs(real)
}
