package httpapi

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/ratelimit"
)

// Access control. Every admin token names an admin (fanout.Admin: name,
// role, department, the generation its token must carry). A request is
// checked in three steps:
//
//  1. authenticate: the token's signature and expiry (channels/auth),
//     then its admin in the directory's memory (no store read): active,
//     of the token's generation, not expired. Otherwise 401
//     UNAUTHENTICATED. A revocation is installed in that memory before
//     it is acknowledged, so the next request with the token fails.
//     A request with no Authorization header over a TLS connection whose
//     client certificate the port's client CA verified (mTLS) is the
//     admin the certificate names (ding:admin/NAME), checked the same
//     way (authenticateCert); a certificate never makes an admin of
//     its own.
//  2. authorize: the route's one Permission (registered with the route,
//     so that no route exists without one) must be among the role's;
//     otherwise 403 FORBIDDEN naming the permission.
//  3. scope: a dept-admin's request may name only users, departments
//     and groups of its department's subtree (the handlers check what
//     they name); otherwise 403 OUT_OF_SCOPE. Other roles have no scope.
//
// Before the first step, a source address locked out for failed
// authentications is refused (429); a 401 counts against its address;
// after the first step, the request counts against its admin's limit
// (ratelimit.go).
//
// The table of routes and permissions is in SECURITY.md, checked against
// Routes and Roles by a test.

// Permission is what a route lets an admin do.
type Permission string

// The permissions. PermAnyAdmin is held by every role (GET /v1/admins/me).
const (
	PermAnyAdmin   Permission = "any"
	PermAdmins     Permission = "admins"      // add, list and revoke admins
	PermUsersRead  Permission = "users.read"  // users and their devices
	PermUsersWrite Permission = "users.write" // create, change, offboard users; revoke their client tokens
	PermOrgRead    Permission = "org.read"    // departments and groups
	PermOrgWrite   Permission = "org.write"   // change departments and groups; directory import
	PermTokens     Permission = "tokens"      // mint client tokens (act as any user's device)
	PermSend       Permission = "send"        // messages, DINGs (and cancel), announcements (and re-DING), secret chats' messages
	PermStatus     Permission = "status"      // receipts, message and announcement stats, DING ledgers, policies
	PermStats      Permission = "stats"       // the organisation's statistics (GET /v1/stats)
	PermSecrets    Permission = "secrets"     // open secret chats; see their metadata
	PermAudit      Permission = "audit"       // the audit log
	PermPolicies   Permission = "policies"    // store escalation policies
	PermBackup     Permission = "backup"      // write and verify backups
	PermRetention  Permission = "retention"   // sweep what is past retention now
	PermMetrics    Permission = "metrics"     // GET /metrics, when Config.MetricsAuth
	PermWebhooks   Permission = "webhooks"    // outbound event webhooks: subscriptions (their secrets), dead letters, replays
	// The cluster's own routes (ClusterRoutes), served by each member
	// (internal/node) beside the API.
	PermClusterRead  Permission = "cluster.read"  // GET /v1/cluster: members, owner, standby, epochs, lag
	PermClusterWrite Permission = "cluster.write" // drain a member, hand the partition over, forget a member
)

// ClusterRoutes are the routes a cluster member serves itself, owner or
// not (internal/node), with their permissions: authorized with Authorize
// on the owner, and on a member that does not serve by asking the owner
// who the caller is.
var ClusterRoutes = []Route{
	{Pattern: "GET /v1/cluster", Permission: PermClusterRead},
	{Pattern: "POST /v1/cluster/drain", Permission: PermClusterWrite},
	{Pattern: "POST /v1/cluster/handover", Permission: PermClusterWrite},
	{Pattern: "POST /v1/cluster/forget", Permission: PermClusterWrite},
}

// ClusterPermission is the permission of the cluster route pattern (one
// of ClusterRoutes); it panics on any other, a programming error.
func ClusterPermission(pattern string) Permission {
	for _, rt := range ClusterRoutes {
		if rt.Pattern == pattern {
			return rt.Permission
		}
	}
	panic("httpapi: no cluster route " + pattern)
}

// Authorize authenticates and authorizes r for a route served outside
// the API (ClusterRoutes) as the API's own routes are: the source
// address's lockout, the admin's token (or client certificate), its rate
// limit, the permission. On failure it answers w with the API's error (401,
// 403 naming the permission, 429) and returns false.
func (a *API) Authorize(w http.ResponseWriter, r *http.Request, pattern string, perm Permission) bool {
	if _, ae := a.guard(r, pattern, perm); ae != nil {
		writeErr(w, ae)
		return false
	}
	return true
}

// allPermissions lists every permission but PermAnyAdmin, in the order
// of the documentation.
var allPermissions = []Permission{PermAdmins, PermUsersRead, PermUsersWrite, PermOrgRead, PermOrgWrite,
	PermTokens, PermSend, PermStatus, PermStats, PermSecrets, PermAudit, PermPolicies, PermBackup, PermRetention, PermMetrics, PermWebhooks,
	PermClusterRead, PermClusterWrite}

// The roles. RoleDeptAdmin is the one scoped role: its admin has a
// department, and acts only within that department's subtree.
const (
	RoleOwner     = fanout.RoleOwner
	RoleAdmin     = "admin"
	RoleDirectory = "directory"
	RoleOperator  = "operator"
	RoleSender    = "sender"
	RoleDeptAdmin = "dept-admin"
)

// Role is one role's grant.
type Role struct {
	Name        string
	Permissions []Permission // PermAnyAdmin is implied
	// Scoped: the admin has a department and acts only within its
	// subtree (users, departments, groups, messages' senders and
	// recipients).
	Scoped bool
}

// roles is the table of roles, read-only.
var roles = []Role{
	{Name: RoleOwner, Permissions: allPermissions},
	{Name: RoleAdmin, Permissions: slices.DeleteFunc(slices.Clone(allPermissions), func(p Permission) bool { return p == PermAdmins })},
	{Name: RoleDirectory, Permissions: []Permission{PermUsersRead, PermUsersWrite, PermOrgRead, PermOrgWrite}},
	{Name: RoleOperator, Permissions: []Permission{PermStatus, PermStats, PermAudit, PermMetrics, PermClusterRead}},
	{Name: RoleSender, Permissions: []Permission{PermSend, PermStatus}},
	{Name: RoleDeptAdmin, Permissions: []Permission{PermUsersRead, PermUsersWrite, PermOrgRead, PermSend, PermStatus}, Scoped: true},
}

// Roles returns the table of roles (a copy).
func Roles() []Role {
	out := slices.Clone(roles)
	for i := range out {
		out[i].Permissions = slices.Clone(out[i].Permissions)
	}
	return out
}

func roleNamed(name string) (Role, bool) {
	for _, r := range roles {
		if r.Name == name {
			return r, true
		}
	}
	return Role{}, false
}

func roleNames() string {
	var names []string
	for _, r := range roles {
		names = append(names, r.Name)
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// Route is one authenticated route and the permission it needs.
type Route struct {
	Pattern    string // as http.ServeMux takes it: "POST /v1/users"
	Permission Permission
}

// Routes returns every route that takes an admin token, in the order of
// registration.
func (a *API) Routes() []Route { return slices.Clone(a.routes) }

// principal is the admin a request was authenticated as.
type principal struct {
	name string
	role Role
	dept string // the scope's root; "" unless role.Scoped
}

func (p *principal) may(perm Permission) bool {
	return perm == PermAnyAdmin || slices.Contains(p.role.Permissions, perm)
}

type principalKey struct{}

// principalOf returns the request's admin; the route wrapper put it in
// the context, so every handler has one.
func principalOf(r *http.Request) *principal {
	p, _ := r.Context().Value(principalKey{}).(*principal)
	if p == nil {
		panic("httpapi: a handler ran without the access check")
	}
	return p
}

// actor is the audit log's actor for a request: the admin's name and
// role, and the address of the HTTP peer (r.RemoteAddr: behind a proxy,
// the proxy's; X-Forwarded-For is not trusted, anyone can send it).
func actor(r *http.Request) fanout.Actor {
	p := principalOf(r)
	return fanout.Actor{Name: p.name, Role: p.role.Name, Source: r.RemoteAddr}
}

// guard authenticates and authorizes r for a route, returning r with its
// principal, or the error to answer.
func (a *API) guard(r *http.Request, pattern string, perm Permission) (*http.Request, *apiError) {
	if ae := a.sourceLocked(r); ae != nil { // ratelimit.go
		return nil, ae
	}
	p, ae := a.authenticate(r)
	if ae != nil {
		a.authFailed(r, ae)
		return nil, ae
	}
	if ae := a.limit(ratelimit.AdminRequest, p.name); ae != nil {
		return nil, ae
	}
	if !p.may(perm) {
		e := errf(http.StatusForbidden, "FORBIDDEN", "admin %q (role %s) lacks the permission %q that %s needs", p.name, p.role.Name, perm, pattern)
		e.permission = string(perm)
		return nil, e
	}
	return r.WithContext(context.WithValue(r.Context(), principalKey{}, p)), nil
}

// authenticate finds the admin r's bearer token names, in memory; or,
// for a request without an Authorization header, the admin its verified
// client certificate names (authenticateCert).
func (a *API) authenticate(r *http.Request) (*principal, *apiError) {
	if r.Header.Get("Authorization") == "" {
		if leaf := ClientCert(r); leaf != nil {
			return a.authenticateCert(leaf)
		}
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return nil, errf(http.StatusUnauthorized, "UNAUTHENTICATED", "missing bearer token")
	}
	c, err := a.cfg.Keys.Verify(tok, auth.KindAdmin)
	if errors.Is(err, auth.ErrExpired) {
		return nil, errf(http.StatusUnauthorized, "UNAUTHENTICATED", "admin token expired")
	}
	if err != nil {
		return nil, errf(http.StatusUnauthorized, "UNAUTHENTICATED", "admin token invalid")
	}
	name := c.User
	if name == "" {
		name = fanout.FirstOwner // minted before admins had names
	}
	adm, ok := a.cfg.Directory.Admin(name)
	switch {
	case !ok:
		return nil, errf(http.StatusUnauthorized, "UNAUTHENTICATED", "admin token invalid")
	case adm.Status != fanout.AdminActive || adm.Gen != c.Gen:
		return nil, errf(http.StatusUnauthorized, "UNAUTHENTICATED", "admin token revoked")
	case adm.Expired(time.Now()):
		return nil, errf(http.StatusUnauthorized, "UNAUTHENTICATED", "admin token expired")
	}
	return newPrincipal(adm), nil
}

// ClientCert is the client certificate r's client authenticated with:
// the one its TLS connection's handshake verified against the HTTP
// port's client CA (dingd --tls-client-ca), or, for a request another
// cluster member sent on (WithForwardedClient), the one that member's
// handshake verified; nil for none (none given, no client CA: then
// nothing is verified, so nothing is trusted).
func ClientCert(r *http.Request) *x509.Certificate {
	if c := ClientChain(r); len(c) > 0 {
		return c[0]
	}
	return nil
}

// ClientChain is the chain r's TLS handshake verified for its client
// certificate, leaf first (ClientCert): nil for none, and for a request
// another cluster member sent on, whose chain that member's assertion
// carried.
func ClientChain(r *http.Request) []*x509.Certificate {
	if f, ok := r.Context().Value(forwardedClientKey{}).(forwardedClient); ok {
		return f.chain // the TLS connection is the member's, not the client's
	}
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return nil
	}
	return r.TLS.VerifiedChains[0]
}

type forwardedClientKey struct{}

type forwardedClient struct{ chain []*x509.Certificate }

// WithForwardedClient marks a request's context as that of a request
// another cluster member sent on, whose signed word (internal/node's
// forwarder) says its client authenticated with the certificate chain
// chain, leaf first (none: no certificate): the API then takes its
// leaf, and never the TLS connection's own, which is the member's. Only
// the server's own code can set it; the caller has checked the member's
// signature and verified the chain against this node's client CA.
func WithForwardedClient(ctx context.Context, chain []*x509.Certificate) context.Context {
	return context.WithValue(ctx, forwardedClientKey{}, forwardedClient{chain})
}

// authenticateCert finds the admin a verified client certificate names
// (URI SAN ding:admin/NAME, auth.CertIdentityOf): never an admin by
// default, only one named explicitly, and only while it is active and
// not expired. The certificate counts as issued at its NotBefore: an
// admin added again after a revocation or an expiry (a generation past
// the first) accepts only certificates whose NotBefore is not before the
// second it was added again, as it accepts only tokens minted since.
func (a *API) authenticateCert(leaf *x509.Certificate) (*principal, *apiError) {
	id, err := auth.CertIdentityOf(leaf)
	if err != nil || id.Admin == "" {
		return nil, errf(http.StatusUnauthorized, "UNAUTHENTICATED",
			"missing bearer token, and the client certificate names no admin (URI SAN ding:admin/NAME)")
	}
	adm, ok := a.cfg.Directory.Admin(id.Admin)
	switch {
	case !ok:
		return nil, errf(http.StatusUnauthorized, "UNAUTHENTICATED", "the client certificate names no admin of this server")
	case adm.Status != fanout.AdminActive:
		return nil, errf(http.StatusUnauthorized, "UNAUTHENTICATED", "the client certificate's admin is revoked")
	case adm.Expired(time.Now()):
		return nil, errf(http.StatusUnauthorized, "UNAUTHENTICATED", "the client certificate's admin has expired")
	case adm.Gen > 1 && id.Issued.Before(adm.Created.Truncate(time.Second)): // NotBefore has whole seconds
		return nil, errf(http.StatusUnauthorized, "UNAUTHENTICATED",
			"the client certificate was issued before its admin was added again; issue a new one")
	}
	return newPrincipal(adm), nil
}

// newPrincipal is the principal of an active admin.
func newPrincipal(adm fanout.Admin) *principal {
	role, ok := roleNamed(adm.Role)
	if !ok { // stored by a newer version: grant nothing
		role = Role{Name: adm.Role}
	}
	p := &principal{name: adm.Name, role: role}
	if role.Scoped {
		p.dept = adm.Dept
		if p.dept == "" {
			p.role.Permissions = nil // a scope without a root: nothing
		}
	}
	return p
}

// outOfScope is the refusal of something outside a dept-admin's subtree.
func (p *principal) outOfScope(what string) *apiError {
	return errf(http.StatusForbidden, "OUT_OF_SCOPE", "admin %q (role %s) acts only within department %s and the departments under it; %s is not",
		p.name, p.role.Name, p.dept, what)
}

// userInScope refuses a user outside the request's scope: for a
// dept-admin, anyone but an active user of its subtree (a removed user
// has no department, so is outside every scope).
func (a *API) userInScope(r *http.Request, id string) error {
	p := principalOf(r)
	if p.dept == "" || a.cfg.Directory.UserWithin(id, p.dept) {
		return nil
	}
	return p.outOfScope("user " + strconv.Quote(id))
}

// deptInScope refuses a department outside the request's scope ("": no
// department, outside every scope).
func (a *API) deptInScope(r *http.Request, dept string) error {
	p := principalOf(r)
	if p.dept == "" || a.cfg.Directory.Within(dept, p.dept) {
		return nil
	}
	if dept == "" {
		return p.outOfScope("no department")
	}
	return p.outOfScope("department " + strconv.Quote(dept))
}

// targetsInScope refuses recipients outside the request's scope: for a
// dept-admin, "all", a phone number, a user, department or group
// (every member counts) outside its subtree, or a group that does not
// exist. The check is made when the request arrives: a user who moves
// out of the subtree while an announcement fans out still gets it.
func (a *API) targetsInScope(r *http.Request, targets []string) error {
	p := principalOf(r)
	if p.dept == "" {
		return nil
	}
	for _, t := range targets {
		switch {
		case t == fanout.TargetAll:
			return p.outOfScope(`"all"`)
		case strings.HasPrefix(t, fanout.TargetDept):
			if err := a.deptInScope(r, strings.TrimPrefix(t, fanout.TargetDept)); err != nil {
				return err
			}
		case strings.HasPrefix(t, fanout.TargetGroup):
			g, ok := a.cfg.Directory.Group(strings.TrimPrefix(t, fanout.TargetGroup))
			if !ok {
				return p.outOfScope(fmt.Sprintf("%q (no such group)", t))
			}
			for _, m := range g.Members {
				if !a.cfg.Directory.UserWithin(m, p.dept) {
					return p.outOfScope(fmt.Sprintf("%q (its member %q)", t, m))
				}
			}
		case strings.HasPrefix(t, "+"):
			return p.outOfScope("a phone number (outside the directory)")
		default:
			if err := a.userInScope(r, t); err != nil {
				return err
			}
		}
	}
	return nil
}

// senderInScope refuses to show or act on a message, DING or
// announcement whose sender is outside the request's scope.
func (a *API) senderInScope(r *http.Request, from string) error {
	p := principalOf(r)
	if p.dept == "" || a.cfg.Directory.UserWithin(from, p.dept) {
		return nil
	}
	return p.outOfScope(fmt.Sprintf("the sender %q of that message", from))
}

// messageInScope refuses, for a dept-admin, a message whose sender is
// outside its subtree (a message that does not exist answers as before).
func (a *API) messageInScope(r *http.Request, id engine.ID) error {
	if principalOf(r).dept == "" {
		return nil
	}
	m, err := a.cfg.Engine.Message(id)
	if err != nil {
		return err
	}
	return a.senderInScope(r, m.From)
}
