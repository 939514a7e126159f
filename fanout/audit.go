package fanout

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
)

// AuditEntry records one change to the directory. Details name what
// changed but never hold a phone number ("phone changed").
type AuditEntry struct {
	Seq    uint64    `json:"seq"`    // 1, 2, ... in the order of the changes
	At     time.Time `json:"at"`     // UTC, milliseconds
	Actor  string    `json:"actor"`  // who asked: the admin's name ("owner" for the first-start token; "admin" in entries written before admins had names), "system" if nobody said
	Action string    `json:"action"` // user.put, user.remove, dept.put, dept.remove, group.put, group.members, group.remove, import, admin.add, admin.revoke
	Target string    `json:"target"` // the user, department, group or admin; "directory" for an import
	Detail string    `json:"detail,omitempty"`
}

func auditKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(dirKey(kindAudit, ""), seq)
}

func lastAuditSeq(st store.Store) (uint64, error) {
	k, _, err := st.Last(dirKey(kindAudit, ""), []byte{engine.PrefixDirectory, kindAudit + 1})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return 0, nil
	case err != nil:
		return 0, err
	case len(k) != 10:
		return 0, fmt.Errorf("audit key %q: bad length", k)
	}
	return binary.BigEndian.Uint64(k[2:]), nil
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
	err := d.st.Scan(auditKey(after+1), []byte{engine.PrefixDirectory, kindAudit + 1}, func(k, v []byte) bool {
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
