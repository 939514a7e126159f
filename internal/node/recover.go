package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// Recovery when the coordinator loses the partition's state.
//
// Redis may lose its latest writes in a failover, or everything (a new
// replica, a flush): the lease, the epoch counter and the standby's name.
// The members then hold the partition's history between them, but the
// coordinator no longer says who may serve it, and the protocol's own
// rule (only the named standby takes over) would leave it down for good.
// A member that finds no lease and no standby named, and holds a history
// itself, asks every member it knows of for its fence (GET
// /cluster/fence, with the cluster secret; members tell of the members
// they know, so the set is closed transitively), and only when every one
// has answered (a member removed for good is forgotten first: dingctl
// cluster forget) does the one
// cluster.RecoveryChoice names take the lease at an epoch above every
// fence (cluster.Standby.Recover) and serve; the others then join it as
// usual. Waiting for every member is what makes it safe: the member that
// holds the newest acknowledged batches might be the one not answering.
// A member learns of the others from the coordinator's registry while it
// has one, and keeps what it learnt in DATA/cluster-peers.json, since the
// registry is lost with the rest.

// peersFile keeps the members this member has seen, for recovery.
const peersFile = "cluster-peers.json"

// peer is a member as this member last saw it.
type peer struct {
	HTTP string `json:"http"`
	Role string `json:"role"`
}

// peers is this member's record of the cluster's members.
type peers struct {
	mu   sync.Mutex
	path string
	m    map[string]peer
}

func loadPeers(dataDir string) *peers {
	p := &peers{path: filepath.Join(dataDir, peersFile), m: map[string]peer{}}
	if b, err := os.ReadFile(p.path); err == nil {
		_ = json.Unmarshal(b, &p.m)
	}
	return p
}

// merge records ms (from the registry) and writes the file if anything
// changed.
func (p *peers) merge(ms map[string]cluster.Member) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := maps.Clone(p.m)
	for id, mb := range ms {
		next[id] = peer{HTTP: mb.HTTP, Role: mb.Role}
	}
	if maps.Equal(next, p.m) {
		return nil
	}
	return p.save(next)
}

// save writes next as the record (a new file renamed over the old one)
// and makes it current; p.mu is held.
func (p *peers) save(next map[string]peer) error {
	b, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return err
	}
	tmp := p.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, p.path); err != nil {
		return err
	}
	p.m = next
	return nil
}

// forget removes id from the record (dingctl cluster forget: a member
// gone for good without a drain, which recovery would wait for forever).
func (p *peers) forget(id string) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.m[id]; !ok {
		return false, nil
	}
	next := maps.Clone(p.m)
	delete(next, id)
	return true, p.save(next)
}

// forget serves POST /v1/cluster/forget?member=ID, its caller
// authorized (httpapi.PermClusterWrite): this member stops counting ID
// among the members a recovery must hear from. The registry adds it back
// while it still publishes there.
func (m *member) forget(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("member")
	if id == "" || id == m.mc.ID {
		writeErr(w, http.StatusBadRequest, "member=ID is required, and may not be this member", "BAD_REQUEST")
		return
	}
	forgot, err := m.peers.forget(id)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "recording it failed: "+err.Error(), "INTERNAL")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"member": m.mc.ID, "forgot": id, "known": forgot})
}

func (p *peers) snapshot() map[string]peer {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.m)
}

// fence is what this member reports of itself (GET /cluster/fence); ok is
// false while it does not know (fenceFresh).
func (m *member) fence() (cluster.Fence, bool) {
	if rs := m.serving.Load(); rs != nil {
		st := rs.Status()
		return m.report(cluster.Fence{Held: true, Serving: true, Epoch: st.Epoch, Owner: m.mc.ID, Seq: st.Shipped}), true
	}
	if fl := m.follower.Load(); fl != nil {
		return m.report(fl.Fence(m.mc.ID)), true
	}
	if c := m.lastLocal.Load(); c != nil && m.fenceFresh.Load() {
		return m.report(c.fence), true
	}
	return m.report(cluster.Fence{}), false
}

// report is own, this member's copy, as the member reports it: with its
// id, whether it is drained, and the members it knows of.
func (m *member) report(own cluster.Fence) cluster.Fence {
	own.Member, own.Drained, own.KeepsUnreplicated = m.mc.ID, m.drained.Load(), true
	own.Peers = map[string]string{}
	for id, p := range m.peers.snapshot() {
		own.Peers[id] = p.HTTP
	}
	own.Peers[m.mc.ID] = m.mc.Advertise
	return own
}

// localCopy is this member's copy as last read from its store: what
// its fence says (cluster.Follower.Fence).
type localCopy struct {
	fence cluster.Fence
}

// fenceHandler serves GET /cluster/fence to members holding the cluster
// secret.
func (m *member) fenceHandler(w http.ResponseWriter, r *http.Request) {
	if !cluster.Authorized(r, m.mc.Secret) {
		http.Error(w, "cluster: bad or missing cluster secret", http.StatusUnauthorized)
		return
	}
	f, ok := m.fence()
	if !ok {
		http.Error(w, "cluster: this member's copy is changing; ask again", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(f)
}

// askFence asks the member at addr (its advertised HTTP URL) for its
// fence.
func (m *member) askFence(ctx context.Context, addr string) (cluster.Fence, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	target := strings.TrimRight(addr, "/") + "/cluster/fence"
	if m.p != 0 {
		target += "?p=" + strconv.FormatUint(uint64(m.p), 10)
	}
	req, err := http.NewRequestWithContext(ctx, "GET", target, nil)
	if err != nil {
		return cluster.Fence{}, err
	}
	req.Header.Set("Authorization", "Bearer "+m.mc.Secret)
	resp, err := m.peer.Do(req)
	if err != nil {
		return cluster.Fence{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return cluster.Fence{}, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	var f cluster.Fence
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&f); err != nil {
		return cluster.Fence{}, err
	}
	return f, nil
}

// errWaitRecovery: recovery cannot be decided yet (a member did not
// answer, or another is the one to recover); the caller waits and looks
// again.
var errWaitRecovery = errors.New("node: recovery waits")

// recoverPartition runs when the coordinator names no owner and no
// standby and this member holds a history, as localState has just read
// it (lastLocal): it gathers every member's fence and, if RecoveryChoice
// names this member, recovers the partition and serves it. It returns
// errWaitRecovery when it must wait.
func (m *member) recoverPartition(ctx context.Context) error {
	self := m.report(m.lastLocal.Load().fence)
	fences, missing := m.askFences(ctx, self)
	if len(missing) > 0 {
		m.logOnce("recovery", "the coordinator has lost the partition's state; recovering it waits until every member answers", "waiting_for", strings.Join(missing, ", "))
		return errWaitRecovery
	}
	all := slices.Collect(maps.Values(fences))
	choice, err := cluster.RecoveryChoice(all)
	if err != nil {
		m.logOnce("recovery", "the coordinator has lost the partition's state; no member can recover it yet", "err", err)
		return errWaitRecovery
	}
	if choice != m.mc.ID {
		m.logOnce("recovery", "the coordinator has lost the partition's state; waiting for the member holding the newest history to recover it", "member", choice)
		return errWaitRecovery
	}
	var floor, next uint64
	for _, f := range all {
		floor, next = max(floor, f.Epoch), max(next, f.Seq+1)
	}
	owner, err := m.recoverAs(ctx, floor, next)
	if err != nil {
		m.log.Warn("recovering the partition failed; retrying", "err", err)
		return errWaitRecovery
	}
	m.log.Warn("recovered the partition after the coordinator lost its state: this member held the newest history", "epoch", owner.Epoch(), "members", len(all))
	return m.serve(ctx, owner)
}

// recoverAs takes the partition over from this member's own store.
func (m *member) recoverAs(ctx context.Context, floor, next uint64) (*cluster.Owner, error) {
	db, err := pebblestore.Open(m.storeDir(), pebblestore.Options{Logger: m.log})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	f, err := cluster.NewFollower(m.c, m.p, m.mc.ID, db, cluster.StandbyState{})
	if err != nil {
		return nil, err
	}
	return f.Standby().Recover(ctx, m.mc.LeaseTTL, floor, next)
}

// logOnce logs msg the first time, and again only when what it says
// changes (a member waiting logs once, not at every look).
func (m *member) logOnce(key, msg string, args ...any) {
	line := fmt.Sprint(append([]any{msg}, args...)...)
	m.logMu.Lock()
	defer m.logMu.Unlock()
	if m.logged == nil {
		m.logged = map[string]string{}
	}
	if m.logged[key] == line {
		return
	}
	m.logged[key] = line
	m.log.Warn(msg, args...)
}

// askFences asks every member this one knows of (from its record and the
// registry), and every member those know of, for its fence of the
// partition; self is this member's own. missing lists those that did not
// answer (unreachable, or not answering as themselves).
func (m *member) askFences(ctx context.Context, self cluster.Fence) (map[string]cluster.Fence, []string) {
	fences := map[string]cluster.Fence{m.mc.ID: self}
	known := m.peers.snapshot()
	if reg, ok := m.c.(cluster.Registry); ok {
		if ms, err := reg.Members(ctx); err == nil {
			_ = m.peers.merge(ms)
			known = m.peers.snapshot()
		}
	}
	queue := slices.Sorted(maps.Keys(known))
	addr := map[string]string{}
	for id, p := range known {
		addr[id] = p.HTTP
	}
	var missing []string
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		if _, done := fences[id]; done {
			continue
		}
		f, err := m.askFence(ctx, addr[id])
		if err != nil || f.Member != id {
			// Even one last seen drained: it may have been restarted and
			// taken a role since this member's record of it. A member
			// removed for good is forgotten (dingctl cluster forget).
			if err == nil {
				err = fmt.Errorf("answered as %q", f.Member)
			}
			missing = append(missing, fmt.Sprintf("%s (%s: %v)", id, addr[id], err))
			continue
		}
		fences[id] = f
		for pid, paddr := range f.Peers {
			if _, seen := addr[pid]; !seen {
				addr[pid] = paddr
				queue = append(queue, pid)
			}
		}
	}
	return fences, missing
}

// foundsWithOthers decides, when the coordinator knows nothing of the
// partition, this member holds no history of it and other members exist,
// whether this member founds it: the members were started together for a
// new cluster. It does only if every member known answered its fence,
// none holds a history of the partition or serves it (else the
// coordinator lost its state, and a member holding the history recovers
// it: recoverPartition), and this member has the smallest id of those not
// drained. why says what it waits for otherwise. A member that does not
// answer may hold a history: founding waits for it, as recovery does.
func (m *member) foundsWithOthers(ctx context.Context) (found bool, why string, args []any) {
	self, _ := m.fence()
	self.Held, self.Serving = false, false
	fences, missing := m.askFences(ctx, self)
	if len(missing) > 0 {
		return false, "the coordinator knows no partition and this member holds none: founding it waits until every member known answers", []any{"waiting_for", strings.Join(missing, ", ")}
	}
	founder := ""
	for _, id := range slices.Sorted(maps.Keys(fences)) {
		f := fences[id]
		if f.Held || f.Serving {
			return false, "the coordinator knows no partition, but other members hold its history: waiting for one of them to recover it", []any{"member", id}
		}
		if founder == "" && !f.Drained {
			founder = id
		}
	}
	if founder != m.mc.ID {
		return false, "a new cluster: waiting for the member with the smallest id to found the partition", []any{"founder", founder}
	}
	return true, "", nil
}
