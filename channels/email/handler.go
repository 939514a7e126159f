package email

import (
	"context"
	"encoding/json"
	"errors"
	"html/template"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/dingmq/ding/engine"
)

// PathConfirm is the absolute path of the confirmation links; Handler
// serves it.
const PathConfirm = "/email/confirm"

// maxFormBody bounds the confirmation form; it holds one token.
const maxFormBody = 4 << 10

// Confirmer is what the links confirm through (the engine, or a node's
// router to the DING's home, implements it). Its methods are called
// concurrently, one per request, only for a link whose signature and
// expiry were checked.
type Confirmer interface {
	// ConfirmByLink confirms DING id for its recipient at index
	// recipient with answer, as engine.Engine.ConfirmByLink: durable when
	// it returns; Already when the recipient had confirmed before (by any
	// channel), which changes nothing.
	ConfirmByLink(ctx context.Context, id engine.ID, recipient, answer int) (engine.ConfirmResult, error)
	// Message returns the DING's message (for its choices), or an error
	// wrapping engine.ErrNotFound.
	Message(id engine.ID) (*engine.Message, error)
}

// endpoints are what Handler serves, by pattern: the one list Handler
// registers and Routes returns.
var endpoints = []struct {
	pattern string
	serve   func(n *Notifier, w http.ResponseWriter, r *http.Request, c Confirmer)
}{
	{"GET " + PathConfirm, (*Notifier).show},
	{"POST " + PathConfirm, (*Notifier).confirm},
}

// Routes returns the patterns of the endpoints Handler serves, for e-mail
// recipients following a link (not integrations): the admin API's OpenAPI
// document lists them, and a test checks it.
func Routes() []string {
	out := make([]string, len(endpoints))
	for i, e := range endpoints {
		out[i] = e.pattern
	}
	return out
}

// Handler serves the confirmation links (see the package doc), which
// confirm through c. Mount it under "/email/": its paths are absolute.
// Without a configured SMTP server every request is answered 404.
func (n *Notifier) Handler(c Confirmer) http.Handler {
	mux := http.NewServeMux()
	for _, e := range endpoints {
		mux.HandleFunc(e.pattern, func(w http.ResponseWriter, r *http.Request) { e.serve(n, w, r, c) })
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !n.Configured() {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("Referrer-Policy", "no-referrer") // the token is in the URL
		h.Set("X-Frame-Options", "DENY")        // no confirming through a framed button
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
		mux.ServeHTTP(w, r)
	})
}

// linkError is an answer to a link that confirms nothing.
type linkError struct {
	status int
	code   string // LINK_FORGED, LINK_EXPIRED, LINK_USED, NOT_FOUND, BAD_REQUEST, UNAVAILABLE
	title  string
	detail string
	result string // for the metric
}

// verify checks the request's token; on failure it answers and returns
// false.
func (n *Notifier) verify(w http.ResponseWriter, r *http.Request, token string) (Link, bool) {
	if token == "" {
		n.fail(w, r, linkError{http.StatusBadRequest, "BAD_REQUEST", "No link", "This address needs the link from your e-mail, whole.", "bad_request"})
		return Link{}, false
	}
	l, err := VerifyLink(n.cfg.Key, token, n.now())
	switch {
	case errors.Is(err, ErrExpiredLink):
		n.fail(w, r, linkError{http.StatusGone, "LINK_EXPIRED", "This link has expired",
			"It worked until " + l.Expires.Format("2006-01-02 15:04 MST") + ". Nothing was changed; answer in the Ding app.", "expired"})
		return Link{}, false
	case err != nil:
		n.fail(w, r, linkError{http.StatusForbidden, "LINK_FORGED", "This link is not valid",
			"It was not made by this server, or was cut or altered. Nothing was changed; use the link from your e-mail, whole.", "forged"})
		return Link{}, false
	}
	return l, true
}

var errGone = linkError{http.StatusNotFound, "NOT_FOUND", "This DING is gone", "It no longer exists here. Nothing was changed.", "not_found"}

// show answers GET: the page with the button that confirms (a POST), so
// that a mail scanner fetching the link confirms nothing.
func (n *Notifier) show(w http.ResponseWriter, r *http.Request, c Confirmer) {
	token := r.URL.Query().Get("t")
	l, ok := n.verify(w, r, token)
	if !ok {
		return
	}
	m, err := c.Message(l.Ding)
	if err != nil || m.Kind != engine.KindDing {
		n.fail(w, r, errGone)
		return
	}
	label := "Confirm"
	if l.Answer > 0 && l.Answer <= len(m.Choices) {
		label = m.Choices[l.Answer-1]
	}
	n.m.link("shown")
	if wantsJSON(r) {
		writeJSON(w, http.StatusOK, map[string]any{"ding": l.Ding.String(), "answer": l.Answer, "choice": label, "expires": l.Expires})
		return
	}
	page(w, http.StatusOK, pageData{Title: "Answer this DING", Detail: "Your answer: " + label, Token: token, Button: label})
}

// confirm answers POST: the confirmation, once.
func (n *Notifier) confirm(w http.ResponseWriter, r *http.Request, c Confirmer) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
	if err := r.ParseForm(); err != nil {
		n.fail(w, r, linkError{http.StatusBadRequest, "BAD_REQUEST", "Bad request", "The form could not be read.", "bad_request"})
		return
	}
	l, ok := n.verify(w, r, r.Form.Get("t"))
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	res, err := c.ConfirmByLink(ctx, l.Ding, l.Recipient, l.Answer)
	switch {
	case errors.Is(err, engine.ErrNotFound), errors.Is(err, engine.ErrNotRecipient):
		n.fail(w, r, errGone)
		return
	case errors.Is(err, engine.ErrBadAnswer):
		n.fail(w, r, linkError{http.StatusBadRequest, "BAD_REQUEST", "This answer is not offered", "Nothing was changed.", "bad_request"})
		return
	case err != nil:
		n.log.Warn("email: confirming through a link failed", "ding", l.Ding.String(), "recipient", l.Recipient, "err", err)
		n.fail(w, r, linkError{http.StatusServiceUnavailable, "UNAVAILABLE", "Not recorded", "The server could not record your answer now. Try the link again in a minute.", "error"})
		return
	case res.Already:
		detail := "It was answered before"
		if res.Choice != "" {
			detail += " (" + res.Choice + ")"
		}
		if res.By != 0 {
			detail += " by " + res.By.String()
		}
		n.fail(w, r, linkError{http.StatusGone, "LINK_USED", "Already answered", detail + ". Nothing was changed.", "used"})
		return
	}
	n.m.link("confirmed")
	label := res.Choice
	if label == "" {
		label = "confirmed"
	}
	if wantsJSON(r) {
		writeJSON(w, http.StatusOK, map[string]any{"ding": l.Ding.String(), "answer": res.Answer, "choice": res.Choice, "confirmed": res.At})
		return
	}
	page(w, http.StatusOK, pageData{Title: "Thank you", Detail: "Your answer was recorded: " + label + "."})
}

func (n *Notifier) fail(w http.ResponseWriter, r *http.Request, e linkError) {
	n.m.link(e.result)
	if wantsJSON(r) {
		writeJSON(w, e.status, map[string]any{"error": map[string]any{"code": e.code, "detail": e.detail}})
		return
	}
	page(w, e.status, pageData{Title: e.title, Detail: e.detail})
}

// wantsJSON: the client asked for JSON (Accept), as API clients and tests
// do; browsers get HTML.
func wantsJSON(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "application/json" {
			return true
		}
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

type pageData struct {
	Title, Detail string
	Token, Button string // the form, on the page a link shows
}

var pageTmpl = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>{{.Title}} · Ding</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<h1>{{.Title}}</h1>
<p>{{.Detail}}</p>
{{if .Token}}<form method="post" action="` + PathConfirm + `"><input type="hidden" name="t" value="{{.Token}}"><button type="submit" style="font-size: large; padding: 8px 24px">{{.Button}}</button></form>{{end}}
</body></html>
`))

func page(w http.ResponseWriter, status int, d pageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	pageTmpl.Execute(w, d)
}
