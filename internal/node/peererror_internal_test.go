package node

import (
	"net/http/httptest"
	"strings"
	"testing"
)

// A peer's error answer is read whichever shape it has: writeErr's (the
// API's), or the flat one of a node from before it, still running during
// a rolling upgrade; anything else is not taken for an error answer.
func TestPeerErrorReadsBothShapes(t *testing.T) {
	rec := httptest.NewRecorder()
	writeErr(rec, 503, "cluster: starting", "UNAVAILABLE")
	for _, tc := range []struct {
		name, body   string
		code, detail string
		ok           bool
	}{
		{"writeErr's", rec.Body.String(), "UNAVAILABLE", "cluster: starting", true},
		{"a node before it", `{"error":"no such webhook","code":"NOT_FOUND"}`, "NOT_FOUND", "no such webhook", true},
		{"no code", `{"error":{"detail":"x"}}`, "", "", false},
		{"flat without a code", `{"error":"x"}`, "", "", false},
		{"not JSON", `<html>bad gateway</html>`, "", "", false},
	} {
		code, detail, ok := peerError(strings.NewReader(tc.body))
		if code != tc.code || detail != tc.detail || ok != tc.ok {
			t.Errorf("%s: peerError(%s) = %q, %q, %v; want %q, %q, %v", tc.name, tc.body, code, detail, ok, tc.code, tc.detail, tc.ok)
		}
	}
	if rec.Header().Get("Retry-After") != "1" || !strings.Contains(rec.Body.String(), `"retry":true`) {
		t.Errorf("an UNAVAILABLE answer: Retry-After %q, body %s; want 1 and \"retry\": true", rec.Header().Get("Retry-After"), rec.Body.String())
	}
}
