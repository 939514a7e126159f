package fanout

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
)

// Actor is who makes a change, as its audit entries record it.
type Actor struct {
	// Name is the admin's name; empty means ActorSystem.
	Name string
	// Role is the admin's role when the change was asked for; empty for
	// changes made by no admin.
	Role string
	// Source is where the request came from: the HTTP peer's address
	// (host:port), as the server's TCP connection sees it (a proxy in
	// front, or a cluster member relaying to the owner, is that peer);
	// empty when the change did not come over HTTP.
	Source string
}

// AuditEntry records one change to the directory. Details name what
// changed but never hold a phone number ("phone changed").
//
// Entries written since the hash chain (see the package doc, "The audit
// chain") carry Prev and Hash; older ones have neither and are read as
// before.
type AuditEntry struct {
	Seq    uint64    `json:"seq"`            // 1, 2, ... in the order of the changes
	At     time.Time `json:"at"`             // UTC, milliseconds
	Actor  string    `json:"actor"`          // who asked: the admin's name ("owner" for the first-start token; "admin" in entries written before admins had names), "system" if nobody said
	Role   string    `json:"role,omitempty"` // the actor's role then; empty for "system" and in entries written before roles were recorded
	Source string    `json:"source,omitempty"`
	Action string    `json:"action"` // user.put, user.remove, dept.put, dept.remove, group.put, group.members, group.remove, import, admin.add, admin.revoke
	Target string    `json:"target"` // the user, department, group or admin; "directory" for an import
	Detail string    `json:"detail,omitempty"`
	// Prev is the Hash of the entry before (hex); 64 zeros for the first
	// entry of the chain.
	Prev string `json:"prev,omitempty"`
	// Hash is SHA-256(Prev's 32 bytes || AuditCanonical(entry)), hex.
	Hash string `json:"hash,omitempty"`
}

// auditVersion is the first byte of an entry's canonical encoding.
const auditVersion = 1

// AuditCanonical returns the bytes of e that its hash covers: every field
// but Prev and Hash, in a fixed binary layout (package doc, "The audit
// chain"), so that the hash does not depend on how JSON is written.
func AuditCanonical(e AuditEntry) []byte {
	b := make([]byte, 0, 64+len(e.Actor)+len(e.Role)+len(e.Source)+len(e.Action)+len(e.Target)+len(e.Detail))
	b = append(b, auditVersion)
	b = binary.BigEndian.AppendUint64(b, e.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(e.At.UnixNano()))
	for _, s := range []string{e.Actor, e.Role, e.Source, e.Action, e.Target, e.Detail} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

// auditHash is the hash of e chained after prev.
func auditHash(prev [32]byte, e AuditEntry) [32]byte {
	h := sha256.New()
	h.Write(prev[:])
	h.Write(AuditCanonical(e))
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// jsonString returns s as a JSON round trip leaves it: each byte of an
// invalid UTF-8 sequence becomes U+FFFD, as encoding/json writes it. An
// entry's strings are made so before they are hashed, so that the hash of
// the entry read back is the one written.
func jsonString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func auditKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(dirKey(kindAudit, ""), seq)
}

var auditEnd = []byte{engine.PrefixDirectory, kindAudit + 1}

// lastAudit returns the last entry's seq and the head of the chain: its
// hash, or zero when it has none (an entry written before the chain; the
// next entry starts the chain). An entry that does not decode leaves the
// head zero too: the directory opens, and VerifyAudit reports the entry.
func lastAudit(st store.Store) (seq uint64, head [32]byte, err error) {
	k, v, err := st.Last(dirKey(kindAudit, ""), auditEnd)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return 0, head, nil
	case err != nil:
		return 0, head, err
	case len(k) != 10:
		return 0, head, fmt.Errorf("audit key %q: bad length", k)
	}
	var e AuditEntry
	if json.Unmarshal(v, &e) == nil {
		if h, err := hex.DecodeString(e.Hash); err == nil && len(h) == 32 {
			copy(head[:], h)
		}
	}
	return binary.BigEndian.Uint64(k[2:]), head, nil
}

// Audit returns up to limit entries with Seq > after, oldest first. It
// reads the store; limit <= 0 means 100.
func (d *Directory) Audit(after uint64, limit int) ([]AuditEntry, error) {
	if limit <= 0 {
		limit = 100
	}
	out := []AuditEntry{}
	if after == math.MaxUint64 {
		return out, nil
	}
	var derr error
	err := d.store().Scan(auditKey(after+1), auditEnd, func(k, v []byte) bool {
		var e AuditEntry
		if derr = json.Unmarshal(v, &e); derr != nil {
			derr = fmt.Errorf("audit entry %x: %w", k[2:], derr)
			return false
		}
		out = append(out, e)
		return len(out) < limit
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("fanout: read audit log: %w", err)
	}
	return out, nil
}

// AuditCheck is what VerifyAudit found.
type AuditCheck struct {
	// OK: every entry is in place, the chain holds from FirstHashedSeq to
	// the last entry, and Expect, if given, is the hash of one of them.
	OK bool `json:"ok"`
	// Entries is how many entries the log holds.
	Entries uint64 `json:"entries"`
	// FirstHashedSeq is the seq of the chain's first entry (its Prev is
	// zeros); 0 when no entry has a hash yet. Entries before it were
	// written before the chain and are covered by nothing.
	FirstHashedSeq uint64 `json:"first_hashed_seq"`
	// HeadSeq and HeadHash are the last entry's seq and hash: the value
	// to keep outside the server and give back as Expect, so that a
	// truncated tail is found. Empty when broken.
	HeadSeq  uint64 `json:"head_seq,omitempty"`
	HeadHash string `json:"head_hash,omitempty"`
	// Expect is the head hash asked for, and ExpectSeq the entry that has
	// it (0: none does).
	Expect    string `json:"expect,omitempty"`
	ExpectSeq uint64 `json:"expect_seq,omitempty"`
	// BrokenAt is the seq of the first entry that is missing, does not
	// decode, or breaks the chain; Reason says which.
	BrokenAt uint64 `json:"broken_at,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// ErrBadExpect is returned by VerifyAudit for an expected head that is not
// 64 hex digits.
var ErrBadExpect = engine.NewError(engine.CodeBadRequest, "fanout: the expected head hash is not 64 hex digits")

// VerifyAudit reads the whole audit log and checks it: seqs run 1, 2, ...
// with none missing; each entry decodes and is stored under its own seq;
// once the chain has started, every entry has a hash, its Prev is the hash
// of the entry before and its Hash that of its contents. It stops at the
// first break (later entries are only counted). With expect set (a head
// hash recorded earlier), the answer is OK only if an entry has that hash:
// so entries removed from the tail, which leave a consistent shorter
// chain, are found too. An error is a failure to read the store, never a
// broken log.
func (d *Directory) VerifyAudit(expect string) (AuditCheck, error) {
	var want []byte
	if expect != "" {
		var err error
		if want, err = hex.DecodeString(expect); err != nil || len(want) != 32 {
			return AuditCheck{}, ErrBadExpect
		}
	}
	c := AuditCheck{Expect: strings.ToLower(expect)}
	var (
		prev    [32]byte // the head so far; zero before the chain
		chained bool
		last    uint64
	)
	broke := func(seq uint64, format string, args ...any) {
		c.BrokenAt, c.Reason = seq, fmt.Sprintf(format, args...)
	}
	err := d.store().Scan(dirKey(kindAudit, ""), auditEnd, func(k, v []byte) bool {
		c.Entries++
		if c.BrokenAt != 0 {
			return true // counted only
		}
		if len(k) != 10 {
			broke(last+1, "a key after entry %d is not an audit seq (%x)", last, k)
			return true
		}
		seq := binary.BigEndian.Uint64(k[2:])
		switch {
		case seq == last+2:
			broke(last+1, "entry %d is missing", last+1)
			return true
		case seq != last+1:
			broke(last+1, "entries %d to %d are missing", last+1, seq-1)
			return true
		}
		last = seq
		var e AuditEntry
		if err := json.Unmarshal(v, &e); err != nil {
			broke(seq, "entry %d does not decode: %v", seq, err)
			return true
		}
		if e.Seq != seq {
			broke(seq, "entry %d says it is entry %d", seq, e.Seq)
			return true
		}
		if e.Hash == "" {
			switch {
			case chained:
				broke(seq, "entry %d has no hash, after the chain started at entry %d", seq, c.FirstHashedSeq)
			case e.Prev != "":
				broke(seq, "entry %d has a prev but no hash", seq)
			}
			return true
		}
		if !chained {
			chained, c.FirstHashedSeq = true, seq
		}
		if e.Prev != hex.EncodeToString(prev[:]) {
			if seq == c.FirstHashedSeq {
				broke(seq, "entry %d starts the chain but its prev is not zeros", seq)
			} else {
				broke(seq, "entry %d's prev is not the hash of entry %d: entry %d was rewritten, or this prev changed", seq, seq-1, seq-1)
			}
			return true
		}
		h := auditHash(prev, e)
		if e.Hash != hex.EncodeToString(h[:]) {
			broke(seq, "entry %d's hash does not match its contents: it was changed", seq)
			return true
		}
		prev = h
		if want != nil && bytes.Equal(h[:], want) {
			c.ExpectSeq = seq
		}
		return true
	})
	if err != nil {
		return AuditCheck{}, fmt.Errorf("fanout: verify audit log: %w", err)
	}
	if c.BrokenAt != 0 {
		return c, nil
	}
	c.HeadSeq = last
	if chained {
		c.HeadHash = hex.EncodeToString(prev[:])
	}
	if want != nil && c.ExpectSeq == 0 {
		c.Reason = fmt.Sprintf("no entry has the expected head hash %s: entries were removed from the end of the log (it ends at entry %d), or the chain was rewritten", c.Expect, last)
		return c, nil
	}
	c.OK = true
	return c, nil
}
