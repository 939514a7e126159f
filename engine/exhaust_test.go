package engine_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// A recipient's policy is exhausted when it has nothing more to try: the
// last step has fired and the outcome of every send is known (issue 12:
// "exhausted" was recorded when the last call was decided, before it was
// answered). A confirmation or read before then means it never is.
func TestDingExhaustedOnlyAfterTheLastOutcome(t *testing.T) {
	const (
		sent        = engine.LedgerSent
		sending     = engine.LedgerSending
		smsQueued   = engine.LedgerSMSQueued
		smsSent     = engine.LedgerSMSSent
		smsFailed   = engine.LedgerSMSFailed
		initiated   = engine.LedgerCallInitiated
		ringing     = engine.LedgerCallRinging
		answered    = engine.LedgerCallAnswered
		completed   = engine.LedgerCallCompleted
		noAnswer    = engine.LedgerCallNoAnswer
		callFailed  = engine.LedgerCallFailed
		exhausted   = engine.LedgerExhausted
		confirmed   = engine.LedgerConfirmed
		retry       = engine.LedgerRetry
		fallback    = engine.LedgerFallback
		digits      = engine.LedgerDigits
		read        = engine.LedgerRead
		smsDelivery = engine.LedgerSMSDelivered
	)
	ctx := context.Background()
	// head is bo's ledger once the last call of "inapp,sms@1m,voice@2m"
	// is initiated, its SMS having been sent.
	head := []engine.LedgerKind{sent, sending, smsQueued, smsSent, sending, initiated}
	for _, tc := range []struct {
		name   string
		policy string // default "inapp,sms@1m,voice@2m"
		noFall bool   // Config.NoCallFallback
		run    func(x *exhaustCase)
		want   []engine.LedgerKind // the whole ledger
		status string
	}{
		{name: "a call answered and hung up without a key: exhausted when it completes",
			run: func(x *exhaustCase) {
				x.report(x.call(), engine.ProviderCallRinging, engine.ProviderCallAnswered)
				x.notExhausted()
				x.report(x.call(), engine.ProviderCallCompleted)
			},
			want: append(slices.Clone(head), ringing, answered, completed, exhausted), status: engine.StatusPending},
		{name: "a key pressed during the last call confirms: never exhausted",
			run: func(x *exhaustCase) {
				x.report(x.call(), engine.ProviderCallRinging, engine.ProviderCallAnswered)
				if err := x.env.e.ProviderDigits(ctx, x.call(), "1"); err != nil {
					x.t.Fatal(err)
				}
				x.report(x.call(), engine.ProviderCallCompleted)
			},
			want: append(slices.Clone(head), ringing, answered, digits, confirmed, completed), status: engine.StatusConfirmed},
		{name: "confirmed in the app while the last call rings: never exhausted",
			run: func(x *exhaustCase) {
				x.report(x.call(), engine.ProviderCallRinging)
				if err := x.env.e.Confirm(ctx, "bo", x.id, 0); err != nil {
					x.t.Fatal(err)
				}
				x.report(x.call(), engine.ProviderCallNoAnswer)
				x.env.clock.Advance(time.Hour)
				x.env.barrier(x.t)
			},
			want: append(slices.Clone(head), ringing, confirmed, noAnswer), status: engine.StatusConfirmed},
		{name: "until=read, read while the last call rings: never exhausted", policy: "inapp,sms@1m,voice@2m until=read",
			run: func(x *exhaustCase) {
				x.report(x.call(), engine.ProviderCallRinging)
				if err := x.env.e.Read(ctx, "bo", x.id); err != nil {
					x.t.Fatal(err)
				}
				x.report(x.call(), engine.ProviderCallCompleted)
				x.env.clock.Advance(time.Hour)
				x.env.barrier(x.t)
			},
			want: append(slices.Clone(head), ringing, read, completed), status: engine.StatusRead},
		{name: "until=confirmed, read while the last call rings: exhausted all the same",
			run: func(x *exhaustCase) {
				if err := x.env.e.Read(ctx, "bo", x.id); err != nil {
					x.t.Fatal(err)
				}
				x.report(x.call(), engine.ProviderCallBusy)
				x.notExhausted() // the fallback SMS is still to come
				x.env.n.waitSends(x.t, 3)
				waitLedgerCount(x.t, x.env.e, x.id, 0, smsQueued, 2)
				x.report(x.env.n.all()[2].Ref, engine.ProviderSMSSent, engine.ProviderSMSDelivered)
			},
			want:   append(slices.Clone(head), read, engine.LedgerCallBusy, fallback, sending, smsQueued, smsSent, exhausted, smsDelivery),
			status: engine.StatusPending},
		{name: "an unanswered call falls back to an SMS: exhausted once it is sent",
			run: func(x *exhaustCase) {
				x.report(x.call(), engine.ProviderCallRinging, engine.ProviderCallNoAnswer)
				x.env.n.waitSends(x.t, 3)
				waitLedgerCount(x.t, x.env.e, x.id, 0, smsQueued, 2)
				x.notExhausted()
				x.report(x.env.n.all()[2].Ref, engine.ProviderSMSSent)
				// Repeated and late reports change nothing.
				x.report(x.call(), engine.ProviderCallNoAnswer, engine.ProviderCallCompleted)
			},
			want:   append(slices.Clone(head), ringing, noAnswer, fallback, sending, smsQueued, smsSent, exhausted, noAnswer, completed),
			status: engine.StatusPending},
		{name: "a failed call and no fallback: exhausted at once", noFall: true,
			run: func(x *exhaustCase) {
				x.report(x.call(), engine.ProviderCallFailed)
			},
			want: append(slices.Clone(head), callFailed, exhausted), status: engine.StatusPending},
		{name: "a last SMS that fails is retried: exhausted after the retry is sent", policy: "inapp,sms@1m",
			run: func(x *exhaustCase) {
				x.report(x.env.n.all()[0].Ref, engine.ProviderSMSFailed)
				x.notExhausted()
				x.env.clock.Advance(5 * time.Second)
				x.env.n.waitSends(x.t, 2)
				waitLedgerCount(x.t, x.env.e, x.id, 0, smsQueued, 2)
				x.notExhausted()
				x.report(x.env.n.all()[1].Ref, engine.ProviderSMSSent)
			},
			want:   []engine.LedgerKind{sent, sending, smsQueued, smsFailed, retry, sending, smsQueued, smsSent, exhausted},
			status: engine.StatusPending},
		{name: "a restart while the last call rings: its status after the restart exhausts",
			run: func(x *exhaustCase) {
				x.report(x.call(), engine.ProviderCallRinging)
				x.restart()
				x.notExhausted()
				x.report(x.call(), engine.ProviderCallCompleted)
			},
			want: append(slices.Clone(head), ringing, completed, exhausted), status: engine.StatusPending},
		{name: "no final status ever comes: exhausted after OutcomeWait, also across a restart",
			run: func(x *exhaustCase) {
				x.report(x.call(), engine.ProviderCallRinging)
				x.env.clock.Advance(10*time.Minute - time.Second)
				x.env.barrier(x.t)
				x.notExhausted()
				x.restart()
				x.env.clock.Advance(time.Second)
				waitLedger(x.t, x.env.e, x.id, 0, exhausted)
				rs := status(x.t, x.env.e, x.id).Recipients[0]
				if d := rs.Events[len(rs.Events)-1].Detail; !strings.Contains(d, "no final status") {
					x.t.Fatalf("exhausted's detail %q does not say why", d)
				}
			},
			want: append(slices.Clone(head), ringing, exhausted), status: engine.StatusPending},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := &exhaustCase{t: t, dir: t.TempDir()}
			db, err := pebblestore.Open(x.dir, pebblestore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { x.env.st.Close() })
			x.env = newDingEnv(t, db, func(c *engine.Config) { c.NoCallFallback = tc.noFall })
			policy := tc.policy
			if policy == "" {
				policy = "inapp,sms@1m,voice@2m"
			}
			x.id = x.env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: policy}).ID
			x.env.clock.Advance(time.Minute)
			sms := x.env.n.waitSends(t, 1)[0]
			waitLedger(t, x.env.e, x.id, 0, smsQueued)
			if strings.Contains(policy, "voice") {
				x.report(sms.Ref, engine.ProviderSMSSent)
				x.notExhausted()
				x.env.clock.Advance(time.Minute)
				x.env.n.waitSends(t, 2)
				waitLedger(t, x.env.e, x.id, 0, initiated)
				x.notExhausted()
			}
			tc.run(x)
			x.env.barrier(t)
			rs := status(t, x.env.e, x.id).Recipients[0]
			if got := events(rs); !slices.Equal(got, tc.want) || rs.Status != tc.status {
				t.Fatalf("bo: %s, ledger\n%v\nwant %s,\n%v", rs.Status, got, tc.status, tc.want)
			}
			// The sender's stream tells the same story (but for "sent");
			// after a restart, from the restart on.
			var pushed []engine.LedgerKind
			for _, ent := range x.env.sink.entries("ana") {
				if ent.Kind == engine.EntryDing {
					pushed = append(pushed, ent.Ding.Event)
				}
			}
			if !slices.Equal(pushed, tc.want[len(tc.want)-len(pushed):]) {
				t.Fatalf("ana's stream: %v, want the end of %v", pushed, tc.want)
			}
		})
	}
}

// exhaustCase is one case of TestDingExhaustedOnlyAfterTheLastOutcome:
// a DING to bo on a Pebble store that can be restarted.
type exhaustCase struct {
	t   *testing.T
	env *dingEnv
	dir string
	id  engine.ID
}

// call returns the reference of the (only) call to bo.
func (x *exhaustCase) call() string {
	x.t.Helper()
	for _, s := range x.env.n.all() {
		if s.Channel == engine.ChannelVoice {
			return s.Ref
		}
	}
	x.t.Fatal("no call was made")
	return ""
}

// report hands the provider's status reports for ref to the engine.
func (x *exhaustCase) report(ref string, evs ...engine.ProviderEvent) {
	x.t.Helper()
	for _, ev := range evs {
		if err := x.env.e.ProviderStatus(context.Background(), ref, ev, ""); err != nil {
			x.t.Fatalf("status %d of %s: %v", ev, ref, err)
		}
	}
}

// notExhausted fails if bo's ledger says exhausted.
func (x *exhaustCase) notExhausted() {
	x.t.Helper()
	x.env.barrier(x.t)
	if ev := events(status(x.t, x.env.e, x.id).Recipients[0]); slices.Contains(ev, engine.LedgerExhausted) {
		x.t.Fatalf("exhausted too early: %v", ev)
	}
}

// restart closes the engine and its store and opens them again.
func (x *exhaustCase) restart() {
	x.t.Helper()
	x.env.e.Close()
	if err := x.env.st.Close(); err != nil {
		x.t.Fatal(err)
	}
	db, err := pebblestore.Open(x.dir, pebblestore.Options{})
	if err != nil {
		x.t.Fatal(err)
	}
	x.env.st, x.env.cfg.Store = db, db
	x.env.open(x.t)
}
