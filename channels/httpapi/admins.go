package httpapi

import (
	"errors"
	"net/http"
	"time"

	"github.com/dingmq/ding/fanout"
)

// adminRoutes registers the routes that manage admins (access.go):
//
//	POST /v1/admins                 {"name","role","dept","ttl_seconds"} -> 201 {"name","role","dept","expires",
//	                                   "created","token"}: a new admin (or one revoked or expired, added
//	                                   again) and its token, shown this once (the server keeps only its
//	                                   generation). ttl_seconds 0: the token does not expire.
//	                                   400 UNKNOWN_ROLE, 400 BAD_REQUEST (dept-admin without a dept, or a
//	                                   dept for another role), 422 UNKNOWN_DEPARTMENT, 409 ADMIN_EXISTS
//	GET  /v1/admins                 -> {"admins":[{"name","role","dept","status","expires","expired",
//	                                   "created","updated","by"}]}, revoked ones too
//	POST /v1/admins/{name}/revoke   -> the admin, "status": "revoked", and "already_revoked": the next
//	                                   request with its token gets 401. 404 UNKNOWN_ADMIN; 409 LAST_OWNER
//	                                   for the only active owner
//	GET  /v1/admins/me              -> the caller: {"name","role","dept","expires","permissions"} (any admin)
func (a *API) adminRoutes() {
	a.admin("POST /v1/admins", PermAdmins, a.addAdmin)
	a.admin("GET /v1/admins", PermAdmins, a.listAdmins)
	a.admin("POST /v1/admins/{name}/revoke", PermAdmins, a.revokeAdmin)
	a.admin("GET /v1/admins/me", PermAnyAdmin, a.me)
}

// adminJSON is an admin as the API shows it: never a token, nor its
// generation.
type adminJSON struct {
	Name    string     `json:"name"`
	Role    string     `json:"role"`
	Dept    string     `json:"dept,omitempty"`
	Status  string     `json:"status"`
	Expires *time.Time `json:"expires,omitempty"`
	Expired bool       `json:"expired,omitempty"`
	Created *time.Time `json:"created,omitempty"`
	Updated *time.Time `json:"updated,omitempty"`
	By      string     `json:"by,omitempty"`
	// Set by some routes only.
	Token          string       `json:"token,omitempty"`           // POST /v1/admins, this once
	AlreadyRevoked *bool        `json:"already_revoked,omitempty"` // POST /v1/admins/{name}/revoke
	Permissions    []Permission `json:"permissions,omitempty"`     // GET /v1/admins/me
}

func newAdminJSON(ad fanout.Admin, now time.Time) adminJSON {
	opt := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC()
		return &t
	}
	return adminJSON{Name: ad.Name, Role: ad.Role, Dept: ad.Dept, Status: ad.Status, Expires: opt(ad.Expires),
		Expired: ad.Status == fanout.AdminActive && ad.Expired(now), Created: opt(ad.Created), Updated: opt(ad.Updated), By: ad.By}
}

func (a *API) addAdmin(r *http.Request) (int, any, error) {
	var req struct {
		Name       string `json:"name"`
		Role       string `json:"role"`
		Dept       string `json:"dept"`
		TTLSeconds int64  `json:"ttl_seconds"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	role, ok := roleNamed(req.Role)
	switch {
	case req.Role == "":
		return 0, nil, errf(http.StatusBadRequest, "UNKNOWN_ROLE", "role is required: %s", roleNames())
	case !ok:
		return 0, nil, errf(http.StatusBadRequest, "UNKNOWN_ROLE", "unknown role %q: want %s", req.Role, roleNames())
	case role.Scoped && req.Dept == "":
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "role %s acts within one department's subtree: give its department (dept, dingctl --dept)", role.Name)
	case !role.Scoped && req.Dept != "":
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "role %s acts on the whole directory and takes no department; a department's admin is role %s", role.Name, RoleDeptAdmin)
	case req.TTLSeconds < 0 || req.TTLSeconds > 100*365*24*3600:
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "ttl_seconds must be 0 (no expiry) or a positive number of seconds up to 100 years")
	}
	now := time.Now()
	var expires time.Time
	if req.TTLSeconds > 0 {
		expires = now.Add(time.Duration(req.TTLSeconds) * time.Second).Truncate(time.Second) // a token's expiry is in whole seconds
	}
	ad, err := a.cfg.Directory.AddAdmin(fanout.Admin{Name: req.Name, Role: role.Name, Dept: req.Dept, Expires: expires}, actor(r))
	if err != nil {
		return 0, nil, err
	}
	tok, err := a.cfg.Keys.MintAdminFor(ad.Name, ad.Gen, ad.Expires)
	if err != nil {
		return 0, nil, err
	}
	out := newAdminJSON(ad, now)
	out.Token = tok
	return http.StatusCreated, out, nil
}

func (a *API) listAdmins(r *http.Request) (int, any, error) {
	now := time.Now()
	out := []adminJSON{}
	for _, ad := range a.cfg.Directory.Admins() {
		out = append(out, newAdminJSON(ad, now))
	}
	return http.StatusOK, map[string]any{"admins": out}, nil
}

func (a *API) revokeAdmin(r *http.Request) (int, any, error) {
	ad, already, err := a.cfg.Directory.RevokeAdmin(r.PathValue("name"), actor(r))
	if errors.Is(err, fanout.ErrUnknownAdmin) {
		return 0, nil, errf(http.StatusNotFound, "UNKNOWN_ADMIN", "no admin %q (dingctl admin list)", r.PathValue("name"))
	}
	if err != nil {
		return 0, nil, err
	}
	out := newAdminJSON(ad, time.Now())
	out.AlreadyRevoked = &already
	return http.StatusOK, out, nil
}

func (a *API) me(r *http.Request) (int, any, error) {
	p := principalOf(r)
	ad, _ := a.cfg.Directory.Admin(p.name)
	out := newAdminJSON(ad, time.Now())
	out.Permissions = append([]Permission{PermAnyAdmin}, p.role.Permissions...)
	return http.StatusOK, out, nil
}
