package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/fanout"
)

// The directory of a cluster of partitions (stage 5c of
// cluster/PARTITIONS.md, step 4 of "Where 5 stands").
//
// The directory (users, departments, groups, admins, the audit log) is a
// partition of its own, D = P (after the users' partitions 0 to P-1),
// with no users: a member per node runs for it like for the others
// (lease, epoch, standby, replication stream, balance places it), and its
// host (dirHost) serves it on the node that owns it:
//
//   - the owner opens DATA/p/P/store under a cluster.ReplicatedStore and
//     an engine of its own, which commits the directory's changes; the
//     node's fanout.Directory reads that store (Directory.Reload) and
//     commits through that engine while it owns D;
//   - every node, the owner included, keeps DATA/dir/store as its copy
//     of D through an observer (cluster.Observer): it pulls the changes
//     D's owner's standby holds (GET /cluster/changes?p=P), applies them,
//     and, on a node that does not own D, reloads the directory from the
//     copy and closes the connections of users it finds removed, then
//     applies the removals to its partitions (forgetRemoved);
//   - a directory change asked of a node that does not own D (the admin
//     API's writes to users, departments, groups, the import and admins)
//     is proxied to D's owner, and its answer is returned once the local
//     copy holds the change (Ding-Directory-Seq), so that what a client
//     wrote through a node it reads back there;
//   - a new node catches its copy up (from D's owner's memory, or its
//     snapshot when the owner no longer keeps the changes it lacks)
//     before it starts serving (dirBootstrap).
//
// Reads stay local: checking a user, expanding a group, a token's
// revocation are answered from memory on every node, at most the
// observer's lag behind the owner (milliseconds: it long-polls).

// dirKeepRecent is how much of the directory's latest history its owner
// and standby keep in memory for observers (16 MiB).
const dirKeepRecent = 16 << 20

// keepRecent is dirKeepRecent, or the test's.
func keepRecent(cfg Config) int {
	if cfg.dirKeepRecent > 0 {
		return cfg.dirKeepRecent
	}
	return dirKeepRecent
}

// dirSeqHeader carries, in the answer to a directory change, how far the
// directory's history runs after it (its owner's last shipped batch).
const dirSeqHeader = "Ding-Directory-Seq"

// dirProxiedHeader marks a directory change one node proxied to another,
// which must own the directory (no second hop).
const dirProxiedHeader = "Ding-Directory-Proxied"

// errDirElsewhere is the directory's committer on a node that does not
// own the directory's partition (the admin API's changes are proxied
// before they get here).
var errDirElsewhere = engine.NewError(engine.CodeUnavailable, "node: the directory's changes are made on the node owning the directory's partition, not this one now; retry")

// dirRefuser refuses every directory change (errDirElsewhere).
type dirRefuser struct{}

func (dirRefuser) Commit(context.Context, engine.Change) error { return errDirElsewhere }

// dirHost hosts the directory's partition on a cluster node of
// partitions.
type dirHost struct {
	*partHost
	obs *dirObserver
}

func (h *dirHost) start(m *member, owner *cluster.Owner, leaseFrom time.Time) (_ *served, err error) {
	n := h.n
	set := n.parts
	if err := os.MkdirAll(filepath.Dir(m.storeDir()), 0o700); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	db, err := set.openStore(m.storeDir(), n.cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			db.Close()
		}
	}()
	reg := prometheus.NewRegistry()
	rs, err := m.replicate(db, prometheus.WrapRegistererWith(prometheus.Labels{"partition": "dir"}, reg), owner, leaseFrom)
	if err != nil {
		return nil, err
	}
	rs.KeepRecent(keepRecent(n.cfg))
	eng, err := engine.Open(engine.Config{
		Store: rs, Clock: n.cfg.Clock, MaxBody: n.cfg.MaxBody, Logger: n.cfg.Logger.With("partition", "dir", "role", "owner"),
		Registerer:        prometheus.NewRegistry(), // the node's directory engine reports the series labelled "dir"
		MessageCacheBytes: -1, HookSource: "dir",
	})
	if err != nil {
		rs.Stop()
		return nil, fmt.Errorf("node: the directory's engine: %w", err)
	}
	// The directory reads what this node now owns, which holds at least
	// what its copy showed: users it finds removed are removed here too.
	removed, err := n.dir.Reload(rs)
	if err != nil {
		rs.Stop()
		_ = eng.Close()
		return nil, fmt.Errorf("node: load the directory from its partition: %w", err)
	}
	n.dir.SetCommitter(eng)
	set.setHookDir(eng) // this node delivers the directory's webhook events while it owns it
	h.obs.removed(removed)
	h.routes.Set(m.p, cluster.SnapshotHandler(rs, m.c, m.mc.Secret, m.mc.Node.DataDir))
	set.dirOwned.Store(reg)
	return &served{rs: rs, shutdown: func(ctx context.Context) error {
		h.routes.Delete(m.p)
		set.dirOwned.CompareAndSwap(reg, nil)
		n.dir.SetCommitter(dirRefuser{}) // waits for the changes in flight
		set.setHookDir(nil)
		// Back to this node's copy, which the observer keeps following.
		_, rerr := n.dir.Reload(set.dirDB)
		return errors.Join(rerr, eng.Shutdown(ctx), db.Close())
	}}, nil
}

// dirObserver keeps DATA/dir/store, this node's copy of the directory's
// partition, following the partition's owner.
type dirObserver struct {
	n      *Node // nil before the node starts (dirBootstrap)
	c      cluster.Coord
	p      cluster.Partition
	secret string
	peer   *http.Client
	owners *coordOwners
	log    *slog.Logger
	owns   func() bool // this node owns the directory's partition now

	f   *cluster.Follower
	obs *cluster.Observer
	id  string          // this node's (attach)
	db  *pebblestore.DB // the copy (attach)
	// reload: the copy was reinstalled from a snapshot not yet confirmed
	// (reinstall); the directory reloads from it once it is.
	reload bool
	// reinstalls counts reinstall's snapshots.
	reinstalls prometheus.Counter

	mu      sync.Mutex
	seq     uint64        // how far the copy runs; guarded by mu
	changed chan struct{} // closed when seq moves; guarded by mu
	logged  string
}

func newDirObserver(c cluster.Coord, p cluster.Partition, id, secret string, peer *http.Client, owners *coordOwners, log *slog.Logger, db *pebblestore.DB) (*dirObserver, error) {
	o := &dirObserver{c: c, p: p, secret: secret, peer: peer, owners: owners, log: log, changed: make(chan struct{}), owns: func() bool { return false },
		reinstalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ding_cluster_directory_snapshots_total",
			Help: "Times this node's copy of the directory, further behind than the directory's owner keeps, was replaced while running by the owner's snapshot.",
		})}
	if db == nil {
		return o, nil // attached to the node's copy once it runs (attach)
	}
	return o, o.attach(id, db)
}

// attach makes the observer keep db, from the state db holds.
func (o *dirObserver) attach(id string, db *pebblestore.DB) error {
	f, err := cluster.NewFollower(o.c, o.p, id, db, cluster.StandbyState{})
	if err != nil {
		return err
	}
	o.f, o.obs, o.id, o.db = f, cluster.NewObserver(f, f.Standby().State()), id, db
	o.mu.Lock()
	o.seq = o.obs.State().Seq
	o.mu.Unlock()
	return nil
}

// step fetches the owner's changes after the copy's seq (waiting up to
// wait for one) and applies them; it returns how many it applied and the
// owner's answer.
//
// The request ends when the directory partition's new owner is announced
// (coordOwners.Bound; the error is then errOwnerMoved), and at the latest
// changesSlack after wait: an owner frozen rather than dead (paused, its
// machine hung, the network to it dropping packets) would otherwise hold
// it until TCP gave up, minutes, while the directory moved on elsewhere.
func (o *dirObserver) step(ctx context.Context, wait time.Duration) (int, cluster.Changes, error) {
	since := o.owners.Since(uint32(o.p))
	base, err := o.owners.Owner(ctx, uint32(o.p)) // errNoOwner while none holds it
	if err != nil {
		return 0, cluster.Changes{}, err
	}
	rctx, cancel := boundTo(ctx, since)
	defer cancel()
	// The wait bounds the answer's start, not its whole: once its first
	// byte is here, a large answer takes what it takes.
	rctx, cancelWait := context.WithCancelCause(rctx)
	defer cancelWait(nil)
	firstByte := time.AfterFunc(wait+changesSlack, func() { cancelWait(errNoAnswer) })
	defer firstByte.Stop()
	rctx = httptrace.WithClientTrace(rctx, &httptrace.ClientTrace{GotFirstResponseByte: func() { firstByte.Stop() }})
	ch, err := cluster.Endpoint{Client: o.peer, URL: base, Secret: o.secret, P: o.p}.FetchChanges(rctx, o.obs.State().Seq, wait)
	if err != nil {
		if moved := ownerMovedErr(ctx, rctx); moved != nil {
			return 0, cluster.Changes{}, moved
		}
		if errors.Is(context.Cause(rctx), errNoAnswer) {
			err = fmt.Errorf("%w (%v)", errNoAnswer, err)
		}
		if !errors.Is(err, cluster.ErrChangesTrimmed) {
			o.owners.Forget(uint32(o.p)) // perhaps not the owner any more
		}
		return 0, ch, err
	}
	if o.n != nil && o.n.cfg.beforeDirApply != nil {
		o.n.cfg.beforeDirApply()
	}
	n, err := o.obs.Apply(ch)
	return n, ch, err
}

// changesSlack is how long past its wait an observer's request for the
// owner's changes may go without the answer's first byte before it is
// given up and asked again.
var changesSlack = 5 * time.Second

// errNoAnswer: the owner did not begin to answer within the wait and
// changesSlack.
var errNoAnswer = errors.New("node: the directory's owner did not begin to answer")

// next returns a channel closed when the copy next moves (publish).
func (o *dirObserver) next() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.changed
}

// dirUserWait bounds how long a connection with a validly signed token
// of a user this node's copy of the directory does not hold waits for
// the copy to bring the user (dirUsers).
const dirUserWait = 2 * time.Second

// dirUsers is what the sessions of a cluster node of partitions check
// tokens against: the node's directory, which answers from its copy.
// A user created a moment ago through another node may not be in the
// copy yet when a client connects here with a token minted for them
// (signed: only for a user that existed). Rather than refuse it
// (BAD_TOKEN), the handshake waits, up to dirUserWait, for the copy to
// move and looks again. A user the copy knows (removed, a token revoked)
// is answered at once, and so is every user on the node owning the
// directory's partition, whose directory is the directory itself.
type dirUsers struct {
	dir   *fanout.Directory
	obs   *dirObserver
	waits prometheus.Counter
}

func newDirUsers(dir *fanout.Directory, obs *dirObserver, reg prometheus.Registerer) (*dirUsers, error) {
	u := &dirUsers{dir: dir, obs: obs, waits: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ding_cluster_directory_waits_total",
		Help: "Connections whose validly signed token named a user this node's copy of the directory did not hold yet (created a moment ago through another node), which waited for the copy.",
	})}
	for _, c := range []prometheus.Collector{u.waits, obs.reinstalls} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
	}
	return u, nil
}

func (u *dirUsers) AcceptsToken(user, device string, issued time.Time) bool {
	if u.dir.AcceptsToken(user, device, issued) {
		return true
	}
	if _, known := u.dir.User(user); known || u.obs.owns() {
		return false
	}
	u.waits.Inc()
	t := time.NewTimer(dirUserWait)
	defer t.Stop()
	for {
		moved := u.obs.next()
		if u.dir.AcceptsToken(user, device, issued) {
			return true
		}
		if _, known := u.dir.User(user); known {
			return false
		}
		select {
		case <-t.C:
			return false
		case <-moved:
		}
	}
}

// publish says the directory this node answers from now holds the copy
// through seq (waitSeq).
func (o *dirObserver) publish(seq uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if seq > o.seq {
		o.seq = seq
		close(o.changed)
		o.changed = make(chan struct{})
	}
}

// run follows the owner until ctx ends: each batch of changes applied to
// a node that does not own the directory reloads its directory, closes
// the connections of the users removed and applies their removal to the
// partitions served here.
func (o *dirObserver) run(ctx context.Context) {
	for ctx.Err() == nil {
		wait := 10 * time.Second
		if o.reload {
			wait = 0 // a reinstalled copy asks at once whether the owner's standby holds it
		}
		n, _, err := o.step(ctx, wait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, errOwnerMoved) {
				continue // asked again at once, of the new owner
			}
			if errors.Is(err, cluster.ErrChangesTrimmed) || errors.Is(err, cluster.ErrSnapshotUnconfirmed) {
				// Further behind than the owner keeps (this node was cut
				// off a while), or following a snapshot whose owner
				// changed: start over from the owner's snapshot.
				o.log.Warn("this node's copy of the directory is further behind than its owner keeps: taking the owner's snapshot", "err", err)
				if err = o.reinstall(ctx); err == nil {
					o.logged = ""
					continue
				}
			}
			o.logOnce("following the directory's owner failed; retrying", err)
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		o.logged = ""
		if o.reload && o.obs.Confirmed() {
			o.reload, n = false, max(n, 1) // the reinstalled copy holds nothing unacknowledged: load it
		}
		if o.reload {
			select { // not confirmed yet: ask again shortly
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if n == 0 {
			continue
		}
		if !o.owns() { // (the owner's directory reads its own store)
			removed, err := o.n.dir.Reload(o.n.parts.dirDB)
			if err != nil {
				o.log.Error("reloading the directory from this node's copy failed", "err", err)
				continue
			}
			o.removed(removed)
		}
		o.publish(o.obs.State().Seq)
	}
}

// reinstall replaces the copy's contents, while the node runs, with the
// directory owner's snapshot: fetched into a directory of its own, then
// written over the copy in one batch (everything the copy held deleted,
// everything the snapshot holds set), so that readers of the copy see
// it before or after, never half. The copy follows the owner from the
// snapshot's seq on; the directory reloads from it once the owner says
// its standby holds that seq (reload), which is what makes a removal
// made meanwhile take effect here.
func (o *dirObserver) reinstall(ctx context.Context) error {
	if o.n == nil || o.db == nil {
		return errors.New("node: the directory's copy is not attached")
	}
	since := o.owners.Since(uint32(o.p))
	base, err := o.owners.Owner(ctx, uint32(o.p))
	if err != nil {
		return err
	}
	tmp := filepath.Join(o.n.cfg.DataDir, "dir-snapshot-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	defer os.RemoveAll(tmp)
	bctx, cancel := boundTo(ctx, since) // a frozen owner's is abandoned once another serves
	snap, err := cluster.Endpoint{Client: o.peer, URL: base, Secret: o.secret, P: o.p}.FetchSnapshot(bctx, tmp)
	cancel()
	if err != nil {
		return err
	}
	from, err := pebblestore.Open(filepath.Join(tmp, "store"), pebblestore.Options{ReadOnly: true, Logger: o.log})
	if err != nil {
		return err
	}
	defer from.Close()
	b := o.db.NewBatch()
	defer b.Close()
	b.DeleteRange([]byte{0}, bytes.Repeat([]byte{0xff}, 16)) // every key: the engine's, the cluster's (0xff…)
	keys := 0
	if err := from.Scan([]byte{0}, nil, func(k, v []byte) bool {
		b.Set(k, v)
		keys++
		return true
	}); err != nil {
		return err
	}
	if err := b.Commit(true); err != nil {
		return err
	}
	// The published seq stays where the directory is until it reloads.
	f, err := cluster.NewFollower(o.c, o.p, o.id, o.db, cluster.StandbyState{})
	if err != nil {
		return err
	}
	o.f, o.obs, o.reload = f, cluster.NewObserverFromSnapshot(f, snap), true
	o.reinstalls.Inc()
	o.log.Info("took the directory from its owner's snapshot", "seq", snap.Seq, "keys", keys)
	return nil
}

// removed closes the removed users' connections here and applies their
// removal to the partitions this node serves.
func (o *dirObserver) removed(users []string) {
	if len(users) == 0 || o.n == nil {
		return
	}
	for _, u := range users {
		o.n.hub.Kick(u, fanout.ErrUserRemoved)
	}
	if _, err := o.n.parts.forgetRemoved(context.Background()); err != nil {
		o.log.Error("applying the directory's removals to the partitions failed; retrying in the background", "err", err)
		o.n.parts.wakeForget()
	}
	o.log.Info("users removed from the directory elsewhere: their connections here are closed", "users", len(users))
}

func (o *dirObserver) logOnce(msg string, err error) {
	if line := msg + err.Error(); line != o.logged {
		o.logged = line
		o.log.Warn(msg, "err", err)
	}
}

// waitSeq waits, up to ctx, until the copy runs through seq.
func (o *dirObserver) waitSeq(ctx context.Context, seq uint64) bool {
	for {
		o.mu.Lock()
		at, ch := o.seq, o.changed
		o.mu.Unlock()
		if at >= seq {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-ch:
		}
	}
}

// dirBootstrap catches this node's copy of the directory (DATA/dir/store)
// up with the directory's owner before the node starts: from the owner's
// memory, or, when it no longer keeps what the copy lacks, from its
// snapshot (confirmed before it is used). It gives up after wait when
// the directory has no reachable owner (a new cluster has none; a
// takeover in progress ends soon, and the running observer catches up).
func dirBootstrap(ctx context.Context, mc MemberConfig, peer *http.Client, owners *coordOwners, p cluster.Partition, wait time.Duration, log *slog.Logger) error {
	if holder, epoch, err := mc.Coord.Lease(ctx, p); err != nil {
		return fmt.Errorf("node: cluster coordinator: %w", err)
	} else if holder == "" && epoch == 0 {
		return nil // never owned: a new cluster, whose directory this node may found
	}
	dir := filepath.Join(mc.Node.DataDir, "dir", "store")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	db, err := pebblestore.Open(dir, pebblestore.Options{Logger: log})
	if err != nil {
		return err
	}
	closeDB := func() {
		if db != nil {
			db.Close()
			db = nil
		}
	}
	defer closeDB()
	o, err := newDirObserver(mc.Coord, p, mc.ID, mc.Secret, peer, owners, log, db)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(wait)
	for ctx.Err() == nil {
		n, ch, err := o.step(ctx, 0)
		switch {
		case err == nil && n == 0 && o.obs.Confirmed() && o.obs.State().Seq >= ch.Acked:
			if ch.Acked > 0 {
				log.Info("this node's copy of the directory is up to date", "seq", ch.Acked, "owner", ch.Owner)
			}
			return nil
		case errors.Is(err, cluster.ErrChangesTrimmed) || errors.Is(err, cluster.ErrSnapshotUnconfirmed):
			// Start over from the owner's snapshot: until the node runs,
			// no announcement ends a fetch from an owner that froze, so
			// the lease is looked at while it runs (watchLease).
			holder, base, oerr := owners.lookup(ctx, uint32(p))
			if oerr != nil {
				err = oerr
				break
			}
			tmp := filepath.Join(mc.Node.DataDir, "dir-snapshot-"+strconv.FormatInt(time.Now().UnixNano(), 36))
			fctx, unwatch := watchLease(ctx, mc.Coord, p, holder, mc.LeaseTTL/4)
			snap, serr := cluster.Endpoint{Client: peer, URL: base, Secret: mc.Secret, P: p}.FetchSnapshot(fctx, tmp)
			unwatch()
			if serr != nil {
				err = serr
				break
			}
			closeDB()
			if err := replaceDir(dir, filepath.Join(tmp, "store")); err != nil {
				os.RemoveAll(tmp)
				return err
			}
			os.RemoveAll(tmp)
			if db, err = pebblestore.Open(dir, pebblestore.Options{Logger: log}); err != nil {
				return err
			}
			if o, err = newDirObserver(mc.Coord, p, mc.ID, mc.Secret, peer, owners, log, db); err != nil {
				return err
			}
			o.obs = cluster.NewObserverFromSnapshot(o.f, snap)
			log.Info("took the directory from its owner's snapshot", "seq", snap.Seq)
			continue
		case err == nil:
			continue // more to read
		}
		if errors.Is(err, errNoOwner) && time.Now().After(deadline) {
			log.Warn("the directory's partition has no owner: starting with this node's copy as it is", "seq", o.obs.State().Seq)
			return nil
		}
		if time.Now().After(deadline) && o.obs.Confirmed() {
			log.Warn("catching this node's copy of the directory up failed; starting with it as it is (it keeps following)", "err", err)
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
	return ctx.Err()
}

// replaceDir puts the directory from in dst's place (dst's old contents
// removed).
func replaceDir(dst, from string) error {
	if err := os.RemoveAll(dst); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if err := os.Rename(from, dst); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	return nil
}

// dirProxy sends the admin API's directory changes made on a node that
// does not own the directory's partition to the node that does.
type dirProxy struct {
	p      cluster.Partition
	owners *coordOwners
	peer   *http.Client
	fwd    *forwarder
	m      *member // the directory's member on this node
	obs    *dirObserver
}

// isDirectoryWrite reports whether r changes the directory.
func isDirectoryWrite(r *http.Request) bool {
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
	default:
		return false
	}
	p := r.URL.Path
	for _, prefix := range []string{"/v1/users", "/v1/departments/", "/v1/groups/", "/v1/directory/import", "/v1/admins"} {
		if p == prefix || strings.HasPrefix(p, prefix+"/") || (strings.HasSuffix(prefix, "/") && strings.HasPrefix(p, prefix)) {
			return true
		}
	}
	return false
}

func (d *dirProxy) wrap(api http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isDirectoryWrite(r) {
			api.ServeHTTP(w, r)
			return
		}
		if rs := d.m.serving.Load(); rs != nil {
			api.ServeHTTP(&seqWriter{ResponseWriter: w, seq: func() uint64 { return rs.Status().Shipped }}, r)
			return
		}
		if r.Header.Get(dirProxiedHeader) != "" {
			writeErr(w, http.StatusServiceUnavailable, "the directory's partition moved while this change was on its way; retry", "UNAVAILABLE")
			return
		}
		since := d.owners.Since(uint32(d.p)) // before the owner is looked up
		base, err := d.owners.Owner(r.Context(), uint32(d.p))
		var target *url.URL
		if err == nil {
			target, err = url.Parse(base)
		}
		if err != nil {
			w.Header().Set("Retry-After", "1")
			writeErr(w, http.StatusServiceUnavailable, "the directory's partition has no owner right now (a takeover in progress); retry", "UNAVAILABLE")
			return
		}
		proxy := &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(target)
				pr.Out.Header.Set(dirProxiedHeader, "1")
				d.fwd.assert(pr.Out, pr.In)
			},
			Transport: d.peer.Transport,
			ModifyResponse: func(resp *http.Response) error {
				// Read-your-writes through this node: answer once its copy
				// holds the change (briefly: the observer long-polls).
				if seq, err := strconv.ParseUint(resp.Header.Get(dirSeqHeader), 10, 64); err == nil && resp.StatusCode < 300 {
					ctx, cancel := context.WithTimeout(resp.Request.Context(), 2*time.Second)
					d.obs.waitSeq(ctx, seq)
					cancel()
				}
				return nil
			},
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				d.owners.Forget(uint32(d.p))
				writeErr(w, http.StatusServiceUnavailable, "the node owning the directory did not answer; retry", "UNAVAILABLE")
			},
		}
		// A frozen owner's is abandoned once another serves.
		ctx, cancel := boundToOwner(r.Context(), since, func() context.Context { return d.owners.Since(uint32(d.p)) }, func(ctx context.Context) bool {
			_, now, err := d.owners.lookup(ctx, uint32(d.p))
			return err == nil && now == base
		})
		defer cancel()
		proxy.ServeHTTP(w, r.WithContext(ctx))
	})
}

// seqWriter sets dirSeqHeader on an answer, from seq when the answer
// begins (the change it answers for is then durable and shipped).
type seqWriter struct {
	http.ResponseWriter
	seq     func() uint64
	started bool
}

func (s *seqWriter) WriteHeader(code int) {
	if !s.started {
		s.started = true
		s.Header().Set(dirSeqHeader, strconv.FormatUint(s.seq(), 10))
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *seqWriter) Write(b []byte) (int, error) {
	if !s.started {
		s.WriteHeader(http.StatusOK)
	}
	return s.ResponseWriter.Write(b)
}
