package httpapi

import (
	"context"
	"errors"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
)

// Offboarder removes a user for good: it marks them removed in the
// directory (fanout.Directory.RemoveUser, which takes them out of every
// group and their department), revokes their tokens, closes their live
// connections and stops their pending DINGs. It must be idempotent:
// offboarding a removed user again redoes whatever is left, so a failed
// offboarding can be retried. It returns an error wrapping
// fanout.ErrUnknownUser for a user not in the directory. It is called
// concurrently from request goroutines and may block until ctx ends.
type Offboarder interface {
	Offboard(ctx context.Context, user string, actor fanout.Actor) error
}

// adminSender is the sender of an announcement from the admins rather
// than from a user.
const adminSender = "admin"

func notFound(what string) error { return errf(http.StatusNotFound, "NOT_FOUND", "no such %s", what) }

type userJSON struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Phone      string `json:"phone,omitempty"`
	Email      string `json:"email,omitempty"`
	QuietHours string `json:"quiet_hours,omitempty"`
	Department string `json:"department,omitempty"`
}

func (u userJSON) user() fanout.User {
	return fanout.User{ID: u.ID, Name: u.Name, Phone: u.Phone, Email: u.Email, QuietHours: u.QuietHours, Department: u.Department}
}

// putUser: PUT /v1/users/{id} creates or replaces a user whole, for sync
// tools. Every field must be in the body ("" clears one): a body that
// leaves one out is refused, not taken to clear it, since that is how a
// change meant as partial (name only) used to wipe the phone and
// department. PATCH changes only the fields given. (PUT is not made an
// alias of PATCH: a sync tool that omits empty fields would then keep
// stale phone numbers without a word, and PUT would lose its create.)
// The one exception is "email", added after PUT's contract was set: left
// out, the stored address is kept, so that sync tools written before it
// neither fail nor wipe addresses set another way.
func (a *API) putUser(r *http.Request) (int, any, error) {
	var p struct {
		ID         string  `json:"id"`
		Name       *string `json:"name"`
		Phone      *string `json:"phone"`
		Email      *string `json:"email"`
		QuietHours *string `json:"quiet_hours"`
		Department *string `json:"department"`
	}
	if err := decode(r, &p); err != nil {
		return 0, nil, err
	}
	var missing []string
	u := userJSON{ID: p.ID}
	for _, f := range []struct {
		name string
		v    *string
		to   *string
	}{{"name", p.Name, &u.Name}, {"phone", p.Phone, &u.Phone}, {"quiet_hours", p.QuietHours, &u.QuietHours}, {"department", p.Department, &u.Department}} {
		if f.v == nil {
			missing = append(missing, strconv.Quote(f.name))
			continue
		}
		*f.to = *f.v
	}
	if len(missing) > 0 {
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST",
			`PUT /v1/users/{id} replaces the whole user, and the body lacks %s: send every field ("" clears one), or use PATCH /v1/users/{id} to change only some`,
			strings.Join(missing, ", "))
	}
	if id := r.PathValue("id"); id != "" {
		if u.ID != "" && u.ID != id {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "id in body differs from the path")
		}
		u.ID = id
	}
	if p.Email != nil {
		u.Email = *p.Email
	} else if old, ok := a.cfg.Directory.User(u.ID); ok {
		u.Email = old.Email
	}
	if err := a.userChangeInScope(r, u.ID, u.Department); err != nil {
		return 0, nil, err
	}
	created, err := a.cfg.Directory.PutUserAs(u.user(), actor(r))
	if err != nil {
		return 0, nil, err
	}
	got, _ := a.cfg.Directory.User(u.ID)
	if created {
		return http.StatusCreated, got, nil
	}
	return http.StatusOK, got, nil
}

// addUser: POST /v1/users creates a user, or adds back a removed one;
// an active user with that id is 409 USER_EXISTS (PATCH changes one).
func (a *API) addUser(r *http.Request) (int, any, error) {
	var u userJSON
	if err := decode(r, &u); err != nil {
		return 0, nil, err
	}
	if err := a.userChangeInScope(r, u.ID, u.Department); err != nil {
		return 0, nil, err
	}
	created, err := a.cfg.Directory.AddUserAs(u.user(), actor(r))
	if err != nil {
		return 0, nil, err
	}
	got, _ := a.cfg.Directory.User(u.ID)
	if created {
		return http.StatusCreated, got, nil
	}
	return http.StatusOK, got, nil
}

// patchUser: PATCH /v1/users/{id} changes the fields the body names
// ("" clears one), the others kept.
func (a *API) patchUser(r *http.Request) (int, any, error) {
	var p struct {
		Name       *string `json:"name"`
		Phone      *string `json:"phone"`
		Email      *string `json:"email"`
		QuietHours *string `json:"quiet_hours"`
		Department *string `json:"department"`
	}
	if err := decode(r, &p); err != nil {
		return 0, nil, err
	}
	id := r.PathValue("id")
	if err := a.userInScope(r, id); err != nil {
		return 0, nil, err
	}
	if p.Department != nil {
		if err := a.deptInScope(r, *p.Department); err != nil {
			return 0, nil, err
		}
	}
	u, err := a.cfg.Directory.UpdateUserAs(id, fanout.UserPatch{Name: p.Name, Phone: p.Phone, Email: p.Email, QuietHours: p.QuietHours, Department: p.Department}, actor(r))
	if errors.Is(err, fanout.ErrUnknownUser) {
		return 0, nil, notFound("active user")
	}
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, u, nil
}

func (a *API) putUsers(r *http.Request) (int, any, error) {
	var req struct {
		Users []userJSON `json:"users"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	us := make([]fanout.User, len(req.Users))
	for i, u := range req.Users {
		if err := a.userChangeInScope(r, u.ID, u.Department); err != nil {
			return 0, nil, err
		}
		us[i] = u.user()
	}
	n, err := a.cfg.Directory.PutUsersAs(us, actor(r))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"created": n, "total": len(us)}, nil
}

func (a *API) getUser(r *http.Request) (int, any, error) {
	if err := a.userInScope(r, r.PathValue("id")); err != nil {
		return 0, nil, err
	}
	u, ok := a.cfg.Directory.User(r.PathValue("id"))
	if !ok {
		return 0, nil, notFound("user")
	}
	return http.StatusOK, u, nil
}

func (a *API) listUsers(r *http.Request) (int, any, error) {
	status := r.URL.Query().Get("status")
	if status == "" {
		status = fanout.StatusActive
	}
	us, err := a.cfg.Directory.UsersByStatus(status)
	if err != nil {
		return 0, nil, err
	}
	if p := principalOf(r); p.dept != "" { // the users of its subtree only
		us = slices.DeleteFunc(us, func(u fanout.User) bool {
			return u.Status != fanout.StatusActive || !a.cfg.Directory.Within(u.Department, p.dept)
		})
	}
	return http.StatusOK, map[string]any{"users": us}, nil
}

// Revoker revokes a user's client tokens (all, or one device's) and
// closes the connections that used them (internal/node).
type Revoker interface {
	RevokeTokens(ctx context.Context, user, device string, actor fanout.Actor) (closed int, err error)
}

// revokeTokens: POST /v1/users/{id}/revoke-tokens {"device"}.
func (a *API) revokeTokens(r *http.Request) (int, any, error) {
	id := r.PathValue("id")
	var req struct {
		Device string `json:"device"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if req.Device != "" {
		if err := engine.CheckName("device", req.Device); err != nil {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "%v", err)
		}
	}
	if err := a.userInScope(r, id); err != nil {
		return 0, nil, err
	}
	if a.cfg.Revoker == nil {
		return 0, nil, errf(http.StatusNotImplemented, "UNSUPPORTED", "token revocation is not configured")
	}
	closed, err := a.cfg.Revoker.RevokeTokens(r.Context(), id, req.Device, actor(r))
	if errors.Is(err, fanout.ErrUnknownUser) {
		return 0, nil, notFound("user")
	}
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"user": id, "device": req.Device, "connections_closed": closed}, nil
}

// offboard removes a user through the Offboarder, or only from the
// directory when there is none.
func (a *API) offboard(ctx context.Context, id string, actor fanout.Actor) error {
	if a.cfg.Offboarder != nil {
		return a.cfg.Offboarder.Offboard(ctx, id, actor)
	}
	_, err := a.cfg.Directory.RemoveUser(id, actor)
	return err
}

// removedJSON answers DELETE /v1/users/{id}: the user as removed, and
// whether they had been removed before this request.
type removedJSON struct {
	fanout.User
	AlreadyRemoved bool `json:"already_removed"`
}

// deleteUser: DELETE /v1/users/{id} offboards a user. Removing a removed
// user again answers 200 with "already_removed": true and the user as
// the first removal left them (its "updated" and "tokens_before" do not
// move), not 409: a retry after a timeout or a half-failed offboarding
// is then no error, and the offboarding is redone, which finishes
// whatever the failed one left (Offboarder).
func (a *API) deleteUser(r *http.Request) (int, any, error) {
	id := r.PathValue("id")
	if err := a.userInScope(r, id); err != nil {
		return 0, nil, err
	}
	u, ok := a.cfg.Directory.User(id)
	if !ok {
		return 0, nil, notFound("user")
	}
	already := u.Status == fanout.StatusRemoved
	if err := a.offboard(r.Context(), id, actor(r)); err != nil {
		if errors.Is(err, fanout.ErrUnknownUser) {
			return 0, nil, notFound("user")
		}
		return 0, nil, err
	}
	u, _ = a.cfg.Directory.User(id)
	return http.StatusOK, removedJSON{User: u, AlreadyRemoved: already}, nil
}

// userChangeInScope refuses, for a dept-admin, a user change that would
// touch a user outside its subtree or move one out of it: the user, if
// they exist, must be an active user of the subtree, and their new
// department in it.
func (a *API) userChangeInScope(r *http.Request, id, dept string) error {
	if principalOf(r).dept == "" {
		return nil
	}
	if _, exists := a.cfg.Directory.User(id); exists {
		if err := a.userInScope(r, id); err != nil {
			return err
		}
	}
	return a.deptInScope(r, dept)
}

// groupTarget is the recipient target of GET /v1/groups/{id}'s id: "all"
// and "dept:ID" as they are, an ad-hoc group's id as "group:ID".
func groupTarget(id string) string {
	if id == fanout.TargetAll || strings.HasPrefix(id, fanout.TargetDept) {
		return id
	}
	return fanout.TargetGroup + id
}

// departmentJSON is a department with its own users and sub-departments.
type departmentJSON struct {
	fanout.Department
	Members        []string `json:"members"`        // users of this department itself
	SubDepartments []string `json:"subdepartments"` // direct children
	TotalMembers   int      `json:"total_members"`  // users of the whole subtree: len(Expand("dept:ID"))
}

func (a *API) department(id string) (departmentJSON, error) {
	d := a.cfg.Directory
	dep, ok := d.Department(id)
	if !ok {
		return departmentJSON{}, notFound("department")
	}
	out := departmentJSON{Department: dep, Members: d.DepartmentUsers(id), SubDepartments: []string{}}
	for _, s := range d.SubDepartments(id) {
		out.SubDepartments = append(out.SubDepartments, s.ID)
	}
	all, err := d.Expand(fanout.TargetDept + id)
	if err != nil {
		return departmentJSON{}, notFound("department") // removed meanwhile
	}
	out.TotalMembers = len(all)
	return out, nil
}

func (a *API) putDepartment(r *http.Request) (int, any, error) {
	var req struct {
		Name   string `json:"name"`
		Parent string `json:"parent"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	id := r.PathValue("id")
	created, err := a.cfg.Directory.PutDepartment(fanout.Department{ID: id, Name: req.Name, Parent: req.Parent}, actor(r))
	if err != nil {
		return 0, nil, err
	}
	out, err := a.department(id)
	if err != nil {
		return 0, nil, err
	}
	if created {
		return http.StatusCreated, out, nil
	}
	return http.StatusOK, out, nil
}

func (a *API) getDepartment(r *http.Request) (int, any, error) {
	if err := a.deptInScope(r, r.PathValue("id")); err != nil {
		return 0, nil, err
	}
	out, err := a.department(r.PathValue("id"))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, out, nil
}

func (a *API) listDepartments(r *http.Request) (int, any, error) {
	ds := a.cfg.Directory.Departments()
	if p := principalOf(r); p.dept != "" { // its subtree only
		ds = slices.DeleteFunc(ds, func(d fanout.Department) bool { return !a.cfg.Directory.Within(d.ID, p.dept) })
	}
	return http.StatusOK, map[string]any{"departments": ds}, nil
}

func (a *API) deleteDepartment(r *http.Request) (int, any, error) {
	id := r.PathValue("id")
	dep, ok := a.cfg.Directory.Department(id)
	if !ok {
		return 0, nil, notFound("department")
	}
	if err := a.cfg.Directory.RemoveDepartment(id, actor(r)); err != nil {
		if errors.Is(err, fanout.ErrUnknownDepartment) {
			return 0, nil, notFound("department")
		}
		return 0, nil, err
	}
	return http.StatusOK, dep, nil
}

// groupJSON is an ad-hoc group, or a derived one ("all", "dept:ID").
type groupJSON struct {
	fanout.Group
	Derived bool `json:"derived"`
}

func (a *API) putGroup(r *http.Request) (int, any, error) {
	var req struct {
		Name    string   `json:"name"`
		Members []string `json:"members"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	id := r.PathValue("id")
	created, err := a.cfg.Directory.PutGroup(fanout.Group{ID: id, Name: req.Name, Members: req.Members}, actor(r))
	if err != nil {
		return 0, nil, err
	}
	g, _ := a.cfg.Directory.Group(id)
	if created {
		return http.StatusCreated, groupJSON{Group: g}, nil
	}
	return http.StatusOK, groupJSON{Group: g}, nil
}

func (a *API) groupMembers(r *http.Request) (int, any, error) {
	var req struct {
		Add    []string `json:"add"`
		Remove []string `json:"remove"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	g, err := a.cfg.Directory.UpdateMembers(r.PathValue("id"), req.Add, req.Remove, actor(r))
	if errors.Is(err, fanout.ErrUnknownGroup) {
		return 0, nil, notFound("group")
	}
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, groupJSON{Group: g}, nil
}

func (a *API) getGroup(r *http.Request) (int, any, error) {
	id := r.PathValue("id")
	d := a.cfg.Directory
	if err := a.targetsInScope(r, []string{groupTarget(id)}); err != nil {
		return 0, nil, err
	}
	if g, ok := d.Group(id); ok {
		return http.StatusOK, groupJSON{Group: g}, nil
	}
	name := "All staff"
	if dep, ok := strings.CutPrefix(id, fanout.TargetDept); ok {
		x, ok := d.Department(dep)
		if !ok {
			return 0, nil, notFound("department")
		}
		name = x.Name
	} else if id != fanout.TargetAll {
		return 0, nil, notFound("group")
	}
	ids, err := d.Expand(id)
	if err != nil {
		return 0, nil, notFound("group")
	}
	return http.StatusOK, groupJSON{Group: fanout.Group{ID: id, Name: name, Members: ids}, Derived: true}, nil
}

func (a *API) listGroups(r *http.Request) (int, any, error) {
	out := []groupJSON{}
	for _, g := range a.cfg.Directory.Groups() {
		if a.targetsInScope(r, []string{fanout.TargetGroup + g.ID}) == nil { // a dept-admin: those of its subtree's users only
			out = append(out, groupJSON{Group: g})
		}
	}
	return http.StatusOK, map[string]any{"groups": out}, nil
}

func (a *API) deleteGroup(r *http.Request) (int, any, error) {
	id := r.PathValue("id")
	g, ok := a.cfg.Directory.Group(id)
	if !ok {
		return 0, nil, notFound("group")
	}
	if err := a.cfg.Directory.RemoveGroup(id, actor(r)); err != nil {
		if errors.Is(err, fanout.ErrUnknownGroup) {
			return 0, nil, notFound("group")
		}
		return 0, nil, err
	}
	return http.StatusOK, groupJSON{Group: g}, nil
}

// importResult is the Diff and, with remove_missing, who was offboarded.
// maxQuietRemovals is the most users an import may offboard without
// force=1 (also never more than a tenth of the active users).
const maxQuietRemovals = 50

type importResult struct {
	fanout.Diff
	Offboarded []string `json:"offboarded"`
}

func (a *API) importDirectory(r *http.Request) (int, any, error) {
	q := r.URL.Query()
	format := q.Get("format")
	if format == "" {
		format = "json"
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "text/csv" {
			format = "csv"
		}
	}
	flag := func(name string) (bool, error) {
		switch q.Get(name) {
		case "", "0", "false":
			return false, nil
		case "1", "true":
			return true, nil
		}
		return false, errf(http.StatusBadRequest, "BAD_REQUEST", "%s must be 1 or 0", name)
	}
	removeMissing, err := flag("remove_missing")
	if err != nil {
		return 0, nil, err
	}
	dryRun, err := flag("dry_run")
	if err != nil {
		return 0, nil, err
	}
	force, err := flag("force")
	if err != nil {
		return 0, nil, err
	}
	var org fanout.Org
	switch format {
	case "json":
		org, err = fanout.ParseOrgJSON(r.Body)
	case "csv":
		org, err = fanout.ParseOrgCSV(r.Body)
	default:
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "format must be json or csv")
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return 0, nil, errf(http.StatusRequestEntityTooLarge, "TOO_LARGE", "import file larger than %d bytes", mbe.Limit)
	}
	if err != nil {
		return 0, nil, err
	}
	if removeMissing && !dryRun && !force {
		// A file that lost most of its rows (an empty export, the wrong
		// file) must not offboard the company: more than a tenth of the
		// active users, or more than maxQuietRemovals, needs force=1.
		preview, err := a.cfg.Directory.Import(org, fanout.ImportOptions{RemoveMissing: true, DryRun: true}, actor(r))
		if err != nil {
			return 0, nil, err
		}
		us, _ := a.cfg.Directory.UsersByStatus(fanout.StatusActive)
		active := len(us)
		if n := len(preview.Missing); n > 0 && (n*10 > active || n > maxQuietRemovals) {
			return 0, nil, errf(http.StatusConflict, "TOO_MANY_REMOVALS",
				"this import would offboard %d of %d active users (more than 10%% or %d): nothing was changed; review the diff (dry_run=1) and send force=1 to apply it",
				n, active, maxQuietRemovals)
		}
	}
	df, err := a.cfg.Directory.Import(org, fanout.ImportOptions{RemoveMissing: removeMissing, DryRun: dryRun}, actor(r))
	if err != nil {
		return 0, nil, err
	}
	res := importResult{Diff: df, Offboarded: []string{}}
	if removeMissing && !dryRun {
		for _, id := range df.Missing {
			if err := a.offboard(r.Context(), id, actor(r)); err != nil {
				a.cfg.Logger.Error("offboarding after import failed", "user", id, "err", err)
				return 0, nil, errf(http.StatusInternalServerError, "OFFBOARD_FAILED",
					"the import was applied, but offboarding %s failed after %d of %d missing users; run the import again",
					id, len(res.Offboarded), len(df.Missing))
			}
			res.Offboarded = append(res.Offboarded, id)
		}
	}
	return http.StatusOK, res, nil
}

func (a *API) audit(r *http.Request) (int, any, error) {
	q := r.URL.Query()
	var after uint64
	if s := q.Get("after"); s != "" {
		var err error
		if after, err = strconv.ParseUint(s, 10, 64); err != nil {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "after must be an audit sequence number")
		}
	}
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "limit must be 1 to 1000")
		}
		limit = n
	}
	es, err := a.cfg.Directory.Audit(after, limit)
	if err != nil {
		return 0, nil, err
	}
	next := after
	if len(es) > 0 {
		next = es[len(es)-1].Seq
	}
	return http.StatusOK, map[string]any{"entries": es, "next": next}, nil
}

// verifyAudit walks the audit log's hash chain (GET /v1/audit/verify).
func (a *API) verifyAudit(r *http.Request) (int, any, error) {
	c, err := a.cfg.Directory.VerifyAudit(r.URL.Query().Get("expect"))
	if errors.Is(err, fanout.ErrBadExpect) {
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "expect must be a head hash: 64 hex digits")
	}
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, c, nil
}

// importLimit is the default body limit of POST /v1/directory/import.
const importLimit = 32 << 20

func (a *API) importBodyLimit() int64 {
	if a.cfg.MaxImportBytes > 0 {
		return a.cfg.MaxImportBytes
	}
	return importLimit
}
