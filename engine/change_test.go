package engine_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
)

// TestOffboardIsOneBatchAndLaterOpsSeeIt: offboarding writes the
// directory's change, stops the user's pending DINGs and burns their secret
// messages in one op; ops queued behind it in the same batch, checked
// before the removal was installed, are refused on the commit loop.
func TestOffboardIsOneBatchAndLaterOpsSeeIt(t *testing.T) {
	env := newSecretEnv(t, false, nil)
	ctx := context.Background()
	ch := env.chat(t, engine.Level1, 0)
	live := env.send(t, ch, alice, "before the removal")
	d, err := env.e.Ding(ctx, engine.DingRequest{From: alice, To: []string{bob}, Text: "pending", Policy: "inapp,sms@1h"})
	if err != nil {
		t.Fatal(err)
	}
	dirKey := []byte{engine.PrefixDirectory, 'x', 'b', 'o', 'b'}
	installed := false
	release := env.e.Hold() // the offboarding and the ops after it share one batch
	off := make(chan error, 1)
	var did engine.Offboarded
	go func() {
		var err error
		did, err = env.e.Offboard(ctx, bob, engine.Change{
			Write:   func(w engine.Writer) error { w.Set(dirKey, []byte("removed")); return nil },
			Applied: func() { installed = true; env.dir.remove(bob) },
		})
		off <- err
	}()
	// Queued behind the offboarding (Hold keeps the batch open until
	// both are queued: the DING is checked before the removal).
	waitQueued(t, env.e, 1)
	dingErr := make(chan error, 1)
	go func() {
		_, err := env.e.Ding(ctx, engine.DingRequest{From: alice, To: []string{bob}, Text: "after", Policy: "inapp"})
		dingErr <- err
	}()
	waitQueued(t, env.e, 2)
	release()
	if err := <-off; err != nil {
		t.Fatal(err)
	}
	if did.DingsStopped != 1 || did.SecretsBurned != 1 {
		t.Fatalf("Offboard = %+v, want 1 DING stopped and 1 secret burned", did)
	}
	if !installed {
		t.Fatal("the change's Applied did not run before Offboard returned")
	}
	if err := <-dingErr; !errors.Is(err, engine.ErrUnknownRecipient) {
		t.Fatalf("a DING to bob queued behind his removal got %v, want ErrUnknownRecipient", err)
	}
	if v, err := env.cfg.Store.Get(dirKey); err != nil || string(v) != "removed" {
		t.Fatalf("the directory's write: %q %v", v, err)
	}
	st, err := env.e.DingStatus(d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Recipients[0].Status; s != engine.StatusRemoved {
		t.Fatalf("bob's escalation is %s, want removed", s)
	}
	if _, err := env.e.Message(live); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("bob's secret message after offboarding: %v, want burned", err)
	}
}

// TestAChangeMayOnlyWriteDirectoryKeys: a change that writes outside the
// directory's prefix is refused and nothing of it lands.
func TestAChangeMayOnlyWriteDirectoryKeys(t *testing.T) {
	env := newSecretEnv(t, false, nil)
	err := env.e.Commit(context.Background(), engine.Change{Write: func(w engine.Writer) error {
		w.Set([]byte{engine.PrefixDirectory, 'o', 'k'}, nil)
		w.Set([]byte("m-not-yours"), []byte("x"))
		return nil
	}})
	if !errors.Is(err, engine.ErrBadChange) {
		t.Fatalf("Commit = %v, want ErrBadChange", err)
	}
	if _, err := env.cfg.Store.Get([]byte{engine.PrefixDirectory, 'o', 'k'}); err == nil {
		t.Fatal("part of a refused change landed")
	}
}

// waitQueued waits until n ops wait for the (held) commit loop.
func waitQueued(t testing.TB, e *engine.Engine, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.Queued() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d ops queued after 10s, want %d", e.Queued(), n)
		}
		runtime.Gosched()
	}
}
