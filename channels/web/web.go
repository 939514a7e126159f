// Package web serves Ding's browser front ends from files embedded at
// build time: the web app for users at /app (channels/web/app) and the
// admin console at /console (channels/web/console), each built by `make
// web` into its dist/, which is committed so that building dingd needs no
// Node.
//
// Every page is served with a Content-Security-Policy that allows only the
// page's own script and stylesheet and WebSocket connections to the same
// origin; nothing is loaded from elsewhere at run time.
//
//	mux.Handle("/app/", web.App())
//	mux.Handle("GET /app", http.RedirectHandler("/app/", http.StatusMovedPermanently))
//	mux.Handle("/console/", web.Console())
package web

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed all:app/dist
var appFiles embed.FS

//go:embed all:console/dist
var consoleFiles embed.FS

// App returns the handler of the web app, for the "/app/" pattern. The
// app's WebSocket may reach the page's own origin and connectSrc (sources
// in CSP syntax, e.g. "ws://127.0.0.1:7443" for a dingd --ws listener on
// another port).
func App(connectSrc ...string) http.Handler {
	dist, err := fs.Sub(appFiles, "app/dist")
	if err != nil {
		panic("web: " + err.Error()) // the embedded tree, fixed at build
	}
	return static("/app/", dist, csp(connectSrc))
}

// Console returns the handler of the admin console, for the "/console/"
// pattern. The console calls the admin HTTP API of its own origin (with
// the admin token pasted at sign-in, sent as a bearer header, so a
// cross-site request cannot carry it) and needs no other source.
func Console() http.Handler {
	dist, err := fs.Sub(consoleFiles, "console/dist")
	if err != nil {
		panic("web: " + err.Error()) // the embedded tree, fixed at build
	}
	return static("/console/", dist, csp(nil))
}

// csp is the policy of every page: its own files, and WebSockets to its
// origin ('self' covers ws: and wss: of the same host) and connectSrc.
func csp(connectSrc []string) string {
	connect := strings.Join(append([]string{"'self'"}, connectSrc...), " ")
	return "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src " + connect +
		"; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}

// static serves files under prefix with policy; a path that names no file
// gets index.html (the front end routes in the page), and only GET and
// HEAD are answered.
func static(prefix string, files fs.FS, policy string) http.Handler {
	fileServer := http.StripPrefix(prefix, http.FileServerFS(files))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", policy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache") // the files keep their names across builds
		name := strings.TrimPrefix(r.URL.Path, prefix)
		if name == "" || strings.HasSuffix(name, "/") {
			serveIndex(w, r, files)
			return
		}
		if _, err := fs.Stat(files, name); err != nil {
			serveIndex(w, r, files)
			return
		}
		fileServer.ServeHTTP(w, r)
	})
}

func serveIndex(w http.ResponseWriter, r *http.Request, files fs.FS) {
	b, err := fs.ReadFile(files, "index.html")
	if err != nil {
		http.Error(w, "web: no index.html in the embedded build", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if r.Method == http.MethodHead {
		return
	}
	w.Write(b)
}
