package main

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// TestKill9WithPartitionsLosesNothing is TestKill9LosesNoAcknowledgedMessage
// with --partitions 4 and every message crossing partitions (ana is on
// partition 2, bo on 0): dingd is killed with SIGKILL mid-flight, so
// acknowledged messages may still be in ana's outbox. After a restart,
// every acknowledged message reaches bo, none twice, and bo's stream has
// no gap.
func TestKill9WithPartitionsLosesNothing(t *testing.T) {
	for u, want := range map[string]uint32{"ana": 2, "bo": 0} {
		if p := uint32(fanout.PartitionOf(u)) * 4 / fanout.Partitions; p != want {
			t.Fatalf("%s is on partition %d, the test wants %d", u, p, want)
		}
	}
	data := t.TempDir()
	p := startDingd(t, data, "--partitions", "4")
	for _, u := range []string{"ana", "bo"} {
		if code := p.admin(t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil); code != 201 {
			t.Fatalf("create %s: %d", u, code)
		}
	}
	senders := startSenders(t, p, 8)
	deadline := time.Now().Add(20 * time.Second)
	for senders.count() < 2000 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d acks in 20s", senders.count())
		}
		time.Sleep(5 * time.Millisecond) // pacing only
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	acked := senders.stop()

	// The same count must be given again.
	refused := newProc(t, data)
	out, err := exec.Command(dingdBinary(t), refused.args("--partitions", "8")...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "holds 4 partitions") {
		t.Fatalf("a start with --partitions 8: %v\n%s", err, out)
	}

	p2 := startDingd(t, data, "--partitions", "4")
	bo, err := client.Dial(context.Background(), client.Config{Addr: p2.sock, Token: p2.token(t, "bo", "phone"), Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	// A marker sent after the restart arrives after everything ana's
	// outbox held (the relay keeps each origin's order).
	ana, err := client.Dial(context.Background(), client.Config{Addr: p2.sock, Token: p2.token(t, "ana", "marker"), Device: "marker"})
	if err != nil {
		t.Fatal(err)
	}
	defer ana.Close()
	marker, err := ana.Send(context.Background(), []string{"bo"}, []byte("marker"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	var last uint64
	for seen[marker.ID] == 0 {
		select {
		case e, ok := <-bo.Entries():
			if !ok {
				t.Fatalf("bo's connection ended at seq %d: %v", last, bo.Err())
			}
			if e.Seq != last+1 {
				t.Fatalf("stream gap: seq %d after %d", e.Seq, last)
			}
			last = e.Seq
			bo.Ack(e.Seq)
			if e.Message != nil {
				seen[e.Message.ID]++
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("the marker had not reached bo 30s after the restart (at seq %d)", last)
		}
	}
	for id := range acked {
		if seen[id] == 0 {
			t.Fatalf("acknowledged message %s never reached bo", id)
		}
	}
	for id, n := range seen {
		if n > 1 {
			t.Fatalf("message %s reached bo %d times", id, n)
		}
	}
	t.Logf("%d acknowledged before SIGKILL, all relayed after the restart; bo's stream holds %d messages, each once", len(acked), len(seen))

	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p2.wait(t, 30*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// The stores the crash left keep every invariant (dingd check, one
	// report per store).
	out, err = exec.Command(dingdBinary(t), "check", "--data", data).CombinedOutput()
	if err != nil || strings.Count(string(out), `"problems": []`) != 5 || !strings.Contains(string(out), `"partitions": 4`) {
		t.Fatalf("dingd check after the crash: %v\n%s", err, out)
	}
}

// --partitions is refused with --restore-from and out of range, and
// taken from the environment too.
func TestPartitionsFlagRefusals(t *testing.T) {
	data := t.TempDir()
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"with restore", nil, []string{"--partitions", "4", "--restore-from", data}, "does not restore backups"},
		{"from the environment", []string{"DING_PARTITIONS=4", "DING_RESTORE_FROM=" + data}, nil, "does not restore backups"},
		{"out of range", nil, []string{"--partitions", "65"}, "want 1 (one store) to 64"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"--data", data, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"}, c.args...)
			_, stderr, code := runDingd(t, c.env, args...)
			if code == 0 || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want %q", code, stderr, c.want)
			}
		})
	}
}

// The disk guard covers every partition: on a real 512 MiB tmpfs filled
// to near the reserve, a send across partitions is refused with a
// non-fatal UNAVAILABLE (not a store's write failing for want of space),
// /readyz says read-only, and writes resume by themselves once space
// returns; every acknowledged message reaches bo. The 80 MiB asked for
// is raised to what 5 stores' write-ahead logs need (node.MinDiskReserve).
func TestDiskFullWithPartitions(t *testing.T) {
	d := startOnTmpfs(t, "--disk-reserve-mb", "80", "--partitions", "4")
	if !strings.Contains(d.p.stderr.String(), "raising the disk reserve") {
		t.Fatalf("no warning that the reserve was raised:\n%s", d.p.stderr)
	}
	d.fill(node.MinDiskReserve(4) + 40<<20)
	d.sendUntilRefused()
	if err := os.Remove(d.filler); err != nil {
		t.Fatal(err)
	}
	nodetest.WaitFor(t, "writes to resume", 10*time.Second, func() bool { return d.send() == nil })
	readAll(t, d.p, d.acked, "after space returned")
}
