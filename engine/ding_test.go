package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/fakeclock"
)

// The engine's own tests use a fake Notifier: the real one (twilio-go
// against a fake Twilio server) is tested end to end in internal/node.

type sent struct {
	engine.Outbound
	Ref string
}

// fakeNotifier records sends. fail, if set, decides each send's error.
type fakeNotifier struct {
	mu    sync.Mutex
	sends []sent
	fail  func(o engine.Outbound) error
	n     int
}

func (f *fakeNotifier) Send(ctx context.Context, o engine.Outbound) (string, error) {
	f.mu.Lock()
	fail := f.fail
	f.mu.Unlock()
	if fail != nil {
		if err := fail(o); err != nil {
			if errors.Is(err, context.Canceled) { // a hanging provider
				<-ctx.Done()
				return "", ctx.Err()
			}
			return "", err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	ref := fmt.Sprintf("%s%d", map[engine.Channel]string{engine.ChannelSMS: "SM", engine.ChannelVoice: "CA"}[o.Channel], f.n)
	f.sends = append(f.sends, sent{o, ref})
	return ref, nil
}

func (f *fakeNotifier) setFail(fail func(engine.Outbound) error) {
	f.mu.Lock()
	f.fail = fail
	f.mu.Unlock()
}

func (f *fakeNotifier) all() []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sends)
}

func (f *fakeNotifier) to(phone string) []sent {
	var out []sent
	for _, s := range f.all() {
		if s.To == phone {
			out = append(out, s)
		}
	}
	return out
}

// waitSends polls until there are n sends in all.
func (f *fakeNotifier) waitSends(t testing.TB, n int) []sent {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := f.all()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("notifier has %d sends, want %d", len(got), n)
		}
		time.Sleep(time.Millisecond)
	}
}

type contacts map[string]engine.Contact

func (c contacts) Contact(user string) (engine.Contact, error) {
	ct, ok := c[user]
	if !ok {
		return engine.Contact{}, fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, user)
	}
	return ct, nil
}

var t0 = time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)

const (
	anaPhone = "+15550000001"
	boPhone  = "+15550000002"
	cyPhone  = "+15550000003"
	outside  = "+15550000099" // a person with no account
)

type dingEnv struct {
	e     *engine.Engine
	clock *fakeclock.Clock
	n     *fakeNotifier
	sink  *recorder
	st    store.Store
	cfg   engine.Config
}

func newDingEnv(t testing.TB, st store.Store, mod func(*engine.Config)) *dingEnv {
	t.Helper()
	env := &dingEnv{clock: fakeclock.New(t0), n: &fakeNotifier{}, st: st}
	env.cfg = engine.Config{
		Store: st, Clock: env.clock, Notifier: env.n,
		Recipients: fixedUsers{"ana": true, "bo": true, "cy": true},
		Contacts: contacts{
			"ana": {Name: "Ana", Phone: anaPhone},
			"bo":  {Name: "Bo", Phone: boPhone},
			"cy":  {Name: "Cy", Phone: cyPhone},
		},
	}
	if mod != nil {
		mod(&env.cfg)
	}
	env.open(t)
	return env
}

func (env *dingEnv) open(t testing.TB) {
	t.Helper()
	e, err := engine.Open(env.cfg)
	if err != nil {
		t.Fatal(err)
	}
	env.e, env.sink = e, &recorder{}
	e.SetSink(env.sink)
	t.Cleanup(func() { e.Close() })
}

func (env *dingEnv) ding(t testing.TB, r engine.DingRequest) engine.DingResult {
	t.Helper()
	if r.From == "" {
		r.From = "ana"
	}
	if r.Text == "" {
		r.Text = "server room on fire"
	}
	res, err := env.e.Ding(context.Background(), r)
	if err != nil {
		t.Fatalf("ding: %v", err)
	}
	return res
}

// barrier makes sure every timer due by now has fired and every send
// decided so far has its outcome recorded (engine.Settle), so that a test
// may then assert that nothing more was sent, and that the sink has every
// entry those batches wrote.
func (env *dingEnv) barrier(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := env.e.Settle(ctx); err != nil {
		t.Fatalf("settle: %v", err)
	}
	// Settle returns once the last outcome's op is answered, which is
	// before its batch reaches the sink; batches are published in order,
	// so an op answered after it (in a later batch) means the sink has it.
	if err := env.e.Barrier(ctx); err != nil {
		t.Fatalf("barrier: %v", err)
	}
}

func countTo(s []sent, phone string) int {
	n := 0
	for _, x := range s {
		if x.To == phone {
			n++
		}
	}
	return n
}

func (f *fakeNotifier) waitFor(t testing.TB, cond func([]sent) bool) []sent {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := f.all()
		if cond(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition on sends not met; have %d sends", len(got))
		}
		time.Sleep(time.Millisecond)
	}
}

func status(t testing.TB, e *engine.Engine, id engine.ID) *engine.DingStatus {
	t.Helper()
	ds, err := e.DingStatus(id)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func events(rs engine.RecipientStatus) []engine.LedgerKind {
	var out []engine.LedgerKind
	for _, ev := range rs.Events {
		out = append(out, ev.Event)
	}
	return out
}

// waitLedger polls until recipient idx's ledger has an event of kind k.
func waitLedger(t testing.TB, e *engine.Engine, id engine.ID, idx int, k engine.LedgerKind) engine.RecipientStatus {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rs := status(t, e, id).Recipients[idx]
		if slices.Contains(events(rs), k) {
			return rs
		}
		if time.Now().After(deadline) {
			t.Fatalf("recipient %d ledger %v has no %s", idx, events(rs), k)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitLedgerCount polls until recipient idx's ledger has n events of kind k.
func waitLedgerCount(t testing.TB, e *engine.Engine, id engine.ID, idx int, k engine.LedgerKind, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rs := status(t, e, id).Recipients[idx]
		got := 0
		for _, ev := range events(rs) {
			if ev == k {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("recipient %d ledger %v has %d %s, want %d", idx, events(rs), got, k, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func index(ds *engine.DingStatus, recipient string) int {
	for i, r := range ds.Recipients {
		if r.Recipient == recipient {
			return i
		}
	}
	return -1
}

func TestParsePolicy(t *testing.T) {
	for _, tc := range []struct {
		spec, want string
		sends      int
	}{
		{"inapp,sms@5m,voice@15m,voice@30m until=confirmed", "inapp,sms@5m,voice@15m,voice@30m until=confirmed", 4},
		{"inapp, sms@1s*3/10s until=read", "inapp,sms@1s*3/10s until=read", 4},
		{"voice@1h", "voice@1h until=confirmed", 1},
		{"sms@90s", "sms@1m30s until=confirmed", 1},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			p, err := engine.ParsePolicy(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if p.String() != tc.want {
				t.Fatalf("String() = %q, want %q", p.String(), tc.want)
			}
			again, err := engine.ParsePolicy(p.String())
			if err != nil || again.String() != tc.want {
				t.Fatalf("round trip: %q, %v", again.String(), err)
			}
		})
	}
	for _, bad := range []string{"", "until=read", "fax@5m", "sms@5", "sms@-5m", "sms@1500ms", "sms*3", "sms*0/1m", "sms*2/0s",
		"voice@200h", "sms until=never", strings.Repeat("sms,", 33)} {
		if _, err := engine.ParsePolicy(bad); !errors.Is(err, engine.ErrBadPolicy) {
			t.Errorf("ParsePolicy(%q) = %v, want ErrBadPolicy", bad, err)
		}
	}
}

func TestDingEscalatesOnTheFakeClock(t *testing.T) {
	env := newDingEnv(t, memstore.New(), nil)
	res := env.ding(t, engine.DingRequest{
		To: []string{"bo", outside}, Policy: "inapp,sms@5m,voice@15m until=confirmed",
		Choices: []string{"attend", "decline"},
	})
	// In the app at once: bo's stream has the DING with its choices.
	got := env.sink.wait(t, "bo", 1)
	if m := got[0].Message; m == nil || m.Kind != engine.KindDing || m.ID != res.ID || len(m.Choices) != 2 {
		t.Fatalf("bo's first entry = %+v, want the DING", got[0])
	}
	if n := len(env.n.all()); n != 0 {
		t.Fatalf("%d sends before the SMS step", n)
	}
	env.clock.Advance(5*time.Minute - time.Second)
	env.barrier(t)
	if n := len(env.n.to(boPhone)) + len(env.n.to(outside)); n != 0 {
		t.Fatalf("%d sends a second before the SMS step", n)
	}
	env.clock.Advance(time.Second)
	env.n.waitFor(t, func(s []sent) bool { return countTo(s, boPhone) == 1 && countTo(s, outside) == 1 })
	sms := env.n.to(boPhone)[0]
	if sms.Channel != engine.ChannelSMS || !strings.Contains(sms.Text, "server room on fire") || !strings.Contains(sms.Text, "Ana") ||
		!slices.Equal(sms.Choices, []string{"attend", "decline"}) {
		t.Fatalf("sms = %+v", sms)
	}
	env.clock.Advance(10 * time.Minute)
	env.n.waitFor(t, func(s []sent) bool { return countTo(s, boPhone) == 2 && countTo(s, outside) == 2 })
	call := env.n.to(boPhone)[1]
	if call.Channel != engine.ChannelVoice {
		t.Fatalf("third step went by %v", call.Channel)
	}
	ds := status(t, env.e, res.ID)
	bo := index(ds, "bo")
	waitLedger(t, env.e, res.ID, bo, engine.LedgerCallInitiated)

	// bo presses 2 in the call: confirmed with "decline".
	if err := env.e.ProviderDigits(context.Background(), call.Ref, "2"); err != nil {
		t.Fatal(err)
	}
	ds = status(t, env.e, res.ID)
	rs := ds.Recipients[bo]
	if rs.Status != engine.StatusConfirmed || rs.Answer != 2 || rs.Choice != "decline" || rs.ReachedBy != "voice" {
		t.Fatalf("bo = %+v", rs)
	}
	// (Confirmed during the last call: the policy was never exhausted.)
	want := []engine.LedgerKind{engine.LedgerSent, engine.LedgerSending, engine.LedgerSMSQueued, engine.LedgerSending,
		engine.LedgerCallInitiated, engine.LedgerDigits, engine.LedgerConfirmed}
	if got := events(rs); !slices.Equal(got, want) {
		t.Fatalf("bo's ledger = %v, want %v", got, want)
	}
	if r := receiptOf(t, env.e, res.ID, "bo"); r.State != engine.StateConfirmed || r.Confirmed.IsZero() {
		t.Fatalf("bo's receipt = %+v", r)
	}
	// The sender's stream carries the ledger as events, ending with the
	// confirmation and a receipt event. ProviderDigits returns with its op
	// answered, before its batch reaches the sink: the barrier waits for it.
	env.barrier(t)
	ana := env.sink.entries("ana")
	var kinds []engine.LedgerKind
	var confirmedReceipt bool
	for _, ent := range ana {
		switch ent.Kind {
		case engine.EntryDing:
			if ent.Ding.Recipient == "bo" {
				kinds = append(kinds, ent.Ding.Event)
			}
		case engine.EntryReceipt:
			confirmedReceipt = confirmedReceipt || (ent.Receipt.State == engine.StateConfirmed && ent.Receipt.User == "bo")
		}
	}
	if !slices.Equal(kinds, want[1:]) || !confirmedReceipt {
		t.Fatalf("ana's stream: ding events %v (want %v), confirmed receipt %v", kinds, want[1:], confirmedReceipt)
	}
	// The outsider goes on escalating: still pending (their call's
	// outcome is not known yet).
	if rs := ds.Recipients[index(ds, outside)]; rs.Status != engine.StatusPending {
		t.Fatalf("outsider = %+v", rs)
	}
}

func TestConfirmationStopsLaterSteps(t *testing.T) {
	for _, tc := range []struct {
		name    string
		confirm func(env *dingEnv, id engine.ID) error
		by      string
	}{
		{"app", func(env *dingEnv, id engine.ID) error { return env.e.Confirm(context.Background(), "bo", id, 0) }, "inapp"},
		{"sms reply", func(env *dingEnv, id engine.ID) error {
			return env.e.InboundSMS(context.Background(), boPhone, " OK ")
		}, "sms"},
		{"sms reply in Chinese", func(env *dingEnv, id engine.ID) error {
			return env.e.InboundSMS(context.Background(), boPhone, "收到")
		}, "sms"},
		{"keypress", func(env *dingEnv, id engine.ID) error {
			for _, s := range env.n.to(boPhone) {
				if s.Channel == engine.ChannelVoice {
					return env.e.ProviderDigits(context.Background(), s.Ref, "1")
				}
			}
			return errors.New("no call")
		}, "voice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newDingEnv(t, memstore.New(), nil)
			res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,sms@1m,voice@2m,sms@3m,voice@4m"})
			env.clock.Advance(2 * time.Minute)
			env.n.waitFor(t, func(s []sent) bool { return countTo(s, boPhone) == 2 })
			waitLedger(t, env.e, res.ID, 0, engine.LedgerCallInitiated)
			if err := tc.confirm(env, res.ID); err != nil {
				t.Fatal(err)
			}
			rs := status(t, env.e, res.ID).Recipients[0]
			if rs.Status != engine.StatusConfirmed || rs.ReachedBy != tc.by || rs.NextStep != nil {
				t.Fatalf("after confirming: %+v", rs)
			}
			env.clock.Advance(time.Hour)
			env.barrier(t)
			if n := len(env.n.to(boPhone)); n != 2 {
				t.Fatalf("%d sends to bo, want the 2 before the confirmation", n)
			}
			// (The count is published just after the commit the ledger shows.)
			deadline := time.Now().Add(5 * time.Second)
			for env.e.PendingSteps() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%d steps still pending", env.e.PendingSteps())
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
}

// A confirmation racing a due step: whichever reaches the commit loop
// first wins, and no send is decided after the confirmation is durable.
func TestConfirmationRacingADueStepSendsNothingAfterIt(t *testing.T) {
	env := newDingEnv(t, memstore.New(), func(c *engine.Config) {
		c.Quotas.RecipientInterval = -1
		users := fixedUsers{}
		cts := contacts{"ana": {Name: "Ana"}}
		for i := range 40 {
			u := fmt.Sprintf("u%02d", i)
			users[u] = true
			cts[u] = engine.Contact{Name: u, Phone: fmt.Sprintf("+1555100%04d", i)}
		}
		c.Recipients, c.Contacts = users, cts
	})
	var ids []engine.ID
	for i := range 40 {
		res := env.ding(t, engine.DingRequest{To: []string{fmt.Sprintf("u%02d", i)}, Policy: "inapp,sms@1m,voice@2m"})
		ids = append(ids, res.ID)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	// Every fourth confirmation is durable before its step is due (it must
	// win); the rest race the timer loop.
	for i := 0; i < len(ids); i += 4 {
		if err := env.e.Confirm(context.Background(), fmt.Sprintf("u%02d", i), ids[i], 0); err != nil {
			t.Fatal(err)
		}
	}
	env.clock.Advance(time.Minute) // every SMS step is due now
	for i, id := range ids {
		if i%4 == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- env.e.Confirm(context.Background(), fmt.Sprintf("u%02d", i), id, 0)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	env.clock.Advance(time.Hour)
	env.barrier(t)
	decided := 0
	for i, id := range ids {
		rs := status(t, env.e, id).Recipients[0]
		ev := events(rs)
		c := slices.Index(ev, engine.LedgerConfirmed)
		if rs.Status != engine.StatusConfirmed || c < 0 {
			t.Fatalf("u%02d: %+v", i, rs)
		}
		for j, k := range ev {
			if k == engine.LedgerSending {
				if j > c {
					t.Fatalf("u%02d: a send decided after the confirmation: %v", i, ev)
				}
				decided++
			}
		}
		// Only a decided send can have been made (one decided before
		// the confirmation may still be dropped if the confirmation came
		// before the provider was called).
		if got := len(env.n.to(fmt.Sprintf("+1555100%04d", i))); got > 1 || (got == 1 && !slices.Contains(ev, engine.LedgerSending)) {
			t.Fatalf("u%02d: %d sends, ledger %v", i, got, ev)
		}
	}
	for i := 0; i < len(ids); i += 4 {
		if ev := events(status(t, env.e, ids[i]).Recipients[0]); slices.Contains(ev, engine.LedgerSending) {
			t.Fatalf("u%02d confirmed before the step was due, yet a send was decided: %v", i, ev)
		}
	}
	t.Logf("%d of 30 racing steps won the race", decided)
}

func TestReadStopsOnlyWhenThePolicySaysSo(t *testing.T) {
	env := newDingEnv(t, memstore.New(), nil)
	byRead := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,sms@1m until=read"})
	byConfirm := env.ding(t, engine.DingRequest{To: []string{"cy"}, Policy: "inapp,sms@1m"})
	if err := env.e.Read(context.Background(), "bo", byRead.ID); err != nil {
		t.Fatal(err)
	}
	if err := env.e.Read(context.Background(), "cy", byConfirm.ID); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(time.Minute)
	env.n.waitFor(t, func(s []sent) bool { return countTo(s, cyPhone) == 1 })
	env.barrier(t)
	if n := len(env.n.to(boPhone)); n != 0 {
		t.Fatalf("bo read a until=read DING and still got %d sends", n)
	}
	if rs := status(t, env.e, byRead.ID).Recipients[0]; rs.Status != engine.StatusRead || rs.ReachedBy != "inapp" {
		t.Fatalf("bo = %+v", rs)
	}
}

func TestDeliveryIsRecordedPerDevice(t *testing.T) {
	env := newDingEnv(t, memstore.New(), nil)
	res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,sms@1h"})
	ent := env.sink.wait(t, "bo", 1)
	ctx := context.Background()
	for _, dev := range []string{"phone", "laptop", "phone"} {
		if err := env.e.Ack(ctx, "bo", dev, ent[0].Seq); err != nil {
			t.Fatal(err)
		}
	}
	var devs []string
	for _, ev := range status(t, env.e, res.ID).Recipients[0].Events {
		if ev.Event == engine.LedgerDelivered {
			devs = append(devs, ev.Device)
		}
	}
	if !slices.Equal(devs, []string{"phone", "laptop"}) {
		t.Fatalf("deliveries recorded for %v", devs)
	}
}

func TestSendFailuresRetryAndFallBack(t *testing.T) {
	t.Run("unknown outcome is retried with backoff", func(t *testing.T) {
		env := newDingEnv(t, memstore.New(), nil)
		var calls int
		env.n.setFail(func(engine.Outbound) error {
			calls++
			if calls <= 2 {
				return errors.New("503 from provider")
			}
			return nil
		})
		res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "sms"})
		waitLedgerCount(t, env.e, res.ID, 0, engine.LedgerRetry, 1)
		env.clock.Advance(5 * time.Second)
		waitLedgerCount(t, env.e, res.ID, 0, engine.LedgerRetry, 2)
		env.clock.Advance(30 * time.Second)
		env.n.waitSends(t, 1)
		rs := waitLedger(t, env.e, res.ID, 0, engine.LedgerSMSQueued)
		want := []engine.LedgerKind{engine.LedgerSent, engine.LedgerSending, engine.LedgerRetry, engine.LedgerSending,
			engine.LedgerRetry, engine.LedgerSending, engine.LedgerSMSQueued}
		if !slices.Equal(events(rs), want) {
			t.Fatalf("ledger %v, want %v", events(rs), want)
		}
	})
	t.Run("a rejected call falls back to SMS at once", func(t *testing.T) {
		env := newDingEnv(t, memstore.New(), nil)
		env.n.setFail(func(o engine.Outbound) error {
			if o.Channel == engine.ChannelVoice {
				return fmt.Errorf("400: %w", engine.ErrRejected)
			}
			return nil
		})
		res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "voice"})
		s := env.n.waitSends(t, 1)
		if s[0].Channel != engine.ChannelSMS {
			t.Fatalf("fallback went by %v", s[0].Channel)
		}
		rs := waitLedger(t, env.e, res.ID, 0, engine.LedgerSMSQueued)
		if !slices.Contains(events(rs), engine.LedgerCallFailed) || !slices.Contains(events(rs), engine.LedgerFallback) {
			t.Fatalf("ledger %v", events(rs))
		}
	})
	t.Run("a busy call falls back to SMS; a failed SMS is retried", func(t *testing.T) {
		env := newDingEnv(t, memstore.New(), nil)
		res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "voice"})
		call := env.n.waitSends(t, 1)[0]
		waitLedger(t, env.e, res.ID, 0, engine.LedgerCallInitiated)
		ctx := context.Background()
		for _, ev := range []engine.ProviderEvent{engine.ProviderCallRinging, engine.ProviderCallBusy, engine.ProviderCallBusy} {
			if err := env.e.ProviderStatus(ctx, call.Ref, ev, ""); err != nil {
				t.Fatal(err)
			}
		}
		sms := env.n.waitSends(t, 2)[1]
		if sms.Channel != engine.ChannelSMS {
			t.Fatalf("fallback went by %v", sms.Channel)
		}
		waitLedger(t, env.e, res.ID, 0, engine.LedgerSMSQueued)
		if err := env.e.ProviderStatus(ctx, sms.Ref, engine.ProviderSMSFailed, "30003"); err != nil {
			t.Fatal(err)
		}
		env.clock.Advance(5 * time.Second)
		env.n.waitSends(t, 3)
		env.barrier(t)
		if n := len(env.n.to(boPhone)); n != 3 {
			t.Fatalf("%d sends to bo; the repeated busy report must not fall back twice", n)
		}
		if err := env.e.ProviderStatus(ctx, "SM-unknown", engine.ProviderSMSFailed, ""); !errors.Is(err, engine.ErrNotFound) {
			t.Fatalf("unknown reference: %v", err)
		}
	})
	t.Run("no notifier: recorded as not configured, in-app still works", func(t *testing.T) {
		env := newDingEnv(t, memstore.New(), func(c *engine.Config) { c.Notifier = nil })
		res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,sms"})
		env.sink.wait(t, "bo", 1)
		waitLedger(t, env.e, res.ID, 0, engine.LedgerNotConfigured)
	})
}

func TestQuotasAndQuietHoursRefuse(t *testing.T) {
	ctx := context.Background()
	t.Run("sender daily limit", func(t *testing.T) {
		env := newDingEnv(t, memstore.New(), func(c *engine.Config) { c.Quotas.DingsPerSenderPerDay = 2; c.Quotas.RecipientInterval = -1 })
		env.ding(t, engine.DingRequest{To: []string{"bo"}})
		env.ding(t, engine.DingRequest{To: []string{"bo"}})
		_, err := env.e.Ding(ctx, engine.DingRequest{From: "ana", To: []string{"bo"}, Text: "x"})
		var qe *engine.QuotaError
		if !errors.As(err, &qe) || qe.Reason != engine.ReasonSenderDaily || qe.RetryAfter != 14*time.Hour || !errors.Is(err, engine.ErrQuota) {
			t.Fatalf("third DING: %v", err)
		}
		if _, err := env.e.Ding(ctx, engine.DingRequest{From: "cy", To: []string{"bo"}, Text: "x"}); err != nil {
			t.Fatalf("another sender: %v", err)
		}
		env.clock.Advance(14 * time.Hour)
		env.ding(t, engine.DingRequest{To: []string{"bo"}})
	})
	t.Run("recipient interval", func(t *testing.T) {
		env := newDingEnv(t, memstore.New(), nil)
		env.ding(t, engine.DingRequest{To: []string{"bo"}})
		env.clock.Advance(4 * time.Minute)
		_, err := env.e.Ding(ctx, engine.DingRequest{From: "ana", To: []string{"bo"}, Text: "again"})
		var qe *engine.QuotaError
		if !errors.As(err, &qe) || qe.Reason != engine.ReasonInterval || qe.RetryAfter != time.Minute {
			t.Fatalf("re-DING after 4m: %v", err)
		}
		res := env.ding(t, engine.DingRequest{To: []string{"bo", "cy"}})
		if len(res.Refused) != 1 || res.Refused[0].Recipient != "bo" || res.Refused[0].Reason != engine.ReasonInterval {
			t.Fatalf("refused = %+v", res.Refused)
		}
		ds := status(t, env.e, res.ID)
		if rs := ds.Recipients[index(ds, "bo")]; rs.Status != engine.StatusRefused || !slices.Contains(events(rs), engine.LedgerQuotaRefused) {
			t.Fatalf("bo = %+v", rs)
		}
		env.barrier(t)
		if got := env.sink.entries("bo"); len(got) != 1 {
			t.Fatalf("bo's stream has %d entries; the refused DING must not reach it", len(got))
		}
	})
	t.Run("quiet hours, and critical overrides them", func(t *testing.T) {
		q, err := engine.ParseQuietHours("09:00-17:00 UTC")
		if err != nil {
			t.Fatal(err)
		}
		env := newDingEnv(t, memstore.New(), func(c *engine.Config) {
			c.Contacts.(contacts)["bo"] = engine.Contact{Name: "Bo", Phone: boPhone, Quiet: q}
		})
		_, err = env.e.Ding(ctx, engine.DingRequest{From: "ana", To: []string{"bo"}, Text: "x"})
		var qe *engine.QuotaError
		if !errors.As(err, &qe) || qe.Reason != engine.ReasonQuietHours || qe.RetryAfter != 7*time.Hour {
			t.Fatalf("in quiet hours: %v", err)
		}
		env.ding(t, engine.DingRequest{To: []string{"bo"}, Critical: true})
	})
	t.Run("org SMS budget", func(t *testing.T) {
		env := newDingEnv(t, memstore.New(), func(c *engine.Config) { c.Quotas.SMSPerDay = 1 })
		res := env.ding(t, engine.DingRequest{To: []string{"bo", "cy"}, Policy: "sms"})
		env.n.waitSends(t, 1)
		ds := status(t, env.e, res.ID)
		refused := 0
		for _, rs := range ds.Recipients {
			for _, ev := range rs.Events {
				if ev.Event == engine.LedgerQuotaRefused && ev.Detail == engine.ReasonSMSBudget {
					refused++
				}
			}
		}
		if refused != 1 {
			t.Fatalf("%d recipients refused by the SMS budget, want 1", refused)
		}
	})
	for _, tc := range []struct {
		name string
		r    engine.DingRequest
		want error
	}{
		{"unknown user", engine.DingRequest{From: "ana", To: []string{"zed"}, Text: "x"}, engine.ErrUnknownRecipient},
		{"bad phone", engine.DingRequest{From: "ana", To: []string{"+123"}, Text: "x"}, engine.ErrBadDing},
		{"no text", engine.DingRequest{From: "ana", To: []string{"bo"}, Text: " "}, engine.ErrBadDing},
		{"bad policy", engine.DingRequest{From: "ana", To: []string{"bo"}, Text: "x", Policy: "pager@5m"}, engine.ErrBadPolicy},
		{"unknown policy", engine.DingRequest{From: "ana", To: []string{"bo"}, Text: "x", PolicyName: "nope"}, engine.ErrNotFound},
		{"too many choices", engine.DingRequest{From: "ana", To: []string{"bo"}, Text: "x", Choices: strings.Split("abcdefghij", "")}, engine.ErrBadDing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newDingEnv(t, memstore.New(), nil)
			if _, err := env.e.Ding(ctx, tc.r); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestAnswersAreChecked(t *testing.T) {
	env := newDingEnv(t, memstore.New(), nil)
	ctx := context.Background()
	res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,sms", Choices: []string{"attend", "decline"}})
	env.n.waitSends(t, 1)
	if err := env.e.Confirm(ctx, "bo", res.ID, 3); !errors.Is(err, engine.ErrBadAnswer) {
		t.Fatalf("answer 3 of 2: %v", err)
	}
	if err := env.e.Confirm(ctx, "cy", res.ID, 1); !errors.Is(err, engine.ErrNotRecipient) {
		t.Fatalf("confirm by a non-recipient: %v", err)
	}
	if err := env.e.InboundSMS(ctx, boPhone, "maybe later"); !errors.Is(err, engine.ErrBadAnswer) {
		t.Fatalf("unclear reply: %v", err)
	}
	if err := env.e.InboundSMS(ctx, cyPhone, "OK"); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("reply from a phone with nothing pending: %v", err)
	}
	if err := env.e.InboundSMS(ctx, boPhone, "2"); err != nil {
		t.Fatal(err)
	}
	rs := status(t, env.e, res.ID).Recipients[0]
	if rs.Status != engine.StatusConfirmed || rs.Choice != "decline" || !slices.Contains(events(rs), engine.LedgerReply) {
		t.Fatalf("bo = %+v", rs)
	}
	msg := send(t, env.e, "ana", "plain", "bo")
	if err := env.e.Confirm(ctx, "bo", msg.ID, 0); !errors.Is(err, engine.ErrNotDing) {
		t.Fatalf("confirming a plain message: %v", err)
	}
}

func TestCancelStopsEveryRecipient(t *testing.T) {
	env := newDingEnv(t, memstore.New(), nil)
	res := env.ding(t, engine.DingRequest{To: []string{"bo", "cy", outside}, Policy: "inapp,sms@1m"})
	if n, err := env.e.CancelDing(context.Background(), res.ID); err != nil || n != 3 {
		t.Fatalf("cancel: stopped %d, %v; want 3", n, err)
	}
	if n, err := env.e.CancelDing(context.Background(), res.ID); err != nil || n != 0 {
		t.Fatalf("cancel again: stopped %d, %v; want 0", n, err)
	}
	env.clock.Advance(time.Hour)
	env.barrier(t)
	if n := len(env.n.all()); n != 0 {
		t.Fatalf("%d sends after cancel", n)
	}
	for _, rs := range status(t, env.e, res.ID).Recipients {
		if rs.Status != engine.StatusCancelled {
			t.Fatalf("%+v", rs)
		}
	}
}

func TestNamedPolicies(t *testing.T) {
	env := newDingEnv(t, memstore.New(), nil)
	ctx := context.Background()
	p, _ := engine.ParsePolicy("sms@2s until=read")
	if err := env.e.SetPolicy(ctx, "quick", p); err != nil {
		t.Fatal(err)
	}
	if err := env.e.SetPolicy(ctx, "default", engine.Policy{Steps: []engine.Step{{Channel: engine.ChannelVoice}}, Until: engine.StopConfirmed}); err != nil {
		t.Fatal(err)
	}
	all, err := env.e.Policies()
	if err != nil || len(all) != 2 || all["quick"].String() != "sms@2s until=read" {
		t.Fatalf("Policies() = %v, %v", all, err)
	}
	named := env.ding(t, engine.DingRequest{To: []string{"bo"}, PolicyName: "quick"})
	def := env.ding(t, engine.DingRequest{To: []string{"cy"}})
	if got := status(t, env.e, named.ID).Policy; got != "sms@2s until=read" {
		t.Fatalf("named policy = %q", got)
	}
	if got := status(t, env.e, def.ID).Policy; got != "voice until=confirmed" {
		t.Fatalf("default policy = %q", got)
	}
}

// Escalation is durable: a restart in the middle of a policy fires the
// remaining steps on time, and a send whose outcome was never recorded is
// made again after the restart, once.
func TestRestartInTheMiddleOfAPolicy(t *testing.T) {
	dir := t.TempDir()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	env := newDingEnv(t, db, nil)
	res := env.ding(t, engine.DingRequest{To: []string{"bo", "cy"}, Policy: "inapp,sms@1m,voice@10m"})
	env.clock.Advance(time.Minute)
	env.n.waitFor(t, func(s []sent) bool { return countTo(s, boPhone) == 1 && countTo(s, cyPhone) == 1 })
	waitLedger(t, env.e, res.ID, 0, engine.LedgerSMSQueued)
	waitLedger(t, env.e, res.ID, 1, engine.LedgerSMSQueued)
	if err := env.e.Confirm(context.Background(), "cy", res.ID, 0); err != nil {
		t.Fatal(err)
	}
	// bo's call is due at 10m; the provider hangs on it when it comes.
	hang := make(chan struct{})
	env.n.setFail(func(o engine.Outbound) error {
		if o.Channel == engine.ChannelVoice {
			close(hang)
			return context.Canceled
		}
		return nil
	})
	env.clock.Advance(9 * time.Minute)
	select {
	case <-hang:
	case <-time.After(5 * time.Second):
		t.Fatal("the voice step never reached the provider")
	}
	env.e.Close() // cancels the hanging send
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db, err = pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	env.cfg.Store = db
	env.n.setFail(nil)
	env.open(t)
	if p := env.e.PendingSteps(); p != 1 {
		t.Fatalf("%d pending steps after restart, want bo's call (retry or recovery)", p)
	}
	env.clock.Advance(2 * time.Minute) // past the retry backoff and the recovery
	env.n.waitFor(t, func(s []sent) bool { return countTo(s, boPhone) == 2 })
	env.barrier(t)
	calls := 0
	for _, s := range env.n.to(boPhone) {
		if s.Channel == engine.ChannelVoice {
			calls++
		}
	}
	if calls != 1 || len(env.n.to(cyPhone)) != 1 {
		t.Fatalf("after restart: %d calls to bo (want 1), %d sends to cy (want 1)", calls, len(env.n.to(cyPhone)))
	}
	rs := waitLedger(t, env.e, res.ID, 0, engine.LedgerCallInitiated)
	if rs.Status != engine.StatusPending || !slices.Contains(events(rs), engine.LedgerRetry) {
		t.Fatalf("bo after restart: %v", events(rs))
	}
}

// A send decided before a confirmation but still waiting for a dispatch
// worker is not made once the confirmation is durable.
func TestQueuedSendIsDroppedAfterConfirmation(t *testing.T) {
	env := newDingEnv(t, memstore.New(), func(c *engine.Config) { c.DispatchWorkers = 1 })
	release, entered := make(chan struct{}), make(chan struct{})
	env.n.setFail(func(o engine.Outbound) error {
		if o.To == cyPhone {
			close(entered)
			<-release // the only worker is busy with cy
		}
		return nil
	})
	env.ding(t, engine.DingRequest{To: []string{"cy"}, Policy: "sms"})
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("cy's send never reached the provider")
	}
	res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,sms"}) // queued behind cy's
	if !slices.Contains(events(status(t, env.e, res.ID).Recipients[0]), engine.LedgerSending) {
		t.Fatal("bo's send was not decided before the confirmation")
	}
	if err := env.e.Confirm(context.Background(), "bo", res.ID, 0); err != nil {
		t.Fatal(err)
	}
	close(release)
	env.barrier(t)
	if n := len(env.n.to(boPhone)); n != 0 {
		t.Fatalf("bo got %d SMS after confirming", n)
	}
	if ev := events(status(t, env.e, res.ID).Recipients[0]); slices.Contains(ev, engine.LedgerSMSQueued) {
		t.Fatalf("bo's ledger records an SMS: %v", ev)
	}
}

// An SMS reply confirms the pending DING most recently sent to that
// phone, not merely the newest DING.
func TestReplyConfirmsTheDingThatWasTexted(t *testing.T) {
	env := newDingEnv(t, memstore.New(), func(c *engine.Config) { c.Quotas.RecipientInterval = -1 })
	texted := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "sms"})
	waitLedger(t, env.e, texted.ID, 0, engine.LedgerSMSQueued)
	newer := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp"}) // never texted
	if err := env.e.InboundSMS(context.Background(), boPhone, "OK"); err != nil {
		t.Fatal(err)
	}
	if st := status(t, env.e, texted.ID).Recipients[0].Status; st != engine.StatusConfirmed {
		t.Fatalf("the texted DING is %s", st)
	}
	if st := status(t, env.e, newer.ID).Recipients[0].Status; st != engine.StatusPending {
		t.Fatalf("the DING never texted is %s", st)
	}
}

// TestRefusalJSONIsSeconds: the API's refused[].retry_after is whole
// seconds, rounded up, as in HTTP's Retry-After (it was nanoseconds).
func TestRefusalJSONIsSeconds(t *testing.T) {
	for _, c := range []struct {
		after time.Duration
		want  string
	}{
		{7 * time.Hour, `{"recipient":"bo","reason":"quiet_hours","retry_after":25200}`},
		{1500 * time.Millisecond, `{"recipient":"bo","reason":"quiet_hours","retry_after":2}`},
		{0, `{"recipient":"bo","reason":"quiet_hours"}`},
	} {
		b, err := json.Marshal(engine.Refusal{Recipient: "bo", Reason: engine.ReasonQuietHours, RetryAfter: c.after})
		if err != nil || string(b) != c.want {
			t.Errorf("%v: %s (%v), want %s", c.after, b, err, c.want)
		}
	}
}

// A DING with an Audience shows it as its message's "to"; escalation and
// the status still go by To.
func TestDingAudienceIsWhatRecipientsSee(t *testing.T) {
	env := newDingEnv(t, memstore.New(), nil)
	res := env.ding(t, engine.DingRequest{To: []string{"bo", "cy"}, Audience: []string{"dept:ops"}, Policy: "inapp"})
	for _, u := range []string{"bo", "cy"} {
		es, err := env.e.Range(u, 1, 10)
		if err != nil || len(es) != 1 || !slices.Equal(es[0].Message.To, []string{"dept:ops"}) {
			t.Fatalf("%s's stream: %+v %v", u, es, err)
		}
	}
	if rs := status(t, env.e, res.ID).Recipients; len(rs) != 2 || rs[0].Recipient != "bo" || rs[1].Recipient != "cy" {
		t.Fatalf("status recipients %+v", rs)
	}
	for _, bad := range [][]string{{"a b"}, {"dept:"}, {""}} {
		_, err := env.e.Ding(context.Background(), engine.DingRequest{From: "ana", To: []string{"bo"}, Text: "x", Audience: bad})
		if !errors.Is(err, engine.ErrBadDing) {
			t.Errorf("audience %q: %v, want ErrBadDing", bad, err)
		}
	}
}
