package node

import (
	"context"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// A memberHost is what serves a member's partition while the member owns
// it, and what the node's ports do while it does not:
//
//   - wholeNode, a cluster of one partition: the member starts the whole
//     node when it takes the lease and shuts it down when it loses it;
//     while it does not serve, it stands in on the node's ports
//     (standin.go);
//   - partHost, a member per partition (partmember.go): the node runs
//     all along, and the member attaches its partition's runtime to it
//     when it takes the lease and detaches it when it loses it.
//
// The member's loop (member.go) is the same for both: the fencing rules
// are per partition.
type memberHost interface {
	// start serves the partition from owner, whose lease was taken at
	// leaseFrom.
	start(m *member, owner *cluster.Owner, leaseFrom time.Time) (*served, error)
	// standIn and standOut start and stop whatever the node's ports do
	// while the member does not serve (nothing, for partHost).
	standIn(m *member)
	standOut(m *member)
}

// served is a partition being served: its replicated store, and how to
// stop serving it (the node's, or the runtime's, orderly shutdown).
type served struct {
	rs       *cluster.ReplicatedStore
	shutdown func(ctx context.Context) error
}

// replicate wraps db for the owner: every batch is shipped to the
// standby (and, with ack-replicas 1, acknowledged once it holds it).
func (m *member) replicate(db *pebblestore.DB, reg prometheus.Registerer, owner *cluster.Owner, leaseFrom time.Time) (*cluster.ReplicatedStore, error) {
	rs, err := cluster.NewReplicatedStore(db, owner)
	if err != nil {
		return nil, err
	}
	if err := rs.Register(reg); err != nil {
		rs.Stop() // its ack watch ends with it; the store is the caller's
		return nil, err
	}
	if m.mc.OwnerOnly {
		// The lease was taken just before serve began: half a TTL from
		// then is a safe first deadline (a slow start makes batches wait
		// for the first renewal, which moves it).
		rs.SetOwnerOnly(leaseFrom.Add(m.mc.LeaseTTL / 2))
	}
	return rs, nil
}

// coordCollector returns the coordinator's own metrics (Redis's commands
// and connections: cluster.RedisCoord.Collector), or nil.
func coordCollector(c cluster.Coord) prometheus.Collector {
	if mc, ok := c.(interface{ Collector() prometheus.Collector }); ok {
		return mc.Collector()
	}
	return nil
}

// registerCoordMetrics registers the coordinator's own metrics with reg,
// a registry of the whole process (the serving node's, or the stand-in's:
// not one labelled by partition). A node of partitions has them through
// membersCollector.
func (m *member) registerCoordMetrics(reg prometheus.Registerer) error {
	if c := coordCollector(m.c); c != nil {
		return reg.Register(c)
	}
	return nil
}

// wholeNode is the host of a cluster of one partition.
type wholeNode struct{}

func (wholeNode) standIn(m *member)  { m.standIn() }
func (wholeNode) standOut(m *member) { m.standOut() }

func (wholeNode) start(m *member, owner *cluster.Owner, leaseFrom time.Time) (*served, error) {
	var snap atomic.Pointer[http.Handler]
	var rs *cluster.ReplicatedStore
	cfg := m.mc.Node
	codec, err := cluster.NewKeyCodec(m.mc.Secret)
	if err != nil {
		return nil, err
	}
	cfg.WrapKeys = func(k engine.Keys) engine.Keys {
		ks := cluster.NewKeyShipper(k, codec)
		rs.SetKeys(ks) // Replicate ran first
		return ks
	}
	cfg.Replicate = func(db *pebblestore.DB, reg prometheus.Registerer) (store.Store, error) {
		var err error
		if rs, err = m.replicate(db, reg, owner, leaseFrom); err != nil {
			return nil, err
		}
		if err := m.registerCoordMetrics(reg); err != nil { // the node's own registry
			m.log.Warn("the coordinator's metrics are missing", "err", err) // not a reason not to serve
		}
		h := cluster.SnapshotHandler(rs, m.c, m.mc.Secret, cfg.DataDir, m.sharedFiles()...)
		snap.Store(&h)
		return rs, nil
	}
	cfg.fwd = m.fwd
	routes := map[string]http.Handler{}
	for k, v := range cfg.Routes {
		routes[k] = v
	}
	routes["GET /cluster/fence"] = http.HandlerFunc(m.fenceHandler)
	routes["/cluster/"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := snap.Load(); h != nil {
			(*h).ServeHTTP(w, r)
			return
		}
		http.Error(w, "cluster: not ready", http.StatusServiceUnavailable)
	})
	var node atomic.Pointer[Node]
	// admin authorizes r for a cluster route as the served node's API
	// authorizes its own routes (a named admin with the route's
	// permission: httpapi.ClusterRoutes).
	admin := func(w http.ResponseWriter, r *http.Request, pattern string) bool {
		n := node.Load()
		if n == nil || rs == nil {
			http.Error(w, `{"error":"starting"}`, http.StatusServiceUnavailable)
			return false
		}
		return n.API().Authorize(w, r, pattern, httpapi.ClusterPermission(pattern))
	}
	routes["POST /v1/cluster/forget"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if admin(w, r, "POST /v1/cluster/forget") {
			m.forget(w, r)
		}
	})
	routes["POST /v1/cluster/drain"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !admin(w, r, "POST /v1/cluster/drain") {
			return
		}
		if rs.Status().Standby == "" {
			writeErr(w, http.StatusConflict, "no standby to move the partition to: start another member first", "CONFLICT")
			return
		}
		m.drained.Store(true)
		m.handOver()
		w.WriteHeader(http.StatusAccepted)
	})
	routes["POST /v1/cluster/handover"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if admin(w, r, "POST /v1/cluster/handover") {
			m.handoverRoute(w, r)
		}
	})
	routes["GET /v1/cluster"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !admin(w, r, "GET /v1/cluster") {
			return
		}
		st := struct {
			Member string `json:"member"`
			Role   string `json:"role"`
			cluster.Status
			LeaseTTLSeconds float64 `json:"lease_ttl_seconds"`
			// StalledSeconds: how long batches have waited on a standby
			// making no progress (it is dropped after two lease TTLs).
			StalledSeconds float64 `json:"stalled_seconds"`
			// Members: every member's last word (cluster.Registry).
			Members []memberView `json:"members"`
		}{m.mc.ID, "owner", rs.Status(), m.mc.LeaseTTL.Seconds(), 0, m.members(r.Context())}
		st.StalledSeconds = st.Stalled.Seconds()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
	cfg.Routes = routes
	n, err := Start(cfg)
	if err != nil {
		return nil, err
	}
	node.Store(n)
	if m.mc.Started != nil {
		m.mc.Started(n)
	}
	return &served{rs: rs, shutdown: n.Shutdown}, nil
}

// handOver asks the serving member to hand its partition over to its
// standby (serve's loop does it).
func (m *member) handOver() { poke(m.handover) }

// handoverRoute answers POST /v1/cluster/handover for this member's
// partition, once authorized: 409 without a standby, else 202 and the
// hand-over begins.
func (m *member) handoverRoute(w http.ResponseWriter, r *http.Request) {
	rs := m.serving.Load()
	if rs == nil {
		writeErr(w, http.StatusConflict, "this node does not own the partition now", "CONFLICT")
		return
	}
	if rs.Status().Standby == "" {
		writeErr(w, http.StatusConflict, "no standby to hand the partition over to", "CONFLICT")
		return
	}
	m.handOver()
	w.WriteHeader(http.StatusAccepted)
}
