package cluster_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// A new partition's owner with no standby acknowledges nothing; a node
// fetches its snapshot over HTTP (loopback), follows, asks to be named,
// and the waiting submit is acknowledged; the owner dies and the new
// node takes over with every acknowledged message.
func TestNewStandbyOverHTTP(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr})
	defer rdb.Close()
	c := cluster.NewRedisCoord(rdb)
	const p, ttl, secret = cluster.Partition(0), time.Second, "s3cret"

	stA, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rsA, epoch, stopRenew := leasedOwner(t, c, p, "a", "", stA, ttl)
	engA := openEngine(t, rsA)
	shared := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(shared, []byte("signing key"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(cluster.SnapshotHandler(rsA, c, secret, t.TempDir(), shared, "/nonexistent/file"))
	defer srv.Close()

	type result struct {
		id  engine.ID
		err error
	}
	pending := make(chan result, 1)
	go func() {
		res, err := engA.Submit(ctx, engine.Submission{From: "u0", To: []string{"u1"}, Kind: engine.KindText, Body: []byte("first")})
		pending <- result{res.ID, err}
	}()

	// Refused: no secret, a wrong one.
	for _, s := range []string{"", "wrong"} {
		if _, err := cluster.FetchSnapshot(ctx, srv.Client(), srv.URL, s, filepath.Join(t.TempDir(), "x")); err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("fetch with secret %q = %v, want 401", s, err)
		}
	}
	dirB := filepath.Join(t.TempDir(), "b")
	stateB, err := cluster.FetchSnapshot(ctx, srv.Client(), srv.URL, secret, dirB)
	if err != nil {
		t.Fatal(err)
	}
	if stateB.FenceEpoch != epoch || stateB.FenceOwner != "a" {
		t.Fatalf("snapshot state %+v, want fenced at %d/a", stateB, epoch)
	}
	if b, err := os.ReadFile(filepath.Join(dirB, "files", "keys")); err != nil || string(b) != "signing key" {
		t.Fatalf("shared file = %q %v", b, err)
	}
	if _, err := cluster.FetchSnapshot(ctx, srv.Client(), srv.URL, secret, dirB); err == nil {
		t.Fatal("fetched a snapshot over an existing directory")
	}
	select {
	case r := <-pending:
		t.Fatalf("acknowledged with no standby: %+v", r)
	default:
	}
	stB, err := pebblestore.Open(filepath.Join(dirB, "store"), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer stB.Close()
	fB, stopB := follow(t, c, p, "b", stB, stateB)
	if err := cluster.RequestStandby(ctx, srv.Client(), srv.URL, secret, "b", stateB); err != nil {
		t.Fatal(err)
	}
	if err := cluster.RequestStandby(ctx, srv.Client(), srv.URL, secret, "b", stateB); err != nil {
		t.Fatalf("the standby asking again: %v", err)
	}
	if err := cluster.RequestStandby(ctx, srv.Client(), srv.URL, secret, "c", stateB); !errors.Is(err, cluster.ErrStandbyRefused) || !strings.Contains(err.Error(), "409") {
		t.Fatalf("a second standby request = %v, want 409 (a standby exists: hand it over instead)", err)
	}
	r := <-pending
	if r.err != nil {
		t.Fatal(r.err)
	}
	acked := append([]sent{{r.id, "u1", []byte("first")}}, submitN(t, engA, "a", 40)...)

	stopRenew()
	ownerB := takeOver(t, fB, ttl)
	stopB()
	_ = engA.Close()
	_ = rsA.Close()
	if ownerB.Epoch() <= epoch {
		t.Fatalf("epoch %d not above %d", ownerB.Epoch(), epoch)
	}
	engB := openEngine(t, stB)
	defer engB.Close()
	verify(t, engB, acked)
}

// A snapshot archive is unpacked only inside its directory, regular
// files only.
func TestFetchSnapshotRefusesABadArchive(t *testing.T) {
	for name, entry := range map[string]*tar.Header{
		"parent":   {Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o600, Size: 1},
		"absolute": {Name: "/tmp/evil", Typeflag: tar.TypeReg, Mode: 0o600, Size: 1},
		"symlink":  {Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"},
	} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			_ = tw.WriteHeader(entry)
			if entry.Size > 0 {
				_, _ = tw.Write([]byte("x"))
			}
			_ = tw.Close()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Ding-Standby-State", "AQEAAAAA") // a valid empty-ish state
				_, _ = w.Write(buf.Bytes())
			}))
			defer srv.Close()
			dir := filepath.Join(t.TempDir(), "b")
			if _, err := cluster.FetchSnapshot(context.Background(), srv.Client(), srv.URL, "s", dir); err == nil || !strings.Contains(err.Error(), "bad snapshot archive") {
				t.Fatalf("fetch of a bad archive = %v, want it refused as a bad archive", err)
			}
			if _, err := os.Stat(dir); err == nil {
				t.Fatal("a refused archive left its directory behind")
			}
		})
	}
}
