package engine

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"time"
)

// Stored records.
//
// The records the commit loop reads or writes on the ops that touch them
// (a DING's record, its recipients' states and ledger events, a secret
// chat, a live secret message's state, an announcement's counts, a fanout
// job) are binary, each led by a version byte. They were JSON until
// 2026-12, and data directories from before hold JSON records, so every
// decoder reads both: a JSON record starts with '{' (0x7B), a binary one
// with its version (1), which is never '{'. Writers write binary only, so
// an old record becomes binary when it is next written (a recipient's
// state when it next changes); records written once (a DING's, a chat's,
// a ledger event) stay JSON. The types keep their JSON tags for that, and
// the exported ones (Chat, LedgerEvent, AnnouncementCounts) because the
// admin API shows them as JSON.
//
// Notation: (1) one byte; (16) an id; (u) a uvarint; (v) a zigzag varint
// (binary.AppendVarint); (str) a uvarint length and the bytes; (bool) one
// byte, 0 or 1; (time) | unix seconds (v) | nanoseconds (u) | zone offset
// in seconds (v) |, the offset because a time's JSON (the admin API's)
// shows it. A list is a count (u) and its entries; a count is at most the
// bytes that follow, since every entry takes one at least, so that a
// corrupt count cannot make a decoder allocate more than its input. A
// decoder rejects unknown versions and flags and bytes left over.
//
// Recipient state (key 'e', rcptState):
//
//	+-------+------------+-----------+----------+------------+--------+-------------+------------+
//	| ver 1 | status (1) | flags (1) | next (v) | answer (v) | by (1) | ledgerN (u) | timerN (u) |
//	+-------+------------+-----------+----------+------------+--------+-------------+------------+
//	| phoneAt ms (v) | ended ms (v) | phone (str) | dept (str) | nTimers (u) | timer ... |
//	+----------------+--------------+-------------+------------+-------------+-----------+
//	timer: | n (u) | due ms (v) | kind (1) | step (v) | ch (1) | attempt (v) | recover (bool) | reason (str) |
//
// status is an index into rcptStatuses; 0 says the status's text (str)
// follows at once (a JSON record may hold any). flags: 1 user, 2
// unanswered.
//
// DING record (key 'g', dingRecord):
//
//	+-------+----------------+-----------+-----------------+------------+--------------+
//	| ver 1 | created ms (v) | until (1) | critical (bool) | from (str) | policy (str) |
//	+-------+----------------+-----------+-----------------+------------+--------------+
//	| nPlan (u) | (channel (1) | after ns (v))... | nChoices (u) | choice (str)... | nTo (u) | recipient (str)... |
//	+-----------+---------------------------------+--------------+-----------------+---------+--------------------+
//
// Ledger event (key 'l', LedgerEvent):
//
//	| ver 1 | at (time) | event (str) | channel (str) | device (str) | detail (str) |
//
// Secret message state (key 'b', secretState):
//
//	+-------+-----------+-----------+-----------+------------------+----------------+------------------+------------+----------+
//	| ver 1 | chat (16) | level (1) | toSeq (u) | burnAfter ms (v) | burnDue ms (v) | expireDue ms (v) | from (str) | to (str) |
//	+-------+-----------+-----------+-----------+------------------+----------------+------------------+------------+----------+
//
// Secret chat (key 's', Chat):
//
//	| ver 1 | id (16) | level (1) | burnAfter ns (v) | created (time) | creator (str) | nMembers (u) | (user (str) | pseudonym (str))... |
//
// Announcement counts (key 'n', AnnouncementCounts):
//
//	+-------+----------------+----------------+-----------+---------------+----------+---------------+
//	| ver 1 | created ms (v) | confirm (bool) | total (u) | delivered (u) | read (u) | confirmed (u) |
//	+-------+----------------+----------------+-----------+---------------+----------+---------------+
//	| from (str) | nTo (u) | to (str)... |
//	+------------+---------+-------------+
//
// Fanout job (key 'j', fanoutJob):
//
//	| ver 1 | chunks (v) | next (v) |
//
// Relay record (key 'O', RelayRecord; relay.go), one of:
//
//	RelayMessage: | ver 1 | kind 1 | id (16) | nUsers (u) | user (str)... | [chat (16)] |
//	RelayEntry:   | ver 1 | kind 2 | user (str) | stream entry, to the end (keys.go; never a message) |
//	RelayReceipt: | ver 1 | kind 3 | user (str) | state (1) | at ms (v) | device (str) | answer (u) | nIDs (u) | id (16)... |
//	RelayChat:    | ver 1 | kind 4 | chat record, to the end (encodeChat) |
//
// A RelayMessage names the message, whose record stays under 'm' (the
// body is not copied), and its recipients in the destination partition,
// sorted; a secret message's record ends with its chat's id (stage 3), so
// that Outbox knows it for one even once it has burned. Its key is never
// in the record: Outbox reads it from the keyring.
//
// Usage: v := encodeRcptState(s); err := decodeRcptState(v, &s2).
const recordVersion = 1

// isJSON reports whether a record is in the JSON form written before the
// binary codecs.
func isJSON(b []byte) bool { return len(b) > 0 && b[0] == '{' }

// decodeJSON decodes a record in its old JSON form into v. Only this path
// hands the record to encoding/json's reflection, so only it allocates
// the value on the heap.
func decodeJSON[T any](b []byte, v *T) error {
	tmp := new(T)
	if json.Unmarshal(b, tmp) != nil {
		return ErrCorrupt
	}
	*v = *tmp
	return nil
}

// openRecord starts decoding a stored record into v. An old JSON record
// is decoded at once (done, with its error); a binary one is left to the
// caller to read from d into v, which is zeroed first (done if its
// version is not one this code reads, with ErrCorrupt).
func openRecord[T any](b []byte, v *T) (d recordDecoder, done bool, err error) {
	if isJSON(b) {
		return d, true, decodeJSON(b, v)
	}
	d = newRecordDecoder(b)
	if d.err {
		return d, true, ErrCorrupt
	}
	var zero T
	*v = zero
	return d, false, nil
}

// recordDecoder reads a binary record. Its strings are substrings of one
// copy of the record, made at the first one: a record costs one
// allocation for all its strings, and never aliases the caller's bytes
// (Scan's values live only during the callback).
type recordDecoder struct {
	decoder
	all []byte // the whole record
	rec string // all, copied at the first non-empty string
}

// newRecordDecoder starts decoding a binary record; its err is set if the
// version is not one this code reads.
func newRecordDecoder(b []byte) recordDecoder {
	d := recordDecoder{decoder: decoder{b: b}, all: b}
	if d.u8() != recordVersion {
		d.err = true
	}
	return d
}

func (d *recordDecoder) str() string {
	n := d.uvarint()
	if d.err || n > uint64(len(d.b)) {
		d.err = true
		return ""
	}
	if n == 0 {
		return ""
	}
	if d.rec == "" {
		d.rec = string(d.all)
	}
	off := len(d.all) - len(d.b)
	d.b = d.b[n:]
	return d.rec[off : off+int(n)]
}

// strs reads a list of strings (nil if empty).
func (d *recordDecoder) strs() []string {
	n := d.count()
	if n == 0 {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = d.str()
	}
	return out
}

// end reports whether the whole record decoded.
func (d *recordDecoder) end() error {
	if d.err || len(d.b) != 0 {
		return ErrCorrupt
	}
	return nil
}

// varint reads what binary.AppendVarint wrote: a zigzag-encoded uvarint.
func (d *decoder) varint() int64 {
	u := d.uvarint()
	return int64(u>>1) ^ -int64(u&1)
}

func (d *decoder) u32() uint32 {
	v := d.uvarint()
	if v > math.MaxUint32 {
		d.err = true
	}
	return uint32(v)
}

// count reads a list's length, which is at most the bytes left.
func (d *decoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err = true
		return 0
	}
	return int(n)
}

func (d *decoder) boolean() bool {
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	d.err = true
	return false
}

func (d *decoder) id() (id ID) {
	if len(d.b) < len(id) {
		d.err = true
		return id
	}
	copy(id[:], d.b)
	d.b = d.b[len(id):]
	return id
}

// Bounds of a stored time: beyond what JSON can hold (years 0 to 9999),
// within what time.Unix handles without overflow.
const (
	maxTimeSec    = 1 << 40
	maxZoneOffset = 100 * 3600
)

// time reads a (time) as JSON would have parsed it: in UTC for offset 0,
// in time.Local if that is the local zone's offset then, else in a fixed
// zone.
func (d *decoder) time() time.Time {
	sec, ns, off := d.varint(), d.uvarint(), d.varint()
	if d.err || ns >= 1e9 || sec > maxTimeSec || sec < -maxTimeSec || off > maxZoneOffset || off < -maxZoneOffset {
		d.err = true
		return time.Time{}
	}
	t := time.Unix(sec, int64(ns))
	if off == 0 {
		return t.UTC()
	}
	if _, local := t.Zone(); local == int(off) {
		return t
	}
	return t.In(time.FixedZone("", int(off)))
}

func appendTime(b []byte, t time.Time) []byte {
	_, off := t.Zone()
	b = binary.AppendVarint(b, t.Unix())
	b = binary.AppendUvarint(b, uint64(t.Nanosecond()))
	return binary.AppendVarint(b, int64(off))
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func appendStrs(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendStr(b, s)
	}
	return b
}

// strsLen is about what appendStrs adds for ss (short lengths).
func strsLen(ss []string) int {
	n := 2
	for _, s := range ss {
		n += 1 + len(s)
	}
	return n
}

// rcptStatuses are the statuses a recipient state's status byte names.
var rcptStatuses = [...]string{1: StatusPending, 2: StatusRead, 3: StatusConfirmed, 4: StatusCancelled, 5: StatusRefused, 6: StatusRemoved}

const (
	rcptUser       = 1
	rcptUnanswered = 2
)

func encodeRcptState(s *rcptState) []byte {
	b := make([]byte, 0, 48+len(s.Phone)+len(s.Dept)+40*len(s.Timers))
	b = append(b, recordVersion)
	code := 0
	for i, st := range rcptStatuses {
		if i > 0 && st == s.Status {
			code = i
			break
		}
	}
	b = append(b, byte(code))
	if code == 0 {
		b = appendStr(b, s.Status)
	}
	var flags byte
	if s.User {
		flags |= rcptUser
	}
	if s.Unanswered {
		flags |= rcptUnanswered
	}
	b = append(b, flags)
	b = binary.AppendVarint(b, int64(s.Next))
	b = binary.AppendVarint(b, int64(s.Answer))
	b = append(b, byte(s.By))
	b = binary.AppendUvarint(b, uint64(s.LedgerN))
	b = binary.AppendUvarint(b, uint64(s.TimerN))
	b = binary.AppendVarint(b, s.PhoneAt)
	b = binary.AppendVarint(b, s.Ended)
	b = appendStr(b, s.Phone)
	b = appendStr(b, s.Dept)
	b = binary.AppendUvarint(b, uint64(len(s.Timers)))
	for i := range s.Timers {
		t := &s.Timers[i]
		b = binary.AppendUvarint(b, uint64(t.N))
		b = binary.AppendVarint(b, t.Due)
		b = append(b, byte(t.Kind))
		b = binary.AppendVarint(b, int64(t.Step))
		b = append(b, byte(t.Ch))
		b = binary.AppendVarint(b, int64(t.Attempt))
		b = appendBool(b, t.Recover)
		b = appendStr(b, t.Reason)
	}
	return b
}

func decodeRcptState(b []byte, s *rcptState) error {
	d, done, err := openRecord(b, s)
	if done {
		return err
	}
	switch code := int(d.u8()); {
	case code == 0:
		s.Status = d.str()
	case code < len(rcptStatuses):
		s.Status = rcptStatuses[code]
	default:
		return ErrCorrupt
	}
	flags := d.u8()
	if flags&^(rcptUser|rcptUnanswered) != 0 {
		return ErrCorrupt
	}
	s.User, s.Unanswered = flags&rcptUser != 0, flags&rcptUnanswered != 0
	s.Next = int(d.varint())
	s.Answer = int(d.varint())
	s.By = Channel(d.u8())
	s.LedgerN = d.u32()
	s.TimerN = d.u32()
	s.PhoneAt = d.varint()
	s.Ended = d.varint()
	s.Phone = d.str()
	s.Dept = d.str()
	if n := d.count(); n > 0 {
		s.Timers = make([]timerRef, n)
		for i := range s.Timers {
			t := &s.Timers[i]
			t.N = d.u32()
			t.Due = d.varint()
			t.Kind = timerKind(d.u8())
			t.Step = int(d.varint())
			t.Ch = Channel(d.u8())
			t.Attempt = int(d.varint())
			t.Recover = d.boolean()
			t.Reason = d.str()
		}
	}
	return d.end()
}

func encodeDingRecord(r *dingRecord) []byte {
	b := make([]byte, 0, 24+len(r.From)+len(r.Policy)+11*len(r.Plan)+strsLen(r.Choices)+strsLen(r.Recipients))
	b = append(b, recordVersion)
	b = binary.AppendVarint(b, r.Created)
	b = append(b, byte(r.Until))
	b = appendBool(b, r.Critical)
	b = appendStr(b, r.From)
	b = appendStr(b, r.Policy)
	b = binary.AppendUvarint(b, uint64(len(r.Plan)))
	for _, p := range r.Plan {
		b = append(b, byte(p.Channel))
		b = binary.AppendVarint(b, int64(p.After))
	}
	b = appendStrs(b, r.Choices)
	return appendStrs(b, r.Recipients)
}

func decodeDingRecord(b []byte, r *dingRecord) error {
	d, done, err := openRecord(b, r)
	if done {
		return err
	}
	r.Created = d.varint()
	r.Until = Stop(d.u8())
	r.Critical = d.boolean()
	r.From = d.str()
	r.Policy = d.str()
	if n := d.count(); n > 0 {
		r.Plan = make([]plannedStep, n)
		for i := range r.Plan {
			r.Plan[i] = plannedStep{Channel: Channel(d.u8()), After: time.Duration(d.varint())}
		}
	}
	r.Choices = d.strs()
	r.Recipients = d.strs()
	return d.end()
}

func encodeLedgerEvent(ev *LedgerEvent) []byte {
	b := make([]byte, 0, 24+len(ev.Event)+len(ev.Channel)+len(ev.Device)+len(ev.Detail))
	b = append(b, recordVersion)
	b = appendTime(b, ev.At)
	b = appendStr(b, string(ev.Event))
	b = appendStr(b, ev.Channel)
	b = appendStr(b, ev.Device)
	return appendStr(b, ev.Detail)
}

func decodeLedgerEvent(b []byte, ev *LedgerEvent) error {
	d, done, err := openRecord(b, ev)
	if done {
		return err
	}
	ev.At = d.time()
	ev.Event = LedgerKind(d.str())
	ev.Channel = d.str()
	ev.Device = d.str()
	ev.Detail = d.str()
	return d.end()
}

func encodeSecretState(s *secretState) []byte {
	b := make([]byte, 0, 64+len(s.From)+len(s.To))
	b = append(b, recordVersion)
	b = append(b, s.Chat[:]...)
	b = append(b, byte(s.Level))
	b = binary.AppendUvarint(b, s.ToSeq)
	b = binary.AppendVarint(b, s.BurnAfter)
	b = binary.AppendVarint(b, s.BurnDue)
	b = binary.AppendVarint(b, s.ExpireDue)
	b = appendStr(b, s.From)
	return appendStr(b, s.To)
}

func decodeSecretState(b []byte, s *secretState) error {
	d, done, err := openRecord(b, s)
	if done {
		return err
	}
	s.Chat = d.id()
	s.Level = Level(d.u8())
	s.ToSeq = d.uvarint()
	s.BurnAfter = d.varint()
	s.BurnDue = d.varint()
	s.ExpireDue = d.varint()
	s.From = d.str()
	s.To = d.str()
	return d.end()
}

func encodeChat(ch *Chat) []byte {
	n := 48 + len(ch.Creator)
	for _, m := range ch.Members {
		n += 2 + len(m.User) + len(m.Pseudonym)
	}
	b := make([]byte, 0, n)
	b = append(b, recordVersion)
	b = append(b, ch.ID[:]...)
	b = append(b, byte(ch.Level))
	b = binary.AppendVarint(b, int64(ch.BurnAfter))
	b = appendTime(b, ch.Created)
	b = appendStr(b, ch.Creator)
	b = binary.AppendUvarint(b, uint64(len(ch.Members)))
	for _, m := range ch.Members {
		b = appendStr(b, m.User)
		b = appendStr(b, m.Pseudonym)
	}
	return b
}

func decodeChat(b []byte, ch *Chat) error {
	d, done, err := openRecord(b, ch)
	if done {
		return err
	}
	ch.ID = d.id()
	ch.Level = Level(d.u8())
	ch.BurnAfter = time.Duration(d.varint())
	ch.Created = d.time()
	ch.Creator = d.str()
	if n := d.count(); n > 0 {
		ch.Members = make([]Member, n)
		for i := range ch.Members {
			ch.Members[i] = Member{User: d.str(), Pseudonym: d.str()}
		}
	}
	return d.end()
}

func encodeAnnouncementCounts(a *AnnouncementCounts) []byte {
	b := make([]byte, 0, 40+len(a.From)+strsLen(a.To))
	b = append(b, recordVersion)
	b = binary.AppendVarint(b, a.Created)
	b = appendBool(b, a.Confirm)
	for _, v := range []uint64{a.Total, a.Delivered, a.Read, a.Confirmed} {
		b = binary.AppendUvarint(b, v)
	}
	b = appendStr(b, a.From)
	return appendStrs(b, a.To)
}

func decodeAnnouncementCounts(b []byte, a *AnnouncementCounts) error {
	d, done, err := openRecord(b, a)
	if done {
		return err
	}
	a.Created = d.varint()
	a.Confirm = d.boolean()
	a.Total, a.Delivered, a.Read, a.Confirmed = d.uvarint(), d.uvarint(), d.uvarint(), d.uvarint()
	a.From = d.str()
	a.To = d.strs()
	return d.end()
}

func encodeFanoutJob(j *fanoutJob) []byte {
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64)
	b = append(b, recordVersion)
	b = binary.AppendVarint(b, int64(j.Chunks))
	return binary.AppendVarint(b, int64(j.Next))
}

func decodeFanoutJob(b []byte, j *fanoutJob) error {
	d, done, err := openRecord(b, j)
	if done {
		return err
	}
	j.Chunks = int(d.varint())
	j.Next = int(d.varint())
	return d.end()
}

// encodeRelayRecord encodes an outbox record: for a RelayMessage, the id of
// r.Msg and r.Users; for a RelayEntry, r.User and r.Entry.
func encodeRelayRecord(r *RelayRecord) []byte {
	if r.Kind == RelayMessage {
		b := make([]byte, 0, 18+strsLen(r.Users))
		b = append(b, recordVersion, byte(RelayMessage))
		b = append(b, r.Msg.ID[:]...)
		b = appendStrs(b, r.Users)
		if r.Secret != nil {
			b = append(b, r.Secret.Chat[:]...)
		}
		return b
	}
	if r.Kind == RelayChat {
		return append([]byte{recordVersion, byte(RelayChat)}, encodeChat(r.Chat)...)
	}
	if r.Kind == RelayReceipt {
		b := make([]byte, 0, 16+len(r.User)+len(r.Device)+16*len(r.IDs))
		b = append(b, recordVersion, byte(RelayReceipt))
		b = appendStr(b, r.User)
		b = append(b, byte(r.State))
		b = binary.AppendVarint(b, r.At.UnixMilli())
		b = appendStr(b, r.Device)
		b = binary.AppendUvarint(b, uint64(r.Answer))
		b = binary.AppendUvarint(b, uint64(len(r.IDs)))
		for _, id := range r.IDs {
			b = append(b, id[:]...)
		}
		return b
	}
	ent := encodeEntry(&r.Entry)
	b := make([]byte, 0, 3+len(r.User)+len(ent))
	b = append(b, recordVersion, byte(RelayEntry))
	b = appendStr(b, r.User)
	return append(b, ent...)
}

// decodeRelayRecord decodes an outbox record (its Seq is the key's). A
// RelayMessage's Msg is left nil: id is its message's. It does not alias b.
func decodeRelayRecord(b []byte) (r RelayRecord, id ID, err error) {
	d := newRecordDecoder(b)
	r.Kind = RelayKind(d.u8())
	switch {
	case d.err:
		return RelayRecord{}, id, ErrCorrupt
	case r.Kind == RelayMessage:
		id = d.id()
		r.Users = d.strs()
		if !d.err && len(d.b) == 16 {
			r.Secret = &RelaySecret{ID: id, Chat: d.id()}
		}
		if err := d.end(); err != nil || len(r.Users) == 0 {
			return RelayRecord{}, id, ErrCorrupt
		}
		return r, id, nil
	case r.Kind == RelayChat:
		var ch Chat
		if err := decodeChat(d.b, &ch); err != nil || len(ch.Members) != 2 {
			return RelayRecord{}, id, ErrCorrupt
		}
		r.Chat = &ch
		return r, ch.ID, nil
	case r.Kind == RelayEntry:
		r.User = d.str()
		if d.err || r.User == "" || len(d.b) == 0 || EntryKind(d.b[0]) == EntryMessage {
			return RelayRecord{}, id, ErrCorrupt
		}
		if r.Entry, _, _, err = decodeEntry(0, d.b); err != nil {
			return RelayRecord{}, id, err
		}
		return r, id, nil
	case r.Kind == RelayReceipt:
		r.User = d.str()
		r.State = State(d.u8())
		r.At = time.UnixMilli(d.varint())
		r.Device = d.str()
		answer := d.uvarint()
		n := d.count()
		if d.err || r.User == "" || r.State < StateDelivered || r.State > StateConfirmed || answer > 9 || n == 0 || n*16 != len(d.b) {
			return RelayRecord{}, id, ErrCorrupt
		}
		r.Answer = int(answer)
		r.IDs = make([]ID, n)
		for i := range r.IDs {
			r.IDs[i] = d.id()
		}
		if err := d.end(); err != nil {
			return RelayRecord{}, id, err
		}
		return r, id, nil
	}
	return RelayRecord{}, id, ErrCorrupt
}
