package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// Settle fires every timer due at the clock's present time and waits
// until every send decided so far has its outcome recorded: after it, a
// test can assert that nothing more was sent. Tests only.
func (e *Engine) Settle(ctx context.Context) error {
	for {
		keys, _, err := e.dueTimers(0, ms(e.cfg.Clock.Now()))
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			break
		}
		if err := e.apply(ctx, func(c *txn, now time.Time) error { return c.fireTimers(keys, now) }); err != nil {
			return err
		}
	}
	for {
		e.inflightMu.Lock()
		n, shrank := len(e.inflight), e.inflightShrank
		e.inflightMu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-shrank:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// SecretKey returns a secret message's key, so that a test can search the
// disk for it. Tests only.
func (e *Engine) SecretKey(id ID) ([32]byte, bool) {
	if k, ok := e.keys.Get(id); ok {
		return k, true
	}
	return e.fleeting.Get(id)
}

// Barrier returns once every op queued before it is durable and its
// batch's heads are published (a batch becomes readable in the store a
// moment before Head shows it). Tests only.
func (e *Engine) Barrier(ctx context.Context) error {
	return e.apply(ctx, func(*txn, time.Time) error { return nil })
}

// Hold holds the commit loop until release is called, so that the ops
// queued meanwhile share one batch. Tests only.
func (e *Engine) Hold() (release func()) {
	entered, done := make(chan struct{}), make(chan struct{})
	e.applyAsync(func(*txn, time.Time) error { close(entered); <-done; return nil }, func(error) {})
	<-entered
	return func() { close(done) }
}

// DeleteMessageRecord deletes a message record behind the engine's back, to make the
// store inconsistent (a lost record). Tests only.
func DeleteMessageRecord(st interface{ NewBatch() store.Batch }, id ID) error {
	b := st.NewBatch()
	defer b.Close()
	b.Delete(messageKey(id))
	return b.Commit(true)
}

// Queued returns how many ops wait for the commit loop. Tests only.
func (e *Engine) Queued() int { return e.pipe.Len() }

// RewriteAsJSON rewrites, behind the engine's back, every record that the
// engine wrote as JSON before the binary codecs (codec.go) in that JSON
// form, as a data directory from before holds them, and returns how many
// it rewrote. Tests only.
func RewriteAsJSON(st store.Store) (int, error) {
	b := st.NewBatch()
	defer b.Close()
	n := 0
	for _, r := range []struct {
		prefix byte
		toJSON func([]byte) ([]byte, error)
	}{
		{prefixDing, asJSON(decodeDingRecord)},
		{prefixDingRcpt, asJSON(decodeRcptState)},
		{prefixLedger, asJSON(decodeLedgerEvent)},
		{prefixChat, asJSON(decodeChat)},
		{prefixSecret, asJSON(decodeSecretState)},
		{prefixAnnouncement, asJSON(decodeAnnouncementCounts)},
		{prefixJob, asJSON(decodeFanoutJob)},
	} {
		var derr error
		p := []byte{r.prefix}
		err := st.Scan(p, prefixEnd(p), func(k, v []byte) bool {
			j, err := r.toJSON(v)
			if err != nil {
				derr = fmt.Errorf("%x: %w", k, err)
				return false
			}
			b.Set(k, j)
			n++
			return true
		})
		if err == nil {
			err = derr
		}
		if err != nil {
			return n, err
		}
	}
	return n, b.Commit(true)
}

// asJSON returns a function that decodes a record and encodes it as the
// JSON version of the engine did (json.Marshal of the record).
func asJSON[T any](dec func([]byte, *T) error) func([]byte) ([]byte, error) {
	return func(v []byte) ([]byte, error) {
		var x T
		if err := dec(v, &x); err != nil {
			return nil, err
		}
		return json.Marshal(&x)
	}
}

// RecipientStateIsJSON reports whether a DING recipient's stored state is
// still in the JSON form. Tests only.
func RecipientStateIsJSON(st store.Store, id ID, idx int) (bool, error) {
	v, err := st.Get(rcptKey(id, idx))
	return isJSON(v), err
}

// MessageKeyForTest, InboxKeyForTest and CursorKeyForTest are the store
// keys of a message, a stream entry and a device cursor (Check's tests
// damage them).
func MessageKeyForTest(id ID) []byte                 { return messageKey(id) }
func InboxKeyForTest(user string, seq uint64) []byte { return inboxKey(user, seq) }
func CursorKeyForTest(user, device string) []byte    { return cursorKey(user, device) }

// FanoutIdle reports whether no fanout job is left in the store (the
// crash points wait for the fan-outs a restart resumes). Tests only.
func (e *Engine) FanoutIdle() bool {
	_, job, err := e.oldestJob()
	return err == nil && job == nil
}

// OutboxKeyForTest is the store key of relay record seq for partition to.
func OutboxKeyForTest(to uint32, seq uint64) []byte { return outboxKey(to, seq) }

// RelayKeys counts the relay's keys in st: outbox records, inbound
// watermarks and outbox counters. Tests only.
func RelayKeys(st store.Store) (int, error) {
	n := 0
	for _, p := range [][]byte{{prefixOutbox}, {prefixRelayed}, relayCounterPrefix} {
		if err := st.Scan(p, prefixEnd(p), func(_, _ []byte) bool { n++; return true }); err != nil {
			return n, err
		}
	}
	return n, nil
}
