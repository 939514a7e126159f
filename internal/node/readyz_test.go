package node_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node"
)

// failingStore fails every commit once fail is set: a disk that stopped
// taking writes.
type failingStore struct {
	store.Store
	fail *atomic.Bool
}

func (f failingStore) NewBatch() store.Batch { return failingBatch{f.Store.NewBatch(), f.fail} }

type failingBatch struct {
	store.Batch
	fail *atomic.Bool
}

func (b failingBatch) Commit(sync bool) error {
	if b.fail.Load() {
		return errors.New("disk on fire")
	}
	return b.Batch.Commit(sync)
}

// TestReadyzSaysWhenTheStoreFailedAWrite: once a store write fails, the
// engine refuses every write (found by the crash points: /readyz used to
// go on answering "ready"), and /readyz answers 503 with the reason, so
// a load balancer sends clients to a node that can take them.
func TestReadyzSaysWhenTheStoreFailedAWrite(t *testing.T) {
	var fail atomic.Bool
	n, err := node.Start(node.Config{DataDir: t.TempDir(), SocketAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Replicate: func(db *pebblestore.DB, _ prometheus.Registerer) (store.Store, error) {
			return failingStore{db, &fail}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The shutdown reports the failure that stopped the writes.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.Shutdown(ctx); err == nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Errorf("shutdown after the failed write: %v, want the store's error", err)
		}
	})
	readyz := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + n.HTTPAddr() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, u := range []string{"ana", "bo"} {
		if _, err := n.Directory().PutUser(fanout.User{ID: u, Name: u}); err != nil {
			t.Fatal(err)
		}
	}
	if code, body := readyz(); code != 200 {
		t.Fatalf("readyz before: %d %q", code, body)
	}
	fail.Store(true)
	req, _ := http.NewRequest("POST", "http://"+n.HTTPAddr()+"/v1/messages",
		strings.NewReader(`{"from":"ana","to":["bo"],"text":"hi"}`))
	req.Header.Set("Authorization", "Bearer "+n.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode < 500 {
		t.Fatalf("a send on a failing store answered %d", resp.StatusCode)
	}
	if code, body := readyz(); code != 503 || !strings.Contains(body, "the store failed a write") {
		t.Fatalf("readyz after a failed write: %d %q, want 503 naming the store", code, body)
	}
}
