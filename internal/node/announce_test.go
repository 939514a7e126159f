package node_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// firstDeliver waits for c's first DELIVER of message id, acks it and
// returns it.
func firstDeliver(t *testing.T, c *client.Client, id string) *client.Message {
	t.Helper()
	for {
		select {
		case e, ok := <-c.Entries():
			if !ok {
				t.Errorf("connection ended: %v", c.Err())
				return nil
			}
			c.Ack(e.Seq)
			if e.Message != nil && e.Message.ID == id {
				return e.Message
			}
		case <-time.After(20 * time.Second):
			t.Errorf("no DELIVER of %s within 20s", id)
			return nil
		}
	}
}

// deliversAll reads c's entries (acking them) until it has had a DELIVER
// of each of ids, in whatever order.
func deliversAll(t *testing.T, c *client.Client, ids ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for len(want) > 0 {
		select {
		case e, ok := <-c.Entries():
			if !ok {
				t.Fatalf("connection ended: %v", c.Err())
			}
			c.Ack(e.Seq)
			if e.Message != nil {
				delete(want, e.Message.ID)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no DELIVER of %v within 20s", slices.Collect(maps.Keys(want)))
		}
	}
}

// An announcement to a 10,000-member org reaches every device, online now
// or connecting later; its counts and unread list are exact after a
// restart.
func TestAnnouncementToTheWholeOrg(t *testing.T) {
	const members = 10_000
	n := nodetest.Start(t, node.Config{})
	cfg := node.Config{DataDir: n.DataDir(), SocketAddr: n.SocketAddr(), HTTPAddr: n.HTTPAddr()}
	d := &dingNode{n: n, cfg: cfg}
	users := make([]fanout.User, members)
	for i := range users {
		users[i] = fanout.User{ID: fmt.Sprintf("u%05d", i), Name: fmt.Sprintf("User %d", i)}
	}
	if _, err := n.Directory().PutUsers(users); err != nil {
		t.Fatal(err)
	}
	// 300 devices online now (some users with two), 100 more later.
	var online []*client.Client
	for i := range 300 {
		online = append(online, nodetest.Dial(t, n, users[i*7].ID, "phone", nil))
	}
	online = append(online, nodetest.Dial(t, n, users[0].ID, "laptop", nil))

	code, out, _ := d.api(t, "POST", "/v1/announcements", map[string]any{"to": "all", "text": "Office closed Friday", "confirm": true})
	if code != http.StatusCreated {
		t.Fatalf("announce: %d %v", code, out)
	}
	id := out["id"].(string)
	var wg sync.WaitGroup
	got := make([]*client.Message, len(online))
	for i, c := range online {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = firstDeliver(t, c, id) }()
	}
	wg.Wait()
	for i, m := range got {
		if m == nil || m.Kind != pb.Kind_ANNOUNCEMENT || string(m.Body) != "Office closed Friday" || !m.Confirm || !slices.Equal(m.To, []string{"all"}) {
			t.Fatalf("device %d got %+v", i, m)
		}
	}
	later := make([]*client.Client, 100)
	for i := range later {
		later[i] = nodetest.Dial(t, n, users[5000+i].ID, "phone", nil)
		if m := firstDeliver(t, later[i], id); m == nil {
			t.Fatal("a device connecting later did not get the announcement")
		}
	}
	// Some confirm, some read.
	ctx := context.Background()
	for i, c := range online[:100] {
		var err error
		if i%2 == 0 {
			err = c.Confirm(ctx, id, 0)
		} else {
			err = c.Read(ctx, id)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// Acks are fire and forget: wait until they are counted.
	nodetest.WaitFor(t, "400 deliveries counted", 10*time.Second, func() bool { return stats(t, d, id)["delivered"] == float64(400) })
	want := stats(t, d, id)
	// 300 distinct users online + 100 later; user 0 has two devices.
	if want["total"] != float64(members) || want["delivered"] != float64(400) || want["read"] != float64(100) || want["confirmed"] != float64(50) ||
		len(want["unread"].([]any)) != members-100 || len(want["unconfirmed"].([]any)) != members-50 {
		t.Fatalf("stats: total %v delivered %v read %v confirmed %v", want["total"], want["delivered"], want["read"], want["confirmed"])
	}
	// CSV export of the unconfirmed.
	req, _ := http.NewRequest("GET", "http://"+n.HTTPAddr()+"/v1/announcements/"+id+"/stats?format=csv&only=unconfirmed", nil)
	req.Header.Set("Authorization", "Bearer "+n.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if lines := strings.Count(string(body), "\n"); resp.StatusCode != 200 || lines != members-50+1 || !strings.HasPrefix(string(body), "user,state,delivered,read,confirmed\n") {
		t.Fatalf("csv: %d, %d lines", resp.StatusCode, lines)
	}

	for _, c := range append(online, later...) {
		c.Close()
	}
	nodetest.Stop(t, n)
	d.n = nodetest.Start(t, cfg)
	after := stats(t, d, id)
	for _, k := range []string{"total", "delivered", "read", "confirmed"} {
		if after[k] != want[k] {
			t.Fatalf("after restart %s = %v, was %v", k, after[k], want[k])
		}
	}
	if !slices.Equal(after["unread"].([]any), want["unread"].([]any)) || !slices.Equal(after["unconfirmed"].([]any), want["unconfirmed"].([]any)) {
		t.Fatal("unread or unconfirmed lists differ after restart")
	}
}

func stats(t *testing.T, d *dingNode, id string) map[string]any {
	t.Helper()
	code, out, _ := d.api(t, "GET", "/v1/announcements/"+id+"/stats?lists=1", nil)
	if code != 200 {
		t.Fatalf("stats: %d %v", code, out)
	}
	return out
}
