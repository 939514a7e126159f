package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// A full disk used to crash dingd (Pebble stops the process when a WAL
// write fails) and a restart on it never became ready (issue 13). On a
// real 512 MiB tmpfs, with a reserve of 80 MiB (above two of Pebble's
// 32 MiB memtables: a WAL is preallocated, a flush writes a table): dingd refuses writes with a typed, retryable
// UNAVAILABLE before the disk is full, says so on /readyz and
// ding_store_writable, keeps serving reads, resumes writes by itself when
// space returns, and a restart on a nearly full disk comes up read-only,
// saying why. Every acknowledged message is there throughout.
func TestDiskFullRefusesWritesAndRecovers(t *testing.T) {
	const reserve = 80 << 20
	d := startOnTmpfs(t, "--disk-reserve-mb", "80")
	p := d.p
	before := d.free()
	d.fill(reserve + 40<<20) // room for 40 MiB of messages: the WAL rotates on the way
	t.Logf("free: %d KiB before the filler, %d KiB after", before>>10, d.free()>>10)
	d.sendUntilRefused()
	if m := scrape(t, p); !strings.Contains(m, "ding_store_writable 0") {
		t.Fatal("ding_store_writable is not 0 while writes are refused")
	}
	select {
	case <-p.exited:
		t.Fatalf("dingd exited on a full disk: %v\n%s", p.exitErr, p.stderr)
	default:
	}
	readAll(t, p, d.acked, "while writes are refused")

	// Space returns: writes resume by themselves.
	if err := os.Remove(d.filler); err != nil {
		t.Fatal(err)
	}
	var last error
	deadline := time.Now().Add(10 * time.Second)
	for last = d.send(); last != nil; last = d.send() {
		if time.Now().After(deadline) {
			code, why := readyWhy(p)
			t.Fatalf("writes did not resume within 10s of freeing space (%d KiB free): %v; /readyz %d %q", d.free()>>10, last, code, why)
		}
		time.Sleep(50 * time.Millisecond) // the guard looks every 100ms
	}
	if code, _ := readyWhy(p); code != 200 {
		t.Fatalf("/readyz after space returned: %d", code)
	}

	// A start on a nearly full disk comes up read-only and says why.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("dingd's stop: %v\n%s", err, p.stderr)
	}
	d.fill(reserve - 8<<20)
	p2 := newProc(t, d.data)
	p2.launch(t, p2.args("--disk-reserve-mb", "80")...)
	nodetest.WaitFor(t, "the restarted dingd to answer", 20*time.Second, func() bool { code, _ := readyWhy(p2); return code != 0 })
	if code, why := readyWhy(p2); code != 503 || !strings.Contains(why, "read-only") {
		t.Fatalf("/readyz after a restart on a full disk: %d %q", code, why)
	}
	if !strings.Contains(p2.stderr.String(), "starting read-only") {
		t.Fatalf("the restart did not say why it is read-only:\n%s", p2.stderr)
	}
	readAll(t, p2, d.acked, "after a restart on a full disk")
	if err := os.Remove(d.filler); err != nil {
		t.Fatal(err)
	}
	nodetest.WaitFor(t, "the restarted dingd to accept writes", 10*time.Second, func() bool { code, _ := readyWhy(p2); return code == 200 })
}

// diskFull is a dingd on a fresh 512 MiB tmpfs with users ana and bo, and
// a client of ana's that sends bo messages of 32 KiB: the disk-full tests'
// harness (they need root to mount the tmpfs, and are skipped without).
type diskFull struct {
	t                 *testing.T
	mnt, data, filler string
	p                 *proc
	ctx               context.Context
	ana               *client.Client
	acked             []string // ids of the messages acknowledged
}

func startOnTmpfs(t *testing.T, args ...string) *diskFull {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: mounting a small tmpfs needs root (make test runs as root on the CI machine)")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() })
	d := &diskFull{t: t, mnt: mnt, data: filepath.Join(mnt, "data"), filler: filepath.Join(mnt, "filler")}
	d.p = startDingd(t, d.data, args...)
	for _, u := range []string{"ana", "bo"} {
		if code := d.p.admin(t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil); code != 201 {
			t.Fatalf("create %s: %d", u, code)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	ana, err := client.Dial(ctx, client.Config{Addr: d.p.sock, Token: d.p.token(t, "ana", "phone"), Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ana.Close() })
	d.ctx, d.ana = ctx, ana
	return d
}

// free is what the tmpfs has left.
func (d *diskFull) free() int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.mnt, &st); err != nil {
		d.t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// fill lets another tenant of the disk take all but leave.
func (d *diskFull) fill(leave int64) {
	d.t.Helper()
	f, err := os.Create(d.filler)
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for d.free() > leave+int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			d.t.Fatal(err)
		}
	}
}

// send sends bo a message of 32 KiB, remembering it if acknowledged.
func (d *diskFull) send() error {
	sctx, scancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer scancel()
	res, err := d.ana.Send(sctx, []string{"bo"}, make([]byte, 32<<10))
	if err == nil {
		d.acked = append(d.acked, res.ID)
	}
	return err
}

// sendUntilRefused sends until a send is refused, and fails unless the
// refusal is a non-fatal UNAVAILABLE and /readyz says read-only.
func (d *diskFull) sendUntilRefused() {
	d.t.Helper()
	var refusal error
	for i := 0; refusal == nil; i++ {
		if i > 10000 {
			d.t.Fatal("10000 messages of 32 KiB and no refusal")
		}
		refusal = d.send()
	}
	var pe *client.Error
	if !errors.As(refusal, &pe) || pe.Code != pb.Code_UNAVAILABLE || pe.Fatal {
		d.t.Fatalf("the refusal: %v, want a non-fatal UNAVAILABLE", refusal)
	}
	if code, why := readyWhy(d.p); code != 503 || !strings.Contains(why, "read-only") {
		d.t.Fatalf("/readyz while the disk is full: %d %q", code, why)
	}
	d.t.Logf("%d messages of 32 KiB acknowledged, then UNAVAILABLE with %d KiB free", len(d.acked), d.free()>>10)
}

// readyWhy returns p's /readyz status and body (0 if it does not answer).
func readyWhy(p *proc) (int, string) {
	resp, err := http.Get("http://" + p.http + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape returns p's /metrics.
func scrape(t *testing.T, p *proc) string {
	t.Helper()
	resp, err := http.Get("http://" + p.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// readAll reads bo's stream on p from the start and fails unless every
// id in acked is in it.
func readAll(t *testing.T, p *proc, acked []string, when string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	zero := uint64(0)
	dev := fmt.Sprint("reader-", time.Now().UnixNano())
	bo, err := client.Dial(ctx, client.Config{Addr: p.sock, Token: p.token(t, "bo", dev), Device: dev, Cursor: &zero})
	if err != nil {
		t.Fatalf("%s: a reader: %v", when, err)
	}
	defer bo.Close()
	want := map[string]bool{}
	for _, id := range acked {
		want[id] = true
	}
	for len(want) > 0 {
		select {
		case e, ok := <-bo.Entries():
			if !ok {
				t.Fatalf("%s: the reader stopped: %v", when, bo.Err())
			}
			if e.Message != nil {
				delete(want, e.Message.ID)
			}
		case <-ctx.Done():
			t.Fatalf("%s: %d acknowledged messages missing from bo's stream", when, len(want))
		}
	}
}
