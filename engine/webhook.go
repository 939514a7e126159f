package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// Outbound event webhooks: the durable event outbox.
//
// An op whose change back-office systems may want to hear about (a DING's
// ledger event, a message's receipt, an announcement published or
// crossing a read ratio, a user added or removed, a secret chat's
// metadata, the SMS or call budget nearly spent) writes a WebhookEvent into this
// engine's event outbox, in the same batch as the change: the event is
// durable exactly when the change is, and a crash loses both or neither.
// It is written only when some subscription's filter matches its type
// (c.hookWants: one atomic load and a nil check when there is none), so
// an engine without webhooks pays nothing on the commit path.
//
// Events are numbered from 1 ('k' "webhook" holds the last seq
// allocated: events are deleted once every subscription is past them, so
// the outbox's last key cannot say it). As in the relay's outbox
// (relay.go), only durable events leave: the overlay's durable hook
// publishes the last durable seq (WebhookDurable), WebhookEvents never
// reads past it, and WebhookReady fires once a batch that wrote events
// (or changed a subscription) is durable. An event's id, which the
// receiver deduplicates by, is derived from its seq and this outbox's
// name (WebhookEventID, "evt_<source>_<seq>"; the source is the
// partition's number unless Config.HookSource names it): stable across
// redeliveries and restarts.
//
// A subscription (AddWebhook) has a URL, a filter of event types and a
// secret, and a cursor: the seq through which it has dealt with the
// outbox (delivered, skipped as not matching its filter, or parked as a
// dead letter). It starts at the last seq allocated when it is created:
// it gets the events written after it. The cursor moves only forward
// (AckWebhook, ParkWebhookEvent), durably, and an event leaves the
// outbox once every subscription's cursor is past it (deleted by the
// acknowledgement that moved the minimum: one point deletion each, a
// range when there are many). A paused subscription
// keeps its cursor, so it holds its events until it is resumed.
//
// The delivery itself (HTTP, signatures, retries, the per-subscription
// order) is package channels/webhook's: this file only stores. A
// subscription's worker reads WebhookEvents after its cursor, delivers
// those its filter matches in order, and acknowledges; an event it gives
// up on after the retry horizon is parked (ParkWebhookEvent: the dead
// letter, a copy of the event, and the cursor past it, in one batch).
// ReplayWebhookDeadLetters marks dead letters for another delivery;
// DeleteWebhookDeadLetter drops one once delivered.
//
// With partitions (relay.go) each engine has its own outbox and its own
// copy of each subscription (internal/node makes them, with the same id
// and secret), with a cursor of its own: order holds per subscription
// and outbox. An event is written once, where its change is made (a
// receipt at the message's origin, a burn at the sender's partition).
//
// What an event carries: ids, user ids, types, counts, times. Never a
// body, a DING's text, a token, a phone number (a DING recipient outside
// the app is named by index) or a secret chat's members or pseudonyms.
//
// Keys (see the package doc):
//
//	W | seq(8)                      -> event (the codec below)
//	H | subscription id             -> subscription record
//	C | subscription id             -> cursor seq(8)
//	D | subscription id | 0 | seq(8) -> dead letter: the event and why it was parked
//	k | "webhook"                   -> the last event seq allocated

var hookCounterKey = []byte{prefixCounter, 'w', 'e', 'b', 'h', 'o', 'o', 'k'}

var (
	// ErrNoWebhook is returned for a subscription id that is not stored.
	ErrNoWebhook = NewError(CodeNotFound, "engine: no such webhook subscription")
	// ErrBadWebhook is returned (wrapped, with what is wrong) by AddWebhook
	// for a bad URL or event filter. Not safe to retry as is.
	ErrBadWebhook = NewError(CodeBadRequest, "engine: bad webhook subscription")
	// ErrWebhookCursor is returned by AckWebhook and ParkWebhookEvent for a
	// seq beyond the durable events: the caller cannot have read it.
	ErrWebhookCursor = NewError(CodeBadRequest, "engine: webhook cursor beyond the durable events")
)

var hookIDRE = regexp.MustCompile(`^wh_[0-9a-f]{16}$`)

// MaxWebhooks bounds the subscriptions of one engine: each has a worker.
const MaxWebhooks = 256

// The event types. A subscription's filter names them, or a prefix of
// them with a wildcard ("ding.*"), or "*" for all.
const (
	// A DING's ledger event: "ding." and the ledger kind (see LedgerKind:
	// ding.sent, ding.delivered, ding.read, ding.confirmed, ding.sms_failed,
	// ...), except that the kind "exhausted" is "ding.unanswered": every
	// step fired and nobody confirmed. ding.confirmed carries the answer.
	HookDingPrefix            = "ding."
	HookDingUnanswered        = "ding.unanswered"
	HookMessageDelivered      = "message.delivered" // a recipient's device acknowledged a message sent through the admin API (Submission.ViaAPI)
	HookMessageRead           = "message.read"      // a recipient read one
	HookAnnouncementPublished = "announcement.published"
	HookAnnouncementRead      = "announcement.read_ratio" // 50, 90 and 100% of the audience read it
	HookAnnouncementConfirmed = "announcement.confirmed"  // a must-confirm announcement's confirmed count moved
	HookUserAdded             = "user.added"
	HookUserRemoved           = "user.removed"
	HookSecretChatCreated     = "secret.chat_created" // metadata only: chat id and level
	HookSecretBurned          = "secret.message_burned"
	// HookOpsBudget: the org's SMS, call or e-mail budget of the UTC day reached
	// 80% and 100% (with partitions, each partition's: budgets are
	// counted per partition). A provider failing shows as the DINGs'
	// ding.sms_failed, ding.call_failed and ding.send_failed (a mail
	// server, as ding.email_failed).
	HookOpsBudget = "ops.budget"
)

// WebhookEventTypes lists every event type, sorted.
func WebhookEventTypes() []string {
	ts := []string{HookMessageDelivered, HookMessageRead, HookAnnouncementPublished, HookAnnouncementRead,
		HookAnnouncementConfirmed, HookUserAdded, HookUserRemoved, HookSecretChatCreated, HookSecretBurned, HookOpsBudget}
	for _, k := range ledgerKinds {
		ts = append(ts, hookDingType(k))
	}
	slices.Sort(ts)
	return slices.Compact(ts)
}

var ledgerKinds = []LedgerKind{LedgerSent, LedgerDelivered, LedgerRead, LedgerConfirmed, LedgerReminder,
	LedgerSending, LedgerSMSQueued, LedgerSMSSent, LedgerSMSDelivered, LedgerSMSFailed, LedgerCallInitiated,
	LedgerCallRinging, LedgerCallAnswered, LedgerCallCompleted, LedgerCallBusy, LedgerCallNoAnswer,
	LedgerCallFailed, LedgerDigits, LedgerReply, LedgerRetry, LedgerSendFailed, LedgerFallback,
	LedgerQuotaRefused, LedgerNotConfigured, LedgerNoPhone, LedgerEmailSent, LedgerEmailFailed, LedgerNoEmail,
	LedgerNoApp, LedgerExhausted, LedgerCancelled, LedgerRemoved, LedgerSkipped,
	LedgerPushSent, LedgerPushFailed, LedgerPushUnregistered, LedgerPushOpened, LedgerNoPushDevice}

func hookDingType(k LedgerKind) string {
	if k == LedgerExhausted {
		return HookDingUnanswered
	}
	return HookDingPrefix + string(k)
}

// CheckWebhookFilter returns an error (wrapping ErrBadWebhook) naming
// what is wrong with one pattern of a subscription's filter: an event
// type, "prefix.*" for a family that has types, or "*".
func CheckWebhookFilter(p string) error {
	if p == "*" {
		return nil
	}
	types := WebhookEventTypes()
	if prefix, ok := strings.CutSuffix(p, "*"); ok {
		if strings.HasSuffix(prefix, ".") {
			for _, t := range types {
				if strings.HasPrefix(t, prefix) {
					return nil
				}
			}
		}
		return fmt.Errorf("%w: no event type matches %q (a wildcard is \"family.*\" or \"*\")", ErrBadWebhook, p)
	}
	if _, found := slices.BinarySearch(types, p); !found {
		return fmt.Errorf("%w: unknown event type %q", ErrBadWebhook, p)
	}
	return nil
}

// hookMatch reports whether filter matches event type t.
func hookMatch(filter []string, t string) bool {
	for _, p := range filter {
		if p == t || p == "*" || (strings.HasSuffix(p, "*") && strings.HasPrefix(t, p[:len(p)-1])) {
			return true
		}
	}
	return false
}

// Webhook is a subscription.
type Webhook struct {
	ID  string `json:"id"`
	URL string `json:"url"`
	// Events is the filter: event types, "family.*" or "*".
	Events []string `json:"events"`
	// Secret signs deliveries: "whsec_" and the base64 of 32 random
	// bytes (Standard Webhooks). Made by AddWebhook.
	Secret      string    `json:"secret,omitempty"`
	Description string    `json:"description,omitempty"`
	Paused      bool      `json:"paused"`
	Created     time.Time `json:"created"`
	// Cursor is the seq through which the subscription has dealt with
	// the outbox (durable; filled in by Webhooks and Webhook).
	Cursor uint64 `json:"cursor"`
}

// Matches reports whether the subscription's filter matches event type t.
func (w *Webhook) Matches(t string) bool { return hookMatch(w.Events, t) }

// Attr is one field of an event's data: a string, or an integer when
// IsInt.
type Attr struct {
	Key   string
	Value string
	Int   int64
	IsInt bool
}

// S and N make Attrs.
func S(k, v string) Attr       { return Attr{Key: k, Value: v} }
func N(k string, v int64) Attr { return Attr{Key: k, Int: v, IsInt: true} }

// WebhookEvent is one event of the outbox.
type WebhookEvent struct {
	Seq  uint64
	Type string
	At   time.Time // to the millisecond
	Data []Attr
}

// DeadLetter is an event a subscription gave up on.
type DeadLetter struct {
	// Source is the outbox's name (WebhookSource), filled in by
	// WebhookDeadLetters: the event's id is WebhookEventID(Source, Event.Seq).
	Source    string
	Event     WebhookEvent
	Attempts  int
	LastError string // what the last attempt got (a status, a timeout), never a body
	Parked    time.Time
	// Replay is set by ReplayWebhookDeadLetters: the worker delivers it
	// again (and deletes it once delivered, or parks it again).
	Replay   bool
	ReplayAt time.Time
}

// WebhookEventID is the stable id of event seq of the outbox named
// source (WebhookSource): "evt_<source>_<seq>".
func WebhookEventID(source string, seq uint64) string {
	return "evt_" + source + "_" + strconv.FormatUint(seq, 10)
}

// ParseWebhookEventID splits an id WebhookEventID made.
func ParseWebhookEventID(id string) (source string, seq uint64, err error) {
	rest, ok := strings.CutPrefix(id, "evt_")
	i := strings.LastIndexByte(rest, '_')
	if !ok || i <= 0 {
		return "", 0, fmt.Errorf("%w: event id %q is not evt_SOURCE_SEQ", ErrBadWebhook, id)
	}
	seq, err = strconv.ParseUint(rest[i+1:], 10, 64)
	if err != nil || seq == 0 {
		return "", 0, fmt.Errorf("%w: event id %q is not evt_SOURCE_SEQ", ErrBadWebhook, id)
	}
	return rest[:i], seq, nil
}

// Keys.

func hookEventKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixHookEvent}, seq)
}
func hookKey(id string) []byte       { return append([]byte{prefixHook}, id...) }
func hookCursorKey(id string) []byte { return append([]byte{prefixHookCursor}, id...) }
func hookDeadPrefix(id string) []byte {
	return append(append([]byte{prefixHookDead}, id...), 0)
}
func hookDeadKey(id string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(hookDeadPrefix(id), seq)
}

// Codec (see codec.go for the notation):
//
//	event:       | ver 1 | type (str) | at ms (u) | nAttrs (u) | (key (str) | kind (1) | value)... |
//	             kind 0: value (str); kind 1: value (v)
//	subscription:| ver 1 | url (str) | events (list of str) | secret (str) | description (str) | paused (bool) | created ms (u) |
//	dead letter: | ver 1 | attempts (u) | last error (str) | parked ms (u) | replay (bool) | replay ms (u) | event |

func appendHookEvent(b []byte, ev *WebhookEvent) []byte {
	b = append(b, recordVersion)
	b = appendStr(b, ev.Type)
	b = binary.AppendUvarint(b, uint64(ev.At.UnixMilli()))
	b = binary.AppendUvarint(b, uint64(len(ev.Data)))
	for _, a := range ev.Data {
		b = appendStr(b, a.Key)
		if a.IsInt {
			b = append(b, 1)
			b = binary.AppendVarint(b, a.Int)
		} else {
			b = append(b, 0)
			b = appendStr(b, a.Value)
		}
	}
	return b
}

func decodeHookEvent(d *recordDecoder, seq uint64) WebhookEvent {
	ev := WebhookEvent{Seq: seq}
	if d.u8() != recordVersion {
		d.err = true
		return ev
	}
	ev.Type = d.str()
	ev.At = time.UnixMilli(int64(d.uvarint())).UTC()
	n := d.count()
	for range n {
		a := Attr{Key: d.str()}
		switch d.u8() {
		case 0:
			a.Value = d.str()
		case 1:
			a.Int, a.IsInt = d.varint(), true
		default:
			d.err = true
		}
		if d.err {
			break
		}
		ev.Data = append(ev.Data, a)
	}
	return ev
}

func parseHookEvent(seq uint64, b []byte) (WebhookEvent, error) {
	d := recordDecoder{decoder: decoder{b: b}, all: b}
	ev := decodeHookEvent(&d, seq)
	return ev, d.end()
}

func encodeWebhook(w *Webhook) []byte {
	b := []byte{recordVersion}
	b = appendStr(b, w.URL)
	b = appendStrs(b, w.Events)
	b = appendStr(b, w.Secret)
	b = appendStr(b, w.Description)
	b = appendBool(b, w.Paused)
	return binary.AppendUvarint(b, uint64(w.Created.UnixMilli()))
}

func decodeWebhook(id string, b []byte) (Webhook, error) {
	d := newRecordDecoder(b)
	w := Webhook{ID: id}
	w.URL = d.str()
	w.Events = d.strs()
	w.Secret = d.str()
	w.Description = d.str()
	w.Paused = d.boolean()
	w.Created = time.UnixMilli(int64(d.uvarint())).UTC()
	return w, d.end()
}

func encodeDeadLetter(dl *DeadLetter) []byte {
	b := []byte{recordVersion}
	b = binary.AppendUvarint(b, uint64(dl.Attempts))
	b = appendStr(b, dl.LastError)
	b = binary.AppendUvarint(b, uint64(dl.Parked.UnixMilli()))
	b = appendBool(b, dl.Replay)
	b = binary.AppendUvarint(b, uint64(dl.ReplayAt.UnixMilli()))
	return appendHookEvent(b, &dl.Event)
}

func decodeDeadLetter(seq uint64, b []byte) (DeadLetter, error) {
	d := newRecordDecoder(b)
	var dl DeadLetter
	dl.Attempts = int(d.uvarint())
	dl.LastError = d.str()
	dl.Parked = time.UnixMilli(int64(d.uvarint())).UTC()
	dl.Replay = d.boolean()
	if ms := d.uvarint(); ms > 0 {
		dl.ReplayAt = time.UnixMilli(int64(ms)).UTC()
	}
	dl.Event = decodeHookEvent(&d, seq)
	return dl, d.end()
}

// hookSet is the subscriptions' filters and cursors as of the last
// applied batch: the commit loop reads it (hookWants), the txn replaces
// it (never modifies it) when a subscription changes.
type hookSet struct {
	subs    map[string]*Webhook // by id; shared, never modified
	cursors map[string]uint64
}

func (s *hookSet) clone() *hookSet {
	n := &hookSet{subs: map[string]*Webhook{}, cursors: map[string]uint64{}}
	if s != nil {
		for k, v := range s.subs {
			n.subs[k] = v
		}
		for k, v := range s.cursors {
			n.cursors[k] = v
		}
	}
	return n
}

// minCursor is the seq through which every subscription is done; next
// (the last seq allocated) when there is none.
func (s *hookSet) minCursor(next uint64) uint64 {
	m := next
	if s == nil {
		return m
	}
	for _, c := range s.cursors {
		m = min(m, c)
	}
	return m
}

// hookState is the engine's: guarded as its fields say.
type hookState struct {
	hooks       atomic.Pointer[hookSet] // as of the last applied batch; written by the commit loop only
	hookNext    uint64                  // the last event seq allocated as of the last applied batch; the commit loop's own
	hookTrimmed uint64                  // events through this seq are deleted; the commit loop's own
	hookDurable atomic.Uint64           // the last durable event seq
	hookGen     atomic.Uint64           // bumped when a batch that changed a subscription is durable
	hookReady   chan struct{}           // capacity 1: a batch that wrote events or changed a subscription is durable
}

// hookTx is the webhooks' per-batch overlay.
type hookTx struct {
	hookSeq     uint64   // the last event seq this batch allocated; 0: none
	hookSetNext *hookSet // the subscriptions as this batch left them; nil: unchanged
	hookTrim    uint64   // events through this seq deleted by this batch
}

func (h *hookTx) flush(c *txn) error {
	if h.hookSeq > 0 {
		c.batch.Set(hookCounterKey, u64(h.hookSeq))
	}
	return nil
}

func (h *hookTx) applied(c *txn) {
	if h.hookSeq > 0 {
		c.e.hookNext = h.hookSeq
	}
	if h.hookTrim > c.e.hookTrimmed {
		c.e.hookTrimmed = h.hookTrim
	}
	if h.hookSetNext != nil {
		c.e.hooks.Store(h.hookSetNext)
	}
}

func (h *hookTx) durable(c *txn) {
	if h.hookSeq > 0 {
		c.e.hookDurable.Store(h.hookSeq)
	}
	if h.hookSetNext != nil {
		c.e.hookGen.Add(1)
	}
}

func (h *hookTx) published(c *txn) {
	if h.hookSeq > 0 || h.hookSetNext != nil {
		select {
		case c.e.hookReady <- struct{}{}:
		default:
		}
	}
}

func (h *hookTx) reset() { *h = hookTx{} }

// hookSetNow is the subscriptions as the ops of this batch see them.
func (c *txn) hookSetNow() *hookSet {
	if c.hookSetNext != nil {
		return c.hookSetNext
	}
	return c.e.hooks.Load()
}

// hookSetEdit returns a copy of the subscriptions this batch may change.
func (c *txn) hookSetEdit() *hookSet {
	if c.hookSetNext == nil {
		c.hookSetNext = c.e.hooks.Load().clone()
	}
	return c.hookSetNext
}

// hookWants reports whether some subscription wants events of type t:
// the one check an op makes before it builds an event.
func (c *txn) hookWants(t string) bool {
	s := c.hookSetNow()
	if s == nil || len(s.subs) == 0 {
		return false
	}
	for _, w := range s.subs {
		if w.Matches(t) {
			return true
		}
	}
	return false
}

// hookLastSeq is the last event seq allocated, this batch included.
func (c *txn) hookLastSeq() uint64 {
	if c.hookSeq > 0 {
		return c.hookSeq
	}
	return c.e.hookNext
}

// emit writes an event of type t to the outbox if a subscription wants
// it. Ops call it in the batch of the change the event reports.
func (c *txn) emit(t string, data ...Attr) {
	if !c.hookWants(t) {
		return
	}
	c.hookSeq = c.hookLastSeq() + 1
	ev := WebhookEvent{Seq: c.hookSeq, Type: t, At: c.now, Data: data}
	c.batch.Set(hookEventKey(c.hookSeq), appendHookEvent(make([]byte, 0, 64), &ev))
}

// hookTrimTo deletes the events every subscription is past.
func (c *txn) hookTrimTo(s *hookSet) {
	last := c.hookLastSeq()
	m := s.minCursor(last)
	from := max(c.e.hookTrimmed, c.hookTrim)
	if m <= from {
		return
	}
	if m-from <= maxPointTrim {
		// One point deletion per event, as the relay's outbox does
		// (trimOutbox): a range deletion per acknowledgement makes every
		// read of the memtable fragment them all again.
		for seq := from + 1; seq <= m; seq++ {
			c.batch.Delete(hookEventKey(seq))
		}
	} else {
		c.batch.DeleteRange(hookEventKey(from+1), hookEventKey(m+1)) // a long jump (a subscription removed or resumed): rare
	}
	c.hookTrim = m
}

// maxPointTrim is the most events hookTrimTo deletes one by one.
const maxPointTrim = 1024

// loadHooks reads, at Open, the subscriptions, their cursors and the
// event counter.
func (e *Engine) loadHooks() error {
	e.hookReady = make(chan struct{}, 1)
	switch v, err := e.st.Get(hookCounterKey); {
	case err == nil:
		n, err := parseU64(v)
		if err != nil {
			return fmt.Errorf("engine: webhook counter: %w", err)
		}
		e.hookNext = n
		e.hookDurable.Store(n)
	case !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("engine: webhook counter: %w", err)
	}
	subs, err := e.Webhooks()
	if err != nil {
		return err
	}
	s := (*hookSet)(nil).clone()
	for i := range subs {
		w := subs[i]
		s.subs[w.ID], s.cursors[w.ID] = &w, w.Cursor
	}
	e.hooks.Store(s)
	// The first event still stored says what was trimmed.
	e.hookTrimmed = e.hookNext
	k, _, err := e.st.Last([]byte{prefixHookEvent}, []byte{prefixHookEvent + 1})
	if err == nil && len(k) == 9 {
		first := uint64(0)
		_ = e.st.Scan([]byte{prefixHookEvent}, []byte{prefixHookEvent + 1}, func(k, _ []byte) bool {
			first = binary.BigEndian.Uint64(k[1:])
			return false
		})
		e.hookTrimmed = first - 1
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("engine: webhook outbox: %w", err)
	}
	return nil
}

// NewWebhookSecret makes a subscription secret: "whsec_" and the base64
// of 32 random bytes.
func NewWebhookSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// CheckWebhookURL returns an error (wrapping ErrBadWebhook) naming what
// is wrong with a subscription's URL: it must be absolute http or https
// with a host, and no user info (secrets go in the signing secret).
// Private and loopback addresses are accepted: Ding is self-hosted and
// its receivers are often on the same network.
func CheckWebhookURL(s string) error {
	if len(s) > 2048 {
		return fmt.Errorf("%w: url longer than 2048 bytes", ErrBadWebhook)
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("%w: url does not parse", ErrBadWebhook)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%w: url scheme %q: only http and https", ErrBadWebhook, u.Scheme)
	case u.Host == "" || u.Hostname() == "":
		return fmt.Errorf("%w: url has no host", ErrBadWebhook)
	case u.User != nil:
		return fmt.Errorf("%w: url must not carry user info", ErrBadWebhook)
	case u.Fragment != "":
		return fmt.Errorf("%w: url must not have a fragment", ErrBadWebhook)
	}
	return nil
}

// AddWebhook stores a new subscription and returns it, secret included
// (the only answer that shows it in full besides Webhook). w.ID and
// w.Secret are made here unless given (the same subscription on each
// engine of partitions: an id of "wh_" and 16 hex digits, a secret of
// "whsec_" and base64); Created is set; w.URL and w.Events are checked.
// It gets the events written after it is durable.
func (e *Engine) AddWebhook(ctx context.Context, w Webhook) (Webhook, error) {
	if err := CheckWebhookURL(w.URL); err != nil {
		return Webhook{}, err
	}
	if len(w.Events) == 0 {
		return Webhook{}, fmt.Errorf("%w: no event types (use \"*\" for all)", ErrBadWebhook)
	}
	if len(w.Events) > 64 {
		return Webhook{}, fmt.Errorf("%w: more than 64 event types", ErrBadWebhook)
	}
	for _, p := range w.Events {
		if err := CheckWebhookFilter(p); err != nil {
			return Webhook{}, err
		}
	}
	if len(w.Description) > 256 {
		return Webhook{}, fmt.Errorf("%w: description longer than 256 bytes", ErrBadWebhook)
	}
	w.Events = slices.Compact(slices.Sorted(slices.Values(w.Events)))
	if w.ID == "" {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		w.ID = "wh_" + hex.EncodeToString(b)
	} else if !hookIDRE.MatchString(w.ID) {
		return Webhook{}, fmt.Errorf("%w: subscription id %q is not wh_ and 16 hex digits", ErrBadWebhook, w.ID)
	}
	if w.Secret == "" {
		w.Secret = NewWebhookSecret()
	} else if k, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(w.Secret, "whsec_")); err != nil || len(k) < 16 || !strings.HasPrefix(w.Secret, "whsec_") {
		return Webhook{}, fmt.Errorf("%w: a secret is whsec_ and the base64 of 16 bytes or more", ErrBadWebhook)
	}
	err := e.apply(ctx, func(c *txn, now time.Time) error {
		s := c.hookSetNow()
		if s != nil && s.subs[w.ID] != nil {
			return fmt.Errorf("%w: subscription %s exists", ErrBadWebhook, w.ID)
		}
		if s != nil && len(s.subs) >= MaxWebhooks {
			return fmt.Errorf("%w: %d subscriptions already, the most one server keeps", ErrBadWebhook, MaxWebhooks)
		}
		w.Created = now.Truncate(time.Millisecond).UTC()
		w.Cursor = c.hookLastSeq()
		ns := c.hookSetEdit()
		stored := w
		ns.subs[w.ID], ns.cursors[w.ID] = &stored, w.Cursor
		c.batch.Set(hookKey(w.ID), encodeWebhook(&w))
		c.batch.Set(hookCursorKey(w.ID), u64(w.Cursor))
		return nil
	})
	if err != nil {
		return Webhook{}, err
	}
	return w, nil
}

// Webhooks lists the subscriptions with their durable cursors, by id.
func (e *Engine) Webhooks() ([]Webhook, error) {
	var out []Webhook
	var derr error
	err := e.st.Scan([]byte{prefixHook}, []byte{prefixHook + 1}, func(k, v []byte) bool {
		w, err := decodeWebhook(string(k[1:]), v)
		if err != nil {
			derr = fmt.Errorf("webhook %q: %w", k[1:], err)
			return false
		}
		out = append(out, w)
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("engine: webhooks: %w", err)
	}
	for i := range out {
		v, err := e.st.Get(hookCursorKey(out[i].ID))
		if err != nil {
			return nil, fmt.Errorf("engine: webhook %s cursor: %w", out[i].ID, err)
		}
		if out[i].Cursor, err = parseU64(v); err != nil {
			return nil, fmt.Errorf("engine: webhook %s cursor: %w", out[i].ID, err)
		}
	}
	return out, nil
}

// Webhook returns one subscription (ErrNoWebhook if there is none).
func (e *Engine) Webhook(id string) (Webhook, error) {
	v, err := e.st.Get(hookKey(id))
	if errors.Is(err, store.ErrNotFound) || id == "" {
		return Webhook{}, fmt.Errorf("%w: %q", ErrNoWebhook, id)
	}
	if err != nil {
		return Webhook{}, fmt.Errorf("engine: webhook %s: %w", id, err)
	}
	w, err := decodeWebhook(id, v)
	if err != nil {
		return Webhook{}, fmt.Errorf("engine: webhook %s: %w", id, err)
	}
	cv, err := e.st.Get(hookCursorKey(id))
	if err != nil {
		return Webhook{}, fmt.Errorf("engine: webhook %s cursor: %w", id, err)
	}
	w.Cursor, err = parseU64(cv)
	return w, err
}

// hookFor returns the subscription id as the batch sees it.
func (c *txn) hookFor(id string) (*Webhook, error) {
	s := c.hookSetNow()
	if s == nil || s.subs[id] == nil {
		return nil, fmt.Errorf("%w: %q", ErrNoWebhook, id)
	}
	return s.subs[id], nil
}

// RemoveWebhook deletes a subscription, its cursor and its dead letters;
// events only it held leave the outbox.
func (e *Engine) RemoveWebhook(ctx context.Context, id string) error {
	return e.apply(ctx, func(c *txn, now time.Time) error {
		if _, err := c.hookFor(id); err != nil {
			return err
		}
		ns := c.hookSetEdit()
		delete(ns.subs, id)
		delete(ns.cursors, id)
		c.batch.Delete(hookKey(id))
		c.batch.Delete(hookCursorKey(id))
		p := hookDeadPrefix(id)
		c.batch.DeleteRange(p, prefixEnd(p))
		c.hookTrimTo(ns)
		return nil
	})
}

// PauseWebhook pauses (or resumes) a subscription's deliveries. A paused
// subscription keeps its cursor: its events stay in the outbox.
func (e *Engine) PauseWebhook(ctx context.Context, id string, paused bool) (Webhook, error) {
	var out Webhook
	err := e.apply(ctx, func(c *txn, now time.Time) error {
		w, err := c.hookFor(id)
		if err != nil {
			return err
		}
		n := *w
		n.Paused = paused
		ns := c.hookSetEdit()
		ns.subs[id] = &n
		c.batch.Set(hookKey(id), encodeWebhook(&n))
		out = n
		out.Cursor = ns.cursors[id]
		return nil
	})
	if err != nil {
		return Webhook{}, err // maybe ctx's: the op may still run, so out is not read
	}
	return out, nil
}

// WebhookDurable is the seq of the last durable event.
func (e *Engine) WebhookDurable() uint64 { return e.hookDurable.Load() }

// WebhookGeneration changes (after the batch is durable) whenever a
// subscription is added, changed or removed.
func (e *Engine) WebhookGeneration() uint64 { return e.hookGen.Load() }

// WebhookReady is signalled (capacity 1, coalesced) after a batch that
// wrote events or changed a subscription is durable. One reader.
func (e *Engine) WebhookReady() <-chan struct{} { return e.hookReady }

// WebhookEvents returns up to max durable events with Seq > after,
// oldest first. Safe for concurrent use; it reads the store.
func (e *Engine) WebhookEvents(after uint64, max int) ([]WebhookEvent, error) {
	durable := e.hookDurable.Load()
	if after >= durable || max <= 0 {
		return nil, nil
	}
	var out []WebhookEvent
	var derr error
	err := e.st.Scan(hookEventKey(after+1), hookEventKey(durable+1), func(k, v []byte) bool {
		seq := binary.BigEndian.Uint64(k[1:])
		ev, err := parseHookEvent(seq, v)
		if err != nil {
			derr = fmt.Errorf("event %d: %w", seq, err)
			return false
		}
		out = append(out, ev)
		return len(out) < max
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("engine: webhook events: %w", err)
	}
	return out, nil
}

// AckWebhook moves subscription id's cursor to through (never back:
// a lower one changes nothing) and returns once that is durable; events
// every subscription is past are deleted in the same batch.
func (e *Engine) AckWebhook(ctx context.Context, id string, through uint64) error {
	if through > e.hookDurable.Load() {
		return fmt.Errorf("%w: %d > %d", ErrWebhookCursor, through, e.hookDurable.Load())
	}
	return e.apply(ctx, func(c *txn, now time.Time) error { return c.hookAck(id, through) })
}

// AckWebhookAsync is AckWebhook that does not wait: done gets its error
// once the batch is durable (on the publish loop: it must not block).
func (e *Engine) AckWebhookAsync(id string, through uint64, done func(error)) {
	if d := e.hookDurable.Load(); through > d {
		done(fmt.Errorf("%w: %d > %d", ErrWebhookCursor, through, d))
		return
	}
	e.applyAsync(func(c *txn, now time.Time) error { return c.hookAck(id, through) }, done)
}

func (c *txn) hookAck(id string, through uint64) error {
	if _, err := c.hookFor(id); err != nil {
		return err
	}
	if c.hookSetNow().cursors[id] >= through {
		return nil
	}
	ns := c.hookSetEdit()
	ns.cursors[id] = through
	c.batch.Set(hookCursorKey(id), u64(through))
	c.hookTrimTo(ns)
	return nil
}

// ParkWebhookEvent stores dl as subscription id's dead letter and moves
// its cursor past dl.Event (unless it already is: a replayed dead letter
// parked again), in one batch.
func (e *Engine) ParkWebhookEvent(ctx context.Context, id string, dl DeadLetter) error {
	if dl.Event.Seq == 0 || dl.Event.Seq > e.hookDurable.Load() {
		return fmt.Errorf("%w: %d", ErrWebhookCursor, dl.Event.Seq)
	}
	return e.apply(ctx, func(c *txn, now time.Time) error {
		if _, err := c.hookFor(id); err != nil {
			return err
		}
		dl.Replay, dl.ReplayAt = false, time.Time{}
		if dl.Parked.IsZero() {
			dl.Parked = now
		}
		c.batch.Set(hookDeadKey(id, dl.Event.Seq), encodeDeadLetter(&dl))
		return c.hookAck(id, dl.Event.Seq)
	})
}

// WebhookDeadLetters returns up to max of subscription id's dead letters
// with Seq > after, oldest first; onlyReplay keeps those marked for
// replay.
func (e *Engine) WebhookDeadLetters(id string, after uint64, max int, onlyReplay bool) ([]DeadLetter, error) {
	p := hookDeadPrefix(id)
	var out []DeadLetter
	var derr error
	err := e.st.Scan(binary.BigEndian.AppendUint64(bytes.Clone(p), after+1), prefixEnd(p), func(k, v []byte) bool {
		if len(k) != len(p)+8 {
			derr = ErrCorrupt
			return false
		}
		dl, err := decodeDeadLetter(binary.BigEndian.Uint64(k[len(p):]), v)
		if err != nil {
			derr = err
			return false
		}
		if !onlyReplay || dl.Replay {
			dl.Source = e.WebhookSource()
			out = append(out, dl)
		}
		return len(out) < max
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("engine: webhook %s dead letters: %w", id, err)
	}
	return out, nil
}

// ReplayWebhook is ReplayWebhookDeadLetters by event ids
// (WebhookEventID): those of this engine's outbox are replayed, others
// ignored; none given replays all. A malformed id is ErrBadWebhook.
func (e *Engine) ReplayWebhook(ctx context.Context, id string, events []string) (int, error) {
	if len(events) == 0 {
		return e.ReplayWebhookDeadLetters(ctx, id, nil)
	}
	var seqs []uint64
	for _, ev := range events {
		src, seq, err := ParseWebhookEventID(ev)
		if err != nil {
			return 0, err
		}
		if src == e.WebhookSource() {
			seqs = append(seqs, seq)
		}
	}
	if len(seqs) == 0 {
		if _, err := e.Webhook(id); err != nil {
			return 0, err
		}
		return 0, nil
	}
	return e.ReplayWebhookDeadLetters(ctx, id, seqs)
}

// ReplayWebhookDeadLetters marks subscription id's dead letters (those
// of seqs, or all when seqs is empty) for another delivery, and returns
// how many it marked.
func (e *Engine) ReplayWebhookDeadLetters(ctx context.Context, id string, seqs []uint64) (int, error) {
	n := 0
	err := e.apply(ctx, func(c *txn, now time.Time) error {
		n = 0
		if _, err := c.hookFor(id); err != nil {
			return err
		}
		p := hookDeadPrefix(id)
		var scanErr error
		err := c.e.st.Scan(p, prefixEnd(p), func(k, v []byte) bool {
			seq := binary.BigEndian.Uint64(k[len(p):])
			if len(seqs) > 0 && !slices.Contains(seqs, seq) {
				return true
			}
			dl, err := decodeDeadLetter(seq, v)
			if err != nil {
				scanErr = err
				return false
			}
			if dl.Replay {
				return true
			}
			dl.Replay, dl.ReplayAt = true, now
			c.batch.Set(bytes.Clone(k), encodeDeadLetter(&dl))
			n++
			return true
		})
		if err == nil {
			err = scanErr
		}
		if err == nil && n > 0 {
			c.hookSetEdit() // wakes the workers once durable
		}
		return err
	})
	return n, err
}

// DeleteWebhookDeadLetter drops subscription id's dead letter seq (once
// a replay delivered it).
func (e *Engine) DeleteWebhookDeadLetter(ctx context.Context, id string, seq uint64) error {
	return e.apply(ctx, func(c *txn, now time.Time) error {
		if _, err := c.hookFor(id); err != nil {
			return err
		}
		c.batch.Delete(hookDeadKey(id, seq))
		return nil
	})
}

// hookDingData is a DING ledger event's data: the DING, its sender, the
// recipient's index and, for a user, their id (a phone number is never
// given: the index says which recipient), the channel and device, and
// the detail of the kinds whose detail is neither content nor a
// provider's reference (a confirmation's answer and choice, a refusal's
// reason, an attempt).
func hookDingData(ev *DingEvent, user bool, rec *dingRecord) []Attr {
	d := make([]Attr, 0, 8)
	d = append(d, S("ding", ev.ID.String()), S("from", rec.From), N("recipient_index", int64(ev.Index)))
	if user {
		d = append(d, S("recipient", ev.Recipient))
	}
	d = append(d, S("ledger_event", string(ev.Event)))
	if ev.Channel != 0 {
		d = append(d, S("channel", ev.Channel.String()))
	}
	if ev.Device != "" {
		d = append(d, S("device", ev.Device))
	}
	switch ev.Event {
	case LedgerConfirmed:
		if n, choice, ok := strings.Cut(ev.Detail, " "); ok {
			if a, err := strconv.Atoi(n); err == nil {
				d = append(d, N("answer", int64(a)), S("choice", choice))
			}
		}
	case LedgerQuotaRefused, LedgerExhausted, LedgerSending, LedgerRetry, LedgerSkipped, LedgerEmailFailed, LedgerPushFailed: // an SMTP code or a provider's reason, never an address or a token
		if ev.Detail != "" {
			d = append(d, S("detail", ev.Detail))
		}
	}
	return d
}

// hookReceiptType is the event type of a receipt moved to st, "" for
// none (confirmations of DINGs and announcements have their own).
func hookReceiptType(st State) string {
	switch st {
	case StateDelivered:
		return HookMessageDelivered
	case StateRead:
		return HookMessageRead
	}
	return ""
}

// hookRatios are the read ratios (percent) announcement.read_ratio
// reports, each once, when an announcement's read count reaches it.
var hookRatios = []uint64{50, 90, 100}

// hookAnnouncement emits an announcement's events for counts moved by
// this batch from was to now: each read ratio reached, and the confirmed
// count (one event per batch that moved it, with the count then).
func (c *txn) hookAnnouncement(id ID, was, now *AnnouncementCounts) {
	if now.Total == 0 {
		return
	}
	for _, pct := range hookRatios {
		// reached at n read when n*100 >= pct*total
		if was.Read*100 < pct*now.Total && now.Read*100 >= pct*now.Total {
			c.emit(HookAnnouncementRead, S("announcement", id.String()), S("from", now.From), N("percent", int64(pct)),
				N("read", int64(now.Read)), N("recipients", int64(now.Total)))
		}
	}
	if now.Confirmed != was.Confirmed {
		c.emit(HookAnnouncementConfirmed, S("announcement", id.String()), S("from", now.From),
			N("confirmed", int64(now.Confirmed)), N("recipients", int64(now.Total)))
	}
}

// WebhookSource is the name this engine's event ids carry
// (Config.HookSource, or the partition's number).
func (e *Engine) WebhookSource() string {
	if e.cfg.HookSource != "" {
		return e.cfg.HookSource
	}
	return strconv.FormatUint(uint64(e.cfg.Partition), 10)
}

// WebhookBacklog is how many durable events are after w's cursor here.
func (e *Engine) WebhookBacklog(w Webhook) uint64 {
	d := e.hookDurable.Load()
	return d - min(d, w.Cursor)
}

// hookBudget emits ops.budget when a send took the day's count of
// channel ch from was to was+1 across 80% or onto 100% of limit.
func (c *txn) hookBudget(ch Channel, was uint64, limit int) {
	if !c.hookWants(HookOpsBudget) {
		return
	}
	l := uint64(limit)
	for _, pct := range []uint64{80, 100} {
		if was*100 < pct*l && (was+1)*100 >= pct*l {
			c.emit(HookOpsBudget, S("channel", ch.String()), N("percent", int64(pct)), N("used", int64(was+1)), N("limit", int64(limit)))
		}
	}
}
