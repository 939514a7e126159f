package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
)

// Org-wide settings in a cluster of partitions: a named escalation
// policy is stored by every partition's engine (a DING reads it from its
// home partition), so setting one on a cluster node sets it on the
// partitions it serves and asks every other node to set it on theirs
// (POST /cluster/policies, with the cluster secret). It succeeds once
// every partition has it; a partition owned by no node reachable then
// makes it fail (503), and setting it again is harmless.

// policiesPath is the route a node sets a policy on its partitions on.
const policiesPath = "POST /cluster/policies"

type policyReq struct {
	Name   string `json:"name"`
	Policy string `json:"policy"`
}

// orgEngine is the admin API's engine on a cluster node of partitions:
// the router, with SetPolicy across the cluster.
type orgEngine struct {
	httpapi.Engine
	set    *partitionSet
	peers  func() []string // the other nodes' HTTP base URLs
	client *http.Client
	secret string
}

// setLocal sets the policy on the partitions served here and returns
// them.
func setLocal(ctx context.Context, set *partitionSet, name string, p engine.Policy) ([]int, error) {
	var done []int
	for _, rt := range set.attached() {
		if err := rt.eng.SetPolicy(ctx, name, p); err != nil {
			return done, fmt.Errorf("partition %d: %w", rt.p, err)
		}
		done = append(done, int(rt.p))
	}
	return done, nil
}

func (o *orgEngine) SetPolicy(ctx context.Context, name string, p engine.Policy) error {
	have := map[int]bool{}
	done, err := setLocal(ctx, o.set, name, p)
	if err != nil {
		return err
	}
	for _, i := range done {
		have[i] = true
	}
	b, _ := json.Marshal(policyReq{Name: name, Policy: p.String()})
	for _, base := range o.peers() {
		ps, err := o.ask(ctx, base, b)
		if err != nil {
			continue // its partitions count as missing below
		}
		for _, i := range ps {
			have[i] = true
		}
	}
	var missing []string
	for i := range int(o.set.n) {
		if !have[i] {
			missing = append(missing, strconv.Itoa(i))
		}
	}
	if len(missing) > 0 {
		return engine.NewError(engine.CodeUnavailable, fmt.Sprintf("node: policy %s is stored on some partitions, not yet on %s (no node serving them answered now); setting it again completes it", name, strings.Join(missing, ", ")))
	}
	return nil
}

func (o *orgEngine) ask(ctx context.Context, base string, b []byte) ([]int, error) {
	var out struct {
		Partitions []int `json:"partitions"`
	}
	if err := o.post(ctx, base, "/cluster/policies", b, &out); err != nil {
		return nil, err
	}
	return out.Partitions, nil
}

// policiesHandler serves POST /cluster/policies: the policy set on the
// partitions served here, which it lists.
func policiesHandler(secret string, set func() *partitionSet) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cluster.Authorized(r, secret) {
			http.Error(w, "cluster: bad or missing cluster secret", http.StatusUnauthorized)
			return
		}
		var req policyReq
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
			http.Error(w, "cluster: want {name, policy}", http.StatusBadRequest)
			return
		}
		p, err := engine.ParsePolicy(req.Policy)
		if err != nil {
			http.Error(w, "cluster: "+err.Error(), http.StatusBadRequest)
			return
		}
		s := set()
		if s == nil {
			http.Error(w, "cluster: starting", http.StatusServiceUnavailable)
			return
		}
		done, err := setLocal(r.Context(), s, req.Name, p)
		if err != nil {
			http.Error(w, "cluster: setting the policy failed", http.StatusInternalServerError)
			return
		}
		slices.Sort(done)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"partitions": done})
	})
}

// The admin statistics (GET /v1/stats) of a cluster of partitions are
// every partition's, merged as on one node (router.AdminStats): a node
// answers for its partitions and asks every other node for theirs
// (POST /cluster/stats, with the cluster secret); a partition no node
// answered for makes it fail (503) rather than show part of the org.

// statsPath is the route a node answers its partitions' statistics on.
const statsPath = "POST /cluster/stats"

type statsReq struct {
	From        time.Time `json:"from"`
	To          time.Time `json:"to"`
	Departments []string  `json:"departments,omitempty"`
}

type statsAnswer struct {
	Partitions []int                `json:"partitions"`
	Stats      []*engine.AdminStats `json:"stats"`
}

func (o *orgEngine) AdminStats(q engine.StatsQuery) (*engine.AdminStats, error) {
	top := max(q.Top, 0)
	if top == 0 {
		top = 10
	}
	q.Top = 1 << 30 // every partition's whole list; cut after summing
	stats, ps, err := localStats(o.set, q)
	if err != nil {
		return nil, err
	}
	have := map[int]bool{}
	for _, i := range ps {
		have[i] = true
	}
	b, _ := json.Marshal(statsReq{From: q.From, To: q.To, Departments: q.Departments})
	for _, base := range o.peers() {
		var ans statsAnswer
		if err := o.post(context.Background(), base, "/cluster/stats", b, &ans); err != nil {
			continue
		}
		for i, p := range ans.Partitions {
			if !have[p] && i < len(ans.Stats) { // a partition that moved meanwhile counts once
				have[p] = true
				stats = append(stats, ans.Stats[i])
			}
		}
	}
	var missing []string
	for i := range int(o.set.n) {
		if !have[i] {
			missing = append(missing, strconv.Itoa(i))
		}
	}
	if len(missing) > 0 {
		return nil, engine.NewError(engine.CodeUnavailable, "node: no node answered for partitions "+strings.Join(missing, ", ")+" now; retry")
	}
	return mergeStats(stats, top)
}

// post posts b to path on the node at base with the cluster secret and
// decodes its 200 answer into out.
func (o *orgEngine) post(ctx context.Context, base, path string, b []byte, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+o.secret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := o.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out)
}

// statsHandler serves POST /cluster/stats: each partition served here
// answers the query.
func statsHandler(secret string, set func() *partitionSet) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cluster.Authorized(r, secret) {
			http.Error(w, "cluster: bad or missing cluster secret", http.StatusUnauthorized)
			return
		}
		var req statsReq
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
			http.Error(w, "cluster: want {from, to, departments}", http.StatusBadRequest)
			return
		}
		s := set()
		if s == nil {
			http.Error(w, "cluster: starting", http.StatusServiceUnavailable)
			return
		}
		stats, ps, err := localStats(s, engine.StatsQuery{From: req.From, To: req.To, Departments: req.Departments, Top: 1 << 30})
		if err != nil {
			http.Error(w, "cluster: the statistics failed", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(statsAnswer{Partitions: ps, Stats: stats})
	})
}

// A retention sweep (POST /v1/retention/sweep) of a cluster of
// partitions sweeps every partition: the node sweeps its own and asks
// the others (POST /cluster/sweep), and sums the reports; a partition no
// node answered for makes it fail (503; sweeping again is harmless).

// sweepPath is the route a node sweeps its partitions on.
const sweepPath = "POST /cluster/sweep"

type sweepAnswer struct {
	Partitions []int              `json:"partitions"`
	Report     engine.SweepReport `json:"report"`
}

func (o *orgEngine) Sweep(ctx context.Context) (engine.SweepReport, error) {
	sum, ps, err := localSweep(ctx, o.set)
	if err != nil {
		return sum, err
	}
	have := map[int]bool{}
	for _, i := range ps {
		have[i] = true
	}
	for _, base := range o.peers() {
		var ans sweepAnswer
		if err := o.post(ctx, base, "/cluster/sweep", []byte("{}"), &ans); err != nil {
			continue
		}
		addSweep(&sum, ans.Report)
		for _, p := range ans.Partitions {
			have[p] = true
		}
	}
	var missing []string
	for i := range int(o.set.n) {
		if !have[i] {
			missing = append(missing, strconv.Itoa(i))
		}
	}
	if len(missing) > 0 {
		return sum, engine.NewError(engine.CodeUnavailable, "node: no node swept partitions "+strings.Join(missing, ", ")+" now; sweeping again completes it")
	}
	return sum, nil
}

// sweepHandler serves POST /cluster/sweep: the partitions served here
// swept.
func sweepHandler(secret string, set func() *partitionSet) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cluster.Authorized(r, secret) {
			http.Error(w, "cluster: bad or missing cluster secret", http.StatusUnauthorized)
			return
		}
		s := set()
		if s == nil {
			http.Error(w, "cluster: starting", http.StatusServiceUnavailable)
			return
		}
		rep, ps, err := localSweep(r.Context(), s)
		if err != nil {
			http.Error(w, "cluster: the sweep failed", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(sweepAnswer{Partitions: ps, Report: rep})
	})
}

// The push registrations of the engine it wraps (httpapi.PushRegistry,
// found by type assertion, which the embedded interface would hide).

func (o *orgEngine) RegisterPushToken(ctx context.Context, user string, t engine.PushToken) (engine.PushToken, error) {
	return o.Engine.(httpapi.PushRegistry).RegisterPushToken(ctx, user, t)
}

func (o *orgEngine) RemovePushToken(ctx context.Context, user, device, token string) (bool, error) {
	return o.Engine.(httpapi.PushRegistry).RemovePushToken(ctx, user, device, token)
}

func (o *orgEngine) PushTokens(user string) ([]engine.PushToken, error) {
	return o.Engine.(httpapi.PushRegistry).PushTokens(user)
}
