package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/dingmq/ding/engine/store"
)

// Changes from outside the engine.
//
// The directory (package fanout) keeps its records in the same store, under
// PrefixDirectory. Its writes go through the commit pipeline as Changes,
// like every other write: so they are ordered with the engine's own ops,
// durable before they are answered, and a store failure on one stops the
// engine as it would on any write. A change removing users (offboarding)
// makes them inactive for every op applied after it, in the same batch
// and in later ones, before any of them is durable.

// ErrBadChange is returned by Commit for a change that writes outside
// PrefixDirectory.
var ErrBadChange = NewError(CodeInternal, "engine: change writes outside the directory's keys")

// Writer is what a Change writes to: the batch. Keys and values are copied.
type Writer interface {
	Set(key, value []byte)
	Delete(key []byte)
}

// Change is a write by a component outside the engine.
type Change struct {
	// Write adds the change's keys (all under PrefixDirectory) to the
	// batch. It runs on the commit loop and must not block. It returns an
	// error only before it has written anything: the change is refused.
	Write func(w Writer) error
	// Applied, if set, runs on the commit loop once the batch holding the
	// change is applied (visible in the store, not yet durable), before
	// any later batch is built: where the change is installed in memory,
	// so that later ops see it. It must not block. If the batch's commit
	// then fails, the engine refuses every write and must be restarted.
	Applied func()
	// Removes lists the users the change removes: ops applied after it
	// see them as inactive even before Applied has run.
	Removes []string
	// Added and Removed list the users the change adds (or adds back)
	// and removes, for the webhook events user.added and user.removed
	// (webhook.go), written in the change's batch. Unlike Removes, a
	// retry of a removal already made leaves Removed empty.
	Added, Removed []string
}

// changeTx is the overlay of changes from outside the engine.
type changeTx struct {
	removed map[string]bool // users removed by this batch's changes
	changes []*Change       // applied in this batch, in order
}

// active reports whether user may still receive anything: not removed by a
// change in this batch, and active in the directory (Config.Recipients as
// an ActiveFilter). An offboarded user receives nothing more (contract
// point 6), and a request checked before the removal may reach the commit
// loop after it, so the commit loop checks again.
func (c *txn) active(user string) bool {
	if c.removed[user] {
		return false
	}
	return c.e.active == nil || c.e.active.Active(user)
}

// applyChange writes ch to the batch.
func (c *txn) applyChange(ch *Change) error {
	w := &checkedWriter{b: c.batch}
	if err := ch.Write(w); err != nil {
		return fmt.Errorf("%w: %w", ErrBadChange, err)
	}
	if w.bad {
		return abort(ErrBadChange) // it wrote: the batch is rebuilt without it
	}
	for _, u := range ch.Removes {
		if c.removed == nil {
			c.removed = map[string]bool{}
		}
		c.removed[u] = true
	}
	c.changes = append(c.changes, ch)
	for _, u := range ch.Added {
		c.emit(HookUserAdded, S("user", u))
	}
	for _, u := range ch.Removed {
		c.emit(HookUserRemoved, S("user", u))
	}
	return nil
}

// applied installs the batch's changes, in order.
func (t *changeTx) applied(c *txn) {
	for _, ch := range t.changes {
		if ch.Applied != nil {
			ch.Applied()
		}
	}
}

func (t *changeTx) reset() {
	clear(t.removed)
	clear(t.changes)
	t.changes = t.changes[:0]
}

// checkedWriter passes writes under PrefixDirectory to the batch and
// notes any other.
type checkedWriter struct {
	b   Writer
	bad bool
}

func (w *checkedWriter) Set(k, v []byte) {
	if len(k) == 0 || k[0] != PrefixDirectory {
		w.bad = true
		return
	}
	w.b.Set(k, v)
}

func (w *checkedWriter) Delete(k []byte) {
	if len(k) == 0 || k[0] != PrefixDirectory {
		w.bad = true
		return
	}
	w.b.Delete(k)
}

// Commit writes ch through the commit pipeline and returns once it is
// durable (and installed: Applied has run). If ctx ends first the outcome
// is unknown.
func (e *Engine) Commit(ctx context.Context, ch Change) error {
	return wait(ctx, func(done func(error)) {
		e.enqueue(func(c *txn) error { return c.applyChange(&ch) }, done, 1)
	})
}

// Offboarded says what Offboard did besides the directory's change.
type Offboarded struct {
	DingsStopped  int // pending escalations to the user, stopped
	SecretsBurned int // live secret messages the user sent or received, burned
}

// Offboard removes user in one batch (contract point 6): ch, the
// directory's change that removes them, is written; every pending DING to
// them stops (ledger "removed"); every live secret message they sent or
// received burns (the other party gets the burn; they get nothing more).
// Every op applied after it, in the same batch or later, sees user as
// removed. Nothing of it is durable until all of it is. Offboarding a user
// already removed (ch writes nothing) stops and burns whatever is left.
func (e *Engine) Offboard(ctx context.Context, user string, ch Change) (Offboarded, error) {
	ch.Removes = slices.Concat(ch.Removes, []string{user})
	if ch.Write == nil {
		ch.Write = func(Writer) error { return nil }
	}
	var res Offboarded // read only once the op has answered
	err := wait(ctx, func(done func(error)) {
		e.enqueue(func(c *txn) error {
			res = Offboarded{}
			if err := c.applyChange(&ch); err != nil {
				return err
			}
			var err error
			res, err = c.forgetUser(user)
			return err
		}, done, 1)
	})
	if err != nil {
		return Offboarded{}, err // maybe ctx's: the op may still run, so res is not read
	}
	return res, nil
}

// forgetUser stops every pending DING to user whose home is here and burns
// every live secret message they sent or received here: what Offboard and
// Forget do besides the directory.
func (c *txn) forgetUser(user string) (Offboarded, error) {
	var res Offboarded
	var err error
	if res.DingsStopped, err = c.stopUser(user, c.now); err != nil {
		return res, err
	}
	res.SecretsBurned, err = c.burnUser(user)
	c.forgetPushTokens(user)
	return res, err
}

// forgetKey holds the audit seq of the last removal Forget applied.
var forgetKey = []byte{prefixCounter, 'd', 'i', 'r'}

// Forget applies here the removal of user that the directory decided
// elsewhere, with audit seq auditSeq (0: none): Offboard without the
// directory's change, for each engine when users are spread over
// partitions (relay.go), the directory's change being made once, in its
// own partition. In one batch: every pending DING to user whose home is
// this engine stops (ledger "removed"), including those to a user of
// another partition; every live secret message they sent or received
// here burns; ops applied after it see them as removed; and auditSeq
// becomes ForgottenThrough. A removal at or below ForgottenThrough (when
// auditSeq > 0) changes nothing, so replaying the audit log from there
// after a restart or a takeover is harmless; Forget with auditSeq 0
// always applies, and is idempotent as Offboard is.
//
// So the caller must give each engine the removals in audit order, one
// at a time (internal/node serialises them and replays the audit log):
// a removal given after a later one is skipped as if already applied.
func (e *Engine) Forget(ctx context.Context, user string, auditSeq uint64) (Offboarded, error) {
	if err := CheckName("user", user); err != nil {
		return Offboarded{}, err
	}
	var res Offboarded // read only once the op has answered
	err := wait(ctx, func(done func(error)) {
		e.enqueue(func(c *txn) error {
			res = Offboarded{}
			if auditSeq > 0 {
				done, err := c.quotaGet(forgetKey)
				if err != nil {
					return err
				}
				if auditSeq <= done {
					return nil
				}
				c.quotaSet(forgetKey, auditSeq)
			}
			if c.removed == nil {
				c.removed = map[string]bool{}
			}
			c.removed[user] = true
			var err error
			res, err = c.forgetUser(user)
			return err
		}, done, 1)
	})
	if err != nil {
		return Offboarded{}, err // maybe ctx's: the op may still run (forgetLoop's Forget ends at the node's stop), so res is not read
	}
	return res, nil
}

// ForgottenThrough returns the audit seq of the last removal Forget
// applied here (0 for none): where a replay of the directory's removals
// starts.
func (e *Engine) ForgottenThrough() (uint64, error) {
	v, err := e.st.Get(forgetKey)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("engine: forgotten through: %w", err)
	}
	return parseU64(v)
}
