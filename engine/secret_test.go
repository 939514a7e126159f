package engine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/keyring"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/fakeclock"
)

// directory is a Recipients with removable users (an ActiveFilter).
type directory struct {
	mu      sync.Mutex
	removed map[string]bool
	users   map[string]bool
}

func newDirectory(users ...string) *directory {
	d := &directory{removed: map[string]bool{}, users: map[string]bool{}}
	for _, u := range users {
		d.users[u] = true
	}
	return d
}

func (d *directory) Resolve(to []string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, u := range to {
		if !d.users[u] || d.removed[u] {
			return nil, fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, u)
		}
	}
	return to, nil
}

func (d *directory) Active(u string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.users[u] && !d.removed[u]
}

func (d *directory) remove(u string) {
	d.mu.Lock()
	d.removed[u] = true
	d.mu.Unlock()
}

// The participants have distinctive names so that a search for them in
// what the other party receives cannot match by accident.
const (
	alice = "alice.realname"
	bob   = "bob.realname"
)

type secretEnv struct {
	e     *engine.Engine
	clock *fakeclock.Clock
	sink  *recorder
	dir   *directory
	cfg   engine.Config
	data  string // data directory, for a store on disk ("" for memstore)
	db    *pebblestore.DB
	ring  *keyring.Ring
}

// newSecretEnv opens an engine on the fake clock: on Pebble and a keyring
// file in a temp dir when onDisk, else in memory.
func newSecretEnv(t testing.TB, onDisk bool, mod func(*engine.Config)) *secretEnv {
	t.Helper()
	env := &secretEnv{clock: fakeclock.New(t0), dir: newDirectory(alice, bob, "cy")}
	env.cfg = engine.Config{Recipients: env.dir, Clock: env.clock}
	if mod != nil {
		mod(&env.cfg)
	}
	if onDisk {
		env.data = t.TempDir()
	}
	env.open(t)
	return env
}

func (env *secretEnv) open(t testing.TB) {
	t.Helper()
	if env.data != "" {
		db, err := pebblestore.Open(filepath.Join(env.data, "store"), pebblestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ring, err := keyring.Open(filepath.Join(env.data, "secret.keys"))
		if err != nil {
			t.Fatal(err)
		}
		env.db, env.ring = db, ring
		env.cfg.Store, env.cfg.Keys = db, ring
	} else if env.cfg.Store == nil {
		env.cfg.Store = memstore.New()
	}
	e, err := engine.Open(env.cfg)
	if err != nil {
		t.Fatal(err)
	}
	env.e, env.sink = e, &recorder{}
	e.SetSink(env.sink)
	t.Cleanup(env.close)
}

// close stops the engine and closes what it runs on (idempotent).
func (env *secretEnv) close() {
	env.e.Close()
	if env.db != nil {
		env.db.Close()
		env.ring.Close()
		env.db, env.ring = nil, nil
	}
}

func (env *secretEnv) restart(t testing.TB) {
	t.Helper()
	env.close()
	if env.data == "" {
		env.cfg.Keys = nil // the in-memory keys died with the process
	}
	env.open(t)
}

func (env *secretEnv) settle(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := env.e.Settle(ctx); err != nil {
		t.Fatalf("settle: %v", err)
	}
	// Settle returns once the timers' op is answered, when its batch is
	// durable: a burn's message leaves the cache only after that
	// (finishBurns, before the batch is published), so a read right
	// after could still find it. An op answered in a later batch means
	// the earlier one is published.
	if err := env.e.Barrier(ctx); err != nil {
		t.Fatalf("barrier: %v", err)
	}
}

func (env *secretEnv) chat(t testing.TB, level engine.Level, burn time.Duration) engine.Chat {
	t.Helper()
	ch, err := env.e.CreateChat(context.Background(), engine.ChatRequest{From: alice, To: bob, Level: level, BurnAfter: burn})
	if err != nil {
		t.Fatalf("create chat: %v", err)
	}
	return ch
}

func (env *secretEnv) send(t testing.TB, ch engine.Chat, from, text string) engine.ID {
	t.Helper()
	res, err := env.e.Submit(context.Background(), engine.Submission{From: from, Chat: ch.ID, Kind: engine.KindText, Body: []byte(text)})
	if err != nil {
		t.Fatalf("send in chat: %v", err)
	}
	return res.ID
}

// burnsAt checks that id, alice's message to bob, burns exactly d from
// now on the fake clock: one millisecond before, it is still there; at
// d, it is gone and both parties are told.
func (env *secretEnv) burnsAt(t testing.TB, id engine.ID, d time.Duration) {
	t.Helper()
	env.clock.Advance(d - time.Millisecond)
	env.settle(t)
	if _, err := env.e.Message(id); err != nil {
		t.Fatalf("burned early: %v", err)
	}
	env.clock.Advance(time.Millisecond)
	env.settle(t)
	env.waitBurn(t, alice, id)
	env.waitBurn(t, bob, id)
	if _, err := env.e.Message(id); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("message after the burn: %v", err)
	}
}

// waitBurn waits until user's sink has a burn entry for id.
func (env *secretEnv) waitBurn(t testing.TB, user string, id engine.ID) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !hasBurn(env.sink.entries(user), id) {
		if time.Now().After(deadline) {
			t.Fatalf("no burn of %s delivered to %s", id, user)
		}
		time.Sleep(time.Millisecond)
	}
}

func hasBurn(es []engine.Entry, id engine.ID) bool {
	for _, e := range es {
		if e.Kind == engine.EntryBurn && e.Burn == id {
			return true
		}
	}
	return false
}

func messageIn(es []engine.Entry, id engine.ID) *engine.Message {
	for _, e := range es {
		if e.Kind == engine.EntryMessage && e.Message.ID == id {
			return e.Message
		}
	}
	return nil
}

func rangeAll(t testing.TB, e *engine.Engine, user string) []engine.Entry {
	t.Helper()
	es, err := e.Range(user, 1, 1000)
	if err != nil {
		t.Fatalf("range %s: %v", user, err)
	}
	return es
}

func TestSecretMessageBurnsAfterReadOnTheFakeClock(t *testing.T) {
	env := newSecretEnv(t, false, nil)
	ch := env.chat(t, engine.Level1, 0)
	if ch.BurnAfter != 30*time.Second || len(ch.Members) != 2 {
		t.Fatalf("chat: %+v", ch)
	}
	id := env.send(t, ch, alice, "meet at the back door")
	got := env.sink.wait(t, bob, 2) // the chat's creation, then the message
	m := messageIn(got, id)
	if m == nil || string(m.Body) != "meet at the back door" {
		t.Fatalf("bob's entries: %+v", got)
	}
	aliceP, bobP := ch.Members[0].Pseudonym, ch.Members[1].Pseudonym
	if m.From != aliceP || len(m.To) != 1 || m.To[0] != bobP || m.Secret == nil || m.Secret.Level != engine.Level1 || m.Secret.Watermark != "" {
		t.Fatalf("delivered secret message not masked: from %q to %q secret %+v", m.From, m.To, m.Secret)
	}

	// Delivered and read: alice's receipt events name bob by pseudonym.
	head, _ := env.e.Head(bob)
	if err := env.e.Ack(context.Background(), bob, "phone", head); err != nil {
		t.Fatal(err)
	}
	if err := env.e.Read(context.Background(), bob, id); err != nil {
		t.Fatal(err)
	}
	var states []engine.State
	for _, e := range env.sink.wait(t, alice, 3) {
		if e.Kind == engine.EntryReceipt {
			if e.Receipt.User != bobP {
				t.Errorf("receipt event names %q, want bob's pseudonym %q", e.Receipt.User, bobP)
			}
			states = append(states, e.Receipt.State)
		}
	}
	if fmt.Sprint(states) != fmt.Sprint([]engine.State{engine.StateDelivered, engine.StateRead}) {
		t.Fatalf("alice's receipt events: %v", states)
	}

	env.burnsAt(t, id, 30*time.Second)
	if _, err := env.e.Receipts(id); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("receipts after the burn: %v", err)
	}
	if err := env.e.Read(context.Background(), bob, id); !errors.Is(err, engine.ErrNotRecipient) {
		t.Fatalf("read after the burn: %v", err)
	}
	if n := env.e.LiveSecrets(); n != 0 {
		t.Fatalf("%d live secret messages after the burn", n)
	}
	// bob's stream has no message entry left, only burns where it was.
	for _, e := range rangeAll(t, env.e, bob) {
		if e.Kind == engine.EntryMessage {
			t.Fatalf("bob's stream still holds the message at seq %d", e.Seq)
		}
	}
}

func TestSecretBurnTimerSurvivesARestart(t *testing.T) {
	env := newSecretEnv(t, true, nil)
	ch := env.chat(t, engine.Level2, 0)
	id := env.send(t, ch, alice, "the restart does not save me")
	if err := env.e.Read(context.Background(), bob, id); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(10 * time.Second)
	env.restart(t)
	if n := env.e.LiveSecrets(); n != 1 {
		t.Fatalf("%d live secret messages after the restart, want 1", n)
	}
	if m := messageIn(rangeAll(t, env.e, bob), id); m == nil || string(m.Body) != "the restart does not save me" {
		t.Fatalf("message after the restart: %+v", m)
	}
	env.burnsAt(t, id, 20*time.Second)
}

func TestOfflineDeviceGetsOnlyTheBurn(t *testing.T) {
	env := newSecretEnv(t, false, nil)
	ch := env.chat(t, engine.Level1, 0)
	id := env.send(t, ch, alice, "read on the phone only")
	// bob's phone reads it; his laptop has been offline since before it.
	if err := env.e.Read(context.Background(), bob, id); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(30 * time.Second)
	env.settle(t)
	env.waitBurn(t, bob, id)
	// The laptop resumes from the start of bob's stream.
	burns := 0
	for _, e := range rangeAll(t, env.e, bob) {
		switch {
		case e.Kind == engine.EntryMessage:
			t.Fatalf("the offline device got the message at seq %d", e.Seq)
		case e.Kind == engine.EntryBurn && e.Burn == id:
			burns++
		}
	}
	if burns != 2 { // where the message was, and the burn event
		t.Fatalf("the offline device got %d burn entries for the message, want 2", burns)
	}
}

func TestForwardAndQuoteOfASecretMessageAreRefused(t *testing.T) {
	env := newSecretEnv(t, false, nil)
	ch := env.chat(t, engine.Level1, 0)
	secret := env.send(t, ch, alice, "do not pass this on")
	ctx := context.Background()
	for _, s := range []engine.Submission{
		{From: bob, To: []string{"cy"}, Kind: engine.KindText, Body: []byte("fwd"), Forward: secret},
		{From: bob, To: []string{"cy"}, Kind: engine.KindText, Body: []byte("quote"), Quote: secret},
		{From: alice, To: []string{"cy"}, Kind: engine.KindText, Body: []byte("my own"), Forward: secret},
	} {
		if _, err := env.e.Submit(ctx, s); !errors.Is(err, engine.ErrNoForward) {
			t.Errorf("forward %v quote %v by %s: %v, want ErrNoForward", s.Forward != engine.ID{}, s.Quote != engine.ID{}, s.From, err)
		}
	}
	// Within the chat, no references at all; nor recipients.
	if _, err := env.e.Submit(ctx, engine.Submission{From: bob, Chat: ch.ID, Kind: engine.KindText, Body: []byte("re"), Quote: secret}); !errors.Is(err, engine.ErrNoForward) {
		t.Errorf("quote inside the chat: %v", err)
	}
	if _, err := env.e.Submit(ctx, engine.Submission{From: bob, Chat: ch.ID, To: []string{"cy"}, Kind: engine.KindText, Body: []byte("x")}); !errors.Is(err, engine.ErrBadName) {
		t.Errorf("chat message with recipients: %v", err)
	}
	if _, err := env.e.Submit(ctx, engine.Submission{From: "cy", Chat: ch.ID, Kind: engine.KindText, Body: []byte("x")}); !errors.Is(err, engine.ErrNotMember) {
		t.Errorf("outsider sending in the chat: %v", err)
	}
	// A normal message can be forwarded by whoever has it, not by others.
	plain, err := env.e.Submit(ctx, engine.Submission{From: alice, To: []string{bob}, Kind: engine.KindText, Body: []byte("public")})
	if err != nil {
		t.Fatal(err)
	}
	fwd, err := env.e.Submit(ctx, engine.Submission{From: bob, To: []string{"cy"}, Kind: engine.KindText, Body: []byte("fyi"), Forward: plain.ID})
	if err != nil {
		t.Fatalf("forward of a normal message: %v", err)
	}
	if m, err := env.e.Message(fwd.ID); err != nil || m.Forward != plain.ID {
		t.Fatalf("the forward does not record what it forwards: %v", err)
	}
	if _, err := env.e.Submit(ctx, engine.Submission{From: "cy", To: []string{alice}, Kind: engine.KindText, Body: []byte("x"), Quote: plain.ID}); !errors.Is(err, engine.ErrNotRecipient) {
		t.Errorf("quote of a message cy never got: %v", err)
	}
}

func TestLevel2UnreadMessagesExpire(t *testing.T) {
	env := newSecretEnv(t, false, nil)
	ch := env.chat(t, engine.Level2, 0)
	unread := env.send(t, ch, alice, "nobody reads me")
	read := env.send(t, ch, alice, "read after an hour")
	m := messageIn(env.sink.wait(t, bob, 3), unread)
	if m == nil || m.Secret == nil || m.Secret.Watermark != ch.Members[1].Pseudonym {
		t.Fatalf("level-2 message's watermark: %+v", m)
	}
	env.clock.Advance(time.Hour)
	if err := env.e.Read(context.Background(), bob, read); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(30 * time.Second)
	env.settle(t)
	env.waitBurn(t, bob, read)
	env.clock.Advance(23*time.Hour - 30*time.Second - time.Millisecond)
	env.settle(t)
	if _, err := env.e.Message(unread); err != nil {
		t.Fatalf("expired early: %v", err)
	}
	env.clock.Advance(time.Millisecond)
	env.settle(t)
	env.waitBurn(t, alice, unread)
	if n := env.e.LiveSecrets(); n != 0 {
		t.Fatalf("%d live secret messages after expiry", n)
	}
	// A level-1 message does not expire.
	ch1 := env.chat(t, engine.Level1, 0)
	keep := env.send(t, ch1, alice, "level one stays until read")
	env.clock.Advance(48 * time.Hour)
	env.settle(t)
	if _, err := env.e.Message(keep); err != nil {
		t.Fatalf("a level-1 message expired: %v", err)
	}
}

func TestLevel3BurnsSoonAndRelaysScreenshots(t *testing.T) {
	env := newSecretEnv(t, true, nil)
	ch := env.chat(t, engine.Level3, 5*time.Second)
	id := env.send(t, ch, alice, "five seconds")
	if err := env.e.Read(context.Background(), bob, id); err != nil {
		t.Fatal(err)
	}
	if err := env.e.ReportScreenshot(context.Background(), bob, ch.ID, id); err != nil {
		t.Fatal(err)
	}
	var shot *engine.SecretEvent
	for _, e := range env.sink.wait(t, alice, 3) {
		if e.Kind == engine.EntrySecret && e.Secret.Event == "screenshot" {
			shot = e.Secret
		}
	}
	if shot == nil || shot.By != ch.Members[1].Pseudonym || shot.ID != id || shot.Chat != ch.ID {
		t.Fatalf("screenshot event: %+v", shot)
	}
	env.clock.Advance(5 * time.Second)
	env.settle(t)
	env.waitBurn(t, alice, id)

	ch1 := env.chat(t, engine.Level1, 0)
	if err := env.e.ReportScreenshot(context.Background(), bob, ch1.ID, engine.ID{}); !errors.Is(err, engine.ErrBadChat) {
		t.Fatalf("screenshot in a level-1 chat: %v", err)
	}
	if err := env.e.ReportScreenshot(context.Background(), "cy", ch.ID, engine.ID{}); !errors.Is(err, engine.ErrNotMember) {
		t.Fatalf("screenshot by an outsider: %v", err)
	}
	// A message id that is not a live message of the chat (here: the
	// burned one) is not relayed; the report is.
	if err := env.e.ReportScreenshot(context.Background(), bob, ch.ID, id); err != nil {
		t.Fatal(err)
	}
	var last engine.SecretEvent
	deadline := time.Now().Add(5 * time.Second)
	for n := 0; n < 2; {
		n = 0
		for _, e := range env.sink.entries(alice) {
			if e.Kind == engine.EntrySecret && e.Secret.Event == "screenshot" {
				n, last = n+1, *e.Secret
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the second screenshot report was not relayed")
		}
		time.Sleep(time.Millisecond)
	}
	if last.ID != (engine.ID{}) {
		t.Fatalf("a screenshot report relayed the id of a burned message: %+v", last)
	}
}

// Level 3 keeps its keys in memory only: a restart burns its live
// messages (the documented trade of durability for privacy), and tells
// both parties.
func TestLevel3MessagesBurnAtARestart(t *testing.T) {
	env := newSecretEnv(t, true, nil)
	ch3 := env.chat(t, engine.Level3, 0)
	ch1 := env.chat(t, engine.Level1, 0)
	gone := env.send(t, ch3, alice, "memory only")
	kept := env.send(t, ch1, alice, "on disk, encrypted")
	env.restart(t)
	// Burned in the background once the engine has its sink; until then
	// it cannot be read: a catch-up shows it burned.
	env.waitBurn(t, alice, gone)
	env.waitBurn(t, bob, gone)
	if _, err := env.e.Message(gone); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("a level-3 message after the restart: %v", err)
	}
	if m, err := env.e.Message(kept); err != nil || m.Body != nil || m.From != alice {
		t.Fatalf("Message of a secret message must give metadata only: %+v, %v", m, err)
	}
	if !hasBurn(rangeAll(t, env.e, alice), gone) || !hasBurn(rangeAll(t, env.e, bob), gone) {
		t.Fatal("the restart's burn was not appended to both streams")
	}
	if m := messageIn(rangeAll(t, env.e, bob), kept); m == nil || string(m.Body) != "on disk, encrypted" {
		t.Fatalf("the level-1 message after the restart: %+v", m)
	}
	if n := env.e.LiveSecrets(); n != 1 {
		t.Fatalf("%d live secret messages, want 1", n)
	}
}

func TestOffboardingBurnsBothDirections(t *testing.T) {
	env := newSecretEnv(t, false, nil)
	ch := env.chat(t, engine.Level1, 0)
	a := env.send(t, ch, alice, "to bob")
	b := env.send(t, ch, bob, "to alice")
	env.dir.remove(bob)
	n, err := env.e.BurnUser(context.Background(), bob)
	if err != nil || n != 2 {
		t.Fatalf("burn user: %d, %v", n, err)
	}
	for _, id := range []engine.ID{a, b} {
		if _, err := env.e.Message(id); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("message %s after offboarding: %v", id, err)
		}
		env.waitBurn(t, alice, id)
		if hasBurn(env.sink.entries(bob), id) {
			t.Fatal("the offboarded user was sent a burn event")
		}
	}
	if _, err := env.e.Submit(context.Background(), engine.Submission{From: alice, Chat: ch.ID, Kind: engine.KindText, Body: []byte("hello?")}); !errors.Is(err, engine.ErrUnknownRecipient) {
		t.Fatalf("send to an offboarded participant: %v", err)
	}
}

func TestCreateChatRefusesBadRequests(t *testing.T) {
	env := newSecretEnv(t, false, nil)
	for _, tc := range []struct {
		name string
		req  engine.ChatRequest
		want error
	}{
		{"with oneself", engine.ChatRequest{From: alice, To: alice, Level: 1}, engine.ErrBadChat},
		{"level 0", engine.ChatRequest{From: alice, To: bob, Level: 0}, engine.ErrBadChat},
		{"level 4", engine.ChatRequest{From: alice, To: bob, Level: 4}, engine.ErrBadChat},
		{"delay below level 3", engine.ChatRequest{From: alice, To: bob, Level: 2, BurnAfter: 10 * time.Second}, engine.ErrBadChat},
		{"delay too short", engine.ChatRequest{From: alice, To: bob, Level: 3, BurnAfter: 4 * time.Second}, engine.ErrBadChat},
		{"delay too long", engine.ChatRequest{From: alice, To: bob, Level: 3, BurnAfter: time.Hour}, engine.ErrBadChat},
		{"unknown user", engine.ChatRequest{From: alice, To: "nobody", Level: 1}, engine.ErrUnknownRecipient},
		{"bad name", engine.ChatRequest{From: alice, To: "no body", Level: 1}, engine.ErrBadName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := env.e.CreateChat(context.Background(), tc.req); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if cs, err := env.e.Chats(alice); err != nil || len(cs) != 0 {
		t.Fatalf("refused requests left chats: %v %v", cs, err)
	}
}

// Every entry either participant can get, live or by resuming, names the
// other by pseudonym only.
func TestParticipantsSeeOnlyPseudonyms(t *testing.T) {
	env := newSecretEnv(t, false, nil)
	ch := env.chat(t, engine.Level3, 5*time.Second)
	ctx := context.Background()
	a := env.send(t, ch, alice, "hello")
	b := env.send(t, ch, bob, "hi")
	for _, u := range []string{alice, bob} {
		head, _ := env.e.Head(u)
		if err := env.e.Ack(ctx, u, "phone", head); err != nil {
			t.Fatal(err)
		}
	}
	env.e.Read(ctx, bob, a)
	env.e.Read(ctx, alice, b)
	env.e.ReportScreenshot(ctx, alice, ch.ID, b)
	env.clock.Advance(5 * time.Second)
	env.settle(t)
	env.waitBurn(t, alice, a)
	env.waitBurn(t, bob, b)
	for _, pair := range [][2]string{{alice, bob}, {bob, alice}} {
		me, other := pair[0], pair[1]
		live := env.sink.entries(me)
		if len(live) < 6 {
			t.Fatalf("%s got only %d entries", me, len(live))
		}
		for _, e := range append(live, rangeAll(t, env.e, me)...) {
			if s := fmt.Sprintf("%+v", entryView(e)); strings.Contains(s, other) {
				t.Errorf("%s's entry %d names %s: %s", me, e.Seq, other, s)
			}
		}
		rs, err := env.e.SenderReceipts(me, map[string]engine.ID{alice: a, bob: b}[me])
		if err != nil && !errors.Is(err, engine.ErrNotFound) {
			t.Fatal(err)
		}
		if s := fmt.Sprint(rs); strings.Contains(s, other) {
			t.Errorf("receipts for %s name %s: %s", me, other, s)
		}
	}
}

// entryView is what an edge can read of an entry (the message's fields
// are dereferenced).
func entryView(e engine.Entry) any {
	if e.Kind == engine.EntryMessage {
		return struct {
			E engine.Entry
			M engine.Message
			S engine.SecretInfo
		}{e, *e.Message, *e.Message.Secret}
	}
	return e
}

// After a burn, no byte of the plaintext or of the key is left anywhere
// in the data directory; before it, the plaintext was never there (it is
// stored encrypted) but the key was (so the search can fail).
func TestNothingOfABurnedMessageRemainsOnDisk(t *testing.T) {
	env := newSecretEnv(t, true, nil)
	ch := env.chat(t, engine.Level2, 0)
	plain := "launch code 0451-XYZZY-" + t.Name()
	id := env.send(t, ch, alice, plain)
	key, ok := env.e.SecretKey(id)
	if !ok {
		t.Fatal("no key for the message")
	}
	// Make sure the message reached the LSM's files too, not only the WAL.
	if err := env.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if found := searchDir(t, env.data, []byte(plain)); len(found) != 0 {
		t.Fatalf("plaintext stored unencrypted in %v", found)
	}
	if found := searchDir(t, env.data, key[:]); len(found) != 1 || !strings.HasSuffix(found[0], "secret.keys") {
		t.Fatalf("the key should be in the keyring only, found in %v", found)
	}
	if err := env.e.Read(context.Background(), bob, id); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(30 * time.Second)
	env.settle(t)
	env.waitBurn(t, alice, id)
	for _, needle := range [][]byte{[]byte(plain), key[:]} {
		if found := searchDir(t, env.data, needle); len(found) != 0 {
			t.Fatalf("after the burn, %d bytes of secret found in %v", len(needle), found)
		}
	}
	// And after a restart (the WAL replayed), still nothing.
	env.restart(t)
	if _, err := env.e.Message(id); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("the burned message after a restart: %v", err)
	}
	for _, needle := range [][]byte{[]byte(plain), key[:]} {
		if found := searchDir(t, env.data, needle); len(found) != 0 {
			t.Fatalf("after the restart, secret bytes found in %v", found)
		}
	}
}

// searchDir returns the files under dir that contain needle.
func searchDir(t testing.TB, dir string, needle []byte) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed by the store meanwhile
		}
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

var _ store.Store = (*pebblestore.DB)(nil)
