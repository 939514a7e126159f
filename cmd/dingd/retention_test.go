package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
)

// TestRetentionThroughTheBinary: dingd --retention-max-entries 100 keeps
// each stream's newest 100 entries once a sweep ran (dingctl retention
// sweep's route); a device whose cursor is in the deleted part, and a
// new device, both resume at the first entry kept (WELCOME resume_from),
// receive every entry kept in order and then live ones; the store passes
// dingd check afterwards.
func TestRetentionThroughTheBinary(t *testing.T) {
	data := t.TempDir()
	p := startDingd(t, data, "--retention-max-entries", "100", "--retention-interval", "0s")
	for _, u := range []string{"ana", "bo"} {
		if code := p.admin(t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil); code != 201 {
			t.Fatalf("create %s: %d", u, code)
		}
	}
	sendN := func(n int, tag string) {
		t.Helper()
		for i := range n {
			if code := p.admin(t, "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": fmt.Sprintf("%s %d", tag, i)}, nil); code != 200 {
				t.Fatalf("send %s %d: %d", tag, i, code)
			}
		}
	}
	dial := func(device string) *client.Client {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, client.Config{Addr: p.sock, Token: p.token(t, "bo", device), Device: device})
		if err != nil {
			t.Fatalf("dial %s: %v", device, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// next returns the device's next entry.
	next := func(c *client.Client, what string) client.Entry {
		t.Helper()
		select {
		case e := <-c.Entries():
			return e
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no entry within 10s", what)
			return client.Entry{}
		}
	}

	sendN(30, "first")
	phone := dial("phone")
	for i := uint64(1); i <= 30; i++ {
		if e := next(phone, "phone"); e.Seq != i {
			t.Fatalf("phone got seq %d, want %d", e.Seq, i)
		}
	}
	phone.Ack(30)
	// The ack is stored once the server lists the cursor.
	for deadline := time.Now().Add(10 * time.Second); ; {
		var devs struct {
			Devices []struct {
				Device string
				Cursor uint64
			}
		}
		p.admin(t, "GET", "/v1/users/bo/devices", nil, &devs)
		if len(devs.Devices) == 1 && devs.Devices[0].Cursor == 30 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the phone's ack of 30 was not stored: %+v", devs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	phone.Close()
	sendN(270, "second")

	var rep struct {
		Entries, Messages, Held int
	}
	if code := p.admin(t, "POST", "/v1/retention/sweep", nil, &rep); code != 200 || rep.Entries != 200 || rep.Messages != 0 {
		t.Fatalf("sweep: %d %+v, want 200 entries deleted and no message (they go by age)", code, rep)
	}

	var devs []*client.Client
	for _, dev := range []string{"phone", "tablet"} { // a cursor in the deleted part, and none
		c := dial(dev)
		devs = append(devs, c)
		if w := c.Welcome(); w.ResumeFrom != 201 || w.Head != 300 {
			t.Fatalf("%s: WELCOME resume_from %d head %d, want 201 and 300", dev, w.ResumeFrom, w.Head)
		}
		for want := uint64(201); want <= 300; want++ {
			e := next(c, dev)
			if e.Seq != want || e.Message == nil || e.Message.From != "ana" {
				t.Fatalf("%s: got seq %d (%+v), want message %d", dev, e.Seq, e.Message, want)
			}
		}
	}
	sendN(1, "live")
	for i, c := range devs { // caught up: the live entry reaches them
		if e := next(c, "live"); e.Seq != 301 {
			t.Fatalf("device %d: live entry at seq %d, want 301", i, e.Seq)
		}
	}
	if code := p.admin(t, "POST", "/v1/retention/sweep", nil, &rep); code != 200 || rep.Entries != 1 {
		t.Fatalf("second sweep: %d %+v, want the one entry past 100 deleted", code, rep)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	out, err := exec.Command(dingdBinary(t), "check", "--data", data).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"problems": []`) {
		t.Fatalf("dingd check after retention: %v\n%s", err, out)
	}
}
