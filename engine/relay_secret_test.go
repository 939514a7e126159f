package engine_test

import (
	"context"
	"errors"
	"fmt"
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

// Stage 3 of the relay: secret chats across partitions (relay_secret.go).
// alice is of partition 0, bob of partition 1.

const secretTTL = time.Hour // the unread expiry of these tests

// secretPart is a partition for the secret chat tests: on a memstore
// with in-memory keys, or on Pebble with a keyring file in its own
// directory (which a test searches, and which survives a restart).
type secretPart struct {
	*relayNode
	p     uint32
	data  string // "" for memstore
	db    *pebblestore.DB
	ring  *keyring.Ring
	clock *fakeclock.Clock
	late  bool // the timer loop runs late: due timers fire only at Settle
	close func()
}

// secretParts opens partitions 0 and 1 on one fake clock, on disk or not.
func secretParts(t testing.TB, onDisk bool) (a, b *secretPart, clock *fakeclock.Clock) {
	t.Helper()
	return secretPartsLate(t, onDisk, false)
}

// secretPartsLate is secretParts whose timer loops, if late, run only at
// Settle (lateClock).
func secretPartsLate(t testing.TB, onDisk, late bool) (a, b *secretPart, clock *fakeclock.Clock) {
	t.Helper()
	clock = fakeclock.New(t0)
	var parts [2]*secretPart
	for p := range parts {
		sp := &secretPart{p: uint32(p), clock: clock, late: late}
		if onDisk {
			sp.data = t.TempDir()
		}
		sp.open(t, memstore.New())
		parts[p] = sp
	}
	return parts[0], parts[1], clock
}

// open opens the engine (on mem unless the part is on disk).
func (sp *secretPart) open(t testing.TB, mem store.Store) {
	t.Helper()
	var st store.Store = mem
	var keys engine.Keys
	if sp.data != "" {
		db, err := pebblestore.Open(filepath.Join(sp.data, "store"), pebblestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ring, err := keyring.Open(filepath.Join(sp.data, "secret.keys"))
		if err != nil {
			db.Close()
			t.Fatal(err)
		}
		sp.db, sp.ring, st, keys = db, ring, db, ring
	}
	sp.relayNode = openRelayNode(t, st, sp.p, func(c *engine.Config) {
		c.Clock, c.SecretUnreadTTL = sp.clock, secretTTL
		if sp.late {
			c.Clock = lateClock{sp.clock}
		}
		if keys != nil {
			c.Keys = keys
		}
	})
	var once sync.Once
	e, db, ring := sp.e, sp.db, sp.ring
	sp.close = func() {
		once.Do(func() {
			e.Close()
			if db != nil {
				db.Close()
				ring.Close()
			}
		})
	}
	t.Cleanup(sp.close)
}

// restart closes the engine (and its store and keyring) and opens them
// again: what was in memory only (level-3 keys) is gone.
func (sp *secretPart) restart(t testing.TB) {
	t.Helper()
	sp.close()
	sp.open(t, sp.st)
}

func (sp *secretPart) settle(t testing.TB) {
	t.Helper()
	settle(t, sp.relayNode)
}

// waitBurns waits until user's sink has a burn of id, and checks it has
// exactly one.
func waitBurns(t testing.TB, n *relayNode, user string, id engine.ID) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !hasBurn(n.rec.entries(user), id) {
		if time.Now().After(deadline) {
			t.Fatalf("no burn of %s delivered to %s", id, user)
		}
		time.Sleep(time.Millisecond)
	}
	burns := 0
	for _, e := range n.rec.entries(user) {
		if e.Kind == engine.EntryBurn && e.Burn == id {
			burns++
		}
	}
	if burns != 1 {
		t.Fatalf("%s was told of the burn of %s %d times", user, id, burns)
	}
}

// waitMessage waits until user's sink has message id and returns it.
func waitMessage(t testing.TB, n *relayNode, user string, id engine.ID) *engine.Message {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if m := messageIn(n.rec.entries(user), id); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s never delivered to %s", id, user)
		}
		time.Sleep(time.Millisecond)
	}
}

func secretSend(t testing.TB, e *engine.Engine, ch engine.Chat, from, text string) engine.ID {
	t.Helper()
	res, err := e.Submit(context.Background(), engine.Submission{From: from, Chat: ch.ID, Kind: engine.KindText, Body: []byte(text)})
	if err != nil {
		t.Fatalf("send in chat: %v", err)
	}
	return res.ID
}

// gone checks that message id is burned on every part: no record, no
// key.
func gone(t testing.TB, id engine.ID, parts ...*secretPart) {
	t.Helper()
	for _, sp := range parts {
		if _, err := sp.e.Message(id); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("partition %d: message %s: %v, want burned", sp.p, id, err)
		}
		if _, ok := sp.e.SecretKey(id); ok {
			t.Fatalf("partition %d: message %s still has its key", sp.p, id)
		}
	}
}

// live checks that message id is live on every part, with the same key.
func live(t testing.TB, id engine.ID, parts ...*secretPart) [32]byte {
	t.Helper()
	var key [32]byte
	for i, sp := range parts {
		if _, err := sp.e.Message(id); err != nil {
			t.Fatalf("partition %d: message %s: %v, want live", sp.p, id, err)
		}
		k, ok := sp.e.SecretKey(id)
		if !ok || (i > 0 && k != key) {
			t.Fatalf("partition %d: message %s: key %v (same as the origin's: %v)", sp.p, id, ok, k == key)
		}
		key = k
	}
	return key
}

func createSecretChat(t testing.TB, a, b *secretPart, level engine.Level, burn time.Duration) engine.Chat {
	t.Helper()
	ch, err := a.e.CreateChat(context.Background(), engine.ChatRequest{From: "alice", To: "bob", Level: level, BurnAfter: burn})
	if err != nil {
		t.Fatalf("create chat: %v", err)
	}
	pump(t, a.relayNode, b.relayNode)
	got, err := b.e.Chat(ch.ID)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(ch) {
		t.Fatalf("the chat at B = %+v, %v; want %+v", got, err, ch)
	}
	return ch
}

// TestRelaySecretChat: a level-2 chat between alice (0) and bob (1):
// the chat on both sides with the same pseudonyms; messages each way
// delivered masked; a read burns both copies at the same deadline, an
// unread message expires on both sides; afterwards neither store nor
// keyring holds the plaintext or the key, and Check passes on both.
func TestRelaySecretChat(t *testing.T) {
	for _, onDisk := range []bool{false, true} {
		t.Run(map[bool]string{false: "mem", true: "pebble"}[onDisk], func(t *testing.T) { testRelaySecretChat(t, onDisk) })
	}
}

func testRelaySecretChat(t *testing.T, onDisk bool) {
	ctx := context.Background()
	a, b, clock := secretParts(t, onDisk)
	ch := createSecretChat(t, a, b, engine.Level2, 0)
	aliceP, bobP := ch.Members[0].Pseudonym, ch.Members[1].Pseudonym
	for _, c := range []struct {
		n    *secretPart
		user string
	}{{a, "alice"}, {b, "bob"}} {
		es := c.n.rec.wait(t, c.user, 1)
		if es[0].Kind != engine.EntrySecret || es[0].Secret.Event != "created" || es[0].Secret.You != ch.Members[c.n.p].Pseudonym {
			t.Fatalf("%s's first entry: %+v", c.user, es[0])
		}
		if cs, err := c.n.e.Chats(c.user); err != nil || len(cs) != 1 || cs[0].ID != ch.ID {
			t.Fatalf("%s's chats at partition %d: %+v, %v", c.user, c.n.p, cs, err)
		}
	}

	toBob, toAlice := "the tunnel opens at dawn "+t.Name(), "bring the lantern "+t.Name()
	m1 := secretSend(t, a.e, ch, "alice", toBob)
	m2 := secretSend(t, b.e, ch, "bob", toAlice)
	if headOf(t, a.e, "bob") != 0 || headOf(t, b.e, "alice") != 0 {
		t.Fatal("a stream of the other partition was written")
	}
	if onDisk {
		// The outbox record waiting for B names the message: its key
		// is in the keyring only.
		k, _ := a.e.SecretKey(m1)
		if err := a.db.Flush(); err != nil {
			t.Fatal(err)
		}
		if len(outboxOf(t, a.relayNode, 1)) != 1 {
			t.Fatal("no outbox record for m1")
		}
		if found := searchDir(t, a.data, k[:]); len(found) != 1 || !strings.HasSuffix(found[0], "secret.keys") {
			t.Fatalf("the key should be in the keyring only, found in %v", found)
		}
	}
	pump(t, a.relayNode, b.relayNode)
	k1, k2 := live(t, m1, a, b), live(t, m2, b, a)
	if onDisk {
		// Before the burns: the keys are in both keyrings and nowhere
		// else (not in an outbox record, not in a store), and the
		// plaintext is nowhere.
		for _, sp := range []*secretPart{a, b} {
			if err := sp.db.Flush(); err != nil {
				t.Fatal(err)
			}
			for _, k := range [][32]byte{k1, k2} {
				if found := searchDir(t, sp.data, k[:]); len(found) != 1 || !strings.HasSuffix(found[0], "secret.keys") {
					t.Fatalf("partition %d: a key should be in the keyring only, found in %v", sp.p, found)
				}
			}
			for _, text := range []string{toBob, toAlice} {
				if found := searchDir(t, sp.data, []byte(text)); len(found) != 0 {
					t.Fatalf("partition %d: plaintext stored in %v", sp.p, found)
				}
			}
		}
	}
	for _, c := range []struct {
		n          *secretPart
		user       string
		id         engine.ID
		text, from string
		to         string
	}{{b, "bob", m1, toBob, aliceP, bobP}, {a, "alice", m2, toAlice, bobP, aliceP}} {
		m := waitMessage(t, c.n.relayNode, c.user, c.id)
		if string(m.Body) != c.text || m.From != c.from || fmt.Sprint(m.To) != fmt.Sprint([]string{c.to}) || m.ClientID != "" ||
			m.Secret == nil || m.Secret.Level != engine.Level2 || m.Secret.Watermark != c.to {
			t.Fatalf("%s got %+v (secret %+v), want it masked", c.user, m, m.Secret)
		}
		if r := messageIn(rangeAll(t, c.n.e, c.user), c.id); r == nil || string(r.Body) != c.text || r.From != c.from {
			t.Fatalf("%s's Range: %+v", c.user, r)
		}
	}
	// Forwarding or quoting it is refused where it was received.
	for _, s := range []engine.Submission{{Forward: m1}, {Quote: m1, Body: []byte("x")}} {
		s.From, s.To, s.Kind = "bob", []string{"dave"}, engine.KindText
		if _, err := b.e.Submit(ctx, s); !errors.Is(err, engine.ErrNoForward) {
			t.Fatalf("forward or quote of a relayed secret message: %v", err)
		}
	}

	// bob reads m1 at +10s: both copies burn at +40s.
	clock.Advance(10 * time.Second)
	if err := b.e.Ack(ctx, "bob", "phone", headOf(t, b.e, "bob")); err != nil {
		t.Fatal(err)
	}
	if err := b.e.Read(ctx, "bob", m1); err != nil {
		t.Fatal(err)
	}
	pump(t, a.relayNode, b.relayNode)
	var states []engine.State
	for _, e := range a.rec.wait(t, "alice", 4) {
		if e.Kind == engine.EntryReceipt {
			if e.Receipt.User != bobP {
				t.Errorf("alice's receipt event names %q, want bob's pseudonym", e.Receipt.User)
			}
			states = append(states, e.Receipt.State)
		}
	}
	if fmt.Sprint(states) != fmt.Sprint([]engine.State{engine.StateDelivered, engine.StateRead}) {
		t.Fatalf("alice's receipt events: %v", states)
	}
	if rs, err := a.e.SenderReceipts("alice", m1); err != nil || len(rs) != 1 || rs[0].User != bobP || rs[0].State != engine.StateRead {
		t.Fatalf("alice's receipts of m1: %+v, %v", rs, err)
	}
	clock.Advance(30*time.Second - time.Millisecond)
	a.settle(t)
	b.settle(t)
	live(t, m1, a, b)
	clock.Advance(time.Millisecond)
	a.settle(t)
	b.settle(t)
	gone(t, m1, a, b) // both burned by their own timers, before any relay
	pump(t, a.relayNode, b.relayNode)
	waitBurns(t, a.relayNode, "alice", m1)
	waitBurns(t, b.relayNode, "bob", m1)
	live(t, m2, b, a)

	// m2, unread, expires on both sides at its creation + the TTL.
	clock.Advance(secretTTL - 40*time.Second - time.Millisecond)
	a.settle(t)
	b.settle(t)
	live(t, m2, b, a)
	clock.Advance(time.Millisecond)
	a.settle(t)
	b.settle(t)
	gone(t, m2, a, b)
	pump(t, a.relayNode, b.relayNode)
	waitBurns(t, a.relayNode, "alice", m2)
	waitBurns(t, b.relayNode, "bob", m2)
	if err := a.e.Read(ctx, "alice", m2); !errors.Is(err, engine.ErrNotRecipient) {
		t.Fatalf("read after the expiry: %v", err)
	}

	for _, sp := range []*secretPart{a, b} {
		if n := sp.e.LiveSecrets(); n != 0 {
			t.Fatalf("partition %d: %d live secret messages", sp.p, n)
		}
		for _, u := range []string{"alice", "bob"} {
			for _, e := range rangeAll(t, sp.e, u) {
				if e.Kind == engine.EntryMessage {
					t.Fatalf("partition %d: %s's stream still holds a message at %d", sp.p, u, e.Seq)
				}
			}
		}
	}
	checkStores(t, a.relayNode, b.relayNode)
	if !onDisk {
		return
	}
	for _, sp := range []*secretPart{a, b} {
		if err := sp.db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	for _, sp := range []*secretPart{a, b} {
		for _, needle := range [][]byte{[]byte(toBob), []byte(toAlice), k1[:], k2[:]} {
			if found := searchDir(t, sp.data, needle); len(found) != 0 {
				t.Fatalf("partition %d: after the burns, %d secret bytes found in %v", sp.p, len(needle), found)
			}
		}
	}
}

// TestRelaySecretBurnedBeforeItsRelay: a message that expired at the
// origin before its record left delivers a burn, never content: the
// record carries no message and no key, the recipient's partition stores
// neither and tells the recipient of the burn only.
func TestRelaySecretBurnedBeforeItsRelay(t *testing.T) {
	for _, onDisk := range []bool{false, true} {
		t.Run(map[bool]string{false: "mem", true: "pebble"}[onDisk], func(t *testing.T) {
			a, b, clock := secretParts(t, onDisk)
			ch := createSecretChat(t, a, b, engine.Level2, 0)
			text := "never to arrive " + t.Name()
			id := secretSend(t, a.e, ch, "alice", text)
			key := live(t, id, a)
			clock.Advance(secretTTL)
			a.settle(t)
			gone(t, id, a)
			out := outboxOf(t, a.relayNode, 1)
			if len(out) != 1 || out[0].Kind != engine.RelayMessage || out[0].Secret == nil || !out[0].Secret.Burned || out[0].Msg != nil || out[0].Secret.Key != nil {
				t.Fatalf("A's outbox after the expiry: %+v", out)
			}
			checkStores(t, a.relayNode, b.relayNode) // a record naming a burned message is fine
			pump(t, a.relayNode, b.relayNode)
			gone(t, id, a, b)
			waitBurns(t, b.relayNode, "bob", id)
			waitBurns(t, a.relayNode, "alice", id)
			if m := messageIn(b.rec.entries("bob"), id); m != nil {
				t.Fatalf("bob was delivered the burned message: %+v", m)
			}
			for _, e := range rangeAll(t, b.e, "bob") {
				if e.Kind == engine.EntryMessage {
					t.Fatalf("bob's stream holds a message at %d", e.Seq)
				}
			}
			if n := b.e.LiveSecrets(); n != 0 {
				t.Fatalf("%d live secret messages at B", n)
			}
			checkStores(t, a.relayNode, b.relayNode)
			if onDisk {
				for _, sp := range []*secretPart{a, b} {
					if err := sp.db.Flush(); err != nil {
						t.Fatal(err)
					}
					for _, needle := range [][]byte{[]byte(text), key[:]} {
						if found := searchDir(t, sp.data, needle); len(found) != 0 {
							t.Fatalf("partition %d: secret bytes found in %v", sp.p, found)
						}
					}
				}
			}
		})
	}
}

// TestRelaySecretLevel3Restart: level-3 keys live in memory only, so a
// restart of either partition burns its live level-3 messages (reason
// restart), and the burn, relayed, burns the other side's copy: the
// promise of one engine (a restart burns them for both parties) holds
// across partitions. A record not yet relayed when its origin restarts
// delivers a burn. The level-1 message beside them survives.
func TestRelaySecretLevel3Restart(t *testing.T) {
	for _, restart := range []int{0, 1} {
		t.Run(fmt.Sprintf("partition %d restarts", restart), func(t *testing.T) {
			a, b, _ := secretParts(t, true)
			ch3 := createSecretChat(t, a, b, engine.Level3, 5*time.Second)
			ch1 := createSecretChat(t, a, b, engine.Level1, 0)
			toBob := secretSend(t, a.e, ch3, "alice", "memory only, to bob")
			toAlice := secretSend(t, b.e, ch3, "bob", "memory only, to alice")
			kept := secretSend(t, a.e, ch1, "alice", "on disk, encrypted")
			pump(t, a.relayNode, b.relayNode)
			live(t, toBob, a, b)
			live(t, toAlice, b, a)
			live(t, kept, a, b)
			// One more, not relayed before the restart.
			var late engine.ID
			if restart == 0 {
				late = secretSend(t, a.e, ch3, "alice", "not yet relayed")
			}
			parts := []*secretPart{a, b}
			parts[restart].restart(t)
			ids := []engine.ID{toBob, toAlice}
			if late != (engine.ID{}) {
				ids = append(ids, late)
			}
			for _, id := range ids {
				waitBurns(t, parts[restart].relayNode, map[uint32]string{0: "alice", 1: "bob"}[uint32(restart)], id)
			}
			pump(t, a.relayNode, b.relayNode)
			for _, id := range ids {
				gone(t, id, a, b)
				waitBurns(t, a.relayNode, "alice", id)
				waitBurns(t, b.relayNode, "bob", id)
			}
			live(t, kept, a, b)
			if m := messageIn(rangeAll(t, b.e, "bob"), kept); m == nil || string(m.Body) != "on disk, encrypted" {
				t.Fatalf("the level-1 message after the restart: %+v", m)
			}
			for _, sp := range parts {
				if n := sp.e.LiveSecrets(); n != 1 {
					t.Fatalf("partition %d: %d live secret messages, want 1", sp.p, n)
				}
			}
			checkStores(t, a.relayNode, b.relayNode)
		})
	}
}

// TestRelaySecretAppliedTwice: a batch applied again changes nothing: one
// entry, one key, one live message, and the key in the keyring once.
func TestRelaySecretAppliedTwice(t *testing.T) {
	ctx := context.Background()
	a, b, _ := secretParts(t, true)
	ch := createSecretChat(t, a, b, engine.Level2, 0)
	res, err := a.e.Submit(ctx, engine.Submission{From: "alice", Chat: ch.ID, Kind: engine.KindText, Body: []byte("once"), ClientID: "alice-client-7"})
	if err != nil {
		t.Fatal(err)
	}
	id := res.ID
	batch, err := a.e.Outbox(1, 0, 10)
	if err != nil || len(batch.Records) != 1 {
		t.Fatalf("Outbox: %+v, %v", batch, err)
	}
	for range 2 {
		if through, err := b.e.ApplyRelay(ctx, batch); err != nil || through != batch.Records[0].Seq {
			t.Fatalf("ApplyRelay: %d, %v", through, err)
		}
	}
	head, keys := headOf(t, b.e, "bob"), b.ring.Len()
	if _, err := b.e.ApplyRelay(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if err := b.e.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if h := headOf(t, b.e, "bob"); h != head || b.ring.Len() != keys || b.e.LiveSecrets() != 1 {
		t.Fatalf("after a third apply: head %d (was %d), %d keys (was %d), %d live", h, head, b.ring.Len(), keys, b.e.LiveSecrets())
	}
	if err := a.e.AckRelay(ctx, 1, batch.Records[0].Seq); err != nil {
		t.Fatal(err)
	}
	live(t, id, a, b)
	// The sender's client id stays at the origin.
	if m, err := b.e.Message(id); err != nil || m.ClientID != "" {
		t.Fatalf("B's copy: %+v, %v; want no client id", m, err)
	}
	if m, err := a.e.Message(id); err != nil || m.ClientID != "alice-client-7" {
		t.Fatalf("A's copy: %+v, %v", m, err)
	}
	if n := len(rangeAll(t, b.e, "bob")); uint64(n) != head || head != 2 {
		t.Fatalf("bob's stream: %d entries, head %d; want the chat's creation and the message", n, head)
	}
	checkStores(t, a.relayNode, b.relayNode)
}

// TestRelaySecretScreenshotAndPseudonyms: in a level-3 chat, bob's
// screenshot report reaches alice naming him by pseudonym, and nothing
// either of them receives, live or by resuming, names the other.
func TestRelaySecretScreenshotAndPseudonyms(t *testing.T) {
	ctx := context.Background()
	a, b, clock := secretParts(t, false)
	ch := createSecretChat(t, a, b, engine.Level3, 5*time.Second)
	toBob := secretSend(t, a.e, ch, "alice", "hello")
	toAlice := secretSend(t, b.e, ch, "bob", "hi")
	pump(t, a.relayNode, b.relayNode)
	for _, c := range []struct {
		sp       *secretPart
		user     string
		id, mine engine.ID
	}{{b, "bob", toBob, toAlice}, {a, "alice", toAlice, toBob}} {
		if err := c.sp.e.Ack(ctx, c.user, "phone", headOf(t, c.sp.e, c.user)); err != nil {
			t.Fatal(err)
		}
		if err := c.sp.e.Read(ctx, c.user, c.id); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.e.ReportScreenshot(ctx, "bob", ch.ID, toBob); err != nil {
		t.Fatal(err)
	}
	pump(t, a.relayNode, b.relayNode)
	var shot *engine.SecretEvent
	for _, e := range a.rec.entries("alice") {
		if e.Kind == engine.EntrySecret && e.Secret.Event == "screenshot" {
			shot = e.Secret
		}
	}
	if shot == nil || shot.By != ch.Members[1].Pseudonym || shot.ID != toBob {
		t.Fatalf("alice's screenshot event: %+v", shot)
	}
	clock.Advance(5 * time.Second)
	a.settle(t)
	b.settle(t)
	pump(t, a.relayNode, b.relayNode)
	for _, sp := range []*secretPart{a, b} {
		gone(t, toBob, sp)
		gone(t, toAlice, sp)
	}
	for _, c := range []struct {
		sp          *secretPart
		me, other   string
		sent        engine.ID
		otherOfPart *secretPart
	}{{a, "alice", "bob", toBob, b}, {b, "bob", "alice", toAlice, a}} {
		waitBurns(t, c.sp.relayNode, c.me, toBob)
		waitBurns(t, c.sp.relayNode, c.me, toAlice)
		es := c.sp.rec.entries(c.me)
		if len(es) < 6 {
			t.Fatalf("%s got only %d entries", c.me, len(es))
		}
		for _, e := range append(es, rangeAll(t, c.sp.e, c.me)...) {
			if s := fmt.Sprintf("%+v", entryView(e)); strings.Contains(s, c.other) {
				t.Errorf("%s's entry %d names %s: %s", c.me, e.Seq, c.other, s)
			}
		}
	}
	checkStores(t, a.relayNode, b.relayNode)
}

// TestRelaySecretReadLateAtTheOrigin: bob reads just before the unread
// deadline and his receipt reaches the origin after it: the origin burns
// its copy as unread at the deadline (alice is told then), and bob's
// copy burns at his read's deadline, not earlier.
func TestRelaySecretReadLateAtTheOrigin(t *testing.T) {
	ctx := context.Background()
	a, b, clock := secretParts(t, false)
	ch := createSecretChat(t, a, b, engine.Level2, 0)
	id := secretSend(t, a.e, ch, "alice", "just in time")
	pump(t, a.relayNode, b.relayNode)
	clock.Advance(secretTTL - time.Second)
	if err := b.e.Read(ctx, "bob", id); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	a.settle(t)
	b.settle(t)
	gone(t, id, a)
	waitBurns(t, a.relayNode, "alice", id)
	pump(t, a.relayNode, b.relayNode)
	live(t, id, b)
	if hasBurn(b.rec.entries("bob"), id) {
		t.Fatal("bob was told of a burn before his read's deadline")
	}
	clock.Advance(29*time.Second - time.Millisecond)
	b.settle(t)
	live(t, id, b)
	clock.Advance(time.Millisecond)
	b.settle(t)
	gone(t, id, a, b)
	waitBurns(t, b.relayNode, "bob", id)
	pump(t, a.relayNode, b.relayNode)
	waitBurns(t, a.relayNode, "alice", id)
	checkStores(t, a.relayNode, b.relayNode)
}

// TestRelaySecretForgetBurnsBothCopies: bob removed (Forget on his
// partition) burns his messages there, and the burn, relayed, burns the
// origin's copies of both directions; alice is told once of each.
func TestRelaySecretForgetBurnsBothCopies(t *testing.T) {
	ctx := context.Background()
	a, b, _ := secretParts(t, false)
	ch := createSecretChat(t, a, b, engine.Level1, 0)
	toBob := secretSend(t, a.e, ch, "alice", "to bob")
	toAlice := secretSend(t, b.e, ch, "bob", "to alice")
	pump(t, a.relayNode, b.relayNode)
	res, err := b.e.Forget(ctx, "bob", 1)
	if err != nil || res.SecretsBurned != 2 {
		t.Fatalf("Forget: %+v, %v", res, err)
	}
	pump(t, a.relayNode, b.relayNode)
	for _, id := range []engine.ID{toBob, toAlice} {
		gone(t, id, a, b)
		waitBurns(t, a.relayNode, "alice", id)
	}
	for _, sp := range []*secretPart{a, b} {
		if n := sp.e.LiveSecrets(); n != 0 {
			t.Fatalf("partition %d: %d live secret messages", sp.p, n)
		}
	}
	checkStores(t, a.relayNode, b.relayNode)
}

// TestRelaySecretPastItsDeadlineIsNotDelivered: with the timer loops
// late, a message past its unread deadline is not relayed with its
// content (Outbox says Burned), and one whose deadline passes between
// Outbox and ApplyRelay is delivered as a burn: its key never reaches the
// recipient's keyring.
func TestRelaySecretPastItsDeadlineIsNotDelivered(t *testing.T) {
	ctx := context.Background()
	a, b, clock := secretPartsLate(t, false, true)
	ch := createSecretChat(t, a, b, engine.Level2, 0)

	// Due at the origin, its timer not run yet.
	due := secretSend(t, a.e, ch, "alice", "due")
	clock.Advance(secretTTL)
	if out := outboxOf(t, a.relayNode, 1); len(out) != 1 || !out[0].Secret.Burned || out[0].Msg != nil || out[0].Secret.Key != nil {
		t.Fatalf("the outbox record of a message past its deadline: %+v", out)
	}
	pump(t, a.relayNode, b.relayNode)
	gone(t, due, b)
	waitBurns(t, b.relayNode, "bob", due)

	// Read with its content, due on the way.
	transit := secretSend(t, a.e, ch, "alice", "in transit")
	batch, err := a.e.Outbox(1, 0, 10)
	if err != nil || len(batch.Records) != 1 || batch.Records[0].Secret.Burned {
		t.Fatalf("Outbox: %+v, %v", batch, err)
	}
	clock.Advance(secretTTL)
	through, err := b.e.ApplyRelay(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.e.AckRelay(ctx, 1, through); err != nil {
		t.Fatal(err)
	}
	gone(t, transit, b)
	waitBurns(t, b.relayNode, "bob", transit)
	if m := messageIn(b.rec.entries("bob"), transit); m != nil {
		t.Fatalf("bob was delivered a message past its deadline: %+v", m)
	}
	a.settle(t)
	b.settle(t)
	pump(t, a.relayNode, b.relayNode)
	gone(t, due, a)
	gone(t, transit, a)
	for _, id := range []engine.ID{due, transit} {
		waitBurns(t, a.relayNode, "alice", id)
	}
	checkStores(t, a.relayNode, b.relayNode)
}
