package node_test

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// backupOf starts a node holding users, backs it up, stops it and returns
// the backup's directory.
func backupOf(t *testing.T, users ...string) string {
	t.Helper()
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, users...)
	req, _ := http.NewRequest("POST", "http://"+n.HTTPAddr()+"/v1/backup", strings.NewReader(`{"dir":"bk"}`))
	req.Header.Set("Authorization", "Bearer "+n.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var bk struct{ Dir string }
	if err := json.NewDecoder(resp.Body).Decode(&bk); err != nil || resp.StatusCode != 200 || bk.Dir == "" {
		t.Fatalf("backup: %d %v %+v", resp.StatusCode, err, bk)
	}
	nodetest.Stop(t, n)
	return bk.Dir
}

// entries lists dir's names; none if dir does not exist.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func restoreConfig(data, from string) node.Config {
	return node.Config{DataDir: data, RestoreFrom: from, SocketAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// A start that fails never leaves a half-restored data dir (issue 12): a
// taken port is found before the restore copies anything; a failure after
// the restore removes the restored store; a copy left by a restore that
// crashed is cleared by the next one. Each time, the same restore then
// succeeds.
func TestRestoreLeavesNothingHalfDone(t *testing.T) {
	bk := backupOf(t, "ana", "bo")

	t.Run("port taken", func(t *testing.T) {
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		data := filepath.Join(t.TempDir(), "new-data")
		cfg := restoreConfig(data, bk)
		cfg.SocketAddr = taken.Addr().String()
		_, err = node.Start(cfg)
		var inUse *node.AddrInUseError
		if !errors.As(err, &inUse) || inUse.Listener != "socket" || inUse.Addr != cfg.SocketAddr {
			t.Fatalf("start on a taken port: %v, want an AddrInUseError for the socket port", err)
		}
		if es := entries(t, data); len(es) != 0 {
			t.Fatalf("the failed start left %v in the data dir", es)
		}
		n := nodetest.Start(t, restoreConfig(data, bk))
		if _, ok := n.Directory().User("bo"); !ok {
			t.Fatal("bo is not in the restored store")
		}
	})

	t.Run("failure after the restore", func(t *testing.T) {
		data := t.TempDir()
		// The backup root cannot be made: Start fails once the store is
		// restored and open.
		if err := os.WriteFile(filepath.Join(data, "backups"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := node.Start(restoreConfig(data, bk)); err == nil || !strings.Contains(err.Error(), "backup dir") {
			t.Fatalf("start with a file in the backup dir's place: %v", err)
		}
		for _, e := range entries(t, data) {
			if e == "store" || strings.HasPrefix(e, ".restore-") {
				t.Fatalf("the failed start left %s in the data dir: %v", e, entries(t, data))
			}
		}
		os.Remove(filepath.Join(data, "backups"))
		n := nodetest.Start(t, restoreConfig(data, bk))
		if _, ok := n.Directory().User("ana"); !ok {
			t.Fatal("ana is not in the restored store")
		}
	})

	t.Run("a crashed restore's copy", func(t *testing.T) {
		data := t.TempDir()
		crashed := filepath.Join(data, ".restore-123")
		if err := os.MkdirAll(crashed, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(crashed, "MANIFEST-000001"), []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
		n := nodetest.Start(t, restoreConfig(data, bk))
		if _, ok := n.Directory().User("bo"); !ok {
			t.Fatal("bo is not in the restored store")
		}
		if _, err := os.Stat(crashed); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the crashed restore's copy is still there: %v", err)
		}
	})

	t.Run("over a store", func(t *testing.T) {
		data := t.TempDir()
		nodetest.Stop(t, nodetest.Start(t, node.Config{DataDir: data}))
		before := entries(t, filepath.Join(data, "store"))
		if _, err := node.Start(restoreConfig(data, bk)); err == nil || !strings.Contains(err.Error(), "already holds a store") {
			t.Fatalf("a restore over a store: %v", err)
		}
		if after := entries(t, filepath.Join(data, "store")); !slices.Equal(before, after) {
			t.Fatalf("the store changed: %v, then %v", before, after)
		}
	})
}

// A second node on a data dir gets a DataDirInUseError naming the
// holder's PID, written in the lock file; the lock goes with Shutdown.
func TestDataDirLockNamesThePID(t *testing.T) {
	data := t.TempDir()
	n := nodetest.Start(t, node.Config{DataDir: data})
	b, err := os.ReadFile(filepath.Join(data, node.LockFile))
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file: %q %v, want pid %d", b, err, os.Getpid())
	}
	cfg := restoreConfig(data, "")
	_, err = node.Start(cfg)
	var inUse *node.DataDirInUseError
	if !errors.As(err, &inUse) || inUse.PID != os.Getpid() || inUse.Dir != data {
		t.Fatalf("a second node on the data dir: %v, want a DataDirInUseError with pid %d", err, os.Getpid())
	}
	if want := "in use by another dingd (pid " + strconv.Itoa(os.Getpid()) + ")"; !strings.Contains(err.Error(), want) {
		t.Fatalf("%q does not say %q", err, want)
	}
	nodetest.Stop(t, n)
	nodetest.Stop(t, nodetest.Start(t, cfg))
}
