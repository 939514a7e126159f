package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

const (
	apnsTok  = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
	apnsTok2 = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
)

func register(t testing.TB, e *engine.Engine, user string, tok engine.PushToken) engine.PushToken {
	t.Helper()
	got, err := e.RegisterPushToken(context.Background(), user, tok)
	if err != nil {
		t.Fatalf("register %s/%s: %v", user, tok.Device, err)
	}
	return got
}

// A device's registration is replaced by its next one; each device has its
// own; a removal naming an old token leaves the new one.
func TestPushTokenRegistrationAndReplacement(t *testing.T) {
	env := newDingEnv(t, memstore.New(), nil)
	ctx := context.Background()
	register(t, env.e, "bo", engine.PushToken{Device: "phone", Provider: engine.PushAPNs, Token: apnsTok, Topic: "com.example.ding"})
	register(t, env.e, "bo", engine.PushToken{Device: "phone", Provider: engine.PushAPNs, Token: apnsTok2, Topic: "com.example.ding", Sandbox: true})
	register(t, env.e, "bo", engine.PushToken{Device: "pixel", Provider: engine.PushFCM, Token: "fcm-token-0123456789:abc"})
	toks, err := env.e.PushTokens("bo")
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 2 || toks[0].Device != "phone" || toks[0].Token != apnsTok2 || !toks[0].Sandbox || toks[1].Device != "pixel" && toks[1].Provider != engine.PushFCM {
		t.Fatalf("tokens %+v", toks)
	}
	if n := env.e.PushTokenCount(); n != 2 {
		t.Fatalf("count %d", n)
	}
	if ok, err := env.e.RemovePushToken(ctx, "bo", "phone", apnsTok); err != nil || ok {
		t.Fatalf("removing the replaced token: %v %v", ok, err)
	}
	if ok, err := env.e.RemovePushToken(ctx, "bo", "phone", apnsTok2); err != nil || !ok {
		t.Fatalf("removing the current token: %v %v", ok, err)
	}
	if toks, _ := env.e.PushTokens("bo"); len(toks) != 1 || toks[0].Device != "pixel" {
		t.Fatalf("tokens after removal %+v", toks)
	}
	if n := env.e.PushTokenCount(); n != 1 {
		t.Fatalf("count %d", n)
	}
}

func TestPushTokenBadInput(t *testing.T) {
	env := newDingEnv(t, memstore.New(), nil)
	for _, tc := range []struct {
		name string
		user string
		tok  engine.PushToken
		want string
	}{
		{"unknown provider", "bo", engine.PushToken{Device: "p", Provider: "gcm", Token: apnsTok}, `provider "gcm"`},
		{"short apns token", "bo", engine.PushToken{Device: "p", Provider: engine.PushAPNs, Token: "abc", Topic: "com.x"}, "64 or more hex digits"},
		{"apns token not hex", "bo", engine.PushToken{Device: "p", Provider: engine.PushAPNs, Token: strings.Repeat("z", 64), Topic: "com.x"}, "hex digits"},
		{"apns without bundle id", "bo", engine.PushToken{Device: "p", Provider: engine.PushAPNs, Token: apnsTok}, "bundle id"},
		{"fcm with topic", "bo", engine.PushToken{Device: "p", Provider: engine.PushFCM, Token: "fcm-token-0123456789", Topic: "com.x"}, "APNs only"},
		{"fcm token with spaces", "bo", engine.PushToken{Device: "p", Provider: engine.PushFCM, Token: "fcm token 0123456789"}, "FCM registration token"},
		{"bad device", "bo", engine.PushToken{Device: "a/b", Provider: engine.PushFCM, Token: "fcm-token-0123456789"}, "device"},
		{"no device", "bo", engine.PushToken{Provider: engine.PushFCM, Token: "fcm-token-0123456789"}, "device"},
		{"bad user", "b o", engine.PushToken{Device: "p", Provider: engine.PushFCM, Token: "fcm-token-0123456789"}, "user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := env.e.RegisterPushToken(context.Background(), tc.user, tc.tok)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one saying %q", err, tc.want)
			}
			if engine.CodeOf(err) != engine.CodeBadRequest {
				t.Fatalf("code %v, want bad request", engine.CodeOf(err))
			}
		})
	}
	if toks, _ := env.e.PushTokens("bo"); len(toks) != 0 {
		t.Fatalf("stored %+v", toks)
	}
}

// A DING's push step fires on time after a restart (Pebble), goes to the
// user (the notifier finds the devices) with the DING's choices; a
// confirmation, as the app makes it from the notification's action, stops
// the SMS step after it.
func TestPushStepSurvivesARestartAndConfirmStopsSMS(t *testing.T) {
	dir := t.TempDir()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	env := newDingEnv(t, db, nil)
	register(t, env.e, "bo", engine.PushToken{Device: "phone", Provider: engine.PushAPNs, Token: apnsTok, Topic: "com.example.ding"})
	res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,push@1m,sms@5m", Choices: []string{"coming", "can't"}})
	env.e.Close()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if db, err = pebblestore.Open(dir, pebblestore.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	env.cfg.Store = db
	env.open(t)
	env.clock.Advance(59 * time.Second)
	env.barrier(t)
	if n := len(env.n.all()); n != 0 {
		t.Fatalf("%d sends before the step's time", n)
	}
	env.clock.Advance(time.Second)
	s := env.n.waitSends(t, 1)
	if s[0].Channel != engine.ChannelPush || s[0].To != "bo" || len(s[0].Choices) != 2 || s[0].Sender != "Ana" {
		t.Fatalf("send %+v", s[0].Outbound)
	}
	waitLedger(t, env.e, res.ID, 0, engine.LedgerPushSent)
	if err := env.e.PushOpened(context.Background(), "bo", res.ID, "phone"); err != nil {
		t.Fatal(err)
	}
	if err := env.e.Confirm(context.Background(), "bo", res.ID, 1); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(10 * time.Minute)
	env.barrier(t)
	if n := len(env.n.all()); n != 1 {
		t.Fatalf("%d sends after the confirmation, want only the push", n)
	}
	rs := status(t, env.e, res.ID).Recipients[0]
	if rs.Status != engine.StatusConfirmed {
		t.Fatalf("status %s", rs.Status)
	}
	ev := events(rs)
	for _, k := range []engine.LedgerKind{engine.LedgerPushSent, engine.LedgerPushOpened, engine.LedgerConfirmed} {
		if !contains(ev, k) {
			t.Fatalf("ledger %v has no %s", ev, k)
		}
	}
	if contains(ev, engine.LedgerSMSQueued) {
		t.Fatalf("ledger %v has an SMS", ev)
	}
}

func contains(ev []engine.LedgerKind, k engine.LedgerKind) bool {
	for _, e := range ev {
		if e == k {
			return true
		}
	}
	return false
}

// What the notifier answers, and what the ledger and the escalation make
// of it: no device, dead tokens, a refusal, an unknown outcome (retried).
func TestPushStepOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		register bool
		err      error
		want     engine.LedgerKind
		retry    bool
	}{
		{"no device", false, nil, engine.LedgerNoPushDevice, false},
		{"unregistered", true, fmt.Errorf("dead: %w", engine.ErrUnregistered), engine.LedgerPushUnregistered, false},
		{"rejected", true, fmt.Errorf("4xx: %w", engine.ErrRejected), engine.LedgerPushFailed, false},
		{"unknown", true, errors.New("503"), engine.LedgerPushFailed, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newDingEnv(t, memstore.New(), nil)
			if tc.register {
				register(t, env.e, "bo", engine.PushToken{Device: "pixel", Provider: engine.PushFCM, Token: "fcm-token-0123456789"})
			}
			var calls int
			env.n.setFail(func(o engine.Outbound) error {
				calls++
				if calls == 1 {
					return tc.err
				}
				return nil
			})
			res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "push,sms@10m"})
			waitLedger(t, env.e, res.ID, 0, tc.want)
			env.clock.Advance(time.Minute) // a retry's backoff is 5s
			env.barrier(t)
			ev := events(status(t, env.e, res.ID).Recipients[0])
			if got := contains(ev, engine.LedgerRetry); got != tc.retry {
				t.Fatalf("ledger %v: retry %v, want %v", ev, got, tc.retry)
			}
			if tc.retry && !contains(ev, engine.LedgerPushSent) {
				t.Fatalf("ledger %v: the retry was not sent", ev)
			}
		})
	}
}

// Offboarding deletes the user's registrations in the offboarding batch.
func TestOffboardRemovesPushTokens(t *testing.T) {
	env := newDingEnv(t, memstore.New(), nil)
	register(t, env.e, "bo", engine.PushToken{Device: "pixel", Provider: engine.PushFCM, Token: "fcm-token-0123456789"})
	register(t, env.e, "cy", engine.PushToken{Device: "pixel", Provider: engine.PushFCM, Token: "fcm-token-9876543210"})
	if _, err := env.e.Offboard(context.Background(), "bo", engine.Change{}); err != nil {
		t.Fatal(err)
	}
	if toks, _ := env.e.PushTokens("bo"); len(toks) != 0 {
		t.Fatalf("bo's tokens after offboarding: %+v", toks)
	}
	if toks, _ := env.e.PushTokens("cy"); len(toks) != 1 {
		t.Fatalf("cy's tokens: %+v", toks)
	}
}

// With push configured, a DING without a policy pushes at once.
func TestDefaultPolicyPushesWhenConfigured(t *testing.T) {
	env := newDingEnv(t, memstore.New(), func(c *engine.Config) { c.PushConfigured = true })
	register(t, env.e, "bo", engine.PushToken{Device: "pixel", Provider: engine.PushFCM, Token: "fcm-token-0123456789"})
	res := env.ding(t, engine.DingRequest{To: []string{"bo"}})
	if s := env.n.waitSends(t, 1); s[0].Channel != engine.ChannelPush {
		t.Fatalf("first send %+v", s[0].Outbound)
	}
	waitLedger(t, env.e, res.ID, 0, engine.LedgerPushSent)
	if p, _ := engine.ParsePolicy(engine.DefaultPushPolicy.String()); p.String() != "inapp,push,sms@5m,voice@15m until=confirmed" {
		t.Fatalf("default push policy %s", p)
	}
}
