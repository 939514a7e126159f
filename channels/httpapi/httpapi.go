// Package httpapi is Ding's admin HTTP API: JSON over net/http for admins
// and back-office systems, plus /healthz, /readyz, /metrics, and its
// OpenAPI document at /openapi.json, rendered at /docs (openapi.go).
//
// Every /v1 route needs "Authorization: Bearer <admin token>", the token
// of a named admin (admins.go), or, with no Authorization header, a
// client certificate the port's client CA verified that names the admin
// (URI SAN ding:admin/NAME; access.go), and the one permission it was
// registered with among its admin's role's (the table is in SECURITY.md):
// 401 UNAUTHENTICATED without a valid token (revoked, expired), 403
// FORBIDDEN with the "permission" lacking, 403 OUT_OF_SCOPE for a
// department admin's target outside its department's subtree. /metrics
// is public unless Config.MetricsAuth. Over a rate limit (an admin's
// requests or token mints, a user's messages or DINGs, an address that
// failed to authenticate too often: ratelimit.go), 429 RATE_LIMITED with
// Retry-After. Errors are JSON with a stable
// code, also for a path no route takes (404 NOT_FOUND) or a method it
// does not (405 METHOD_NOT_ALLOWED, with Allow):
//
//	{"error": {"code": "UNKNOWN_RECIPIENT", "detail": "unknown recipient: \"zed\""}}
//	{"error": {"code": "FORBIDDEN", "detail": "admin \"crm\" (role sender) lacks the permission \"audit\" that GET /v1/audit needs", "permission": "audit"}}
//	{"error": {"code": "UNAVAILABLE", "detail": "...", "retry": true}}
//	{"error": {"code": "NOT_FOUND", "detail": "no route GET /v1/nosuch"}}
//	{"error": {"code": "RATE_LIMITED", "detail": "too many requests from this admin; retry in 1s", "retry": true}}  (429, Retry-After)
//
// In every answer, times are RFC 3339 in UTC, in whole milliseconds, and an
// empty list is [] (never null): normalize.go does it for every route.
//
// Codes and statuses come from one table shared with the socket (package
// channels/codes); "retry" says the same request may be sent again (a
// message with its client_msg_id). Internal error text never reaches a
// client: a server failure answers INTERNAL, UNAVAILABLE or ABORTED with a
// fixed detail, and is logged.
//
// Routes:
//
//	POST /v1/users                  {"id","name","phone","email"?,"quiet_hours","department"}  create a user (201), or add
//	                                   back a removed one (200); an active user with that id: 409 USER_EXISTS
//	PATCH /v1/users/{id}            {"name"?,"phone"?,"email"?,"quiet_hours"?,"department"?} change only the fields given
//	                                   ("" clears one) of an active user; 404 otherwise
//	PUT  /v1/users/{id}             {"name","phone","email"?,"quiet_hours","department"}       create or replace a user
//	                                   whole, for sync tools: every field but "email" is required ("" clears one); a body
//	                                   that leaves one out is 400 BAD_REQUEST (use PATCH to change some); without
//	                                   "email" the stored address is kept. An address that is not one bare
//	                                   addr-spec (ana@example.com) is 400 BAD_REQUEST.
//	POST /v1/users/batch            {"users":[{"id","name","phone"},...]} -> {"created": n}, all or none
//	GET  /v1/users/{id}             a user, with "status" (active or removed) and "department"
//	GET  /v1/users?status=active|removed|all                     {"users":[...]}, active ones by default
//	DELETE /v1/users/{id}           offboard: mark removed, leave groups and department, revoke tokens,
//	                                close connections, stop pending DINGs (Config.Offboarder) -> the user
//	                                ("updated": the removal's time) and "already_removed"; a removed user
//	                                again: 200, "already_removed": true, nothing moves (the offboarding is
//	                                redone, to finish one that failed half-way)
//	POST /v1/tokens                 {"user","device","ttl_seconds"} -> {"token","expires"}; 429 RATE_LIMITED
//	                                   (Retry-After) past the admin's mints per minute
//	POST /v1/users/{id}/revoke-tokens {"device"} -> {"user","device","connections_closed"}: every client
//	                                   token of the user issued until now (or of that device) stops
//	                                   working, for good, and its live connections get BAD_TOKEN; tokens
//	                                   minted afterwards work. Offboarding revokes them too, and a re-added
//	                                   user's old tokens stay revoked
//	POST /v1/messages               {"from","to":[..],"text"|"body_base64","kind","client_msg_id","forward_of","quote_of"}
//	                                or {"from","chat","text",...} in a secret chat ("to" empty: the other participant)
//	                                -> {"id","created","duplicate"[,"chat"]} after the message is durable;
//	                                   429 RATE_LIMITED past the sender's messages per second (ratelimit.go)
//	                                   409 NO_FORWARD (forward_of or quote_of names a secret message, or is
//	                                   given in a secret chat), 403 NOT_MEMBER (not in that chat, or no such
//	                                   chat), 403 NOT_RECIPIENT (forward_of or quote_of names a message the
//	                                   sender neither sent nor received)
//	GET  /v1/messages/{id}/receipts -> {"id","from","created","counts","recipients":[{"user","state","delivered","read"}]}
//	                                   (a secret message: also "chat"; users by id, as admins see them).
//	                                   "counts" {"sent","delivered","read"[,"confirmed"]} are cumulative,
//	                                   as in the stats: recipients who reached at least that state
//	                                   (delivered includes read), not those in it now
//	POST /v1/backup                 {"dir"} -> {"dir"}: a Pebble checkpoint of the store written into a new
//	                                   directory under the backup root (Config.BackupRoot, dingd
//	                                   --backup-dir): dir is a name under it, or an absolute path inside it;
//	                                   403 FORBIDDEN outside it; 0700 directories, 0600 files. It holds no
//	                                   secret message's key (those are in DATA/secret.keys, outside the
//	                                   store), so no readable secret content
//	POST /v1/backup/verify          {"dir"} -> {"dir","ok","stats":{"keys","bytes","by_prefix"}}: the backup
//	                                   opens read-only and every key and value reads back (block
//	                                   checksums); 422 BACKUP_INVALID with the reason otherwise
//	POST /v1/retention/sweep        -> {"entries","messages","dings","dedupe","quotas","refs","days","held","took_ms"}:
//	                                   delete now what is past retention (dingd --retention-*; the
//	                                   sweeper does it every --retention-interval) and say what went;
//	                                   "held": past retention, kept because a DING or must-confirm
//	                                   message is not settled. 503 UNAVAILABLE while writes are refused
//
// Secret chats (see secret.go): POST /v1/secret-chats, GET
// /v1/secret-chats/{id}, GET /v1/users/{id}/secret-chats. Admins see a
// secret chat's metadata (members, pseudonyms, level, live message
// counts) and receipts, never a secret message's body: no route returns
// one.
//
// DINGs (see dings.go):
//
//	POST /v1/dings                  {"from","to":[user ids or +E164],"text","policy"|"policy_name","choices","critical","client_msg_id"}
//	                                -> 201 {"id","created","duplicate","refused":[{"recipient","reason","retry_after" (seconds)}]}
//	                                   429 QUOTA_EXCEEDED {"error":{"code","detail","reason"}} with Retry-After;
//	                                   429 RATE_LIMITED past the sender's DINGs per minute (ratelimit.go)
//	GET  /v1/dings?from=&after=&limit=  -> {"dings":[{"id","from","created","recipients"}]}
//	GET  /v1/dings/{id}             -> the DING with every recipient's status and ledger
//	POST /v1/dings/{id}/cancel      -> the same, after every pending recipient stopped, with "stopped": how
//	                                   many this request stopped (0, and a "note", when all had ended)
//	PUT  /v1/policies/{name}        {"policy":"inapp,sms@5m,voice@15m until=confirmed"}
//	GET  /v1/policies               -> {"policies":{"name":"spec"},"builtin_default":"spec"}
//
// The directory (see directory.go). Every change is in the audit log, with
// the admin's name as actor. Targets "all", "dept:ID" and "group:ID" may be used as
// recipients of messages and DINGs.
//
//	PUT  /v1/departments/{id}       {"name","parent"}  create, rename or move (409 DEPARTMENT_CYCLE)
//	GET  /v1/departments            {"departments":[{"id","name","parent"}]}
//	GET  /v1/departments/{id}       {"id","name","parent","members","subdepartments","total_members"}
//	DELETE /v1/departments/{id}     only when empty (409 DEPARTMENT_NOT_EMPTY)
//	PUT  /v1/groups/{id}            {"name","members":[..]}  create or replace an ad-hoc group
//	POST /v1/groups/{id}/members    {"add":[..],"remove":[..]} -> the group
//	GET  /v1/groups                 {"groups":[...]}, the ad-hoc ones
//	GET  /v1/groups/{id}            an ad-hoc group, or a derived one: /v1/groups/all, /v1/groups/dept:ID
//	DELETE /v1/groups/{id}
//	POST /v1/directory/import?format=json|csv&remove_missing=1&dry_run=1   body: the file (up to 32 MiB)
//	                                -> {"departments_added",...,"users_unchanged","missing","offboarded"}
//	GET  /v1/audit?after=SEQ&limit=N  -> {"entries":[{"seq","at","actor","role","source","action","target","detail","prev","hash"}],"next"}
//	GET  /v1/audit/verify[?expect=HEAD_HASH]
//	                                -> {"ok","entries","first_hashed_seq","head_seq","head_hash","expect","expect_seq","broken_at","reason"}
//
// The audit log is a hash chain (package fanout, "The audit chain"):
// verify walks all of it and answers 200 either way; "ok" false with
// "broken_at" (the seq of the first entry missing, changed or off the
// chain) and a "reason", or, with expect (a head_hash recorded earlier,
// outside the server), false when no entry has that hash: the log's end
// was cut off or the chain rewritten.
//
// Outbound event webhooks (see webhooks.go): /v1/webhooks, with the
// "webhooks" permission.
//
// Twilio's webhooks are served under /twilio/ when Config.Webhooks is set;
// they authenticate by Twilio's request signature, not the admin token.
// E-mail confirmation links are served under /email/ when
// Config.EmailLinks is set; they authenticate by their own signature.
//
// The contract of all of it is openapi.json (OpenAPI 3.1), served at GET
// /openapi.json and rendered at GET /docs, both public (openapi.go); tests
// keep it and the routes in step, and validate real answers against it.
package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/channels/codes"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/internal/ratelimit"
)

// Config configures the API. Engine, Directory, Keys and Gatherer are required.
type Config struct {
	Engine    Engine
	Directory Directory
	Keys      *auth.Keys
	// Backup writes a consistent copy of the store; nil means backups are
	// not supported (501).
	Backup store.Checkpointer
	// BackupRoot is the only directory backups are written under (it
	// should exist, mode 0700); empty refuses backups (501).
	BackupRoot string
	// VerifyBackup reads a backup whole (POST /v1/backup/verify).
	VerifyBackup func(dir string) (any, error)
	// BackupRefusal, when set, is why this server takes and verifies no
	// backups: both routes answer 501 UNSUPPORTED with it as the detail
	// (after authentication). Empty: Backup and VerifyBackup decide.
	BackupRefusal string
	// Gatherer is what /metrics exposes.
	Gatherer prometheus.Gatherer
	// Ready reports readiness for /readyz; nil means always ready.
	Ready func() bool
	// Unready, if set, gives a reason /readyz answers 503 for although
	// Ready holds ("" for none): the node serves reads but refuses writes.
	Unready func() string
	// MaxTokenTTL caps client token lifetimes; zero means 30 days.
	MaxTokenTTL time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the API's metrics; nil means none.
	Registerer prometheus.Registerer
	// Webhooks, if set, serves /twilio/ (package channels/twilio).
	Webhooks http.Handler
	// EmailLinks, if set, serves /email/: the confirmation links of
	// e-mail escalation steps (package channels/email).
	EmailLinks http.Handler
	// Presence, if set, says which devices of a user are connected now
	// (*fanout.Hub implements it).
	Presence interface{ Devices(user string) []string }
	// Offboarder is what DELETE /v1/users/{id} and an import with
	// remove_missing call; nil means only Directory.RemoveUser (tokens
	// and connections are then left alone).
	Offboarder Offboarder
	// Revoker is what POST /v1/users/{id}/revoke-tokens uses; nil: 501.
	Revoker Revoker
	// MaxImportBytes limits the body of POST /v1/directory/import; zero
	// means 32 MiB.
	MaxImportBytes int64
	// MetricsAuth puts GET /metrics behind an admin token with the
	// "metrics" permission (roles owner, admin, operator); false (the
	// default) serves it to anyone who reaches the port.
	MetricsAuth bool
	// Limits are the rate limits per admin, per user and per source
	// address (ratelimit.go); nil means none.
	Limits *ratelimit.Limits
	// Hooks manages outbound event webhooks (webhooks.go); nil: the
	// routes answer 501 UNSUPPORTED with HooksRefusal (or a default).
	Hooks        Webhooks
	HooksRefusal string
}

// API is the http.Handler.
type API struct {
	cfg      Config
	mux      *http.ServeMux
	requests *prometheus.CounterVec
	routes   []Route  // every authenticated route; written by New only
	unauth   []string // every route served without authentication but /twilio/'s; written by New only
}

// New builds the handler.
func New(cfg Config) (*API, error) {
	if cfg.Engine == nil || cfg.Directory == nil || cfg.Keys == nil || cfg.Gatherer == nil {
		return nil, errors.New("httpapi: Engine, Directory, Keys and Gatherer are required")
	}
	if cfg.MaxTokenTTL == 0 {
		cfg.MaxTokenTTL = 30 * 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &API{cfg: cfg, mux: http.NewServeMux()}
	a.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ding_http_requests_total", Help: "Admin API requests, by route and status code.",
	}, []string{"route", "code"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(a.requests); err != nil {
			return nil, err
		}
	}
	a.public("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }))
	a.public("GET /readyz", http.HandlerFunc(a.readyz))
	metrics := promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})
	if cfg.MetricsAuth {
		a.adminRaw("GET /metrics", PermMetrics, func(w http.ResponseWriter, r *http.Request) error {
			metrics.ServeHTTP(w, r)
			return nil
		})
	} else {
		a.public("GET /metrics", metrics)
	}
	a.public("GET /openapi.json", http.HandlerFunc(serveOpenAPI))
	a.public("GET /docs", http.HandlerFunc(serveDocs))
	a.adminRoutes()
	a.admin("POST /v1/users", PermUsersWrite, a.addUser)
	a.admin("PATCH /v1/users/{id}", PermUsersWrite, a.patchUser)
	a.admin("POST /v1/users/batch", PermUsersWrite, a.putUsers)
	a.admin("PUT /v1/users/{id}", PermUsersWrite, a.putUser)
	a.admin("GET /v1/users/{id}", PermUsersRead, a.getUser)
	a.admin("GET /v1/users/{id}/devices", PermUsersRead, a.userDevices)
	a.admin("GET /v1/users", PermUsersRead, a.listUsers)
	a.admin("DELETE /v1/users/{id}", PermUsersWrite, a.deleteUser)
	a.admin("POST /v1/users/{id}/revoke-tokens", PermUsersWrite, a.revokeTokens)
	a.admin("PUT /v1/departments/{id}", PermOrgWrite, a.putDepartment)
	a.admin("GET /v1/departments", PermOrgRead, a.listDepartments)
	a.admin("GET /v1/departments/{id}", PermOrgRead, a.getDepartment)
	a.admin("DELETE /v1/departments/{id}", PermOrgWrite, a.deleteDepartment)
	a.admin("PUT /v1/groups/{id}", PermOrgWrite, a.putGroup)
	a.admin("POST /v1/groups/{id}/members", PermOrgWrite, a.groupMembers)
	a.admin("GET /v1/groups", PermOrgRead, a.listGroups)
	a.admin("GET /v1/groups/{id}", PermOrgRead, a.getGroup)
	a.admin("DELETE /v1/groups/{id}", PermOrgWrite, a.deleteGroup)
	a.adminLimit("POST /v1/directory/import", PermOrgWrite, a.importBodyLimit(), a.importDirectory)
	a.admin("GET /v1/audit", PermAudit, a.audit)
	a.admin("GET /v1/audit/verify", PermAudit, a.verifyAudit)
	a.admin("POST /v1/tokens", PermTokens, a.mintToken)
	a.admin("POST /v1/messages", PermSend, a.sendMessage)
	a.admin("GET /v1/messages/{id}/receipts", PermStatus, a.receipts)
	a.admin("POST /v1/backup", PermBackup, a.backup)
	a.admin("POST /v1/backup/verify", PermBackup, a.verifyBackup)
	a.admin("POST /v1/retention/sweep", PermRetention, a.sweep)
	a.secretRoutes()
	a.announceRoutes()
	a.pushRoutes()
	a.admin("POST /v1/dings", PermSend, a.postDing)
	a.admin("GET /v1/dings", PermStatus, a.listDings)
	a.admin("GET /v1/dings/{id}", PermStatus, a.getDing)
	a.admin("POST /v1/dings/{id}/cancel", PermSend, a.cancelDing)
	a.admin("PUT /v1/policies/{name}", PermPolicies, a.putPolicy)
	a.admin("GET /v1/policies", PermStatus, a.listPolicies)
	a.admin("POST /v1/webhooks", PermWebhooks, a.addWebhook)
	a.admin("GET /v1/webhooks", PermWebhooks, a.listWebhooks)
	a.admin("GET /v1/webhooks/{id}", PermWebhooks, a.getWebhook)
	a.admin("DELETE /v1/webhooks/{id}", PermWebhooks, a.deleteWebhook)
	a.admin("POST /v1/webhooks/{id}/pause", PermWebhooks, a.pauseWebhook(true))
	a.admin("POST /v1/webhooks/{id}/resume", PermWebhooks, a.pauseWebhook(false))
	a.admin("GET /v1/webhooks/{id}/deliveries", PermWebhooks, a.webhookDeliveries)
	a.admin("POST /v1/webhooks/{id}/replay", PermWebhooks, a.replayWebhook)
	if cfg.Webhooks != nil {
		a.mux.Handle("/twilio/", cfg.Webhooks)
	}
	if cfg.EmailLinks != nil {
		a.mux.Handle("/email/", cfg.EmailLinks)
	}
	return a, nil
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1" || strings.HasPrefix(r.URL.Path, "/v1/") {
		if h, pattern := a.mux.Handler(r); pattern == "" {
			a.noRoute(w, r, h)
			return
		}
	}
	a.mux.ServeHTTP(w, r)
}

// noRoute answers a /v1 request that no route takes, in the JSON error
// format of every other answer where ServeMux would write plain text: 404
// NOT_FOUND, or 405 METHOD_NOT_ALLOWED (with Allow) when the path has
// routes for other methods. h is the mux's own answer, run into a
// recorder to learn which; a redirect to the cleaned path is left to the
// mux. Counted in the metrics as route "unmatched", never by path.
func (a *API) noRoute(w http.ResponseWriter, r *http.Request, h http.Handler) {
	rec := &headerRecorder{header: http.Header{}}
	h.ServeHTTP(rec, r)
	path := r.URL.Path
	if len(path) > 200 {
		path = path[:200] + "..."
	}
	var e *apiError
	switch rec.status {
	case http.StatusNotFound:
		e = errf(http.StatusNotFound, "NOT_FOUND", "no route %s %s", r.Method, path)
	case http.StatusMethodNotAllowed:
		allow := rec.header.Get("Allow")
		w.Header().Set("Allow", allow)
		e = errf(http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "no route %s %s (it takes %s)", r.Method, path, allow)
	default:
		a.mux.ServeHTTP(w, r)
		return
	}
	writeErr(w, e)
	a.requests.WithLabelValues("unmatched", fmt.Sprint(e.status)).Inc()
}

// headerRecorder keeps a handler's status and headers and drops its body.
type headerRecorder struct {
	header http.Header
	status int
}

func (h *headerRecorder) Header() http.Header { return h.header }

func (h *headerRecorder) WriteHeader(code int) {
	if h.status == 0 {
		h.status = code
	}
}

func (h *headerRecorder) Write(b []byte) (int, error) {
	h.WriteHeader(http.StatusOK)
	return len(b), nil
}

// Elsewhere is an error for a request that another node of a cluster
// can answer: this one does not serve the partition of the user or id it
// names (its owner moved, or is another node). The answer carries
// ServedElsewhere's value in the ServedElsewhereHeader, by which the
// node's front (internal/node's ownerProxy) sends the request on to the
// partition's owner; a client that gets it sees the error's own code.
type Elsewhere interface{ ServedElsewhere() string }

// ServedElsewhereHeader names, on an error answer, the partition another
// node serves (Elsewhere).
const ServedElsewhereHeader = "Ding-Served-Elsewhere"

// apiError is an error with its HTTP status and stable code.
type apiError struct {
	status     int
	code       string
	detail     string
	reason     string        // optional machine-readable reason (quota refusals)
	permission string        // FORBIDDEN: the permission the admin lacks
	retryAfter time.Duration // optional; sets Retry-After
	retry      bool          // the same request may be sent again
	elsewhere  string        // Elsewhere's partition, for ServedElsewhereHeader
}

func (e *apiError) Error() string { return e.code + ": " + e.detail }

func errf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, detail: fmt.Sprintf(format, args...)}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) { s.status = code; s.ResponseWriter.WriteHeader(code) }

// admin registers an admin-only JSON route, which needs perm, whose
// request body may be about twice the largest message body.
func (a *API) admin(pattern string, perm Permission, h func(r *http.Request) (int, any, error)) {
	a.adminLimit(pattern, perm, int64(2*a.cfg.Engine.MaxBody()+16<<10), h)
}

// adminLimit is admin with a request body limit of limit bytes.
func (a *API) adminLimit(pattern string, perm Permission, limit int64, h func(r *http.Request) (int, any, error)) {
	a.routes = append(a.routes, Route{Pattern: pattern, Permission: perm})
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: 200}
		defer func() { a.requests.WithLabelValues(pattern, fmt.Sprint(sw.status)).Inc() }()
		r, ae := a.guard(r, pattern, perm)
		if ae != nil {
			writeErr(sw, ae)
			return
		}
		r.Body = http.MaxBytesReader(sw, r.Body, limit)
		status, body, err := h(r)
		if err != nil {
			writeErr(sw, a.answer(pattern, err))
			return
		}
		sw.Header().Set("Content-Type", "application/json")
		sw.WriteHeader(status)
		json.NewEncoder(sw).Encode(normalize(body))
	})
}

// adminRaw is admin for handlers that write their own response (CSV).
func (a *API) adminRaw(pattern string, perm Permission, h func(w http.ResponseWriter, r *http.Request) error) {
	a.routes = append(a.routes, Route{Pattern: pattern, Permission: perm})
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: 200}
		defer func() { a.requests.WithLabelValues(pattern, fmt.Sprint(sw.status)).Inc() }()
		r, ae := a.guard(r, pattern, perm)
		if ae != nil {
			writeErr(sw, ae)
			return
		}
		if err := h(sw, r); err != nil {
			writeErr(sw, a.answer(pattern, err))
		}
	})
}

func writeErr(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "application/json")
	body := map[string]any{"code": e.code, "detail": e.detail}
	if e.reason != "" {
		body["reason"] = e.reason
	}
	if e.permission != "" {
		body["permission"] = e.permission
	}
	if e.retry {
		body["retry"] = true
	}
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(engine.RetryAfterSeconds(e.retryAfter)))
	}
	if e.elsewhere != "" {
		w.Header().Set(ServedElsewhereHeader, e.elsewhere)
	}
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(map[string]any{"error": body})
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errf(http.StatusRequestEntityTooLarge, "TOO_LARGE", "request body too large")
		}
		return errf(http.StatusBadRequest, "BAD_REQUEST", "malformed JSON: %v", err)
	}
	return nil
}

// answer is what a handler's error tells the client: an *apiError as it
// is; any other error through the one table of codes (package
// channels/codes), logged when it is the server's failure.
func (a *API) answer(route string, err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	ans := codes.Of(err)
	if ans.Internal() {
		a.cfg.Logger.Error("admin request failed", "route", route, "code", string(ans.Code), "err", err)
	}
	ae = &apiError{status: ans.HTTPStatus, code: ans.HTTPCode, detail: ans.Detail, reason: ans.Reason,
		retryAfter: ans.RetryAfter, retry: ans.Retry}
	var ew Elsewhere
	if errors.As(err, &ew) {
		ae.elsewhere = ew.ServedElsewhere()
	}
	return ae
}

func (a *API) readyz(w http.ResponseWriter, r *http.Request) {
	if a.cfg.Ready != nil && !a.cfg.Ready() {
		http.Error(w, "not ready\n", http.StatusServiceUnavailable)
		return
	}
	if a.cfg.Unready != nil {
		if why := a.cfg.Unready(); why != "" {
			http.Error(w, why+"\n", http.StatusServiceUnavailable)
			return
		}
	}
	w.Write([]byte("ready\n"))
}

func (a *API) mintToken(r *http.Request) (int, any, error) {
	var req struct {
		User       string `json:"user"`
		Device     string `json:"device"`
		TTLSeconds int64  `json:"ttl_seconds"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if !a.cfg.Directory.Active(req.User) { // removed users get no tokens
		return 0, nil, errf(http.StatusNotFound, "UNKNOWN_USER", "no such active user %q", req.User)
	}
	if err := engine.CheckName("device", req.Device); err != nil {
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "%v", err)
	}
	ttl := time.Duration(req.TTLSeconds) * time.Second
	if ttl <= 0 || ttl > a.cfg.MaxTokenTTL {
		ttl = a.cfg.MaxTokenTTL
	}
	if err := a.cfg.Limits.Check(ratelimit.TokenMint, actor(r).Name); err != nil {
		return 0, nil, err
	}
	tok, err := a.cfg.Keys.MintClient(req.User, req.Device, ttl)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"token": tok, "expires": time.Now().Add(ttl).UTC().Format(time.RFC3339)}, nil
}

func (a *API) sendMessage(r *http.Request) (int, any, error) {
	var req struct {
		From        string   `json:"from"`
		To          []string `json:"to"`
		Text        string   `json:"text"`
		BodyBase64  []byte   `json:"body_base64"`
		Kind        string   `json:"kind"`
		ClientMsgID string   `json:"client_msg_id"`
		Chat        string   `json:"chat"`
		ForwardOf   string   `json:"forward_of"`
		QuoteOf     string   `json:"quote_of"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if !a.cfg.Directory.Active(req.From) {
		return 0, nil, errf(http.StatusUnprocessableEntity, "UNKNOWN_SENDER", "no such active user %q", req.From)
	}
	if err := a.senderInScope(r, req.From); err != nil {
		return 0, nil, err
	}
	if err := a.targetsInScope(r, req.To); err != nil {
		return 0, nil, err
	}
	var chat, fwd, quote engine.ID
	for _, f := range []struct {
		name, v string
		id      *engine.ID
	}{{"chat", req.Chat, &chat}, {"forward_of", req.ForwardOf, &fwd}, {"quote_of", req.QuoteOf, &quote}} {
		if f.v == "" {
			continue
		}
		id, err := engine.ParseID(f.v)
		if err != nil {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "malformed %s id", f.name)
		}
		*f.id = id
	}
	if req.Chat != "" && len(req.To) > 0 {
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "a message in a secret chat names no recipients: give chat or to, not both")
	}
	if req.Chat != "" && principalOf(r).dept != "" {
		// The other participant must be of the subtree too; a chat
		// that does not exist is the engine's to answer.
		if ch, err := a.cfg.Engine.Chat(chat); err == nil {
			for _, m := range ch.Members {
				if err := a.userInScope(r, m.User); err != nil {
					return 0, nil, err
				}
			}
		}
	}
	kind, body := engine.KindText, []byte(req.Text)
	switch req.Kind {
	case "", "text":
	case "data":
		kind = engine.KindData
	default:
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "kind must be text or data")
	}
	if req.BodyBase64 != nil {
		if req.Text != "" {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "give text or body_base64, not both")
		}
		body = req.BodyBase64
	}
	if err := a.cfg.Limits.Check(ratelimit.Submit, req.From); err != nil {
		return 0, nil, err
	}
	res, err := a.cfg.Engine.Submit(r.Context(), engine.Submission{
		From: req.From, To: req.To, Kind: kind, Body: body, ClientID: req.ClientMsgID,
		Chat: chat, Forward: fwd, Quote: quote, ViaAPI: true,
	})
	if err != nil {
		return 0, nil, err
	}
	out := map[string]any{"id": res.ID.String(), "created": res.Created.UTC(), "duplicate": res.Duplicate}
	if req.Chat != "" {
		out["chat"] = chat.String()
	}
	return http.StatusOK, out, nil
}

func (a *API) receipts(r *http.Request) (int, any, error) {
	id, err := engine.ParseID(r.PathValue("id"))
	if err != nil {
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "malformed message id")
	}
	m, err := a.cfg.Engine.Message(id)
	if err != nil {
		return 0, nil, err
	}
	if err := a.senderInScope(r, m.From); err != nil {
		return 0, nil, err
	}
	rs, err := a.cfg.Engine.Receipts(id)
	if err != nil {
		return 0, nil, err
	}
	type rj struct {
		User      string     `json:"user"`
		State     string     `json:"state"`
		Delivered *time.Time `json:"delivered,omitempty"`
		Read      *time.Time `json:"read,omitempty"`
		Confirmed *time.Time `json:"confirmed,omitempty"`
	}
	out := make([]rj, 0, len(rs))
	// The counts are cumulative, as in the message's stats
	// (engine.MessageStats): recipients who reached at least each state,
	// so "delivered" includes those who read, "sent" is every recipient
	// whose stream has it. (They once counted the recipients in each
	// state now; the names are kept.)
	counts := map[string]int{"sent": 0, "delivered": 0, "read": 0}
	top := engine.StateRead
	if m.Kind == engine.KindDing || m.Flags&engine.FlagConfirm != 0 {
		counts["confirmed"] = 0
		top = engine.StateConfirmed
	}
	for _, r := range rs {
		x := rj{User: r.User, State: r.State.String()}
		if !r.Delivered.IsZero() {
			t := r.Delivered.UTC()
			x.Delivered = &t
		}
		if !r.Read.IsZero() {
			t := r.Read.UTC()
			x.Read = &t
		}
		if !r.Confirmed.IsZero() {
			t := r.Confirmed.UTC()
			x.Confirmed = &t
		}
		for st := engine.StateSent; st <= min(r.State, top); st++ {
			counts[st.String()]++
		}
		out = append(out, x)
	}
	res := map[string]any{"id": id.String(), "from": m.From, "created": m.Created.UTC(), "counts": counts, "recipients": out}
	if m.Chat != (engine.ID{}) {
		res["chat"] = m.Chat.String() // metadata; the body is never part of an admin answer
	}
	return http.StatusOK, res, nil
}

// backupPath resolves a backup's name (or absolute path) under root, or
// refuses it (403) outside.
func backupPath(root, dir string) (string, *apiError) {
	target := filepath.Clean(dir)
	if !filepath.IsAbs(target) {
		target = filepath.Join(root, target)
	}
	if rel, err := filepath.Rel(root, target); err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", errf(http.StatusForbidden, "FORBIDDEN", "backups are under the backup directory %s (dingd --backup-dir); %q is not inside it", root, dir)
	}
	return target, nil
}

// sweep: POST /v1/retention/sweep.
func (a *API) sweep(r *http.Request) (int, any, error) {
	rep, err := a.cfg.Engine.Sweep(r.Context())
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, struct {
		engine.SweepReport
		TookMS int64 `json:"took_ms"`
	}{rep, rep.Took.Milliseconds()}, nil
}

// verifyBackup: POST /v1/backup/verify {"dir"}: the backup under the
// backup root opens and reads whole (every block's checksum).
func (a *API) verifyBackup(r *http.Request) (int, any, error) {
	var req struct {
		Dir string `json:"dir"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if req.Dir == "" {
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "dir is required")
	}
	if a.cfg.BackupRefusal != "" {
		return 0, nil, errf(http.StatusNotImplemented, "UNSUPPORTED", "%s", a.cfg.BackupRefusal)
	}
	if a.cfg.BackupRoot == "" || a.cfg.VerifyBackup == nil {
		return 0, nil, errf(http.StatusNotImplemented, "UNSUPPORTED", "this store cannot verify backups")
	}
	target, aerr := backupPath(a.cfg.BackupRoot, req.Dir)
	if aerr != nil {
		return 0, nil, aerr
	}
	stats, err := a.cfg.VerifyBackup(target)
	if err != nil {
		return 0, nil, errf(http.StatusUnprocessableEntity, "BACKUP_INVALID", "%v", err)
	}
	return http.StatusOK, map[string]any{"dir": target, "ok": true, "stats": stats}, nil
}

// backup writes a Pebble checkpoint of the store into a new directory.
// The keys of secret messages live in DATA/secret.keys (engine/keyring),
// outside the store, so the checkpoint holds secret messages only as
// ciphertext whose keys it does not have: no readable secret content. A
// node started on a restored backup without that file cannot read them.
func (a *API) backup(r *http.Request) (int, any, error) {
	var req struct {
		Dir string `json:"dir"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if req.Dir == "" {
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "dir is required")
	}
	if a.cfg.BackupRefusal != "" {
		return 0, nil, errf(http.StatusNotImplemented, "UNSUPPORTED", "%s", a.cfg.BackupRefusal)
	}
	root := a.cfg.BackupRoot
	if a.cfg.Backup == nil || root == "" {
		return 0, nil, errf(http.StatusNotImplemented, "UNSUPPORTED", "this store cannot take backups")
	}
	target, aerr := backupPath(root, req.Dir)
	if aerr != nil {
		return 0, nil, aerr
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		return 0, nil, errf(http.StatusConflict, "BACKUP_FAILED", "%v", err)
	}
	if err := a.cfg.Backup.Checkpoint(target); err != nil {
		return 0, nil, errf(http.StatusConflict, "BACKUP_FAILED", "%v", err)
	}
	// The root is 0700, so no other user reaches the copy; its own modes
	// say the same, for when it is moved out.
	err := filepath.WalkDir(target, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.Chmod(p, 0o700)
		}
		return os.Chmod(p, 0o600)
	})
	if err != nil {
		return 0, nil, errf(http.StatusConflict, "BACKUP_FAILED", "restrict the backup's modes: %v", err)
	}
	return http.StatusOK, map[string]any{"dir": target}, nil
}
