package engine

import (
	"errors"
	"fmt"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// Secret chats across partitions (stage 3 of the relay; see relay.go and
// secret.go).
//
// Each partition of a chat's members keeps the chat record and its own
// copy of each message (record, key, state, timers), and burns it itself:
//
//   - The chat. The creator's partition makes it (pseudonyms included) and
//     sends the other member's partition one RelayChat record, the chat
//     record whole. There it is stored if absent, with the member's 'o'
//     key and their "created" event (applyRelayChat).
//   - A message. The sender's partition (the origin) seals and stores it
//     as on one engine, with its state and its key, and writes a
//     RelayMessage record naming the recipient and the chat (not the key,
//     not the body). Outbox reads, when it sends the record, the sealed
//     message, the state's unread deadline and the key from the keyring
//     (relaySecret); the key is never written in the outbox. ApplyRelay
//     puts the key into the destination's keyring (its level's: level 3
//     in memory only) before the batch, which secretTx.flush syncs first,
//     and stores the sealed message, the state and the recipient's entry
//     (applyRelaySecret). A record whose message burned, expired or lost
//     its key (a level-3 key after a restart) before it left carries
//     Burned and no content: the recipient gets a burn entry only.
//   - Deadlines. Unread expiry is the origin's deadline, carried in the
//     record; burn after read is the read time, carried by the
//     RelayReceipt the reader's partition sends back (kept to the
//     millisecond on both sides), plus the chat's delay. So both sides
//     arm the same timers and burn at the same time, each with its own
//     timer loop.
//   - Burns. Each side burns its own copy (record, key, state, timers)
//     and tells its own user. A read or unread-expiry burn is decided by
//     both sides at the same deadline, so it relays nothing. A burn only
//     one side decides (a level-3 restart, lost keys, offboarding) also
//     appends a burn entry for the party of the other partition: there,
//     a RelayEntry that burns the copy if it is still live
//     (applyRelayBurn, reason BurnPeer, relaying nothing back) and is
//     dropped otherwise (burned there already, its user told). So each
//     user is told once, by their own partition.
//   - Relay lag. A read's receipt reaches the origin after the read: if
//     the origin's unread deadline passes meanwhile, the origin burns its
//     copy as unread (the sender is told then, and never of the read),
//     while the reader's copy burns at the read's deadline, as on one
//     engine. Either way neither side keeps a copy past the deadline it
//     computed; the origin's read burn is armed when the receipt arrives
//     (at once if it is late), so it lags by the relay's delay at most.
//   - Receipts. The reader's partition moves the receipt, arms its burn
//     and tells the reader's devices; the origin, told by the
//     RelayReceipt, counts, arms its burn and tells the sender naming the
//     reader by pseudonym, as on one engine.

// BurnPeer is the burn reason where a secret message burned because the
// other partition of its chat burned its copy (relayed).
const BurnPeer = "peer"

// RelaySecret is what a RelayMessage of a secret chat carries besides the
// sealed message.
type RelaySecret struct {
	ID   ID // the message, also when Msg is nil (burned)
	Chat ID
	// Key is the message's key, read from the origin's keyring when
	// Outbox read the record (nil if Burned). It is in no record at rest;
	// a frame that leaves the process must seal it (cluster.KeyCodec,
	// stage 5b). Shared: it must not be modified.
	Key []byte
	// ExpireDue is the unread expiry deadline (level 2 and up; zero for
	// none): the destination arms the same.
	ExpireDue time.Time
	// Burned: the message burned (or expired, or lost its key) at the
	// origin before it was relayed; the destination delivers a burn,
	// never content.
	Burned bool
}

// relaySecret fills in, for Outbox, a secret message's record: the sealed
// message as stored (not the cache's copy, which holds the plaintext),
// its unread deadline and its key; or Burned if any of them is gone or
// the deadline has passed.
//
// It reads the store as it is, which may show a burn applied and not yet
// durable. Such a burn is one the origin makes again if it loses it to a
// crash: a deadline that passed (the timer fires again), a level-3
// restart (its key is gone for good), a removal (Forget is replayed from
// ForgottenThrough). A burn erases the key only once durable, so a record
// read with its key before a burn is followed by the burn's own record
// where one side alone decides it (burn, in secret.go), and otherwise
// the destination burns its copy at the same deadline.
func (e *Engine) relaySecret(r *RelayRecord) error {
	sec := r.Secret
	burned := func() error {
		sec.Burned, sec.Key, r.Msg = true, nil, nil
		return nil
	}
	v, err := e.st.Get(messageKey(sec.ID))
	if errors.Is(err, store.ErrNotFound) {
		return burned()
	}
	if err != nil {
		return err
	}
	m, err := decodeMessage(sec.ID, v)
	if err != nil {
		return err
	}
	sv, err := e.st.Get(secretKey(sec.ID))
	if errors.Is(err, store.ErrNotFound) {
		return burned()
	}
	if err != nil {
		return err
	}
	var s secretState
	if err := decodeSecretState(sv, &s); err != nil {
		return fmt.Errorf("secret %s: %w", sec.ID, ErrCorrupt)
	}
	now := ms(e.cfg.Clock.Now())
	if (s.ExpireDue != 0 && s.ExpireDue <= now) || (s.BurnDue != 0 && s.BurnDue <= now) {
		return burned() // due: the timer loop burns it here
	}
	key, ok := e.keysFor(s.Level).Get(sec.ID)
	if !ok {
		return burned() // a level-3 key gone with a restart: it burns here
	}
	sec.Key = append([]byte(nil), key[:]...)
	clear(key[:])
	if s.ExpireDue != 0 {
		sec.ExpireDue = time.UnixMilli(s.ExpireDue)
	}
	r.Msg = m
	return nil
}

// checkRelaySecret checks a secret RelayMessage's fields for ApplyRelay.
func checkRelaySecret(r *RelayRecord) bool {
	s := r.Secret
	if len(r.Users) != 1 || s.Chat == (ID{}) {
		return false
	}
	if s.Burned {
		return r.Msg == nil && s.Key == nil
	}
	return r.Msg != nil && r.Msg.ID == s.ID && r.Msg.Chat == s.Chat && len(s.Key) == 32
}

// applyRelayChat stores, where the other member is, a chat created in the
// creator's partition, and tells its local members.
func (c *txn) applyRelayChat(ch *Chat) error {
	switch _, err := c.chat(ch.ID); {
	case err == nil:
		return nil // stored already
	case !errors.Is(err, ErrNotFound):
		return err
	}
	c.batch.Set(chatKey(ch.ID), encodeChat(ch))
	c.chats[ch.ID] = ch
	for _, m := range ch.Members {
		if _, other := c.e.remote(m.User); other || !c.active(m.User) {
			continue
		}
		c.batch.Set(userChatKey(m.User, ch.ID), nil)
		peer, _ := ch.peer(m.User)
		if err := c.appendEntry(m.User, Entry{Kind: EntrySecret, Secret: &SecretEvent{
			Chat: ch.ID, Event: "created", By: ch.Members[0].Pseudonym, Level: ch.Level, BurnAfter: ch.BurnAfter,
			You: m.Pseudonym, Peer: peer.Pseudonym, At: ch.Created,
		}}); err != nil {
			return err
		}
	}
	return nil
}

// applyRelaySecret delivers, where its recipient is, a secret message of
// another partition: its key into the keyring (synced before the batch,
// as for a message sent here), its sealed record, its state and timers,
// the recipient's masked entry. One burned before it left, or whose
// deadline has passed, or that cannot be opened, gives a burn entry
// instead. A message stored here already is skipped.
func (c *txn) applyRelaySecret(r *RelayRecord) error {
	sec, to := r.Secret, r.Users[0]
	if _, other := c.e.remote(to); other || !c.active(to) {
		return nil
	}
	id := sec.ID
	if c.relayMsgs[id] {
		return nil
	}
	switch _, err := c.e.st.Get(messageKey(id)); {
	case err == nil:
		return nil
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	burnEntry := func() error { return c.appendEntry(to, Entry{Kind: EntryBurn, Burn: id}) }
	if sec.Burned {
		return burnEntry()
	}
	ch, err := c.chat(sec.Chat)
	if errors.Is(err, ErrNotFound) {
		// Never: the chat's record precedes its messages in the outbox.
		c.e.log.Error("relay: a secret message of a chat not stored here; delivered as a burn", "message", id.String(), "chat", sec.Chat.String())
		return burnEntry()
	}
	if err != nil {
		return err
	}
	expire := int64(0)
	if !sec.ExpireDue.IsZero() {
		expire = ms(sec.ExpireDue)
		if expire <= ms(c.now) {
			return burnEntry() // expired on the way
		}
	}
	var key [32]byte
	copy(key[:], sec.Key)
	pt, err := open(id, key, r.Msg.Body)
	if err != nil {
		clear(key[:])
		c.e.log.Error("relay: a secret message that does not open with its key; delivered as a burn", "message", id.String())
		return burnEntry()
	}
	// Listed before Put, as applySecretSubmit does: an abort erases it.
	c.newKeys = append(c.newKeys, newKey{id, ch.Level})
	err = c.e.keysFor(ch.Level).Put(id, key)
	clear(key[:])
	if err != nil {
		return abort(err)
	}
	// The sender's client id stays at the origin (it dedupes there): here
	// it would only link the pseudonym to the sender.
	stored := *r.Msg
	stored.ClientID = ""
	c.batch.Set(messageKey(id), encodeMessage(&stored))
	m := stored
	m.Body = pt
	if err := c.appendEntry(to, Entry{Kind: EntryMessage, Message: &m}); err != nil {
		return err
	}
	es := c.entries[to]
	es[len(es)-1].Message = mask(ch, &m)
	c.batch.Set(receiptKey(id, to), encodeReceipt(Receipt{State: StateSent}))
	c.storeSecret(id, &secretState{Chat: ch.ID, Level: ch.Level, From: m.From, To: to, ToSeq: c.heads[to], BurnAfter: ch.BurnAfter.Milliseconds(), ExpireDue: expire})
	c.newMsgs = append(c.newMsgs, &m)
	if c.relayMsgs == nil {
		c.relayMsgs = map[ID]bool{}
	}
	c.relayMsgs[id] = true
	return nil
}

// applyRelayBurn applies a burn the other partition of a secret chat
// made: the copy here burns if it is live; otherwise (burned here
// already, or never delivered) there is nothing to do, and the user was
// told here.
func (c *txn) applyRelayBurn(id ID) error {
	s, err := c.secret(id)
	if err != nil || s == nil {
		return err
	}
	return c.burn(id, s, BurnPeer)
}
