package node

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/fanout"
)

// A member per partition (stage 5a of cluster/PARTITIONS.md, step 3):
// a cluster node started with Partitions ≥ 2 runs the node all along,
// serving none of the partitions at first, and one member (member.go) per
// partition, each with its own lease, fence, standby and replication
// stream, as a cluster of one partition has for its only one. Its host
// (partHost) attaches the partition's runtime to the node on a
// cluster.ReplicatedStore when the member takes the lease, and detaches
// it when the member loses or hands it over. Meanwhile:
//
//   - a HELLO for a user of a partition this node does not serve is
//     answered NOT_OWNER with its owner's socket address (the lease
//     holder's, from the coordinator);
//   - what a partition served here owes a user of another partition goes
//     through its outbox to that partition's owner over HTTP (relay.HTTPDest,
//     resolved by coordOwners), and this node applies what other owners
//     relay to the partitions it serves (POST /cluster/relay); a member
//     that starts serving announces it (cluster.Announcer), and every
//     node then drops the owner it knew and retries its relays to that
//     partition at once instead of after their backoff;
//   - each partition's cluster routes (snapshot, standby, changes) are
//     served by PartitionRoutes (?p=N; 421 for one not owned), and its
//     member's fence at GET /cluster/fence?p=N;
//   - an admin API request about a user or an id of a partition this node
//     does not serve goes on to its owner, whose answer it returns
//     (ownerProxy), and a directory change to the directory's owner
//     (dirProxy).
//
// The files every node holds alike (the token signing secret, the admin
// token, the e-mail link key: nodeFiles) must be the cluster's before the
// node starts, as its API and sockets check tokens from the start: a
// node that holds no partition's history and finds a cluster running
// fetches them from a node that serves (GET /cluster/files) first. A
// partition's keys of secret messages travel with its snapshot.
//
// Roles are placed by balance: the first node founds every partition,
// the next follows every one, and from then on a node holding two more
// owners (or standby places) than another gives one up, one at a time,
// until each holds about P/N of each (POST /v1/cluster/handover?p=N
// moves one by hand). A standby place moves to the node taking it, which
// follows the owner's snapshot as a learner first: the role then moves
// through the history (cluster.ReplicatedStore.ReplaceStandbyAt), the old
// standby holding it, and writes acknowledged through it, until then.
//
// The org's SMS and call budgets are counted in Redis for the whole
// cluster (cluster.RedisBudget, when the coordinator is a RedisCoord).
// The directory is a partition of its own (dirmember.go).
//
// Twilio's callbacks a node's partitions do not know go to the others
// (reports.go); named policies, the admin statistics and the retention
// sweep cover every partition (orgwide.go).
//
// Outbound webhooks: each node delivers the outboxes of the partitions
// it owns (and the directory's, while it owns that), and a subscription
// change goes to every node's (webhooks.go).

// errPartitionMoved closes the connections of a partition's users when
// this node stops serving it: they reconnect, and are redirected to its
// new owner.
var errPartitionMoved = engine.NewError(engine.CodeUnavailable, "node: this user's partition moved to another node; reconnect")

// filesPath serves the node-wide files to a node joining the cluster.
const filesPath = "GET /cluster/files"

// partHost hosts one partition of a node that runs a member per
// partition.
type partHost struct {
	n      *Node
	routes *cluster.PartitionRoutes
	codec  *cluster.KeyCodec
}

func (*partHost) standIn(*member)  {}
func (*partHost) standOut(*member) {}

func (h *partHost) start(m *member, owner *cluster.Owner, leaseFrom time.Time) (*served, error) {
	began := time.Now()
	var rs *cluster.ReplicatedStore
	err := h.n.attachPartition(uint32(m.p), &runtimeWrap{
		store: func(db *pebblestore.DB, reg prometheus.Registerer) (store.Store, error) {
			var err error
			rs, err = m.replicate(db, reg, owner, leaseFrom)
			return rs, err
		},
		keys: func(k engine.Keys) engine.Keys {
			ks := cluster.NewKeyShipper(k, h.codec)
			rs.SetKeys(ks)
			return ks
		},
	})
	if err != nil {
		if rs != nil {
			rs.Stop()
		}
		return nil, err
	}
	h.routes.Set(m.p, cluster.SnapshotHandler(rs, m.c, m.mc.Secret, m.mc.Node.DataDir, m.sharedFiles()...))
	m.log.Info("serving the partition", "epoch", owner.Epoch(), "attach", time.Since(began).Round(time.Millisecond))
	return &served{rs: rs, shutdown: func(ctx context.Context) error {
		h.routes.Delete(m.p)
		return h.n.detachPartition(ctx, uint32(m.p), errPartitionMoved)
	}}, nil
}

// announce tells the other nodes that m's partition changed hands
// (cluster.Announcer, when the coordinator is one): it is served here
// now, or this node let it go. Their relays to it stop backing off, they
// forget its old owner, and its standby looks at the lease at once. A
// hint: on a failure they find out after their backoff or poll, as
// without it.
func announce(m *member, c cluster.Coord) {
	a, ok := c.(cluster.Announcer)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.mc.LeaseTTL/3)
	defer cancel()
	if err := a.Announce(ctx, m.p); err != nil {
		m.log.Warn("announcing the partition failed; other nodes' relays find it after their backoff", "err", err)
	}
}

// listenAnnouncements makes the node act on announcements (announce)
// until ctx ends: it forgets the partition's owner it knew, wakes the
// relays to it, and has its member look at the lease now (a standby takes
// a partition its owner let go at once).
func listenAnnouncements(ctx context.Context, c cluster.Coord, owners *coordOwners, set *partitionSet, ms []*member, log *slog.Logger) {
	a, ok := c.(cluster.Announcer)
	if !ok {
		return
	}
	if err := a.Listen(ctx, func(p cluster.Partition) {
		owners.Moved(uint32(p)) // its members' requests to the old owner too (movesOf)
		if set.pump != nil {
			set.pump.Wake(uint32(p))
		}
		if int(p) < len(ms) {
			ms[p].announced()
		}
	}); err != nil {
		log.Warn("listening for partitions' new owners failed; relays to a moved partition wait out their backoff", "err", err)
	}
}

// runPartitioned is RunMember for a node of mc.Node.Partitions
// partitions (see the comment at the top of this file), once the data
// dir is locked.
func runPartitioned(ctx context.Context, mc MemberConfig, peer *http.Client) error {
	p := mc.Node.Partitions
	log := mc.Node.Logger.With("member", mc.ID)
	if err := checkLayout(mc.Node.DataDir, p); err != nil {
		return err
	}
	if err := fetchNodeFiles(ctx, mc, peer, log); err != nil {
		return err
	}
	codec, err := cluster.NewKeyCodec(mc.Secret)
	if err != nil {
		return err
	}
	owners := newCoordOwners(mc.Coord, mc.LeaseTTL/3)
	// The directory's partition, D = p (dirmember.go): this node's copy
	// caught up before it serves.
	dirP := cluster.Partition(p)
	if err := dirBootstrap(ctx, mc, peer, owners, dirP, 3*mc.LeaseTTL, log.With("partition", "dir")); err != nil {
		return err
	}
	fwd := newForwarder(mc.Secret, log)
	routes := &cluster.PartitionRoutes{}
	host := &partHost{routes: routes, codec: codec}
	known := loadPeers(mc.Node.DataDir)
	ms := make([]*member, p+1)
	for i := range ms {
		m := &member{mc: mc, c: mc.Coord, log: log.With("partition", i), peers: known, peer: peer, fwd: fwd,
			p: cluster.Partition(i), perPartition: true, host: host, handover: make(chan struct{}, 1), look: make(chan struct{}, 1),
			moves: owners.movesOf(uint32(i))}
		m.state.Store(stateSpare)
		ms[i] = m
	}
	dirObs, _ := newDirObserver(mc.Coord, dirP, mc.ID, mc.Secret, peer, owners, log.With("partition", "dir"), nil)
	dm := ms[p]
	dm.log, dm.keep = log.With("partition", "dir"), keepRecent(mc.Node)
	dm.host = &dirHost{partHost: host, obs: dirObs}
	dirObs.owns = func() bool { return dm.serving.Load() != nil }
	byP := func(w http.ResponseWriter, r *http.Request) *member {
		v := r.URL.Query().Get("p")
		i, err := strconv.Atoi(v)
		if v == "" {
			i, err = 0, nil
		}
		if err != nil || i < 0 || i > p {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("p must name a partition: 0 to %d, or %d for the directory's", p-1, p), "BAD_REQUEST")
			return nil
		}
		return ms[i]
	}
	cfg := mc.Node
	cfg.fwd = fwd
	proxy := &dirProxy{p: dirP, owners: owners, peer: peer, fwd: fwd, m: dm, obs: dirObs}
	sentOn := &ownerProxy{peer: peer, fwd: fwd, owner: func(ctx context.Context, i int) string {
		if i < 0 || i >= len(ms) {
			return ""
		}
		_, _, addr := ms[i].owner(ctx)
		return addr
	}, since: func(i int) context.Context { return owners.Since(uint32(i)) }, ownerNow: func(ctx context.Context, i int) string {
		if i < 0 || i >= len(ms) {
			return ""
		}
		return ms[i].ownerNow(ctx)
	}, sent: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ding_cluster_api_sent_on_total",
		Help: "Admin API requests about a partition this node does not serve, sent on to the node that does.",
	})}
	var localReports atomic.Pointer[router] // the partitions served here, for other nodes' reports
	otherNodes := func() []string {
		var out []string
		for id, pr := range known.snapshot() {
			if id != mc.ID && pr.HTTP != "" {
				out = append(out, pr.HTTP)
			}
		}
		slices.Sort(out)
		return out
	}
	cfg.peers = &partitionPeers{Owner: owners.Owner, Forget: owners.Forget, Secret: mc.Secret, Client: peer,
		Directory: dirRefuser{}, WrapAPI: func(api http.Handler) http.Handler { return proxy.wrap(sentOn.wrap(api)) }, Others: otherNodes,
		Users: func(dir *fanout.Directory, reg prometheus.Registerer) (session.Users, error) {
			return newDirUsers(dir, dirObs, reg)
		},
		WrapReports: func(local twilio.Reports) twilio.Reports {
			return &clusterReports{local: local, peers: otherNodes, client: peer, secret: mc.Secret}
		},
		WrapEngine: func(local httpapi.Engine) httpapi.Engine {
			return &orgEngine{Engine: local, set: local.(*router).set, peers: otherNodes, client: peer, secret: mc.Secret}
		}}
	cfg.peers.Metrics = membersCollector{ms: ms, dir: p, sentOn: sentOn.sent, coord: coordCollector(mc.Coord)}
	if b, ok := mc.Coord.(cluster.Budgeter); ok {
		cfg.peers.Budget = b.Budget() // the org's budget, for every node (stage 6)
	}
	var node *Node
	admin := func(w http.ResponseWriter, r *http.Request, pattern string) bool {
		return node.API().Authorize(w, r, pattern, httpapi.ClusterPermission(pattern))
	}
	cfg.Routes = map[string]http.Handler{}
	for k, v := range mc.Node.Routes {
		cfg.Routes[k] = v
	}
	cfg.Routes["/cluster/"] = routes
	cfg.Routes["GET /cluster/fence"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m := byP(w, r); m != nil {
			m.fenceHandler(w, r)
		}
	})
	cfg.Routes[filesPath] = nodeFilesHandler(mc.Secret, mc.Node.DataDir)
	localSet := func() *partitionSet {
		if rt := localReports.Load(); rt != nil {
			return rt.set
		}
		return nil
	}
	cfg.Routes[policiesPath] = policiesHandler(mc.Secret, localSet)
	cfg.Routes[statsPath] = statsHandler(mc.Secret, localSet)
	cfg.Routes[sweepPath] = sweepHandler(mc.Secret, localSet)
	cfg.Routes[hooksPath] = hooksHandler(mc.Secret, localSet)
	cfg.Routes[reportsPath] = reportsHandler(mc.Secret, func() twilio.Reports {
		if rt := localReports.Load(); rt != nil {
			return rt
		}
		return nil
	})
	cfg.Routes["POST /v1/cluster/handover"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !admin(w, r, "POST /v1/cluster/handover") {
			return
		}
		if m := byP(w, r); m != nil {
			m.handoverRoute(w, r)
		}
	})
	cfg.Routes["POST /v1/cluster/drain"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !admin(w, r, "POST /v1/cluster/drain") {
			return
		}
		drainPartitioned(w, ms)
	})
	cfg.Routes["GET /v1/cluster"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !admin(w, r, "GET /v1/cluster") {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(partitionedStatus(mc, ms, ms[0].members(r.Context())))
	})
	if node, err = Start(cfg); err != nil {
		return err
	}
	host.n = node
	localReports.Store(&router{set: node.parts})
	dirObs.n = node
	if err := dirObs.attach(mc.ID, node.parts.dirDB); err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		return errors.Join(err, node.Shutdown(sctx))
	}
	notServed := func(user string, _ uint32) error {
		i := node.parts.of(user)
		_, sock, _ := ms[i].owner(context.Background())
		return &fanout.NotOwnerError{User: user, Partition: fanout.PartitionOf(user), Owner: sock}
	}
	node.parts.notServed.Store(&notServed)
	listenAnnouncements(ctx, mc.Coord, owners, node.parts, ms, log)
	if mc.Started != nil {
		mc.Started(node)
	}
	log.Info("serving as a cluster node with a member per partition", "partitions", p)

	mctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	if reg, ok := mc.Coord.(cluster.Registry); ok {
		wg.Go(func() { publishPartitioned(mctx, reg, mc, ms, known) })
		wg.Go(func() { balance(mctx, mc, reg, ms, log) })
	}
	wg.Go(func() { dirObs.run(mctx) })
	errs := make([]error, len(ms))
	for i, m := range ms {
		wg.Go(func() {
			for {
				err := m.run(mctx)
				if !errors.Is(err, ErrDeposed) || mctx.Err() != nil {
					if err != nil && mctx.Err() == nil {
						errs[i] = fmt.Errorf("partition %d: %w", i, err)
						stop() // one partition failing stops the node: its supervisor restarts it
					}
					return
				}
				// Its copy may hold batches nobody acknowledged: the
				// member's loop joins again from the new owner's snapshot.
				m.log.Warn("deposed: rejoining the partition from its owner")
				if !m.pause(mctx) {
					return
				}
			}
		})
	}
	<-mctx.Done()
	wg.Wait()
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return errors.Join(append(errs, node.Shutdown(sctx))...)
}

// checkPartitionCount refuses to run p partitions (1: a cluster of one
// partition) in a cluster created with another count, or whose members
// run another: users' placement must be the same on every node. The
// first node to start records its count in the coordinator
// (cluster.PartitionCounter); the registry's members are checked too,
// for a cluster that began before the count was recorded.
func checkPartitionCount(ctx context.Context, c cluster.Coord, self string, p int) error {
	if pc, ok := c.(cluster.PartitionCounter); ok {
		got, err := pc.ClaimPartitions(ctx, p)
		if err != nil {
			return fmt.Errorf("node: the cluster's partition count: %w", err)
		}
		if got != p {
			return fmt.Errorf("node: the cluster was created with %d partitions, this node runs %d: every node of a cluster must run the same count (--partitions)", got, p)
		}
	}
	reg, ok := c.(cluster.Registry)
	if !ok {
		return nil
	}
	ms, err := reg.Members(ctx)
	if err != nil {
		return fmt.Errorf("node: cluster members: %w", err)
	}
	for id, m := range ms {
		if id != self && max(m.Partitions, 1) != p {
			return fmt.Errorf("node: member %s runs %d partitions, this node %d: every node of a cluster must run the same count (--partitions)", id, max(m.Partitions, 1), p)
		}
	}
	return nil
}

// publishPartitioned says what this node does in the registry every
// third of a lease: its addresses, its partition count, and which
// partitions it owns and follows.
func publishPartitioned(ctx context.Context, reg cluster.Registry, mc MemberConfig, ms []*member, known *peers) {
	t := time.NewTicker(mc.LeaseTTL / 3)
	defer t.Stop()
	for {
		var owns, follows []string
		for i, m := range ms {
			name := strconv.Itoa(i)
			if i == mc.Node.Partitions {
				name = "dir"
			}
			switch me := m.self(); me.Role {
			case "owner":
				owns = append(owns, name)
			case string(stateStandby):
				follows = append(follows, name)
			}
		}
		role := fmt.Sprintf("owner of [%s], standby of [%s]", strings.Join(owns, " "), strings.Join(follows, " "))
		if ms[0].drained.Load() {
			role = string(stateDrained) + ": " + role
		}
		me := memberStatus(mc.Advertise, mc.AdvertiseSocket, mc.Node.Partitions, role)
		if err := reg.SetMember(ctx, mc.ID, me, 3*mc.LeaseTTL); err != nil && ctx.Err() == nil {
			mc.Node.Logger.Debug("publishing this node's status failed", "err", err)
		}
		if all, err := reg.Members(ctx); err == nil {
			_ = known.merge(all)
		}
		select {
		case <-ctx.Done():
			// Stopping: say so at once, so that no node hands this one a
			// partition while it goes (balance).
			me.Role, me.At = "stopping", time.Now().UTC()
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = reg.SetMember(sctx, mc.ID, me, 3*mc.LeaseTTL)
			cancel()
			return
		case <-t.C:
		}
	}
}

// drainPartitioned answers POST /v1/cluster/drain on a node of
// partitions: every member gives its role up and takes none again until
// the node restarts; an owner hands its partition over to its standby,
// a standby leaves its place (another node joins). Refused (409) while a
// partition owned here has no standby keeping up, which would be left
// with no owner.
func drainPartitioned(w http.ResponseWriter, ms []*member) {
	var alone []string
	for _, m := range ms {
		if rs := m.serving.Load(); rs != nil {
			if st := rs.Status(); st.Standby == "" || st.Stalled > m.mc.LeaseTTL/4 {
				alone = append(alone, strconv.Itoa(int(m.p)))
			}
		}
	}
	if len(alone) > 0 {
		writeErr(w, http.StatusConflict, "partitions "+strings.Join(alone, ", ")+" owned here have no standby keeping up to move to: start another node first", "CONFLICT")
		return
	}
	for _, m := range ms {
		m.drained.Store(true)
		if m.serving.Load() != nil {
			m.handOver()
		}
	}
	w.WriteHeader(http.StatusAccepted)
}

// partitionStatus is one partition in GET /v1/cluster of a node with a
// member per partition.
type partitionStatus struct {
	Partition int    `json:"partition"`
	Directory bool   `json:"directory,omitempty"` // the directory's partition (dirmember.go)
	Role      string `json:"role"`
	Epoch     uint64 `json:"epoch"`
	Seq       uint64 `json:"seq"`
	Standby   string `json:"standby,omitempty"`
	// An owned partition's replication: the last batch its standby holds,
	// the batches shipped and waiting for it (the lag), and for how long
	// they have waited without progress.
	AckedSeq  uint64 `json:"acked_seq,omitempty"`
	Unacked   int    `json:"unacked_batches,omitempty"`
	StalledMS int64  `json:"stalled_ms,omitempty"`
	// A standby place moving (cluster.ReplicatedStore.ReplaceStandbyAt):
	// to HandingTo, not named yet; then, named, while Leaving, the one it
	// replaces, is still counted beside it.
	HandingTo string `json:"handing_to,omitempty"`
	Leaving   string `json:"leaving,omitempty"`
}

func partitionedStatus(mc MemberConfig, ms []*member, members []memberView) any {
	ps := make([]partitionStatus, len(ms))
	for i, m := range ms {
		me := m.self()
		ps[i] = partitionStatus{Partition: i, Directory: i == mc.Node.Partitions, Role: me.Role, Epoch: me.Epoch, Seq: me.Seq}
		if rs := m.serving.Load(); rs != nil {
			st := rs.Status()
			ps[i].Standby, ps[i].AckedSeq, ps[i].Unacked, ps[i].StalledMS = st.Standby, st.Acked, st.Unacked, st.Stalled.Milliseconds()
			ps[i].HandingTo, ps[i].Leaving = st.HandingTo, st.Leaving
		}
	}
	return struct {
		Member          string            `json:"member"`
		Role            string            `json:"role"`
		LeaseTTLSeconds float64           `json:"lease_ttl_seconds"`
		Partitions      []partitionStatus `json:"partitions"`
		Members         []memberView      `json:"members"`
	}{mc.ID, "partitioned", mc.LeaseTTL.Seconds(), ps, members}
}

// nodeFilesHandler serves GET /cluster/files: the node-wide files
// (nodeFiles) as a JSON object of base names to base64 contents, to
// members holding the cluster secret.
func nodeFilesHandler(secret, dataDir string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cluster.Authorized(r, secret) {
			http.Error(w, "cluster: bad or missing cluster secret", http.StatusUnauthorized)
			return
		}
		out := map[string]string{}
		for _, f := range nodeFiles(dataDir) {
			b, err := os.ReadFile(f)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				http.Error(w, "cluster: reading this node's files failed", http.StatusInternalServerError)
				return
			}
			out[filepath.Base(f)] = base64.StdEncoding.EncodeToString(b)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
}

// fetchNodeFiles makes this node's node-wide files the cluster's before
// it starts: when it holds no partition's history and some node serves a
// partition, it fetches them from that node. A node holding a history
// has them from when it founded or joined; a new cluster's first node
// keeps its own.
func fetchNodeFiles(ctx context.Context, mc MemberConfig, peer *http.Client, log interface {
	Info(string, ...any)
	Warn(string, ...any)
}) error {
	for i := range mc.Node.Partitions {
		if !emptyDir(partitionDir(mc.Node.DataDir, i, "store")) {
			return nil
		}
	}
	started, waited := time.Now(), false
	reg, _ := mc.Coord.(cluster.Registry)
	for ctx.Err() == nil {
		var from, holder string
		for i := range mc.Node.Partitions {
			h, _, err := mc.Coord.Lease(ctx, cluster.Partition(i))
			if err != nil {
				return fmt.Errorf("node: cluster coordinator: %w", err)
			}
			if h == "" || h == mc.ID {
				continue
			}
			holder = h
			if a, err := mc.Coord.Addr(ctx, h); err == nil && a != "" {
				from = a
				break
			}
		}
		if holder == "" {
			// No partition served: a new cluster (or one to recover).
			// Nodes started together must still start with the same files:
			// see filesFrom.
			src, wait := filesFrom(ctx, mc, reg, started)
			if src == "" && !wait {
				return nil // this node's files are the cluster's
			}
			if src == "" {
				if !waited {
					log.Info("no partition served yet: waiting to see the nodes started with this one, to take the cluster's files from the one with the smallest id")
					waited = true
				}
				select {
				case <-ctx.Done():
				case <-time.After(mc.LeaseTTL / 4):
				}
				continue
			}
			holder, from = "a running node", src
		}
		if from == "" {
			// A node serves, and has not published its address yet: its
			// files are the cluster's, so wait for it.
			log.Info("waiting for a serving node's address to take the cluster's files from", "node", holder)
			select {
			case <-ctx.Done():
			case <-time.After(mc.LeaseTTL / 4):
			}
			continue
		}
		err := getNodeFiles(ctx, peer, from, mc.Secret, mc.Node.DataDir)
		if err == nil {
			log.Info("took the cluster's signing secret and admin token from a serving node", "from", from)
			return nil
		}
		log.Warn("fetching the cluster's files failed; retrying", "from", from, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(mc.LeaseTTL / 4):
		}
	}
	return ctx.Err()
}

// filesFrom decides where a node whose partitions hold no history takes
// the node-wide files from while no partition is served yet (nodes of a
// new cluster started together; fetchNodeFiles). It says so in the
// registry (role "starting") and: if another node of the cluster runs
// already (its files are decided), its files are the cluster's, so it
// returns that node's address (the smallest id of those running);
// otherwise, once a lease TTL has passed since this node started looking
// (long enough for nodes started together to see each other), this
// node's own files are the cluster's if no node still starting has a
// smaller id (src "" and wait false), and it waits for that node if one
// has (wait true). Without a registry, this node's own files.
func filesFrom(ctx context.Context, mc MemberConfig, reg cluster.Registry, started time.Time) (src string, wait bool) {
	if reg == nil {
		return "", false
	}
	me := memberStatus(mc.Advertise, mc.AdvertiseSocket, mc.Node.Partitions, roleStarting)
	_ = reg.SetMember(ctx, mc.ID, me, 3*mc.LeaseTTL)
	all, err := reg.Members(ctx)
	if err != nil {
		return "", true
	}
	var running, starting []string
	for id, m := range all {
		switch {
		case id == mc.ID || m.HTTP == "":
		case m.Role == roleStarting:
			starting = append(starting, id)
		case m.Role != "stopping":
			running = append(running, id)
		}
	}
	if len(running) > 0 {
		slices.Sort(running)
		return all[running[0]].HTTP, false
	}
	if time.Since(started) < mc.LeaseTTL {
		return "", true
	}
	for _, id := range starting {
		if id < mc.ID {
			return "", true
		}
	}
	return "", false
}

// roleStarting is a node's registry role while it decides where its
// node-wide files come from (filesFrom).
const roleStarting = "starting"

// getNodeFiles fetches GET /cluster/files from baseURL and writes each
// node-wide file it holds into dataDir.
func getNodeFiles(ctx context.Context, client *http.Client, baseURL, secret, dataDir string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(baseURL, "/")+"/cluster/files", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	var files map[string]string
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&files); err != nil {
		return fmt.Errorf("cluster files: %w", err)
	}
	for _, f := range nodeFiles(dataDir) {
		name := filepath.Base(f)
		v, ok := files[name]
		if !ok {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return fmt.Errorf("cluster files: %s: %w", name, err)
		}
		if err := writeFileAtomic(f, b); err != nil {
			return err
		}
	}
	if _, ok := files[filepath.Base(nodeFiles(dataDir)[0])]; !ok {
		return errors.New("cluster files: the serving node sent no signing secret")
	}
	return nil
}

// roles is who owns and follows each partition now, and what each live
// node holds, as balance reads them from the coordinator.
type roles struct {
	holder, standby []string
	live            map[string]bool
	drained         map[string]bool   // drained nodes that still run (they say so)
	addr            map[string]string // live nodes' HTTP URLs
	owns, follows   map[string]int
}

// readRoles reads the partitions' owners and standbys and the live nodes
// (the registry's members running p partitions, not drained, that said
// so within the last two lease TTLs: a live node says so every third of
// one).
func readRoles(ctx context.Context, c cluster.Coord, reg cluster.Registry, p, nodeParts int, ttl time.Duration) (*roles, error) {
	ms, err := reg.Members(ctx)
	if err != nil {
		return nil, err
	}
	r := &roles{holder: make([]string, p), standby: make([]string, p), live: map[string]bool{}, drained: map[string]bool{}, addr: map[string]string{}, owns: map[string]int{}, follows: map[string]int{}}
	for id, m := range ms {
		if m.Partitions != nodeParts || m.Role == "stopping" || time.Since(m.At) >= 2*ttl {
			continue
		}
		if strings.Contains(m.Role, string(stateDrained)) {
			r.drained[id] = true
			continue
		}
		r.addr[id] = m.HTTP
		r.live[id] = true
	}
	for i := range p {
		if r.holder[i], _, err = c.Lease(ctx, cluster.Partition(i)); err != nil {
			return nil, err
		}
		if r.standby[i], err = c.Standby(ctx, cluster.Partition(i)); err != nil {
			return nil, err
		}
		if r.holder[i] != "" {
			r.owns[r.holder[i]]++
		}
		if r.standby[i] != "" {
			r.follows[r.standby[i]]++
		}
	}
	return r, nil
}

// A move is one role balance changes on this node: an owned partition
// handed over to its standby, or a standby's place taken by this node.
type moveKind int

const (
	moveNone moveKind = iota
	moveHandOver
	moveClaim        // the place of a standby holding more
	moveClaimDrained // the place of a drained node's standby
)

// move is the one role this node should change now to even the cluster
// out (step 5 of PARTITIONS.md's "Where 5 stands"), or none:
//
//   - an owned partition, handed over to its standby when that node owns
//     at least two fewer partitions than this one;
//   - else a standby's place this node takes (it neither owns nor
//     follows the partition): a drained node's, or a live node's that
//     follows at least two more partitions than this one. This node
//     follows the owner's snapshot as a learner, then the place moves to
//     it through the history, the old standby holding it until then.
//
// Each move lowers the sum of the squares of the nodes' counts, so moves
// end, with every node's owned and followed counts within one of each
// other's (where the standbys allow it). Ownership moves from the node
// giving it up, standby places to the node taking them, one at a time.
//
// keeping(i) reports whether the standby of partition i, owned here,
// keeps up (it acks what it is shipped): a partition is handed over only
// to such a standby, as a hand-over waits for it and a standby that died
// unnoticed would leave the partition with no owner.
func (r *roles) move(self string, keeping func(p int) bool) (int, moveKind) {
	for i, h := range r.holder {
		if h == self && r.standby[i] != "" && r.live[r.standby[i]] && r.owns[self]-r.owns[r.standby[i]] >= 2 && keeping(i) {
			return i, moveHandOver
		}
	}
	claim := -1 // a drained node's place goes first
	for i, sb := range r.standby {
		h := r.holder[i]
		if sb == "" || h == "" || sb == self || h == self {
			continue
		}
		// The owner must run: the learner's snapshot comes from it.
		switch {
		case r.drained[sb] && (r.live[h] || r.drained[h]):
			return i, moveClaimDrained
		case claim < 0 && r.live[h] && r.live[sb] && r.follows[sb]-r.follows[self] >= 2:
			claim = i
		}
	}
	if claim >= 0 {
		return claim, moveClaim
	}
	return -1, moveNone
}

// balance evens the roles out while ctx runs: every lease TTL it reads
// the roles, and makes the move move says, then waits three lease TTLs
// for it to settle before looking again (one, after taking a drained
// node's place).
func balance(ctx context.Context, mc MemberConfig, reg cluster.Registry, ms []*member, log interface{ Info(string, ...any) }) {
	t := time.NewTicker(mc.LeaseTTL)
	defer t.Stop()
	var settle time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Now().Before(settle) || ms[0].drained.Load() {
			continue // a drained node gives its roles up, and takes none
		}
		r, err := readRoles(ctx, mc.Coord, reg, len(ms), mc.Node.Partitions, mc.LeaseTTL)
		if err != nil {
			continue
		}
		p, kind := r.move(mc.ID, func(p int) bool {
			rs := ms[p].serving.Load()
			if rs == nil {
				return false
			}
			st := rs.Status()
			if st.Standby != r.standby[p] || st.HandingTo != "" || st.Leaving != "" || st.Stalled >= mc.LeaseTTL/4 {
				return false
			}
			// The standby answers now, and follows this owner's history:
			// a node that died a moment ago (the registry still lists it)
			// must not be handed a partition it cannot take.
			f, err := ms[p].askFence(ctx, r.addr[st.Standby])
			return err == nil && f.Member == st.Standby && f.Held && !f.Serving && f.Epoch == st.Epoch && f.Owner == mc.ID && !f.Stale && !f.Demoted && !f.Drained
		})
		settleFor := 3 * mc.LeaseTTL
		switch kind {
		case moveNone:
			continue
		case moveHandOver:
			log.Info("handing a partition over to even out the owners", "partition", p, "to", r.standby[p], "owned_here", r.owns[mc.ID], "owned_there", r.owns[r.standby[p]])
			ms[p].handOver()
		case moveClaim, moveClaimDrained:
			if kind == moveClaimDrained {
				log.Info("taking a drained node's standby place", "partition", p, "standby", r.standby[p])
				settleFor = mc.LeaseTTL // a drain waits for its places to go
			} else {
				log.Info("taking the standby place of a node following more", "partition", p, "standby", r.standby[p], "followed_here", r.follows[mc.ID], "followed_there", r.follows[r.standby[p]])
			}
			ms[p].claimUntil.Store(time.Now().Add(2 * mc.LeaseTTL).UnixNano())
			poke(ms[p].look)
		}
		settle = time.Now().Add(settleFor)
	}
}
