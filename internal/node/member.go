package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/channels/email"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine/keyring"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// MemberConfig configures one member of a cluster (cluster mode, package
// cluster). This first cluster mode has one partition, holding every
// user: one member owns it and serves clients, another follows it as its
// standby and takes over when the owner's lease lapses, and any more wait
// as spares, one of which becomes the new owner's standby. Members that
// do not serve answer clients with the owner's address (NOT_OWNER).
type MemberConfig struct {
	// Node is the node this member serves as while it owns the
	// partition; its DataDir holds this member's store.
	Node  Config
	Coord cluster.Coord
	// ID names this member in the cluster; Advertise is the base URL of
	// its HTTP listener as the other members reach it (snapshots);
	// Secret is the cluster's shared secret.
	ID, Advertise, Secret string
	// AdvertiseSocket is this member's socket listener as clients reach
	// it (host:port): while it does not own the partition, its socket
	// port answers every HELLO with NOT_OWNER and this address of the
	// member that does. Empty means Advertise's host with Node.SocketAddr's
	// port.
	AdvertiseSocket string
	// AdvertiseTLSSocket is this member's TLS socket listener as clients
	// reach it (with Node.TLSSocketAddr): a member that does not serve
	// answers a HELLO on its TLS socket port with NOT_OWNER and this
	// address of the member that does. Empty means Advertise's host with
	// Node.TLSSocketAddr's port.
	AdvertiseTLSSocket string
	// LeaseTTL is how long an owner's lease lasts unrenewed: a dead
	// owner's partition is taken over about this long after its death.
	// Zero means 3s.
	LeaseTTL time.Duration
	// Started, if set, is called each time this member starts serving.
	Started func(*Node)
	// PeerCA, if set, is a PEM file of the CA that signed the members'
	// certificates: their HTTPS to one another (snapshots, standby
	// requests, fences, the stand-in's proxy) trusts it besides the
	// system's roots. Members advertised as https:// need it when their
	// certificates come from a private CA.
	PeerCA string
	// OwnerOnly is dingd --ack-replicas 0: while it serves, a submit is
	// acknowledged once durable on this member, without waiting for the
	// standby (still shipped every batch): lower latency, and a failover
	// loses what the standby had not applied. The default (false) is
	// --ack-replicas 1: nothing acknowledged is lost when any one member
	// dies.
	OwnerOnly bool
}

// ErrDeposed is returned by RunMember when the member lost its partition
// while it served (its lease could not be renewed: a standby took over).
// Its store may hold batches nobody acknowledged, so it must not serve
// from it again: run it again and it rejoins from the owner's snapshot.
var ErrDeposed = errors.New("node: deposed: another member owns the partition now")

// standbyStall is how many lease TTLs batches may wait on a standby that
// makes no progress before the owner drops it (2: 6s by default), long
// enough for a busy standby's fsync, short enough that a dead one stops
// writes for seconds, not until it is back.
const standbyStall = 2

// drainRelease is how many lease TTLs a drained member keeps following
// as the standby, for another node to take its place through the
// history, before it lets the place go (no other node can: 60s by
// default).
const drainRelease = 20

// RunMember runs a cluster member until ctx ends (a clean stop: an owner
// drains and releases its lease, so its standby takes over at once) or
// it is deposed (ErrDeposed). Depending on the cluster's state it
// founds the partition (a new cluster, an empty data dir), takes it over
// (it is the standby and the lease is free), follows it (it is the
// standby), or joins as the standby of a partition that has none (it
// fetches the owner's snapshot, replacing its own store, which it keeps
// as store.old).
func RunMember(ctx context.Context, mc MemberConfig) error {
	if mc.ID == "" || mc.Advertise == "" || mc.Secret == "" || mc.Coord == nil {
		return errors.New("node: cluster mode needs a member id, an advertised address, a cluster secret and a coordinator")
	}
	if mc.LeaseTTL == 0 {
		mc.LeaseTTL = 3 * time.Second
	}
	if mc.Node.DataDir == "" {
		mc.Node.DataDir = "ding-data"
	}
	if mc.Node.Logger == nil {
		mc.Node.Logger = slog.Default()
	}
	if mc.Node.RestoreFrom != "" {
		return errors.New("node: a cluster member does not restore a backup; it joins from its owner's snapshot")
	}
	if len(mc.Node.ACME.Domains) > 0 {
		return errors.New("node: tls: ACME is for a single node; cluster members use certificate files")
	}
	if err := os.MkdirAll(mc.Node.DataDir, 0o700); err != nil {
		return fmt.Errorf("node: data dir: %w", err)
	}
	// Held for the whole run, standing by or serving (Start then takes
	// none of its own).
	lock, err := lockDataDir(mc.Node.DataDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	mc.Node.locked = true
	if mc.AdvertiseTLSSocket == "" && mc.Node.TLSSocketAddr != "" {
		if mc.AdvertiseTLSSocket, err = advertisedSocket(mc.Advertise, mc.Node.TLSSocketAddr); err != nil {
			return err
		}
	}
	if mc.AdvertiseSocket == "" {
		if mc.AdvertiseSocket, err = advertisedSocket(mc.Advertise, mc.Node.SocketAddr); err != nil {
			return err
		}
	}
	peer, err := peerClient(mc.PeerCA)
	if err != nil {
		return err
	}
	if err := checkPartitionCount(ctx, mc.Coord, mc.ID, max(mc.Node.Partitions, 1)); err != nil {
		return err
	}
	if mc.Node.Partitions > 1 {
		return runPartitioned(ctx, mc, peer)
	}
	m := &member{mc: mc, c: mc.Coord, log: mc.Node.Logger.With("member", mc.ID), peers: loadPeers(mc.Node.DataDir), peer: peer,
		fwd: newForwarder(mc.Secret, mc.Node.Logger.With("member", mc.ID)), host: wholeNode{}, handover: make(chan struct{}, 1), look: make(chan struct{}, 1),
		moves: &ownerMoves{}}
	m.state.Store(stateSpare)
	if a, ok := mc.Coord.(cluster.Announcer); ok {
		if err := a.Listen(ctx, func(cluster.Partition) { m.announced(); m.moves.moved() }); err != nil {
			m.log.Warn("listening for the partition's hand-overs failed; a standby sees one a quarter of a lease later", "err", err)
		}
	}
	m.metrics = m.standInMetrics()
	defer m.host.standOut(m)
	if reg, ok := mc.Coord.(cluster.Registry); ok {
		pctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); m.publish(pctx, reg) }()
		defer func() { stop(); <-done }()
	}
	return m.run(ctx)
}

// peerClient is the HTTP client members use with one another: the
// system's roots, and caFile's CA if given.
func peerClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("node: cluster CA: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("node: cluster CA: %s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	}
	return &http.Client{Transport: tr}, nil
}

// advertisedSocket is the host of the advertised HTTP URL with the
// socket listener's port.
func advertisedSocket(advertise, listen string) (string, error) {
	u, err := url.Parse(advertise)
	if err != nil || u.Hostname() == "" {
		return "", fmt.Errorf("node: advertise %q: want a URL such as http://10.0.0.2:7080", advertise)
	}
	if listen == "" {
		listen = ":7070"
	}
	_, port, err := net.SplitHostPort(listen)
	if err != nil || port == "0" {
		return "", fmt.Errorf("node: the socket listen address %q has no fixed port to advertise: set the advertised socket address", listen)
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

type member struct {
	mc  MemberConfig
	c   cluster.Coord
	log *slog.Logger
	// p is the partition this member runs for: 0, the only one of a
	// cluster of one partition, or one of a node's partitions (a member
	// per partition: partmember.go). host serves it while this member
	// owns it (memberhost.go); handover asks serve to hand it over.
	p            cluster.Partition
	perPartition bool
	host         memberHost
	handover     chan struct{}
	// look (capacity 1) ends a pause early: the coordinator announced
	// that the partition's owner let it go or a new one serves it
	// (cluster.Announcer), so the standby looks at the lease now, not a
	// quarter of a TTL later.
	look chan struct{}
	// moves ends this member's requests to the owner in flight (its
	// history, a snapshot, the standby's place) when the partition's new
	// owner is announced: the old one may be frozen, not dead. A node of
	// partitions shares its coordOwners' (movesOf), which Moved ends.
	moves *ownerMoves
	// claimUntil (unix ns) asks this member, until then, to take the
	// standby's place of a node holding more roles, or drained
	// (partmember.go's balance): it follows the owner's snapshot as a
	// learner, then the role moves to it through the history
	// (cluster.ReplicatedStore.ReplaceStandbyAt), the partition never
	// without a standby meanwhile. yieldUntil (unix ns) is until when a
	// member that handed its place over does not join again.
	claimUntil atomic.Int64
	yieldUntil atomic.Int64
	// joinedSnapshot and joinedOwn count the times it started following
	// an owner from a snapshot, and from its own history (no copy:
	// cluster.Owner.Continues).
	joinedSnapshot, joinedOwn atomic.Int64
	// keep is how much of its latest history the member keeps in memory
	// as the standby, for the observers of the owner it may become
	// (cluster.Standby.KeepRecent; the directory's partition).
	keep int

	// While it does not serve: what it does, its copy of the partition
	// (while it follows), its metrics, and its stand-in on the node's
	// ports (standin.go).
	state    atomic.Value // memberState
	follower atomic.Pointer[cluster.Follower]
	// drained: asked to hold no role (dingctl cluster drain); it never
	// founds, joins or takes over again in this run.
	drained atomic.Bool
	// serving is the owner's replicated store while this member serves.
	serving atomic.Pointer[cluster.ReplicatedStore]
	// peers: the members it has seen (recover.go); lastLocal: its store's
	// state as last read, for its fence while it neither follows nor
	// serves.
	peers     *peers
	lastLocal atomic.Pointer[localCopy]
	// fenceFresh: lastLocal is this member's store's state now (set when
	// read; cleared when the member joins, follows or serves, which
	// change it). While it is not, and the member neither follows nor
	// serves, its fence is unknown: GET /cluster/fence answers 503, and a
	// recovery waits rather than count it as holding less than it does.
	fenceFresh atomic.Bool
	logMu      sync.Mutex
	logged     map[string]string
	metrics    *prometheus.Registry
	stand      *standIn
	cache      ownerCache
	// standCerts is the stand-in's HTTPS certificate (the node's files).
	standCerts *certReloader
	// peer is the HTTP client for the other members (PeerCA).
	peer *http.Client
	// fwd signs what this member sends on to another and checks what
	// others send on to it (forwarded.go).
	fwd *forwarder
}

// socketAddrKey is where a member publishes its socket address (beside
// its HTTP URL under its own id).
func socketAddrKey(id string) string { return id + "/socket" }

// tlsSocketAddrKey is where it publishes its TLS socket address.
func tlsSocketAddrKey(id string) string { return id + "/tls-socket" }

// storeDir is the member's copy of its partition: DATA/store for a
// cluster of one partition, as it has always kept it, else
// DATA/p/N/store (the node's layout of partitions).
func (m *member) storeDir() string {
	if !m.perPartition {
		return filepath.Join(m.mc.Node.DataDir, "store")
	}
	return partitionDir(m.mc.Node.DataDir, int(m.p), "store")
}

// filesDir is where this member's partition keeps its files besides its
// store: the data dir for a cluster of one partition, else DATA/p/N.
func (m *member) filesDir() string {
	if !m.perPartition {
		return m.mc.Node.DataDir
	}
	return partitionDir(m.mc.Node.DataDir, int(m.p), "")
}

// keysFile is the partition's keyring of secret messages' keys.
func (m *member) keysFile() string { return filepath.Join(m.filesDir(), SecretKeysFile) }

// sharedFiles travel with a snapshot: a standby that takes over must sign
// and check the same tokens, hold the same admin token, read the same
// secret-chat keys and accept the e-mail links the owner sent (a missing
// one, such as the link key without e-mail configured, is skipped). With
// a member per partition, only the partition's keys: the node's own
// files are the cluster's from before it starts (partmember.go).
func (m *member) sharedFiles() []string {
	if m.perPartition {
		return []string{m.keysFile()}
	}
	d := m.mc.Node.DataDir
	return append(nodeFiles(d), m.keysFile())
}

// nodeFiles are the files every node of a cluster holds alike: the
// token signing secret, the admin token, the e-mail link key.
func nodeFiles(dataDir string) []string {
	return []string{filepath.Join(dataDir, auth.SecretFile), filepath.Join(dataDir, AdminTokenFile), filepath.Join(dataDir, email.KeyFile)}
}

// toHolder bounds a request to holder, the partition's owner when the
// lease was last looked at: it ends (errOwnerMoved) at a move announced
// since then (since: ownerMoves.current, taken before that look), or,
// should the announcement be lost (they are hints), when a look at the
// lease, every quarter of a lease while it runs, finds another holder or
// none (watchLease). A frozen owner would otherwise hold it until TCP
// gave up.
func (m *member) toHolder(ctx, since context.Context, holder string) (context.Context, context.CancelFunc) {
	bctx, unbind := boundTo(ctx, since)
	wctx, unwatch := watchLease(bctx, m.c, m.p, holder, m.mc.LeaseTTL/4)
	return wctx, func() { unwatch(); unbind() }
}

// watchLease returns ctx, ended (errOwnerMoved) when a look at partition
// p's lease, every every while it runs, finds a holder other than
// holder, or none.
func watchLease(ctx context.Context, c cluster.Coord, p cluster.Partition, holder string, every time.Duration) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithCancelCause(ctx)
	go func() { // until wctx ends: the caller's cancel ends it too
		t := time.NewTicker(max(every, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
				if h, _, err := c.Lease(wctx, p); err == nil && h != holder {
					cancel(errOwnerMoved)
					return
				}
			}
		}
	}()
	return wctx, func() { cancel(nil) }
}

// announced acts on the coordinator's announcement that the partition's
// owner let it go or a new one serves it (cluster.Announcer), before its
// moves are ended (the requests to the old owner), so that a request
// starting in between looks the new owner up: the owner cached is
// forgotten (NOT_OWNER names the new one at once), and a pause ends so
// that the member looks at the lease now.
func (m *member) announced() {
	m.cache.forget()
	poke(m.look)
}

// endpoint is this member's partition's cluster routes on the node at
// addr (its advertised HTTP URL).
func (m *member) endpoint(addr string) cluster.Endpoint {
	return cluster.Endpoint{Client: m.peer, URL: addr, Secret: m.mc.Secret, P: m.p}
}

func (m *member) pause(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(m.mc.LeaseTTL / 4):
		return true
	case <-m.look:
		return true
	}
}

func (m *member) run(ctx context.Context) error {
	p, ttl := m.p, m.mc.LeaseTTL
	waiting := ""
	var lonely time.Time // since when no other member is known (founding)
	m.state.Store(stateSpare)
	m.host.standIn(m)
	// What this member holds, for its fence (recover.go): its store is
	// closed here, whatever it did before.
	if _, _, err := m.localState(); err != nil {
		return err
	}
	for ctx.Err() == nil {
		if m.drained.Load() {
			return m.stayDrained(ctx)
		}
		holder, epoch, err := m.c.Lease(ctx, p)
		var sb string
		if err == nil {
			sb, err = m.c.Standby(ctx, p)
		}
		if err != nil {
			m.log.Warn("coordinator unreachable; retrying", "err", err)
			m.pause(ctx)
			continue
		}
		switch {
		case holder == "" && epoch == 0 && sb == "":
			_, held, err := m.localState()
			if err != nil {
				return err
			}
			if held {
				// The coordinator lost the partition's state (recover.go).
				if err := m.recoverPartition(ctx); !errors.Is(err, errWaitRecovery) {
					return err
				}
				m.pause(ctx)
				continue
			}
			if !emptyDir(m.storeDir()) {
				return fmt.Errorf("node: a new cluster starts from an empty data dir; %s holds a store", m.storeDir())
			}
			if others := m.otherMembers(ctx); len(others) > 0 {
				// The coordinator lost its state and members with histories
				// recover it (this one joins then), or the members were
				// started together for a new cluster: the smallest id
				// founds it (foundsWithOthers).
				if found, why, args := m.foundsWithOthers(ctx); !found {
					m.logOnce("found", why, args...)
					lonely = time.Time{}
					m.pause(ctx)
					continue
				}
			}
			// A new cluster (nobody else known, or nobody holding a
			// history and this member the founder), or a coordinator that
			// lost everything before the others (which publish every third
			// of a lease) said they exist. Found only after three lease
			// TTLs of that.
			if lonely.IsZero() {
				lonely = time.Now()
			}
			if time.Since(lonely) < 3*ttl {
				m.pause(ctx)
				continue
			}
			// A new cluster: the first member founds it, from an empty store.
			e, ok, err := m.c.TakeLease(ctx, p, m.mc.ID, 0, ttl)
			if err != nil || !ok {
				continue
			}
			if err := m.recordFounding(e); err != nil {
				_ = m.c.ReleaseLease(ctx, p, m.mc.ID, e)
				return err
			}
			m.log.Info("founded the cluster's partition", "epoch", e)
			return m.serve(ctx, cluster.NewOwner(m.c, p, m.mc.ID, e, 0, ""))
		case sb == m.mc.ID && holder != m.mc.ID:
			st, held, err := m.localState()
			if err != nil {
				return err
			}
			if !held || st.Stale || st.Demoted {
				return m.join(ctx, holder, "")
			}
			return m.standby(ctx, st, nil)
		case holder == "" || holder == m.mc.ID:
			if sb == "" {
				// No owner and no standby named: nobody may take over by
				// the protocol's rule (the standby died or was dropped, or
				// the coordinator lost its state). Members recover it
				// together (recover.go).
				if _, held, err := m.localState(); err != nil {
					return err
				} else if held {
					if err := m.recoverPartition(ctx); !errors.Is(err, errWaitRecovery) {
						return err
					}
				}
				m.pause(ctx)
				continue
			}
			// Free, and this member is not its standby (or it held the lease
			// before a restart and lost what it needs to serve it): the
			// standby takes it over; then this member joins.
			if waiting != holder+"/"+sb {
				waiting = holder + "/" + sb
				m.log.Info("waiting for the partition's standby to take over", "standby", sb)
			}
			m.pause(ctx)
		default:
			if sb != "" && sb != m.mc.ID && time.Now().UnixNano() < m.claimUntil.Swap(0) {
				return m.join(ctx, holder, sb)
			}
			if sb != "" {
				if waiting != holder+"/"+sb {
					waiting = holder + "/" + sb
					m.log.Info("the partition has an owner and a standby; waiting for a place", "owner", holder, "standby", sb)
				}
				m.pause(ctx)
				continue
			}
			if time.Now().UnixNano() < m.yieldUntil.Load() {
				m.pause(ctx) // it left the place to another node: let that one join
				continue
			}
			return m.join(ctx, holder, "")
		}
	}
	return nil
}

// localState reads this member's standby state from its store, if it
// has one.
func (m *member) localState() (cluster.StandbyState, bool, error) {
	if emptyDir(m.storeDir()) {
		m.lastLocal.Store(&localCopy{})
		m.fenceFresh.Store(true)
		return cluster.StandbyState{}, false, nil
	}
	db, err := pebblestore.Open(m.storeDir(), pebblestore.Options{Logger: m.log})
	if err != nil {
		return cluster.StandbyState{}, false, err
	}
	defer db.Close()
	f, err := cluster.NewFollower(m.c, m.p, m.mc.ID, db, cluster.StandbyState{})
	if err != nil {
		return cluster.StandbyState{}, false, err
	}
	st := f.Standby().State()
	m.lastLocal.Store(&localCopy{fence: f.Fence(m.mc.ID)})
	m.fenceFresh.Store(true)
	return st, st.FenceEpoch > 0, nil
}

// recordFounding writes the founder's fence (epoch, itself) into its new
// store, so that after a restart it knows it held the partition (for
// recovery, recover.go).
func (m *member) recordFounding(epoch uint64) error {
	if err := os.MkdirAll(m.storeDir(), 0o700); err != nil {
		return err
	}
	db, err := pebblestore.Open(m.storeDir(), pebblestore.Options{Logger: m.log})
	if err != nil {
		return err
	}
	defer db.Close()
	f, err := cluster.NewFollower(m.c, m.p, m.mc.ID, db, cluster.StandbyState{})
	if err != nil {
		return err
	}
	return f.SaveState(cluster.StandbyState{FenceEpoch: epoch, FenceOwner: m.mc.ID})
}

// otherMembers names the members other than this one that it knows of
// (its record of them, and the coordinator's registry).
func (m *member) otherMembers(ctx context.Context) []string {
	if reg, ok := m.c.(cluster.Registry); ok {
		if ms, err := reg.Members(ctx); err == nil {
			_ = m.peers.merge(ms)
		}
	}
	var out []string
	for id := range m.peers.snapshot() {
		if id != m.mc.ID {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

func emptyDir(dir string) bool {
	es, err := os.ReadDir(dir)
	return err != nil || len(es) == 0
}

// join becomes the standby of holder's partition: it fetches holder's
// snapshot, replaces its store and shared files with it, follows, and
// asks holder to name it. With replacing set (the standby now), it asks
// for that node's place, which moves to it through the history once it
// follows (a learner until then).
func (m *member) join(ctx context.Context, holder, replacing string) error {
	m.state.Store(stateJoining)
	// Until the snapshot is installed, this member's store is unchanged:
	// its fence (recover.go) stays what run read.
	// since is what the next announcement of a move cancels, taken before
	// each look at the lease: the requests to holder below end at a move
	// announced since it was looked at (holder may be frozen, not dead).
	var since context.Context
	stillOwner := func() bool {
		since = m.moves.current()
		h, _, err := m.c.Lease(ctx, m.p)
		return err != nil || h == holder
	}
	if !stillOwner() {
		return m.run(ctx) // it moved since run looked
	}
	for ctx.Err() == nil && !m.drained.Load() {
		addr, err := m.c.Addr(ctx, holder)
		if err != nil || addr == "" {
			m.log.Info("waiting for the owner's address", "owner", holder, "err", err)
			m.pause(ctx)
			if !stillOwner() {
				return m.run(ctx) // it died or was replaced meanwhile
			}
			continue
		}
		if replacing == "" {
			// Its own history may be the one the owner took over with (it
			// handed the partition over, or its standby took it over when
			// it died): then it follows from it, no snapshot to copy.
			if cur, held, err := m.localState(); err != nil {
				return err
			} else if held && !cur.Stale && !cur.Demoted && !cur.Learner {
				bctx, cancel := m.toHolder(ctx, since, holder)
				st, err := m.endpoint(addr).ContinueAsStandby(bctx, m.mc.ID, cur)
				moved := ownerMovedErr(ctx, bctx)
				cancel()
				if err != nil && moved != nil { // (an answer that came wins)
					m.log.Info("the partition's new owner was announced while the old one was asked to continue from this member's history; looking again", "owner", holder)
					m.pause(ctx)
					if !stillOwner() {
						return m.run(ctx)
					}
					continue
				}
				if err == nil {
					m.joinedOwn.Add(1)
					m.log.Info("following the partition's new owner from this member's own history (no snapshot)", "owner", holder, "seq", st.Seq, "epoch", st.FenceEpoch)
					return m.follow(ctx, st, true, nil)
				}
				if errors.Is(err, cluster.ErrNotServing) {
					// It holds the lease and is still attaching the
					// partition (or let it go since): ask again once it
					// serves, rather than copying a snapshot for nothing.
					m.log.Info("the owner does not serve the partition yet; asking it again to continue from this member's history", "owner", holder)
					m.pause(ctx)
					if !stillOwner() {
						return m.run(ctx)
					}
					continue
				}
				if errors.Is(err, cluster.ErrStandbyRefused) {
					m.log.Info("the owner cannot continue from this member's history; fetching its snapshot", "owner", holder, "seq", cur.Seq, "epoch", cur.FenceEpoch, "err", err)
				} else {
					m.log.Warn("asking the owner to continue from this member's history failed; fetching its snapshot", "owner", holder, "err", err)
				}
			}
		}
		// Named by partition too: a node's members may join at the same
		// instant.
		tmp := filepath.Join(m.mc.Node.DataDir, "snapshot-"+strconv.Itoa(int(m.p))+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
		if err := os.MkdirAll(filepath.Dir(m.storeDir()), 0o700); err != nil {
			return fmt.Errorf("node: %w", err)
		}
		bctx, cancel := m.toHolder(ctx, since, holder)
		st, err := m.endpoint(addr).FetchSnapshot(bctx, tmp)
		moved := ownerMovedErr(ctx, bctx)
		cancel()
		if err != nil {
			if moved != nil {
				m.log.Info("the partition's new owner was announced while its snapshot was fetched from the old one; looking again", "owner", holder)
			} else {
				m.log.Warn("fetching the owner's snapshot failed; retrying", "owner", holder, "err", err)
			}
			m.pause(ctx)
			if !stillOwner() {
				return m.run(ctx)
			}
			continue
		}
		// This member's fence never moves back: an owner the coordinator
		// wrongly names (its state rolled back) must not overwrite a newer
		// history this member holds.
		if cur, held, err := m.localState(); err != nil {
			_ = os.RemoveAll(tmp)
			return err
		} else if err := cluster.CheckSnapshot(cur, held, st); err != nil {
			_ = os.RemoveAll(tmp)
			m.log.Warn("refusing the owner's snapshot", "owner", holder, "err", err)
			m.pause(ctx)
			continue
		}
		m.fenceFresh.Store(false) // the store changes now
		if err := m.install(tmp); err != nil {
			return err
		}
		m.joinedSnapshot.Add(1)
		if replacing != "" {
			// It may not take over until it applies the hand-over entry
			// naming it (cluster.StandbyState.Learner).
			st.Learner = true
			m.log.Info("following the owner's snapshot as a learner, to take the standby's place", "owner", holder, "standby", replacing, "seq", st.Seq, "epoch", st.FenceEpoch)
		} else {
			m.log.Info("joined as standby from the owner's snapshot", "owner", holder, "seq", st.Seq, "epoch", st.FenceEpoch)
		}
		return m.follow(ctx, st, true, func() error {
			bctx, cancel := m.toHolder(ctx, since, holder)
			defer cancel()
			err := m.endpoint(addr).RequestStandbyPlace(bctx, m.mc.ID, replacing, st)
			if moved := ownerMovedErr(ctx, bctx); err != nil && moved != nil {
				// Asked of an owner since replaced: the place is not
				// this snapshot's to take (as when refused).
				return fmt.Errorf("%w: %w", cluster.ErrStandbyRefused, moved)
			}
			return err
		})
	}
	if m.drained.Load() {
		return m.stayDrained(ctx)
	}
	return nil
}

// install moves a fetched snapshot into place: the old store aside (as
// store.old, replacing an older one), the shared files over the old.
func (m *member) install(tmp string) error {
	defer os.RemoveAll(tmp)
	if !emptyDir(m.storeDir()) {
		old := m.storeDir() + ".old"
		_ = os.RemoveAll(old)
		if err := os.Rename(m.storeDir(), old); err != nil {
			return fmt.Errorf("node: set the old store aside: %w", err)
		}
		m.log.Warn("replaced this member's store with the owner's snapshot; the old one is kept", "old", old)
	} else {
		_ = os.RemoveAll(m.storeDir())
	}
	if err := os.Rename(filepath.Join(tmp, "store"), m.storeDir()); err != nil {
		return fmt.Errorf("node: install the snapshot: %w", err)
	}
	files, _ := os.ReadDir(filepath.Join(tmp, "files"))
	for _, f := range files {
		if err := os.Rename(filepath.Join(tmp, "files", f.Name()), filepath.Join(m.filesDir(), f.Name())); err != nil {
			return fmt.Errorf("node: install %s: %w", f.Name(), err)
		}
	}
	return nil
}

// standby follows the partition from st until its lease is free, then
// takes it over and serves. ready, if set, runs once the follower runs
// (to ask the owner to name this member).
func (m *member) standby(ctx context.Context, st cluster.StandbyState, ready func() error) error {
	return m.follow(ctx, st, false, ready)
}

// follow is standby; fromSnapshot: the store was just installed from a
// snapshot whose state is st (which then wins over the state the copied
// store holds: cluster.NewFollowerFromSnapshot).
func (m *member) follow(ctx context.Context, st cluster.StandbyState, fromSnapshot bool, ready func() error) error {
	m.fenceFresh.Store(false)
	db, err := pebblestore.Open(m.storeDir(), pebblestore.Options{Logger: m.log})
	if err != nil {
		return err
	}
	ring, err := keyring.Open(m.keysFile())
	if err != nil {
		db.Close()
		return fmt.Errorf("node: %w", err)
	}
	closeStores := func() { ring.Close(); db.Close() }
	newFollower := cluster.NewFollower
	if fromSnapshot {
		newFollower = cluster.NewFollowerFromSnapshot
	}
	f, err := newFollower(m.c, m.p, m.mc.ID, db, st)
	if err != nil {
		closeStores()
		return err
	}
	if f.Codec, err = cluster.NewKeyCodec(m.mc.Secret); err != nil {
		closeStores()
		return err
	}
	f.Keys = ring // the secret-message keys entries carry
	if m.keep > 0 {
		f.Standby().KeepRecent(m.keep)
	}
	if ready == nil {
		m.state.Store(stateStandby)
	} // else joining (a learner, if it takes a place) until the owner names it
	m.follower.Store(f)
	defer m.follower.CompareAndSwap(f, nil)
	follow := func() (stop func()) {
		fctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = f.Run(fctx, m.mc.LeaseTTL/4) }()
		return func() { cancel(); <-done }
	}
	stop := follow()
	// leave stops following and closes this copy, for the member loop
	// (or serve) to go on from.
	leave := func() {
		stop()
		closeStores()
		m.follower.Store(nil)
	}
	if ready != nil {
		for {
			err := ready()
			if err == nil {
				break
			}
			if errors.Is(err, cluster.ErrStandbyRefused) {
				// Another member got the place (or the owner changed): this
				// snapshot must not become the standby later, when it may
				// lack batches acknowledged through the other one. Start
				// over from the member loop (a new snapshot, if a place
				// frees).
				m.log.Warn("the owner did not name this member its standby; standing by", "err", err)
				leave()
				return m.run(ctx)
			}
			m.log.Warn("asking the owner to name this member its standby failed; retrying", "err", err)
			if !m.pause(ctx) {
				stop()
				closeStores()
				return nil
			}
		}
	}
	m.state.Store(stateStandby)
	m.log.Info("following the partition as its standby")
	var drainedAt, leavingAt time.Time
	for m.pause(ctx) {
		if f.Standby().State().Demoted {
			// The history handed the place to another node (it took it
			// through balance, or from this drained node): this member
			// can never take over on this copy; it stops following, and
			// does not join again for a while (yieldUntil).
			leave()
			m.log.Info("handed the standby's place over through the history")
			m.yieldUntil.Store(time.Now().Add(3 * m.mc.LeaseTTL).UnixNano())
			return m.run(ctx)
		}
		if m.drained.Load() {
			// Drained: it keeps following until another node takes the
			// place from it (the others' balance claims a drained node's
			// places), so that the partition keeps a standby throughout.
			// When none does (no other node can follow it: two nodes),
			// it lets the place go: writes then wait until a member
			// joins.
			if drainedAt.IsZero() {
				drainedAt = time.Now()
			}
			if time.Since(drainedAt) >= drainRelease*m.mc.LeaseTTL {
				m.log.Warn("drained, and no other node took the standby's place: letting it go (writes wait until a member joins)")
				leave()
				m.release(ctx)
				return m.run(ctx)
			}
		}
		if f.Standby().State().Stale {
			// A newer owner than the one this copy follows: it follows
			// again only from a new snapshot (cluster.StandbyState.Stale).
			leave()
			m.log.Warn("the partition has a newer owner than the history this member follows; it joins again from a snapshot")
			return m.run(ctx)
		}
		st := f.Standby().State()
		// A hand-over replacing this member (Leaving): the coordinator may
		// name the node replacing it already, while the owner still counts
		// this one's acks, until it applies the entry that demotes it. It
		// follows on meanwhile, or, should that entry never come (the
		// owner let it go after it stalled), for as long as the owner
		// waits on a stalled standby, and then looks as below.
		leaving := false
		if st.Leaving {
			if leavingAt.IsZero() {
				leavingAt = time.Now()
			}
			leaving = time.Since(leavingAt) < (standbyStall+1)*m.mc.LeaseTTL
		}
		if !st.Learner && !leaving && !m.drained.Load() {
			// Dropped by the owner (it stopped acking in time, or the
			// owner changed): the owner no longer counts this member's
			// acks, and waits for a standby while this member, following
			// on, looked like one and no spare joined. It joins again.
			if sb, err := m.c.Standby(ctx, m.p); err == nil && sb != m.mc.ID {
				leave()
				m.log.Warn("the coordinator no longer names this member the partition's standby; it joins again", "standby", sb)
				return m.run(ctx)
			}
		}
		holder, _, err := m.c.Lease(ctx, m.p)
		if err != nil || holder != "" {
			continue
		}
		// The lease lapsed: catch up with what the stream holds, then take
		// over (the follower is stopped: TakeOver and Step share state).
		stop()
		for {
			n, err := f.Standby().Step(ctx, 512)
			if err != nil || n == 0 {
				break
			}
		}
		owner, err := f.Standby().TakeOver(ctx, m.mc.LeaseTTL)
		if err != nil {
			if errors.Is(err, cluster.ErrNotStandby) {
				leave()
				m.log.Warn("no longer the partition's standby", "err", err)
				return m.run(ctx)
			}
			stop = follow()
			continue
		}
		leave()
		m.log.Info("took the partition over", "epoch", owner.Epoch())
		return m.serve(ctx, owner)
	}
	stop()
	closeStores()
	return nil
}

// serve runs the partition as its owner until ctx ends or it is
// deposed: its host starts serving it (the node, or the node's runtime
// of the partition), and this member renews the lease, hands the
// partition over when asked, and stops serving when the lease is lost.
func (m *member) serve(ctx context.Context, owner *cluster.Owner) error {
	m.fenceFresh.Store(false)
	leaseFrom := time.Now() // just after the lease was taken or renewed
	p, ttl := m.p, m.mc.LeaseTTL
	m.host.standOut(m)
	sv, err := m.host.start(m, owner, leaseFrom)
	if err != nil {
		_ = m.c.ReleaseLease(context.Background(), p, m.mc.ID, owner.Epoch())
		return err
	}
	// Served here now: the other nodes end what they have in flight to
	// the owner before (it may be frozen, its lease lapsed unannounced)
	// and look again.
	announce(m, m.c)
	rs := sv.rs
	m.serving.Store(rs)
	defer m.serving.CompareAndSwap(rs, nil)
	// Through rs, under its lock: a standby may join (AddStandbyContinuing,
	// from the snapshot handler) as soon as the partition is served.
	if cur := rs.Status().Standby; cur == "" && !m.mc.OwnerOnly {
		m.log.Warn("serving without a standby: submits wait until a member joins (nothing is acknowledged unreplicated)")
	} else if m.mc.OwnerOnly {
		m.log.Warn("ack-replicas 0: submits are acknowledged once on this member's disk; a failover loses what the standby had not applied", "standby", cur)
	}
	renewed := time.Now()
	tick := time.NewTicker(ttl / 3)
	defer tick.Stop()
	for {
		err := m.c.SetAddr(ctx, m.mc.ID, m.mc.Advertise, 3*ttl)
		if err == nil {
			err = m.c.SetAddr(ctx, socketAddrKey(m.mc.ID), m.mc.AdvertiseSocket, 3*ttl)
		}
		if err == nil && m.mc.AdvertiseTLSSocket != "" {
			err = m.c.SetAddr(ctx, tlsSocketAddrKey(m.mc.ID), m.mc.AdvertiseTLSSocket, 3*ttl)
		}
		if err != nil && ctx.Err() == nil {
			m.log.Warn("publishing this member's address failed", "err", err)
		}
		stop := func() error {
			began := time.Now()
			// Batches in flight wait for the standby; a dead standby must
			// not hold the drain past its deadline.
			t := time.AfterFunc(10*time.Second, rs.Stop)
			sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			err := sv.shutdown(sctx)
			cancel()
			t.Stop()
			if m.mc.OwnerOnly {
				// Acknowledged without the standby: let it catch up before
				// the lease goes, so that a planned stop loses nothing.
				actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
				if aerr := rs.AwaitStandby(actx); aerr != nil {
					m.log.Warn("releasing the lease before the standby holds every acknowledged batch (ack-replicas 0)", "err", aerr)
				}
				acancel()
			}
			rs.Stop() // ends owner-only mode's polling
			// Released only after the drain: every acknowledged batch is on
			// the standby, which may now take over at once (told so by the
			// announcement, if the coordinator makes them).
			_ = m.c.ReleaseLease(context.Background(), p, m.mc.ID, owner.Epoch())
			announce(m, m.c)
			m.log.Info("released the partition", "epoch", owner.Epoch(), "drain", time.Since(began).Round(time.Millisecond))
			return err
		}
		select {
		case <-ctx.Done():
			return stop()
		case <-m.handover:
			// A planned switch (maintenance of this machine): drain, let
			// the standby take over, and become its standby.
			m.log.Info("handing the partition over to the standby")
			if err := stop(); err != nil {
				m.log.Warn("drain before the hand-over", "err", err)
			}
			m.serving.Store(nil)
			return m.run(ctx)
		case <-tick.C:
		}
		sent := time.Now()
		ok, err := m.c.RenewLease(ctx, p, m.mc.ID, owner.Epoch(), ttl)
		switch {
		case err == nil && ok:
			renewed = time.Now()
			// The lease runs from when the coordinator renewed it, after
			// sent; a tenth of a TTL covers clocks running at different
			// rates.
			rs.SetLeaseUntil(sent.Add(ttl - ttl/10))
			if st := rs.Status(); st.Standby != "" && st.Stalled > standbyStall*ttl {
				// The standby stopped acking (dead, cut off): writes wait
				// for it. Drop it, so that a spare (or it, back) joins from
				// a snapshot and acknowledgements resume.
				m.log.Warn("the standby stopped acking; dropping it so another member can join", "standby", st.Standby, "stalled", st.Stalled.Round(time.Millisecond), "unacked", st.Unacked)
				if err := rs.DropStandby(ctx, m.c); err != nil {
					m.log.Warn("dropping the standby failed; retrying", "err", err)
				}
			}
			continue
		case err != nil && time.Since(renewed) < ttl:
			m.log.Warn("renewing the lease failed; retrying", "err", err)
			continue
		}
		m.log.Error("lost the partition's lease; stopping", "epoch", owner.Epoch(), "err", err)
		rs.Stop() // nothing more is acknowledged
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = sv.shutdown(sctx)
		cancel()
		m.serving.Store(nil)
		if holder, _, lerr := m.c.Lease(ctx, p); lerr == nil && (holder == "" || holder == m.mc.ID) && ctx.Err() == nil {
			// Nobody else holds it: the lease lapsed, or the coordinator
			// lost it. Back to the member's loop: its standby takes over
			// (then this member joins it), or the members recover it.
			m.log.Warn("the lease is gone and no other member holds it; standing by", "epoch", owner.Epoch())
			return m.run(ctx)
		}
		return ErrDeposed
	}
}

// release asks the owner to stop counting this drained member as its
// standby. Tried a few times: an owner that cannot be reached drops a
// standby that stopped acking by itself.
func (m *member) release(ctx context.Context) {
	for range 3 {
		holder, _, err := m.c.Lease(ctx, m.p)
		var addr string
		if err == nil && holder != "" {
			addr, err = m.c.Addr(ctx, holder)
		}
		if err == nil && addr != "" {
			if err = m.endpoint(addr).ReleaseStandby(ctx, m.mc.ID); err == nil {
				m.log.Info("released the standby role", "owner", holder)
				return
			}
		}
		m.log.Warn("asking the owner to release this standby failed", "err", err)
		if !m.pause(ctx) {
			return
		}
	}
}

// stayDrained holds no role until ctx ends: the member stands in (its
// ports redirect and proxy to the owner) and waits to be stopped.
func (m *member) stayDrained(ctx context.Context) error {
	m.state.Store(stateDrained)
	m.host.standIn(m)
	m.log.Info("drained: this member holds no role now; stop it (SIGTERM) for its maintenance")
	<-ctx.Done()
	return nil
}

// publish says what this member is doing in the coordinator's registry
// (cluster.Registry), every third of a lease, for dingctl cluster status.
func (m *member) publish(ctx context.Context, reg cluster.Registry) {
	t := time.NewTicker(m.mc.LeaseTTL / 3)
	defer t.Stop()
	for {
		if err := reg.SetMember(ctx, m.mc.ID, m.self(), 3*m.mc.LeaseTTL); err != nil && ctx.Err() == nil {
			m.log.Debug("publishing this member's status failed", "err", err)
		}
		if ms, err := reg.Members(ctx); err == nil {
			if err := m.peers.merge(ms); err != nil {
				m.log.Warn("recording the cluster's members failed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// self is this member's status now.
func (m *member) self() cluster.Member {
	me := memberStatus(m.mc.Advertise, m.mc.AdvertiseSocket, 0, "")
	if rs := m.serving.Load(); rs != nil {
		st := rs.Status()
		me.Role, me.Epoch, me.Seq = "owner", st.Epoch, st.Shipped
		return me
	}
	st, _ := m.state.Load().(memberState)
	me.Role = string(st)
	if f := m.follower.Load(); f != nil {
		s := f.Standby().State()
		me.Epoch, me.Seq = s.FenceEpoch, s.Seq
	}
	return me
}

// members lists the cluster's members, sorted by id, for status.
func (m *member) members(ctx context.Context) []memberView {
	reg, ok := m.c.(cluster.Registry)
	if !ok {
		return nil
	}
	ms, err := reg.Members(ctx)
	if err != nil {
		return nil
	}
	out := make([]memberView, 0, len(ms))
	for id, mb := range ms {
		out = append(out, memberView{ID: id, Member: mb})
	}
	slices.SortFunc(out, func(a, b memberView) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// memberView is one member in GET /v1/cluster.
type memberView struct {
	ID string `json:"id"`
	cluster.Member
}

// poke signals ch (capacity 1) without blocking: signals coalesce.
func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
