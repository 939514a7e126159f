package fanout

import (
	"fmt"
	"slices"
	"strings"

	"github.com/dingmq/ding/engine"
)

// ErrUnknownGroup is returned for an ad-hoc group id that does not exist.
var ErrUnknownGroup = engine.NewError(CodeUnknownGroup, "fanout: unknown group")

// Recipient targets accepted by Expand and Resolve besides a user id.
const (
	TargetAll   = "all"    // every active user
	TargetDept  = "dept:"  // + department id: its active users and those of every department under it
	TargetGroup = "group:" // + ad-hoc group id: its members
)

// Group is an ad-hoc group: a named set of active users, across
// departments. (Departments give the derived groups "dept:ID", and "all"
// is everybody; those are computed, never stored.)
type Group struct {
	ID      string   `json:"id"` // engine.ValidName, not "all"
	Name    string   `json:"name"`
	Members []string `json:"members"` // sorted user ids, all active
}

func checkGroup(g Group) error {
	if err := engine.CheckName("group", g.ID); err != nil {
		return err
	}
	if g.ID == TargetAll {
		return fmt.Errorf("%w: group id %q is reserved for the all-staff group", engine.ErrBadName, g.ID)
	}
	if len(g.Name) > 200 {
		return fmt.Errorf("%w: name of group %s longer than 200 bytes", engine.ErrBadName, g.ID)
	}
	return nil
}

// members sorts and de-duplicates ids and checks that each is an active
// user as the change leaves them.
func (c *change) members(gid string, ids []string) ([]string, error) {
	out := slices.Compact(slices.Sorted(slices.Values(ids)))
	for _, id := range out {
		if u, ok := c.user(id); !ok || u.Status != StatusActive {
			return nil, fmt.Errorf("%w: %q (member of group %s) is not an active user", ErrUnknownUser, id, gid)
		}
	}
	return out, nil
}

// putGroup records g (members checked) with its audit entry, unless
// nothing changes. It reports whether the group is new.
func (c *change) putGroup(g Group, via string) (created bool) {
	old, had := c.d.groups[g.ID]
	if had && old.Name == g.Name && slices.Equal(old.Members, g.Members) {
		return false
	}
	c.groups[g.ID] = &g
	var detail string
	if !had {
		detail = fmt.Sprintf("created %q with %d members", g.Name, len(g.Members))
	} else {
		var parts []string
		if old.Name != g.Name {
			parts = append(parts, fmt.Sprintf("renamed %q -> %q", old.Name, g.Name))
		}
		if add, del := diffSorted(old.Members, g.Members); len(add)+len(del) > 0 {
			parts = append(parts, membersDetail(add, del))
		}
		detail = strings.Join(parts, "; ")
	}
	if via != "" {
		detail = via + ": " + detail
	}
	c.audit("group.put", g.ID, detail)
	return !had
}

// diffSorted returns what is in b and not in a, and what is in a and not in b.
func diffSorted(a, b []string) (added, removed []string) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			removed = append(removed, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			added = append(added, b[j])
			j++
		default:
			i, j = i+1, j+1
		}
	}
	return added, removed
}

func membersDetail(add, del []string) string {
	var parts []string
	if len(add) > 0 {
		parts = append(parts, "added "+list(add))
	}
	if len(del) > 0 {
		parts = append(parts, "removed "+list(del))
	}
	return strings.Join(parts, "; ")
}

// PutGroup creates an ad-hoc group or replaces its name and members, with
// an audit entry, in one synced write. Every member must be an active
// user (ErrUnknownUser); duplicates are dropped. It reports whether the
// group is new.
func (d *Directory) PutGroup(g Group, actor Actor) (created bool, err error) {
	if err := checkGroup(g); err != nil {
		return false, err
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	c := d.newChange(d.now(), actor)
	if g.Members, err = c.members(g.ID, g.Members); err != nil {
		return false, err
	}
	created = c.putGroup(g, "")
	if err := d.commit(c); err != nil {
		return false, fmt.Errorf("fanout: put group %s: %w", g.ID, err)
	}
	return created, nil
}

// UpdateMembers adds and removes members of an ad-hoc group in one synced
// write with its audit entry, and returns the group as it is now. Added
// users must be active (ErrUnknownUser); removing a non-member is not an
// error; a user in both lists ends up removed. An unknown group gives
// ErrUnknownGroup.
func (d *Directory) UpdateMembers(id string, add, remove []string, actor Actor) (Group, error) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	g, ok := d.groups[id]
	if !ok {
		return Group{}, fmt.Errorf("%w: %q", ErrUnknownGroup, id)
	}
	c := d.newChange(d.now(), actor)
	add, err := c.members(id, add)
	if err != nil {
		return Group{}, err
	}
	add = slices.DeleteFunc(add, func(u string) bool { return slices.Contains(remove, u) })
	g.Members = mergeSorted(g.Members, add, remove)
	added, removed := diffSorted(d.groups[id].Members, g.Members)
	if len(added)+len(removed) == 0 {
		return g, nil
	}
	c.groups[id] = &g
	c.audit("group.members", id, membersDetail(added, removed))
	if err := d.commit(c); err != nil {
		return Group{}, fmt.Errorf("fanout: change members of group %s: %w", id, err)
	}
	return g, nil
}

// AddMembers is UpdateMembers with only additions.
func (d *Directory) AddMembers(id string, users []string, actor Actor) (Group, error) {
	return d.UpdateMembers(id, users, nil, actor)
}

// RemoveMembers is UpdateMembers with only removals.
func (d *Directory) RemoveMembers(id string, users []string, actor Actor) (Group, error) {
	return d.UpdateMembers(id, nil, users, actor)
}

// RemoveGroup deletes an ad-hoc group with an audit entry, or returns
// ErrUnknownGroup.
func (d *Directory) RemoveGroup(id string, actor Actor) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	g, ok := d.groups[id]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownGroup, id)
	}
	c := d.newChange(d.now(), actor)
	c.groups[id] = nil
	c.audit("group.remove", id, fmt.Sprintf("removed %q with %d members", g.Name, len(g.Members)))
	if err := d.commit(c); err != nil {
		return fmt.Errorf("fanout: remove group %s: %w", id, err)
	}
	return nil
}

// Group returns an ad-hoc group by id.
func (d *Directory) Group(id string) (Group, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	g, ok := d.groups[id]
	g.Members = slices.Clone(g.Members)
	return g, ok
}

// Groups returns every ad-hoc group, sorted by id.
func (d *Directory) Groups() []Group {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]Group, 0, len(d.groups))
	for _, g := range d.groups {
		g.Members = slices.Clone(g.Members)
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b Group) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Expand returns the sorted, de-duplicated active users a target names:
// "all", "dept:ID", "group:ID" or a user id. An unknown target, or a
// removed user, gives an error wrapping engine.ErrUnknownRecipient (and
// ErrUnknownDepartment or ErrUnknownGroup where that is the reason). An
// empty group or department expands to an empty list.
func (d *Directory) Expand(target string) ([]string, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	ids, err := d.expandLocked(target)
	if err != nil {
		return nil, err
	}
	return slices.Clone(ids), nil
}

// expandLocked is Expand returning a shared slice: do not modify it. The
// caller holds mu.
func (d *Directory) expandLocked(t string) ([]string, error) {
	if t == TargetAll {
		return d.active, nil
	}
	if id, ok := strings.CutPrefix(t, TargetDept); ok {
		if _, ok := d.depts[id]; !ok {
			return nil, fmt.Errorf("%w: %q: %w", engine.ErrUnknownRecipient, t, ErrUnknownDepartment)
		}
		return d.deptMembersLocked(id), nil
	}
	if id, ok := strings.CutPrefix(t, TargetGroup); ok {
		g, ok := d.groups[id]
		if !ok {
			return nil, fmt.Errorf("%w: %q: %w", engine.ErrUnknownRecipient, t, ErrUnknownGroup)
		}
		return g.Members, nil
	}
	if err := d.checkUserLocked(t); err != nil {
		return nil, err
	}
	return []string{t}, nil
}

func (d *Directory) checkUserLocked(id string) error {
	u, ok := d.users[id]
	switch {
	case !ok:
		return fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, id)
	case u.Status != StatusActive:
		return fmt.Errorf("%w: %q was removed", engine.ErrUnknownRecipient, id)
	}
	return nil
}

// Resolve implements engine.Recipients: each of to is an active user id or
// a target ("all", "dept:ID", "group:ID"), and the result is every user
// they name, sorted and de-duplicated (or to itself when it holds only
// user ids). Targets that name nobody give engine.ErrNoRecipients.
func (d *Directory) Resolve(to []string) ([]string, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	targets := false
	for _, t := range to {
		if t == TargetAll || strings.IndexByte(t, ':') >= 0 {
			targets = true
			break
		}
	}
	if !targets {
		for _, id := range to {
			if err := d.checkUserLocked(id); err != nil {
				return nil, err
			}
		}
		return to, nil
	}
	var out []string
	for _, t := range to {
		ids, err := d.expandLocked(t)
		if err != nil {
			return nil, err
		}
		out = append(out, ids...)
	}
	if len(to) > 1 {
		slices.Sort(out)
		out = slices.Compact(out)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s names no active user", engine.ErrNoRecipients, strings.Join(to, ","))
	}
	return out, nil
}
