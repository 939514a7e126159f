package fanout_test

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/fanout"
)

// auditKey is the audit entry's key, as the package doc draws it.
func auditKey(seq uint64) []byte { return binary.BigEndian.AppendUint64([]byte{'u', 'a'}, seq) }

func sha(b []byte) []byte { h := sha256.Sum256(b); return h[:] }

func setRaw(tb testing.TB, st store.Store, k, v []byte) {
	tb.Helper()
	b := st.NewBatch()
	if v == nil {
		b.Delete(k)
	} else {
		b.Set(k, v)
	}
	ok(tb, b.Commit(true))
	b.Close()
}

func rawEntry(tb testing.TB, st store.Store, seq uint64) map[string]any {
	tb.Helper()
	v, err := st.Get(auditKey(seq))
	ok(tb, err)
	var m map[string]any
	ok(tb, json.Unmarshal(v, &m))
	return m
}

func putRaw(tb testing.TB, st store.Store, seq uint64, m map[string]any) {
	tb.Helper()
	v, err := json.Marshal(m)
	ok(tb, err)
	setRaw(tb, st, auditKey(seq), v)
}

// chainedLog writes two entries as a version before the chain did (no
// role, source or hash), then five changes through the directory.
func chainedLog(tb testing.TB) (store.Store, *fanout.Directory) {
	tb.Helper()
	st := memstore.New()
	for seq := uint64(1); seq <= 2; seq++ {
		putRaw(tb, st, seq, map[string]any{"seq": seq, "at": time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
			"actor": "admin", "action": "dept.put", "target": "old", "detail": "created"})
	}
	d := openDir(tb, st)
	by := fanout.Actor{Name: "hr-sync", Role: "directory", Source: "10.0.0.7:51234"}
	must[bool](tb)(d.PutDepartment(fanout.Department{ID: "eng", Name: "Engineering"}, by))
	must[bool](tb)(d.PutUserAs(fanout.User{ID: "ana", Department: "eng"}, by))
	must[bool](tb)(d.PutUserAs(fanout.User{ID: "bo", Phone: "+14155550100"}, by))
	must[bool](tb)(d.PutGroup(fanout.Group{ID: "g", Name: "G", Members: []string{"ana"}}, fanout.Actor{}))
	// A source that is not valid UTF-8: JSON writes each bad byte as
	// U+FFFD, and the hash must be that of what is read back.
	must[fanout.User](tb)(d.RemoveUser("bo", fanout.Actor{Name: "owner", Role: "owner", Source: "[::1]:6000\xff"}))
	return st, d
}

func TestAuditChain(t *testing.T) {
	st, d := chainedLog(t)
	es := must[[]fanout.AuditEntry](t)(d.Audit(0, 100))
	if len(es) != 7 {
		t.Fatalf("%d entries", len(es))
	}
	for _, e := range es[:2] {
		if e.Hash != "" || e.Prev != "" || e.Role != "" {
			t.Fatalf("an entry from before the chain is read with %+v", e)
		}
	}
	if e := es[2]; e.Prev != strings.Repeat("0", 64) || e.Actor != "hr-sync" || e.Role != "directory" || e.Source != "10.0.0.7:51234" {
		t.Fatalf("the chain's first entry: %+v", e)
	}
	for i := 3; i < len(es); i++ {
		if es[i].Prev != es[i-1].Hash || len(es[i].Hash) != 64 {
			t.Fatalf("entry %d: prev %s, the hash before %s", es[i].Seq, es[i].Prev, es[i-1].Hash)
		}
	}
	if e := es[5]; e.Actor != fanout.ActorSystem || e.Role != "" || e.Source != "" {
		t.Fatalf("a change by nobody: %+v", e)
	}
	if e := es[6]; e.Actor != "owner" || e.Role != "owner" || e.Source != "[::1]:6000\uFFFD" || e.Action != "user.remove" {
		t.Fatalf("the removal: %+v", e)
	}
	c := must[fanout.AuditCheck](t)(d.VerifyAudit(""))
	want := fanout.AuditCheck{OK: true, Entries: 7, FirstHashedSeq: 3, HeadSeq: 7, HeadHash: es[6].Hash}
	if c != want {
		t.Fatalf("VerifyAudit = %+v, want %+v", c, want)
	}

	// The chain goes on from the stored head after a reopen.
	d2 := openDir(t, st)
	must[bool](t)(d2.PutDepartment(fanout.Department{ID: "web", Name: "Web"}, fanout.Actor{Name: "owner", Role: "owner"}))
	next := must[[]fanout.AuditEntry](t)(d2.Audit(7, 10))
	if len(next) != 1 || next[0].Prev != es[6].Hash {
		t.Fatalf("after a reopen: %+v", next)
	}
	c = must[fanout.AuditCheck](t)(d2.VerifyAudit(es[6].Hash))
	if !c.OK || c.HeadSeq != 8 || c.ExpectSeq != 7 {
		t.Fatalf("VerifyAudit(the head before) = %+v", c)
	}
	if _, err := d2.VerifyAudit("abc"); !errors.Is(err, fanout.ErrBadExpect) {
		t.Fatalf("VerifyAudit(abc): %v", err)
	}
}

// TestAuditVerifyFindsTampering changes the stored log the ways someone
// with the data directory could, and checks that VerifyAudit names the
// first entry that is wrong.
func TestAuditVerifyFindsTampering(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tamper   func(t *testing.T, st store.Store)
		brokenAt uint64
		reason   string
	}{
		{"one byte of a detail", func(t *testing.T, st store.Store) {
			v, err := st.Get(auditKey(4))
			ok(t, err)
			i := strings.Index(string(v), `created`)
			v[i] = 'C'
			setRaw(t, st, auditKey(4), v)
		}, 4, "entry 4's hash does not match its contents"},
		{"the actor of an entry", func(t *testing.T, st store.Store) {
			m := rawEntry(t, st, 6)
			m["actor"] = "someone-else"
			putRaw(t, st, 6, m)
		}, 6, "entry 6's hash does not match"},
		{"an entry deleted in the middle", func(t *testing.T, st store.Store) {
			setRaw(t, st, auditKey(5), nil)
		}, 5, "entry 5 is missing"},
		{"the first entries deleted", func(t *testing.T, st store.Store) {
			setRaw(t, st, auditKey(1), nil)
			setRaw(t, st, auditKey(2), nil)
		}, 1, "entries 1 to 2 are missing"},
		{"an entry rewritten with its hash recomputed", func(t *testing.T, st store.Store) {
			m := rawEntry(t, st, 4)
			m["detail"] = "created; nothing else"
			var e fanout.AuditEntry
			v, _ := json.Marshal(m)
			ok(t, json.Unmarshal(v, &e))
			prev, _ := hex.DecodeString(e.Prev)
			m["hash"] = hex.EncodeToString(sha(append(prev, fanout.AuditCanonical(e)...)))
			putRaw(t, st, 4, m)
		}, 5, "entry 5's prev is not the hash of entry 4"},
		{"the hash of a chained entry removed", func(t *testing.T, st store.Store) {
			m := rawEntry(t, st, 5)
			delete(m, "hash")
			delete(m, "prev")
			putRaw(t, st, 5, m)
		}, 5, "entry 5 has no hash, after the chain started at entry 3"},
		{"an entry moved to another seq", func(t *testing.T, st store.Store) {
			v, err := st.Get(auditKey(7))
			ok(t, err)
			setRaw(t, st, auditKey(7), nil)
			setRaw(t, st, auditKey(8), v)
		}, 7, "entry 7 is missing"},
		{"an entry that does not decode", func(t *testing.T, st store.Store) {
			setRaw(t, st, auditKey(3), []byte(`{"seq":3,`))
		}, 3, "entry 3 does not decode"},
		{"the seq inside an entry", func(t *testing.T, st store.Store) {
			m := rawEntry(t, st, 6)
			m["seq"] = 9
			putRaw(t, st, 6, m)
		}, 6, "entry 6 says it is entry 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, d := chainedLog(t)
			tc.tamper(t, st)
			c := must[fanout.AuditCheck](t)(d.VerifyAudit(""))
			if c.OK || c.BrokenAt != tc.brokenAt || !strings.Contains(c.Reason, tc.reason) || c.HeadHash != "" {
				t.Fatalf("VerifyAudit = %+v, want broken at %d: %q", c, tc.brokenAt, tc.reason)
			}
			// The directory opens on a tampered log, and says the same.
			c2 := must[fanout.AuditCheck](t)(openDir(t, st).VerifyAudit(""))
			if c2 != c {
				t.Fatalf("after a reopen: %+v, before %+v", c2, c)
			}
		})
	}
}

// TestAuditExpectFindsATruncatedTail: removing the last entries leaves a
// chain that holds; only a head hash kept elsewhere shows it.
func TestAuditExpectFindsATruncatedTail(t *testing.T) {
	st, d := chainedLog(t)
	head := must[fanout.AuditCheck](t)(d.VerifyAudit("")).HeadHash
	setRaw(t, st, auditKey(7), nil)
	setRaw(t, st, auditKey(6), nil)
	c := must[fanout.AuditCheck](t)(d.VerifyAudit(""))
	if !c.OK || c.HeadSeq != 5 {
		t.Fatalf("without --expect a truncated chain holds: %+v", c)
	}
	c = must[fanout.AuditCheck](t)(d.VerifyAudit(strings.ToUpper(head)))
	if c.OK || c.BrokenAt != 0 || c.ExpectSeq != 0 || !strings.Contains(c.Reason, "no entry has the expected head hash "+head) ||
		!strings.Contains(c.Reason, "it ends at entry 5") {
		t.Fatalf("VerifyAudit(the head before the truncation) = %+v", c)
	}
}
