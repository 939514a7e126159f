package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// Statistics for admins.
//
// Every event that a statistic counts updates a daily rollup in the same
// commit batch as the event itself, so the rollups are exactly as durable
// as what they count and a restart changes nothing:
//
//	rollup      'z' | day (4) | department          -> Rollup (binary, encodeRollup): one per UTC day and department
//	unanswered  'Z' | day (4) | user                -> count (8): that user's unanswered DINGs sent that day
//	announcement 'n' | id (16)                      -> AnnouncementCounts (binary, codec.go)
//
// day is days since 1970-01-01 (UTC). Attribution: messages (not DINGs,
// which have their own counts), their deliveries and reads count for the
// sender's department on the day the message was sent; DINGs sent for the sender's department; each DING
// recipient's outcome, time to read and to confirm, and the SMS and calls
// sent to them, for the recipient's department (phone numbers outside the
// app under department ""), on the DING's day (sends: the day they are
// made). A department is the one the user had when the event happened.
//
// A query reads one key per day and department in the range, one per
// announcement in the range, and the unanswered keys of the range: a year
// of a company with 100 departments is 36,500 small rollups.

// Outcome names of DING recipients, as Rollup.Outcomes keys.
const (
	OutcomeReadInApp      = "read_inapp"
	OutcomeConfirmedInApp = "confirmed_inapp"
	OutcomeConfirmedSMS   = "confirmed_sms"
	OutcomeConfirmedVoice = "confirmed_voice"
	OutcomeUnanswered     = "unanswered" // every step fired, not confirmed (yet)
	OutcomeCancelled      = "cancelled"
	OutcomeRemoved        = "removed"
	OutcomeRefused        = "refused"
)

// latencyBuckets are the upper bounds (seconds) of the time-to-read and
// time-to-confirm histograms kept per rollup; the last bucket is open.
var latencyBuckets = []float64{1, 2, 5, 10, 15, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600, 7200, 14400, 28800, 86400, math.Inf(1)}

// Rollup is one day's counts for one department.
type Rollup struct {
	MessagesSent      uint64            `json:"messages_sent,omitempty"`
	MessagesDelivered uint64            `json:"messages_delivered,omitempty"` // recipients reached
	MessagesRead      uint64            `json:"messages_read,omitempty"`      // recipients who read
	DingsSent         uint64            `json:"dings_sent,omitempty"`
	DingRecipients    uint64            `json:"ding_recipients,omitempty"`
	Outcomes          map[string]uint64 `json:"outcomes,omitempty"`
	TimeToRead        []uint32          `json:"time_to_read,omitempty"`    // counts per latencyBuckets
	TimeToConfirm     []uint32          `json:"time_to_confirm,omitempty"` // counts per latencyBuckets
	SMS               uint64            `json:"sms,omitempty"`
	Calls             uint64            `json:"calls,omitempty"`
	Announcements     uint64            `json:"announcements,omitempty"`
}

func (r *Rollup) outcome(name string, delta int64) {
	if r.Outcomes == nil {
		r.Outcomes = map[string]uint64{}
	}
	v := max(0, int64(r.Outcomes[name])+delta) // a move from an outcome never counted here stops at 0
	if v == 0 {
		delete(r.Outcomes, name)
		return
	}
	r.Outcomes[name] = uint64(v)
}

func observe(h *[]uint32, seconds float64) {
	if len(*h) == 0 {
		*h = make([]uint32, len(latencyBuckets))
	}
	i := sort.SearchFloat64s(latencyBuckets, seconds)
	(*h)[min(i, len(latencyBuckets)-1)]++
}

func (r *Rollup) add(o *Rollup) {
	r.MessagesSent += o.MessagesSent
	r.MessagesDelivered += o.MessagesDelivered
	r.MessagesRead += o.MessagesRead
	r.DingsSent += o.DingsSent
	r.DingRecipients += o.DingRecipients
	for k, v := range o.Outcomes {
		r.outcome(k, int64(v))
	}
	for _, p := range [][2]*[]uint32{{&r.TimeToRead, &o.TimeToRead}, {&r.TimeToConfirm, &o.TimeToConfirm}} {
		if len(*p[1]) == 0 {
			continue
		}
		if len(*p[0]) == 0 {
			*p[0] = make([]uint32, len(latencyBuckets))
		}
		for i, v := range *p[1] {
			(*p[0])[i] += v
		}
	}
	r.SMS += o.SMS
	r.Calls += o.Calls
	r.Announcements += o.Announcements
}

// AnnouncementCounts are an announcement's counts, kept as receipts move.
type AnnouncementCounts struct {
	From      string   `json:"from"`
	To        []string `json:"to"`
	Created   int64    `json:"created"` // ms
	Confirm   bool     `json:"confirm,omitempty"`
	Total     uint64   `json:"total"`
	Delivered uint64   `json:"delivered"`
	Read      uint64   `json:"read"`
	Confirmed uint64   `json:"confirmed"`
}

func dayOf(t time.Time) uint32 { return uint32(t.UTC().Unix() / 86400) }

func rollupKey(day uint32, dept string) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{prefixRollup}, day), dept...)
}

func unansweredKey(day uint32, user string) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{prefixUnanswered}, day), user...)
}

func announcementKey(id ID) []byte { return append([]byte{prefixAnnouncement}, id[:]...) }

// statsTx is the statistics' per-batch overlay; all of it is written at
// flush.
type statsTx struct {
	rollups  map[rollupID]*Rollup
	depts    map[string]string // user -> department, looked up this batch
	anns     map[ID]*AnnouncementCounts
	annsWas  map[ID]AnnouncementCounts // as stored before this batch, for webhooks' thresholds (hookAnnouncement)
	statsErr error                     // a rollup could not be read: the op that touched it aborts rather than overwrite it
}

func newStatsTx() statsTx {
	return statsTx{rollups: map[rollupID]*Rollup{}, depts: map[string]string{}, anns: map[ID]*AnnouncementCounts{}}
}

func (s *statsTx) flush(c *txn) error {
	c.flushRollups()
	return nil
}

func (s *statsTx) reset() {
	clear(s.rollups)
	clear(s.depts)
	clear(s.anns)
	clear(s.annsWas)
	s.statsErr = nil
}

// deptOf returns a user's department ("" if unknown or none).
// Departments are looked up once per user and batch: an ack or a read
// covering many messages from one sender asks once.
func (c *txn) deptOf(user string) string {
	if d, ok := c.depts[user]; ok {
		return d
	}
	d := ""
	if c.e.cfg.Contacts != nil {
		if ct, err := c.e.cfg.Contacts.Contact(user); err == nil {
			d = ct.Department
		}
	}
	c.depts[user] = d
	return d
}

// rollupID names a rollup in the batch overlay; its store key is built
// only when the batch is written.
type rollupID struct {
	day  uint32
	dept string
}

// rollup returns the rollup of day and dept as this batch sees it; every
// rollup touched is written back at commit.
func (c *txn) rollup(day uint32, dept string) *Rollup {
	k := rollupID{day, dept}
	if r, ok := c.rollups[k]; ok {
		return r
	}
	r := &Rollup{}
	if v, err := c.e.st.Get(rollupKey(day, dept)); err == nil {
		if decodeRollup(v, r) != nil {
			// Leave the record as it is for inspection: this batch's
			// counts for it are dropped (a scratch rollup, never written).
			c.e.log.Error("statistics: corrupt rollup left as is; its counts are not updated", "day", day, "department", dept)
			return &Rollup{}
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		// Never write a rollup we could not read: abort the batch.
		c.statsErr = fmt.Errorf("statistics: read rollup: %w", err)
		return &Rollup{}
	}
	c.rollups[k] = r
	return r
}

// announcement returns an announcement's counts as this batch sees them,
// or nil if it has none.
func (c *txn) announcement(id ID) *AnnouncementCounts {
	if a, ok := c.anns[id]; ok {
		return a
	}
	v, err := c.e.st.Get(announcementKey(id))
	a := &AnnouncementCounts{}
	if err != nil || decodeAnnouncementCounts(v, a) != nil {
		c.anns[id] = nil // remember the miss for the rest of the batch
		return nil
	}
	c.anns[id] = a
	if c.hookWants(HookAnnouncementRead) || c.hookWants(HookAnnouncementConfirmed) {
		if c.annsWas == nil {
			c.annsWas = map[ID]AnnouncementCounts{}
		}
		c.annsWas[id] = *a
	}
	return a
}

func (c *txn) unanswered(day uint32, user string, delta int64) {
	k := unansweredKey(day, user)
	n, err := c.u64(c.quota, string(k), k)
	if err != nil {
		return
	}
	v := uint64(max(0, int64(n)+delta))
	c.quota[string(k)] = v
	if v == 0 {
		c.batch.Delete(k)
		return
	}
	c.batch.Set(k, u64(v))
}

// flushRollups writes every rollup and announcement count this batch
// touched. Every caller of rollup and announcement counts something in
// what it gets, so none is written back unchanged.
func (c *txn) flushRollups() {
	for k, r := range c.rollups {
		c.batch.Set(rollupKey(k.day, k.dept), encodeRollup(r))
	}
	for id, a := range c.anns {
		if a == nil {
			continue // looked up, not an announcement with counts
		}
		c.batch.Set(announcementKey(id), encodeAnnouncementCounts(a))
		if was, ok := c.annsWas[id]; ok {
			c.hookAnnouncement(id, &was, a)
		}
	}
}

// countDelivered and countRead record a recipient's receipt moving to
// delivered or read for message id from sender (announcement: whether it
// is one).
func (c *txn) countDelivered(id ID, sender string, announcement bool) {
	if announcement {
		if a := c.announcement(id); a != nil {
			a.Delivered++
		}
		return
	}
	c.rollup(dayOf(id.Time()), c.deptOf(sender)).MessagesDelivered++
}

func (c *txn) countRead(id ID, sender string, announcement, wasDelivered bool) {
	if announcement {
		if a := c.announcement(id); a != nil {
			a.Read++
			if !wasDelivered {
				a.Delivered++
			}
		}
		return
	}
	r := c.rollup(dayOf(id.Time()), c.deptOf(sender))
	r.MessagesRead++
	if !wasDelivered {
		r.MessagesDelivered++
	}
}

// StatsQuery asks for statistics over [From, To] (whole UTC days).
type StatsQuery struct {
	From, To time.Time
	// Departments, if not empty, keeps only these departments' rows
	// (the totals still cover them only).
	Departments []string
	// Top is how many of the people who most often leave DINGs unanswered
	// to list; zero means 10.
	Top int
}

// Percentiles are a latency's median and 90th percentile, in seconds,
// estimated from histogram buckets (the bucket's upper bound).
type Percentiles struct {
	Count  uint64  `json:"count"`
	Median float64 `json:"median_seconds"`
	P90    float64 `json:"p90_seconds"`
}

// DepartmentStats is one department's statistics over the range.
type DepartmentStats struct {
	Department    string      `json:"department"`
	Totals        Rollup      `json:"counts"`
	TimeToRead    Percentiles `json:"time_to_read"`
	TimeToConfirm Percentiles `json:"time_to_confirm"`
	Pending       uint64      `json:"dings_pending"` // recipients with no outcome yet
}

// UserCount is a user and a count.
type UserCount struct {
	User  string `json:"user"`
	Count uint64 `json:"count"`
}

// AnnouncementStat is an announcement in the range with its read ratio.
type AnnouncementStat struct {
	ID ID `json:"id"`
	AnnouncementCounts
	Created   time.Time `json:"created"` // RFC 3339 (the counts hold it in ms)
	ReadRatio float64   `json:"read_ratio"`
}

// AdminStats answers a StatsQuery.
type AdminStats struct {
	From           time.Time          `json:"from"`
	To             time.Time          `json:"to"`
	Departments    []DepartmentStats  `json:"departments"`
	Total          DepartmentStats    `json:"total"`
	Announcements  []AnnouncementStat `json:"announcements"`
	SMSBudget      uint64             `json:"sms_budget"`   // the org's SMS budget over the range (0: unlimited)
	CallsBudget    uint64             `json:"calls_budget"` // likewise for calls
	TopUnanswered  []UserCount        `json:"top_unanswered"`
	RollupsScanned int                `json:"rollups_scanned"`
}

func percentiles(h []uint32) Percentiles {
	var n uint64
	for _, v := range h {
		n += uint64(v)
	}
	p := Percentiles{Count: n}
	if n == 0 {
		return p
	}
	at := func(q float64) float64 {
		target := uint64(math.Ceil(q * float64(n)))
		var cum uint64
		for i, v := range h {
			cum += uint64(v)
			if cum >= target {
				if math.IsInf(latencyBuckets[i], 1) {
					return latencyBuckets[i-1]
				}
				return latencyBuckets[i]
			}
		}
		return latencyBuckets[len(latencyBuckets)-2]
	}
	p.Median, p.P90 = at(0.5), at(0.9)
	return p
}

func finish(d *DepartmentStats) {
	d.TimeToRead = percentiles(d.Totals.TimeToRead)
	d.TimeToConfirm = percentiles(d.Totals.TimeToConfirm)
	var done uint64
	for _, v := range d.Totals.Outcomes {
		done += v
	}
	done -= d.Totals.Outcomes[OutcomeUnanswered] // still waiting, too
	done -= d.Totals.Outcomes[OutcomeRefused]    // never counted as recipients
	if d.Totals.DingRecipients > done {
		d.Pending = d.Totals.DingRecipients - done
	}
	d.Totals.TimeToRead, d.Totals.TimeToConfirm = nil, nil
}

// AdminStats computes statistics from the stored rollups.
func (e *Engine) AdminStats(q StatsQuery) (*AdminStats, error) {
	if q.To.Before(q.From) {
		return nil, fmt.Errorf("%w: the range ends before it starts", ErrBadDing)
	}
	if q.Top == 0 {
		q.Top = 10
	}
	d0, d1 := dayOf(q.From), dayOf(q.To)
	out := &AdminStats{From: q.From.UTC(), To: q.To.UTC(), Announcements: []AnnouncementStat{}, TopUnanswered: []UserCount{}}
	byDept := map[string]*DepartmentStats{}
	var derr error
	err := e.st.Scan(rollupKey(d0, ""), rollupKey(d1+1, ""), func(k, v []byte) bool {
		dept := string(k[5:])
		if len(q.Departments) > 0 && !slices.Contains(q.Departments, dept) {
			return true
		}
		var r Rollup
		if derr = decodeRollup(v, &r); derr != nil {
			return false
		}
		out.RollupsScanned++
		ds := byDept[dept]
		if ds == nil {
			ds = &DepartmentStats{Department: dept}
			byDept[dept] = ds
		}
		ds.Totals.add(&r)
		out.Total.Totals.add(&r)
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("engine: statistics: %w", err)
	}
	for _, ds := range byDept {
		finish(ds)
		out.Departments = append(out.Departments, *ds)
	}
	slices.SortFunc(out.Departments, func(a, b DepartmentStats) int {
		switch {
		case a.Department < b.Department:
			return -1
		case a.Department > b.Department:
			return 1
		}
		return 0
	})
	out.Total.Department = "(all)"
	finish(&out.Total)
	// Announcements sent in the range: their ids start with their time.
	lo, hi := idAtMillis(q.From.UTC().Truncate(24*time.Hour).UnixMilli()), idAtMillis(q.To.UTC().Truncate(24*time.Hour).Add(24*time.Hour).UnixMilli())
	err = e.st.Scan(announcementKey(lo), announcementKey(hi), func(k, v []byte) bool {
		var a AnnouncementStat
		if derr = decodeAnnouncementCounts(v, &a.AnnouncementCounts); derr != nil {
			return false
		}
		copy(a.ID[:], k[1:])
		a.Created = time.UnixMilli(a.AnnouncementCounts.Created).UTC()
		if a.Total > 0 {
			a.ReadRatio = float64(a.Read) / float64(a.Total)
		}
		out.Announcements = append(out.Announcements, a)
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("engine: statistics: %w", err)
	}
	// People who most often leave DINGs unanswered.
	counts := map[string]uint64{}
	err = e.st.Scan(unansweredKey(d0, ""), unansweredKey(d1+1, ""), func(k, v []byte) bool {
		n, err := parseU64(v)
		if err == nil {
			counts[string(k[5:])] += n
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("engine: statistics: %w", err)
	}
	for u, n := range counts {
		out.TopUnanswered = append(out.TopUnanswered, UserCount{u, n})
	}
	slices.SortFunc(out.TopUnanswered, func(a, b UserCount) int {
		if a.Count != b.Count {
			return int(int64(b.Count) - int64(a.Count))
		}
		if a.User < b.User {
			return -1
		}
		return 1
	})
	out.TopUnanswered = out.TopUnanswered[:min(len(out.TopUnanswered), q.Top)]
	days := uint64(d1 - d0 + 1)
	if n := e.cfg.Quotas.SMSPerDay; n > 0 {
		out.SMSBudget = uint64(n) * days
	}
	if n := e.cfg.Quotas.CallsPerDay; n > 0 {
		out.CallsBudget = uint64(n) * days
	}
	return out, nil
}

// Rollup record layout: | ver=1 | 8 counters (uvarint) | nOutcomes | (name
// (str), count (uvarint))... | nRead | counts (uvarint)... | nConfirm |
// counts (uvarint)... |. Binary, not JSON: a year's query decodes tens of
// thousands of them.
func encodeRollup(r *Rollup) []byte {
	b := make([]byte, 0, 64)
	b = append(b, 1)
	for _, v := range []uint64{r.MessagesSent, r.MessagesDelivered, r.MessagesRead, r.DingsSent, r.DingRecipients, r.SMS, r.Calls, r.Announcements} {
		b = binary.AppendUvarint(b, v)
	}
	b = binary.AppendUvarint(b, uint64(len(r.Outcomes)))
	for _, k := range slices.Sorted(maps.Keys(r.Outcomes)) {
		b = appendStr(b, k)
		b = binary.AppendUvarint(b, r.Outcomes[k])
	}
	for _, h := range [][]uint32{r.TimeToRead, r.TimeToConfirm} {
		b = binary.AppendUvarint(b, uint64(len(h)))
		for _, v := range h {
			b = binary.AppendUvarint(b, uint64(v))
		}
	}
	return b
}

func decodeRollup(b []byte, r *Rollup) error {
	d := decoder{b: b}
	if d.u8() != 1 {
		return ErrCorrupt
	}
	for _, p := range []*uint64{&r.MessagesSent, &r.MessagesDelivered, &r.MessagesRead, &r.DingsSent, &r.DingRecipients, &r.SMS, &r.Calls, &r.Announcements} {
		*p = d.uvarint()
	}
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		return ErrCorrupt
	}
	if n > 0 {
		r.Outcomes = make(map[string]uint64, n)
	}
	for range n {
		k := d.str()
		r.Outcomes[k] = d.uvarint()
	}
	for _, h := range []*[]uint32{&r.TimeToRead, &r.TimeToConfirm} {
		n := d.uvarint()
		if n > uint64(len(latencyBuckets)) {
			return ErrCorrupt
		}
		if n > 0 {
			*h = make([]uint32, n)
		}
		for i := range *h {
			(*h)[i] = uint32(d.uvarint())
		}
	}
	if d.err || len(d.b) != 0 {
		return ErrCorrupt
	}
	return nil
}
