package httpapi_test

import (
	"bytes"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

type api struct {
	t    *testing.T
	base string
	tok  string
}

func (a api) do(method, path, tok string, body any) (int, map[string]any) {
	a.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		r = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, a.base+path, r)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func errCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

// refused calls the API with tok and fails the test unless the answer is
// status with the error code.
func (a api) refused(method, path, tok string, body any, status int, code string) {
	a.t.Helper()
	got, out := a.do(method, path, tok, body)
	if got != status || errCode(out) != code {
		a.t.Fatalf("%s %s: got %d %v, want %d %s", method, path, got, out, status, code)
	}
}

func setup(t *testing.T) (api, *node.Node) {
	n := nodetest.Start(t, node.Config{MaxBody: 1024})
	return api{t: t, base: "http://" + n.HTTPAddr(), tok: n.AdminToken()}, n
}

func TestSendAndReceiptsThroughTheAPI(t *testing.T) {
	a, n := setup(t)
	if code, u := a.do("POST", "/v1/users", a.tok, map[string]string{"id": "ana", "name": "Ana"}); code != 201 || u["id"] != "ana" {
		t.Fatalf("create ana: %d %v", code, u)
	}
	if code, _ := a.do("PUT", "/v1/users/bo", a.tok, wholeUser("Bo", "+14155550100", "")); code != 201 {
		t.Fatalf("create bo: %d", code)
	}
	if code, _ := a.do("PUT", "/v1/users/bo", a.tok, wholeUser("Bo B.", "+14155550100", "")); code != 200 {
		t.Fatalf("update bo: %d", code)
	}
	code, res := a.do("POST", "/v1/messages", a.tok, map[string]any{"from": "ana", "to": []string{"bo"}, "text": "hi", "client_msg_id": "x1"})
	if code != 200 || res["duplicate"] != false {
		t.Fatalf("send: %d %v", code, res)
	}
	id := res["id"].(string)
	code, again := a.do("POST", "/v1/messages", a.tok, map[string]any{"from": "ana", "to": []string{"bo"}, "text": "hi", "client_msg_id": "x1"})
	if code != 200 || again["id"] != id || again["duplicate"] != true {
		t.Fatalf("retry: %d %v", code, again)
	}
	code, rc := a.do("GET", "/v1/messages/"+id+"/receipts", a.tok, nil)
	if code != 200 || rc["from"] != "ana" {
		t.Fatalf("receipts: %d %v", code, rc)
	}
	rs := rc["recipients"].([]any)
	if len(rs) != 1 || rs[0].(map[string]any)["state"] != "sent" {
		t.Fatalf("recipients %v", rs)
	}
	if h, _ := n.Engine().Head("bo"); h != 1 {
		t.Fatalf("bo head %d, want 1", h)
	}
	code, tok := a.do("POST", "/v1/tokens", a.tok, map[string]any{"user": "bo", "device": "phone"})
	if code != 200 || tok["token"] == "" {
		t.Fatalf("token: %d %v", code, tok)
	}
}

func TestAPIErrors(t *testing.T) {
	a, n := setup(t)
	a.do("POST", "/v1/users", a.tok, map[string]string{"id": "ana"})
	client := nodetest.Token(t, n, "ana", "phone")
	big := strings.Repeat("x", 1025)
	cases := []struct {
		name, method, path, tok string
		body                    any
		status                  int
		code                    string
	}{
		{"no token", "GET", "/v1/users", "", nil, 401, "UNAUTHENTICATED"},
		{"client token on admin API", "GET", "/v1/users", client, nil, 401, "UNAUTHENTICATED"},
		{"forged token", "GET", "/v1/users", a.tok[:len(a.tok)-4] + "AAAA", nil, 401, "UNAUTHENTICATED"},
		{"malformed JSON", "POST", "/v1/messages", a.tok, "{", 400, "BAD_REQUEST"},
		{"unknown field", "POST", "/v1/users", a.tok, map[string]any{"id": "x", "admin": true}, 400, "BAD_REQUEST"},
		{"bad user id", "POST", "/v1/users", a.tok, map[string]any{"id": "a b"}, 400, "BAD_REQUEST"},
		{"bad phone", "POST", "/v1/users", a.tok, map[string]any{"id": "cy", "phone": "555-1234"}, 400, "BAD_REQUEST"},
		{"unknown recipient", "POST", "/v1/messages", a.tok, map[string]any{"from": "ana", "to": []string{"zed"}, "text": "x"}, 422, "UNKNOWN_RECIPIENT"},
		{"unknown sender", "POST", "/v1/messages", a.tok, map[string]any{"from": "zed", "to": []string{"ana"}, "text": "x"}, 422, "UNKNOWN_SENDER"},
		{"no recipients", "POST", "/v1/messages", a.tok, map[string]any{"from": "ana", "text": "x"}, 400, "BAD_REQUEST"},
		{"body too large", "POST", "/v1/messages", a.tok, map[string]any{"from": "ana", "to": []string{"ana"}, "text": big}, 413, "MESSAGE_TOO_LARGE"},
		{"request too large", "POST", "/v1/messages", a.tok, map[string]any{"from": "ana", "to": []string{"ana"}, "text": strings.Repeat("y", 1<<20)}, 413, "TOO_LARGE"},
		{"malformed message id", "GET", "/v1/messages/nope/receipts", a.tok, nil, 400, "BAD_REQUEST"},
		{"unknown message", "GET", "/v1/messages/01M8K8F2K5C97AM15Z94XS9NY4/receipts", a.tok, nil, 404, "NOT_FOUND"},
		{"token for unknown user", "POST", "/v1/tokens", a.tok, map[string]any{"user": "zed", "device": "d"}, 404, "UNKNOWN_USER"},
		{"unknown user", "GET", "/v1/users/zed", a.tok, nil, 404, "NOT_FOUND"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a.t = t
			a.refused(c.method, c.path, c.tok, c.body, c.status, c.code)
		})
	}
	if h, _ := n.Engine().Head("ana"); h != 0 {
		t.Fatalf("a refused request reached ana's stream (head %d)", h)
	}
}

func TestBackupOpensWithTheData(t *testing.T) {
	a, _ := setup(t)
	a.do("POST", "/v1/users", a.tok, map[string]string{"id": "ana"})
	_, res := a.do("POST", "/v1/messages", a.tok, map[string]any{"from": "ana", "to": []string{"ana"}, "text": "keep me"})
	code, out := a.do("POST", "/v1/backup", a.tok, map[string]string{"dir": "bk"})
	if code != 200 {
		t.Fatalf("backup: %d %v", code, out)
	}
	dir := out["dir"].(string)
	if code, out := a.do("POST", "/v1/backup", a.tok, map[string]string{"dir": dir}); code != 409 {
		t.Fatalf("backup into an existing dir: %d %v", code, out)
	}
	// Only its owner can read it: 0700 directories, 0600 files, under a
	// 0700 root.
	if err := filepath.WalkDir(filepath.Dir(dir), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Nowhere but under the backup root.
	for _, bad := range []string{filepath.Join(t.TempDir(), "bk"), "../escape", "..", ".", "/etc/cron.d/x", "a/../../b"} {
		if code, out := a.do("POST", "/v1/backup", a.tok, map[string]string{"dir": bad}); code != 403 {
			t.Errorf("backup into %q: %d %v, want 403", bad, code, out)
		}
	}
	// A node started on the backup (with the store moved into place) has the message.
	data := t.TempDir()
	if err := os.Rename(dir, filepath.Join(data, "store")); err != nil {
		t.Fatal(err)
	}
	n2 := nodetest.Start(t, node.Config{DataDir: data})
	es, err := n2.Engine().Range("ana", 1, 10)
	if err != nil || len(es) != 1 || es[0].Message.ID.String() != res["id"] {
		t.Fatalf("backup stream: %v %v", es, err)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	a, n := setup(t)
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get(a.base + p)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", p, resp, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if p == "/metrics" {
			for _, m := range []string{"ding_engine_commit_duration_seconds", "ding_socket_connections", "ding_engine_commit_batch_ops", "ding_socket_slow_consumer_disconnects_total", "ding_fanout_deliveries_total", "go_goroutines"} {
				if !strings.Contains(string(body), m) {
					t.Errorf("/metrics lacks %s", m)
				}
			}
		}
	}
	nodetest.Stop(t, n)
	if resp, err := http.Get(a.base + "/readyz"); err == nil {
		resp.Body.Close()
		t.Fatalf("readyz answered %d after shutdown", resp.StatusCode)
	}
}

// A /v1 path no route takes, or a method a route does not, gets the JSON
// error body of every other answer, not ServeMux's plain text (issue 12).
func TestUnknownRoutesAnswerJSON(t *testing.T) {
	a, _ := setup(t)
	for _, c := range []struct {
		name, method, path string
		status             int
		body, allow        string
	}{
		{"unknown path", "GET", "/v1/nosuch", 404, `{"error":{"code":"NOT_FOUND","detail":"no route GET /v1/nosuch"}}`, ""},
		{"unknown sub-path", "POST", "/v1/users/bo/nosuch", 404, `{"error":{"code":"NOT_FOUND","detail":"no route POST /v1/users/bo/nosuch"}}`, ""},
		{"the root", "GET", "/v1", 404, `{"error":{"code":"NOT_FOUND","detail":"no route GET /v1"}}`, ""},
		{"wrong method", "DELETE", "/v1/users", 405, `{"error":{"code":"METHOD_NOT_ALLOWED","detail":"no route DELETE /v1/users (it takes GET, HEAD, POST)"}}`, "GET, HEAD, POST"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, a.base+c.path, nil)
			req.Header.Set("Authorization", "Bearer "+a.tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status || strings.TrimSpace(string(body)) != c.body ||
				resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Allow") != c.allow {
				t.Fatalf("got %d %q (%s, Allow %q), want %d %s", resp.StatusCode, body, resp.Header.Get("Content-Type"), resp.Header.Get("Allow"), c.status, c.body)
			}
		})
	}
}

// A message's receipts and its stats count alike, cumulatively: each
// count is the recipients who reached at least that state, so delivered
// includes read (issue 12).
func TestReceiptAndStatsCountsAreCumulative(t *testing.T) {
	a, n := setup(t)
	for _, u := range []string{"ana", "bo", "cy", "di"} {
		a.ok("POST", "/v1/users", map[string]string{"id": u, "name": u}, 201)
	}
	msg := a.ok("POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo", "cy", "di"}, "text": "hi"}, 200)["id"].(string)
	ann := a.ok("POST", "/v1/announcements", map[string]any{"to": "all", "text": "hello", "confirm": true}, 201)["id"].(string)
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	for range 2 {
		e := <-bo.Entries()
		bo.Ack(e.Seq) // delivered
	}
	cy := nodetest.Dial(t, n, "cy", "phone", nil)
	<-cy.Entries() // connected: a request right after Dial may find it not yet

	if err := cy.Read(t.Context(), msg); err != nil { // read, and so delivered
		t.Fatal(err)
	}
	if err := cy.Confirm(t.Context(), ann, 0); err != nil { // confirmed, and so read and delivered
		t.Fatal(err)
	}
	type counts struct{ sent, delivered, read, confirmed any }
	for _, c := range []struct {
		id   string
		want counts
	}{
		{msg, counts{3.0, 2.0, 1.0, nil}},
		{ann, counts{4.0, 2.0, 1.0, 1.0}},
	} {
		var rc map[string]any
		nodetest.WaitFor(t, "bo's acks counted", 5*time.Second, func() bool {
			rc = a.ok("GET", "/v1/messages/"+c.id+"/receipts", nil, 200)
			return rc["counts"].(map[string]any)["delivered"] == c.want.delivered
		})
		rcc := rc["counts"].(map[string]any)
		if got := (counts{rcc["sent"], rcc["delivered"], rcc["read"], rcc["confirmed"]}); got != c.want {
			t.Errorf("receipts counts of %s: %+v, want %+v", c.id, got, c.want)
		}
		st := a.ok("GET", "/v1/messages/"+c.id+"/stats", nil, 200)
		want := c.want
		if want.confirmed == nil {
			want.confirmed = 0.0
		}
		if got := (counts{st["sent"], st["delivered"], st["read"], st["confirmed"]}); got != want || st["pending"] != 0.0 || st["total"] != c.want.sent {
			t.Errorf("stats of %s: %v, want %+v", c.id, st, want)
		}
	}
}
