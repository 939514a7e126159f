package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// cluster status prints the owner's /v1/cluster answer, with the admin
// token; a node that is not in cluster mode answers 404, printed as an error.
func TestClusterStatus(t *testing.T) {
	var handedOverP atomic.Value // the last hand-over's ?p
	handedOverP.Store("")
	handedOver := func() string { return handedOverP.Load().(string) }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" && (r.URL.Path == "/v1/cluster/handover" || r.URL.Path == "/v1/cluster/drain") && r.Header.Get("Authorization") == "Bearer tok" {
			if r.URL.Path == "/v1/cluster/handover" {
				handedOverP.Store(r.URL.Query().Get("p"))
			}
			w.WriteHeader(http.StatusAccepted)
			return
		}
		if r.URL.Path != "/v1/cluster" {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"member":"b","role":"owner","epoch":3,"standby":"a","acked_seq":7}`))
	}))
	defer srv.Close()
	var out bytes.Buffer
	if err := run([]string{"--server", srv.URL, "--token", "tok", "cluster", "status"}, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"member": "b"`, `"standby": "a"`, `"epoch": 3`} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %s:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := run([]string{"--server", srv.URL, "--token", "tok", "cluster", "handover"}, &out); err != nil || !strings.Contains(out.String(), "handing over") {
		t.Fatalf("cluster handover: %v %q", err, out.String())
	}
	if p := handedOver(); p != "" {
		t.Fatalf("cluster handover asked for partition %q, want none named", p)
	}
	if err := run([]string{"--server", srv.URL, "--token", "tok", "cluster", "handover", "--partition", "2"}, &out); err != nil || handedOver() != "2" {
		t.Fatalf("cluster handover --partition 2: %v, asked for %q", err, handedOver())
	}
	out.Reset()
	if err := run([]string{"--server", srv.URL, "--token", "tok", "cluster", "drain"}, &out); err != nil || !strings.Contains(out.String(), "draining") {
		t.Fatalf("cluster drain: %v %q", err, out.String())
	}
	if err := run([]string{"--server", srv.URL, "--token", "wrong", "cluster", "drain"}, &out); err == nil {
		t.Fatal("cluster drain with a bad token: no error")
	}
	if err := run([]string{"--server", srv.URL, "--token", "tok", "cluster"}, &out); err == nil {
		t.Fatal("cluster without a subcommand: no error")
	}
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	if err := run([]string{"--server", plain.URL, "--token", "tok", "cluster", "status"}, &out); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("cluster status on a node not in cluster mode = %v, want a 404 error", err)
	}
}
