package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestWebhookRoutes: a subscription is created with its secret shown once,
// listed and fetched without it, paused and resumed, its dead letters
// listed and replayed, removed; bad input gets a precise 400, an unknown
// id 404, and a role without the webhooks permission 403.
func TestWebhookRoutes(t *testing.T) {
	a, _ := setup(t)
	for _, tc := range []struct {
		name string
		body any
		want string
	}{
		{"scheme", map[string]any{"url": "ftp://crm.example/", "events": []string{"*"}}, `url scheme "ftp": only http and https`},
		{"relative", map[string]any{"url": "crm.example/hook", "events": []string{"*"}}, `url scheme ""`},
		{"user info", map[string]any{"url": "https://u:p@crm.example/", "events": []string{"*"}}, "user info"},
		{"unknown type", map[string]any{"url": "https://crm.example/", "events": []string{"ding.confirmed", "ding.bogus"}}, `unknown event type "ding.bogus"`},
		{"bad wildcard", map[string]any{"url": "https://crm.example/", "events": []string{"crm.*"}}, `no event type matches "crm.*"`},
		{"no events", map[string]any{"url": "https://crm.example/"}, "no event types"},
		{"unknown field", map[string]any{"url": "https://crm.example/", "events": []string{"*"}, "secret": "x"}, "unknown field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := a.do("POST", "/v1/webhooks", a.tok, tc.body)
			e, _ := out["error"].(map[string]any)
			if detail, _ := e["detail"].(string); code != http.StatusBadRequest || errCode(out) != "BAD_REQUEST" || !strings.Contains(detail, tc.want) {
				t.Fatalf("got %d %v, want 400 BAD_REQUEST naming %s", code, out, tc.want)
			}
		})
	}
	code, out := a.do("POST", "/v1/webhooks", a.tok, map[string]any{"url": "http://10.1.2.3:8080/hook", "events": []string{"ding.*", "user.added"}, "description": "crm"})
	id, _ := out["id"].(string)
	secret, _ := out["secret"].(string)
	if code != http.StatusCreated || !strings.HasPrefix(id, "wh_") || !strings.HasPrefix(secret, "whsec_") {
		t.Fatalf("POST /v1/webhooks: %d %v", code, out)
	}
	code, out = a.do("GET", "/v1/webhooks", a.tok, nil)
	list, _ := out["webhooks"].([]any)
	raw, _ := json.Marshal(out)
	if code != 200 || len(list) != 1 || strings.Contains(string(raw), secret) {
		t.Fatalf("GET /v1/webhooks: %d %v", code, out)
	}
	if types, _ := out["event_types"].([]any); len(types) < 30 {
		t.Fatalf("event_types %v", out["event_types"])
	}
	if code, out = a.do("GET", "/v1/webhooks/"+id, a.tok, nil); code != 200 || out["secret"] != nil || out["url"] != "http://10.1.2.3:8080/hook" {
		t.Fatalf("GET one: %d %v", code, out)
	}
	if code, out = a.do("POST", "/v1/webhooks/"+id+"/pause", a.tok, nil); code != 200 || out["paused"] != true {
		t.Fatalf("pause: %d %v", code, out)
	}
	if code, out = a.do("POST", "/v1/webhooks/"+id+"/resume", a.tok, nil); code != 200 || out["paused"] != false {
		t.Fatalf("resume: %d %v", code, out)
	}
	if code, out = a.do("GET", "/v1/webhooks/"+id+"/deliveries", a.tok, nil); code != 200 || len(out["dead_letters"].([]any)) != 0 {
		t.Fatalf("deliveries: %d %v", code, out)
	}
	if code, out = a.do("POST", "/v1/webhooks/"+id+"/replay", a.tok, map[string]any{"ids": []string{"evt_0_1", "evt_0_2"}}); code != 200 || out["replayed"] != float64(0) {
		t.Fatalf("replay: %d %v", code, out)
	}
	a.refused("GET", "/v1/webhooks/"+id+"/deliveries?limit=0", a.tok, nil, 400, "BAD_REQUEST")
	a.refused("POST", "/v1/webhooks/"+id+"/replay", a.tok, map[string]any{"ids": []string{"12"}}, 400, "BAD_REQUEST")
	a.refused("GET", "/v1/webhooks/wh_nosuch", a.tok, nil, 404, "NOT_FOUND")
	a.refused("POST", "/v1/webhooks/wh_nosuch/replay", a.tok, nil, 404, "NOT_FOUND")
	sender := a.addAdmin("crm", "sender", "")
	a.refused("GET", "/v1/webhooks", sender, nil, 403, "FORBIDDEN")
	a.refused("POST", "/v1/webhooks", sender, map[string]any{"url": "https://crm.example/", "events": []string{"*"}}, 403, "FORBIDDEN")
	if code, out = a.do("DELETE", "/v1/webhooks/"+id, a.tok, nil); code != 200 {
		t.Fatalf("delete: %d %v", code, out)
	}
	a.refused("DELETE", "/v1/webhooks/"+id, a.tok, nil, 404, "NOT_FOUND")
}
