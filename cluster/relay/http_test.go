package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/cluster/relay"
	"github.com/dingmq/ding/engine"
)

const testSecret = "relay-test-cluster-secret"

// httpNode is a partition's engine behind its own HTTP server on
// loopback, as on a node of its own. owns says whether it serves its
// partition now (a node that lost it answers wrong_partition).
type httpNode struct {
	*node
	srv    *httptest.Server
	owns   atomic.Bool
	frames [][]byte // every frame it received, in order
	mu     sync.Mutex
}

func serveNodes(t testing.TB, nodes []*node, codec *cluster.KeyCodec) []*httpNode {
	t.Helper()
	out := make([]*httpNode, len(nodes))
	for i, n := range nodes {
		hn := &httpNode{node: n}
		hn.owns.Store(true)
		h, err := relay.Handler(relay.HandlerConfig{
			Secret: testSecret, Sealer: codec,
			Local: func(to uint32) (relay.Dest, bool) {
				return hn.e, to == hn.p && hn.owns.Load()
			},
			Owner: func(uint32) string { return "elsewhere:1" },
		})
		if err != nil {
			t.Fatal(err)
		}
		hn.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			hn.mu.Lock()
			hn.frames = append(hn.frames, body)
			hn.mu.Unlock()
			r.Body = io.NopCloser(bytes.NewReader(body))
			h.ServeHTTP(w, r)
		}))
		t.Cleanup(hn.srv.Close)
		out[i] = hn
	}
	return out
}

// httpConfig is a pump for every node whose destinations are the other
// nodes over HTTP.
func httpConfig(hns []*httpNode, codec *cluster.KeyCodec, reg prometheus.Registerer) relay.Config {
	cfg := relay.Config{Origins: map[uint32]relay.Origin{}, Dests: map[uint32]relay.Dest{}, Registerer: reg}
	for _, hn := range hns {
		cfg.Origins[hn.p] = hn.e
		cfg.Dests[hn.p] = &relay.HTTPDest{
			To: hn.p, Secret: testSecret, Sealer: codec, Client: hn.srv.Client(),
			Owner: func(context.Context, uint32) (string, error) { return hn.srv.URL, nil },
		}
	}
	return cfg
}

func testCodec(t testing.TB) *cluster.KeyCodec {
	codec, err := cluster.NewKeyCodec(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return codec
}

// TestPumpOverHTTP: three partitions, each behind its own HTTP server on
// loopback, every user sending to every other at once: every recipient
// gets each message exactly once over the wire, every outbox empties,
// and Check passes on every store. A secret message crosses too: the
// recipient's partition delivers its plaintext, and no frame carried its
// key or its text in clear.
func TestPumpOverHTTP(t *testing.T) {
	nodes := openNodes(t, 3, true)
	codec := testCodec(t)
	hns := serveNodes(t, nodes, codec)
	reg := prometheus.NewRegistry()
	cfg := httpConfig(hns, codec, reg)
	cfg.Batch = 7
	startPump(t, cfg)

	users := usersOf(3, 2)
	want, records := sendAll(t, nodes, users, 10)
	waitDelivered(t, nodes, want)
	waitOutboxesEmpty(t, nodes)
	eventually(t, "the metrics counting every record", func() (bool, string) {
		got := metric(t, reg, "ding_relay_records_total", nil)
		return got == float64(records), fmt.Sprintf("%v of %d", got, records)
	})

	ctx := context.Background()
	ch, err := nodes[0].e.CreateChat(ctx, engine.ChatRequest{From: "a0", To: "b0", Level: engine.Level2})
	if err != nil {
		t.Fatal(err)
	}
	const text = "the vault code is 4711"
	res, err := nodes[0].e.Submit(ctx, engine.Submission{From: "a0", Chat: ch.ID, Kind: engine.KindText, Body: []byte(text)})
	if err != nil {
		t.Fatal(err)
	}
	b := nodes[1].e
	var got *engine.Message
	eventually(t, "b0 receiving the secret message", func() (bool, string) {
		h, err := b.Head("b0")
		if err != nil {
			return false, err.Error()
		}
		es, err := b.Range("b0", 1, int(h)+1)
		if err != nil {
			return false, err.Error()
		}
		for _, en := range es {
			if en.Message != nil && en.Message.ID == res.ID {
				got = en.Message
				return true, ""
			}
		}
		return false, fmt.Sprintf("head %d", h)
	})
	if string(got.Body) != text {
		t.Fatalf("b0's copy of the secret message reads %q, want the plaintext", got.Body)
	}
	hns[1].mu.Lock()
	defer hns[1].mu.Unlock()
	for _, f := range hns[1].frames {
		if bytes.Contains(f, []byte(text)) {
			t.Fatal("a frame carried the secret message's text in clear")
		}
	}
	if len(hns[1].frames) == 0 {
		t.Fatal("partition 1 received no frame")
	}
}

// TestPumpOverHTTPFollowsTheOwner: while partition 1's node does not own
// it, the handler answers 409 wrong_partition and nothing is written
// there; the pump keeps the records and delivers them once the owner
// answers (a move of the partition, as the pump sees it).
func TestPumpOverHTTPFollowsTheOwner(t *testing.T) {
	nodes := openNodes(t, 2, true)
	codec := testCodec(t)
	hns := serveNodes(t, nodes, codec)
	hns[1].owns.Store(false)
	reg := prometheus.NewRegistry()
	cfg := httpConfig(hns, codec, reg)
	startPump(t, cfg)
	id, err := submit(nodes[0].e, "a0", "hello", "b0")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a wrong_partition refusal", func() (bool, string) {
		n := metric(t, reg, "ding_relay_apply_errors_total", map[string]string{"reason": "wrong_partition"})
		return n >= 1, fmt.Sprint(n)
	})
	if h, _ := nodes[1].e.Head("b0"); h != 0 {
		t.Fatalf("b0's head is %d on a node that does not own partition 1", h)
	}
	hns[1].owns.Store(true)
	waitDelivered(t, nodes, sent{"b0": {id}})
	waitOutboxesEmpty(t, nodes)
}

// TestRelayHandlerRefuses: a wrong secret, a GET, a frame that is not
// one, a frame whose partitions disagree with the request, and one over
// the limit each get their precise answer, and nothing is applied.
func TestRelayHandlerRefuses(t *testing.T) {
	nodes := openNodes(t, 2, false)
	codec := testCodec(t)
	h, err := relay.Handler(relay.HandlerConfig{
		Secret: testSecret, Sealer: codec, MaxFrame: 1 << 10,
		Local: func(to uint32) (relay.Dest, bool) { return nodes[1].e, to == 1 },
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	good, err := engine.EncodeRelayBatch(engine.RelayBatch{From: 0, To: 1, Records: []engine.RelayRecord{
		{Seq: 1, Kind: engine.RelayEntry, User: "b0", Entry: engine.Entry{Kind: engine.EntryReceipt, Receipt: &engine.ReceiptEvent{IDs: []engine.ID{{1}}, User: "a0", State: engine.StateRead}}},
	}}, codec)
	if err != nil {
		t.Fatal(err)
	}
	post := func(method, query, secret string, body []byte) (int, string) {
		req, _ := http.NewRequest(method, srv.URL+relay.RelayPath+query, bytes.NewReader(body))
		if secret != "" {
			req.Header.Set("Authorization", "Bearer "+secret)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var a struct{ Code string }
		json.Unmarshal(b, &a)
		if a.Code == "" {
			a.Code = strings.TrimSpace(string(b))
		}
		return resp.StatusCode, a.Code
	}
	for _, c := range []struct {
		name, method, query, secret string
		body                        []byte
		status                      int
		code                        string
	}{
		{"no secret", "POST", "?from=0&to=1", "", good, 401, "relay: bad or missing cluster secret"},
		{"wrong secret", "POST", "?from=0&to=1", "guess", good, 401, "relay: bad or missing cluster secret"},
		{"GET", "GET", "?from=0&to=1", testSecret, nil, 405, "relay: POST only"},
		{"no partitions", "POST", "", testSecret, good, 400, "bad_relay"},
		{"not a frame", "POST", "?from=0&to=1", testSecret, []byte("hello"), 400, "bad_relay"},
		{"partitions disagree", "POST", "?from=2&to=1", testSecret, good, 400, "bad_relay"},
		{"not owned here", "POST", "?from=1&to=0", testSecret, good, 409, "wrong_partition"},
		{"over the limit", "POST", "?from=0&to=1", testSecret, make([]byte, 2<<10), 413, "relay: frame over the limit"},
	} {
		if status, code := post(c.method, c.query, c.secret, c.body); status != c.status || code != c.code {
			t.Errorf("%s: %d %q, want %d %q", c.name, status, code, c.status, c.code)
		}
	}
	if h, _ := nodes[1].e.Head("b0"); h != 0 {
		t.Fatalf("b0's head is %d after refused requests", h)
	}
	if status, code := post("POST", "?from=0&to=1", testSecret, good); status != 200 {
		t.Fatalf("the good frame: %d %q", status, code)
	}
	if h, _ := nodes[1].e.Head("b0"); h != 1 {
		t.Fatalf("b0's head is %d after the good frame, want 1", h)
	}

	// HTTPDest maps the answers back to the engine's errors.
	d := &relay.HTTPDest{To: 0, Secret: testSecret, Sealer: codec, Client: srv.Client(),
		Owner: func(context.Context, uint32) (string, error) { return srv.URL, nil }}
	_, err = d.ApplyRelay(context.Background(), engine.RelayBatch{From: 1, To: 0, Records: []engine.RelayRecord{{Seq: 1, Kind: engine.RelayEntry, User: "a0", Entry: engine.Entry{Kind: engine.EntryReceipt, Receipt: &engine.ReceiptEvent{IDs: []engine.ID{{1}}, User: "b0", State: engine.StateRead}}}}})
	if !errors.Is(err, engine.ErrWrongPartition) {
		t.Fatalf("HTTPDest to a node without the partition: %v, want ErrWrongPartition", err)
	}
	d = &relay.HTTPDest{To: 1, Secret: "guess", Sealer: codec, Client: srv.Client(),
		Owner: func(context.Context, uint32) (string, error) { return srv.URL, nil }}
	if _, err := d.ApplyRelay(context.Background(), engine.RelayBatch{From: 0, To: 1}); err == nil || !strings.Contains(err.Error(), "refused the cluster secret") {
		t.Fatalf("HTTPDest with a wrong secret: %v", err)
	}
}
