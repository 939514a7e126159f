package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/dingmq/ding/channels/email"
	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/channels/session"
	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
)

// router is the one engine the edges of a node with several partitions
// (Config.Partitions) see: the socket sessions, the admin API, the hub's
// catch-up reads and Twilio's webhooks. It sends each call to the engine
// that owns it:
//
//   - by user: the sender for Submit, Ding, Announce and CreateChat; the
//     user for Head, Cursor, Range, Ack, Read, Confirm, Devices, Dings,
//     Chats and the like. A user's partition is partitionSet.of.
//   - by the id's home (engine.HomeOf): Message, Receipts, Stats,
//     DingStatus, CancelDing, Chat, SenderReceipts. The home is the
//     sender's partition, which holds the message, its DING state and its
//     announcement counts. An id no partition made (HomeOf false, or a
//     partition out of range) is not found.
//   - org-wide: AdminStats and Sweep are asked of every engine and the
//     answers merged; SetPolicy is written to every engine (Policies are
//     read from the lowest partition's).
//
// A user or id of a partition the node does not serve now (detached:
// partitionSet.detach) gets errNotServed (notServedError), which clients
// retry (UNAVAILABLE); in cluster mode a session redirects its device to
// the owner (NOT_OWNER), and the admin API's request goes on to the
// owner (ownerProxy).
//   - Twilio's reports carry provider references, which name no
//     partition: every engine is asked, and the first that knows the
//     reference answers (see ProviderStatus).
//
// Its methods are safe for concurrent use, as the engines' are.
type router struct {
	set *partitionSet
}

var (
	_ session.Engine       = (*router)(nil)
	_ httpapi.Engine       = (*router)(nil)
	_ fanout.Source        = (*router)(nil)
	_ twilio.Reports       = (*router)(nil)
	_ httpapi.PushRegistry = (*router)(nil)
	_ session.PushRegistry = (*router)(nil)
	_ email.Confirmer      = (*router)(nil)
)

// errNoHome is returned for an id no partition of this node made.
var errNoHome = fmt.Errorf("%w: the id names no partition of this node", engine.ErrNotFound)

// user returns the engine of u's partition, or why this node does not
// serve it now.
func (r *router) user(u string) (*engine.Engine, error) { return r.set.engineOf(u) }

// Push registrations (httpapi.PushRegistry, session.PushRegistry): a
// device's token is kept by its user's partition; a notification's
// opening is recorded on the DING's home.

func (r *router) RegisterPushToken(ctx context.Context, user string, t engine.PushToken) (engine.PushToken, error) {
	e, err := r.user(user)
	if err != nil {
		return engine.PushToken{}, err
	}
	return e.RegisterPushToken(ctx, user, t)
}

func (r *router) RemovePushToken(ctx context.Context, user, device, token string) (bool, error) {
	e, err := r.user(user)
	if err != nil {
		return false, err
	}
	return e.RemovePushToken(ctx, user, device, token)
}

func (r *router) PushTokens(user string) ([]engine.PushToken, error) {
	e, err := r.user(user)
	if err != nil {
		return nil, err
	}
	return e.PushTokens(user)
}

func (r *router) RegisterPushTokenAsync(user string, t engine.PushToken, done func(error)) {
	e, err := r.user(user)
	if err != nil {
		done(err)
		return
	}
	e.RegisterPushTokenAsync(user, t, done)
}

func (r *router) RemovePushTokenAsync(user, device string, done func(error)) {
	e, err := r.user(user)
	if err != nil {
		done(err)
		return
	}
	e.RemovePushTokenAsync(user, device, done)
}

func (r *router) PushOpenedAsync(user string, id engine.ID, device string, done func(error)) {
	e, err := r.home(id)
	if err != nil {
		done(err)
		return
	}
	e.PushOpenedAsync(user, id, device, done)
}

func (r *router) home(id engine.ID) (*engine.Engine, error) {
	p, ok := engine.HomeOf(id)
	if !ok || p >= r.set.n {
		return nil, errNoHome
	}
	if rt := r.set.runtime(p); rt != nil {
		return rt.eng, nil
	}
	return nil, &notServedError{p: p}
}

// first returns the engine of the lowest partition this node serves (for
// what every partition holds alike: MaxBody, the policies).
func (r *router) first() (*engine.Engine, error) {
	if rts := r.set.attached(); len(rts) > 0 {
		return rts[0].eng, nil
	}
	return nil, errNotServed
}

// session.Engine

func (r *router) SubmitAsync(s engine.Submission, done func(engine.SubmitResult, error)) {
	e, err := r.user(s.From)
	if err != nil {
		done(engine.SubmitResult{}, err)
		return
	}
	e.SubmitAsync(s, done)
}

func (r *router) AckAsync(user, device string, seq uint64, done func(error)) {
	e, err := r.user(user)
	if err != nil {
		done(err)
		return
	}
	e.AckAsync(user, device, seq, done)
}

func (r *router) ReadAsync(user string, ids []engine.ID, done func(error)) {
	e, err := r.user(user)
	if err != nil {
		done(err)
		return
	}
	e.ReadAsync(user, ids, done)
}

func (r *router) ConfirmAsync(user string, id engine.ID, answer int, done func(engine.ConfirmResult, error)) {
	e, err := r.user(user)
	if err != nil {
		done(engine.ConfirmResult{}, err)
		return
	}
	e.ConfirmAsync(user, id, answer, done)
}

func (r *router) CreateChatAsync(req engine.ChatRequest, done func(engine.Chat, error)) {
	e, err := r.user(req.From)
	if err != nil {
		done(engine.Chat{}, err)
		return
	}
	e.CreateChatAsync(req, done)
}

func (r *router) ReportScreenshotAsync(user string, chat, msg engine.ID, done func(error)) {
	e, err := r.user(user)
	if err != nil {
		done(err)
		return
	}
	e.ReportScreenshotAsync(user, chat, msg, done)
}

// SenderReceipts asks the message's home, which is the sender's
// partition (the engine checks that user sent it).
func (r *router) SenderReceipts(user string, id engine.ID) ([]engine.Receipt, error) {
	e, err := r.home(id)
	if err != nil {
		return nil, err
	}
	return e.SenderReceipts(user, id)
}

func (r *router) Head(user string) (uint64, error) {
	e, err := r.user(user)
	if err != nil {
		return 0, err
	}
	return e.Head(user)
}

func (r *router) Cursor(user, device string) (uint64, bool, error) {
	e, err := r.user(user)
	if err != nil {
		return 0, false, err
	}
	return e.Cursor(user, device)
}

func (r *router) ResumeFrom(user string, cursor uint64) (uint64, error) {
	e, err := r.user(user)
	if err != nil {
		return 0, err
	}
	return e.ResumeFrom(user, cursor)
}

func (r *router) MaxBody() int { return r.set.dirEng.MaxBody() }

// fanout.Source

func (r *router) Range(user string, from uint64, max int) ([]engine.Entry, error) {
	e, err := r.user(user)
	if err != nil {
		return nil, err
	}
	return e.Range(user, from, max)
}

// httpapi.Messages

func (r *router) Submit(ctx context.Context, s engine.Submission) (engine.SubmitResult, error) {
	e, err := r.user(s.From)
	if err != nil {
		return engine.SubmitResult{}, err
	}
	return e.Submit(ctx, s)
}

func (r *router) Message(id engine.ID) (*engine.Message, error) {
	e, err := r.home(id)
	if err != nil {
		return nil, err
	}
	return e.Message(id)
}

// ConfirmByLink is routed to the DING's home, which holds its escalation
// (an e-mail link names the DING and the recipient's index in it).
func (r *router) ConfirmByLink(ctx context.Context, id engine.ID, recipient, answer int) (engine.ConfirmResult, error) {
	e, err := r.home(id)
	if err != nil {
		return engine.ConfirmResult{}, err
	}
	return e.ConfirmByLink(ctx, id, recipient, answer)
}

func (r *router) Receipts(id engine.ID) ([]engine.Receipt, error) {
	e, err := r.home(id)
	if err != nil {
		return nil, err
	}
	return e.Receipts(id)
}

func (r *router) Devices(user string) ([]engine.DeviceCursor, error) {
	e, err := r.user(user)
	if err != nil {
		return nil, err
	}
	return e.Devices(user)
}

// Sweep runs retention on every partition, one after the other, and adds
// up what they deleted. The first failure stops it (what the earlier
// ones deleted stays deleted).
func (r *router) Sweep(ctx context.Context) (engine.SweepReport, error) {
	sum, _, err := localSweep(ctx, r.set)
	return sum, err
}

// localSweep sweeps every partition served here, and says which.
func localSweep(ctx context.Context, set *partitionSet) (engine.SweepReport, []int, error) {
	var sum engine.SweepReport
	var ps []int
	for _, rt := range set.attached() {
		rep, err := rt.eng.Sweep(ctx)
		if err != nil {
			return sum, ps, fmt.Errorf("partition %d: %w", rt.p, err)
		}
		addSweep(&sum, rep)
		ps = append(ps, int(rt.p))
	}
	return sum, ps, nil
}

// addSweep adds rep to sum.
func addSweep(sum *engine.SweepReport, rep engine.SweepReport) {
	sum.Entries += rep.Entries
	sum.Messages += rep.Messages
	sum.Dings += rep.Dings
	sum.Dedupe += rep.Dedupe
	sum.Quotas += rep.Quotas
	sum.Refs += rep.Refs
	sum.Days = max(sum.Days, rep.Days) // days of statistics: the same days on every partition
	sum.Held += rep.Held
	sum.Took += rep.Took
}

// httpapi.Dings

func (r *router) Ding(ctx context.Context, d engine.DingRequest) (engine.DingResult, error) {
	e, err := r.user(d.From)
	if err != nil {
		return engine.DingResult{}, err
	}
	return e.Ding(ctx, d)
}

func (r *router) DingStatus(id engine.ID) (*engine.DingStatus, error) {
	e, err := r.home(id)
	if err != nil {
		return nil, err
	}
	return e.DingStatus(id)
}

func (r *router) Dings(sender string, after engine.ID, limit int) ([]engine.DingSummary, error) {
	e, err := r.user(sender)
	if err != nil {
		return nil, err
	}
	return e.Dings(sender, after, limit)
}

func (r *router) CancelDing(ctx context.Context, id engine.ID) (int, error) {
	e, err := r.home(id)
	if err != nil {
		return 0, err
	}
	return e.CancelDing(ctx, id)
}

// SetPolicy writes the policy to every partition (a DING is escalated by
// its home, any of them), in order. On an error some partitions may have
// it and others not: a retry, which is idempotent, completes it.
func (r *router) SetPolicy(ctx context.Context, name string, p engine.Policy) error {
	for _, rt := range r.set.attached() {
		if err := rt.eng.SetPolicy(ctx, name, p); err != nil {
			return fmt.Errorf("partition %d: %w", rt.p, err)
		}
	}
	return nil
}

// Policies reads the lowest partition's: SetPolicy writes every
// partition, in order.
func (r *router) Policies() (map[string]engine.Policy, error) {
	e, err := r.first()
	if err != nil {
		return nil, err
	}
	return e.Policies()
}

// httpapi.Announcements

func (r *router) Announce(ctx context.Context, a engine.Announcement) (engine.SubmitResult, error) {
	e, err := r.user(a.From)
	if err != nil {
		return engine.SubmitResult{}, err
	}
	return e.Announce(ctx, a)
}

func (r *router) Stats(id engine.ID, lists bool) (*engine.MessageStats, error) {
	e, err := r.home(id)
	if err != nil {
		return nil, err
	}
	return e.Stats(id, lists)
}

// AdminStats merges every partition's statistics. Rollups are counted at
// a message's or DING's home (the sender's partition), so counts add up
// exactly: per department, the totals, outcomes and pending recipients;
// the announcements are listed together, by id; the people who leave
// DINGs unanswered are summed over the partitions before the top is cut.
//
// A limit: a department's time-to-read and time-to-confirm percentiles
// cannot be merged exactly from the engines' answers (they give the
// percentiles, not the histograms). Where more than one partition has
// observations, the merged figure is the largest partition's median and
// 90th percentile (an upper bound), with the summed count.
func (r *router) AdminStats(q engine.StatsQuery) (*engine.AdminStats, error) {
	top := cmp.Or(q.Top, 10)
	q.Top = 1 << 30 // every partition's whole list; cut after summing
	stats, _, err := localStats(r.set, q)
	if err != nil {
		return nil, err
	}
	return mergeStats(stats, top)
}

// localStats answers q on each partition served here, and says which.
func localStats(set *partitionSet, q engine.StatsQuery) ([]*engine.AdminStats, []int, error) {
	var out []*engine.AdminStats
	var ps []int
	for _, rt := range set.attached() {
		s, err := rt.eng.AdminStats(q)
		if err != nil {
			return nil, nil, fmt.Errorf("partition %d: %w", rt.p, err)
		}
		out, ps = append(out, s), append(ps, int(rt.p))
	}
	return out, ps, nil
}

// mergeStats sums the partitions' answers (see AdminStats) and keeps
// the top people who leave DINGs unanswered.
func mergeStats(stats []*engine.AdminStats, top int) (*engine.AdminStats, error) {
	if len(stats) == 0 {
		return nil, errNotServed
	}
	var out *engine.AdminStats
	byDept := map[string]*engine.DepartmentStats{}
	unanswered := map[string]uint64{}
	for _, s := range stats {
		if out == nil {
			out = &engine.AdminStats{From: s.From, To: s.To, SMSBudget: s.SMSBudget, CallsBudget: s.CallsBudget,
				Announcements: []engine.AnnouncementStat{}, TopUnanswered: []engine.UserCount{}}
			out.Total.Department = s.Total.Department
		}
		out.RollupsScanned += s.RollupsScanned
		for _, d := range s.Departments {
			m := byDept[d.Department]
			if m == nil {
				m = &engine.DepartmentStats{Department: d.Department}
				byDept[d.Department] = m
			}
			mergeDept(m, &d)
		}
		mergeDept(&out.Total, &s.Total)
		out.Announcements = append(out.Announcements, s.Announcements...)
		for _, u := range s.TopUnanswered {
			unanswered[u.User] += u.Count
		}
	}
	for _, d := range byDept {
		out.Departments = append(out.Departments, *d)
	}
	slices.SortFunc(out.Departments, func(a, b engine.DepartmentStats) int { return cmp.Compare(a.Department, b.Department) })
	slices.SortFunc(out.Announcements, func(a, b engine.AnnouncementStat) int { return slices.Compare(a.ID[:], b.ID[:]) })
	for u, n := range unanswered {
		out.TopUnanswered = append(out.TopUnanswered, engine.UserCount{User: u, Count: n})
	}
	slices.SortFunc(out.TopUnanswered, func(a, b engine.UserCount) int {
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		return cmp.Compare(a.User, b.User)
	})
	out.TopUnanswered = out.TopUnanswered[:min(len(out.TopUnanswered), top)]
	return out, nil
}

// mergeDept adds d's counts to m (see AdminStats for the percentiles).
func mergeDept(m, d *engine.DepartmentStats) {
	t, o := &m.Totals, &d.Totals
	t.MessagesSent += o.MessagesSent
	t.MessagesDelivered += o.MessagesDelivered
	t.MessagesRead += o.MessagesRead
	t.DingsSent += o.DingsSent
	t.DingRecipients += o.DingRecipients
	for k, v := range o.Outcomes {
		if t.Outcomes == nil {
			t.Outcomes = map[string]uint64{}
		}
		t.Outcomes[k] += v
	}
	t.SMS += o.SMS
	t.Calls += o.Calls
	t.Announcements += o.Announcements
	m.Pending += d.Pending
	mergePercentiles(&m.TimeToRead, d.TimeToRead)
	mergePercentiles(&m.TimeToConfirm, d.TimeToConfirm)
}

func mergePercentiles(m *engine.Percentiles, d engine.Percentiles) {
	if d.Count == 0 {
		return
	}
	m.Count += d.Count
	m.Median = max(m.Median, d.Median)
	m.P90 = max(m.P90, d.P90)
}

// httpapi.SecretChats

// CreateChat asks the requester's partition, which relays the chat to the
// other participant's (engine/relay_secret.go).
func (r *router) CreateChat(ctx context.Context, req engine.ChatRequest) (engine.Chat, error) {
	e, err := r.user(req.From)
	if err != nil {
		return engine.Chat{}, err
	}
	return e.CreateChat(ctx, req)
}

func (r *router) Chat(id engine.ID) (engine.Chat, error) {
	e, err := r.home(id)
	if err != nil {
		return engine.Chat{}, err
	}
	return e.Chat(id)
}

func (r *router) Chats(user string) ([]engine.ChatInfo, error) {
	e, err := r.user(user)
	if err != nil {
		return nil, err
	}
	return e.Chats(user)
}

// twilio.Reports

// ProviderStatus reports to the partition that made the send: provider
// references (Twilio SIDs) carry no partition, so every engine is asked
// at once and the first that knows the reference wins (at most one
// does: the one that recorded it); the others' questions are cancelled.
// An engine with sends in flight holds an unknown reference for up to
// its send timeout (the status may outrun the recording of the send), so
// asking one after the other could wait that long per partition.
func (r *router) ProviderStatus(ctx context.Context, ref string, ev engine.ProviderEvent, detail string) error {
	return r.anyKnows(ctx, func(ctx context.Context, e *engine.Engine) error {
		return e.ProviderStatus(ctx, ref, ev, detail)
	})
}

// ProviderDigits is routed as ProviderStatus is.
func (r *router) ProviderDigits(ctx context.Context, ref, digits string) error {
	return r.anyKnows(ctx, func(ctx context.Context, e *engine.Engine) error {
		return e.ProviderDigits(ctx, ref, digits)
	})
}

// anyKnows runs op on every engine concurrently and returns the first
// answer that is not ErrNotFound (cancelling the rest), or ErrNotFound
// if none knows.
func (r *router) anyKnows(ctx context.Context, op func(context.Context, *engine.Engine) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		found bool
		res   error
		last  error
		wg    sync.WaitGroup
	)
	for _, e := range r.set.engines() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := op(ctx, e)
			mu.Lock()
			defer mu.Unlock()
			if found {
				return
			}
			if errors.Is(err, engine.ErrNotFound) {
				last = err
				return
			}
			if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
				return // cancelled by another's answer, or the caller's
			}
			found, res = true, err
			cancel()
		}()
	}
	wg.Wait()
	if found {
		return res
	}
	if err := ctx.Err(); err != nil && last == nil {
		return err
	}
	return last
}

// InboundSMS applies an SMS reply to the partition whose DING pending
// for that phone was sent to it last, as one engine picks among its own:
// every engine says when it last sent to the phone (PhonePendingAt), and
// they are tried newest first (the newest's may end meanwhile: then the
// next). An ErrBadAnswer also means the engine had one pending: the
// reply is recorded there.
func (r *router) InboundSMS(ctx context.Context, from, body string) error {
	type cand struct {
		e  *engine.Engine
		at time.Time
	}
	var cands []cand
	for _, e := range r.set.engines() {
		at, ok, err := e.PhonePendingAt(from)
		if err != nil {
			return err
		}
		if ok {
			cands = append(cands, cand{e, at})
		}
	}
	slices.SortStableFunc(cands, func(a, b cand) int { return b.at.Compare(a.at) })
	err := fmt.Errorf("%w: nothing pending for this phone", engine.ErrNotFound)
	for _, c := range cands {
		if err = c.e.InboundSMS(ctx, from, body); !errors.Is(err, engine.ErrNotFound) {
			return err
		}
	}
	return err
}
