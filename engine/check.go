package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/dingmq/ding/engine/store"
)

// CheckReport is what Check found: counts of what it read, and the
// broken invariants (at most maxProblems of them, Truncated beyond).
type CheckReport struct {
	Streams   int      `json:"streams"`
	Entries   int      `json:"entries"`
	Messages  int      `json:"messages"`
	Cursors   int      `json:"cursors"`
	Outbox    int      `json:"outbox"`   // relay records not yet acknowledged by their partition
	Webhooks  int      `json:"webhooks"` // webhook events some subscription has not dealt with yet
	Problems  []string `json:"problems"` // [] when every invariant holds
	Truncated bool     `json:"truncated"`
}

// OK reports whether no invariant was broken.
func (r CheckReport) OK() bool { return len(r.Problems) == 0 }

const maxProblems = 100

func (r *CheckReport) problem(format string, args ...any) {
	if len(r.Problems) >= maxProblems {
		r.Truncated = true
		return
	}
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// Check verifies a store's invariants without changing it (dingd check,
// and the crash tests after every restart):
//
//   - every user's stream is gap-free from seq 1 (or, once retention
//     trimmed it, from above its trim mark) to its head, and every entry
//     decodes;
//   - every message entry above the trim mark names a stored message, or
//     one that burned (a burn entry for it follows in the same stream);
//   - every device cursor and every user's watermark is at most that
//     user's head;
//   - the count of live secret messages equals their state records;
//   - every relay record (relay.go) decodes, is numbered within its
//     destination's counter, and, for a message record, names a stored
//     message (retention keeps them); a receipt record names messages
//     (of the destination: they need not be stored here), a recipient,
//     a state past sent and an answer in range; every relay counter and
//     inbound watermark decodes;
//   - every webhook event (webhook.go) decodes, is numbered within the
//     event counter and after the lowest subscription cursor (events
//     every subscription is past are deleted; with no subscription there
//     are none); every subscription decodes and has a cursor within the
//     counter; every cursor and dead letter belongs to a subscription,
//     and every dead letter decodes.
//
// It reads the whole store; run it on a stopped node's data or a backup.
func Check(st store.Store) (CheckReport, error) {
	r := CheckReport{Problems: []string{}}
	heads := map[string]uint64{}
	var (
		user    string
		last    uint64
		mark    uint64        // the current stream's trim mark (retention.go)
		missing map[ID]uint64 // message id -> seq, in the current stream, not (yet) explained by a burn
	)
	flush := func() {
		for id, seq := range missing {
			r.problem("stream %q seq %d: message %s is not stored, and no burn of it follows", user, seq, id)
		}
	}
	err := st.Scan([]byte{prefixInbox}, []byte{prefixInbox + 1}, func(k, v []byte) bool {
		i := bytes.IndexByte(k[1:], 0)
		if i < 0 || len(k) != 1+i+1+8 {
			r.problem("stream key %x is malformed", k)
			return true
		}
		u, seq := string(k[1:1+i]), binary.BigEndian.Uint64(k[len(k)-8:])
		if u != user {
			if user != "" {
				flush()
				heads[user] = last
			}
			user, last, missing = u, 0, map[ID]uint64{}
			mark = 0
			if v, err := st.Get(trimMarkKey(u)); err == nil {
				if mark, err = parseU64(v); err != nil {
					r.problem("stream %q: trim mark does not decode", u)
				}
			} else if !errors.Is(err, store.ErrNotFound) {
				r.problem("stream %q: read trim mark: %v", u, err)
			}
			r.Streams++
		}
		if seq != last+1 && seq-1 > mark {
			r.problem("stream %q: seq %d follows %d (a gap)", u, seq, last)
		}
		last = seq
		r.Entries++
		e, id, _, err := decodeEntry(seq, v)
		if err != nil {
			r.problem("stream %q seq %d: entry does not decode: %v", u, seq, err)
			return true
		}
		switch e.Kind {
		case EntryMessage:
			if _, err := st.Get(messageKey(id)); errors.Is(err, store.ErrNotFound) {
				if seq > mark { // at or below it, retention may have deleted it
					missing[id] = seq
				}
			} else if err != nil {
				r.problem("stream %q seq %d: read message %s: %v", u, seq, id, err)
			}
		case EntryBurn:
			delete(missing, e.Burn)
		}
		return true
	})
	if err != nil {
		return r, fmt.Errorf("engine: check streams: %w", err)
	}
	if user != "" {
		flush()
		heads[user] = last
	}
	err = st.Scan([]byte{prefixMessage}, []byte{prefixMessage + 1}, func(k, v []byte) bool {
		r.Messages++
		return true
	})
	if err != nil {
		return r, fmt.Errorf("engine: check messages: %w", err)
	}
	for _, c := range []struct {
		prefix byte
		what   string
	}{{prefixCursor, "cursor"}, {prefixWatermark, "watermark"}} {
		err = st.Scan([]byte{c.prefix}, []byte{c.prefix + 1}, func(k, v []byte) bool {
			u := string(k[1:])
			if c.prefix == prefixCursor {
				r.Cursors++
				i := bytes.IndexByte(k[1:], 0)
				if i < 0 {
					r.problem("%s key %x is malformed", c.what, k)
					return true
				}
				u = string(k[1 : 1+i])
			}
			seq, err := parseU64(v)
			if err != nil {
				r.problem("%s of %q does not decode", c.what, u)
				return true
			}
			if seq > heads[u] {
				r.problem("%s of %q is at %d, beyond the stream's head %d", c.what, u, seq, heads[u])
			}
			return true
		})
		if err != nil {
			return r, fmt.Errorf("engine: check %ss: %w", c.what, err)
		}
	}
	live := 0
	err = st.Scan([]byte{prefixSecret}, []byte{prefixSecret + 1}, func(k, v []byte) bool { live++; return true })
	if err != nil {
		return r, fmt.Errorf("engine: check secret messages: %w", err)
	}
	counted := uint64(0)
	if v, err := st.Get(secretsCounterKey); err == nil && v != nil {
		if counted, err = parseU64(v); err != nil {
			r.problem("the live secret messages counter does not decode")
		}
	}
	if counted != uint64(live) {
		r.problem("the live secret messages counter says %d; %d are stored", counted, live)
	}
	if err := checkRelay(st, &r); err != nil {
		return r, err
	}
	if err := checkHooks(st, &r); err != nil {
		return r, err
	}
	return r, nil
}

// checkHooks checks the webhooks' keys: the event counter, the events,
// the subscriptions, their cursors and dead letters.
func checkHooks(st store.Store, r *CheckReport) error {
	counter := uint64(0)
	if v, err := st.Get(hookCounterKey); err == nil {
		if counter, err = parseU64(v); err != nil {
			r.problem("the webhook event counter does not decode")
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("engine: check webhooks: %w", err)
	}
	subs := map[string]bool{}
	err := st.Scan([]byte{prefixHook}, []byte{prefixHook + 1}, func(k, v []byte) bool {
		id := string(k[1:])
		subs[id] = true
		if _, err := decodeWebhook(id, v); err != nil {
			r.problem("webhook subscription %q does not decode", id)
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("engine: check webhooks: %w", err)
	}
	minCursor, cursors := uint64(math.MaxUint64), 0
	err = st.Scan([]byte{prefixHookCursor}, []byte{prefixHookCursor + 1}, func(k, v []byte) bool {
		id := string(k[1:])
		cursors++
		c, err := parseU64(v)
		switch {
		case !subs[id]:
			r.problem("webhook cursor of %q, which is no subscription", id)
		case err != nil:
			r.problem("webhook cursor of %q does not decode", id)
		case c > counter:
			r.problem("webhook cursor of %q is at %d, beyond the event counter %d", id, c, counter)
		default:
			minCursor = min(minCursor, c)
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("engine: check webhooks: %w", err)
	}
	if cursors < len(subs) {
		r.problem("%d webhook subscriptions have no cursor", len(subs)-cursors)
	}
	err = st.Scan([]byte{prefixHookEvent}, []byte{prefixHookEvent + 1}, func(k, v []byte) bool {
		r.Webhooks++
		if len(k) != 9 {
			r.problem("webhook event key %x is malformed", k)
			return true
		}
		seq := binary.BigEndian.Uint64(k[1:])
		if _, err := parseHookEvent(seq, v); err != nil {
			r.problem("webhook event %d does not decode", seq)
		}
		if seq > counter {
			r.problem("webhook event %d is beyond the event counter %d", seq, counter)
		}
		if len(subs) == 0 || seq <= minCursor {
			r.problem("webhook event %d is kept though every subscription is past it", seq)
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("engine: check webhooks: %w", err)
	}
	err = st.Scan([]byte{prefixHookDead}, []byte{prefixHookDead + 1}, func(k, v []byte) bool {
		i := bytes.IndexByte(k[1:], 0)
		if i < 0 || len(k) != 1+i+1+8 {
			r.problem("webhook dead letter key %x is malformed", k)
			return true
		}
		id, seq := string(k[1:1+i]), binary.BigEndian.Uint64(k[len(k)-8:])
		if !subs[id] {
			r.problem("webhook dead letter %d of %q, which is no subscription", seq, id)
		}
		if _, err := decodeDeadLetter(seq, v); err != nil {
			r.problem("webhook dead letter %d of %q does not decode", seq, id)
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("engine: check webhooks: %w", err)
	}
	return nil
}

// checkRelay checks the relay's keys: counters, outbox records, inbound
// watermarks.
func checkRelay(st store.Store, r *CheckReport) error {
	counters := map[uint32]uint64{}
	err := st.Scan(relayCounterPrefix, prefixEnd(relayCounterPrefix), func(k, v []byte) bool {
		seq, err := parseU64(v)
		if err != nil || len(k) != len(relayCounterPrefix)+4 {
			r.problem("relay counter %x does not decode", k)
			return true
		}
		counters[binary.BigEndian.Uint32(k[len(relayCounterPrefix):])] = seq
		return true
	})
	if err != nil {
		return fmt.Errorf("engine: check relay counters: %w", err)
	}
	err = st.Scan([]byte{prefixOutbox}, []byte{prefixOutbox + 1}, func(k, v []byte) bool {
		r.Outbox++
		if len(k) != 13 {
			r.problem("outbox key %x is malformed", k)
			return true
		}
		to, seq := binary.BigEndian.Uint32(k[1:5]), binary.BigEndian.Uint64(k[5:])
		rec, id, err := decodeRelayRecord(v)
		if err != nil {
			r.problem("outbox record %d for partition %d does not decode: %v", seq, to, err)
			return true
		}
		if seq == 0 || seq > counters[to] {
			r.problem("outbox record %d for partition %d is beyond its counter, %d", seq, to, counters[to])
		}
		if rec.Kind == RelayMessage && rec.Secret == nil { // a secret one may have burned: it relays a burn
			if _, err := st.Get(messageKey(id)); errors.Is(err, store.ErrNotFound) {
				r.problem("outbox record %d for partition %d: message %s is not stored", seq, to, id)
			} else if err != nil {
				r.problem("outbox record %d for partition %d: read message %s: %v", seq, to, id, err)
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("engine: check outbox: %w", err)
	}
	err = st.Scan([]byte{prefixRelayed}, []byte{prefixRelayed + 1}, func(k, v []byte) bool {
		if _, err := parseU64(v); err != nil || len(k) != 5 {
			r.problem("relay watermark %x does not decode", k)
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("engine: check relay watermarks: %w", err)
	}
	return nil
}
