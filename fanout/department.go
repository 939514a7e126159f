package fanout

import (
	"fmt"
	"slices"
	"strings"

	"github.com/dingmq/ding/engine"
)

var (
	// ErrUnknownDepartment is returned when a department id (a parent, a
	// user's department, a department to read or remove) does not exist.
	ErrUnknownDepartment = engine.NewError(CodeUnknownDepartment, "fanout: unknown department")
	// ErrDepartmentCycle is returned by PutDepartment and Import when a
	// parent would make a department its own ancestor.
	ErrDepartmentCycle = engine.NewError(CodeDepartmentCycle, "fanout: department would be its own ancestor")
	// ErrDepartmentNotEmpty is returned by RemoveDepartment while the
	// department has sub-departments or users.
	ErrDepartmentNotEmpty = engine.NewError(CodeDepartmentNotEmpty, "fanout: department not empty")
)

// Department is a node of the company's tree. Its derived group
// "dept:ID" holds the active users of the department and of every
// department under it.
type Department struct {
	ID     string `json:"id"`     // engine.ValidName
	Name   string `json:"name"`   // display name, up to 200 bytes
	Parent string `json:"parent"` // parent's id; empty for a root
}

func checkDepartment(dep Department) error {
	if err := engine.CheckName("department", dep.ID); err != nil {
		return err
	}
	if len(dep.Name) > 200 {
		return fmt.Errorf("%w: name of department %s longer than 200 bytes", engine.ErrBadName, dep.ID)
	}
	if dep.Parent != "" {
		if err := engine.CheckName("parent department", dep.Parent); err != nil {
			return err
		}
	}
	return nil
}

// checkTree returns ErrUnknownDepartment if dep's parent is not in depts
// and ErrDepartmentCycle if dep would be its own ancestor there.
func checkTree(depts map[string]Department, dep Department) error {
	for p, n := dep.Parent, 0; p != ""; n++ {
		if p == dep.ID || n > len(depts) {
			return fmt.Errorf("%w: %s under %s", ErrDepartmentCycle, dep.ID, dep.Parent)
		}
		up, ok := depts[p]
		if !ok {
			return fmt.Errorf("%w: %q (parent of %s)", ErrUnknownDepartment, p, dep.ID)
		}
		p = up.Parent
	}
	return nil
}

// childrenOf indexes a tree by parent: "" lists the roots.
func childrenOf(depts map[string]Department) map[string][]string {
	ch := map[string][]string{}
	for id, dep := range depts {
		ch[dep.Parent] = append(ch[dep.Parent], id)
	}
	for _, ids := range ch {
		slices.Sort(ids)
	}
	return ch
}

// PutDepartment creates or updates a department, with an audit entry, in
// one synced write. Changing Parent moves the department with its whole
// subtree; the parent must exist (ErrUnknownDepartment) and not be the
// department or one of its descendants (ErrDepartmentCycle). It reports
// whether the department is new.
func (d *Directory) PutDepartment(dep Department, actor Actor) (created bool, err error) {
	if err := checkDepartment(dep); err != nil {
		return false, err
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	old, had := d.depts[dep.ID]
	if had && old == dep {
		return false, nil
	}
	if err := checkTree(d.depts, dep); err != nil {
		return false, err
	}
	c := d.newChange(d.now(), actor)
	c.putDepartment(old, had, dep, "")
	if err := d.commit(c); err != nil {
		return false, fmt.Errorf("fanout: put department %s: %w", dep.ID, err)
	}
	return !had, nil
}

func (c *change) putDepartment(old Department, had bool, dep Department, via string) {
	c.depts[dep.ID] = &dep
	var detail string
	if !had {
		detail = fmt.Sprintf("created %q", dep.Name)
		if dep.Parent != "" {
			detail += " under " + dep.Parent
		}
	} else {
		var parts []string
		if old.Name != dep.Name {
			parts = append(parts, fmt.Sprintf("renamed %q -> %q", old.Name, dep.Name))
		}
		if old.Parent != dep.Parent {
			parts = append(parts, fmt.Sprintf("moved from %q to %q", old.Parent, dep.Parent))
		}
		detail = strings.Join(parts, "; ")
	}
	if via != "" {
		detail = via + ": " + detail
	}
	c.audit("dept.put", dep.ID, detail)
}

// RemoveDepartment deletes an empty department, with an audit entry. It
// returns ErrUnknownDepartment if there is none and ErrDepartmentNotEmpty
// while it has sub-departments or users.
func (d *Directory) RemoveDepartment(id string, actor Actor) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	dep, ok := d.depts[id]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownDepartment, id)
	}
	if n := len(d.children[id]); n > 0 {
		return fmt.Errorf("%w: %s has %d sub-departments", ErrDepartmentNotEmpty, id, n)
	}
	if n := len(d.deptUsers[id]); n > 0 {
		return fmt.Errorf("%w: %s has %d users", ErrDepartmentNotEmpty, id, n)
	}
	// A department admin's scope is a department: removing it would leave
	// the admin scoped to nothing (or to a department made again later
	// under the same id). Revoke them first.
	var scoped []string
	for name, a := range d.admins {
		if a.Dept == id && a.Status == AdminActive && !a.Expired(d.now()) {
			scoped = append(scoped, name)
		}
	}
	if len(scoped) > 0 {
		slices.Sort(scoped)
		return fmt.Errorf("%w: %s is the scope of admin %s; revoke them first", ErrDepartmentNotEmpty, id, strings.Join(scoped, ", "))
	}
	c := d.newChange(d.now(), actor)
	c.depts[id] = nil
	c.audit("dept.remove", id, fmt.Sprintf("removed %q", dep.Name))
	if err := d.commit(c); err != nil {
		return fmt.Errorf("fanout: remove department %s: %w", id, err)
	}
	return nil
}

// Department returns a department by id.
func (d *Directory) Department(id string) (Department, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	dep, ok := d.depts[id]
	return dep, ok
}

// Departments returns every department, sorted by id.
func (d *Directory) Departments() []Department {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]Department, 0, len(d.depts))
	for _, dep := range d.depts {
		out = append(out, dep)
	}
	slices.SortFunc(out, func(a, b Department) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// SubDepartments returns the direct sub-departments of id ("" for the
// roots), sorted by id.
func (d *Directory) SubDepartments(id string) []Department {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]Department, 0, len(d.children[id]))
	for _, c := range d.children[id] {
		out = append(out, d.depts[c])
	}
	return out
}

// DepartmentUsers returns the active users whose department is id itself
// (not its sub-departments: see Expand("dept:"+id)), sorted.
func (d *Directory) DepartmentUsers(id string) []string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return slices.Clone(d.deptUsers[id])
}

// Subtree returns the ids of id and of every department under it, id
// first, then level by level; or ErrUnknownDepartment.
func (d *Directory) Subtree(id string) ([]string, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if _, ok := d.depts[id]; !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownDepartment, id)
	}
	return d.subtreeLocked(id), nil
}

// Within reports whether department dept is root or under it. Unknown
// departments, and "", are within nothing.
func (d *Directory) Within(dept, root string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.withinLocked(dept, root)
}

// withinLocked is Within; the caller holds mu. The tree has no cycles
// (PutDepartment refuses them), and the walk is bounded all the same.
func (d *Directory) withinLocked(dept, root string) bool {
	for range len(d.depts) + 1 {
		if dept == "" || root == "" {
			return false
		}
		if dept == root {
			return true
		}
		dep, ok := d.depts[dept]
		if !ok {
			return false
		}
		dept = dep.Parent
	}
	return false
}

// UserWithin reports whether user is an active user whose department is
// root or under it.
func (d *Directory) UserWithin(user, root string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	u, ok := d.users[user]
	return ok && u.Status == StatusActive && d.withinLocked(u.Department, root)
}

// subtreeLocked lists the department ids under id (id first). The caller
// holds mu or wmu.
func (d *Directory) subtreeLocked(id string) []string {
	out := []string{id}
	for i := 0; i < len(out); i++ {
		out = append(out, d.children[out[i]]...)
	}
	return out
}

// deptMembersLocked returns the sorted active users of id's subtree. The
// result is shared (cached): do not modify it. The caller holds mu.
func (d *Directory) deptMembersLocked(id string) []string {
	if len(d.children[id]) == 0 {
		return d.deptUsers[id]
	}
	d.cacheMu.Lock()
	ids, ok := d.subtree[id]
	d.cacheMu.Unlock()
	if ok {
		return ids
	}
	ids = []string{}
	for _, dep := range d.subtreeLocked(id) {
		ids = append(ids, d.deptUsers[dep]...)
	}
	slices.Sort(ids) // a user is in one department: no duplicates
	d.cacheMu.Lock()
	d.subtree[id] = ids
	d.cacheMu.Unlock()
	return ids
}
