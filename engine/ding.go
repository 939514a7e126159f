package engine

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// A DING is a message that must reach a person: it is delivered like any
// message to the recipients' streams, and it escalates per recipient along
// a Policy (in-app reminders, SMS, calls) until that recipient reads or
// confirms it. The DING's id is its message's id. See escalate.go for how
// steps fire.

var (
	// ErrQuota is wrapped by a *QuotaError when a DING is refused by a
	// quota or by quiet hours. Retry after QuotaError.RetryAfter, if set.
	ErrQuota = NewError(CodeQuota, "engine: quota exceeded")
	// ErrBadAnswer is returned when a confirmation's answer is not one of
	// the DING's choices, or an SMS reply is not understood.
	ErrBadAnswer = NewError(CodeBadAnswer, "engine: answer not understood")
	// ErrBadDing is returned (wrapped, with the reason) for a DING request
	// that cannot be sent: no text, bad choices, a bad phone number.
	ErrBadDing = NewError(CodeBadRequest, "engine: bad ding")
	// ErrNotDing is returned by Confirm for a message that is not a DING.
	ErrNotDing = NewError(CodeNotDing, "engine: not a ding")
)

// Quota refusal reasons, as reported in QuotaError.Reason, Refusal.Reason,
// the ledger and the ding_ding_refusals_total metric.
const (
	ReasonSenderDaily = "sender_daily_limit" // the sender sent Quotas.DingsPerSenderPerDay today
	ReasonInterval    = "recipient_interval" // the sender DINGed this recipient less than Quotas.RecipientInterval ago
	ReasonQuietHours  = "quiet_hours"        // the recipient is in quiet hours and the DING is not critical
	ReasonSMSBudget   = "sms_budget"         // the org's SMS budget for today is spent
	ReasonVoiceBudget = "voice_budget"       // the org's call budget for today is spent
	ReasonEmailBudget = "email_budget"       // the org's e-mail budget for today is spent
)

// QuotaError says why a DING (or every one of its recipients) was refused.
type QuotaError struct {
	Reason     string        // one of the Reason constants
	Detail     string        // human-readable
	RetryAfter time.Duration // when trying again may succeed; zero if unknown
}

func (e *QuotaError) Error() string { return "engine: quota: " + e.Reason + ": " + e.Detail }

// Is makes errors.Is(err, ErrQuota) true.
func (e *QuotaError) Is(target error) bool { return target == ErrQuota }

// ErrorCode implements Coded.
func (e *QuotaError) ErrorCode() Code { return CodeQuota }

// Quotas bound what DINGs may cost. Days are UTC days.
type Quotas struct {
	// DingsPerSenderPerDay: zero means 200; negative means unlimited.
	DingsPerSenderPerDay int
	// RecipientInterval is the shortest time between two DINGs from one
	// sender to the same recipient; zero means 5 minutes, negative none.
	RecipientInterval time.Duration
	// SMSPerDay, CallsPerDay and EmailsPerDay are org-wide budgets; zero
	// means 10,000, 2,000 and 10,000; negative means unlimited. A step
	// over budget is skipped and recorded in the ledger.
	SMSPerDay, CallsPerDay, EmailsPerDay int
}

func (q *Quotas) setDefaults() {
	if q.DingsPerSenderPerDay == 0 {
		q.DingsPerSenderPerDay = 200
	}
	if q.RecipientInterval == 0 {
		q.RecipientInterval = 5 * time.Minute
	}
	if q.SMSPerDay == 0 {
		q.SMSPerDay = 10000
	}
	if q.CallsPerDay == 0 {
		q.CallsPerDay = 2000
	}
	if q.EmailsPerDay == 0 {
		q.EmailsPerDay = 10000
	}
}

// Contact is what an escalation needs to know about a user.
type Contact struct {
	Name  string     // display name, spoken and texted as the sender's name
	Phone string     // E.164, or empty; never logged
	Email string     // e-mail address, or empty; never logged
	Quiet QuietHours // zero: none
	// Department is the user's department id ("" for none), for the
	// statistics (rollup.go).
	Department string
}

// Contacts looks users up for escalations (package fanout implements it).
type Contacts interface {
	// Contact returns the user's contact details, or an error wrapping
	// ErrUnknownRecipient. Called concurrently; must not block on I/O.
	Contact(user string) (Contact, error)
}

// QuietHours is a daily window, in a time zone, during which a recipient
// is not DINGed unless the DING is critical.
type QuietHours struct {
	From, To int            // minutes after midnight; From == To means none
	Loc      *time.Location // nil means UTC
}

var quietRE = regexp.MustCompile(`^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})(?:\s+(\S+))?$`)

// ParseQuietHours parses "22:00-07:00" or "22:00-07:00 Europe/Berlin".
// The empty string means none.
func ParseQuietHours(s string) (QuietHours, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return QuietHours{}, nil
	}
	m := quietRE.FindStringSubmatch(s)
	if m == nil {
		return QuietHours{}, fmt.Errorf("quiet hours %q: want HH:MM-HH:MM [Zone]", s)
	}
	n := make([]int, 4)
	for i := range n {
		n[i], _ = strconv.Atoi(m[i+1])
	}
	if n[0] > 23 || n[2] > 23 || n[1] > 59 || n[3] > 59 {
		return QuietHours{}, fmt.Errorf("quiet hours %q: bad time", s)
	}
	q := QuietHours{From: n[0]*60 + n[1], To: n[2]*60 + n[3]}
	if m[5] != "" {
		loc, err := time.LoadLocation(m[5])
		if err != nil {
			return QuietHours{}, fmt.Errorf("quiet hours %q: unknown zone", s)
		}
		q.Loc = loc
	}
	return q, nil
}

// In reports whether t falls in the window, and when the window ends.
func (q QuietHours) In(t time.Time) (bool, time.Time) {
	if q.From == q.To {
		return false, time.Time{}
	}
	loc := q.Loc
	if loc == nil {
		loc = time.UTC
	}
	lt := t.In(loc)
	min := lt.Hour()*60 + lt.Minute()
	var in bool
	if q.From < q.To {
		in = min >= q.From && min < q.To
	} else {
		in = min >= q.From || min < q.To
	}
	if !in {
		return false, time.Time{}
	}
	end := time.Date(lt.Year(), lt.Month(), lt.Day(), q.To/60, q.To%60, 0, 0, loc)
	if !end.After(lt) {
		end = end.AddDate(0, 0, 1)
	}
	return true, end
}

// DingRequest is a DING as a sender asks for it.
type DingRequest struct {
	From string
	// To are user ids, or E.164 phone numbers of people outside the app
	// (who are reached by SMS and voice steps only).
	To   []string
	Text string
	// Policy is a policy in text form (see Policy); PolicyName names a
	// stored one. Both empty: the stored policy "default" if there is one,
	// else DefaultPolicy.
	Policy     string
	PolicyName string
	// Choices is an optional response menu, at most 9 entries.
	Choices []string
	// Critical DINGs ignore recipients' quiet hours.
	Critical bool
	// ClientID deduplicates retries, as for Submit.
	ClientID string
	// Audience, if not empty, is what the DING's message shows its
	// recipients as its "to" instead of To: targets ("all", "dept:ID",
	// "group:ID") or user ids, at most MaxRecipients. A re-DING of an
	// announcement gives the announcement's audience, so that no
	// recipient is handed the list of colleagues who have not confirmed.
	// Escalation, receipts and DingStatus always use To.
	Audience []string
}

// Refusal is a recipient a DING does not escalate to, and why. In JSON,
// retry_after is whole seconds (rounded up), as in HTTP's Retry-After.
type Refusal struct {
	Recipient  string        `json:"recipient"`
	Reason     string        `json:"reason"`
	RetryAfter time.Duration `json:"-"`
}

// MarshalJSON writes RetryAfter as retry_after, in seconds.
func (r Refusal) MarshalJSON() ([]byte, error) {
	type plain Refusal
	return json.Marshal(struct {
		plain
		RetryAfter int64 `json:"retry_after,omitempty"`
	}{plain(r), RetryAfterSeconds(r.RetryAfter)})
}

// RetryAfterSeconds is d in whole seconds, rounded up, as HTTP's
// Retry-After says it (and refused[].retry_after).
func RetryAfterSeconds(d time.Duration) int64 { return int64((d + time.Second - 1) / time.Second) }

// DingResult answers a durable DING.
type DingResult struct {
	ID        ID
	Created   time.Time
	Duplicate bool      // the ClientID was seen before; ID is the original
	Refused   []Refusal // recipients refused by a quota or quiet hours
}

// Recipient statuses.
const (
	StatusPending   = "pending"   // escalating, or waiting for a confirmation
	StatusRead      = "read"      // stopped: read, and the policy stops on read
	StatusConfirmed = "confirmed" // stopped: confirmed
	StatusCancelled = "cancelled" // stopped: the sender cancelled the DING
	StatusRefused   = "refused"   // never started: a quota or quiet hours
	StatusRemoved   = "removed"   // stopped: the recipient was offboarded
)

// LedgerKind names an event in a recipient's ledger.
type LedgerKind string

const (
	LedgerSent             LedgerKind = "sent"           // stored in the recipient's stream
	LedgerDelivered        LedgerKind = "delivered"      // a device acknowledged it (Device says which)
	LedgerRead             LedgerKind = "read"           // read on some device
	LedgerConfirmed        LedgerKind = "confirmed"      // confirmed; Channel says how, Detail the answer
	LedgerReminder         LedgerKind = "reminder"       // an in-app step after the first
	LedgerSending          LedgerKind = "sending"        // an SMS or call was decided (Detail: the attempt); the provider's answer follows
	LedgerSMSQueued        LedgerKind = "sms_queued"     // the provider accepted an SMS (Detail: its reference)
	LedgerSMSSent          LedgerKind = "sms_sent"       // carrier status
	LedgerSMSDelivered     LedgerKind = "sms_delivered"  // carrier status
	LedgerSMSFailed        LedgerKind = "sms_failed"     // carrier status, or refused by the provider
	LedgerCallInitiated    LedgerKind = "call_initiated" // the provider accepted a call (Detail: its reference)
	LedgerCallRinging      LedgerKind = "call_ringing"
	LedgerCallAnswered     LedgerKind = "call_answered"
	LedgerCallCompleted    LedgerKind = "call_completed"
	LedgerCallBusy         LedgerKind = "call_busy"
	LedgerCallNoAnswer     LedgerKind = "call_no_answer"
	LedgerCallFailed       LedgerKind = "call_failed"
	LedgerDigits           LedgerKind = "digits"            // keys pressed in a call (Detail)
	LedgerReply            LedgerKind = "reply"             // an SMS reply that did not confirm (Detail: its text)
	LedgerRetry            LedgerKind = "retry"             // a send's outcome was unknown; sending again (Detail: attempt)
	LedgerSendFailed       LedgerKind = "send_failed"       // gave up on a send after retries
	LedgerFallback         LedgerKind = "fallback"          // an SMS because a call failed
	LedgerQuotaRefused     LedgerKind = "quota_refused"     // Detail: the reason
	LedgerNotConfigured    LedgerKind = "not_configured"    // the channel has no provider
	LedgerNoPhone          LedgerKind = "no_phone"          // the recipient has no phone number
	LedgerEmailSent        LedgerKind = "email_sent"        // the mail server accepted an e-mail (Detail: its Message-ID)
	LedgerEmailFailed      LedgerKind = "email_failed"      // the mail server refused an e-mail or could not be reached (Detail: the SMTP code, and whether it is retried)
	LedgerNoEmail          LedgerKind = "no_email"          // an e-mail step for a recipient with no e-mail address
	LedgerPushSent         LedgerKind = "push_sent"         // the push providers accepted a DING's push for the recipient's devices (Detail: how many, and their references)
	LedgerPushFailed       LedgerKind = "push_failed"       // a push was refused or the providers could not be reached (Detail: the provider's answer, and whether it is retried)
	LedgerPushUnregistered LedgerKind = "push_unregistered" // every device's token was dead (the tokens were removed)
	LedgerPushOpened       LedgerKind = "push_opened"       // the app reported the notification opened (Device)
	LedgerNoPushDevice     LedgerKind = "no_push_device"    // a push step for a recipient with no registered device
	LedgerNoApp            LedgerKind = "no_app"            // an in-app step for a recipient outside the app
	LedgerExhausted        LedgerKind = "exhausted"         // nothing more to try: every step fired, every send's outcome known (Detail: why, if one never came); awaiting a confirmation
	LedgerCancelled        LedgerKind = "cancelled"
	LedgerRemoved          LedgerKind = "removed" // the recipient was offboarded
	LedgerSkipped          LedgerKind = "skipped" // an overdue step superseded by a later one on the same channel
)

// DingEvent is a ledger event as pushed to the sender's stream (and, for
// reminders, to the recipient's).
type DingEvent struct {
	ID        ID     // the DING
	Index     int    // the recipient's index in the DING
	Recipient string // user id or phone number
	Event     LedgerKind
	Channel   Channel // zero when not about a channel
	Device    string  // for deliveries
	Detail    string
	At        time.Time
}

// LedgerEvent is one event of a recipient's timeline.
type LedgerEvent struct {
	At      time.Time  `json:"at"`
	Event   LedgerKind `json:"event"`
	Channel string     `json:"channel,omitempty"`
	Device  string     `json:"device,omitempty"`
	Detail  string     `json:"detail,omitempty"`
}

// RecipientStatus is one recipient's escalation.
type RecipientStatus struct {
	Recipient string        `json:"recipient"`
	Status    string        `json:"status"`
	Answer    int           `json:"answer,omitempty"`     // chosen option, 1-based
	Choice    string        `json:"choice,omitempty"`     // its text
	ReachedBy string        `json:"reached_by,omitempty"` // the channel that read or confirmed
	Ended     *time.Time    `json:"ended,omitempty"`
	NextStep  *time.Time    `json:"next_step,omitempty"`
	Events    []LedgerEvent `json:"events"`
}

// DingStatus is a DING with every recipient's ledger.
type DingStatus struct {
	ID         ID                `json:"id"`
	From       string            `json:"from"`
	Created    time.Time         `json:"created"`
	Policy     string            `json:"policy"`
	Choices    []string          `json:"choices,omitempty"`
	Critical   bool              `json:"critical,omitempty"`
	Cancelled  bool              `json:"cancelled,omitempty"`
	Recipients []RecipientStatus `json:"recipients"`
}

// dingRecord is the stored DING (key 'g' | id), written once (binary,
// codec.go).
type dingRecord struct {
	From       string        `json:"from"`
	Created    int64         `json:"created"` // ms
	Policy     string        `json:"policy"`
	Plan       []plannedStep `json:"plan"`
	Until      Stop          `json:"until"`
	Choices    []string      `json:"choices,omitempty"`
	Critical   bool          `json:"critical,omitempty"`
	Recipients []string      `json:"to"`
}

// timerKind says what a timer does when it fires.
type timerKind uint8

const (
	timerStep timerKind = 1 // fire planned step Step, if it is still next
	timerSend timerKind = 2 // send on Ch (a retry or fallback); or, while Recover, redo a send whose outcome was never recorded
	// timerWait stands for a send the provider accepted (reference
	// Reason) and has not given a final status for yet (escalate.go,
	// exhaust); firing, it stops waiting. Not counted in PendingSteps:
	// it never sends anything.
	timerWait timerKind = 3
)

// timerRef is one of a recipient's pending timers, as its state lists it.
type timerRef struct {
	N       uint32    `json:"n"`   // unique per recipient; the last part of the timer key
	Due     int64     `json:"due"` // ms
	Kind    timerKind `json:"k"`
	Step    int       `json:"step,omitempty"`
	Ch      Channel   `json:"ch,omitempty"`
	Attempt int       `json:"att,omitempty"`
	Reason  string    `json:"why,omitempty"` // timerSend: why it sends ("retry"); timerWait: the provider reference awaited
	Recover bool      `json:"rec,omitempty"`
}

// rcptState is one recipient's escalation state (key 'e' | id | idx;
// binary, codec.go). Its fields are changed only through the methods in
// rcptstate.go, which mark it to be written.
type rcptState struct {
	Status     string     `json:"s"`
	User       bool       `json:"u,omitempty"` // a directory user (else a bare phone number)
	Phone      string     `json:"p,omitempty"`
	PhoneAt    int64      `json:"pat,omitempty"` // when the phone was last sent to (ms): the time in its phone key
	Next       int        `json:"next"`          // index of the next planned step
	Answer     int        `json:"ans,omitempty"`
	By         Channel    `json:"by,omitempty"`
	Ended      int64      `json:"end,omitempty"` // ms
	Dept       string     `json:"d,omitempty"`   // the recipient's department when the DING was sent (statistics)
	Unanswered bool       `json:"un,omitempty"`  // counted as unanswered (every step fired); undone by a later stop
	LedgerN    uint32     `json:"ln"`
	TimerN     uint32     `json:"tn"`
	Timers     []timerRef `json:"t,omitempty"`

	// Not stored: see rcptstate.go.
	dirty  bool   // changed in this batch, so written at flush
	loaded []byte // the record it was decoded from; kept in race builds only
}

var phoneRE = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)

// ValidPhone reports whether s is an E.164 phone number.
func ValidPhone(s string) bool { return phoneRE.MatchString(s) }

// Key helpers for DINGs (layout in keys.go and doc.go).

func dingKey(id ID) []byte { return append([]byte{prefixDing}, id[:]...) }

func rcptPrefix(id ID) []byte { return append([]byte{prefixDingRcpt}, id[:]...) }

func rcptKey(id ID, idx int) []byte {
	return binary.BigEndian.AppendUint16(rcptPrefix(id), uint16(idx))
}

func ledgerPrefix(id ID, idx int) []byte {
	return binary.BigEndian.AppendUint16(append([]byte{prefixLedger}, id[:]...), uint16(idx))
}

func ledgerKey(id ID, idx int, n uint32) []byte {
	return binary.BigEndian.AppendUint32(ledgerPrefix(id, idx), n)
}

func timerKey(due int64, id ID, idx int, n uint32) []byte {
	k := make([]byte, 0, 31)
	k = append(k, prefixTimer)
	k = binary.BigEndian.AppendUint64(k, uint64(due))
	k = append(k, id[:]...)
	k = binary.BigEndian.AppendUint16(k, uint16(idx))
	return binary.BigEndian.AppendUint32(k, n)
}

func parseTimerKey(k []byte) (due int64, id ID, idx int, n uint32, err error) {
	if len(k) != 31 || k[0] != prefixTimer {
		return 0, id, 0, 0, ErrCorrupt
	}
	due = int64(binary.BigEndian.Uint64(k[1:]))
	copy(id[:], k[9:25])
	return due, id, int(binary.BigEndian.Uint16(k[25:])), binary.BigEndian.Uint32(k[27:]), nil
}

func pendingUserPrefix(user string) []byte {
	return append(append([]byte{prefixPendingU}, user...), 0)
}

func pendingUserKey(user string, id ID, idx int) []byte {
	return binary.BigEndian.AppendUint16(append(pendingUserPrefix(user), id[:]...), uint16(idx))
}

func phonePrefix(phone string) []byte {
	return append(append([]byte{prefixPhone}, phone...), 0)
}

func phoneKey(phone string, at int64, id ID, idx int) []byte {
	k := binary.BigEndian.AppendUint64(phonePrefix(phone), uint64(at))
	return binary.BigEndian.AppendUint16(append(k, id[:]...), uint16(idx))
}

func refKey(ref string) []byte { return append([]byte{prefixRef}, ref...) }

// refValue: id(16) | idx(2) | channel(1) | attempt(1)
func refValue(id ID, idx int, ch Channel, attempt int) []byte {
	v := append(id[:0:0], id[:]...)
	v = binary.BigEndian.AppendUint16(v, uint16(idx))
	return append(v, byte(ch), byte(min(attempt, 255)))
}

func parseRefValue(v []byte) (id ID, idx int, ch Channel, attempt int, err error) {
	if len(v) != 20 {
		return id, 0, 0, 0, ErrCorrupt
	}
	copy(id[:], v)
	return id, int(binary.BigEndian.Uint16(v[16:])), Channel(v[18]), int(v[19]), nil
}

func quotaKey(kind byte, scope, sub string) []byte {
	k := append([]byte{prefixQuota, kind}, scope...)
	k = append(k, 0)
	return append(k, sub...)
}

func policyKey(name string) []byte { return append([]byte{prefixPolicy}, name...) }

var timersCounterKey = []byte{prefixCounter, 't', 'i', 'm', 'e', 'r', 's'}

func utcDay(t time.Time) string { return t.UTC().Format("20060102") }

// Budget shares the org's daily budget of a channel between engines
// (Config.Budget). Each engine still counts its own sends, in its store;
// the Budget holds the org's count.
type Budget interface {
	// Take counts one send of ch on day (UTC, as "20060102") and reports
	// whether the org's count stays within limit; false counts nothing.
	// It is called on the commit loop, so it must answer quickly. A send
	// it granted may still not be made (its batch failed): a Budget may
	// over-count by that, never under-count.
	Take(ch Channel, day string, limit int) bool
}

// BudgetUsed returns how many sends of ch the engine on st counted
// against the org's budget on day (UTC, as "20060102"), as durable in st:
// what a Budget shared by several engines starts from (Config.Budget).
// st may be read before its engine is open.
func BudgetUsed(st store.Store, ch Channel, day string) (uint64, error) {
	v, err := st.Get(quotaKey('b', ch.String(), day))
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return parseU64(v)
}

// Ding validates r and sends it: the message goes to the users' streams,
// every recipient's escalation starts, and the answer comes once all of it
// is durable. Quota and quiet-hours refusals of single recipients are in
// the result; if every recipient is refused, or the sender is over their
// daily quota, the error is a *QuotaError (errors.Is ErrQuota).
func (e *Engine) Ding(ctx context.Context, r DingRequest) (DingResult, error) {
	req, err := e.checkDing(r)
	if err != nil {
		e.metrics.dings.WithLabelValues("invalid").Inc()
		return DingResult{}, err
	}
	type answer struct {
		res DingResult
		err error
	}
	ch := make(chan answer, 1)
	var res DingResult // written by the commit loop; read only after done
	e.applyAsync(func(c *txn, now time.Time) error {
		var err error
		res, err = c.applyDing(req, now)
		return err
	}, func(err error) { ch <- answer{res, err} })
	select {
	case a := <-ch:
		res, err = a.res, a.err
	case <-ctx.Done():
		return DingResult{}, ctx.Err()
	}
	switch {
	case err == nil && res.Duplicate:
		e.metrics.dings.WithLabelValues("duplicate").Inc()
	case err == nil:
		e.metrics.dings.WithLabelValues("created").Inc()
	case errors.Is(err, ErrQuota):
		e.metrics.dings.WithLabelValues("refused").Inc()
	}
	return res, err
}

// dingReq is a checked DingRequest.
type dingReq struct {
	DingRequest
	policy   Policy
	policyID string    // text form, for the record
	contacts []Contact // per recipient; zero for phone numbers
}

func (e *Engine) checkDing(r DingRequest) (*dingReq, error) {
	if err := CheckName("sender", r.From); err != nil {
		return nil, err
	}
	if err := e.checkHome(r.From); err != nil {
		return nil, err
	}
	switch {
	case strings.TrimSpace(r.Text) == "":
		return nil, fmt.Errorf("%w: no text", ErrBadDing)
	case len(r.Text) > e.cfg.MaxBody:
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(r.Text), e.cfg.MaxBody)
	case len(r.To) == 0:
		return nil, ErrNoRecipients
	case len(r.To) > min(e.cfg.MaxRecipients, 1<<16-1):
		return nil, fmt.Errorf("%w: %d, limit %d", ErrTooManyRecipients, len(r.To), min(e.cfg.MaxRecipients, 1<<16-1))
	case len(r.Choices) > 9:
		return nil, fmt.Errorf("%w: at most 9 choices", ErrBadDing)
	case len(r.ClientID) > 128:
		return nil, fmt.Errorf("%w: client message id longer than 128 bytes", ErrBadName)
	case r.Policy != "" && r.PolicyName != "":
		return nil, fmt.Errorf("%w: give a policy or a policy name, not both", ErrBadPolicy)
	}
	for _, c := range r.Choices {
		if strings.TrimSpace(c) == "" || len(c) > 64 {
			return nil, fmt.Errorf("%w: a choice must have 1 to 64 bytes", ErrBadDing)
		}
	}
	if len(r.Audience) > e.cfg.MaxRecipients {
		return nil, fmt.Errorf("%w: audience of %d, limit %d", ErrBadDing, len(r.Audience), e.cfg.MaxRecipients)
	}
	for _, t := range r.Audience {
		if t != AllStaff && !targetRE.MatchString(t) && !ValidName(t) {
			return nil, fmt.Errorf("%w: audience %q is neither a target nor a user id", ErrBadDing, t)
		}
	}
	q := &dingReq{DingRequest: r}
	q.To = slices.Clone(r.To)
	slices.Sort(q.To)
	q.To = slices.Compact(q.To)
	q.contacts = make([]Contact, len(q.To))
	for i, to := range q.To {
		switch {
		case strings.HasPrefix(to, "+"):
			if !ValidPhone(to) {
				return nil, fmt.Errorf("%w: recipient %q is neither a user id nor an E.164 phone number", ErrBadDing, to)
			}
		default:
			if err := CheckName("recipient", to); err != nil {
				return nil, err
			}
			if e.cfg.Contacts != nil {
				c, err := e.cfg.Contacts.Contact(to)
				if err != nil {
					return nil, err
				}
				q.contacts[i] = c
			}
		}
	}
	var err error
	switch {
	case r.Policy != "":
		q.policy, err = ParsePolicy(r.Policy)
	case r.PolicyName != "":
		q.policy, err = e.Policy(r.PolicyName)
	default:
		q.policy, err = e.Policy("default")
		if errors.Is(err, ErrNotFound) {
			q.policy, err = DefaultPolicy, nil
			if e.cfg.PushConfigured {
				q.policy = DefaultPushPolicy
			}
		}
	}
	if err != nil {
		return nil, err
	}
	q.policyID = q.policy.String()
	return q, nil
}

// SetPolicy stores a named policy (replacing one of the same name).
func (e *Engine) SetPolicy(ctx context.Context, name string, p Policy) error {
	if err := CheckName("policy", name); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	return e.apply(ctx, func(c *txn, now time.Time) error {
		c.batch.Set(policyKey(name), []byte(p.String()))
		return nil
	})
}

// Policy returns a stored policy, or ErrNotFound.
func (e *Engine) Policy(name string) (Policy, error) {
	v, err := e.st.Get(policyKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return Policy{}, fmt.Errorf("%w: policy %q", ErrNotFound, name)
	}
	if err != nil {
		return Policy{}, err
	}
	return ParsePolicy(string(v))
}

// Policies returns every stored policy by name.
func (e *Engine) Policies() (map[string]Policy, error) {
	out := map[string]Policy{}
	p := []byte{prefixPolicy}
	var perr error
	err := e.st.Scan(p, prefixEnd(p), func(k, v []byte) bool {
		pol, err := ParsePolicy(string(v))
		if err != nil {
			perr = fmt.Errorf("policy %q: %w", k[1:], err)
			return false
		}
		out[string(k[1:])] = pol
		return true
	})
	if err == nil {
		err = perr
	}
	return out, err
}

// Confirm records that user confirmed DING id in the app, with an answer
// (a 1-based choice; 0 for none, allowed only when the DING has no
// choices or the answer is not needed). It stops the user's escalation
// and marks the DING read and confirmed for the sender. Confirming a DING
// the user already confirmed (from any device, by SMS or in a call)
// succeeds and changes nothing; ConfirmAsync's result says so.
func (e *Engine) Confirm(ctx context.Context, user string, id ID, answer int) error {
	return wait(ctx, func(done func(error)) {
		e.ConfirmAsync(user, id, answer, func(_ ConfirmResult, err error) { done(err) })
	})
}

// ConfirmResult is the confirmation that stands after a Confirm.
type ConfirmResult struct {
	// Already is true when the Confirm changed nothing because the user
	// had confirmed before; the fields below are then that earlier
	// confirmation, and the Confirm's answer was ignored. Otherwise they
	// are the Confirm's own.
	Already bool
	Answer  int     // 1-based choice; 0 for none
	Choice  string  // its text; "" for 0
	By      Channel // how it was confirmed: in the app, by an SMS reply, by a keypress in a call
	At      time.Time
}

// ConfirmAsync is Confirm that does not wait and says whether the
// confirmation counted: done is called once, on the commit loop, when the
// confirmation is durable (or found already made) or has failed. It must
// not block.
func (e *Engine) ConfirmAsync(user string, id ID, answer int, done func(ConfirmResult, error)) {
	if done == nil {
		done = func(ConfirmResult, error) {}
	}
	var res ConfirmResult // written by the commit loop; read only in done
	e.enqueueFor(user, func(c *txn) error {
		var err error
		res, err = c.applyConfirmUser(user, id, answer, ChannelInApp, c.now)
		return err
	}, func(err error) {
		if err != nil {
			res = ConfirmResult{}
		}
		done(res, err)
	}, 1)
}

// ConfirmByLink records that recipient idx of DING id confirmed it with
// answer through a link of an e-mail step, which the caller (package
// channels/email) has checked: the normal confirmation, recorded as by
// ChannelEmail. The DING must be one of this engine's (in a node of
// several partitions, ask its home). As with Confirm, a recipient who
// had already confirmed, by any channel, changes nothing and the result
// says Already. ErrNotFound: no such DING; ErrNotRecipient: no such
// recipient, or one refused; ErrBadAnswer: no such choice.
func (e *Engine) ConfirmByLink(ctx context.Context, id ID, idx, answer int) (ConfirmResult, error) {
	var res ConfirmResult // written by the commit loop; read only once the op has answered
	err := e.apply(ctx, func(c *txn, now time.Time) error {
		var err error
		res, err = c.applyConfirmLink(id, idx, answer, now)
		return err
	})
	if err != nil {
		return ConfirmResult{}, err
	}
	return res, nil
}

// CancelDing stops every pending recipient's escalation and returns how
// many it stopped: 0 when every recipient had already ended (confirmed,
// read, refused, removed or cancelled before), which changes nothing.
// ErrNotFound: no such DING.
func (e *Engine) CancelDing(ctx context.Context, id ID) (int, error) {
	stopped := 0 // read only once the op has answered
	err := e.apply(ctx, func(c *txn, now time.Time) error {
		var err error
		stopped, err = c.applyCancel(id, now)
		return err
	})
	if err != nil {
		return 0, err // maybe ctx's: the op may still run, so stopped is not read
	}
	return stopped, nil
}

// ProviderStatus records what the provider reports about the SMS or call
// with reference ref. It returns ErrNotFound for an unknown reference.
func (e *Engine) ProviderStatus(ctx context.Context, ref string, ev ProviderEvent, detail string) error {
	return e.awaitRef(ctx, func() error {
		return e.apply(ctx, func(c *txn, now time.Time) error { return c.applyProviderStatus(ref, ev, detail, now) })
	})
}

// ProviderDigits records keys pressed in the call ref. A valid answer
// confirms; anything else returns ErrBadAnswer. ErrNotFound: unknown call.
func (e *Engine) ProviderDigits(ctx context.Context, ref, digits string) error {
	return e.awaitRef(ctx, func() error {
		return e.apply(ctx, func(c *txn, now time.Time) error { return c.applyDigits(ref, digits, now) })
	})
}

// InboundSMS handles an SMS from phone: "1", "OK", "yes", "收到" or a
// choice's number confirms the newest pending DING for that phone.
// ErrNotFound: nothing is pending for that phone. ErrBadAnswer: the text
// was recorded in the ledger but did not confirm.
func (e *Engine) InboundSMS(ctx context.Context, phone, body string) error {
	if !ValidPhone(phone) {
		return fmt.Errorf("%w: sender is not an E.164 number", ErrNotFound)
	}
	return e.apply(ctx, func(c *txn, now time.Time) error { return c.applyInboundSMS(phone, body, now) })
}

// PhonePendingAt returns when a step of a DING pending here was last sent
// to phone, the DING an SMS reply from it would confirm (InboundSMS), and
// false if none is pending here. A node with several partitions asks
// each and gives the reply to the newest. Safe for concurrent use; the
// answer may be stale by the time InboundSMS runs, which decides again.
func (e *Engine) PhonePendingAt(phone string) (time.Time, bool, error) {
	if !ValidPhone(phone) {
		return time.Time{}, false, nil
	}
	p := phonePrefix(phone)
	k, _, err := e.st.Last(p, prefixEnd(p))
	if errors.Is(err, store.ErrNotFound) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, err
	}
	if len(k) != len(p)+26 {
		return time.Time{}, false, ErrCorrupt
	}
	return time.UnixMilli(int64(binary.BigEndian.Uint64(k[len(p):]))), true, nil
}

// StopUser stops every pending escalation to user (who was offboarded),
// recording it in each ledger. It returns how many it stopped. Offboard
// does this in the same batch as the directory's change.
func (e *Engine) StopUser(ctx context.Context, user string) (int, error) {
	stopped := 0 // read only once the op has answered
	err := e.apply(ctx, func(c *txn, now time.Time) error {
		var err error
		stopped, err = c.stopUser(user, now)
		return err
	})
	if err != nil {
		return 0, err // maybe ctx's: the op may still run, so stopped is not read
	}
	return stopped, nil
}

// stopUser stops every pending escalation to user: those the store has
// ('v' keys) and those this batch started.
func (c *txn) stopUser(user string, now time.Time) (int, error) {
	type ref struct {
		id  ID
		idx int
	}
	var refs []ref
	p := pendingUserPrefix(user)
	err := c.e.st.Scan(p, prefixEnd(p), func(k, _ []byte) bool {
		if len(k) == len(p)+18 {
			var r ref
			copy(r.id[:], k[len(p):])
			r.idx = int(binary.BigEndian.Uint16(k[len(k)-2:]))
			refs = append(refs, r)
		}
		return true
	})
	if err != nil {
		return 0, abort(fmt.Errorf("pending DINGs of %s: %w", user, err))
	}
	for id, rec := range c.drecs { // DINGs of this batch are not in the store yet
		for idx, to := range rec.Recipients {
			if to == user && !slices.Contains(refs, ref{id, idx}) {
				refs = append(refs, ref{id, idx})
			}
		}
	}
	stopped := 0
	for _, r := range refs {
		rec, err := c.ding(r.id)
		if err != nil {
			return stopped, abort(err)
		}
		s, err := c.state(r.id, r.idx)
		if err != nil {
			return stopped, abort(err)
		}
		c.batch.Delete(pendingUserKey(user, r.id, r.idx))
		if s.Status != StatusPending {
			continue
		}
		if err := c.ledger(r.id, r.idx, s, rec, DingEvent{Event: LedgerRemoved, At: now}); err != nil {
			return stopped, err
		}
		c.stop(r.id, r.idx, s, rec, StatusRemoved, 0, now)
		stopped++
	}
	return stopped, nil
}

// DingStatus returns a DING with each recipient's state and ledger.
func (e *Engine) DingStatus(id ID) (*DingStatus, error) {
	rec, err := e.loadDing(id)
	if err != nil {
		return nil, err
	}
	ds := &DingStatus{
		ID: id, From: rec.From, Created: time.UnixMilli(rec.Created), Policy: rec.Policy,
		Choices: rec.Choices, Critical: rec.Critical,
	}
	ds.Recipients = make([]RecipientStatus, len(rec.Recipients))
	for i, to := range rec.Recipients {
		rs := &ds.Recipients[i]
		rs.Recipient = to
		s, err := e.loadState(id, i)
		if err != nil {
			return nil, err
		}
		rs.Status, rs.Answer, rs.Choice = s.Status, s.Answer, choiceOf(rec, s.Answer)
		if s.By != 0 {
			rs.ReachedBy = s.By.String()
		}
		if s.Ended != 0 {
			t := time.UnixMilli(s.Ended)
			rs.Ended = &t
		}
		for _, t := range s.Timers {
			if t.Kind == timerStep {
				due := time.UnixMilli(t.Due)
				rs.NextStep = &due
			}
		}
		if s.Status == StatusCancelled {
			ds.Cancelled = true
		}
		p := ledgerPrefix(id, i)
		rs.Events = []LedgerEvent{}
		var derr error
		err = e.st.Scan(p, prefixEnd(p), func(k, v []byte) bool {
			var ev LedgerEvent
			if derr = decodeLedgerEvent(v, &ev); derr != nil {
				return false
			}
			rs.Events = append(rs.Events, ev)
			return true
		})
		if err == nil {
			err = derr
		}
		if err != nil {
			return nil, fmt.Errorf("engine: ledger %s/%d: %w", id, i, err)
		}
	}
	return ds, nil
}

// DingSummary is one line of a DING listing.
type DingSummary struct {
	ID         ID        `json:"id"`
	From       string    `json:"from"`
	Created    time.Time `json:"created"`
	Recipients int       `json:"recipients"`
}

// Dings lists DINGs oldest first, after the id after (zero for the
// start), from sender (empty for all), at most limit.
func (e *Engine) Dings(sender string, after ID, limit int) ([]DingSummary, error) {
	start := dingKey(after)
	if after != (ID{}) {
		start = append(start, 0) // strictly after
	}
	var out []DingSummary
	var derr error
	err := e.st.Scan(start, []byte{prefixDing + 1}, func(k, v []byte) bool {
		var rec dingRecord
		if err := decodeDingRecord(v, &rec); err != nil {
			derr = fmt.Errorf("engine: ding %x: %w", k[1:], err)
			return false
		}
		if sender != "" && rec.From != sender {
			return true
		}
		var id ID
		copy(id[:], k[1:])
		out = append(out, DingSummary{ID: id, From: rec.From, Created: time.UnixMilli(rec.Created), Recipients: len(rec.Recipients)})
		return len(out) < limit
	})
	if err == nil {
		err = derr
	}
	return out, err
}

// PendingSteps returns how many escalation timers are pending: planned
// steps, sends to make or retry (not the waits for a provider's final
// status, which send nothing).
func (e *Engine) PendingSteps() int64 { return e.pendingTimers.Load() }

func (e *Engine) loadDing(id ID) (*dingRecord, error) {
	v, err := e.st.Get(dingKey(id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: ding %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("engine: ding %s: %w", id, err)
	}
	rec := &dingRecord{}
	if err := decodeDingRecord(v, rec); err != nil {
		return nil, fmt.Errorf("engine: ding %s: %w", id, ErrCorrupt)
	}
	return rec, nil
}

// loadState reads a recipient's state from the store. In race builds it
// keeps the record, for flushStates' check that a state not marked as
// changed did not change (rcptstate.go).
func (e *Engine) loadState(id ID, idx int) (*rcptState, error) {
	v, err := e.st.Get(rcptKey(id, idx))
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: ding %s recipient %d", ErrNotFound, id, idx)
	}
	if err != nil {
		return nil, err
	}
	s := &rcptState{}
	if err := decodeRcptState(v, s); err != nil {
		return nil, fmt.Errorf("engine: ding %s recipient %d: %w", id, idx, ErrCorrupt)
	}
	if raceBuild {
		s.loaded = v
	}
	return s, nil
}
