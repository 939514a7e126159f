package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Announcements: one message to all staff (AllStaff), a department
// ("dept:ID") or a group ("group:ID"), stored once and fanned out to every
// member at the time of publishing (fanout.go). Statistics are derived
// from the stored receipts, so they survive restarts.

// Announcement is an announcement as its sender publishes it.
type Announcement struct {
	From string
	// To is AllStaff, "dept:ID" or "group:ID" (or a user id); several
	// targets are allowed.
	To   []string
	Text string
	// Confirm asks every recipient to confirm (Engine.Confirm with answer 0).
	Confirm  bool
	ClientID string
}

// Announce publishes a. It answers once the announcement and its audience
// are durable; entries reach recipients' streams in the background (see
// PendingFanout).
func (e *Engine) Announce(ctx context.Context, a Announcement) (SubmitResult, error) {
	s := Submission{From: a.From, To: a.To, Kind: KindAnnouncement, Body: []byte(a.Text), ClientID: a.ClientID}
	if a.Confirm {
		s.flags = FlagConfirm
	}
	if len(a.Text) == 0 {
		return SubmitResult{}, fmt.Errorf("%w: no text", ErrBadDing)
	}
	type res struct {
		r   SubmitResult
		err error
	}
	ch := make(chan res, 1)
	e.submitAsync(s, true, func(r SubmitResult, err error) { ch <- res{r, err} })
	select {
	case r := <-ch:
		return r.r, r.err
	case <-ctx.Done():
		return SubmitResult{}, ctx.Err()
	}
}

// confirmMessage records a confirmation of a message that asks for one
// (FlagConfirm) without being a DING.
func (c *txn) confirmMessage(user string, m *Message, answer int, now time.Time) (ConfirmResult, error) {
	if m.Flags&FlagConfirm == 0 {
		return ConfirmResult{}, fmt.Errorf("%w: %s", ErrNotDing, m.ID)
	}
	if answer != 0 {
		return ConfirmResult{}, fmt.Errorf("%w: this message has no choices", ErrBadAnswer)
	}
	rk := receiptKey(m.ID, user)
	r, err := c.receipt(rk, user)
	if err != nil {
		return ConfirmResult{}, fmt.Errorf("%w: %s", ErrNotRecipient, m.ID)
	}
	if r.State == StateConfirmed {
		return ConfirmResult{Already: true, By: ChannelInApp, At: r.Confirmed}, nil
	}
	wasDelivered, wasRead := !r.Delivered.IsZero(), !r.Read.IsZero()
	if !wasDelivered {
		r.Delivered = now
	}
	// For a message of another partition, the origin counts and tells
	// the sender (applyRelayReceipt); the user's devices learn it here.
	origin, other := c.e.originOf(m)
	if !wasRead {
		r.Read = now
		if !other {
			c.countRead(m.ID, m.From, m.Kind == KindAnnouncement, wasDelivered)
		}
	}
	if m.Kind == KindAnnouncement && !other {
		if a := c.announcement(m.ID); a != nil {
			a.Confirmed++
		}
	}
	r.State, r.Confirmed = StateConfirmed, now
	c.setReceipt(rk, r)
	var ev events
	if m.Kind != KindAnnouncement && user != m.From && !other {
		ev.add(m.From, m.ID)
	}
	ev.add(user, m.ID)
	if other {
		c.relayRecord(origin, &RelayRecord{Kind: RelayReceipt, User: user, IDs: []ID{m.ID}, State: StateConfirmed, At: now})
	}
	return ConfirmResult{By: ChannelInApp, At: now}, c.notify(&ev, user, StateConfirmed, now)
}

// RatioPoint is the read ratio at a time.
type RatioPoint struct {
	At    time.Time `json:"at"`
	Read  int       `json:"read"`
	Ratio float64   `json:"ratio"`
}

// MessageStats are a message's counts, derived from its stored receipts.
// The counts are cumulative, as a sender reads them: each is the
// recipients who reached at least that state (Sent includes Delivered,
// which includes Read, which includes Confirmed), not those in it now.
// Total = Pending + Sent.
type MessageStats struct {
	ID        ID           `json:"id"`
	From      string       `json:"from"`
	To        []string     `json:"to"`
	Created   time.Time    `json:"created"`
	Confirm   bool         `json:"confirm,omitempty"`
	Total     int          `json:"total"`          // recipients
	Pending   int          `json:"pending"`        // not yet in their stream (fanout in progress, or not yet relayed to their partition)
	Sent      int          `json:"sent"`           // in their stream (delivered, read and confirmed included)
	Delivered int          `json:"delivered"`      // reached a device (read and confirmed included)
	Read      int          `json:"read"`           // read (confirmed included)
	Confirmed int          `json:"confirmed"`      // confirmed
	ReadRatio float64      `json:"read_ratio"`     // Read / Total
	OverTime  []RatioPoint `json:"read_over_time"` // the read ratio at up to 24 points from the send to the last read
	// Unread and Unconfirmed list recipients, when asked for.
	Unread      []string `json:"unread,omitempty"`
	Unconfirmed []string `json:"unconfirmed,omitempty"`
}

// Stats returns a message's counts; with lists, also who has not read and
// (for must-confirm messages) not confirmed.
func (e *Engine) Stats(id ID, lists bool) (*MessageStats, error) {
	m, err := e.Message(id)
	if err != nil {
		return nil, err
	}
	// The audience still pending first (fanout chunks not yet written,
	// recipients in other partitions whose record is still in the
	// outbox), then the receipts: a chunk or an acknowledgement written
	// in between moves users from the first read to the second, where they
	// show in both, and pending names with a receipt are dropped. (In the
	// other order they would show in neither; found in review.)
	pending, err := e.pendingAudience(id)
	if err != nil {
		return nil, err
	}
	// Once acknowledged, remote recipients have receipts here (relay.go,
	// mirrorRelayed).
	remote, err := e.outboxAudience(id)
	if err != nil {
		return nil, err
	}
	rs, err := e.Receipts(id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	pending = append(pending, remote...)
	if len(pending) > 0 && len(rs) > 0 {
		have := make(map[string]bool, len(rs))
		for _, r := range rs {
			have[r.User] = true
		}
		pending = slices.DeleteFunc(pending, func(u string) bool { return have[u] })
	}
	st := &MessageStats{ID: id, From: m.From, To: m.To, Created: m.Created, Confirm: m.Flags&FlagConfirm != 0 || m.Kind == KindDing,
		Total: len(rs) + len(pending), Pending: len(pending), Sent: len(rs)}
	var reads []time.Time
	for _, r := range rs {
		if r.State >= StateDelivered {
			st.Delivered++
		}
		if r.State >= StateRead {
			st.Read++
			reads = append(reads, r.Read)
		} else if lists {
			st.Unread = append(st.Unread, r.User)
		}
		if r.State == StateConfirmed {
			st.Confirmed++
		} else if lists && st.Confirm {
			st.Unconfirmed = append(st.Unconfirmed, r.User)
		}
	}
	if lists {
		st.Unread = append(st.Unread, pending...)
		slices.Sort(st.Unread)
		if st.Confirm {
			st.Unconfirmed = append(st.Unconfirmed, pending...)
			slices.Sort(st.Unconfirmed)
		}
	}
	if st.Total > 0 {
		st.ReadRatio = float64(st.Read) / float64(st.Total)
	}
	st.OverTime = ratioOverTime(m.Created, reads, st.Total)
	return st, nil
}

// ratioOverTime samples the cumulative read ratio at up to 24 evenly
// spaced times from the send to the last read.
func ratioOverTime(start time.Time, reads []time.Time, total int) []RatioPoint {
	if len(reads) == 0 || total == 0 {
		return []RatioPoint{}
	}
	slices.SortFunc(reads, func(a, b time.Time) int { return a.Compare(b) })
	end := reads[len(reads)-1]
	span := end.Sub(start)
	const points = 24
	out := make([]RatioPoint, 0, points)
	j := 0
	for i := 1; i <= points; i++ {
		at := start.Add(span * time.Duration(i) / points)
		for j < len(reads) && !reads[j].After(at) {
			j++
		}
		if len(out) > 0 && out[len(out)-1].Read == j && i < points {
			continue // no change: skip the point
		}
		out = append(out, RatioPoint{At: at.UTC(), Read: j, Ratio: float64(j) / float64(total)})
	}
	return out
}
