package fanout

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/dingmq/ding/engine"
)

// ErrBadImport is returned (inside an *ImportError) for an import file or
// Org that cannot be applied. Nothing was changed.
var ErrBadImport = engine.NewError(CodeBadImport, "fanout: bad import")

// ImportError is a bad item of an import: the line of the file it came
// from (0 for an Org built in code) and the item ("user ana",
// "users[3]"). It wraps ErrBadImport and the cause.
type ImportError struct {
	Line int
	Item string
	Err  error
}

func (e *ImportError) Error() string {
	var b strings.Builder
	b.WriteString("fanout: bad import: ")
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Item != "" {
		b.WriteString(e.Item + ": ")
	}
	b.WriteString(strings.TrimPrefix(e.Err.Error(), "fanout: "))
	return b.String()
}

func (e *ImportError) Unwrap() []error { return []error{ErrBadImport, e.Err} }

// Org is a whole company as an HR system exports it: the departments, the
// users and the ad-hoc groups. Only the users' ID, Name, Phone, Email,
// QuietHours and Department are read.
type Org struct {
	Departments []Department
	Users       []User
	Groups      []Group

	// lines of each item in the file it was parsed from; nil for an Org
	// built in code.
	deptLines, userLines, groupLines []int
	// byPath: the departments were derived from paths (ParseOrgCSV), so
	// Import matches them to existing departments by name under the same
	// parent (see matchPaths).
	byPath bool
}

// ImportOptions tune Import.
type ImportOptions struct {
	// RemoveMissing records in the audit log that the caller will offboard
	// Diff.Missing (Import itself removes nobody: offboarding also needs
	// the engine and the live connections).
	RemoveMissing bool
	// DryRun computes the Diff without changing anything.
	DryRun bool
}

// Diff is what an import changes. Lists are sorted ids.
type Diff struct {
	DepartmentsAdded   []string `json:"departments_added"`
	DepartmentsUpdated []string `json:"departments_updated"`
	UsersAdded         []string `json:"users_added"`
	UsersUpdated       []string `json:"users_updated"`
	UsersUnchanged     int      `json:"users_unchanged"`
	GroupsAdded        []string `json:"groups_added"`
	GroupsUpdated      []string `json:"groups_updated"`
	// Missing are the active users of the directory that the file does
	// not list: the ones to offboard with RemoveMissing.
	Missing []string `json:"missing"`
	DryRun  bool     `json:"dry_run"`
}

// Changed reports whether the import changes anything (Missing aside).
func (df Diff) Changed() bool {
	return len(df.DepartmentsAdded)+len(df.DepartmentsUpdated)+len(df.UsersAdded)+len(df.UsersUpdated)+
		len(df.GroupsAdded)+len(df.GroupsUpdated) > 0
}

// lines returns the source lines of the departments, users or groups.
func (o *Org) lines(kind string) []int {
	switch kind {
	case "department":
		return o.deptLines
	case "user":
		return o.userLines
	case "group":
		return o.groupLines
	}
	return nil
}

func (o *Org) bad(kind string, i int, id string, err error) *ImportError {
	e := &ImportError{Item: fmt.Sprintf("%s %q", kind, id), Err: err}
	if lines := o.lines(kind); i < len(lines) {
		e.Line = lines[i]
	} else {
		e.Item = fmt.Sprintf("%ss[%d] (%q)", kind, i, id)
	}
	return e
}

// Import makes the directory match org, idempotently: departments and
// groups in org are created or updated (a group's members replaced),
// users in org are created, updated or reactivated; whatever org does not
// list is kept, and the active users it does not list are reported as
// Missing. Everything is checked first (names, phones, parents, cycles,
// members, duplicates): a bad item gives an *ImportError and changes
// nothing. The changes and their audit entries (one per changed item,
// then one "import" summary) are one synced batch. Running the same
// import again changes nothing.
func (d *Directory) Import(org Org, opts ImportOptions, actor Actor) (Diff, error) {
	df := Diff{DryRun: opts.DryRun}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	c := d.newChange(d.now(), actor)
	if org.byPath {
		org = d.matchPaths(org)
	}

	depts := maps.Clone(d.depts)
	seen := map[string]int{}
	for i, dep := range org.Departments {
		if err := checkDepartment(dep); err != nil {
			return Diff{}, org.bad("department", i, dep.ID, err)
		}
		if j, dup := seen[dep.ID]; dup {
			return Diff{}, org.bad("department", i, dep.ID, fmt.Errorf("listed twice (also %s)", org.item("department", j)))
		}
		seen[dep.ID] = i
		depts[dep.ID] = dep
	}
	for i, dep := range org.Departments {
		if err := checkTree(depts, dep); err != nil {
			return Diff{}, org.bad("department", i, dep.ID, err)
		}
	}
	for _, dep := range org.Departments {
		old, had := d.depts[dep.ID]
		switch {
		case !had:
			df.DepartmentsAdded = append(df.DepartmentsAdded, dep.ID)
		case old != dep:
			df.DepartmentsUpdated = append(df.DepartmentsUpdated, dep.ID)
		default:
			continue
		}
		c.putDepartment(old, had, dep, "import")
	}

	clear(seen)
	for i, u := range org.Users {
		u = User{ID: u.ID, Name: u.Name, Phone: u.Phone, Email: u.Email, QuietHours: u.QuietHours, Department: u.Department}
		if err := checkUser(&u); err != nil {
			return Diff{}, org.bad("user", i, u.ID, err)
		}
		if j, dup := seen[u.ID]; dup {
			return Diff{}, org.bad("user", i, u.ID, fmt.Errorf("listed twice (also %s)", org.item("user", j)))
		}
		seen[u.ID] = i
		if _, ok := depts[u.Department]; u.Department != "" && !ok {
			return Diff{}, org.bad("user", i, u.ID, fmt.Errorf("%w: %q", ErrUnknownDepartment, u.Department))
		}
		_, had := d.users[u.ID]
		c.putUser(u, "import")
		_, changed := c.users[u.ID]
		switch {
		case !had:
			df.UsersAdded = append(df.UsersAdded, u.ID)
		case changed:
			df.UsersUpdated = append(df.UsersUpdated, u.ID)
		default:
			df.UsersUnchanged++
		}
	}
	for _, id := range d.active {
		if _, ok := seen[id]; !ok {
			df.Missing = append(df.Missing, id)
		}
	}

	clear(seen)
	for i, g := range org.Groups {
		if err := checkGroup(g); err != nil {
			return Diff{}, org.bad("group", i, g.ID, err)
		}
		if j, dup := seen[g.ID]; dup {
			return Diff{}, org.bad("group", i, g.ID, fmt.Errorf("listed twice (also %s)", org.item("group", j)))
		}
		seen[g.ID] = i
		var err error
		if g.Members, err = c.members(g.ID, g.Members); err != nil {
			return Diff{}, org.bad("group", i, g.ID, err)
		}
		_, had := d.groups[g.ID]
		c.putGroup(g, "import")
		if _, changed := c.groups[g.ID]; changed {
			if had {
				df.GroupsUpdated = append(df.GroupsUpdated, g.ID)
			} else {
				df.GroupsAdded = append(df.GroupsAdded, g.ID)
			}
		}
	}
	df.sort()
	if opts.DryRun {
		return df, nil
	}
	summary := fmt.Sprintf("departments +%d ~%d; users +%d ~%d =%d; groups +%d ~%d; missing %d",
		len(df.DepartmentsAdded), len(df.DepartmentsUpdated), len(df.UsersAdded), len(df.UsersUpdated),
		df.UsersUnchanged, len(df.GroupsAdded), len(df.GroupsUpdated), len(df.Missing))
	if opts.RemoveMissing && len(df.Missing) > 0 {
		summary += " (to be removed: " + list(df.Missing) + ")"
	}
	c.audit("import", "directory", summary)
	if err := d.commit(c); err != nil {
		return Diff{}, fmt.Errorf("fanout: import: %w", err)
	}
	return df, nil
}

func (o *Org) item(kind string, i int) string {
	if lines := o.lines(kind); i < len(lines) {
		return fmt.Sprintf("line %d", lines[i])
	}
	return fmt.Sprintf("%ss[%d]", kind, i)
}

func (df *Diff) sort() {
	for _, l := range []*[]string{&df.DepartmentsAdded, &df.DepartmentsUpdated, &df.UsersAdded, &df.UsersUpdated,
		&df.GroupsAdded, &df.GroupsUpdated, &df.Missing} {
		if *l == nil {
			*l = []string{}
		}
		slices.Sort(*l)
	}
}

// matchPaths maps the departments of a CSV import (ids derived from their
// path) onto the directory's own: a path segment names the department of
// that name under the department its parent segment resolved to, if there
// is one (one made with dept add, or an earlier import), so that
// "Engineering/SRE" finds the departments eng and sre made by hand instead
// of adding engineering and engineering.sre beside them. Several of that
// name under one parent: the one whose id is the derived one, else the
// smallest id. Unmatched segments keep their derived ids under their
// resolved parent. org is not changed; the mapped copy is returned.
func (d *Directory) matchPaths(org Org) Org {
	resolved := map[string]string{} // derived id -> the directory's id
	out := org
	out.Departments = make([]Department, 0, len(org.Departments))
	for _, dep := range org.Departments { // a parent comes before its children
		parent := dep.Parent
		if parent != "" {
			parent = resolved[parent]
		}
		match := ""
		for id, have := range d.depts {
			if have.Name != dep.Name || have.Parent != parent {
				continue
			}
			if id == dep.ID {
				match = id
				break
			}
			if match == "" || id < match {
				match = id
			}
		}
		if match == "" {
			match = dep.ID
		}
		resolved[dep.ID] = match
		out.Departments = append(out.Departments, Department{ID: match, Name: dep.Name, Parent: parent})
	}
	out.Users = slices.Clone(org.Users)
	for i := range out.Users {
		if id, ok := resolved[out.Users[i].Department]; ok {
			out.Users[i].Department = id
		}
	}
	return out
}

// ParseOrgJSON reads an org file:
//
//	{"departments": [{"id": "eng", "name": "Engineering", "parent": ""}, ...],
//	 "users": [{"id": "ana", "name": "Ana", "phone": "+14155550100", "department": "eng",
//	            "quiet_hours": "22:00-07:00 Europe/Berlin"}, ...],
//	 "groups": [{"id": "oncall", "name": "On call", "members": ["ana", "bo"]}, ...]}
//
// Every key is optional; unknown keys are errors. Errors are *ImportError
// with the line of the offending item.
func ParseOrgJSON(r io.Reader) (Org, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return Org{}, fmt.Errorf("fanout: read org file: %w", err)
	}
	var nl []int // offsets of '\n'
	for i, b := range data {
		if b == '\n' {
			nl = append(nl, i)
		}
	}
	lineAt := func(off int64) int { return 1 + sort.SearchInts(nl, int(off)) }
	// start returns the offset of the next value after the decoder's offset.
	start := func(off int64) int64 {
		for off < int64(len(data)) && bytes.IndexByte([]byte(" \t\r\n,"), data[off]) >= 0 {
			off++
		}
		return off
	}
	var elem int64 // offset of the element being decoded
	bad := func(line int, item string, err error) error {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			line = lineAt(se.Offset) // from the start of the input
		case errors.As(err, &te):
			line = lineAt(elem + te.Offset) // from the start of the element
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			err = errors.New("unexpected end of file")
		}
		return &ImportError{Line: line, Item: item, Err: err}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		if err == nil {
			err = errors.New("want a JSON object")
		}
		return Org{}, bad(1, "", err)
	}
	var org Org
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return Org{}, bad(lineAt(dec.InputOffset()), "", err)
		}
		key, _ := kt.(string)
		each := func(fn func(line int) error) error {
			if t, err := dec.Token(); err != nil || t != json.Delim('[') {
				if err == nil {
					err = fmt.Errorf("%q: want an array", key)
				}
				return bad(lineAt(dec.InputOffset()), "", err)
			}
			for dec.More() {
				elem = start(dec.InputOffset())
				if err := fn(lineAt(elem)); err != nil {
					return err
				}
			}
			if _, err := dec.Token(); err != nil {
				return bad(lineAt(dec.InputOffset()), "", err)
			}
			return nil
		}
		switch key {
		case "departments":
			err = each(func(line int) error {
				var x struct {
					ID     string `json:"id"`
					Name   string `json:"name"`
					Parent string `json:"parent"`
				}
				if err := dec.Decode(&x); err != nil {
					return bad(line, "department", err)
				}
				org.Departments = append(org.Departments, Department(x))
				org.deptLines = append(org.deptLines, line)
				return nil
			})
		case "users":
			err = each(func(line int) error {
				var x struct {
					ID         string `json:"id"`
					Name       string `json:"name"`
					Phone      string `json:"phone"`
					Email      string `json:"email"`
					Department string `json:"department"`
					QuietHours string `json:"quiet_hours"`
				}
				if err := dec.Decode(&x); err != nil {
					return bad(line, "user", err)
				}
				org.Users = append(org.Users, User{ID: x.ID, Name: x.Name, Phone: x.Phone, Email: x.Email, Department: x.Department, QuietHours: x.QuietHours})
				org.userLines = append(org.userLines, line)
				return nil
			})
		case "groups":
			err = each(func(line int) error {
				var x struct {
					ID      string   `json:"id"`
					Name    string   `json:"name"`
					Members []string `json:"members"`
				}
				if err := dec.Decode(&x); err != nil {
					return bad(line, "group", err)
				}
				org.Groups = append(org.Groups, Group(x))
				org.groupLines = append(org.groupLines, line)
				return nil
			})
		default:
			err = bad(lineAt(dec.InputOffset()), "", fmt.Errorf("unknown key %q, want departments, users or groups", key))
		}
		if err != nil {
			return Org{}, err
		}
	}
	if _, err := dec.Token(); err != nil {
		return Org{}, bad(lineAt(dec.InputOffset()), "", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Org{}, bad(lineAt(dec.InputOffset()), "", errors.New("data after the object"))
	}
	return org, nil
}

// ParseOrgCSV reads an HR export of users, with a header line:
//
//	id,name,phone,department_path[,quiet_hours[,email]]
//	ana,Ana Lima,+14155550100,Engineering/Platform/SRE,22:00-07:00 Europe/Berlin
//	bo,Bo Chen,,Sales,
//
// A department path creates (or reuses) one department per segment, whose
// id is derived from the path so that the same path always gives the same
// id: each segment becomes a slug (ASCII letters and digits lowercased,
// every other run of characters one '-', trimmed; a segment with
// non-ASCII characters gets '-' and 8 hex digits of its FNV-1a hash
// appended, or is only those digits when no letter or digit is left), and the
// slugs of the path so far are joined with '.':
//
//	Engineering/Platform/SRE -> engineering, engineering.platform, engineering.platform.sre
//	Sales & Ops              -> sales-ops
//	研发部/Café               -> cbfebacf, cbfebacf.caf-cfc290a9
//
// The segment is the department's name. An empty path means no
// department. Import first matches each segment to an existing
// department of that name under the same parent (one made with dept add
// keeps its own id); the derived ids are for the departments it creates.
// Errors are *ImportError with the line number.
func ParseOrgCSV(r io.Reader) (Org, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = false
	bad := func(line int, item string, err error) error {
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			line, err = pe.Line, pe.Err
		}
		return &ImportError{Line: line, Item: item, Err: err}
	}
	head, err := cr.Read()
	if err == io.EOF {
		return Org{}, bad(1, "", errors.New("empty file: want the header id,name,phone,department_path[,quiet_hours[,email]]"))
	}
	if err != nil {
		return Org{}, bad(1, "", err)
	}
	want := []string{"id", "name", "phone", "department_path", "quiet_hours", "email"}
	for i := range head {
		head[i] = strings.ToLower(strings.TrimSpace(head[i]))
	}
	if len(head) > 0 {
		head[0] = strings.TrimPrefix(head[0], "\ufeff") // a byte order mark, from spreadsheets
	}
	if len(head) < 4 || len(head) > 6 || !slices.Equal(head, want[:len(head)]) {
		return Org{}, bad(1, "", fmt.Errorf("header %q: want id,name,phone,department_path[,quiet_hours[,email]]", strings.Join(head, ",")))
	}
	org := Org{byPath: true}
	deptAt := map[string]int{} // id -> index in org.Departments
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Org{}, bad(0, "", err)
		}
		line, _ := cr.FieldPos(0)
		if len(rec) != len(head) {
			return Org{}, bad(line, "", fmt.Errorf("%d fields, want %d", len(rec), len(head)))
		}
		for i := range rec {
			rec[i] = strings.TrimSpace(rec[i])
		}
		u := User{ID: rec[0], Name: rec[1], Phone: rec[2]}
		if len(rec) >= 5 {
			u.QuietHours = rec[4]
		}
		if len(rec) == 6 {
			u.Email = rec[5]
		}
		parent := ""
		if path := strings.Trim(rec[3], "/ "); path != "" {
			for seg := range strings.SplitSeq(path, "/") {
				seg = strings.TrimSpace(seg)
				if seg == "" {
					return Org{}, bad(line, fmt.Sprintf("user %q", u.ID), fmt.Errorf("department path %q has an empty segment", rec[3]))
				}
				id := slug(seg)
				if parent != "" {
					id = parent + "." + id
				}
				if !engine.ValidName(id) {
					return Org{}, bad(line, fmt.Sprintf("user %q", u.ID), fmt.Errorf("%w: department path %q gives the id %q, longer than 64 bytes", engine.ErrBadName, rec[3], id))
				}
				if j, ok := deptAt[id]; ok {
					if org.Departments[j].Name != seg {
						return Org{}, bad(line, fmt.Sprintf("user %q", u.ID), fmt.Errorf("department %q and %q (line %d) both give the id %q", seg, org.Departments[j].Name, org.deptLines[j], id))
					}
				} else {
					deptAt[id] = len(org.Departments)
					org.Departments = append(org.Departments, Department{ID: id, Name: seg, Parent: parent})
					org.deptLines = append(org.deptLines, line)
				}
				parent = id
			}
		}
		u.Department = parent
		org.Users = append(org.Users, u)
		org.userLines = append(org.userLines, line)
	}
	return org, nil
}

// slug turns a department path segment into an id part (see ParseOrgCSV).
func slug(seg string) string {
	var b strings.Builder
	dash, ascii := false, true
	for _, r := range seg {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
		case r >= 'A' && r <= 'Z':
			r += 'a' - 'A'
		default:
			if r >= utf8.RuneSelf {
				ascii = false
			}
			dash = b.Len() > 0
			continue
		}
		if dash {
			b.WriteByte('-')
			dash = false
		}
		b.WriteRune(r)
	}
	if ascii && b.Len() > 0 {
		return b.String()
	}
	h := fnv.New32a()
	h.Write([]byte(seg))
	if b.Len() == 0 {
		return fmt.Sprintf("%08x", h.Sum32())
	}
	return fmt.Sprintf("%s-%08x", b.String(), h.Sum32())
}
