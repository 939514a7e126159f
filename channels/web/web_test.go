package web

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestAppServesTheBuildWithACSP(t *testing.T) {
	checkServes(t, App(), []serveCase{
		{"index", "GET", "/app/", 200, "text/html", `<script type="module" src="app.js">`},
		{"a client-side route gets index.html", "GET", "/app/some/where", 200, "text/html", `<div id="app">`},
		{"script", "GET", "/app/app.js", 200, "text/javascript", ""},
		{"stylesheet", "GET", "/app/app.css", 200, "text/css", ""},
		{"POST is refused", "POST", "/app/", 405, "", ""},
	}, func(t *testing.T, p string) {
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(p, want) {
				t.Errorf("CSP %q lacks %q", p, want)
			}
		}
	})
}

// serveCase is a request to one of the pages' handlers and what it must
// answer.
type serveCase struct {
	name, method, path string
	status             int
	contentType, body  string
}

// checkServes runs each case against h: the status, and for a 200 the
// Content-Type, a piece of the body, a CSP that csp accepts and that
// allows no inline script or eval.
func checkServes(t *testing.T, h http.Handler, cases []serveCase, csp func(t *testing.T, p string)) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d", rec.Code, tc.status)
			}
			if tc.status != 200 {
				return
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, tc.contentType) {
				t.Errorf("Content-Type %q, want %s", ct, tc.contentType)
			}
			if !strings.Contains(rec.Body.String(), tc.body) {
				t.Errorf("body lacks %q", tc.body)
			}
			p := rec.Header().Get("Content-Security-Policy")
			csp(t, p)
			if strings.Contains(p, "unsafe-inline") || strings.Contains(p, "unsafe-eval") {
				t.Errorf("CSP %q allows inline or eval", p)
			}
		})
	}
}

func TestAppCSPNamesExtraConnectSources(t *testing.T) {
	rec := httptest.NewRecorder()
	App("ws://127.0.0.1:7443").ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/app/", nil))
	if p := rec.Header().Get("Content-Security-Policy"); !strings.Contains(p, "connect-src 'self' ws://127.0.0.1:7443;") {
		t.Fatalf("CSP %q", p)
	}
}

func TestConsoleServesTheBuildWithACSP(t *testing.T) {
	checkServes(t, Console(), []serveCase{
		{"index", "GET", "/console/", 200, "text/html", `<script type="module" src="console.js">`},
		{"a client-side route gets index.html", "GET", "/console/ding/01KBMA4Q7ZQ0000000000A1B2C", 200, "text/html", `<div id="console">`},
		{"script", "GET", "/console/console.js", 200, "text/javascript", ""},
		{"stylesheet", "GET", "/console/console.css", 200, "text/css", ""},
		{"POST is refused", "POST", "/console/", 405, "", ""},
	}, func(t *testing.T, p string) {
		if want := "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"; !strings.HasPrefix(p, want) {
			t.Errorf("CSP %q, want it to start %q", p, want)
		}
	})
}
