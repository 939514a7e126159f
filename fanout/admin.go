package fanout

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dingmq/ding/engine"
)

// The directory's admin errors.
var (
	// ErrAdminExists is returned by AddAdmin for a name an active admin
	// has (revoke it first, or choose another name).
	ErrAdminExists = engine.NewError(CodeAdminExists, "fanout: admin exists")
	// ErrUnknownAdmin is returned by RevokeAdmin for a name no admin ever
	// had.
	ErrUnknownAdmin = engine.NewError(CodeUnknownAdmin, "fanout: unknown admin")
	// ErrLastOwner is returned by RevokeAdmin for the only active owner:
	// the directory always keeps one admin who can manage the others.
	ErrLastOwner = engine.NewError(CodeLastOwner, "fanout: the last owner")
)

// Admin statuses.
const (
	AdminActive  = "active"
	AdminRevoked = "revoked"
)

// RoleOwner is the role that may do everything, managing admins included.
// The directory knows this one role only to keep an owner; what the
// others may do is the admin API's (channels/httpapi).
const RoleOwner = "owner"

// FirstOwner is the admin of the token dingd writes at its first start
// (DATA/admin.token), and of every admin token minted before admins had
// names. Until a change stores a record under this name, the directory
// answers for it as an active owner at generation 0 that never expires,
// so that an install needs no write to keep its first token working.
const FirstOwner = "owner"

// Admin is a named holder of an admin token. The token itself is never
// stored: only its generation, which a token must carry to be accepted.
type Admin struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// Dept is the department whose subtree a scoped role (dept-admin)
	// acts in; empty for the others.
	Dept   string `json:"dept,omitempty"`
	Status string `json:"status"` // AdminActive or AdminRevoked
	// Gen is the generation of the admin's current token. Adding an
	// admin again (after a revocation or an expiry) moves it, so no token
	// minted before works again.
	Gen uint64 `json:"gen"`
	// Expires is when the current token stops working; zero means never.
	Expires time.Time `json:"expires,omitzero"`
	Created time.Time `json:"created,omitzero"`
	Updated time.Time `json:"updated,omitzero"`
	// By is the admin who added (or last revoked) this one.
	By string `json:"by,omitempty"`
}

// Accepts reports whether a's token of generation gen may be used at now.
func (a Admin) Accepts(gen uint64, now time.Time) bool {
	return a.Status == AdminActive && a.Gen == gen && !a.Expired(now)
}

// Expired reports whether a's token has expired at now.
func (a Admin) Expired(now time.Time) bool {
	return !a.Expires.IsZero() && !now.Before(a.Expires)
}

// firstOwner is the record FirstOwner has before one is stored.
var firstOwner = Admin{Name: FirstOwner, Role: RoleOwner, Status: AdminActive}

func adminKey(name string) []byte { return dirKey(kindAdmin, name) }

// Admin returns an admin by name, revoked ones too. It reads memory only
// (the admin API calls it on every request).
func (d *Directory) Admin(name string) (Admin, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.adminLocked(name)
}

// adminLocked is Admin; the caller holds mu or wmu.
func (d *Directory) adminLocked(name string) (Admin, bool) {
	a, ok := d.admins[name]
	if !ok && name == FirstOwner {
		return firstOwner, true
	}
	return a, ok
}

// Admins returns every admin, revoked ones too, sorted by name.
func (d *Directory) Admins() []Admin {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]Admin, 0, len(d.admins)+1)
	for _, a := range d.admins {
		out = append(out, a)
	}
	if _, ok := d.admins[FirstOwner]; !ok {
		out = append(out, firstOwner)
	}
	slices.SortFunc(out, func(a, b Admin) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// AddAdmin adds an admin (name, role, dept and expiry from a), or adds
// back one that was revoked or whose token expired, with the next
// generation, durably and with an audit entry; it returns the record,
// whose Gen the new token must carry. The role is the caller's to check;
// a department, when given, must exist (ErrUnknownDepartment). An active
// admin of that name gives ErrAdminExists.
func (d *Directory) AddAdmin(a Admin, actor Actor) (Admin, error) {
	if err := engine.CheckName("admin", a.Name); err != nil {
		return Admin{}, err
	}
	if a.Role == "" {
		return Admin{}, fmt.Errorf("%w: admin %s has no role", engine.ErrBadName, a.Name)
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if a.Dept != "" {
		if _, ok := d.Department(a.Dept); !ok {
			return Admin{}, fmt.Errorf("%w: %q (the department of admin %s)", ErrUnknownDepartment, a.Dept, a.Name)
		}
	}
	c := d.newChange(d.now(), actor)
	old, had := d.adminLocked(a.Name)
	if had && old.Status == AdminActive && !old.Expired(c.now) {
		return Admin{}, fmt.Errorf("%w: %q (revoke it first, or choose another name)", ErrAdminExists, a.Name)
	}
	n := Admin{Name: a.Name, Role: a.Role, Dept: a.Dept, Status: AdminActive, Gen: old.Gen + 1,
		Expires: a.Expires.UTC().Truncate(time.Millisecond), Created: c.now, Updated: c.now, By: c.actor.Name}
	c.admins[a.Name] = n
	detail := "role " + n.Role
	if n.Dept != "" {
		detail += "; department " + n.Dept
	}
	if !n.Expires.IsZero() {
		detail += "; expires " + n.Expires.Format(time.RFC3339)
	}
	if had {
		detail = "added again (older tokens stay revoked): " + detail
	}
	c.audit("admin.add", a.Name, detail)
	if err := d.commit(c); err != nil {
		return Admin{}, fmt.Errorf("fanout: add admin %s: %w", a.Name, err)
	}
	return n, nil
}

// RevokeAdmin revokes an admin's token, durably and with an audit entry:
// once it returns, Admin answers the admin as revoked, so the next request
// with that token is refused. It returns the record and whether it had
// been revoked before (then nothing is written). An unknown name gives
// ErrUnknownAdmin; the only active owner, ErrLastOwner.
func (d *Directory) RevokeAdmin(name string, actor Actor) (a Admin, already bool, err error) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	old, ok := d.adminLocked(name)
	if !ok {
		return Admin{}, false, fmt.Errorf("%w: %q", ErrUnknownAdmin, name)
	}
	if old.Status == AdminRevoked {
		return old, true, nil
	}
	c := d.newChange(d.now(), actor)
	if old.Role == RoleOwner && !old.Expired(c.now) && d.activeOwnersLocked(c.now) <= 1 {
		return Admin{}, false, fmt.Errorf("%w: %q is the only active owner; add another owner first", ErrLastOwner, name)
	}
	n := old
	n.Status, n.Updated, n.By = AdminRevoked, c.now, c.actor.Name
	c.admins[name] = n
	c.audit("admin.revoke", name, "token revoked (role "+old.Role+")")
	if err := d.commit(c); err != nil {
		return Admin{}, false, fmt.Errorf("fanout: revoke admin %s: %w", name, err)
	}
	return n, false, nil
}

// activeOwnersLocked counts the owners whose tokens work at now. The
// caller holds wmu.
func (d *Directory) activeOwnersLocked(now time.Time) int {
	n := 0
	if _, ok := d.admins[FirstOwner]; !ok {
		n++ // firstOwner
	}
	for _, a := range d.admins {
		if a.Role == RoleOwner && a.Status == AdminActive && !a.Expired(now) {
			n++
		}
	}
	return n
}
