package fanout_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/fanout"
)

const orgJSON = `{
  "departments": [
    {"id": "company", "name": "ACME"},
    {"id": "eng", "name": "Engineering", "parent": "company"},
    {"id": "sre", "name": "SRE", "parent": "eng"}
  ],
  "users": [
    {"id": "ana", "name": "Ana", "phone": "+14155550100", "department": "eng"},
    {"id": "bo", "name": "Bo", "department": "sre", "quiet_hours": "22:00-07:00"},
    {"id": "cy", "name": "Cy"}
  ],
  "groups": [
    {"id": "oncall", "name": "On call", "members": ["bo", "ana"]}
  ]
}`

func parseJSON(tb testing.TB, s string) fanout.Org {
	tb.Helper()
	o, err := fanout.ParseOrgJSON(strings.NewReader(s))
	if err != nil {
		tb.Fatal(err)
	}
	return o
}

func diffString(df fanout.Diff) string {
	return fmt.Sprintf("depts +%v ~%v users +%v ~%v =%d groups +%v ~%v missing %v",
		df.DepartmentsAdded, df.DepartmentsUpdated, df.UsersAdded, df.UsersUpdated, df.UsersUnchanged,
		df.GroupsAdded, df.GroupsUpdated, df.Missing)
}

func TestImportIsIdempotent(t *testing.T) {
	d := openDir(t, memstore.New())
	must[bool](t)(d.PutUser(fanout.User{ID: "old"}))
	df := must[fanout.Diff](t)(d.Import(parseJSON(t, orgJSON), fanout.ImportOptions{}, fanout.Actor{Name: "admin"}))
	if got, want := diffString(df), "depts +[company eng sre] ~[] users +[ana bo cy] ~[] =0 groups +[oncall] ~[] missing [old]"; got != want {
		t.Fatalf("first import: %s\nwant %s", got, want)
	}
	if got := expand(t, d, "dept:company"); got != "ana,bo" {
		t.Fatalf("dept:company = %q", got)
	}
	if got := expand(t, d, "group:oncall"); got != "ana,bo" {
		t.Fatalf("group:oncall = %q", got)
	}
	n := len(must[[]fanout.AuditEntry](t)(d.Audit(0, 1000)))
	df = must[fanout.Diff](t)(d.Import(parseJSON(t, orgJSON), fanout.ImportOptions{}, fanout.Actor{Name: "admin"}))
	if df.Changed() || df.UsersUnchanged != 3 || !slices.Equal(df.Missing, []string{"old"}) {
		t.Fatalf("second import: %s", diffString(df))
	}
	es := must[[]fanout.AuditEntry](t)(d.Audit(uint64(n), 1000))
	if len(es) != 1 || es[0].Action != "import" {
		t.Fatalf("second import wrote %+v, want only the summary", es)
	}
}

func TestImportAppliesExactlyTheChanges(t *testing.T) {
	d := openDir(t, memstore.New())
	must[fanout.Diff](t)(d.Import(parseJSON(t, orgJSON), fanout.ImportOptions{}, fanout.Actor{Name: "admin"}))
	n := len(must[[]fanout.AuditEntry](t)(d.Audit(0, 1000)))
	changed := `{
  "departments": [
    {"id": "company", "name": "ACME Inc"},
    {"id": "eng", "name": "Engineering", "parent": "company"},
    {"id": "sre", "name": "SRE", "parent": "company"},
    {"id": "hr", "name": "HR", "parent": "company"}
  ],
  "users": [
    {"id": "ana", "name": "Ana", "phone": "+14155550199", "department": "eng"},
    {"id": "bo", "name": "Bo", "department": "sre", "quiet_hours": "22:00-07:00"},
    {"id": "di", "name": "Di", "department": "hr"}
  ],
  "groups": [
    {"id": "oncall", "name": "On call", "members": ["bo", "di"]},
    {"id": "hr-team", "name": "HR", "members": ["di"]}
  ]
}`
	dry := must[fanout.Diff](t)(d.Import(parseJSON(t, changed), fanout.ImportOptions{DryRun: true}, fanout.Actor{Name: "admin"}))
	want := "depts +[hr] ~[company sre] users +[di] ~[ana] =1 groups +[hr-team] ~[oncall] missing [cy]"
	if got := diffString(dry); got != want || !dry.DryRun {
		t.Fatalf("dry run: %s\nwant %s", got, want)
	}
	if _, ok := d.User("di"); ok || len(must[[]fanout.AuditEntry](t)(d.Audit(0, 1000))) != n {
		t.Fatal("a dry run changed the directory")
	}
	df := must[fanout.Diff](t)(d.Import(parseJSON(t, changed), fanout.ImportOptions{RemoveMissing: true}, fanout.Actor{Name: "admin"}))
	if got := diffString(df); got != want {
		t.Fatalf("import: %s\nwant %s", got, want)
	}
	for target, want := range map[string]string{
		"dept:eng": "ana", "dept:company": "ana,bo,di", "group:oncall": "bo,di", "all": "ana,bo,cy,di",
	} {
		if got := expand(t, d, target); got != want {
			t.Errorf("Expand(%s) = %q, want %q", target, got, want)
		}
	}
	var got []string
	for _, e := range must[[]fanout.AuditEntry](t)(d.Audit(uint64(n), 1000)) {
		got = append(got, e.Action+" "+e.Target+": "+e.Detail)
	}
	wantAudit := []string{
		`dept.put company: import: renamed "ACME" -> "ACME Inc"`,
		`dept.put sre: import: moved from "eng" to "company"`,
		`dept.put hr: import: created "HR" under company`,
		`user.put ana: import: updated: phone changed`,
		`user.put di: import: created; department hr`,
		`group.put oncall: import: added di; removed ana`,
		`group.put hr-team: import: created "HR" with 1 members`,
		`import directory: departments +1 ~2; users +1 ~1 =1; groups +1 ~1; missing 1 (to be removed: cy)`,
	}
	if !slices.Equal(got, wantAudit) {
		t.Fatalf("audit:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantAudit, "\n"))
	}
}

func TestImportErrorsChangeNothing(t *testing.T) {
	cases := []struct {
		name, format, file string
		line               int
		want               error
		text               string
	}{
		{"csv bad phone", "csv", "id,name,phone,department_path\nana,Ana,+14155550100,Eng\nbo,Bo,555-1234,Eng/SRE\n", 3, fanout.ErrBadPhone, `line 3: user "bo"`},
		{"csv wrong field count", "csv", "id,name,phone,department_path\nana,Ana,,Eng\nbo,Bo\n", 3, nil, "line 3: 2 fields, want 4"},
		{"csv bad header", "csv", "user,name\nana,Ana\n", 1, nil, "want id,name,phone,department_path"},
		{"csv duplicate user", "csv", "id,name,phone,department_path\nana,A,,\nbo,B,,\nana,A2,,\n", 4, nil, "listed twice (also line 2)"},
		{"csv bad quote", "csv", "id,name,phone,department_path\nana,\"A,,\n", 2, nil, "line 2"},
		{"csv bad id", "csv", "id,name,phone,department_path\nana,A,,\nb o,B,,\n", 3, engine.ErrBadName, `line 3: user "b o"`},
		{"csv bad quiet hours", "csv", "id,name,phone,department_path,quiet_hours\nana,A,,,25:00-07:00\n", 2, fanout.ErrBadQuietHours, "line 2"},
		{"csv empty path segment", "csv", "id,name,phone,department_path\nana,A,,Eng//SRE\n", 2, nil, "empty segment"},
		{"csv ids collide", "csv", "id,name,phone,department_path\nana,A,,R&D\nbo,B,,R D\n", 3, nil, `"R D" and "R&D" (line 2) both give the id "r-d"`},
		{"json unknown department", "json", "{\"users\": [\n {\"id\": \"ana\"},\n {\"id\": \"bo\", \"department\": \"nope\"}\n]}", 3, fanout.ErrUnknownDepartment, `line 3: user "bo"`},
		{"json cycle", "json", "{\"departments\": [\n{\"id\": \"a\", \"parent\": \"b\"},\n{\"id\": \"b\", \"parent\": \"a\"}]}", 2, fanout.ErrDepartmentCycle, "line 2"},
		{"json unknown member", "json", "{\"users\": [{\"id\": \"ana\"}],\n\"groups\": [\n{\"id\": \"g\", \"members\": [\"ana\", \"zed\"]}]}", 3, fanout.ErrUnknownUser, `line 3: group "g"`},
		{"json unknown field", "json", "{\"users\": [\n{\"id\": \"ana\"},\n{\"id\": \"bo\", \"pager\": \"x\"}]}", 3, nil, `unknown field "pager"`},
		{"json syntax", "json", "{\"users\": [\n{\"id\": \"ana\"},\n{\"id\": \"bo\",, }]}", 3, nil, "line 3"},
		{"json wrong type", "json", "{\"users\": [\n{\"id\": \"ana\",\n\"name\": 7}]}", 3, nil, "line 3"},
		{"json unknown key", "json", "{\"people\": []}", 1, nil, `unknown key "people"`},
		{"json truncated", "json", "{\"users\": [\n{\"id\": \"ana\"}", 2, nil, "unexpected end"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := memstore.New()
			d := openDir(t, st)
			must[fanout.Diff](t)(d.Import(parseJSON(t, orgJSON), fanout.ImportOptions{}, fanout.Actor{Name: "admin"}))
			before := must[[]fanout.AuditEntry](t)(d.Audit(0, 1000))
			var o fanout.Org
			var err error
			if c.format == "csv" {
				o, err = fanout.ParseOrgCSV(strings.NewReader(c.file))
			} else {
				o, err = fanout.ParseOrgJSON(strings.NewReader(c.file))
			}
			if err == nil {
				_, err = d.Import(o, fanout.ImportOptions{}, fanout.Actor{Name: "admin"})
			}
			var ie *fanout.ImportError
			if !errors.As(err, &ie) || !errors.Is(err, fanout.ErrBadImport) {
				t.Fatalf("err = %v, want an *ImportError", err)
			}
			if ie.Line != c.line || !strings.Contains(err.Error(), c.text) || (c.want != nil && !errors.Is(err, c.want)) {
				t.Fatalf("err = %q (line %d), want line %d, %q, %v", err, ie.Line, c.line, c.text, c.want)
			}
			if after := must[[]fanout.AuditEntry](t)(d.Audit(0, 1000)); len(after) != len(before) {
				t.Fatal("a bad import wrote to the audit log")
			}
			d2 := openDir(t, st)
			if got := fmt.Sprint(d2.Users(), d2.Departments(), d2.Groups()); got != fmt.Sprint(d.Users(), d.Departments(), d.Groups()) {
				t.Fatal("a bad import changed the store")
			}
			if got := expand(t, d, "all"); got != "ana,bo,cy" {
				t.Fatalf("all = %q after a bad import", got)
			}
		})
	}
}

func TestImportCSVDepartmentPaths(t *testing.T) {
	d := openDir(t, memstore.New())
	csv := "\ufeffid,name,phone,department_path,quiet_hours\n" +
		"ana,Ana Lima,+14155550100,Engineering/Platform/SRE,22:00-07:00 Europe/Berlin\n" +
		"bo,\"Chen, Bo\",,Engineering/Platform,\n" +
		"cy,Cy,,  Sales & Ops  ,\n" +
		"di,Di,,研发部/Café,\n" +
		"ed,Ed,,,\n"
	o, err := fanout.ParseOrgCSV(strings.NewReader(csv))
	if err != nil {
		t.Fatal(err)
	}
	df := must[fanout.Diff](t)(d.Import(o, fanout.ImportOptions{}, fanout.Actor{Name: "hr-sync"}))
	var ids []string
	for _, dep := range d.Departments() {
		ids = append(ids, fmt.Sprintf("%s(%s<%s)", dep.ID, dep.Name, dep.Parent))
	}
	want := "cbfebacf(研发部<) cbfebacf.caf-cfc290a9(Café<cbfebacf) engineering(Engineering<) engineering.platform(Platform<engineering) " +
		"engineering.platform.sre(SRE<engineering.platform) sales-ops(Sales & Ops<)"
	if got := strings.Join(ids, " "); got != want {
		t.Fatalf("departments:\n%s\nwant\n%s", got, want)
	}
	if len(df.UsersAdded) != 5 || len(df.DepartmentsAdded) != 6 {
		t.Fatalf("diff %s", diffString(df))
	}
	if got := expand(t, d, "dept:engineering"); got != "ana,bo" {
		t.Fatalf("dept:engineering = %q", got)
	}
	if u, _ := d.User("bo"); u.Name != "Chen, Bo" || u.Department != "engineering.platform" {
		t.Fatalf("bo = %+v", u)
	}
	if c, _ := d.Contact("ana"); c.Quiet.Loc == nil || c.Quiet.Loc.String() != "Europe/Berlin" {
		t.Fatalf("ana's quiet hours: %+v", c.Quiet)
	}
	// The same file again changes nothing; moving bo is one update.
	df = must[fanout.Diff](t)(d.Import(must[fanout.Org](t)(fanout.ParseOrgCSV(strings.NewReader(csv))), fanout.ImportOptions{}, fanout.Actor{Name: "hr-sync"}))
	if df.Changed() || df.UsersUnchanged != 5 {
		t.Fatalf("second CSV import: %s", diffString(df))
	}
	moved := strings.Replace(csv, "Engineering/Platform,", "Engineering/Platform/SRE,", 1)
	df = must[fanout.Diff](t)(d.Import(must[fanout.Org](t)(fanout.ParseOrgCSV(strings.NewReader(moved))), fanout.ImportOptions{}, fanout.Actor{Name: "hr-sync"}))
	if got := diffString(df); got != "depts +[] ~[] users +[] ~[bo] =4 groups +[] ~[] missing []" {
		t.Fatalf("move: %s", got)
	}
}

// BenchmarkExpand measures target expansion in a 100k-user company of
// 1,000 departments under 10 divisions under one root.
func BenchmarkExpand(b *testing.B) {
	const users = 100_000
	d := openDir(b, memstore.New())
	o := fanout.Org{Departments: []fanout.Department{{ID: "root"}}}
	for i := range 10 {
		o.Departments = append(o.Departments, fanout.Department{ID: fmt.Sprintf("div%d", i), Parent: "root"})
	}
	for i := range 1000 {
		o.Departments = append(o.Departments, fanout.Department{ID: fmt.Sprintf("team%d", i), Parent: fmt.Sprintf("div%d", i%10)})
	}
	for i := range users {
		o.Users = append(o.Users, fanout.User{ID: fmt.Sprintf("u%06d", i), Department: fmt.Sprintf("team%d", i%1000)})
	}
	o.Groups = []fanout.Group{{ID: "big", Members: []string{}}}
	for i := 0; i < users; i += 10 {
		o.Groups[0].Members = append(o.Groups[0].Members, fmt.Sprintf("u%06d", i))
	}
	must[fanout.Diff](b)(d.Import(o, fanout.ImportOptions{}, fanout.Actor{Name: "bench"}))
	for _, c := range []struct {
		target string
		n      int
	}{
		{"all", users}, {"dept:root", users}, {"dept:div3", users / 10}, {"dept:team7", users / 1000},
		{"group:big", users / 10}, {"u000042", 1},
	} {
		b.Run("Expand/"+c.target, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if ids, err := d.Expand(c.target); err != nil || len(ids) != c.n {
					b.Fatalf("%d ids, %v", len(ids), err)
				}
			}
		})
	}
	// The baseline: what Expand("all") would cost as a scan of the users
	// and a sort per call, instead of the maintained sorted index.
	b.Run("Expand/all-baseline-scan-sort", func(b *testing.B) {
		byID := map[string]fanout.User{}
		for _, u := range o.Users {
			byID[u.ID] = u
		}
		b.ReportAllocs()
		for b.Loop() {
			ids := make([]string, 0, len(byID))
			for id, u := range byID {
				if u.Status != fanout.StatusRemoved {
					ids = append(ids, id)
				}
			}
			slices.Sort(ids)
		}
	})
	b.Run("Resolve/3users", func(b *testing.B) {
		b.ReportAllocs()
		to := []string{"u000001", "u050000", "u099999"}
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := d.Resolve(to); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("Import/unchanged", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if df, err := d.Import(o, fanout.ImportOptions{DryRun: true}, fanout.Actor{Name: "bench"}); err != nil || df.Changed() {
				b.Fatal(err)
			}
		}
	})
}

// TestImportCSVPathsMatchDepartmentsMadeByHand: a CSV path names the
// departments made with dept add (ids of the admin's choosing) by their
// names under the same parent instead of adding slug-named copies beside
// them; a segment with no such department is created under the matched
// parent.
func TestImportCSVPathsMatchDepartmentsMadeByHand(t *testing.T) {
	d := openDir(t, memstore.New())
	for _, dep := range []fanout.Department{{ID: "eng", Name: "Engineering"}, {ID: "sre", Name: "SRE", Parent: "eng"}, {ID: "ops", Name: "SRE"}} {
		if _, err := d.PutDepartment(dep, fanout.Actor{Name: "admin"}); err != nil {
			t.Fatal(err)
		}
	}
	csv := "id,name,phone,department_path\n" +
		"ana,Ana,,Engineering/SRE\n" +
		"bo,Bo,,Engineering\n" +
		"cy,Cy,,Engineering/Web\n"
	df := must[fanout.Diff](t)(d.Import(must[fanout.Org](t)(fanout.ParseOrgCSV(strings.NewReader(csv))), fanout.ImportOptions{}, fanout.Actor{Name: "hr-sync"}))
	if got := diffString(df); got != "depts +[engineering.web] ~[] users +[ana bo cy] ~[] =0 groups +[] ~[] missing []" {
		t.Fatalf("import: %s", got)
	}
	for user, want := range map[string]string{"ana": "sre", "bo": "eng", "cy": "engineering.web"} {
		if u, _ := d.User(user); u.Department != want {
			t.Errorf("%s is in %q, want %q", user, u.Department, want)
		}
	}
	if dep, ok := d.Department("engineering.web"); !ok || dep.Parent != "eng" {
		t.Errorf("Web: %+v, want it under eng", dep)
	}
	df = must[fanout.Diff](t)(d.Import(must[fanout.Org](t)(fanout.ParseOrgCSV(strings.NewReader(csv))), fanout.ImportOptions{}, fanout.Actor{Name: "hr-sync"}))
	if df.Changed() {
		t.Fatalf("second import: %s", diffString(df))
	}
}
