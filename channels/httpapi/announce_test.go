package httpapi_test

import (
	"slices"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// nextDing returns the first DING c's stream delivers.
func nextDing(t *testing.T, c *client.Client) *client.Message {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e, ok := <-c.Entries():
			if !ok {
				t.Fatalf("connection ended: %v", c.Err())
			}
			c.Ack(e.Seq)
			if e.Message != nil && e.Message.Kind == pb.Kind_DING {
				return e.Message
			}
		case <-deadline:
			t.Fatal("no DING within 10s")
		}
	}
}

// A re-DING shows its recipients the announcement's audience, never the
// list of who has not confirmed it (issue 12); the admins' view of the
// DING still lists them.
func TestRedingShowsTheAudienceNotWhoHasNotConfirmed(t *testing.T) {
	a, n := setup(t)
	a.ok("PUT", "/v1/departments/ops", map[string]string{"name": "Ops"}, 201)
	a.ok("POST", "/v1/users", map[string]string{"id": "ana", "name": "Ana"}, 201)
	unconfirmed := []string{"bo", "cy", "di"}
	for _, u := range unconfirmed {
		a.ok("POST", "/v1/users", map[string]string{"id": u, "name": u, "department": "ops"}, 201)
	}
	out := a.ok("POST", "/v1/announcements", map[string]any{"from": "ana", "to": "dept:ops", "text": "rotate your keys", "confirm": true}, 201)
	id := out["id"].(string)
	nodetest.WaitFor(t, "the announcement in every stream", 5*time.Second, func() bool {
		return a.ok("GET", "/v1/announcements/"+id+"/stats", nil, 200)["pending"] == 0.0
	})

	res := a.ok("POST", "/v1/announcements/"+id+"/reding", map[string]any{"policy": "inapp"}, 200)
	if res["recipients"] != 3.0 || len(res["dings"].([]any)) != 1 {
		t.Fatalf("reding: %v", res)
	}
	ding := res["dings"].([]any)[0].(string)
	for _, u := range unconfirmed {
		m := nextDing(t, nodetest.Dial(t, n, u, "phone", nil))
		if m.ID != ding || !slices.Equal(m.To, []string{"dept:ops"}) {
			t.Errorf("%s's DING %s shows to %q, want the audience [dept:ops]", u, m.ID, m.To)
		}
	}
	st := a.ok("GET", "/v1/dings/"+ding, nil, 200)
	var got []string
	for _, r := range st["recipients"].([]any) {
		got = append(got, r.(map[string]any)["recipient"].(string))
	}
	if !slices.Equal(got, unconfirmed) {
		t.Fatalf("the DING's status lists %v, want %v", got, unconfirmed)
	}
}

// TestRedingSkipsItsSender: the sender of a re-DING is not DINGed even
// when they are in the announcement's audience and have not confirmed.
func TestRedingSkipsItsSender(t *testing.T) {
	a, _ := setup(t)
	for _, u := range []string{"ana", "bo"} {
		a.ok("POST", "/v1/users", map[string]string{"id": u, "name": u}, 201)
	}
	out := a.ok("POST", "/v1/announcements", map[string]any{"from": "ana", "to": "all", "text": "fire drill at 3", "confirm": true}, 201)
	id := out["id"].(string)
	nodetest.WaitFor(t, "the announcement in every stream", 5*time.Second, func() bool {
		return a.ok("GET", "/v1/announcements/"+id+"/stats", nil, 200)["pending"] == 0.0
	})
	res := a.ok("POST", "/v1/announcements/"+id+"/reding", map[string]any{"policy": "inapp"}, 200)
	if res["recipients"] != 1.0 || len(res["dings"].([]any)) != 1 {
		t.Fatalf("reding from ana to all (ana, bo): %v, want bo alone", res)
	}
	st := a.ok("GET", "/v1/dings/"+res["dings"].([]any)[0].(string), nil, 200)
	if rs := st["recipients"].([]any); len(rs) != 1 || rs[0].(map[string]any)["recipient"] != "bo" {
		t.Fatalf("the DING's recipients: %v, want bo", rs)
	}
}
