package node_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// Offboarding is immediate (contract point 6): the user's connections close
// at once, their tokens stop working, their pending DINGs stop, they leave
// their groups, and nothing more reaches them.
func TestOffboardingIsImmediate(t *testing.T) {
	d := startDingNode(t, nil)
	n := d.n
	for _, u := range []fanout.User{{ID: "cy", Name: "Cy"}} {
		if _, err := n.Directory().PutUser(u); err != nil {
			t.Fatal(err)
		}
	}
	if code, out, _ := d.api(t, "PUT", "/v1/groups/team", map[string]any{"name": "Team", "members": []string{"bo", "cy"}}); code != 200 && code != 201 {
		t.Fatalf("create group: %d %v", code, out)
	}
	phone := nodetest.Dial(t, n, "bo", "phone", nil)
	laptop := nodetest.Dial(t, n, "bo", "laptop", nil)
	id := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "on call?", "policy": "inapp,sms@5m"})

	code, out, _ := d.api(t, "GET", "/v1/users/bo/devices", nil)
	if code != 200 || len(out["devices"].([]any)) != 2 {
		t.Fatalf("devices: %d %v", code, out)
	}
	start := time.Now()
	code, out, _ = d.api(t, "DELETE", "/v1/users/bo", nil)
	if code != http.StatusOK || out["status"] != "removed" {
		t.Fatalf("DELETE /v1/users/bo: %d %v", code, out)
	}
	for _, c := range []*client.Client{phone, laptop} {
		select {
		case <-c.Done():
		case <-time.After(time.Second):
			t.Fatal("a removed user's connection was still open a second later")
		}
		var ce *client.Error
		if !errors.As(c.Err(), &ce) || ce.Code != pb.Code_USER_REMOVED {
			t.Fatalf("connection ended with %v, want USER_REMOVED", c.Err())
		}
	}
	t.Logf("connections closed %v after the request", time.Since(start))
	// The token no longer works.
	_, err := client.Dial(context.Background(), client.Config{Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "bo", "phone"), Device: "phone"})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != pb.Code_BAD_TOKEN {
		t.Fatalf("dial with the old token: %v", err)
	}
	// The pending DING stopped; no SMS will go out.
	if st, evs, _ := d.recipient(t, id, 0); st != engine.StatusRemoved || evs[len(evs)-1] != "removed" {
		t.Fatalf("bo's DING: %s %v", st, evs)
	}
	d.clock.Advance(time.Hour)
	// Nothing more reaches bo: direct sends and group sends leave them out.
	if code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "hi"}); code != http.StatusUnprocessableEntity {
		t.Fatalf("send to a removed user: %d %v", code, out)
	}
	code, out, _ = d.api(t, "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"group:team"}, "text": "standup"})
	if code != http.StatusOK {
		t.Fatalf("group send: %d %v", code, out)
	}
	rs, err := n.Engine().Receipts(mustID(t, out["id"].(string)))
	if err != nil || len(rs) != 1 || rs[0].User != "cy" {
		t.Fatalf("group message receipts: %v %v", rs, err)
	}
	// The sender can list who in the group has not read it.
	gid := out["id"].(string)
	if code, st, _ := d.api(t, "GET", "/v1/messages/"+gid+"/stats?lists=1", nil); code != 200 || fmt.Sprint(st["unread"]) != "[cy]" || st["total"] != 1.0 {
		t.Fatalf("group message stats: %d %v", code, st)
	}
	if d.twilio.Count("") != 0 {
		t.Fatalf("%d Twilio requests after offboarding", d.twilio.Count(""))
	}
	// Idempotent.
	if code, _, _ := d.api(t, "DELETE", "/v1/users/bo", nil); code != http.StatusOK {
		t.Fatalf("second DELETE: %d", code)
	}
	if code, out, _ := d.api(t, "GET", "/v1/audit", nil); code != 200 || len(out["entries"].([]any)) == 0 {
		t.Fatalf("audit: %d %v", code, out)
	}
}

func mustID(t *testing.T, s string) engine.ID {
	t.Helper()
	id, err := engine.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A start-up failure after the store is open (here: the HTTP port is
// taken) returns the error and releases what it opened.
func TestStartFailureCleansUp(t *testing.T) {
	busy := nodetest.Start(t, node.Config{})
	dir := t.TempDir()
	_, err := node.Start(node.Config{DataDir: dir, SocketAddr: "127.0.0.1:0", HTTPAddr: busy.HTTPAddr()})
	if err == nil {
		t.Fatal("started on a port in use")
	}
	// The store was closed: the same dir opens again.
	n := nodetest.Start(t, node.Config{DataDir: dir})
	nodetest.Stop(t, n)
}

// With a drain delay, /readyz answers 503 while the node still serves,
// before it drains.
func TestReadyzFalseWhileDraining(t *testing.T) {
	n := nodetest.Start(t, node.Config{DrainDelay: 2 * time.Second})
	url := "http://" + n.HTTPAddr() + "/readyz"
	resp, err := http.Get(url)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz before: %v %v", resp, err)
	}
	resp.Body.Close()
	defer http.DefaultClient.CloseIdleConnections()
	done := make(chan error, 1)
	go func() { done <- n.Shutdown(context.Background()) }()
	nodetest.WaitFor(t, "readyz 503", 2*time.Second, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatalf("readyz refused before the drain delay ended: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
