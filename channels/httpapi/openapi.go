package httpapi

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"slices"
	"strings"
)

// The API's contract: openapi.json, an OpenAPI 3.1 document of every
// route (the /v1 routes, the public ones, the cluster members' own,
// Twilio's webhooks and the e-mail recipients' confirmation links), with
// each route's permission (x-ding-permission),
// request and answer schemas and error codes. It is written by hand,
// beside the handlers, and kept true by tests: TestOpenAPIListsEveryRoute
// (every registered route is in it, and nothing else; the error codes
// are the code's) and TestOpenAPIMatchesRealAnswers (real requests to a
// real node, each answer validated against it with kin-openapi).
//
// GET /openapi.json serves it and GET /docs renders it (docs.html: HTML
// and plain JavaScript, loading nothing from elsewhere), both without
// authentication: the document is the published contract, the same for
// every server of a version, and holds nothing of this server's (no
// names, no addresses, no tokens); a back-office system, or its
// developer, reads it before holding a token. Both are static and
// embedded, so they cost nothing per request but the write.

//go:embed openapi.json
var openAPIDoc []byte

//go:embed docs.html
var docsPage []byte

// docsCSP lets the docs page run its own inline script and style (by
// hash) and fetch openapi.json from this server, and nothing else.
var docsCSP = "default-src 'none'; script-src " + inlineHash(docsPage, "script") + "; style-src " + inlineHash(docsPage, "style") +
	"; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// inlineHash is the CSP source ('sha256-...') of the first <tag> element's
// content in page.
func inlineHash(page []byte, tag string) string {
	s := string(page)
	i := strings.Index(s, "<"+tag+">")
	j := strings.Index(s, "</"+tag+">")
	if i < 0 || j < i {
		panic("httpapi: docs.html has no <" + tag + "> element") // the embedded file, fixed at build
	}
	sum := sha256.Sum256([]byte(s[i+len(tag)+2 : j]))
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// OpenAPI returns the OpenAPI document GET /openapi.json serves.
func OpenAPI() []byte { return slices.Clone(openAPIDoc) }

func serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(openAPIDoc)
}

func serveDocs(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", docsCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache")
	w.Write(docsPage)
}

// public registers a route that takes no authentication.
func (a *API) public(pattern string, h http.Handler) {
	a.unauth = append(a.unauth, pattern)
	a.mux.Handle(pattern, h)
}

// PublicRoutes returns the patterns of the routes served without
// authentication (GET /healthz, /readyz, /openapi.json, /docs, and
// /metrics unless Config.MetricsAuth), in the order of registration.
// Twilio's webhooks, under /twilio/, are not among them: they
// authenticate by Twilio's signature (package channels/twilio, Routes);
// nor are the e-mail links, under /email/, which authenticate by their
// signed token (package channels/email, Routes).
func (a *API) PublicRoutes() []string { return slices.Clone(a.unauth) }
