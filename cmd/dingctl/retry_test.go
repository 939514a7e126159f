package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// While dingd answers UNAVAILABLE with "retry": true (a cluster's
// partition changing owner), dingctl asks again, for up to --retry-for,
// what is safe to ask again: a read, and a send, which carries a client
// message id (one made for the command when --client-id is not given),
// the same on every try. A change without one (user add) is asked once.
// With --retry-for 0 nothing is asked again.
func TestRetriesWhileUnavailable(t *testing.T) {
	var mu sync.Mutex
	tries := map[string]int{} // by method and path
	var cids []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		key := r.Method + " " + r.URL.Path
		tries[key]++
		if r.URL.Path == "/v1/messages" {
			var body struct {
				ClientMsgID string `json:"client_msg_id"`
			}
			_ = json.NewDecoder(r.Body).Decode(&body)
			cids = append(cids, body.ClientMsgID)
		}
		if tries[key] <= 2 || r.URL.Path == "/v1/users" {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":{"code":"UNAVAILABLE","detail":"the server cannot accept writes now; retry later","retry":true}}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/messages":
			_, _ = w.Write([]byte(`{"id":"01JMSG"}`))
		default:
			_, _ = w.Write([]byte(`{"id":"ana","name":"Ana"}`))
		}
	}))
	defer srv.Close()
	count := func(key string) int {
		mu.Lock()
		defer mu.Unlock()
		return tries[key]
	}
	var out bytes.Buffer
	if err := run([]string{"--server", srv.URL, "--token", "tok", "user", "get", "ana"}, &out); err != nil {
		t.Fatalf("user get: %v", err)
	}
	if n := count("GET /v1/users/ana"); n != 3 {
		t.Fatalf("user get asked %d times, want 3 (two UNAVAILABLE, then the answer)", n)
	}
	out.Reset()
	if err := run([]string{"--server", srv.URL, "--token", "tok", "send", "--from", "ana", "--to", "bo", "hi"}, &out); err != nil {
		t.Fatalf("send: %v", err)
	}
	if strings.TrimSpace(out.String()) != "01JMSG" || count("POST /v1/messages") != 3 {
		t.Fatalf("send printed %q after %d tries, want 01JMSG after 3", out.String(), count("POST /v1/messages"))
	}
	if len(cids) != 3 || cids[0] == "" || cids[1] != cids[0] || cids[2] != cids[0] {
		t.Fatalf("the send's client message ids over its tries: %q, want one, made for it, on every try", cids)
	}
	err := run([]string{"--server", srv.URL, "--token", "tok", "user", "add", "cy", "--name", "Cy"}, &out)
	if err == nil || !strings.HasPrefix(err.Error(), "UNAVAILABLE: ") || count("POST /v1/users") != 1 {
		t.Fatalf("user add: %v after %d tries, want UNAVAILABLE after 1", err, count("POST /v1/users"))
	}
	err = run([]string{"--server", srv.URL, "--token", "tok", "--retry-for", "0", "user", "get", "bo"}, &out)
	if err == nil || count("GET /v1/users/bo") != 1 {
		t.Fatalf("user get with --retry-for 0: %v after %d tries, want an error after 1", err, count("GET /v1/users/bo"))
	}
}
