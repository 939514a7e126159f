package fanout_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/fanout"
)

// openDir opens a directory on st, with an engine on st as its committer.
func openDir(tb testing.TB, st store.Store) *fanout.Directory {
	tb.Helper()
	d, err := fanout.OpenDirectory(st, nil)
	if err != nil {
		tb.Fatal(err)
	}
	e, err := engine.Open(engine.Config{Store: st, Recipients: d, Contacts: d})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.Close() })
	d.SetCommitter(e)
	return d
}

func must[T any](tb testing.TB) func(T, error) T {
	return func(v T, err error) T {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
		return v
	}
}

func ok(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

// org builds: company > eng > {platform > sre, web}, sales; users spread over them.
func org(tb testing.TB, d *fanout.Directory) {
	tb.Helper()
	for _, dep := range []fanout.Department{
		{ID: "company", Name: "ACME"},
		{ID: "eng", Name: "Engineering", Parent: "company"},
		{ID: "platform", Name: "Platform", Parent: "eng"},
		{ID: "sre", Name: "SRE", Parent: "platform"},
		{ID: "web", Name: "Web", Parent: "eng"},
		{ID: "sales", Name: "Sales", Parent: "company"},
	} {
		must[bool](tb)(d.PutDepartment(dep, fanout.Actor{Name: "admin"}))
	}
	for _, u := range []fanout.User{
		{ID: "ceo", Department: "company"},
		{ID: "ana", Department: "eng"},
		{ID: "bo", Department: "platform", Phone: "+14155550100"},
		{ID: "cy", Department: "sre"},
		{ID: "di", Department: "web"},
		{ID: "ed", Department: "sales"},
		{ID: "fay"},
	} {
		must[bool](tb)(d.PutUserAs(u, fanout.Actor{Name: "admin"}))
	}
}

func expand(tb testing.TB, d *fanout.Directory, target string) string {
	tb.Helper()
	ids, err := d.Expand(target)
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.Join(ids, ",")
}

func TestDepartmentTreeDrivesDeptGroups(t *testing.T) {
	d := openDir(t, memstore.New())
	org(t, d)
	steps := []struct {
		name   string
		change func() error
		want   map[string]string
	}{
		{"initial tree", func() error { return nil }, map[string]string{
			"all":           "ana,bo,ceo,cy,di,ed,fay",
			"dept:company":  "ana,bo,ceo,cy,di,ed",
			"dept:eng":      "ana,bo,cy,di",
			"dept:platform": "bo,cy",
			"dept:sre":      "cy",
			"dept:sales":    "ed",
		}},
		{"move platform under sales", func() error {
			_, err := d.PutDepartment(fanout.Department{ID: "platform", Name: "Platform", Parent: "sales"}, fanout.Actor{Name: "admin"})
			return err
		}, map[string]string{
			"dept:eng":     "ana,di",
			"dept:sales":   "bo,cy,ed",
			"dept:company": "ana,bo,ceo,cy,di,ed",
		}},
		{"move a user to another department", func() error {
			_, err := d.PutUserAs(fanout.User{ID: "di", Department: "sre"}, fanout.Actor{Name: "admin"})
			return err
		}, map[string]string{
			"dept:web":   "",
			"dept:sre":   "cy,di",
			"dept:sales": "bo,cy,di,ed",
			"dept:eng":   "ana",
		}},
		{"user leaves every department", func() error {
			_, err := d.PutUserAs(fanout.User{ID: "ana"}, fanout.Actor{Name: "admin"})
			return err
		}, map[string]string{"dept:eng": "", "dept:company": "bo,ceo,cy,di,ed", "all": "ana,bo,ceo,cy,di,ed,fay"}},
		{"remove an empty department", func() error { return d.RemoveDepartment("web", fanout.Actor{Name: "admin"}) }, map[string]string{
			"dept:web": "error: engine: unknown recipient: \"dept:web\": fanout: unknown department",
		}},
		{"remove a user", func() error { _, err := d.RemoveUser("cy", fanout.Actor{Name: "admin"}); return err }, map[string]string{
			"dept:sre": "di", "dept:company": "bo,ceo,di,ed", "all": "ana,bo,ceo,di,ed,fay",
		}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			ok(t, s.change())
			for target, want := range s.want {
				if got := expand(t, d, target); got != want {
					t.Errorf("Expand(%q) = %q, want %q", target, got, want)
				}
			}
		})
	}
}

func TestDepartmentErrors(t *testing.T) {
	d := openDir(t, memstore.New())
	org(t, d)
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"parent is itself", put(d, fanout.Department{ID: "eng", Parent: "eng"}), fanout.ErrDepartmentCycle},
		{"parent is a descendant", put(d, fanout.Department{ID: "eng", Parent: "sre"}), fanout.ErrDepartmentCycle},
		{"root under its grandchild", put(d, fanout.Department{ID: "company", Parent: "platform"}), fanout.ErrDepartmentCycle},
		{"unknown parent", put(d, fanout.Department{ID: "hr", Parent: "nope"}), fanout.ErrUnknownDepartment},
		{"bad id", put(d, fanout.Department{ID: "a b"}), engine.ErrBadName},
		{"bad parent id", put(d, fanout.Department{ID: "hr", Parent: "x:y"}), engine.ErrBadName},
		{"remove with sub-departments", d.RemoveDepartment("eng", fanout.Actor{Name: "admin"}), fanout.ErrDepartmentNotEmpty},
		{"remove with users", d.RemoveDepartment("sre", fanout.Actor{Name: "admin"}), fanout.ErrDepartmentNotEmpty},
		{"remove unknown", d.RemoveDepartment("nope", fanout.Actor{Name: "admin"}), fanout.ErrUnknownDepartment},
		{"user in unknown department", putUser(d, fanout.User{ID: "gus", Department: "nope"}), fanout.ErrUnknownDepartment},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !errors.Is(c.err, c.want) {
				t.Fatalf("err = %v, want %v", c.err, c.want)
			}
		})
	}
	if dep, _ := d.Department("eng"); dep.Parent != "company" {
		t.Fatalf("a refused change moved eng: %+v", dep)
	}
	if got := expand(t, d, "dept:eng"); got != "ana,bo,cy,di" {
		t.Fatalf("dept:eng = %q after refused changes", got)
	}
	if sub, _ := d.Subtree("eng"); strings.Join(sub, ",") != "eng,platform,web,sre" {
		t.Fatalf("Subtree(eng) = %v", sub)
	}
	if subs := d.SubDepartments(""); len(subs) != 1 || subs[0].ID != "company" {
		t.Fatalf("roots = %v", subs)
	}
}

func put(d *fanout.Directory, dep fanout.Department) error {
	_, err := d.PutDepartment(dep, fanout.Actor{Name: "admin"})
	return err
}

func putUser(d *fanout.Directory, u fanout.User) error {
	_, err := d.PutUserAs(u, fanout.Actor{Name: "admin"})
	return err
}

func TestGroupsAndTargets(t *testing.T) {
	d := openDir(t, memstore.New())
	org(t, d)
	ok(t, put(d, fanout.Department{ID: "hr", Name: "HR", Parent: "company"}))
	if created := must[bool](t)(d.PutGroup(fanout.Group{ID: "oncall", Name: "On call", Members: []string{"cy", "bo", "cy"}}, fanout.Actor{Name: "admin"})); !created {
		t.Fatal("PutGroup: not created")
	}
	must[bool](t)(d.PutGroup(fanout.Group{ID: "leads", Name: "Leads", Members: []string{"ceo", "ana"}}, fanout.Actor{Name: "admin"}))
	if g := must[fanout.Group](t)(d.UpdateMembers("oncall", []string{"di", "ed"}, []string{"bo", "ed"}, fanout.Actor{Name: "admin"})); strings.Join(g.Members, ",") != "cy,di" {
		t.Fatalf("members after update: %v", g.Members)
	}
	must[fanout.Group](t)(d.AddMembers("oncall", []string{"fay"}, fanout.Actor{Name: "admin"}))
	must[fanout.Group](t)(d.RemoveMembers("oncall", []string{"nobody"}, fanout.Actor{Name: "admin"}))
	for _, c := range []struct{ target, want string }{
		{"group:oncall", "cy,di,fay"},
		{"group:leads", "ana,ceo"},
		{"ana", "ana"},
		{"group:nope", `error: engine: unknown recipient: "group:nope": fanout: unknown group`},
		{"zed", `error: engine: unknown recipient: "zed"`},
		{"team:x", `error: engine: unknown recipient: "team:x"`},
	} {
		if got := expand(t, d, c.target); got != c.want {
			t.Errorf("Expand(%q) = %q, want %q", c.target, got, c.want)
		}
	}
	resolve := []struct {
		name string
		to   []string
		want string
		err  error
	}{
		{"user ids pass through", []string{"bo", "ana"}, "bo,ana", nil},
		{"targets are expanded and merged", []string{"group:oncall", "dept:sre", "ed"}, "cy,di,ed,fay", nil},
		{"all", []string{"all"}, "ana,bo,ceo,cy,di,ed,fay", nil},
		{"unknown user", []string{"ana", "zed"}, "", engine.ErrUnknownRecipient},
		{"unknown group", []string{"group:nope"}, "", fanout.ErrUnknownGroup},
		{"unknown department", []string{"ana", "dept:nope"}, "", fanout.ErrUnknownDepartment},
		{"empty department", []string{"dept:hr", "dept:sre"}, "cy", nil},
	}
	for _, c := range resolve {
		t.Run(c.name, func(t *testing.T) {
			got, err := d.Resolve(c.to)
			if !errors.Is(err, c.err) || strings.Join(got, ",") != c.want {
				t.Fatalf("Resolve(%v) = %v, %v; want %q, %v", c.to, got, err, c.want, c.err)
			}
		})
	}
	must[bool](t)(d.PutGroup(fanout.Group{ID: "empty", Name: "Nobody"}, fanout.Actor{Name: "admin"}))
	if _, err := d.Resolve([]string{"group:empty"}); !errors.Is(err, engine.ErrNoRecipients) {
		t.Fatalf("Resolve(empty group): %v", err)
	}
	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"unknown member", func() error {
			_, err := d.PutGroup(fanout.Group{ID: "x", Members: []string{"zed"}}, fanout.Actor{Name: "admin"})
			return err
		}(), fanout.ErrUnknownUser},
		{"reserved id", func() error { _, err := d.PutGroup(fanout.Group{ID: "all"}, fanout.Actor{Name: "admin"}); return err }(), engine.ErrBadName},
		{"add unknown member", func() error {
			_, err := d.AddMembers("oncall", []string{"zed"}, fanout.Actor{Name: "admin"})
			return err
		}(), fanout.ErrUnknownUser},
		{"members of unknown group", func() error { _, err := d.AddMembers("nope", []string{"ana"}, fanout.Actor{Name: "admin"}); return err }(), fanout.ErrUnknownGroup},
		{"remove unknown group", d.RemoveGroup("nope", fanout.Actor{Name: "admin"}), fanout.ErrUnknownGroup},
		{"user id all", putUser(d, fanout.User{ID: "all"}), engine.ErrBadName},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, c.err, c.want)
		}
	}
	ok(t, d.RemoveGroup("leads", fanout.Actor{Name: "admin"}))
	if gs := d.Groups(); len(gs) != 2 || gs[0].ID != "empty" || gs[1].ID != "oncall" {
		t.Fatalf("Groups() = %+v", gs)
	}
}

func TestRemoveUser(t *testing.T) {
	d := openDir(t, memstore.New())
	org(t, d)
	must[bool](t)(d.PutGroup(fanout.Group{ID: "oncall", Members: []string{"bo", "cy"}}, fanout.Actor{Name: "admin"}))
	must[bool](t)(d.PutGroup(fanout.Group{ID: "leads", Members: []string{"bo", "ceo"}}, fanout.Actor{Name: "admin"}))
	u, err := d.RemoveUser("bo", fanout.Actor{Name: "admin"})
	if err != nil || u.Status != fanout.StatusRemoved || u.Department != "" {
		t.Fatalf("RemoveUser = %+v, %v", u, err)
	}
	if g, _ := d.Group("oncall"); !slices.Equal(g.Members, []string{"cy"}) {
		t.Fatalf("oncall = %v", g.Members)
	}
	if g, _ := d.Group("leads"); !slices.Equal(g.Members, []string{"ceo"}) {
		t.Fatalf("leads = %v", g.Members)
	}
	if got := expand(t, d, "dept:platform"); got != "cy" {
		t.Fatalf("dept:platform = %q", got)
	}
	if _, err := d.Resolve([]string{"bo"}); !errors.Is(err, engine.ErrUnknownRecipient) {
		t.Fatalf("Resolve(bo) = %v", err)
	}
	if _, err := d.Contact("bo"); !errors.Is(err, engine.ErrUnknownRecipient) {
		t.Fatalf("Contact(bo) = %v", err)
	}
	if _, err := d.Expand("bo"); !errors.Is(err, engine.ErrUnknownRecipient) {
		t.Fatalf("Expand(bo) = %v", err)
	}
	if d.Active("bo") || !d.Active("cy") {
		t.Fatal("Active")
	}
	if got, ok := d.User("bo"); !ok || got.Status != fanout.StatusRemoved || got.Phone == "" {
		t.Fatalf("User(bo) = %+v %v: a removed user keeps their record", got, ok)
	}
	if _, err := d.AddMembers("oncall", []string{"bo"}, fanout.Actor{Name: "admin"}); !errors.Is(err, fanout.ErrUnknownUser) {
		t.Fatalf("adding a removed user to a group: %v", err)
	}
	for status, want := range map[string]int{"active": 6, "removed": 1, "all": 7} {
		if us, err := d.UsersByStatus(status); err != nil || len(us) != want {
			t.Errorf("UsersByStatus(%s) = %d users, %v; want %d", status, len(us), err, want)
		}
	}
	if len(d.Users()) != 6 {
		t.Fatal("Users() lists removed users")
	}
	if _, err := d.UsersByStatus("gone"); !errors.Is(err, fanout.ErrBadStatus) {
		t.Fatalf("UsersByStatus(gone): %v", err)
	}
	before := must[[]fanout.AuditEntry](t)(d.Audit(0, 1000))
	if again, err := d.RemoveUser("bo", fanout.Actor{Name: "admin"}); err != nil || again.Status != fanout.StatusRemoved {
		t.Fatalf("second RemoveUser = %+v, %v", again, err)
	}
	if after := must[[]fanout.AuditEntry](t)(d.Audit(0, 1000)); len(after) != len(before) {
		t.Fatal("removing a removed user wrote an audit entry")
	}
	if _, err := d.RemoveUser("zed", fanout.Actor{Name: "admin"}); !errors.Is(err, fanout.ErrUnknownUser) {
		t.Fatalf("RemoveUser(zed) = %v", err)
	}
	// Putting a removed user back reactivates them, in no group.
	must[bool](t)(d.PutUserAs(fanout.User{ID: "bo", Name: "Bo", Department: "web"}, fanout.Actor{Name: "admin"}))
	if got := expand(t, d, "dept:web"); got != "bo,di" {
		t.Fatalf("dept:web after rehire = %q", got)
	}
	if g, _ := d.Group("oncall"); slices.Contains(g.Members, "bo") {
		t.Fatal("rehired user is back in a group")
	}
}

func TestAuditLog(t *testing.T) {
	d := openDir(t, memstore.New())
	org(t, d)
	must[bool](t)(d.PutUserAs(fanout.User{ID: "bo", Department: "platform", Phone: "+14155550199", Name: "Bo"}, fanout.Actor{Name: "alice"}))
	must[bool](t)(d.PutGroup(fanout.Group{ID: "g", Members: []string{"bo"}}, fanout.Actor{Name: "admin"}))
	must[fanout.Group](t)(d.UpdateMembers("g", []string{"cy"}, nil, fanout.Actor{Name: "admin"}))
	must[fanout.User](t)(d.RemoveUser("bo", fanout.Actor{Name: "admin"}))
	ok(t, d.RemoveGroup("g", fanout.Actor{Name: "admin"}))
	ok(t, put(d, fanout.Department{ID: "hr", Name: "HR", Parent: "sales"}))
	ok(t, put(d, fanout.Department{ID: "hr", Name: "People", Parent: "company"}))
	ok(t, d.RemoveDepartment("hr", fanout.Actor{Name: "admin"}))
	must[bool](t)(d.PutUser(fanout.User{ID: "zoe", Phone: "+14155550111"}))
	es := must[[]fanout.AuditEntry](t)(d.Audit(0, 1000))
	var got []string
	for i, e := range es {
		if e.Seq != uint64(i+1) || e.At.IsZero() {
			t.Errorf("entry %d: %+v", i, e)
		}
		if strings.Contains(e.Detail, "+1415") || strings.Contains(e.Detail, "555") {
			t.Errorf("entry %+v leaks a phone number", e)
		}
		got = append(got, e.Actor+" "+e.Action+" "+e.Target+": "+e.Detail)
	}
	want := []string{
		`admin dept.put company: created "ACME"`,
		`admin dept.put eng: created "Engineering" under company`,
		`admin dept.put platform: created "Platform" under eng`,
		`admin dept.put sre: created "SRE" under platform`,
		`admin dept.put web: created "Web" under eng`,
		`admin dept.put sales: created "Sales" under company`,
		`admin user.put ceo: created; department company`,
		`admin user.put ana: created; department eng`,
		`admin user.put bo: created; phone set; department platform`,
		`admin user.put cy: created; department sre`,
		`admin user.put di: created; department web`,
		`admin user.put ed: created; department sales`,
		`admin user.put fay: created`,
		`alice user.put bo: updated: name changed; phone changed`,
		`admin group.put g: created "" with 1 members`,
		`admin group.members g: added cy`,
		`admin user.remove bo: removed; left department platform; left groups g`,
		`admin group.remove g: removed "" with 1 members`,
		`admin dept.put hr: created "HR" under sales`,
		`admin dept.put hr: renamed "HR" -> "People"; moved from "sales" to "company"`,
		`admin dept.remove hr: removed "People"`,
		`system user.put zoe: created; phone set`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("audit log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if page := must[[]fanout.AuditEntry](t)(d.Audit(20, 2)); len(page) != 2 || page[0].Seq != 21 {
		t.Fatalf("Audit(18, 2) = %+v", page)
	}
	// Unchanged puts write nothing.
	must[bool](t)(d.PutUser(fanout.User{ID: "zoe", Phone: "+14155550111"}))
	must[bool](t)(d.PutDepartment(fanout.Department{ID: "eng", Name: "Engineering", Parent: "company"}, fanout.Actor{Name: "admin"}))
	if n := len(must[[]fanout.AuditEntry](t)(d.Audit(0, 1000))); n != len(want) {
		t.Fatalf("unchanged puts wrote %d audit entries", n-len(want))
	}
}

func TestDirectorySurvivesReopen(t *testing.T) {
	st := memstore.New()
	d := openDir(t, st)
	org(t, d)
	must[bool](t)(d.PutGroup(fanout.Group{ID: "oncall", Name: "On call", Members: []string{"bo", "cy"}}, fanout.Actor{Name: "admin"}))
	must[fanout.User](t)(d.RemoveUser("cy", fanout.Actor{Name: "admin"}))
	d2 := openDir(t, st)
	for _, target := range []string{"all", "dept:company", "dept:eng", "dept:platform", "group:oncall", "cy"} {
		if a, b := expand(t, d, target), expand(t, d2, target); a != b {
			t.Errorf("Expand(%q): %q before reopen, %q after", target, a, b)
		}
	}
	if a, b := fmt.Sprint(d.Departments()), fmt.Sprint(d2.Departments()); a != b {
		t.Errorf("departments %s before, %s after", a, b)
	}
	u, _ := d2.User("cy")
	if u.Status != fanout.StatusRemoved {
		t.Errorf("cy after reopen: %+v", u)
	}
	// The audit sequence continues.
	n := len(must[[]fanout.AuditEntry](t)(d2.Audit(0, 1000)))
	ok(t, d2.RemoveGroup("oncall", fanout.Actor{Name: "admin"}))
	es := must[[]fanout.AuditEntry](t)(d2.Audit(uint64(n), 10))
	if len(es) != 1 || es[0].Seq != uint64(n+1) {
		t.Fatalf("audit after reopen: %+v", es)
	}
}

// TestConcurrentReadsAndWrites runs Resolve and Expand while the tree and
// groups change (for -race).
func TestConcurrentReadsAndWrites(t *testing.T) {
	d := openDir(t, memstore.New())
	org(t, d)
	done := make(chan struct{})
	errs := make(chan error, 1)
	go func() {
		defer close(done)
		for i := range 200 {
			parent := []string{"eng", "sales"}[i%2]
			if _, err := d.PutDepartment(fanout.Department{ID: "platform", Parent: parent}, fanout.Actor{Name: "admin"}); err != nil {
				errs <- err
				return
			}
			if _, err := d.PutGroup(fanout.Group{ID: "g", Members: []string{"ana", "bo"}[:1+i%2]}, fanout.Actor{Name: "admin"}); err != nil {
				errs <- err
				return
			}
		}
	}()
	for {
		select {
		case <-done:
			select {
			case err := <-errs:
				t.Fatal(err)
			default:
			}
			return
		default:
		}
		for _, target := range []string{"dept:company", "dept:eng", "all"} {
			if ids, err := d.Expand(target); err != nil || len(ids) == 0 {
				t.Fatalf("Expand(%s) = %v, %v", target, ids, err)
			}
		}
		if ids, err := d.Resolve([]string{"dept:company"}); err != nil || len(ids) != 6 {
			t.Fatalf("Resolve(dept:company) = %v, %v", ids, err)
		}
	}
}

// Reload makes a directory read another store (a cluster node's copy of
// the directory's partition, changed under it): it then answers from
// that store's users, departments, groups and audit log (whose chain
// verifies through it), reports the users active before and not after,
// and expands departments afresh (no cached subtree survives).
func TestReload(t *testing.T) {
	st1, st2 := memstore.New(), memstore.New()
	d1, d2 := openDir(t, st1), openDir(t, st2)
	org(t, d1)
	org(t, d2)
	if got := expand(t, d1, "dept:eng"); got != "ana,bo,cy,di" { // cached now
		t.Fatalf("dept:eng = %s", got)
	}
	// st2 moves on: bo is removed, ana moves to sales, a group appears.
	must[fanout.User](t)(d2.RemoveUser("bo", fanout.Actor{Name: "admin"}))
	must[bool](t)(d2.PutUserAs(fanout.User{ID: "ana", Department: "sales"}, fanout.Actor{Name: "admin"}))
	must[bool](t)(d2.PutGroup(fanout.Group{ID: "oncall", Members: []string{"cy"}}, fanout.Actor{Name: "admin"}))

	removed, err := d1.Reload(st2)
	ok(t, err)
	if !slices.Equal(removed, []string{"bo"}) {
		t.Fatalf("removed = %v, want [bo]", removed)
	}
	if d1.Active("bo") || !d1.Active("ana") {
		t.Fatal("bo active or ana not after the reload")
	}
	if got := expand(t, d1, "dept:eng"); got != "cy,di" {
		t.Fatalf("dept:eng after the reload = %s, want cy,di (a stale cached subtree?)", got)
	}
	if _, found := d1.Group("oncall"); !found {
		t.Fatal("the group st2 holds is missing after the reload")
	}
	a1, err := d1.Audit(0, 1000)
	ok(t, err)
	a2, err := d2.Audit(0, 1000)
	ok(t, err)
	if len(a1) != len(a2) || a1[len(a1)-1].Seq != a2[len(a2)-1].Seq {
		t.Fatalf("d1 reads %d audit entries after the reload, st2 holds %d", len(a1), len(a2))
	}
	// d2 writes on; d1, reloaded again, reads a chain that verifies.
	must[bool](t)(d2.PutUserAs(fanout.User{ID: "gil"}, fanout.Actor{Name: "admin"}))
	_, err = d1.Reload(st2)
	ok(t, err)
	if c, err := d1.VerifyAudit(""); err != nil || c.BrokenAt != 0 {
		t.Fatalf("the audit chain through d1 after a reload: %+v %v", c, err)
	}
}
