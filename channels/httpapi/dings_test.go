package httpapi_test

import (
	"context"
	"testing"

	"github.com/dingmq/ding/internal/node/nodetest"
)

// Cancelling a DING says how many recipients it stopped, and says so
// when there was nothing left to cancel (issue 12).
func TestCancelSaysWhenNothingWasPending(t *testing.T) {
	a, n := setup(t)
	for _, u := range []string{"ana", "bo", "cy"} {
		a.ok("POST", "/v1/users", map[string]string{"id": u, "name": u}, 201)
	}
	id := a.ok("POST", "/v1/dings", map[string]any{"from": "ana", "to": []string{"bo", "cy"}, "text": "on call?", "policy": "inapp,inapp@1h"}, 201)["id"].(string)
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	nextDing(t, bo) // connected (a request right after Dial may find it not yet)
	if err := bo.Confirm(context.Background(), id, 0); err != nil {
		t.Fatal(err)
	}
	out := a.ok("POST", "/v1/dings/"+id+"/cancel", nil, 200)
	if out["stopped"] != 1.0 || out["note"] != nil {
		t.Fatalf("cancel with cy pending: %v", out)
	}
	out = a.ok("POST", "/v1/dings/"+id+"/cancel", nil, 200)
	if out["stopped"] != 0.0 || out["note"] == nil || len(out["recipients"].([]any)) != 2 {
		t.Fatalf("cancel with nothing pending: %v", out)
	}
	a.refused("POST", "/v1/dings/01M8K8F2K5C97AM15Z94XS9NY4/cancel", a.tok, nil, 404, "NOT_FOUND")
}
