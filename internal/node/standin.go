package node

import (
	"cmp"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/channels/socket"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
)

// A member that does not serve (it follows as the standby, joins, or
// waits as a spare) stands in on the node's two ports, so that whatever
// reaches it finds the owner:
//
//   - the socket port answers every HELLO with NOT_OWNER and the owner's
//     socket address (socket.Redirector);
//   - the HTTP port serves this member's own /healthz (200), /readyz
//     (503: it does not serve; load balancers pass it by), /metrics (its
//     standby state: deploy/METRICS.md, "members that do not serve") and
//     GET /v1/cluster (its own status, with the admin token), and proxies
//     every other request to the owner's HTTP listener: the admin API and
//     dingctl, and Twilio's webhooks, which may hit any member and must
//     reach the owner (signatures are checked there, against the public
//     URL all members share). A request in flight ends, answered 503
//     (retry), at the announcement that the partition has a new owner
//     (ownerMoves): the one it went to may be frozen.
//
// Both close the moment the member starts serving, before the node binds
// the same ports.
type standIn struct {
	redir    *socket.Redirector
	tlsRedir *socket.Redirector // on the TLS socket port, naming the owner's
	srv      *http.Server
	done     chan struct{}
}

// memberState is what a member not serving is doing, for its status and
// its metrics.
type memberState string

const (
	stateSpare   memberState = "spare"   // waiting for a place
	stateJoining memberState = "joining" // fetching the owner's snapshot
	stateStandby memberState = "standby" // following the owner
	stateDrained memberState = "drained" // asked to hold no role (dingctl cluster drain)
)

var memberStates = []memberState{stateSpare, stateJoining, stateStandby, stateDrained}

// owner returns the serving member's id and its published address under
// key ("" when none serves or it is unknown), cached for a moment: a
// stand-in asked by many clients at once asks the coordinator once.
type ownerCache struct {
	mu sync.Mutex
	at time.Time
	ownerAt
}

// ownerAt is the serving member and its published addresses.
type ownerAt struct {
	id, sock, http, tlsSock string
}

func (m *member) owner(ctx context.Context) (id, sock, httpURL string) {
	c := m.ownerAddrs(ctx)
	return c.id, c.sock, c.http
}

// ownerTLSSocket is the serving member's TLS socket address ("" if none
// serves, or it has none).
func (m *member) ownerTLSSocket(ctx context.Context) string {
	return m.ownerAddrs(ctx).tlsSock
}

// ownerNow is the serving member's published HTTP address, asked of the
// coordinator past the cache ("" when none serves, this member does, or
// the coordinator does not answer).
func (m *member) ownerNow(ctx context.Context) string { return m.lookupOwner(ctx, false).http }

// lookupOwner asks the coordinator which member serves the partition
// (zero when none, this member, or no answer) and its published HTTP
// address, and with sockets also its socket addresses.
func (m *member) lookupOwner(ctx context.Context, sockets bool) ownerAt {
	holder, _, err := m.c.Lease(ctx, m.p)
	if err != nil || holder == "" || holder == m.mc.ID {
		return ownerAt{}
	}
	o := ownerAt{id: holder}
	o.http, _ = m.c.Addr(ctx, holder)
	if sockets {
		o.sock, _ = m.c.Addr(ctx, socketAddrKey(holder))
		o.tlsSock, _ = m.c.Addr(ctx, tlsSocketAddrKey(holder))
	}
	return o
}

// forget drops the cached answer: the partition changed hands.
func (c *ownerCache) forget() {
	c.mu.Lock()
	c.at = time.Time{}
	c.mu.Unlock()
}

// ownerAddrs is the cached lookup behind owner.
func (m *member) ownerAddrs(ctx context.Context) ownerAt {
	c := &m.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) < 250*time.Millisecond {
		return c.ownerAt
	}
	c.at, c.ownerAt = time.Now(), m.lookupOwner(ctx, true)
	return c.ownerAt
}

// standInMetrics registers a member's metrics while it does not serve.
func (m *member) standInMetrics() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfoGauge())
	if err := m.registerCoordMetrics(reg); err != nil {
		m.log.Warn("the coordinator's metrics are missing", "err", err)
	}
	standby := func(f func(cluster.StandbyState) float64) func() float64 {
		return func() float64 {
			if fl := m.follower.Load(); fl != nil {
				return f(fl.Standby().State())
			}
			return 0
		}
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ding_cluster_standby_seq",
			Help: "The last batch of the partition's history this member holds (0 while it holds none)."},
			standby(func(s cluster.StandbyState) float64 { return float64(s.Seq) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ding_cluster_standby_fence_epoch",
			Help: "The newest owner epoch this member has seen; it refuses entries of older ones."},
			standby(func(s cluster.StandbyState) float64 { return float64(s.FenceEpoch) })),
	)
	for _, s := range memberStates {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ding_cluster_member_state",
			Help: "1 for what this member, not serving, is doing now: following as the standby, joining, waiting as a spare, or drained (holding no role).", ConstLabels: prometheus.Labels{"state": string(s)}},
			func() float64 {
				if st, _ := m.state.Load().(memberState); st == s {
					return 1
				}
				return 0
			}))
	}
	return reg
}

// standIn starts standing in on the node's ports, if it does not
// already. A port it cannot bind is logged and left alone: clients also
// try the other members' addresses.
func (m *member) standIn() {
	if m.stand != nil {
		return
	}
	s := &standIn{done: make(chan struct{})}
	sockAddr := m.mc.Node.SocketAddr
	if sockAddr == "" {
		sockAddr = ":7070"
	}
	if ln, err := net.Listen("tcp", sockAddr); err != nil {
		m.log.Warn("cannot answer clients with the owner's address", "listen", sockAddr, "err", err)
	} else {
		s.redir = &socket.Redirector{Route: func(ctx context.Context, _ *pb.Hello) string {
			_, sock, _ := m.owner(ctx) // one partition: every user's owner is the lease holder
			return sock
		}}
		s.redir.Serve(ln)
	}
	if a := m.mc.Node.TLSSocketAddr; a != "" && m.mc.Node.TLSCert != "" {
		// TLS clients meet the same answer over TLS, naming the owner's
		// TLS socket.
		certs, err := m.standInCerts()
		var ln net.Listener
		if err == nil {
			ln, err = net.Listen("tcp", a)
		}
		if err != nil {
			m.log.Warn("cannot answer TLS clients with the owner's address", "listen", a, "err", err)
		} else {
			s.tlsRedir = &socket.Redirector{Route: func(ctx context.Context, _ *pb.Hello) string {
				return m.ownerTLSSocket(ctx)
			}}
			s.tlsRedir.Serve(tls.NewListener(ln, certs.tlsConfig()))
		}
	}
	httpAddr := m.mc.Node.HTTPAddr
	if httpAddr == "" {
		httpAddr = ":7080"
	}
	ln, err := net.Listen("tcp", httpAddr)
	if err == nil {
		// The same bounds as the node's HTTP port, and its TLS: a member
		// that stands by must not open a plain port where its node serves
		// HTTPS (it proxies the admin API, tokens and all, to the owner).
		perSource, total := cmp.Or(m.mc.Node.MaxHTTPConnsPerSource, 64), cmp.Or(m.mc.Node.MaxHTTPConns, 1024)
		var lim net.Listener
		if lim, err = newLimitListener(ln, max(perSource, 0), max(total, 0), prometheus.NewRegistry()); err == nil {
			ln = lim
			if m.mc.Node.TLSCert != "" {
				var certs *certReloader
				if certs, err = m.standInCerts(); err == nil {
					ln = tls.NewListener(ln, certs.tlsConfig())
				}
			}
		}
		if err != nil {
			ln.Close()
		}
	}
	if err != nil {
		m.log.Warn("cannot serve this member's HTTP while it stands by", "listen", httpAddr, "err", err)
		close(s.done)
	} else {
		s.srv = &http.Server{Handler: m.standInHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: time.Minute}
		go func() { defer close(s.done); _ = s.srv.Serve(ln) }()
	}
	m.stand = s
}

// standInCerts is the stand-in's certificate: the node's files, read once
// and reloaded as the node's are (certReloader). It asks for client
// certificates as the node does (TLSClientCA): a proxied request carries
// the one its handshake verified to the owner, in the member's signed
// assertion (forwarded.go), and the owner authenticates its admin.
func (m *member) standInCerts() (*certReloader, error) {
	if m.standCerts == nil {
		c, err := newCertReloader(m.mc.Node.TLSCert, m.mc.Node.TLSKey, m.mc.Node.TLSClientCA)
		if err != nil {
			return nil, err
		}
		m.standCerts = c
	}
	return m.standCerts, nil
}

// standOut stops standing in, freeing the ports for serving.
func (m *member) standOut() {
	s := m.stand
	if s == nil {
		return
	}
	m.stand = nil
	if s.redir != nil {
		_ = s.redir.Close()
	}
	if s.tlsRedir != nil {
		_ = s.tlsRedir.Close()
	}
	if s.srv != nil {
		_ = s.srv.Close()
	}
	<-s.done
}

func (m *member) standInHandler() http.Handler {
	mux := http.NewServeMux()
	metrics := promhttp.HandlerFor(m.metrics, promhttp.HandlerOpts{})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		// Behind the metrics permission when the node's is (MetricsAuth).
		if m.mc.Node.MetricsAuth && !m.authorizeStandIn(w, r, "GET /metrics", httpapi.PermMetrics) {
			return
		}
		metrics.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /cluster/fence", m.fenceHandler)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		st, _ := m.state.Load().(memberState)
		id, _, _ := m.owner(r.Context())
		if id == "" {
			id = "none right now"
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not serving: this member is a " + string(st) + "; the owner is " + id + "\n"))
	})
	// clusterRoute authorizes a cluster route with its own permission.
	clusterRoute := func(w http.ResponseWriter, r *http.Request, pattern string) bool {
		return m.authorizeStandIn(w, r, pattern, httpapi.ClusterPermission(pattern))
	}
	mux.HandleFunc("POST /v1/cluster/forget", func(w http.ResponseWriter, r *http.Request) {
		if clusterRoute(w, r, "POST /v1/cluster/forget") {
			m.forget(w, r)
		}
	})
	mux.HandleFunc("POST /v1/cluster/drain", func(w http.ResponseWriter, r *http.Request) {
		if !clusterRoute(w, r, "POST /v1/cluster/drain") {
			return
		}
		m.drained.Store(true) // a standby releases its role at its next check; a spare stays one
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		if !clusterRoute(w, r, "GET /v1/cluster") {
			return
		}
		st, _ := m.state.Load().(memberState)
		out := struct {
			Member string `json:"member"`
			Role   string `json:"role"`
			Owner  string `json:"owner"`
			// The standby's copy: the newest epoch seen, how far it runs.
			FenceEpoch uint64 `json:"fence_epoch"`
			Seq        uint64 `json:"seq"`
			// Members: every member's last word (cluster.Registry).
			Members []memberView `json:"members"`
		}{Member: m.mc.ID, Role: string(st), Members: m.members(r.Context())}
		out.Owner, _, _ = m.owner(r.Context())
		if f := m.follower.Load(); f != nil {
			s := f.Standby().State()
			out.FenceEpoch, out.Seq = s.FenceEpoch, s.Seq
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	proxy := &httputil.ReverseProxy{
		Transport: m.peer.Transport,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(pr.In.Context().Value(ownerURLKey{}).(*url.URL))
			pr.Out.Host = pr.In.Host // the owner checks Twilio's signature against its public URL, not this Host
			pr.SetXForwarded()
			m.fwd.assert(pr.Out, pr.In) // the client's address and certificate, for the owner's checks
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(context.Cause(r.Context()), errOwnerMoved) {
				// The owner it went to may be frozen: the new one answers.
				m.log.Info("a request sent on to the owner was abandoned: the partition has a new owner", "path", r.URL.Path)
				w.Header().Set("Retry-After", "1")
				writeErr(w, http.StatusServiceUnavailable, "the partition moved to another member while the request was sent on; retry", "UNAVAILABLE")
				return
			}
			m.log.Warn("proxying to the owner failed", "path", r.URL.Path, "err", err)
			writeErr(w, http.StatusBadGateway, "the owner did not answer; retry", "UNAVAILABLE")
		},
	}
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Ended by the announcement of a new owner (ownerMoves): the one
		// it went to may be frozen, and would hold it until the client
		// gives up.
		since := m.moves.current() // before the owner is looked up
		_, _, target := m.owner(r.Context())
		u, err := url.Parse(target)
		if target == "" || err != nil || u.Host == "" {
			w.Header().Set("Retry-After", "1")
			writeErr(w, http.StatusServiceUnavailable, "no member serves the partition right now (a takeover in progress); retry", "UNAVAILABLE")
			return
		}
		ctx, cancel := boundToOwner(r.Context(), since, m.moves.current, func(ctx context.Context) bool { return m.ownerNow(ctx) == target })
		defer cancel()
		proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, ownerURLKey{}, u)))
	}))
	return m.fwd.accept(mux, func() *x509.CertPool { return m.standCerts.clientPool() })
}

type ownerURLKey struct{}

// authorizeStandIn authorizes r for a route a member that does not serve
// answers itself (pattern: one of httpapi.ClusterRoutes, or GET /metrics
// with MetricsAuth), which needs perm. Such a member holds no directory
// to check admins against: it asks the owner who the caller is
// (GET /v1/admins/me with the caller's Authorization, or its client
// certificate in this member's signed assertion, forwarded.go) and
// checks the route's permission in the answer; the owner's 401 or 429
// is passed on as it is. Only while no owner answers (a takeover, a recovery: when
// these routes matter most) does it accept the first-start token it
// copied with the owner's snapshot (adminOK), and nothing else. On
// failure it answers w as the API would and returns false.
func (m *member) authorizeStandIn(w http.ResponseWriter, r *http.Request, pattern string, perm httpapi.Permission) bool {
	authz := r.Header.Get("Authorization")
	if authz == "" && httpapi.ClientCert(r) == nil {
		writeAPIErr(w, http.StatusUnauthorized, "UNAUTHENTICATED", "missing bearer token", "")
		return false
	}
	if _, _, target := m.owner(r.Context()); target != "" {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimRight(target, "/")+"/v1/admins/me", nil)
		if err == nil {
			if authz != "" {
				req.Header.Set("Authorization", authz)
			}
			m.fwd.assert(req, r) // the caller's address (its failures count against it there) and certificate
			resp, err := m.peer.Do(req)
			if err == nil {
				defer resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusOK:
					var me struct {
						Name        string   `json:"name"`
						Role        string   `json:"role"`
						Permissions []string `json:"permissions"`
					}
					if json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&me) == nil && me.Name != "" {
						if slices.Contains(me.Permissions, string(perm)) {
							return true
						}
						writeAPIErr(w, http.StatusForbidden, "FORBIDDEN",
							fmt.Sprintf("admin %q (role %s) lacks the permission %q that %s needs", me.Name, me.Role, perm, pattern), string(perm))
						return false
					}
				case http.StatusUnauthorized, http.StatusTooManyRequests:
					for _, h := range []string{"Content-Type", "Retry-After"} {
						if v := resp.Header.Get(h); v != "" {
							w.Header().Set(h, v)
						}
					}
					w.WriteHeader(resp.StatusCode)
					_, _ = io.Copy(w, io.LimitReader(resp.Body, 1<<16))
					return false
				}
			}
		}
		m.log.Warn("the owner did not say who an admin is; only the first-start token is accepted", "route", pattern, "owner", target)
	}
	if m.adminOK(r) {
		return true
	}
	writeAPIErr(w, http.StatusUnauthorized, "UNAUTHENTICATED",
		"no owner answers to check this admin right now; until one does, a member that does not serve accepts only the first-start token (DATA/admin.token)", "")
	return false
}

// writeAPIErr answers as the admin API does (httpapi; openapi.json's
// Error): {"error": {"code", "detail", "permission"?, "retry"?}}. An
// UNAVAILABLE answer says "retry": true (the same request may be sent
// again), with Retry-After (1 s unless the caller set it).
func writeAPIErr(w http.ResponseWriter, status int, code, detail, perm string) {
	body := map[string]any{"code": code, "detail": detail}
	if perm != "" {
		body["permission"] = perm
	}
	if code == string(engine.CodeUnavailable) {
		body["retry"] = true
		if w.Header().Get("Retry-After") == "" {
			w.Header().Set("Retry-After", "1")
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": body})
}

// adminOK checks r's admin token against the one in this member's data
// dir (copied with the owner's snapshot; a spare that never joined has
// none and refuses).
func (m *member) adminOK(r *http.Request) bool {
	want, err := os.ReadFile(filepath.Join(m.mc.Node.DataDir, AdminTokenFile))
	if err != nil {
		return false
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(strings.TrimSpace(string(want)))) == 1
}

// writeErr is writeAPIErr for the cluster's own routes and refusals
// (hand-over, drain, recovery, the directory's proxy, peers' webhook
// ops): the same shape as every other answer of the API, so dingctl and
// the console show their detail.
func writeErr(w http.ResponseWriter, status int, msg, code string) {
	writeAPIErr(w, status, code, msg, "")
}
