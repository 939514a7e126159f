package node

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dingmq/ding/channels/webhook"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
)

// Outbound webhooks on a node of partitions, and in a cluster of them.
//
// Every partition's engine and the directory's has an event outbox of
// its own (source "0", "1", ..., "dir": event ids "evt_2_17"), and a
// subscription is stored in each outbox's store, with the same id and
// secret and a cursor of its own. So a subscription, its cursors and its
// dead letters live in the partitions' stores: in a cluster they are
// replicated with the partition and move with it.
//
// Delivery: the node's dispatcher delivers the outboxes this node serves
// now. A partition attached here is attached to the dispatcher, and
// detached from it (its workers stopped, a request in flight abandoned)
// before its engine is shut down; its next owner's dispatcher goes on
// from the durable cursors, so an event is delivered at least once across
// hand-overs and failovers, under the same id (receivers deduplicate by
// it), and in order per outbox. The directory's outbox is delivered by
// the node that owns the directory's partition (dirmember.go), never from
// a node's copy of it.
//
// Management (orgHooks, the admin API's /v1/webhooks on any node): a
// change is applied to the outboxes served here and, in a cluster, by
// every other node to those it serves (POST /cluster/webhooks, with the
// cluster secret). It succeeds once every outbox answered: a partition no
// reachable node serves at that moment makes it fail with 503. A
// subscription added half-way is removed again (a failed removal leaves
// it on some outboxes, which removing it again completes); a removal,
// pause or replay that failed half-way is completed by doing it again.
// Reads of the subscriptions answer from one outbox (every outbox holds
// the same ones); the backlog and the dead letters are summed and merged
// over all of them.

// hooksPath is the route a node applies a subscription change (or
// answers a read) for the outboxes it serves.
const hooksPath = "POST /cluster/webhooks"

// hookSourceDir is the directory's outbox's name.
const hookSourceDir = "dir"

// setHooks starts delivering, on d, the outboxes of the partitions
// attached now and the directory's (when this node delivers it); attach
// and detach keep it in step afterwards.
func (s *partitionSet) setHooks(d *webhook.Dispatcher) {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	s.hookDisp = d
	for _, rt := range s.attached() {
		s.hookAttachLocked(rt.eng)
	}
	if s.hookDir != nil {
		s.hookAttachLocked(s.hookDir)
	}
}

func (s *partitionSet) hookAttachLocked(e *engine.Engine) {
	if s.hookDisp == nil || s.hookOn[e.WebhookSource()] {
		return
	}
	if err := s.hookDisp.Attach(e); err != nil {
		if !errors.Is(err, webhook.ErrClosed) {
			s.log.Error("delivering a partition's webhook events failed to start", "source", e.WebhookSource(), "err", err)
		}
		return
	}
	s.hookOn[e.WebhookSource()] = true
}

// hookAttach starts delivering e's outbox (a partition attached here).
func (s *partitionSet) hookAttach(e *engine.Engine) {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	s.hookAttachLocked(e)
}

// hookDetach stops delivering the outbox named source and waits for its
// workers (before its engine shuts down).
func (s *partitionSet) hookDetach(source string) {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	if s.hookOn[source] {
		delete(s.hookOn, source)
		s.hookDisp.Detach(source)
	}
}

// setHookDir makes e the directory's outbox this node delivers and
// manages (the directory's partition's engine while this cluster node
// owns it), or none (nil). The one before is detached first.
func (s *partitionSet) setHookDir(e *engine.Engine) {
	s.hookDetach(hookSourceDir)
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	s.hookDir = e
	if e != nil {
		s.hookAttachLocked(e)
	}
}

// hookEngines is every engine with an outbox this node serves now: the
// partitions' attached, by partition, and the directory's when this node
// has it.
func (s *partitionSet) hookEngines() []*engine.Engine {
	out := s.engines()
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	if s.hookDir != nil {
		out = append(out, s.hookDir)
	}
	return out
}

// hookSources is every outbox of the org: each partition's and the
// directory's.
func (s *partitionSet) hookSources() []string {
	out := make([]string, 0, s.n+1)
	for p := range s.n {
		out = append(out, strconv.FormatUint(uint64(p), 10))
	}
	return append(out, hookSourceDir)
}

// hookOp is a subscription change or read, as one node asks another.
type hookOp struct {
	Op         string          `json:"op"` // add, remove, pause, list, get, backlog, dead, replay
	Hook       *engine.Webhook `json:"hook,omitempty"`
	ID         string          `json:"id,omitempty"`
	Paused     bool            `json:"paused,omitempty"`
	After      uint64          `json:"after,omitempty"`
	Max        int             `json:"max,omitempty"`
	OnlyReplay bool            `json:"only_replay,omitempty"`
	Events     []string        `json:"events,omitempty"`
}

// hookOutbox is what one outbox answered.
type hookOutbox struct {
	Source   string              `json:"source"`
	Found    bool                `json:"found,omitempty"` // it had the subscription
	Backlog  uint64              `json:"backlog,omitempty"`
	Dead     []engine.DeadLetter `json:"dead,omitempty"`
	Replayed int                 `json:"replayed,omitempty"`
}

// hookReply is what the outboxes of one node answered.
type hookReply struct {
	Outboxes []hookOutbox `json:"outboxes"`
	// Hooks: the subscription added, the subscriptions (list) or the one
	// asked for (get), from the first outbox; never with its secret.
	Hooks []engine.Webhook `json:"hooks,omitempty"`
}

// applyHookOp applies op to engs, the outboxes one node serves. A
// change is made on each in turn; an outbox without the subscription
// answers not Found. An add finds a subscription of the same id and
// secret already there done (a partition that moved while the change
// went round is asked twice). An outbox that cannot take it now (its
// partition is being handed over, its store is read-only) is left out of
// the reply: the asking node retries it. Reads of the subscriptions
// (list, get) answer from the first outbox.
func applyHookOp(ctx context.Context, engs []*engine.Engine, op hookOp) (hookReply, error) {
	var r hookReply
	if (op.Op == "list" || op.Op == "get") && len(engs) > 1 {
		engs = engs[:1]
	}
	for _, e := range engs {
		ob := hookOutbox{Source: e.WebhookSource()}
		var err error
		switch op.Op {
		case "add":
			if op.Hook == nil {
				return r, engine.NewError(engine.CodeBadRequest, "node: an add without its subscription")
			}
			have, gerr := e.Webhook(op.Hook.ID)
			switch {
			case gerr == nil && have.Secret == op.Hook.Secret:
			default:
				have, err = e.AddWebhook(ctx, *op.Hook)
			}
			if err == nil && len(r.Hooks) == 0 {
				r.Hooks = append(r.Hooks, have)
			}
		case "remove":
			err = e.RemoveWebhook(ctx, op.ID)
		case "pause":
			_, err = e.PauseWebhook(ctx, op.ID, op.Paused)
		case "list":
			var ws []engine.Webhook
			ws, err = e.Webhooks()
			r.Hooks = append(r.Hooks, ws...)
		case "get":
			var w engine.Webhook
			if w, err = e.Webhook(op.ID); err == nil {
				r.Hooks = append(r.Hooks, w)
			}
		case "backlog":
			var w engine.Webhook
			if w, err = e.Webhook(op.ID); err == nil {
				ob.Backlog = e.WebhookBacklog(w)
			}
		case "dead":
			ob.Dead, err = e.WebhookDeadLetters(op.ID, op.After, op.Max, op.OnlyReplay)
		case "replay":
			ob.Replayed, err = e.ReplayWebhook(ctx, op.ID, op.Events)
		default:
			return r, engine.NewError(engine.CodeBadRequest, fmt.Sprintf("node: no webhook op %q", op.Op))
		}
		switch {
		case errors.Is(err, engine.ErrNoWebhook):
		case engine.CodeOf(err) == engine.CodeUnavailable:
			continue // retried by the asking node, here or on the partition's next owner
		case err != nil:
			return r, fmt.Errorf("webhook %s on outbox %s: %w", op.ID, e.WebhookSource(), err)
		default:
			ob.Found = true
		}
		r.Outboxes = append(r.Outboxes, ob)
	}
	for i := range r.Hooks {
		r.Hooks[i].Secret = "" // shown once, by the node the admin added it through
	}
	return r, nil
}

// orgHooks is the admin API's webhooks (httpapi.Webhooks) on a node of
// partitions: every outbox of the org, through the other nodes in a
// cluster (see the comment at the top of this file).
type orgHooks struct {
	set    *partitionSet
	peers  func() []string // the other nodes' HTTP base URLs; nil: none
	client *http.Client
	secret string
}

// hookRounds is how many times an op goes round the nodes while some
// outbox has not answered (its partition was moving), and hookRetry how
// long the first retry waits (doubling).
const (
	hookRounds = 4
	hookRetry  = 50 * time.Millisecond
)

// hookResult is an op's outcome over the org: each outbox's answer (the
// first it gave), the subscriptions the first answering outbox listed,
// and the outboxes none answered for.
type hookResult struct {
	outboxes map[string]hookOutbox
	hooks    []engine.Webhook
	missing  []string
}

func (h *hookResult) found() bool {
	for _, ob := range h.outboxes {
		if ob.Found {
			return true
		}
	}
	return false
}

// do applies op here and on every other node, in rounds until every
// outbox answered (or hookRounds); a read (one) stops at the first
// answer. An outbox's refusal other than "not now" ends it with that
// error.
func (o *orgHooks) do(ctx context.Context, op hookOp, one bool) (*hookResult, error) {
	res := &hookResult{outboxes: map[string]hookOutbox{}}
	var b []byte
	take := func(r hookReply) {
		if len(r.Outboxes) > 0 && res.hooks == nil {
			res.hooks = append([]engine.Webhook{}, r.Hooks...)
		}
		for _, ob := range r.Outboxes {
			if _, ok := res.outboxes[ob.Source]; !ok {
				res.outboxes[ob.Source] = ob
			}
		}
	}
	done := func() bool { return one && len(res.outboxes) > 0 }
	wait := hookRetry
	for round := 0; ; round++ {
		r, err := applyHookOp(ctx, o.set.hookEngines(), op)
		if err != nil {
			return res, err
		}
		take(r)
		if o.peers != nil && !done() {
			if b == nil {
				b, _ = json.Marshal(op)
			}
			for _, base := range o.peers() {
				var pr hookReply
				err := o.post(ctx, base, b, &pr)
				if err != nil && engine.CodeOf(err) != engine.CodeUnavailable && errors.As(err, new(*engine.Error)) {
					return res, err
				}
				if err != nil {
					continue // its outboxes count as missing
				}
				if take(pr); done() {
					break
				}
			}
		}
		res.missing = res.missing[:0]
		for _, s := range o.set.hookSources() {
			if _, ok := res.outboxes[s]; !ok {
				res.missing = append(res.missing, s)
			}
		}
		if len(res.missing) == 0 || done() || round == hookRounds-1 {
			return res, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, nil
		case <-t.C:
		}
		wait *= 2
	}
}

// post posts an op to the node at base and decodes its reply; an
// outbox's refusal comes back as the *engine.Error it was.
func (o *orgHooks) post(ctx context.Context, base string, b []byte, out *hookReply) error {
	client := o.client
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+"/cluster/webhooks", strings.NewReader(string(b)))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+o.secret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if code, detail, ok := peerError(io.LimitReader(resp.Body, 64<<10)); ok && resp.StatusCode != http.StatusUnauthorized {
			return engine.NewError(engine.Code(code), detail)
		}
		return fmt.Errorf("%s", resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out)
}

// peerError reads a peer's error answer: {"error": {"code", "detail"}}
// (writeErr), or {"error", "code"} from a node of a version before it (a
// rolling upgrade).
func peerError(r io.Reader) (code, detail string, ok bool) {
	var e struct {
		Error json.RawMessage
		Code  string
	}
	if json.NewDecoder(r).Decode(&e) != nil {
		return "", "", false
	}
	var api struct{ Code, Detail string }
	if json.Unmarshal(e.Error, &api) == nil && api.Code != "" {
		return api.Code, api.Detail, true
	}
	var old string
	if json.Unmarshal(e.Error, &old) == nil && e.Code != "" {
		return e.Code, old, true
	}
	return "", "", false
}

// unavailable is the 503 for outboxes no node answered for.
func unavailable(what string, missing []string) error {
	return engine.NewError(engine.CodeUnavailable, fmt.Sprintf("node: %s: no node serving the outboxes of %s answered now; retry", what, strings.Join(missing, ", ")))
}

// AddWebhook makes the subscription's id and secret here and adds it to
// every outbox; if one refuses it or is not reached, it is removed from
// those that have it.
func (o *orgHooks) AddWebhook(ctx context.Context, w engine.Webhook) (engine.Webhook, error) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	w.ID, w.Secret = "wh_"+hex.EncodeToString(b), engine.NewWebhookSecret()
	res, err := o.do(ctx, hookOp{Op: "add", Hook: &w}, false)
	if err == nil && len(res.missing) > 0 {
		err = unavailable("adding webhook "+w.ID, res.missing)
	}
	if err != nil {
		if _, rerr := o.change(context.WithoutCancel(ctx), hookOp{Op: "remove", ID: w.ID}); rerr != nil && !errors.Is(rerr, engine.ErrNoWebhook) {
			o.set.log.Error("removing a webhook added half-way failed; removing it again completes it", "subscription", w.ID, "err", rerr)
		}
		return engine.Webhook{}, err
	}
	if len(res.hooks) > 0 {
		got := res.hooks[0]
		got.Secret = w.Secret
		return got, nil
	}
	return w, nil
}

func (o *orgHooks) Webhooks() ([]engine.Webhook, error) {
	res, err := o.do(context.Background(), hookOp{Op: "list"}, true)
	if err != nil {
		return nil, err
	}
	if len(res.outboxes) == 0 {
		return nil, unavailable("listing the webhooks", res.missing)
	}
	return res.hooks, nil
}

func (o *orgHooks) Webhook(id string) (engine.Webhook, error) {
	res, err := o.do(context.Background(), hookOp{Op: "get", ID: id}, true)
	switch {
	case err != nil:
		return engine.Webhook{}, err
	case len(res.hooks) > 0:
		return res.hooks[0], nil
	case len(res.outboxes) == 0:
		return engine.Webhook{}, unavailable("reading webhook "+id, res.missing)
	}
	return engine.Webhook{}, fmt.Errorf("%w: %q", engine.ErrNoWebhook, id)
}

// change applies a change to every outbox: ErrNoWebhook if none had it,
// 503 if some were not reached (doing it again completes it).
func (o *orgHooks) change(ctx context.Context, op hookOp) (*hookResult, error) {
	res, err := o.do(ctx, op, false)
	switch {
	case err != nil:
		return res, err
	case len(res.missing) > 0:
		return res, unavailable(op.Op+" of webhook "+op.ID+" is done on some outboxes only", res.missing)
	case !res.found():
		return res, fmt.Errorf("%w: %q", engine.ErrNoWebhook, op.ID)
	}
	return res, nil
}

func (o *orgHooks) RemoveWebhook(ctx context.Context, id string) error {
	_, err := o.change(ctx, hookOp{Op: "remove", ID: id})
	return err
}

func (o *orgHooks) PauseWebhook(ctx context.Context, id string, paused bool) (engine.Webhook, error) {
	if _, err := o.change(ctx, hookOp{Op: "pause", ID: id, Paused: paused}); err != nil {
		return engine.Webhook{}, err
	}
	return o.Webhook(id)
}

// WebhookBacklog sums the subscription's backlog over every outbox
// reached (an outbox not reached counts none).
func (o *orgHooks) WebhookBacklog(w engine.Webhook) uint64 {
	res, _ := o.do(context.Background(), hookOp{Op: "backlog", ID: w.ID}, false)
	var n uint64
	for _, ob := range res.outboxes {
		n += ob.Backlog
	}
	return n
}

// WebhookDeadLetters lists up to max from each outbox (after applying to
// each one's seqs), by when they were parked, up to max in all.
func (o *orgHooks) WebhookDeadLetters(id string, after uint64, max int, onlyReplay bool) ([]engine.DeadLetter, error) {
	res, err := o.do(context.Background(), hookOp{Op: "dead", ID: id, After: after, Max: max, OnlyReplay: onlyReplay}, false)
	if err != nil {
		return nil, err
	}
	if len(res.missing) > 0 {
		return nil, unavailable("listing the dead letters of webhook "+id, res.missing)
	}
	var out []engine.DeadLetter
	for _, ob := range res.outboxes {
		out = append(out, ob.Dead...)
	}
	slices.SortStableFunc(out, func(a, b engine.DeadLetter) int { return cmp.Compare(a.Parked.UnixNano(), b.Parked.UnixNano()) })
	if len(out) > max {
		out = out[:max]
	}
	return out, nil
}

func (o *orgHooks) ReplayWebhook(ctx context.Context, id string, events []string) (int, error) {
	res, err := o.change(ctx, hookOp{Op: "replay", ID: id, Events: events})
	n := 0
	for _, ob := range res.outboxes {
		n += ob.Replayed
	}
	return n, err
}

// hooksHandler serves POST /cluster/webhooks: op applied to the outboxes
// served here. An outbox's refusal answers with its code, which the
// asking node passes on.
func hooksHandler(secret string, set func() *partitionSet) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cluster.Authorized(r, secret) {
			writeErr(w, http.StatusUnauthorized, "cluster: bad or missing cluster secret", "UNAUTHENTICATED")
			return
		}
		var op hookOp
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&op); err != nil {
			writeErr(w, http.StatusBadRequest, "cluster: want a webhook op", string(engine.CodeBadRequest))
			return
		}
		s := set()
		if s == nil {
			writeErr(w, http.StatusServiceUnavailable, "cluster: starting", string(engine.CodeUnavailable))
			return
		}
		reply, err := applyHookOp(r.Context(), s.hookEngines(), op)
		if err != nil {
			code := engine.CodeOf(err)
			status := http.StatusInternalServerError
			switch code {
			case engine.CodeBadRequest:
				status = http.StatusBadRequest
			case engine.CodeNotFound:
				status = http.StatusNotFound
			case engine.CodeUnavailable:
				status = http.StatusServiceUnavailable
			}
			writeErr(w, status, err.Error(), string(code))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(reply)
	})
}
