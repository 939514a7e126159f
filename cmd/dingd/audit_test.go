package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/engine/store/pebblestore"
)

var (
	ctlOnce sync.Once
	ctlPath string
	ctlErr  error
)

// dingctlBinary builds dingctl once for the package's tests.
func dingctlBinary(t *testing.T) string {
	t.Helper()
	ctlOnce.Do(func() {
		ctlPath = filepath.Join(filepath.Dir(dingdBinary(t)), "dingctl")
		if out, err := exec.Command("go", "build", "-o", ctlPath, "../dingctl").CombinedOutput(); err != nil {
			ctlErr = err
			ctlPath = string(out)
		}
	})
	if ctlErr != nil {
		t.Fatalf("go build dingctl: %v\n%s", ctlErr, ctlPath)
	}
	return ctlPath
}

// TestAuditVerifyFindsTampering, through the real binaries: dingctl makes
// directory changes on a dingd and records the audit log's head hash;
// dingd stops; the test changes the audit log in the Pebble store the way
// someone with the data directory could; dingd starts again, and dingctl
// audit verify exits 1 naming the first entry changed or missing. Cutting
// entries off the end leaves a chain that holds: only --expect with the
// head recorded before finds it.
func TestAuditVerifyFindsTampering(t *testing.T) {
	auditKey := func(seq uint64) []byte { return binary.BigEndian.AppendUint64([]byte{'u', 'a'}, seq) }
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, db *pebblestore.DB) // the log has entries 1 to 6
		expect bool                                   // verify with --expect HEAD
		want   string                                 // dingctl's error
		broken float64                                // broken_at in its JSON
	}{
		{"one byte of a detail", func(t *testing.T, db *pebblestore.DB) {
			v, err := db.Get(auditKey(3))
			if err != nil {
				t.Fatal(err)
			}
			i := bytes.Index(v, []byte(`"detail":"`)) + len(`"detail":"`)
			v[i] ^= 0x20 // "created" -> "Created"
			set(t, db, auditKey(3), v)
		}, false, "the audit log is broken at entry 3: entry 3's hash does not match its contents: it was changed", 3},
		{"an entry deleted in the middle", func(t *testing.T, db *pebblestore.DB) {
			set(t, db, auditKey(4), nil)
		}, false, "the audit log is broken at entry 4: entry 4 is missing", 4},
		{"the last two entries deleted", func(t *testing.T, db *pebblestore.DB) {
			set(t, db, auditKey(6), nil)
			set(t, db, auditKey(5), nil)
		}, true, "the audit log does not verify: no entry has the expected head hash", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := t.TempDir()
			p := startDingd(t, data)
			ctl := func(args ...string) (string, string, error) {
				cmd := exec.Command(dingctlBinary(t), append([]string{"--server", "http://" + p.http, "--data", data}, args...)...)
				var o, e bytes.Buffer
				cmd.Stdout, cmd.Stderr = &o, &e
				err := cmd.Run()
				return o.String(), strings.TrimSpace(e.String()), err
			}
			for _, args := range [][]string{
				{"dept", "add", "eng", "--name", "Engineering"},
				{"user", "add", "ana", "--name", "Ana", "--department", "eng"},
				{"user", "add", "bo", "--name", "Bo"},
				{"admin", "add", "sre", "--role", "operator"},
				{"group", "add", "oncall", "--name", "On call", "--members", "ana,bo"},
				{"user", "remove", "bo"},
			} {
				if _, stderr, err := ctl(args...); err != nil {
					t.Fatalf("dingctl %v: %v: %s", args, err, stderr)
				}
			}
			head, stderr, err := ctl("audit", "verify", "--head")
			if head = strings.TrimSpace(head); err != nil || len(head) != 64 {
				t.Fatalf("audit verify --head: %q %v %s", head, err, stderr)
			}

			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := p.wait(t, 30*time.Second); err != nil {
				t.Fatalf("stop: %v", err)
			}
			db, err := pebblestore.Open(filepath.Join(data, "store"), pebblestore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Get(auditKey(6)); err != nil {
				t.Fatalf("entry 6: %v", err)
			}
			tc.tamper(t, db)
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			p = startDingd(t, data)

			args := []string{"audit", "verify"}
			if tc.expect {
				// Without the head kept outside, a log cut short verifies.
				if out, stderr, err := ctl(args...); err != nil {
					t.Fatalf("audit verify of a log cut short, without --expect: %v %s\n%s", err, stderr, out)
				}
				args = append(args, "--expect", head)
			}
			out, stderr, err := ctl(args...)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.HasPrefix(stderr, "dingctl: "+tc.want) {
				t.Fatalf("dingctl %v after tampering: %v\nstderr %s\nwant %s", args, err, stderr, tc.want)
			}
			var v map[string]any
			if err := json.Unmarshal([]byte(out), &v); err != nil || v["ok"] != false || v["broken_at"] != nilOr(tc.broken) {
				t.Fatalf("its JSON: %v\n%s", err, out)
			}
			t.Logf("dingctl %s: %s", strings.Join(args[:2], " "), stderr)
		})
	}
}

// nilOr is what a JSON field decodes to: nothing for zero.
func nilOr(f float64) any {
	if f == 0 {
		return nil
	}
	return f
}

// set sets k to v in db, or deletes it if v is nil.
func set(t *testing.T, db *pebblestore.DB, k, v []byte) {
	t.Helper()
	b := db.NewBatch()
	defer b.Close()
	if v == nil {
		b.Delete(k)
	} else {
		b.Set(k, v)
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
}
