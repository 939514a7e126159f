package fanout

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/mail"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
)

var (
	// ErrBadPhone is returned by PutUser for a phone number not in E.164 form.
	ErrBadPhone = engine.NewError(engine.CodeBadRequest, "fanout: phone must be E.164, like +14155550100")
	// ErrBadEmail is returned by PutUser for an e-mail address that is not
	// one bare address (RFC 5322 addr-spec, like ana@example.com).
	ErrBadEmail = engine.NewError(engine.CodeBadRequest, "fanout: email must be one address, like ana@example.com")
	// ErrBadQuietHours is returned by PutUser for quiet hours that do not
	// parse (see engine.ParseQuietHours).
	ErrBadQuietHours = engine.NewError(engine.CodeBadRequest, "fanout: bad quiet hours")
	// ErrBadStatus is returned for a user status other than "active" and
	// "removed" (as a filter, also "all"), and by PutUser for "removed":
	// users are removed with RemoveUser.
	ErrBadStatus = engine.NewError(engine.CodeBadRequest, "fanout: bad user status")
	// ErrUnknownUser is returned by RemoveUser for a user not in the
	// directory, and by group changes for a member who is not an active
	// user.
	ErrUnknownUser = engine.NewError(CodeUnknownUser, "fanout: unknown user")
	// ErrUserExists is returned by AddUserAs for an id an active user has.
	ErrUserExists = engine.NewError(CodeUserExists, "fanout: user exists")
)

// User statuses. A removed user stays in the store, for history and the
// audit log, but receives nothing and belongs to no department or group.
const (
	StatusActive  = "active"
	StatusRemoved = "removed"
)

// User is a person in the directory.
type User struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Phone string `json:"phone,omitempty"` // E.164; never logged
	// Email is the address DING e-mail steps go to; never logged.
	Email string `json:"email,omitempty"`
	// QuietHours is a daily window in which non-critical DINGs are
	// refused: "22:00-07:00" (UTC) or "22:00-07:00 Europe/Berlin".
	QuietHours string `json:"quiet_hours,omitempty"`
	// Status is StatusActive or StatusRemoved; PutUser sets it to active
	// (empty in records written before statuses existed means active).
	Status string `json:"status"`
	// Department is the id of the user's department; empty means none.
	Department string    `json:"department,omitempty"`
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
	// TokensBefore revokes the user's client tokens issued up to this
	// moment (offboarding, RevokeTokens); DeviceTokensBefore, one
	// device's. They survive a re-add: a token minted before a removal
	// never works again. Puts keep them; only revocations move them.
	TokensBefore       time.Time            `json:"tokens_before,omitzero"`
	DeviceTokensBefore map[string]time.Time `json:"device_tokens_before,omitempty"`
}

// AcceptsToken reports whether a client token for device, issued at
// issued, may be used by u: u is active and the token was issued after
// its revocations.
func (u User) AcceptsToken(device string, issued time.Time) bool {
	return u.Status == StatusActive && issued.After(u.TokensBefore) && issued.After(u.DeviceTokensBefore[device])
}

// same reports whether u and v differ in nothing but their timestamps.
func (u User) same(v User) bool {
	return u.ID == v.ID && u.Name == v.Name && u.Phone == v.Phone && u.Email == v.Email && u.QuietHours == v.QuietHours &&
		u.Status == v.Status && u.Department == v.Department
}

var e164 = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)

// Directory key layout (drawn in the package doc): everything lives under
// engine.PrefixDirectory, then one byte for the kind of record.
const (
	kindUser  = 'u' // 'u' 'u' | user id  -> JSON User
	kindDept  = 'd' // 'u' 'd' | dept id  -> JSON Department
	kindGroup = 'g' // 'u' 'g' | group id -> JSON Group
	kindAudit = 'a' // 'u' 'a' | seq (8)  -> JSON AuditEntry
	kindAdmin = 'm' // 'u' 'm' | admin name -> JSON Admin
)

func dirKey(kind byte, id string) []byte {
	return append([]byte{engine.PrefixDirectory, kind}, id...)
}

func userKey(id string) []byte { return dirKey(kindUser, id) }

// Committer makes the directory's changes durable. *engine.Engine
// implements it, so that they go through the engine's one commit pipeline:
// ordered with every other write, and a store failure stops the engine.
type Committer interface {
	// Commit writes ch and returns once it is durable and installed
	// (ch.Applied has run). Safe for concurrent use; it blocks until then.
	Commit(ctx context.Context, ch engine.Change) error
}

var _ Committer = (*engine.Engine)(nil)

// ErrNoCommitter is returned by every change made before SetCommitter.
var ErrNoCommitter = engine.NewError(engine.CodeInternal, "fanout: the directory has no committer (SetCommitter)")

// Directory is the company's address book: users, the department tree,
// ad-hoc groups and the audit log of every change. Reads are served from
// memory and never wait for the store; every change is one write with its
// audit entries, made through the Committer (the engine's commit
// pipeline), and installed in memory once it is applied, before any later
// write of the engine is built, so that an op after a removal sees it.
// It implements engine.Recipients and engine.Contacts.
//
// Writers are serialized by wmu and hold it until their change is durable;
// the change is installed by the engine's commit loop (engine.Change's
// Applied), which takes mu only for the swap, so a reader (Resolve, on
// every submit) never waits for an fsync. Lock order: wmu, mu, cacheMu;
// the commit loop takes mu and cacheMu, never wmu.
type Directory struct {
	st    store.Store // guarded by mu (Reload replaces it)
	clock engine.Clock

	wmu       sync.Mutex // serializes writers
	committer Committer  // set once by SetCommitter; guarded by wmu
	auditSeq  uint64     // last audit entry written; guarded by wmu (written by the commit loop while a writer holds it)
	auditHead [32]byte   // its hash, the next entry's prev; zero before the chain starts; guarded like auditSeq

	// The maps and indexes below are written with wmu and mu held, and
	// read with either held. Slices in them are never modified in place
	// once installed: a change installs new ones.
	mu        sync.RWMutex
	users     map[string]User              // every user, removed ones too
	quiet     map[string]engine.QuietHours // parsed User.QuietHours, for users that have them
	active    []string                     // sorted ids of active users: the "all" group
	depts     map[string]Department
	children  map[string][]string // department id ("" for the roots) -> sorted ids of its sub-departments
	deptUsers map[string][]string // department id -> sorted ids of its own (active) users
	groups    map[string]Group    // ad-hoc groups; Members sorted, all active users
	admins    map[string]Admin    // stored admins, revoked ones too (FirstOwner implicit until stored)

	cacheMu sync.Mutex
	subtree map[string][]string // department id -> sorted active users of its subtree; guarded by cacheMu, cleared on every change
}

var (
	_ engine.Recipients = (*Directory)(nil)
	_ engine.Contacts   = (*Directory)(nil)
)

// SetCommitter sets what makes changes durable (the engine). Call it
// once, before the first change.
func (d *Directory) SetCommitter(c Committer) {
	d.wmu.Lock()
	d.committer = c
	d.wmu.Unlock()
}

// store is the store the directory reads (Reload may replace it).
func (d *Directory) store() store.Store {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.st
}

// Reload reads the directory again from st, which it reads from then on:
// what a cluster node does when its copy of the directory's partition
// changed under it (it applied the owner's changes) or when it starts or
// stops owning that partition (internal/node). It waits for a change in
// progress, and returns the users that were active and are not after it
// (removed by what it read), for the caller to close their connections
// and stop what they were owed.
func (d *Directory) Reload(st store.Store) (removed []string, err error) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	fresh, err := OpenDirectory(st, d.clock)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	for _, id := range d.active {
		if u, ok := fresh.users[id]; !ok || u.Status != StatusActive {
			removed = append(removed, id)
		}
	}
	d.st = st
	d.auditSeq, d.auditHead = fresh.auditSeq, fresh.auditHead
	d.users, d.quiet, d.active = fresh.users, fresh.quiet, fresh.active
	d.depts, d.children, d.deptUsers = fresh.depts, fresh.children, fresh.deptUsers
	d.groups, d.admins = fresh.groups, fresh.admins
	d.mu.Unlock()
	d.cacheMu.Lock()
	d.subtree = map[string][]string{}
	d.cacheMu.Unlock()
	return removed, nil
}

// OpenDirectory loads the directory from st. Changes need a committer
// (SetCommitter), which is opened after the directory: the engine reads
// the directory as its Recipients.
func OpenDirectory(st store.Store, clock engine.Clock) (*Directory, error) {
	if clock == nil {
		clock = engine.SystemClock{}
	}
	d := &Directory{
		st: st, clock: clock,
		users: map[string]User{}, quiet: map[string]engine.QuietHours{},
		depts: map[string]Department{}, groups: map[string]Group{}, admins: map[string]Admin{},
		deptUsers: map[string][]string{}, subtree: map[string][]string{},
	}
	err := loadKind(st, kindUser, func(u *User) {
		if u.Status == "" {
			u.Status = StatusActive
		}
		d.users[u.ID] = *u
		if q, err := engine.ParseQuietHours(u.QuietHours); err == nil && u.QuietHours != "" {
			d.quiet[u.ID] = q
		}
	})
	if err == nil {
		err = loadKind(st, kindDept, func(dep *Department) { d.depts[dep.ID] = *dep })
	}
	if err == nil {
		err = loadKind(st, kindGroup, func(g *Group) {
			if g.Members == nil {
				g.Members = []string{}
			}
			d.groups[g.ID] = *g
		})
	}
	if err == nil {
		err = loadKind(st, kindAdmin, func(a *Admin) { d.admins[a.Name] = *a })
	}
	if err == nil {
		d.auditSeq, d.auditHead, err = lastAudit(st)
	}
	if err != nil {
		return nil, fmt.Errorf("fanout: load directory: %w", err)
	}
	var act []string
	for id, u := range d.users {
		if u.Status == StatusActive {
			act = append(act, id)
		}
	}
	slices.Sort(act)
	d.active = act
	for _, id := range act {
		if dep := d.users[id].Department; dep != "" {
			d.deptUsers[dep] = append(d.deptUsers[dep], id)
		}
	}
	d.children = childrenOf(d.depts)
	return d, nil
}

// loadKind decodes every JSON record of one kind.
func loadKind[T any](st store.Store, kind byte, fn func(*T)) error {
	p := dirKey(kind, "")
	var derr error
	err := st.Scan(p, []byte{engine.PrefixDirectory, kind + 1}, func(k, v []byte) bool {
		var x T
		if derr = json.Unmarshal(v, &x); derr != nil {
			derr = fmt.Errorf("record %q: %w", k, derr)
			return false
		}
		fn(&x)
		return true
	})
	if err == nil {
		err = derr
	}
	return err
}

// checkUser validates u and fills in its status.
func checkUser(u *User) error {
	if err := engine.CheckName("user", u.ID); err != nil {
		return err
	}
	if u.ID == TargetAll {
		return fmt.Errorf("%w: user id %q is reserved for the all-staff group", engine.ErrBadName, u.ID)
	}
	if u.Phone != "" && !e164.MatchString(u.Phone) {
		return fmt.Errorf("%w (user %s)", ErrBadPhone, u.ID)
	}
	if u.Email != "" && !ValidEmail(u.Email) {
		return fmt.Errorf("%w (user %s)", ErrBadEmail, u.ID)
	}
	if len(u.Name) > 200 {
		return fmt.Errorf("%w: display name of %s longer than 200 bytes", engine.ErrBadName, u.ID)
	}
	if _, err := engine.ParseQuietHours(u.QuietHours); err != nil {
		return fmt.Errorf("%w: user %s: %v", ErrBadQuietHours, u.ID, err)
	}
	switch u.Status {
	case "", StatusActive:
		u.Status = StatusActive
	default:
		return fmt.Errorf("%w: %q for user %s (remove users with RemoveUser)", ErrBadStatus, u.Status, u.ID)
	}
	if u.Department != "" {
		if err := engine.CheckName("department", u.Department); err != nil {
			return err
		}
	}
	return nil
}

// ValidEmail reports whether s is one bare e-mail address (an RFC 5322
// addr-spec such as ana@example.com: no display name, no angle brackets,
// no list), of at most 254 bytes, with a domain that has a dot or is
// "localhost".
func ValidEmail(s string) bool {
	if len(s) > 254 || strings.TrimSpace(s) != s {
		return false
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Name != "" || a.Address != s {
		return false
	}
	domain := s[strings.LastIndexByte(s, '@')+1:]
	return strings.Contains(domain, ".") || domain == "localhost"
}

// PutUser creates or updates a user, durably, as PutUsersAs with actor
// "system". It reports whether the user is new.
func (d *Directory) PutUser(u User) (created bool, err error) {
	n, err := d.PutUsersAs([]User{u}, Actor{})
	return n == 1, err
}

// PutUsers is PutUsersAs with actor "system".
func (d *Directory) PutUsers(us []User) (created int, err error) {
	return d.PutUsersAs(us, Actor{})
}

// AddUserAs creates user u, or adds back a removed user with that id (a
// re-add: their history is kept, their old tokens stay revoked); an
// active user with that id is ErrUserExists (change them with
// UpdateUserAs). It reports whether the id is new.
func (d *Directory) AddUserAs(u User, actor Actor) (created bool, err error) {
	if err := checkUser(&u); err != nil {
		return false, err
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if old, ok := d.users[u.ID]; ok && old.Status == StatusActive {
		return false, fmt.Errorf("%w: %q", ErrUserExists, u.ID)
	}
	if u.Department != "" {
		if _, ok := d.depts[u.Department]; !ok {
			return false, fmt.Errorf("%w: %q (user %s)", ErrUnknownDepartment, u.Department, u.ID)
		}
	}
	c := d.newChange(d.now(), actor)
	created = c.putUser(u, "")
	if err := d.commit(c); err != nil {
		return false, fmt.Errorf("fanout: add user %s: %w", u.ID, err)
	}
	return created, nil
}

// UserPatch is a change to some of a user's fields: nil leaves a field as
// it is, "" clears it (a name cannot be cleared).
type UserPatch struct {
	Name, Phone, Email, QuietHours, Department *string
}

// UpdateUserAs changes the fields p sets of the active user id, the
// others kept; unknown or removed users are ErrUnknownUser.
func (d *Directory) UpdateUserAs(id string, p UserPatch, actor Actor) (User, error) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	u, ok := d.users[id]
	if !ok || u.Status != StatusActive {
		return User{}, fmt.Errorf("%w: %q", ErrUnknownUser, id)
	}
	for _, f := range []struct {
		dst *string
		v   *string
	}{{&u.Name, p.Name}, {&u.Phone, p.Phone}, {&u.Email, p.Email}, {&u.QuietHours, p.QuietHours}, {&u.Department, p.Department}} {
		if f.v != nil {
			*f.dst = *f.v
		}
	}
	if err := checkUser(&u); err != nil {
		return User{}, err
	}
	if u.Department != "" {
		if _, ok := d.depts[u.Department]; !ok {
			return User{}, fmt.Errorf("%w: %q (user %s)", ErrUnknownDepartment, u.Department, u.ID)
		}
	}
	c := d.newChange(d.now(), actor)
	c.putUser(u, "")
	if err := d.commit(c); err != nil {
		return User{}, fmt.Errorf("fanout: update user %s: %w", id, err)
	}
	return d.users[id], nil
}

// PutUserAs is PutUsersAs for one user; it reports whether the user is new.
func (d *Directory) PutUserAs(u User, actor Actor) (created bool, err error) {
	n, err := d.PutUsersAs([]User{u}, actor)
	return n == 1, err
}

// PutUsersAs creates or updates (replaces) many users in one synced write
// with their audit entries: all or none. It returns how many were new. A
// user's department must exist; putting a removed user makes them active
// again (in no group). A user identical to the stored one is not
// rewritten. If the same id appears twice, the last one wins.
func (d *Directory) PutUsersAs(us []User, actor Actor) (created int, err error) {
	for i := range us {
		if err := checkUser(&us[i]); err != nil {
			return 0, err
		}
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	now := d.now()
	c := d.newChange(now, actor)
	for _, u := range us {
		if u.Department != "" {
			if _, ok := d.depts[u.Department]; !ok {
				return 0, fmt.Errorf("%w: %q (user %s)", ErrUnknownDepartment, u.Department, u.ID)
			}
		}
		if c.putUser(u, "") {
			created++
		}
	}
	if err := d.commit(c); err != nil {
		return 0, fmt.Errorf("fanout: put %d users: %w", len(us), err)
	}
	return created, nil
}

// RemoveUser marks a user removed (offboarding): they stay in the store
// with their history, but leave every group and their department, and
// Resolve, Contact and Expand refuse them from now on; Updated and
// TokensBefore become the removal's time. The change and its audit entry
// are one write. Removing a removed user changes nothing (not even
// TokensBefore) and returns them. Unknown users give ErrUnknownUser. Revoking tokens and
// closing connections is the caller's job; RemoveUserWith lets it do more
// in the same write.
func (d *Directory) RemoveUser(id string, actor Actor) (User, error) {
	return d.RemoveUserWith(id, actor, nil)
}

// RemoveUserWith is RemoveUser with the write made by commit, which gets
// the directory's change (whose Removes names the user) and must make it
// durable with whatever else belongs in the same batch (the node's
// offboarding: engine.Offboard stops the user's DINGs and burns their
// secret messages). commit is called, with a change that writes nothing,
// for a user already removed, so that a retry finishes what is left. nil
// means the committer's Commit.
func (d *Directory) RemoveUserWith(id string, actor Actor, commit func(engine.Change) error) (User, error) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if commit == nil {
		if d.committer == nil {
			return User{}, ErrNoCommitter
		}
		commit = func(ch engine.Change) error { return d.committer.Commit(context.Background(), ch) }
	}
	u, ok := d.users[id]
	if !ok {
		return User{}, fmt.Errorf("%w: %q", ErrUnknownUser, id)
	}
	if u.Status == StatusRemoved {
		if err := commit(engine.Change{Write: func(engine.Writer) error { return nil }, Removes: []string{id}}); err != nil {
			return User{}, fmt.Errorf("fanout: remove user %s: %w", id, err)
		}
		return u, nil
	}
	c := d.newChange(d.now(), actor)
	var left []string
	for _, gid := range slices.Sorted(maps.Keys(d.groups)) {
		g := d.groups[gid]
		if _, in := slices.BinarySearch(g.Members, id); in {
			g.Members = slices.DeleteFunc(slices.Clone(g.Members), func(m string) bool { return m == id })
			c.groups[gid] = &g
			left = append(left, gid)
		}
	}
	nu := u
	nu.Status, nu.Department, nu.Updated = StatusRemoved, "", c.now
	nu.TokensBefore = c.now // for good: a re-added user's old tokens stay dead
	c.users[id] = userChange{old: u, had: true, new: nu}
	detail := "removed"
	if u.Department != "" {
		detail += "; left department " + u.Department
	}
	if len(left) > 0 {
		detail += "; left groups " + list(left)
	}
	c.audit("user.remove", id, detail)
	ch, err := d.changeOf(c)
	if err != nil {
		return User{}, err
	}
	if err := commit(ch); err != nil {
		return User{}, fmt.Errorf("fanout: remove user %s: %w", id, err)
	}
	return c.users[id].new, nil
}

// RevokeTokens revokes the client tokens of user id issued until now:
// all of them, or, with device set, that device's. Tokens minted later
// work. The change and its audit entry are one write. Closing the
// connections that used them is the caller's job.
func (d *Directory) RevokeTokens(id, device string, actor Actor) (User, error) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	u, ok := d.users[id]
	if !ok {
		return User{}, fmt.Errorf("%w: %q", ErrUnknownUser, id)
	}
	c := d.newChange(d.now(), actor)
	nu := u
	nu.Updated = c.now
	detail := "client tokens revoked"
	if device == "" {
		nu.TokensBefore = c.now
	} else {
		nu.DeviceTokensBefore = maps.Clone(u.DeviceTokensBefore)
		if nu.DeviceTokensBefore == nil {
			nu.DeviceTokensBefore = map[string]time.Time{}
		}
		nu.DeviceTokensBefore[device] = c.now
		detail = "client tokens of device " + device + " revoked"
	}
	c.users[id] = userChange{old: u, had: true, new: nu}
	c.audit("user.revoke_tokens", id, detail)
	if err := d.commit(c); err != nil {
		return User{}, fmt.Errorf("fanout: revoke tokens of %s: %w", id, err)
	}
	return nu, nil
}

// AcceptsToken reports whether a client token of user for device,
// issued at issued, may be used (User.AcceptsToken; unknown users: no).
func (d *Directory) AcceptsToken(user, device string, issued time.Time) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	u, ok := d.users[user]
	return ok && u.AcceptsToken(device, issued)
}

// Contact implements engine.Contacts. Removed users are unknown.
func (d *Directory) Contact(id string) (engine.Contact, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	u, ok := d.users[id]
	if !ok {
		return engine.Contact{}, fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, id)
	}
	if u.Status != StatusActive {
		return engine.Contact{}, fmt.Errorf("%w: %q was removed", engine.ErrUnknownRecipient, id)
	}
	return engine.Contact{Name: u.Name, Phone: u.Phone, Email: u.Email, Quiet: d.quiet[id], Department: u.Department}, nil
}

// User returns a user by id, removed ones too (see User.Status).
func (d *Directory) User(id string) (User, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	u, ok := d.users[id]
	return u, ok
}

// Active reports whether id is an active user.
func (d *Directory) Active(id string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.users[id].Status == StatusActive
}

// Users returns every active user, sorted by id.
func (d *Directory) Users() []User {
	us, _ := d.UsersByStatus(StatusActive)
	return us
}

// UsersByStatus returns the users with a status (StatusActive,
// StatusRemoved, or "all"), sorted by id. Other statuses give ErrBadStatus.
func (d *Directory) UsersByStatus(status string) ([]User, error) {
	switch status {
	case "all", StatusActive, StatusRemoved:
	default:
		return nil, fmt.Errorf("%w: %q, want all, active or removed", ErrBadStatus, status)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if status == StatusActive {
		out := make([]User, len(d.active))
		for i, id := range d.active {
			out[i] = d.users[id]
		}
		return out, nil
	}
	out := make([]User, 0, len(d.users))
	for _, u := range d.users {
		if status == "all" || u.Status == status {
			out = append(out, u)
		}
	}
	slices.SortFunc(out, func(a, b User) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func (d *Directory) now() time.Time { return d.clock.Now().UTC().Truncate(time.Millisecond) }

// ActorSystem is the audit actor of changes made without one (PutUser,
// PutUsers, an Actor with no name).
const ActorSystem = "system"

// A change is what one write does to the directory: new records and
// audit entries. It is built by a writer holding wmu, committed to the
// store in one synced batch, then installed in memory.
type change struct {
	now     time.Time
	actor   Actor
	users   map[string]userChange
	depts   map[string]*Department // nil: delete
	groups  map[string]*Group      // nil: delete
	admins  map[string]Admin
	entries []AuditEntry
	d       *Directory
}

type userChange struct {
	old User
	had bool
	new User
}

func (d *Directory) newChange(now time.Time, actor Actor) *change {
	if actor.Name == "" {
		actor.Name = ActorSystem
	}
	return &change{now: now, actor: actor, users: map[string]userChange{},
		depts: map[string]*Department{}, groups: map[string]*Group{}, admins: map[string]Admin{}, d: d}
}

func (c *change) audit(action, target, detail string) {
	c.entries = append(c.entries, AuditEntry{At: c.now, Actor: jsonString(c.actor.Name), Role: jsonString(c.actor.Role),
		Source: jsonString(c.actor.Source), Action: action, Target: jsonString(target), Detail: jsonString(detail)})
}

// user returns the user as the change leaves them.
func (c *change) user(id string) (User, bool) {
	if uc, ok := c.users[id]; ok {
		return uc.new, true
	}
	u, ok := c.d.users[id]
	return u, ok
}

// putUser records u (checked) as the new state of its user, with an audit
// entry, unless nothing changes. It reports whether the user is new. via
// prefixes the audit detail ("import").
func (c *change) putUser(u User, via string) (created bool) {
	old, had := c.d.users[u.ID] // compare with the stored user
	_, again := c.users[u.ID]
	if again {
		c.dropAudit("user.put", u.ID)
	}
	if had && old.same(u) {
		delete(c.users, u.ID)
		return false
	}
	u.Created, u.Updated = c.now, c.now
	if had {
		u.Created = old.Created
		u.TokensBefore, u.DeviceTokensBefore = old.TokensBefore, old.DeviceTokensBefore // revocations stay
	} else {
		u.TokensBefore, u.DeviceTokensBefore = time.Time{}, nil // only revocations set them
	}
	c.users[u.ID] = userChange{old: old, had: had, new: u}
	detail := userDetail(old, had, u)
	if via != "" {
		detail = via + ": " + detail
	}
	c.audit("user.put", u.ID, detail)
	return !had && !again
}

func (c *change) dropAudit(action, target string) {
	c.entries = slices.DeleteFunc(c.entries, func(e AuditEntry) bool { return e.Action == action && e.Target == target })
}

// userDetail describes a user change for the audit log, without the
// values of personal fields: never a phone number.
func userDetail(old User, had bool, u User) string {
	var parts []string
	if !had {
		parts = append(parts, "created")
		if u.Phone != "" {
			parts = append(parts, "phone set")
		}
		if u.Email != "" {
			parts = append(parts, "email set")
		}
		if u.Department != "" {
			parts = append(parts, "department "+u.Department)
		}
		return strings.Join(parts, "; ")
	}
	if old.Status != u.Status {
		parts = append(parts, "reactivated")
	}
	if old.Name != u.Name {
		parts = append(parts, "name changed")
	}
	switch {
	case old.Phone == u.Phone:
	case old.Phone == "":
		parts = append(parts, "phone set")
	case u.Phone == "":
		parts = append(parts, "phone cleared")
	default:
		parts = append(parts, "phone changed")
	}
	switch {
	case old.Email == u.Email:
	case old.Email == "":
		parts = append(parts, "email set")
	case u.Email == "":
		parts = append(parts, "email cleared")
	default:
		parts = append(parts, "email changed")
	}
	if old.QuietHours != u.QuietHours {
		parts = append(parts, "quiet hours changed")
	}
	if old.Department != u.Department {
		parts = append(parts, fmt.Sprintf("department %q -> %q", old.Department, u.Department))
	}
	return "updated: " + strings.Join(parts, "; ")
}

// list joins ids for an audit detail, at most 20 of them.
func list(ids []string) string {
	if len(ids) <= 20 {
		return strings.Join(ids, ",")
	}
	return strings.Join(ids[:20], ",") + fmt.Sprintf(",... (%d more)", len(ids)-20)
}

// commit makes c durable through the committer; the commit loop installs
// it. The caller holds wmu. A change with no records and no audit entries
// writes nothing.
func (d *Directory) commit(c *change) error {
	if len(c.users) == 0 && len(c.depts) == 0 && len(c.groups) == 0 && len(c.admins) == 0 && len(c.entries) == 0 {
		return nil
	}
	if d.committer == nil {
		return ErrNoCommitter
	}
	ch, err := d.changeOf(c)
	if err != nil {
		return err
	}
	return d.committer.Commit(context.Background(), ch)
}

// changeOf encodes c as an engine.Change: its records and audit entries
// (numbered from auditSeq, chained from auditHead), and the install once
// it is applied. The caller holds wmu.
func (d *Directory) changeOf(c *change) (engine.Change, error) {
	type write struct {
		k, v []byte
		del  bool
	}
	var ws []write
	var removes, added []string
	for id, uc := range c.users {
		v, err := json.Marshal(uc.new)
		if err != nil {
			return engine.Change{}, err
		}
		ws = append(ws, write{k: userKey(id), v: v})
		if uc.had && uc.old.Status == StatusActive && uc.new.Status != StatusActive {
			removes = append(removes, id)
		}
		if uc.new.Status == StatusActive && (!uc.had || uc.old.Status != StatusActive) {
			added = append(added, id)
		}
	}
	for id, dep := range c.depts {
		if dep == nil {
			ws = append(ws, write{k: dirKey(kindDept, id), del: true})
			continue
		}
		v, err := json.Marshal(dep)
		if err != nil {
			return engine.Change{}, err
		}
		ws = append(ws, write{k: dirKey(kindDept, id), v: v})
	}
	for id, g := range c.groups {
		if g == nil {
			ws = append(ws, write{k: dirKey(kindGroup, id), del: true})
			continue
		}
		v, err := json.Marshal(g)
		if err != nil {
			return engine.Change{}, err
		}
		ws = append(ws, write{k: dirKey(kindGroup, id), v: v})
	}
	for name, a := range c.admins {
		v, err := json.Marshal(a)
		if err != nil {
			return engine.Change{}, err
		}
		ws = append(ws, write{k: adminKey(name), v: v})
	}
	seq, head := d.auditSeq, d.auditHead
	for i := range c.entries {
		seq++
		e := &c.entries[i]
		e.Seq = seq
		e.Prev = hex.EncodeToString(head[:])
		head = auditHash(head, *e)
		e.Hash = hex.EncodeToString(head[:])
		v, err := json.Marshal(e)
		if err != nil {
			return engine.Change{}, err
		}
		ws = append(ws, write{k: auditKey(seq), v: v})
	}
	return engine.Change{
		Write: func(w engine.Writer) error {
			for _, x := range ws {
				if x.del {
					w.Delete(x.k)
				} else {
					w.Set(x.k, x.v)
				}
			}
			return nil
		},
		Applied: func() {
			d.auditSeq, d.auditHead = seq, head
			d.install(c)
		},
		Removes: removes,
		Added:   slices.Sorted(slices.Values(added)),
		Removed: slices.Sorted(slices.Values(removes)),
	}, nil
}

// install makes an applied change visible. It runs on the engine's commit
// loop while the change's writer holds wmu; the new indexes are built
// before taking mu, so readers wait only for the swap.
func (d *Directory) install(c *change) {
	var add, del []string
	deptAdd, deptDel := map[string][]string{}, map[string][]string{}
	for id, uc := range c.users {
		was := uc.had && uc.old.Status == StatusActive
		is := uc.new.Status == StatusActive
		switch {
		case is && !was:
			add = append(add, id)
		case was && !is:
			del = append(del, id)
		}
		if was && uc.old.Department != "" && (!is || uc.old.Department != uc.new.Department) {
			deptDel[uc.old.Department] = append(deptDel[uc.old.Department], id)
		}
		if is && uc.new.Department != "" && (!was || uc.old.Department != uc.new.Department) {
			deptAdd[uc.new.Department] = append(deptAdd[uc.new.Department], id)
		}
	}
	active := d.active
	if len(add)+len(del) > 0 {
		active = mergeSorted(d.active, add, del)
	}
	deptUsers := map[string][]string{}
	for dep := range deptAdd {
		deptUsers[dep] = nil
	}
	for dep := range deptDel {
		deptUsers[dep] = nil
	}
	for dep := range deptUsers {
		deptUsers[dep] = mergeSorted(d.deptUsers[dep], deptAdd[dep], deptDel[dep])
	}
	var children map[string][]string
	if len(c.depts) > 0 {
		depts := maps.Clone(d.depts)
		for id, dep := range c.depts {
			if dep == nil {
				delete(depts, id)
			} else {
				depts[id] = *dep
			}
		}
		children = childrenOf(depts)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	for id, uc := range c.users {
		d.users[id] = uc.new
		delete(d.quiet, id)
		if uc.new.QuietHours != "" {
			d.quiet[id], _ = engine.ParseQuietHours(uc.new.QuietHours)
		}
	}
	d.active = active
	for dep, ids := range deptUsers {
		if len(ids) == 0 {
			delete(d.deptUsers, dep)
		} else {
			d.deptUsers[dep] = ids
		}
	}
	for id, dep := range c.depts {
		if dep == nil {
			delete(d.depts, id)
		} else {
			d.depts[id] = *dep
		}
	}
	if children != nil {
		d.children = children
	}
	for id, g := range c.groups {
		if g == nil {
			delete(d.groups, id)
		} else {
			d.groups[id] = *g
		}
	}
	for name, a := range c.admins {
		d.admins[name] = a
	}
	d.cacheMu.Lock()
	clear(d.subtree)
	d.cacheMu.Unlock()
}

// mergeSorted returns a new sorted slice: old (sorted, no duplicates)
// without del, plus add. add and del need not be sorted.
func mergeSorted(old, add, del []string) []string {
	add = slices.Compact(slices.Sorted(slices.Values(add)))
	del = slices.Compact(slices.Sorted(slices.Values(del)))
	out := make([]string, 0, len(old)+len(add))
	i, j := 0, 0
	for _, id := range old {
		for j < len(del) && del[j] < id {
			j++
		}
		if j < len(del) && del[j] == id {
			continue
		}
		for i < len(add) && add[i] < id {
			out = append(out, add[i])
			i++
		}
		if i < len(add) && add[i] == id {
			i++
		}
		out = append(out, id)
	}
	return append(out, add[i:]...)
}
