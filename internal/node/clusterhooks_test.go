package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/httpapi/openapitest"
	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/webhook"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// hookEvent is one webhook delivery a test receiver verified.
type hookEvent struct{ id, typ, user string }

// hookReceiver is a webhook receiver on loopback that verifies each
// request's signature with the subscription's secret (set once it is
// made) and keeps the events, deduplicated by id as a receiver must.
type hookReceiver struct {
	srv     *httptest.Server
	mu      sync.Mutex
	secret  string
	seen    map[string]bool
	events  []hookEvent // first deliveries, in arrival order
	dups    int         // redeliveries of an id already delivered
	changed chan struct{}
}

func newHookReceiver(t *testing.T) *hookReceiver {
	r := &hookReceiver{seen: map[string]bool{}, changed: make(chan struct{}, 1)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if err := webhook.Verify(r.secret, req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp"), req.Header.Get("webhook-signature"), body, time.Now(), time.Minute); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev struct {
			ID, Type string
			Data     map[string]any
		}
		if err := json.Unmarshal(body, &ev); err != nil || ev.ID != req.Header.Get("webhook-id") {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if r.seen[ev.ID] {
			r.dups++
			return
		}
		r.seen[ev.ID] = true
		u, _ := ev.Data["user"].(string)
		if ev.Type == "message.read" {
			u, _ = ev.Data["recipient"].(string)
		}
		r.events = append(r.events, hookEvent{ev.ID, ev.Type, u})
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// waitFor waits until the receiver's events satisfy cond.
func (r *hookReceiver) waitFor(t *testing.T, what string, cond func([]hookEvent) bool) []hookEvent {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		r.mu.Lock()
		evs := slices.Clone(r.events)
		r.mu.Unlock()
		if cond(evs) {
			return evs
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("webhook receiver: %s: got %v", what, evs)
		}
	}
}

// userAdded lists the users of the user.added events, each from the
// directory's outbox.
func userAdded(t *testing.T, evs []hookEvent) []string {
	var out []string
	for _, e := range evs {
		if e.typ == "user.added" {
			if !strings.HasPrefix(e.id, "evt_dir_") {
				t.Fatalf("user.added from %s, not the directory's outbox", e.id)
			}
			out = append(out, e.user)
		}
	}
	return out
}

// TestClusterWebhooksFollowThePartitions: on two cluster nodes of 4
// partitions, one subscription made through one node is on every
// partition's outbox on both nodes, with one secret. Users added through
// the other node reach it from the directory's outbox; a read of ana's
// message from her partition's. Then ana's partition and the directory's
// are handed over to the other node: the events written there after the
// move are delivered by the new owner, from the same outboxes (the same
// source in their ids, seqs going on). Changes through either node reach
// every outbox (pause holds the events back, resume sends them; remove
// leaves none), and bad input is refused with a clear error, between
// nodes too.
func TestClusterWebhooksFollowThePartitions(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	ctx := context.Background()
	a, b := startPartCluster(t, coord, testLog(t), nil)
	rcv := newHookReceiver(t)
	apiA, apiB := openapitest.New(t, "http://"+a.http), openapitest.New(t, "http://"+b.http)
	tok := a.n.AdminToken()

	// Bad input: a clear 400 from either node, and nothing stored.
	apiB.Call(t, "POST /v1/webhooks", "/v1/webhooks", tok, map[string]any{"url": "ftp://x", "events": []string{"*"}}, http.StatusBadRequest)
	apiA.Call(t, "POST /v1/webhooks", "/v1/webhooks", tok, map[string]any{"url": rcv.srv.URL, "events": []string{"nope.*"}}, http.StatusBadRequest)
	for _, pn := range []partNode{a, b} {
		for _, e := range pn.n.Engines() {
			if e == nil {
				continue
			}
			if ws, err := e.Webhooks(); err != nil || len(ws) != 0 {
				t.Fatalf("a refused subscription left %v on %s (%v)", ws, pn.id, err)
			}
		}
	}

	out := apiB.Call(t, "POST /v1/webhooks", "/v1/webhooks", tok, map[string]any{"url": rcv.srv.URL, "events": []string{"user.added", "message.read"}}, http.StatusCreated)
	id, _ := out["id"].(string)
	secret, _ := out["secret"].(string)
	rcv.mu.Lock()
	rcv.secret = secret
	rcv.mu.Unlock()
	outboxes := 0
	for _, pn := range []partNode{a, b} {
		for p, e := range pn.n.Engines() {
			if e == nil {
				continue
			}
			if w, err := e.Webhook(id); err != nil || w.Secret != secret {
				t.Fatalf("partition %d on %s: %+v %v", p, pn.id, w, err)
			}
			outboxes++
		}
	}
	if outboxes != testPartitions {
		t.Fatalf("the subscription is on %d partitions' outboxes, want %d", outboxes, testPartitions)
	}
	for _, api := range []*openapitest.Checker{apiA, apiB} {
		got := api.Call(t, "GET /v1/webhooks/{id}", "/v1/webhooks/"+id, tok, nil, http.StatusOK)
		if got["id"] != id || got["secret"] != nil {
			t.Fatalf("GET /v1/webhooks/%s: %v", id, got)
		}
	}

	users := []string{"ana", "bo", "cy", "di", "ed", "flo", "gus", "hal"}
	addClusterUsers(t, b, []partNode{a, b}, named(users...)...)
	rcv.waitFor(t, "user.added for every user, in order", func(evs []hookEvent) bool {
		return slices.Equal(userAdded(t, evs), users)
	})

	home := func(user string) partNode {
		if a.n.Engines()[a.n.PartitionOf(user)] != nil {
			return a
		}
		return b
	}
	to := ""
	for _, u := range users[1:] {
		if a.n.PartitionOf(u) != a.n.PartitionOf("ana") {
			to = u
			break
		}
	}
	pAna := a.n.PartitionOf("ana")
	bo, err := client.Dial(ctx, client.Config{Addr: a.n.SocketAddr() + "," + b.n.SocketAddr(), Token: nodetest.Token(t, a.n, to, "phone"), Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	// readOne sends a message from ana to `to` on the node serving her
	// partition now, and has `to` read it.
	readOne := func() string {
		t.Helper()
		var res engine.SubmitResult
		nodetest.WaitFor(t, "ana's partition to take a message", 20*time.Second, func() bool {
			e := home("ana").n.Engines()[pAna]
			if e == nil {
				return false
			}
			r, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{to}, Kind: engine.KindText, Body: []byte("hi"), ViaAPI: true})
			res = r
			return err == nil
		})
		if m := firstDeliver(t, bo, res.ID.String()); m == nil {
			t.FailNow()
		}
		// A read in flight when the reader's partition moves (balance
		// evens the owners out after the hand-overs below) gets no answer:
		// the client reconnects and reads again, as an app does.
		nodetest.WaitFor(t, to+"'s read to be acknowledged", 20*time.Second, func() bool {
			return bo.Read(ctx, res.ID.String()) == nil
		})
		return res.ID.String()
	}
	source := fmt.Sprintf("evt_%d_", pAna)
	reads := func(evs []hookEvent) (ids []string) {
		for _, e := range evs {
			if e.typ == "message.read" {
				if !strings.HasPrefix(e.id, source) || e.user != to {
					t.Fatalf("message.read %+v, want one from outbox %s for %s", e, source, to)
				}
				ids = append(ids, e.id)
			}
		}
		return ids
	}
	readOne()
	first := rcv.waitFor(t, "the first message.read", func(evs []hookEvent) bool { return len(reads(evs)) == 1 })

	// Hand ana's partition and the directory's over to the other node.
	handover := func(p int) {
		t.Helper()
		owner, _, _ := coord.Lease(ctx, cluster.Partition(p))
		from, other := a, b
		if owner == b.id {
			from, other = b, a
		}
		if code, apiErr := clusterCall(t, "POST", fmt.Sprintf("http://%s/v1/cluster/handover?p=%d", from.http, p), tok); code != http.StatusAccepted {
			t.Fatalf("hand-over of partition %d: %d %v", p, code, apiErr)
		}
		nodetest.WaitFor(t, fmt.Sprintf("%s to own partition %d", other.id, p), 20*time.Second, func() bool {
			h, _, _ := coord.Lease(ctx, cluster.Partition(p))
			return h == other.id
		})
	}
	handover(pAna)
	handover(testPartitions) // the directory's
	readOne()
	addClusterUsers(t, a, []partNode{a, b}, named("ivy")...)
	evs := rcv.waitFor(t, "the read and the user added after the hand-overs", func(evs []hookEvent) bool {
		return len(reads(evs)) == 2 && slices.Equal(userAdded(t, evs), append(slices.Clone(users), "ivy"))
	})
	ids := reads(evs)
	if ids[0] != reads(first)[0] || eventSeq(t, ids[1]) <= eventSeq(t, ids[0]) {
		t.Fatalf("message.read ids %v: the moved outbox's seqs do not go on", ids)
	}

	// Pause through one node holds every outbox's events; resume through
	// the other delivers them.
	if got := apiA.Call(t, "POST /v1/webhooks/{id}/pause", "/v1/webhooks/"+id+"/pause", tok, nil, http.StatusOK); got["paused"] != true {
		t.Fatalf("pause: %v", got)
	}
	readOne()
	addClusterUsers(t, b, []partNode{a, b}, named("jo")...)
	nodetest.WaitFor(t, "the backlog to count the held events", 10*time.Second, func() bool {
		got := apiB.Call(t, "GET /v1/webhooks/{id}", "/v1/webhooks/"+id, tok, nil, http.StatusOK)
		return got["paused"] == true && got["backlog"].(float64) >= 2
	})
	apiB.Call(t, "POST /v1/webhooks/{id}/resume", "/v1/webhooks/"+id+"/resume", tok, nil, http.StatusOK)
	rcv.waitFor(t, "the events held while paused", func(evs []hookEvent) bool {
		return len(reads(evs)) == 3 && slices.Contains(userAdded(t, evs), "jo")
	})

	apiA.Call(t, "DELETE /v1/webhooks/{id}", "/v1/webhooks/"+id, tok, nil, http.StatusOK)
	for _, pn := range []partNode{a, b} {
		for p, e := range pn.n.Engines() {
			if e == nil {
				continue
			}
			if ws, err := e.Webhooks(); err != nil || len(ws) != 0 {
				t.Fatalf("partition %d on %s still has %v (%v)", p, pn.id, ws, err)
			}
		}
	}
	apiB.Call(t, "GET /v1/webhooks/{id}", "/v1/webhooks/"+id, tok, nil, http.StatusNotFound)
	apiB.Call(t, "DELETE /v1/webhooks/{id}", "/v1/webhooks/"+id, tok, nil, http.StatusNotFound)

	// Between nodes: the cluster secret is required, and a bad op is
	// refused.
	for _, c := range []struct {
		auth, body string
		want       int
	}{
		{"", `{"op":"list"}`, http.StatusUnauthorized},
		{"Bearer per-partition-secret", `{"op":"teleport"}`, http.StatusBadRequest},
		{"Bearer per-partition-secret", `{"op":`, http.StatusBadRequest},
	} {
		req, _ := http.NewRequest("POST", "http://"+b.http+"/cluster/webhooks", strings.NewReader(c.body))
		req.Header.Set("Authorization", c.auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Fatalf("POST /cluster/webhooks %s: %d, want %d", c.body, resp.StatusCode, c.want)
		}
	}
	rcv.mu.Lock()
	t.Logf("%d events delivered, %d redelivered across the hand-overs", len(rcv.events), rcv.dups)
	rcv.mu.Unlock()
}

// eventSeq is the seq of an event id ("evt_<source>_<seq>").
func eventSeq(t *testing.T, id string) uint64 {
	_, seq, err := engine.ParseWebhookEventID(id)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}
