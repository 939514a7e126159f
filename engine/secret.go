package engine

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// Secret chats.
//
// A secret chat is a conversation between two users with a privacy level
// fixed at creation. Its messages are ordinary stream entries with three
// differences:
//
//   - Masking. Each participant has a pseudonym in the chat. Every copy of
//     a secret message the engine hands out (to the Sink, from Range) is a
//     masked copy whose From and To are pseudonyms; receipt events about
//     a secret message name the reader by pseudonym (they are written to
//     the stream that way); chat events carry pseudonyms only. The user
//     ids stay in the store as metadata (who may read, who is notified),
//     which is what admins see.
//   - Encryption at rest. The body is sealed with AES-256-GCM under a key
//     of its own (random, 32 bytes; the nonce is random; the message id is
//     the additional data) before the batch is built, so the plaintext
//     never reaches the store. The key never enters the store either: it
//     is kept by Config.Keys (package keyring: fixed slots in a file,
//     overwritten in place) for levels 1 and 2, and in memory only for
//     level 3. Keys are synced before the batch that stores their
//     ciphertext, so a durable message always has its key.
//   - Burning. The first read by the recipient (any device) arms a burn
//     timer (a 't' key, like an escalation step, fired by the same timer
//     loop and checked against the message's state 'b' in the batch that
//     fires it). Level 2 and up also arm an unread-expiry timer at
//     submission. A burn deletes the record, the receipt, the state and
//     the indexes, replaces the recipient's message entry with a burn
//     entry, appends a burn entry (the id only) to both parties' streams,
//     and, once that batch is durable and before anything is published,
//     erases the key (zeroed and synced) and drops the message from the
//     cache. Offboarding a participant burns every live message of theirs;
//     the commit loop checks again that both participants are active, so
//     a request checked before the removal cannot slip in after the burn.
//
// What remains after a burn: the id, its receipt events and dedupe key
// (metadata), and possibly the ciphertext in Pebble's log and tables until
// they are rewritten. Without the key that ciphertext cannot be read, and
// no byte of the key remains in the data directory (see package keyring
// for what that relies on).
//
// Level 3 trades durability for privacy: its keys are never written to
// disk, so a restart burns every live level-3 message (reason "restart").
//
// With partitions (Config.Placement), the two members may be of two
// engines: each keeps the chat and its own copy of each message (record,
// key, state, timers) and burns it at the same deadlines; a restart of
// either burns the level-3 messages of both (relay_secret.go). The
// secret state of a message whose recipient is of another partition has
// ToSeq 0: there is no entry for them here.
//
// Keys layout:
//
//	chat      's' | chat(16)                 -> chat record (binary, codec.go: level, burn delay, members and pseudonyms)
//	user chat 'o' | user | 0x00 | chat(16)   -> empty
//	secret    'b' | id(16)                   -> secretState (binary, codec.go)
//	user msg  'h' | user | 0x00 | id(16)     -> empty: both parties' live secret messages
//	fleeting  'f' | id(16)                   -> empty: live level-3 messages
//	timers    't' | due | id | 0xFFFF | n    -> n = 1 burn after read, 2 unread expiry

// Level is a secret chat's privacy level.
type Level uint8

const (
	// Level1: pseudonyms, no copy or forward, burn after read.
	Level1 Level = 1
	// Level2: level 1, and unread messages expire; content is in no
	// backup, export or admin view; messages carry a watermark.
	Level2 Level = 2
	// Level3: level 2, and a burn delay down to MinBurnAfter, screenshot
	// reports relayed, and keys in memory only.
	Level3 Level = 3
)

// MinBurnAfter is the shortest burn delay a level-3 chat may choose.
const MinBurnAfter = 5 * time.Second

// Burn reasons, as the metrics label them.
const (
	BurnRead        = "read"
	BurnUnread      = "unread_expiry"
	BurnOffboarding = "offboarding"
	BurnRestart     = "restart"
	BurnKeyLost     = "key_lost"
)

// Secret chat errors.
var (
	// ErrNoForward is returned by Submit for a forward or quote of a
	// secret message.
	ErrNoForward = NewError(CodeNoForward, "engine: secret messages cannot be forwarded or quoted")
	// ErrNotMember is returned when a user acts in a secret chat they are
	// not a member of (or that does not exist).
	ErrNotMember = NewError(CodeNotMember, "engine: not a member of the secret chat")
	// ErrBadChat is returned for an invalid chat request: an unknown
	// level, a burn delay out of range, a chat with oneself, a screenshot
	// report in a chat below level 3.
	ErrBadChat = NewError(CodeBadChat, "engine: bad secret chat request")
	// ErrNotSender is returned by SenderReceipts to anyone but the sender.
	ErrNotSender = NewError(CodeForbidden, "engine: not the sender")
)

// Keys keeps secret messages' keys outside the store, where erasing one
// removes its bytes (package keyring implements it with a file).
// Put and Sync are called by the commit loop only; Erase by one goroutine
// at a time, which may run alongside Put and Sync (the publish loop erases
// the keys of burns once they are durable); Get and Len from any goroutine.
type Keys interface {
	// Put records id's key. It is durable once Sync returns.
	Put(id [16]byte, key [32]byte) error
	// Sync makes every Put durable.
	Sync() error
	// Get returns id's key, or false if it has none.
	Get(id [16]byte) ([32]byte, bool)
	// Erase destroys the keys of ids (unknown ids are ignored) and makes
	// that durable before returning.
	Erase(ids [][16]byte) error
	// Each calls fn with every id that has a key until fn returns false.
	Each(fn func(id [16]byte) bool)
	// Len returns how many keys there are.
	Len() int
}

// memKeys keeps keys in memory: level 3's keys always, and every level's
// when Config.Keys is nil (tests with an in-memory store).
type memKeys struct {
	mu sync.RWMutex
	m  map[[16]byte][32]byte // guarded by mu
}

func newMemKeys() *memKeys { return &memKeys{m: map[[16]byte][32]byte{}} }

func (k *memKeys) Put(id [16]byte, key [32]byte) error {
	k.mu.Lock()
	k.m[id] = key
	k.mu.Unlock()
	return nil
}
func (k *memKeys) Sync() error { return nil }
func (k *memKeys) Get(id [16]byte) ([32]byte, bool) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	v, ok := k.m[id]
	return v, ok
}
func (k *memKeys) Erase(ids [][16]byte) error {
	k.mu.Lock()
	for _, id := range ids {
		delete(k.m, id)
	}
	k.mu.Unlock()
	return nil
}
func (k *memKeys) Each(fn func(id [16]byte) bool) {
	k.mu.RLock()
	ids := make([][16]byte, 0, len(k.m))
	for id := range k.m {
		ids = append(ids, id)
	}
	k.mu.RUnlock()
	for _, id := range ids {
		if !fn(id) {
			return
		}
	}
}
func (k *memKeys) Len() int {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return len(k.m)
}

// Chat is a secret chat.
type Chat struct {
	ID        ID            `json:"id"`
	Level     Level         `json:"level"`
	BurnAfter time.Duration `json:"burn_after_ns"`
	Creator   string        `json:"creator"`
	Created   time.Time     `json:"created"`
	Members   []Member      `json:"members"` // two: the creator first
}

// Member is a participant of a secret chat and their pseudonym in it.
type Member struct {
	User      string `json:"user"`
	Pseudonym string `json:"pseudonym"`
}

// pseudonym returns user's pseudonym in the chat, or "" if not a member.
func (ch *Chat) pseudonym(user string) string {
	for _, m := range ch.Members {
		if m.User == user {
			return m.Pseudonym
		}
	}
	return ""
}

// peer returns the other member.
func (ch *Chat) peer(user string) (Member, bool) {
	if ch.pseudonym(user) == "" {
		return Member{}, false
	}
	for _, m := range ch.Members {
		if m.User != user {
			return m, true
		}
	}
	return Member{}, false
}

// SecretInfo is carried by the masked copies of a secret message.
type SecretInfo struct {
	Level     Level
	BurnAfter time.Duration
	// Watermark is, from level 2, the recipient's pseudonym, for clients
	// to render over the message.
	Watermark string
}

// SecretEvent is a secret chat's event in a participant's stream. It
// names people by pseudonym only.
type SecretEvent struct {
	Chat      ID
	Event     string // "created", "screenshot"
	ID        ID     // screenshot: the message on screen, if the client said
	By        string // who did it (pseudonym)
	Level     Level
	BurnAfter time.Duration
	You, Peer string // created: the stream owner's pseudonym and the other's
	At        time.Time
}

// ChatRequest asks for a secret chat.
type ChatRequest struct {
	From, To string
	Level    Level
	// BurnAfter is the burn delay: zero means Config.BurnAfter; only level
	// 3 may set it, from MinBurnAfter up to Config.BurnAfter.
	BurnAfter time.Duration
}

// secretState is a live secret message (key 'b').
type secretState struct {
	Chat      ID     `json:"chat"`
	Level     Level  `json:"level"`
	From      string `json:"from"`
	To        string `json:"to"`
	ToSeq     uint64 `json:"to_seq"`               // the message's seq in the recipient's stream
	BurnAfter int64  `json:"burn_after_ms"`        // delay from first read
	BurnDue   int64  `json:"burn_due,omitempty"`   // ms; armed at the first read
	ExpireDue int64  `json:"expire_due,omitempty"` // ms; level 2+, until read
}

// Secret timers use the recipient index 0xFFFF, which no DING reaches
// (MaxRecipients is at most 65535 for DINGs).
const (
	secretTimerIdx = 0xFFFF
	timerBurn      = 1
	timerExpire    = 2
)

func chatKey(id ID) []byte { return append([]byte{prefixChat}, id[:]...) }

func userChatPrefix(user string) []byte {
	return append(append([]byte{prefixUserChat}, user...), 0)
}

func userChatKey(user string, id ID) []byte { return append(userChatPrefix(user), id[:]...) }

func secretKey(id ID) []byte { return append([]byte{prefixSecret}, id[:]...) }

func userSecretPrefix(user string) []byte {
	return append(append([]byte{prefixUserSecret}, user...), 0)
}

func userSecretKey(user string, id ID) []byte { return append(userSecretPrefix(user), id[:]...) }

func fleetingKey(id ID) []byte { return append([]byte{prefixFleeting}, id[:]...) }

var secretsCounterKey = []byte{prefixCounter, 's', 'e', 'c', 'r', 'e', 't', 's'}

// seal encrypts body with a fresh key: nonce (12) | ciphertext | tag.
func seal(id ID, body []byte) (key [32]byte, sealed []byte, err error) {
	if _, err := rand.Read(key[:]); err != nil {
		return key, nil, err
	}
	g, err := gcm(key)
	if err != nil {
		return key, nil, err
	}
	sealed = make([]byte, g.NonceSize(), g.NonceSize()+len(body)+g.Overhead())
	if _, err := rand.Read(sealed); err != nil {
		return key, nil, err
	}
	return key, g.Seal(sealed, sealed, body, id[:]), nil
}

func open(id ID, key [32]byte, sealed []byte) ([]byte, error) {
	g, err := gcm(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < g.NonceSize() {
		return nil, ErrCorrupt
	}
	pt, err := g.Open(nil, sealed[:g.NonceSize()], sealed[g.NonceSize():], id[:])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return pt, nil
}

func gcm(key [32]byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// keysFor returns where a level's keys live.
func (e *Engine) keysFor(l Level) Keys {
	if l == Level3 {
		return e.fleeting
	}
	return e.keys
}

// newPseudonym returns "anon-" and six random Crockford base32 digits.
func newPseudonym() string {
	var b [6]byte
	rand.Read(b[:])
	out := []byte("anon-")
	for _, v := range b {
		out = append(out, crockford[v&31])
	}
	return string(out)
}

// CreateChat creates a secret chat between req.From and req.To and tells
// both (an EntrySecret "created" in each stream, with pseudonyms only).
// If ctx ends first the outcome is unknown.
func (e *Engine) CreateChat(ctx context.Context, req ChatRequest) (Chat, error) {
	type res struct {
		ch  Chat
		err error
	}
	out := make(chan res, 1)
	e.CreateChatAsync(req, func(ch Chat, err error) { out <- res{ch, err} })
	select {
	case r := <-out:
		return r.ch, r.err
	case <-ctx.Done():
		return Chat{}, ctx.Err()
	}
}

// CreateChatAsync is CreateChat that answers done (exactly once, on the
// commit loop; it must not block) once the chat is durable; invalid
// requests are answered before it returns. Like SubmitAsync, it is
// ordered with the caller's later operations.
func (e *Engine) CreateChatAsync(req ChatRequest, done func(Chat, error)) {
	ch, err := e.checkChatRequest(req)
	if err != nil {
		done(Chat{}, err)
		return
	}
	e.applyAsync(func(c *txn, now time.Time) error { return c.createChat(&ch, now) }, func(err error) {
		if err != nil {
			done(Chat{}, err)
			return
		}
		done(ch, nil)
	})
}

// checkChatRequest validates req and returns the chat to create (its id
// and time are filled in by the commit loop).
func (e *Engine) checkChatRequest(req ChatRequest) (Chat, error) {
	if err := CheckName("creator", req.From); err != nil {
		return Chat{}, err
	}
	if err := CheckName("participant", req.To); err != nil {
		return Chat{}, err
	}
	switch {
	case req.From == req.To:
		return Chat{}, fmt.Errorf("%w: a chat with oneself", ErrBadChat)
	case req.Level < Level1 || req.Level > Level3:
		return Chat{}, fmt.Errorf("%w: level %d, want 1, 2 or 3", ErrBadChat, req.Level)
	case req.BurnAfter != 0 && req.Level != Level3:
		return Chat{}, fmt.Errorf("%w: only level-3 chats choose their burn delay", ErrBadChat)
	case req.BurnAfter != 0 && (req.BurnAfter < MinBurnAfter || req.BurnAfter > e.cfg.BurnAfter || req.BurnAfter%time.Second != 0):
		return Chat{}, fmt.Errorf("%w: burn delay %v, want whole seconds from %v to %v", ErrBadChat, req.BurnAfter, MinBurnAfter, e.cfg.BurnAfter)
	}
	if e.cfg.Recipients != nil {
		if _, err := e.cfg.Recipients.Resolve([]string{req.To}); err != nil {
			return Chat{}, err
		}
	}
	if p, other := e.remote(req.From); other {
		// The other member may be of another partition (relay_secret.go);
		// the creator is of this one.
		return Chat{}, fmt.Errorf("%w: a secret chat is created in its creator's partition, %d", ErrCrossPartition, p)
	}
	if e.active != nil {
		for _, u := range []string{req.From, req.To} {
			if !e.active.Active(u) {
				return Chat{}, fmt.Errorf("%w: %q", ErrUnknownRecipient, u)
			}
		}
	}
	burn := req.BurnAfter
	if burn == 0 {
		burn = e.cfg.BurnAfter
	}
	a, b := newPseudonym(), newPseudonym()
	for a == b {
		b = newPseudonym()
	}
	return Chat{Level: req.Level, BurnAfter: burn, Creator: req.From, Members: []Member{{req.From, a}, {req.To, b}}}, nil
}

// createChat stores ch, giving it its id and time.
func (c *txn) createChat(ch *Chat, now time.Time) error {
	for _, m := range ch.Members {
		if !c.active(m.User) { // offboarded since checkChatRequest
			return fmt.Errorf("%w: %q", ErrUnknownRecipient, m.User)
		}
	}
	ch.ID, ch.Created = c.e.ids.next(now), now.Truncate(time.Millisecond)
	c.batch.Set(chatKey(ch.ID), encodeChat(ch))
	c.chats[ch.ID] = ch
	for _, m := range ch.Members {
		if p, other := c.e.remote(m.User); other {
			// Their partition stores the chat too and tells them
			// (applyRelayChat).
			c.relayRecord(p, &RelayRecord{Kind: RelayChat, Chat: ch})
			continue
		}
		c.batch.Set(userChatKey(m.User, ch.ID), nil)
		peer, _ := ch.peer(m.User)
		if err := c.appendEntry(m.User, Entry{Kind: EntrySecret, Secret: &SecretEvent{
			Chat: ch.ID, Event: "created", By: ch.Members[0].Pseudonym, Level: ch.Level, BurnAfter: ch.BurnAfter,
			You: m.Pseudonym, Peer: peer.Pseudonym, At: now,
		}}); err != nil {
			return err
		}
	}
	c.chatsCreated = append(c.chatsCreated, ch.Level)
	// Metadata only: no member, pseudonym or content.
	c.emit(HookSecretChatCreated, S("chat", ch.ID.String()), N("level", int64(ch.Level)))
	return nil
}

// Chat returns a secret chat's record (admins: metadata only; it holds no
// content).
func (e *Engine) Chat(id ID) (Chat, error) {
	ch, err := e.loadChat(id)
	if err != nil {
		return Chat{}, err
	}
	return *ch, nil
}

// loadChat returns a chat's record, shared: it must not be modified.
func (e *Engine) loadChat(id ID) (*Chat, error) {
	if ch, ok := e.chatCache.get(id); ok {
		return ch, nil
	}
	v, err := e.st.Get(chatKey(id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("engine: chat %s: %w", id, err)
	}
	var ch Chat
	if err := decodeChat(v, &ch); err != nil || len(ch.Members) != 2 {
		return nil, fmt.Errorf("engine: chat %s: %w", id, ErrCorrupt)
	}
	e.chatCache.put(id, &ch)
	return &ch, nil
}

// ChatInfo is a chat's metadata with how many of its messages are live.
type ChatInfo struct {
	Chat
	Live int `json:"live_messages"`
}

// Chats returns user's secret chats, oldest first, with their live
// message counts: metadata only.
func (e *Engine) Chats(user string) ([]ChatInfo, error) {
	p := userChatPrefix(user)
	var ids []ID
	err := e.st.Scan(p, prefixEnd(p), func(k, _ []byte) bool {
		if len(k) == len(p)+16 {
			ids = append(ids, ID(k[len(p):]))
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("engine: chats of %s: %w", user, err)
	}
	live := map[ID]int{}
	if len(ids) > 0 {
		states, err := e.liveSecrets(user)
		if err != nil {
			return nil, err
		}
		for _, s := range states {
			live[s.Chat]++
		}
	}
	out := make([]ChatInfo, 0, len(ids))
	for _, id := range ids {
		ch, err := e.loadChat(id)
		if err != nil {
			return nil, err
		}
		out = append(out, ChatInfo{Chat: *ch, Live: live[id]})
	}
	return out, nil
}

// liveSecrets returns the states of user's live secret messages.
func (e *Engine) liveSecrets(user string) (map[ID]secretState, error) {
	p := userSecretPrefix(user)
	var keys [][]byte
	var ids []ID
	err := e.st.Scan(p, prefixEnd(p), func(k, _ []byte) bool {
		if len(k) == len(p)+16 {
			id := ID(k[len(p):])
			ids = append(ids, id)
			keys = append(keys, secretKey(id))
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("engine: secret messages of %s: %w", user, err)
	}
	out := make(map[ID]secretState, len(ids))
	var derr error
	err = e.st.GetMany(keys, func(i int, v []byte) {
		if v == nil || derr != nil {
			return
		}
		var s secretState
		if err := decodeSecretState(v, &s); err != nil {
			derr = fmt.Errorf("engine: secret %s: %w", ids[i], ErrCorrupt)
			return
		}
		out[ids[i]] = s
	})
	if err == nil {
		err = derr
	}
	return out, err
}

// pastDeadline reports whether secret message id is due to burn at nowMS
// (its burn or unread-expiry deadline passed) as its cached state says; a
// state not in the cache counts as not due (the timer loop burns it
// within milliseconds of its deadline anyway).
func (e *Engine) pastDeadline(id ID, nowMS int64) bool {
	s, ok := e.secretCache.get(id)
	return ok && ((s.BurnDue != 0 && s.BurnDue <= nowMS) || (s.ExpireDue != 0 && s.ExpireDue <= nowMS))
}

// LiveSecrets is how many secret messages have not burned.
func (e *Engine) LiveSecrets() int64 { return e.liveSecretN.Load() }

// mask returns the copy of m (a secret message) that the edges may see:
// pseudonyms for From and To, no client message id, and its SecretInfo.
func mask(ch *Chat, m *Message) *Message {
	out := *m
	out.ClientID = "" // the sender's: it could link the pseudonym to them
	out.From = ch.pseudonym(m.From)
	out.To = make([]string, len(m.To))
	for i, t := range m.To {
		out.To[i] = ch.pseudonym(t)
	}
	si := &SecretInfo{Level: ch.Level, BurnAfter: ch.BurnAfter}
	if ch.Level >= Level2 && len(out.To) == 1 {
		si.Watermark = out.To[0]
	}
	out.Secret = si
	return &out
}

// checkChat is check for a submission in a secret chat: the sender must
// be a member, the other member is the recipient and must be active.
func (e *Engine) checkChat(s *Submission) error {
	if len(s.To) != 0 {
		return fmt.Errorf("%w: a secret chat's message names no recipients", ErrBadName)
	}
	if s.Forward != (ID{}) || s.Quote != (ID{}) {
		return fmt.Errorf("%w: not in a secret chat", ErrNoForward)
	}
	ch, err := e.loadChat(s.Chat)
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrNotMember, s.Chat)
	}
	if err != nil {
		return err
	}
	peer, ok := ch.peer(s.From)
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotMember, s.Chat)
	}
	if e.active != nil && (!e.active.Active(peer.User) || !e.active.Active(s.From)) {
		return fmt.Errorf("%w: the other participant was removed", ErrUnknownRecipient)
	}
	if p, other := e.remote(s.From); other {
		return fmt.Errorf("%w: a secret message is sealed in its sender's partition, %d", ErrCrossPartition, p)
	}
	s.To = []string{peer.User}
	s.recipients = s.To
	s.chat = ch
	return nil
}

// checkRef checks a forward or quote: the sender must have the message,
// and it must not be secret.
func (e *Engine) checkRef(from string, ref ID) error {
	m, err := e.Message(ref)
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: forwarded or quoted message %s", ErrNotFound, ref)
	}
	if err != nil {
		return err
	}
	if m.Chat != (ID{}) {
		return ErrNoForward
	}
	if m.From == from {
		return nil
	}
	if _, err := e.st.Get(receiptKey(ref, from)); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: forwarded or quoted message %s", ErrNotRecipient, ref)
		}
		return err
	}
	return nil
}

// applySecretSubmit stores a message of a secret chat; applySubmit has
// checked its client id and records it.
func (c *txn) applySecretSubmit(s *Submission, res *SubmitResult, now time.Time) error {
	ch := s.chat
	if !c.active(s.From) || !c.active(s.To[0]) {
		// Offboarded since check: BurnUser may already have scanned
		// their messages, so this one would never burn.
		return fmt.Errorf("%w: a participant of the chat was removed", ErrUnknownRecipient)
	}
	id := c.e.ids.next(now)
	key, sealed, err := seal(id, s.Body)
	if err != nil {
		return abort(fmt.Errorf("seal: %w", err))
	}
	// Listed before Put: a Put that fails may have written part of the
	// key, and the abort must erase it too.
	c.newKeys = append(c.newKeys, newKey{id, ch.Level})
	err = c.e.keysFor(ch.Level).Put(id, key)
	clear(key[:])
	if err != nil {
		return abort(err)
	}
	m := &Message{
		ID: id, From: s.From, To: s.To, Kind: s.Kind, Body: s.Body,
		Created: id.Time(), ClientID: s.ClientID, Chat: ch.ID,
	}
	stored := *m
	stored.Body = sealed
	c.batch.Set(messageKey(id), encodeMessage(&stored))
	c.rollup(dayOf(m.Created), c.deptOf(s.From)).MessagesSent++
	to := s.To[0]
	var toSeq uint64 // the recipient's entry; none here for a user of another partition
	if p, other := c.e.remote(to); other {
		// Their partition gets the message with its key, read by Outbox
		// from the keyring (relay_secret.go); the record holds neither.
		// Its receipt here is written when the record is acknowledged.
		c.relayRecord(p, &RelayRecord{Kind: RelayMessage, Msg: m, Users: []string{to}, Secret: &RelaySecret{ID: id, Chat: ch.ID}})
	} else {
		if err := c.appendEntry(to, Entry{Kind: EntryMessage, Message: m}); err != nil {
			return err
		}
		es := c.entries[to]
		es[len(es)-1].Message = mask(ch, m)
		c.batch.Set(receiptKey(id, to), encodeReceipt(Receipt{State: StateSent}))
		toSeq = c.heads[to]
	}
	st := &secretState{Chat: ch.ID, Level: ch.Level, From: s.From, To: to, ToSeq: toSeq, BurnAfter: ch.BurnAfter.Milliseconds()}
	if ch.Level >= Level2 {
		st.ExpireDue = ms(now.Add(c.e.cfg.SecretUnreadTTL))
	}
	c.storeSecret(id, st)
	*res = SubmitResult{ID: id, Created: m.Created}
	c.newMsgs = append(c.newMsgs, m)
	return nil
}

// storeSecret records a live secret message's state (at its origin, or
// its copy relayed to the recipient's partition): its unread-expiry
// timer, the level-3 mark, and the index of both participants' live
// secret messages.
func (c *txn) storeSecret(id ID, st *secretState) {
	if st.ExpireDue != 0 {
		c.setTimerKey(st.ExpireDue, id, secretTimerIdx, timerExpire)
	}
	if st.Level == Level3 {
		c.batch.Set(fleetingKey(id), nil)
	}
	c.setSecret(id, st)
	c.batch.Set(userSecretKey(st.From, id), nil)
	c.batch.Set(userSecretKey(st.To, id), nil)
	c.secretDelta++
}

// secretTx is the secret chats' per-batch overlay.
type secretTx struct {
	chats        map[ID]*Chat
	secrets      map[ID]*secretState // nil value: burned or never existed
	newKeys      []newKey            // keys put for this batch's messages
	burns        []burned            // burns decided, finished once durable
	secretDelta  int64               // secret messages stored minus burned
	chatsCreated []Level
}

func newSecretTx() secretTx {
	return secretTx{chats: map[ID]*Chat{}, secrets: map[ID]*secretState{}}
}

// flush writes the count of live secret messages, and makes this batch's
// keys durable before the batch that stores their ciphertext: a durable
// message always has its key.
func (s *secretTx) flush(c *txn) error {
	if s.secretDelta != 0 {
		c.batch.Set(secretsCounterKey, u64(uint64(max(0, c.e.appliedSecretN+s.secretDelta))))
	}
	if len(s.newKeys) > 0 {
		if err := c.e.keys.Sync(); err != nil {
			return fmt.Errorf("sync secret keys: %w", err)
		}
	}
	return nil
}

// applied writes the states through to the cache: the commit loop is
// their only writer, so what the applied batch holds is current for the
// batches built after it.
func (s *secretTx) applied(c *txn) {
	for id, st := range s.secrets {
		if st == nil {
			c.e.secretCache.delete(id)
		} else {
			c.e.secretCache.put(id, *st)
		}
	}
	c.e.appliedSecretN += s.secretDelta
}

// durable erases the burned messages' keys, before the burns are
// published.
func (s *secretTx) durable(c *txn) {
	if len(s.burns) > 0 {
		c.finishBurns()
	}
	for _, l := range s.chatsCreated {
		c.e.metrics.chatsCreated.WithLabelValues(levelLabel(l)).Inc()
	}
	c.e.liveSecretN.Add(s.secretDelta) // after the burns' metrics: a reader that sees the count sees them
}

// abandon: a batch discarded before it was applied drops its new keys
// (none of it reached the store). A batch whose commit failed may have
// landed all the same (a WAL write that reached the disk before the fsync
// failed): its keys stay, and the next start erases those whose message is
// not in the store (reconcileSecrets); dropping them would burn a message
// that a sender's retry is then told was stored. The states it touched
// leave the cache: their outcome is unknown.
func (s *secretTx) abandon(c *txn, applied bool) {
	if !applied {
		c.dropNewKeys()
		return
	}
	for id := range s.secrets {
		c.e.secretCache.delete(id)
	}
}

func (s *secretTx) reset() {
	clear(s.chats)
	clear(s.secrets)
	s.newKeys, s.burns, s.secretDelta, s.chatsCreated = s.newKeys[:0], s.burns[:0], 0, s.chatsCreated[:0]
}

type newKey struct {
	id    ID
	level Level
}

// burned is a burn decided in this batch, finished after the commit.
type burned struct {
	due    int64 // the deadline (ms) of a read burn or an expiry; 0 for others
	id     ID
	level  Level
	reason string
}

// secret returns a live secret message's state as this batch sees it
// (nil, nil if it has burned or never existed).
func (c *txn) secret(id ID) (*secretState, error) {
	if s, ok := c.secrets[id]; ok {
		return s, nil
	}
	if s, ok := c.e.secretCache.get(id); ok {
		c.secrets[id] = &s // a copy: the batch may change it
		return c.secrets[id], nil
	}
	v, err := c.e.st.Get(secretKey(id))
	if errors.Is(err, store.ErrNotFound) {
		c.secrets[id] = nil
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s secretState
	if err := decodeSecretState(v, &s); err != nil {
		return nil, fmt.Errorf("secret %s: %w", id, ErrCorrupt)
	}
	c.secrets[id] = &s
	return &s, nil
}

func (c *txn) setSecret(id ID, s *secretState) {
	c.secrets[id] = s
	c.batch.Set(secretKey(id), encodeSecretState(s))
}

// chat returns a chat as this batch sees it.
func (c *txn) chat(id ID) (*Chat, error) {
	if ch, ok := c.chats[id]; ok {
		return ch, nil
	}
	ch, err := c.e.loadChat(id)
	if err != nil {
		return nil, err
	}
	c.chats[id] = ch
	return ch, nil
}

// secretRead arms the burn timer at the recipient's first read.
func (c *txn) secretRead(id ID, reader string, now time.Time) error {
	s, err := c.secret(id)
	if err != nil || s == nil || reader != s.To || s.BurnDue != 0 {
		return err
	}
	if s.ExpireDue != 0 {
		c.batch.Delete(timerKey(s.ExpireDue, id, secretTimerIdx, timerExpire))
		s.ExpireDue = 0
	}
	s.BurnDue = ms(now) + s.BurnAfter
	c.setTimerKey(s.BurnDue, id, secretTimerIdx, timerBurn)
	c.setSecret(id, s)
	return nil
}

// fireSecret runs a secret message's due timer.
func (c *txn) fireSecret(k []byte, due int64, id ID, n uint32, now time.Time) error {
	c.batch.Delete(k)
	s, err := c.secret(id)
	if err != nil {
		return err
	}
	if s == nil {
		return nil // burned already (offboarding, or a stale key)
	}
	var reason string
	switch {
	case n == timerBurn && s.BurnDue == due:
		reason = BurnRead
	case n == timerExpire && s.ExpireDue == due:
		reason = BurnUnread
	default:
		return nil // disarmed since the scan
	}
	if err := c.burn(id, s, reason); err != nil {
		return err
	}
	c.burns[len(c.burns)-1].due = due
	return nil
}

// burn destroys a live secret message: see the design comment above.
func (c *txn) burn(id ID, s *secretState, reason string) error {
	if _, other := c.e.remote(s.From); !other { // once, at the message's origin
		c.emit(HookSecretBurned, S("chat", s.Chat.String()), S("message", id.String()), S("reason", reason))
	}
	c.batch.Delete(messageKey(id))
	c.batch.Delete(receiptKey(id, s.To))
	c.batch.Delete(secretKey(id))
	c.batch.Delete(userSecretKey(s.From, id))
	c.batch.Delete(userSecretKey(s.To, id))
	if s.Level == Level3 {
		c.batch.Delete(fleetingKey(id))
	}
	if s.BurnDue != 0 {
		c.batch.Delete(timerKey(s.BurnDue, id, secretTimerIdx, timerBurn))
	}
	if s.ExpireDue != 0 {
		c.batch.Delete(timerKey(s.ExpireDue, id, secretTimerIdx, timerExpire))
	}
	// The recipient's message entry becomes a burn entry: a device that
	// resumes from before it never sees the content. A recipient of
	// another partition has no entry here: the burn entry appended below
	// goes there and burns the copy there (applyRelayBurn).
	if _, other := c.e.remote(s.To); !other {
		c.batch.Set(inboxKey(s.To, s.ToSeq), encodeEntry(&Entry{Kind: EntryBurn, Burn: id}))
	}
	for _, u := range []string{s.From, s.To} {
		if !c.active(u) {
			continue // offboarded: they receive nothing more
		}
		if _, other := c.e.remote(u); other && (reason == BurnRead || reason == BurnUnread || reason == BurnPeer) {
			// Their partition burns its copy at the same deadline and
			// tells them (relay_secret.go); a peer's burn came from there.
			continue
		}
		if err := c.appendEntry(u, Entry{Kind: EntryBurn, Burn: id}); err != nil {
			return err
		}
	}
	c.secrets[id] = nil
	c.burns = append(c.burns, burned{id: id, level: s.Level, reason: reason})
	c.secretDelta--
	return nil
}

// finishBurns runs after a batch with burns is durable and before it is
// published: the keys are erased (zeroed and synced), and the messages
// leave the cache.
func (c *txn) finishBurns() {
	keys := make([]newKey, len(c.burns))
	now := c.e.cfg.Clock.Now()
	for i, b := range c.burns {
		if b.due != 0 {
			// Observed once the burn is durable, just before it is
			// published: what devices see, less the delivery itself.
			c.e.metrics.burnLateness.Observe(max(0, now.Sub(time.UnixMilli(b.due)).Seconds()))
		}
		keys[i] = newKey{b.id, b.level}
		c.e.cache.forget(b.id)
		c.e.metrics.burns.WithLabelValues(levelLabel(b.level), b.reason).Inc()
	}
	// On failure the records are gone; the keys are orphans that the next
	// start erases (reconcileSecrets). Say so loudly: a key is still on disk.
	c.e.eraseKeys(keys, "burn: erasing keys failed; they are erased at the next start")
	c.burns = c.burns[:0]
}

// dropNewKeys forgets the keys of messages whose batch was aborted
// before its commit (so none of it can have reached the store).
func (c *txn) dropNewKeys() {
	c.e.eraseKeys(c.newKeys, "dropping the keys of an aborted batch failed; they are erased at the next start")
	c.newKeys = c.newKeys[:0]
}

// eraseKeys erases keys where their level keeps them, logging failMsg if
// the keyring cannot.
func (e *Engine) eraseKeys(keys []newKey, failMsg string) {
	var disk, fleeting [][16]byte
	for _, k := range keys {
		if k.level == Level3 {
			fleeting = append(fleeting, k.id)
		} else {
			disk = append(disk, k.id)
		}
	}
	e.fleeting.Erase(fleeting)
	if err := e.keys.Erase(disk); err != nil {
		e.metrics.eraseFailures.Inc()
		e.log.Error(failMsg, "keys", len(disk), "err", err)
	}
}

func levelLabel(l Level) string { return string('0' + byte(l)) }

// BurnUser burns every live secret message user sent or received (they
// were offboarded) and returns how many burned. Offboard does this in the
// same batch as the directory's change.
func (e *Engine) BurnUser(ctx context.Context, user string) (int, error) {
	burned := 0 // read only once the op has answered
	err := e.apply(ctx, func(c *txn, now time.Time) error {
		var err error
		burned, err = c.burnUser(user)
		return err
	})
	if err != nil {
		return 0, err // maybe ctx's: the op may still run, so burned is not read
	}
	return burned, nil
}

// burnUser burns user's live secret messages: those the store lists ('h'
// keys) and those this batch stored.
func (c *txn) burnUser(user string) (int, error) {
	var ids []ID
	p := userSecretPrefix(user)
	err := c.e.st.Scan(p, prefixEnd(p), func(k, _ []byte) bool {
		if len(k) == len(p)+16 {
			ids = append(ids, ID(k[len(p):]))
		}
		return true
	})
	if err != nil {
		return 0, abort(fmt.Errorf("secret messages of %s: %w", user, err))
	}
	for id, s := range c.secrets { // this batch's are not in the store yet
		if s != nil && (s.From == user || s.To == user) && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b ID) int { return bytes.Compare(a[:], b[:]) })
	burned := 0
	for _, id := range ids {
		s, err := c.secret(id)
		if err != nil {
			return burned, abort(err)
		}
		if s == nil {
			continue
		}
		if err := c.burn(id, s, BurnOffboarding); err != nil {
			return burned, err
		}
		burned++
	}
	return burned, nil
}

// burnAll burns the live ones of ids, in batches.
func (e *Engine) burnAll(ctx context.Context, ids []ID, reason string) (int, error) {
	n := 0
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), 512)]
		ids = ids[len(chunk):]
		burned := 0 // read only once the op has answered
		err := e.apply(ctx, func(c *txn, now time.Time) error {
			for _, id := range chunk {
				s, err := c.secret(id)
				if err != nil {
					return abort(err)
				}
				if s == nil {
					continue
				}
				if err := c.burn(id, s, reason); err != nil {
					return err
				}
				burned++
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		n += burned
	}
	return n, nil
}

// ReportScreenshot relays a participant's screenshot report (level-3
// chats) to the other participant, as an EntrySecret "screenshot" naming
// the reporter by pseudonym. msg may be zero.
func (e *Engine) ReportScreenshot(ctx context.Context, user string, chat, msg ID) error {
	return wait(ctx, func(done func(error)) { e.ReportScreenshotAsync(user, chat, msg, done) })
}

// ReportScreenshotAsync is ReportScreenshot that answers done once the
// report is durable (on the commit loop; done must not block).
func (e *Engine) ReportScreenshotAsync(user string, chat, msg ID, done func(error)) {
	e.applyAsync(func(c *txn, now time.Time) error {
		ch, err := c.chat(chat)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: %s", ErrNotMember, chat)
		}
		if err != nil {
			return abort(err)
		}
		peer, ok := ch.peer(user)
		if !ok {
			return fmt.Errorf("%w: %s", ErrNotMember, chat)
		}
		if ch.Level != Level3 {
			return fmt.Errorf("%w: screenshot reports are relayed in level-3 chats only", ErrBadChat)
		}
		if !c.active(peer.User) || !c.active(user) {
			return fmt.Errorf("%w: a participant of the chat was removed", ErrUnknownRecipient)
		}
		if msg != (ID{}) {
			// Name only a live message of this chat; anything else the
			// client said is dropped, not relayed.
			if s, err := c.secret(msg); err != nil {
				return abort(err)
			} else if s == nil || s.Chat != chat {
				msg = ID{}
			}
		}
		return c.appendEntry(peer.User, Entry{Kind: EntrySecret, Secret: &SecretEvent{
			Chat: chat, Event: "screenshot", ID: msg, By: ch.pseudonym(user), Level: ch.Level, BurnAfter: ch.BurnAfter, At: now,
		}})
	}, done)
}

// SenderReceipts returns a message's receipts for its sender, who alone
// may ask; in a secret chat the recipients are named by pseudonym.
func (e *Engine) SenderReceipts(user string, id ID) ([]Receipt, error) {
	m, err := e.Message(id)
	if err != nil {
		return nil, err
	}
	if m.From != user {
		return nil, ErrNotSender
	}
	rs, err := e.Receipts(id)
	if err != nil || m.Chat == (ID{}) {
		return rs, err
	}
	ch, err := e.loadChat(m.Chat)
	if err != nil {
		return nil, err
	}
	for i := range rs {
		rs[i].User = ch.pseudonym(rs[i].User)
	}
	return rs, nil
}

// keyless lists the live secret messages found without a key at Open.
type keyless struct {
	restart []ID // level 3: their keys died with the last process
	lost    []ID // levels 1 and 2: keys missing (a restored backup, a torn slot)
}

// reconcileSecrets runs at Open: keys whose message is gone (a crash
// between storing a key and committing its message, a commit that failed
// without landing, or a crash between a burn's commit and its erasure)
// are erased, and the live messages without a key are returned, to be
// burned once the engine runs (startupBurns).
func (e *Engine) reconcileSecrets() (keyless, error) {
	var kl keyless
	var ids [][16]byte
	e.keys.Each(func(id [16]byte) bool { ids = append(ids, id); return true })
	slices.SortFunc(ids, func(a, b [16]byte) int { return bytes.Compare(a[:], b[:]) })
	keys := make([][]byte, len(ids))
	for i, id := range ids {
		keys[i] = secretKey(id)
	}
	var orphans [][16]byte
	if err := e.st.GetMany(keys, func(i int, v []byte) {
		if v == nil {
			orphans = append(orphans, ids[i])
		}
	}); err != nil { // one sorted pass, not a seek per key
		return kl, fmt.Errorf("engine: secret keys: %w", err)
	}
	if len(orphans) > 0 {
		e.log.Warn("erasing keys of secret messages that are gone", "keys", len(orphans))
		if err := e.keys.Erase(orphans); err != nil {
			return kl, fmt.Errorf("engine: erase orphan keys: %w", err)
		}
	}
	p := []byte{prefixFleeting}
	err := e.st.Scan(p, prefixEnd(p), func(k, _ []byte) bool {
		if len(k) == 17 {
			kl.restart = append(kl.restart, ID(k[1:]))
		}
		return true
	})
	if err != nil {
		return kl, fmt.Errorf("engine: level-3 messages: %w", err)
	}
	switch v, err := e.st.Get(secretsCounterKey); {
	case err == nil:
		n, err := parseU64(v)
		if err != nil {
			return kl, fmt.Errorf("engine: secrets count: %w", err)
		}
		e.liveSecretN.Store(int64(n))
		e.appliedSecretN = int64(n)
	case !errors.Is(err, store.ErrNotFound):
		return kl, fmt.Errorf("engine: secrets count: %w", err)
	}
	// Every live message of level 1 or 2 has its key in the keyring, so
	// normally the count is the keys plus the level-3 messages and nothing
	// is scanned. Fewer keys mean some were lost (the store restored from a
	// backup, which holds no keys; a torn keyring slot): find those
	// messages and burn them, since they can never be read.
	if e.liveSecretN.Load() > int64(e.keys.Len()+len(kl.restart)) {
		p := []byte{prefixSecret}
		var serr error
		err := e.st.Scan(p, prefixEnd(p), func(k, v []byte) bool {
			if len(k) != 17 {
				return true
			}
			var s secretState
			if err := decodeSecretState(v, &s); err != nil {
				serr = fmt.Errorf("secret %x: %w", k[1:], ErrCorrupt)
				return false
			}
			if _, ok := e.keys.Get(ID(k[1:])); s.Level != Level3 && !ok {
				kl.lost = append(kl.lost, ID(k[1:]))
			}
			return true
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			return kl, fmt.Errorf("engine: secret messages: %w", err)
		}
	}
	return kl, nil
}

// startupBurns burns, after Open, the secret messages found keyless at
// start-up: level 3 (reason restart) and lost keys (key_lost). It waits
// for the Sink, so that connected devices are told.
func (e *Engine) startupBurns(ctx context.Context, kl keyless) {
	defer close(e.startupBurnsDone)
	select {
	case <-e.sinkSet:
	case <-ctx.Done():
		return
	}
	for _, b := range []struct {
		ids    []ID
		reason string
		msg    string
	}{
		{kl.restart, BurnRestart, "burned level-3 secret messages: their keys were in memory only"},
		{kl.lost, BurnKeyLost, "burned secret messages whose keys are missing (a store restored from a backup holds no keys)"},
	} {
		if len(b.ids) == 0 {
			continue
		}
		n, err := e.burnAll(ctx, b.ids, b.reason)
		if err != nil {
			if ctx.Err() == nil {
				e.log.Error("burning keyless secret messages at start-up failed; the next start tries again", "burned", n, "err", err)
			}
			return
		}
		e.log.Info(b.msg, "messages", n)
	}
}

// decryptMessage replaces a secret message's sealed body with its
// plaintext; ErrNotFound if its key is gone (burned, or a level-3 key
// lost in a restart).
func (e *Engine) decryptMessage(m *Message) error {
	if m.Chat == (ID{}) {
		return nil
	}
	key, ok := e.keys.Get(m.ID)
	if !ok {
		if key, ok = e.fleeting.Get(m.ID); !ok {
			return ErrNotFound
		}
	}
	pt, err := open(m.ID, key, m.Body)
	clear(key[:])
	if err != nil {
		return fmt.Errorf("message %s: %w", m.ID, err)
	}
	m.Body = pt
	return nil
}
