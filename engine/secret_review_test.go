package engine_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/keyring"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/internal/fakeclock"
)

// Review tests of secret chats: each one failed before its fix.

// openKeys opens a keyring file in a temp dir: Keys that outlive an
// engine, so a test can "restart" on the same store and the same keys.
func openKeys(t testing.TB) *keyring.Ring {
	t.Helper()
	r, err := keyring.Open(filepath.Join(t.TempDir(), "secret.keys"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// unsureStore fails commits while fail is set; with land set the batch is
// applied first, as when Pebble's WAL write reached the disk and only the
// fsync reported an error: the caller cannot know which happened.
type unsureStore struct {
	store.Store
	fail, land *atomic.Bool
}

type unsureBatch struct {
	store.Batch
	s *unsureStore
}

func (s *unsureStore) NewBatch() store.Batch { return unsureBatch{s.Store.NewBatch(), s} }

func (b unsureBatch) Commit(sync bool) error {
	if !b.s.fail.Load() {
		return b.Batch.Commit(sync)
	}
	if b.s.land.Load() {
		if err := b.Batch.Commit(sync); err != nil {
			return err
		}
	}
	return errors.New("fsync: input/output error")
}

// A commit that fails has an unknown outcome (the engine says so and
// refuses writes until a restart). Dropping the new keys then destroys
// the key of a message that may be durable: after the restart it is
// burned as key_lost, while the sender's retry with its ClientID is told
// the message was stored. The keys must stay; the next start erases
// those whose message did not land.
func TestReviewFailedCommitKeepsTheKeysOfMessagesThatMayHaveLanded(t *testing.T) {
	for _, landed := range []bool{true, false} {
		name := map[bool]string{true: "landed", false: "lost"}[landed]
		t.Run(name, func(t *testing.T) {
			mem := memstore.New()
			keys := openKeys(t)
			var fail, land atomic.Bool
			land.Store(landed)
			clock := fakeclock.New(t0)
			dir := newDirectory(alice, bob)
			open := func(st store.Store) (*engine.Engine, *recorder) {
				t.Helper()
				e, err := engine.Open(engine.Config{Store: st, Keys: keys, Clock: clock, Recipients: dir})
				if err != nil {
					t.Fatal(err)
				}
				rec := &recorder{}
				e.SetSink(rec)
				t.Cleanup(func() { e.Close() })
				return e, rec
			}
			ctx := context.Background()
			e, _ := open(&unsureStore{Store: mem, fail: &fail, land: &land})
			ch, err := e.CreateChat(ctx, engine.ChatRequest{From: alice, To: bob, Level: engine.Level1})
			if err != nil {
				t.Fatal(err)
			}
			sub := engine.Submission{From: alice, Chat: ch.ID, Kind: engine.KindText, Body: []byte("did this land?"), ClientID: "c-1"}
			fail.Store(true)
			if _, err := e.Submit(ctx, sub); !errors.Is(err, engine.ErrFailed) {
				t.Fatalf("submit on a failing disk: %v, want ErrFailed", err)
			}
			e.Close()

			// The restart, on the same store and keys.
			e, _ = open(mem)
			res, err := e.Submit(ctx, sub) // the sender's retry
			if err != nil {
				t.Fatal(err)
			}
			if !landed {
				if res.Duplicate {
					t.Fatal("a batch that never landed was found at the retry")
				}
				if n := keys.Len(); n != 1 { // only the retry's
					t.Fatalf("%d keys after the restart, want only the retry's: the lost batch's key was not erased", n)
				}
				return
			}
			if !res.Duplicate {
				t.Fatal("the landed batch was not found at the retry")
			}
			m := messageIn(rangeAll(t, e, bob), res.ID)
			if m == nil || string(m.Body) != "did this land?" {
				t.Fatalf("the retry was told message %s is stored, but bob's stream has no readable copy (burns: %v): its key was dropped when the commit failed",
					res.ID, hasBurn(rangeAll(t, e, bob), res.ID))
			}
			if n := e.LiveSecrets(); n != 1 {
				t.Fatalf("%d live secret messages, want 1", n)
			}
		})
	}
}

// hookDir is a directory whose next Active(target) call runs hook and
// answers true: the caller saw the user active, and the user was removed
// right after (an offboarding racing a request that passed its checks).
type hookDir struct {
	*directory
	mu     sync.Mutex
	target string
	hook   func() // guarded by mu
}

func (h *hookDir) arm(target string, hook func()) {
	h.mu.Lock()
	h.target, h.hook = target, hook
	h.mu.Unlock()
}

func (h *hookDir) Active(u string) bool {
	h.mu.Lock()
	var hook func()
	if u == h.target && h.hook != nil {
		hook, h.hook = h.hook, nil
	}
	h.mu.Unlock()
	if hook != nil {
		hook()
		return true
	}
	return h.directory.Active(u)
}

// Offboarding removes the user, then burns their secret messages
// (internal/node Offboard). A request checked before the removal and
// committed after the burn scan must not leave a live secret message, or
// a chat event, with the offboarded user: plain fanouts re-check at
// commit time, secret chats did not.
func TestReviewOffboardingRacingASecretRequest(t *testing.T) {
	ctx := context.Background()
	newEnv := func(t *testing.T) (*secretEnv, *hookDir) {
		var hd *hookDir
		env := newSecretEnv(t, false, func(c *engine.Config) {
			hd = &hookDir{directory: c.Recipients.(*directory)}
			c.Recipients = hd
		})
		return env, hd
	}
	offboard := func(t *testing.T, env *secretEnv, user string) func() {
		return func() {
			env.dir.remove(user)
			if _, err := env.e.BurnUser(ctx, user); err != nil {
				t.Errorf("burn user: %v", err)
			}
		}
	}
	for _, tc := range []struct{ name, removed string }{
		{"recipient removed", bob},
		{"sender removed", alice},
	} {
		t.Run("submit, "+tc.name, func(t *testing.T) {
			env, hd := newEnv(t)
			ch := env.chat(t, engine.Level1, 0)
			env.send(t, ch, alice, "before") // burned by the offboarding
			hd.arm(tc.removed, offboard(t, env, tc.removed))
			res, err := env.e.Submit(ctx, engine.Submission{From: alice, Chat: ch.ID, Kind: engine.KindText, Body: []byte("after")})
			if err == nil {
				t.Errorf("a secret message with an offboarded participant was stored (%s)", res.ID)
			} else if !errors.Is(err, engine.ErrUnknownRecipient) {
				t.Errorf("submit: %v, want ErrUnknownRecipient", err)
			}
			if n := env.e.LiveSecrets(); n != 0 {
				t.Errorf("%d live secret messages after the offboarding burned them all", n)
			}
			if err == nil && messageIn(rangeAll(t, env.e, bob), res.ID) != nil {
				t.Errorf("bob's stream holds the message")
			}
		})
	}
	t.Run("create chat, participant removed", func(t *testing.T) {
		env, hd := newEnv(t)
		before, _ := env.e.Head(bob)
		hd.arm(bob, offboard(t, env, bob))
		if _, err := env.e.CreateChat(ctx, engine.ChatRequest{From: alice, To: bob, Level: engine.Level1}); !errors.Is(err, engine.ErrUnknownRecipient) {
			t.Errorf("create chat with a user offboarded meanwhile: %v, want ErrUnknownRecipient", err)
		}
		if after, _ := env.e.Head(bob); after != before {
			t.Errorf("the offboarded user's stream grew from %d to %d", before, after)
		}
	})
}

// Contract point 6: an offboarded user receives nothing more. A
// screenshot report by the other participant was still appended to the
// removed user's stream.
func TestReviewScreenshotIsNotRelayedToAnOffboardedUser(t *testing.T) {
	env := newSecretEnv(t, false, nil)
	ctx := context.Background()
	ch := env.chat(t, engine.Level3, 0)
	env.dir.remove(bob)
	if _, err := env.e.BurnUser(ctx, bob); err != nil {
		t.Fatal(err)
	}
	before, _ := env.e.Head(bob)
	if err := env.e.ReportScreenshot(ctx, alice, ch.ID, engine.ID{}); !errors.Is(err, engine.ErrUnknownRecipient) {
		t.Errorf("screenshot report to an offboarded user: %v, want ErrUnknownRecipient", err)
	}
	if after, _ := env.e.Head(bob); after != before {
		t.Fatalf("the offboarded user's stream grew from %d to %d", before, after)
	}
}

// lateClock is the fake clock seen by a timer loop that is running late
// (a backlog, a slow disk): its waits never end by themselves, so due
// timers fire only at Settle.
type lateClock struct{ *fakeclock.Clock }

func (lateClock) Until(time.Time) <-chan time.Time { return nil }

// A level-2 message unread for SecretUnreadTTL has expired, whether or
// not the timer loop has got to it yet: a read then must not disarm the
// expiry and give the message another burn delay of life.
func TestReviewReadAfterTheUnreadExpiryDoesNotSaveTheMessage(t *testing.T) {
	env := newSecretEnv(t, false, func(c *engine.Config) { c.Clock = lateClock{c.Clock.(*fakeclock.Clock)} })
	ch := env.chat(t, engine.Level2, 0)
	id := env.send(t, ch, alice, "read me within a day")
	env.clock.Advance(24 * time.Hour)
	if err := env.e.Read(context.Background(), bob, id); !errors.Is(err, engine.ErrNotRecipient) {
		t.Errorf("read after the message expired: %v, want ErrNotRecipient", err)
	}
	env.settle(t) // the late timer loop catches up
	if _, err := env.e.Message(id); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("the expired message is still stored after its expiry timer ran: %v", err)
	}
	env.waitBurn(t, bob, id)
}

// The masked copy is what the Sink contract lets an edge encode as is. A
// sender's client message id is the sender's own, often derived from
// its device or account (the Go client uses one prefix for every message
// of a client, secret or not), so handing it to the other participant
// links the pseudonym to the sender's other messages.
func TestReviewMaskedCopyCarriesNoClientID(t *testing.T) {
	env := newSecretEnv(t, false, nil)
	ch := env.chat(t, engine.Level1, 0)
	res, err := env.e.Submit(context.Background(), engine.Submission{
		From: alice, Chat: ch.ID, Kind: engine.KindText, Body: []byte("x"), ClientID: alice + "-phone-17",
	})
	if err != nil {
		t.Fatal(err)
	}
	live := messageIn(env.sink.wait(t, bob, 2), res.ID)
	resumed := messageIn(rangeAll(t, env.e, bob), res.ID)
	for what, m := range map[string]*engine.Message{"delivered": live, "resumed": resumed} {
		if m == nil {
			t.Fatalf("%s: no message", what)
		}
		if m.ClientID != "" {
			t.Errorf("%s copy carries the sender's client message id %q", what, m.ClientID)
		}
	}
}

// failingPutKeys records a key and then reports the write failed, as the
// keyring does when its slot write errs (the slot is taken and some of
// the key's bytes may be on disk).
type failingPutKeys struct{ *keyring.Ring }

func (k failingPutKeys) Put(id [16]byte, key [32]byte) error {
	k.Ring.Put(id, key)
	return errors.New("keyring: put: no space left on device")
}

// A submit whose key could not be stored aborts its batch; the key, or
// what was written of it, must be erased like any other key of an aborted
// batch, not left behind for a message that does not exist.
func TestReviewAFailedKeyPutIsErased(t *testing.T) {
	keys := openKeys(t)
	env := newSecretEnv(t, false, func(c *engine.Config) { c.Keys = failingPutKeys{keys} })
	ch := env.chat(t, engine.Level1, 0)
	if _, err := env.e.Submit(context.Background(), engine.Submission{From: alice, Chat: ch.ID, Kind: engine.KindText, Body: []byte("x")}); err == nil {
		t.Fatal("submit succeeded without its key")
	}
	if n := keys.Len(); n != 0 {
		t.Fatalf("%d keys left behind by the aborted submit", n)
	}
}

// stuckKeys refuses to erase while stuck is set.
type stuckKeys struct {
	*keyring.Ring
	stuck atomic.Bool
}

func (k *stuckKeys) Erase(ids [][16]byte) error {
	if k.stuck.Load() {
		return errors.New("disk refuses the write")
	}
	return k.Ring.Erase(ids)
}

// A burn whose key cannot be erased still burns the message, counts the
// failure for the alert, and the next start erases the orphaned key.
func TestFailedKeyEraseIsCountedAndRepairedAtTheNextStart(t *testing.T) {
	keys := &stuckKeys{Ring: openKeys(t)}
	reg := prometheus.NewRegistry()
	env := newSecretEnv(t, false, func(c *engine.Config) { c.Keys, c.Registerer = keys, reg })
	ch := env.chat(t, engine.Level1, 0)
	id := env.send(t, ch, alice, "stuck")
	if err := env.e.Read(context.Background(), bob, id); err != nil {
		t.Fatal(err)
	}
	keys.stuck.Store(true)
	env.clock.Advance(30 * time.Second)
	env.settle(t)
	env.waitBurn(t, bob, id)
	if _, ok := keys.Get(id); !ok {
		t.Fatal("the test's keyring erased although stuck")
	}
	if got := counterValue(t, reg, "ding_secret_key_erase_failures_total"); got != 1 {
		t.Fatalf("erase failures counted: %v, want 1", got)
	}
	keys.stuck.Store(false)
	env.cfg.Registerer = nil
	env.close()
	env.open(t)
	if _, ok := keys.Get(id); ok {
		t.Fatal("the next start left the burned message's key in the keyring")
	}
}

func counterValue(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// Between a message's burn deadline and the batch that burns it (a timer
// loop running late), a catch-up already shows it burned, never its body.
func TestCatchUpAfterTheDeadlineShowsTheBurn(t *testing.T) {
	env := newSecretEnv(t, false, func(c *engine.Config) { c.Clock = lateClock{c.Clock.(*fakeclock.Clock)} })
	ch := env.chat(t, engine.Level1, 0)
	id := env.send(t, ch, alice, "gone at the deadline")
	if err := env.e.Read(context.Background(), bob, id); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(30*time.Second - time.Millisecond)
	if messageIn(rangeAll(t, env.e, bob), id) == nil {
		t.Fatal("the message is gone before its deadline")
	}
	env.clock.Advance(time.Millisecond)
	es := rangeAll(t, env.e, bob)
	if messageIn(es, id) != nil || !hasBurn(es, id) {
		t.Fatalf("a catch-up after the deadline, before the burn ran: %+v", es)
	}
	env.settle(t) // the late timer loop catches up
	env.waitBurn(t, alice, id)
}
