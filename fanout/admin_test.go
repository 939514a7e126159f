package fanout_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/fanout"
)

// TestAdmins: admins are directory records, changed like users (one
// audited write), read from memory, and kept across a reopen; the first
// owner exists before anything is written; the last owner stays.
func TestAdmins(t *testing.T) {
	st := memstore.New()
	d := openDir(t, st)
	org(t, d)
	if a, ok := d.Admin(fanout.FirstOwner); !ok || a.Role != fanout.RoleOwner || a.Status != fanout.AdminActive || a.Gen != 0 {
		t.Fatalf("first owner before any write: %+v %v", a, ok)
	}
	hr := must[fanout.Admin](t)(d.AddAdmin(fanout.Admin{Name: "hr-sync", Role: "directory"}, fanout.Actor{Name: "owner"}))
	if hr.Gen != 1 || hr.Status != fanout.AdminActive || hr.By != "owner" {
		t.Fatalf("added: %+v", hr)
	}
	exp := time.Now().Add(time.Hour)
	must[fanout.Admin](t)(d.AddAdmin(fanout.Admin{Name: "sre-lead", Role: "dept-admin", Dept: "sre", Expires: exp}, fanout.Actor{Name: "owner"}))

	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"duplicate", second(d.AddAdmin(fanout.Admin{Name: "hr-sync", Role: "sender"}, fanout.Actor{Name: "owner"})), fanout.ErrAdminExists},
		{"the first owner's name", second(d.AddAdmin(fanout.Admin{Name: fanout.FirstOwner, Role: "owner"}, fanout.Actor{Name: "owner"})), fanout.ErrAdminExists},
		{"unknown department", second(d.AddAdmin(fanout.Admin{Name: "x", Role: "dept-admin", Dept: "nosuch"}, fanout.Actor{Name: "owner"})), fanout.ErrUnknownDepartment},
		{"bad name", second(d.AddAdmin(fanout.Admin{Name: "a b", Role: "sender"}, fanout.Actor{Name: "owner"})), engine.ErrBadName},
		{"no role", second(d.AddAdmin(fanout.Admin{Name: "x"}, fanout.Actor{Name: "owner"})), engine.ErrBadName},
		{"unknown admin", third(d.RevokeAdmin("nosuch", fanout.Actor{Name: "owner"})), fanout.ErrUnknownAdmin},
		{"the last owner", third(d.RevokeAdmin(fanout.FirstOwner, fanout.Actor{Name: "owner"})), fanout.ErrLastOwner},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}

	r, already, err := d.RevokeAdmin("hr-sync", fanout.Actor{Name: "owner"})
	if err != nil || already || r.Status != fanout.AdminRevoked {
		t.Fatalf("revoke: %+v %v %v", r, already, err)
	}
	if a, _ := d.Admin("hr-sync"); a.Accepts(1, time.Now()) {
		t.Fatalf("a revoked admin's token is accepted: %+v", a)
	}
	if _, already, err := d.RevokeAdmin("hr-sync", fanout.Actor{Name: "owner"}); err != nil || !already {
		t.Fatalf("revoke again: %v %v", already, err)
	}
	// Added again: the next generation, so the old token stays revoked.
	hr = must[fanout.Admin](t)(d.AddAdmin(fanout.Admin{Name: "hr-sync", Role: "directory"}, fanout.Actor{Name: "owner"}))
	if hr.Gen != 2 || hr.Accepts(1, time.Now()) || !hr.Accepts(2, time.Now()) {
		t.Fatalf("added again: %+v", hr)
	}
	// With a second owner, the first may go.
	must[fanout.Admin](t)(d.AddAdmin(fanout.Admin{Name: "cto", Role: fanout.RoleOwner}, fanout.Actor{Name: "owner"}))
	third(d.RevokeAdmin(fanout.FirstOwner, fanout.Actor{Name: "cto"}))
	if _, _, err := d.RevokeAdmin("cto", fanout.Actor{Name: "cto"}); !errors.Is(err, fanout.ErrLastOwner) {
		t.Fatalf("revoking the last owner (the first one revoked): %v", err)
	}

	d2 := openDir(t, st)
	for _, name := range []string{fanout.FirstOwner, "hr-sync", "sre-lead", "cto"} {
		a, _ := d.Admin(name)
		b, ok := d2.Admin(name)
		if !ok || a != b {
			t.Errorf("%s: %+v before reopen, %+v after", name, a, b)
		}
	}
	es := must[[]fanout.AuditEntry](t)(d2.Audit(0, 1000))
	var got []string
	for _, e := range es {
		if e.Action == "admin.add" || e.Action == "admin.revoke" {
			got = append(got, e.Actor+" "+e.Action+" "+e.Target)
		}
	}
	want := "[owner admin.add hr-sync owner admin.add sre-lead owner admin.revoke hr-sync owner admin.add hr-sync owner admin.add cto cto admin.revoke owner]"
	if s := fmt.Sprint(got); s != want {
		t.Fatalf("audit: %s, want %s", s, want)
	}
}

func TestWithin(t *testing.T) {
	d := openDir(t, memstore.New())
	org(t, d)
	for _, c := range []struct {
		dept, root string
		want       bool
	}{
		{"sre", "eng", true}, {"eng", "eng", true}, {"sales", "eng", false}, {"company", "eng", false},
		{"", "eng", false}, {"nosuch", "eng", false}, {"sre", "nosuch", false},
	} {
		if got := d.Within(c.dept, c.root); got != c.want {
			t.Errorf("Within(%q, %q) = %v", c.dept, c.root, got)
		}
	}
	if !d.UserWithin("cy", "eng") || d.UserWithin("ed", "eng") || d.UserWithin("fay", "eng") || d.UserWithin("nosuch", "eng") {
		t.Fatal("UserWithin")
	}
}

func second[T any](_ T, err error) error { return err }

func third[T, U any](_ T, _ U, err error) error { return err }

// TestDepartmentOfAnAdminStays: the department a department admin is
// scoped to cannot be removed while that admin is active (the admin would
// be scoped to nothing, or to a department made again later under the
// same id); once the admin is revoked, it can.
func TestDepartmentOfAnAdminStays(t *testing.T) {
	d := openDir(t, memstore.New())
	org(t, d)
	must[fanout.Admin](t)(d.AddAdmin(fanout.Admin{Name: "web-lead", Role: "dept-admin", Dept: "web"}, fanout.Actor{Name: "owner"}))
	eng := "eng"
	must[fanout.User](t)(d.UpdateUserAs("di", fanout.UserPatch{Department: &eng}, fanout.Actor{Name: "owner"})) // web's one user moves out
	err := d.RemoveDepartment("web", fanout.Actor{Name: "owner"})
	if !errors.Is(err, fanout.ErrDepartmentNotEmpty) || !strings.Contains(err.Error(), "web-lead") {
		t.Fatalf("remove the scope of an active admin: %v, want ErrDepartmentNotEmpty naming web-lead", err)
	}
	if _, _, err := d.RevokeAdmin("web-lead", fanout.Actor{Name: "owner"}); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveDepartment("web", fanout.Actor{Name: "owner"}); err != nil {
		t.Fatalf("remove it once its admin is revoked: %v", err)
	}
}
