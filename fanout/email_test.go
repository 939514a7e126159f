package fanout_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/fanout"
)

func TestUserEmail(t *testing.T) {
	d := openDir(t, memstore.New())
	for _, bad := range []string{"x", "Ana <ana@example.com>", "ana@example.com, bo@example.com", " ana@example.com", "ana@nodot", "@example.com"} {
		_, err := d.PutUser(fanout.User{ID: "ana", Name: "Ana", Email: bad})
		if !errors.Is(err, fanout.ErrBadEmail) || !strings.Contains(err.Error(), "like ana@example.com") {
			t.Errorf("email %q: %v, want ErrBadEmail", bad, err)
		}
	}
	if _, err := d.PutUser(fanout.User{ID: "ana", Name: "Ana", Email: "ana@example.com"}); err != nil {
		t.Fatal(err)
	}
	if c, err := d.Contact("ana"); err != nil || c.Email != "ana@example.com" {
		t.Fatalf("contact %+v, %v", c, err)
	}
	clear := ""
	if _, err := d.UpdateUserAs("ana", fanout.UserPatch{Email: &clear}, fanout.Actor{}); err != nil {
		t.Fatal(err)
	}
	if c, _ := d.Contact("ana"); c.Email != "" {
		t.Fatalf("email %q after clearing", c.Email)
	}
	o, err := fanout.ParseOrgCSV(strings.NewReader("id,name,phone,department_path,quiet_hours,email\nbo,Bo,,Sales,,bo@example.com\n"))
	if err != nil {
		t.Fatal(err)
	}
	if o.Users[0].Email != "bo@example.com" {
		t.Fatalf("csv user %+v", o.Users[0])
	}
	if _, err := d.Import(o, fanout.ImportOptions{}, fanout.Actor{}); err != nil {
		t.Fatal(err)
	}
	if c, _ := d.Contact("bo"); c.Email != "bo@example.com" {
		t.Fatalf("imported email %q", c.Email)
	}
}
