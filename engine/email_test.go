package engine_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// The e-mail step through the engine, with the fake notifier; package
// channels/email and internal/node test it against a real SMTP server on
// loopback.

// smtpErr is a notifier error that says its SMTP code, as channels/email's do.
type smtpErr struct {
	code int
	err  error
}

func (e *smtpErr) Error() string          { return fmt.Sprintf("smtp %d", e.code) }
func (e *smtpErr) Unwrap() error          { return e.err }
func (e *smtpErr) ProviderDetail() string { return fmt.Sprintf("smtp %d", e.code) }

func newEmailEnv(t testing.TB, mod func(*engine.Config)) *dingEnv {
	return newDingEnv(t, memstore.New(), func(c *engine.Config) {
		c.Contacts = contacts{
			"ana": {Name: "Ana", Phone: anaPhone, Email: "ana@example.com"},
			"bo":  {Name: "Bo", Phone: boPhone, Email: "bo@example.com"},
			"cy":  {Name: "Cy", Phone: cyPhone}, // no address
		}
		if mod != nil {
			mod(c)
		}
	})
}

func TestParsePolicyEmail(t *testing.T) {
	p, err := engine.ParsePolicy("inapp,email@1m,sms@5m,voice@15m")
	if err != nil {
		t.Fatal(err)
	}
	if p.Steps[1].Channel != engine.ChannelEmail || p.Steps[1].After != time.Minute {
		t.Fatalf("step %+v", p.Steps[1])
	}
	if got := p.String(); got != "inapp,email@1m,sms@5m,voice@15m until=confirmed" {
		t.Fatalf("String() = %q", got)
	}
	if _, err := engine.ParsePolicy("inapp,fax@1m"); !errors.Is(err, engine.ErrBadPolicy) {
		t.Fatalf("unknown channel: %v", err)
	}
}

func TestEmailStepSendsOnceAtItsTime(t *testing.T) {
	env := newEmailEnv(t, nil)
	res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,email@1m,sms@5m", Choices: []string{"coming", "can't"}})
	env.clock.Advance(59 * time.Second)
	env.barrier(t)
	if s := env.n.all(); len(s) != 0 {
		t.Fatalf("sent before the step's time: %+v", s)
	}
	env.clock.Advance(time.Second)
	s := env.n.waitSends(t, 1)
	if s[0].Channel != engine.ChannelEmail || s[0].To != "bo@example.com" || s[0].Sender != "Ana" || !slices.Equal(s[0].Choices, []string{"coming", "can't"}) {
		t.Fatalf("send %+v", s[0].Outbound)
	}
	rs := waitLedger(t, env.e, res.ID, 0, engine.LedgerEmailSent)
	want := []engine.LedgerKind{engine.LedgerSent, engine.LedgerSending, engine.LedgerEmailSent}
	if !slices.Equal(events(rs), want) {
		t.Fatalf("ledger %v, want %v", events(rs), want)
	}
	env.barrier(t)
	if n := len(env.n.all()); n != 1 {
		t.Fatalf("%d sends, want 1", n)
	}
}

func TestEmailLinkConfirmStopsLaterSteps(t *testing.T) {
	env := newEmailEnv(t, nil)
	res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,email@1m,sms@5m", Choices: []string{"coming", "can't"}})
	env.clock.Advance(time.Minute)
	env.n.waitSends(t, 1)
	ctx := context.Background()
	cr, err := env.e.ConfirmByLink(ctx, res.ID, 0, 2)
	if err != nil || cr.Already || cr.Answer != 2 || cr.Choice != "can't" || cr.By != engine.ChannelEmail {
		t.Fatalf("confirm by link: %+v, %v", cr, err)
	}
	again, err := env.e.ConfirmByLink(ctx, res.ID, 0, 1)
	if err != nil || !again.Already || again.Answer != 2 {
		t.Fatalf("second confirm: %+v, %v; want Already with the first answer", again, err)
	}
	env.clock.Advance(10 * time.Minute)
	env.barrier(t)
	if n := len(env.n.all()); n != 1 {
		t.Fatalf("%d sends; the SMS after the confirmation must not go", n)
	}
	rs := status(t, env.e, res.ID).Recipients[0]
	if rs.Status != engine.StatusConfirmed || rs.ReachedBy != "email" || rs.Answer != 2 {
		t.Fatalf("recipient %+v", rs)
	}
	if _, err := env.e.ConfirmByLink(ctx, res.ID, 5, 1); !errors.Is(err, engine.ErrNotRecipient) {
		t.Fatalf("bad index: %v", err)
	}
	if _, err := env.e.ConfirmByLink(ctx, engine.ID{1}, 0, 1); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("unknown DING: %v", err)
	}
}

func TestEmailReadBeforeTheStepStopsIt(t *testing.T) {
	env := newEmailEnv(t, nil)
	res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,email@1m until=read"})
	env.sink.wait(t, "bo", 1)
	if err := env.e.Confirm(context.Background(), "bo", res.ID, 0); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(2 * time.Minute)
	env.barrier(t)
	if s := env.n.all(); len(s) != 0 {
		t.Fatalf("sent after the confirmation: %+v", s)
	}
}

func TestEmailFailures(t *testing.T) {
	t.Run("no address", func(t *testing.T) {
		env := newEmailEnv(t, nil)
		res := env.ding(t, engine.DingRequest{To: []string{"cy", "+15550000099"}, Policy: "inapp,email"})
		waitLedger(t, env.e, res.ID, 0, engine.LedgerNoEmail)
		waitLedger(t, env.e, res.ID, 1, engine.LedgerNoEmail) // a phone number has no address
		env.barrier(t)
		if s := env.n.all(); len(s) != 0 {
			t.Fatalf("sent: %+v", s)
		}
	})
	t.Run("a temporary failure is retried with backoff", func(t *testing.T) {
		env := newEmailEnv(t, nil)
		var calls int
		env.n.setFail(func(engine.Outbound) error {
			calls++
			if calls == 1 {
				return &smtpErr{451, errors.New("try later")}
			}
			return nil
		})
		res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "email"})
		rs := waitLedger(t, env.e, res.ID, 0, engine.LedgerRetry)
		if ev := rs.Events[2]; ev.Event != engine.LedgerEmailFailed || ev.Detail != "smtp 451; temporary" {
			t.Fatalf("event %+v", ev)
		}
		env.clock.Advance(5 * time.Second)
		rs = waitLedger(t, env.e, res.ID, 0, engine.LedgerEmailSent)
		want := []engine.LedgerKind{engine.LedgerSent, engine.LedgerSending, engine.LedgerEmailFailed, engine.LedgerRetry, engine.LedgerSending, engine.LedgerEmailSent}
		if !slices.Equal(events(rs), want) {
			t.Fatalf("ledger %v, want %v", events(rs), want)
		}
	})
	t.Run("a permanent failure is final", func(t *testing.T) {
		env := newEmailEnv(t, nil)
		env.n.setFail(func(engine.Outbound) error {
			return &smtpErr{550, fmt.Errorf("no such mailbox: %w", engine.ErrRejected)}
		})
		res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "email,inapp@1m"})
		rs := waitLedger(t, env.e, res.ID, 0, engine.LedgerEmailFailed)
		env.clock.Advance(10 * time.Minute)
		env.barrier(t)
		rs = status(t, env.e, res.ID).Recipients[0]
		if slices.Contains(events(rs), engine.LedgerRetry) {
			t.Fatalf("a 5xx was retried: %v", events(rs))
		}
		if ev := rs.Events[2]; ev.Detail != "smtp 550; permanent, not retried" {
			t.Fatalf("event %+v", ev)
		}
	})
	t.Run("the org's daily budget", func(t *testing.T) {
		env := newEmailEnv(t, func(c *engine.Config) { c.Quotas.EmailsPerDay = 1 })
		res := env.ding(t, engine.DingRequest{To: []string{"ana", "bo"}, Policy: "email", From: "cy"})
		rs := waitLedger(t, env.e, res.ID, 1, engine.LedgerQuotaRefused)
		if ev := rs.Events[len(rs.Events)-1]; ev.Detail != engine.ReasonEmailBudget || ev.Channel != "email" {
			t.Fatalf("event %+v", ev)
		}
		env.barrier(t)
		if n := len(env.n.all()); n != 1 {
			t.Fatalf("%d sends, want 1", n)
		}
	})
}

func TestNotifiersRouteByChannel(t *testing.T) {
	sms, mail := &fakeNotifier{}, &fakeNotifier{}
	ns := engine.Notifiers{engine.ChannelSMS: sms, engine.ChannelEmail: mail}
	ctx := context.Background()
	if _, err := ns.Send(ctx, engine.Outbound{Channel: engine.ChannelEmail, To: "bo@example.com"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Send(ctx, engine.Outbound{Channel: engine.ChannelVoice}); !errors.Is(err, engine.ErrNotConfigured) {
		t.Fatalf("voice with no notifier: %v", err)
	}
	if len(sms.all()) != 0 || len(mail.all()) != 1 {
		t.Fatalf("sms %d, mail %d", len(sms.all()), len(mail.all()))
	}
}

func TestEmailLinkOfARemovedRecipientIsRefused(t *testing.T) {
	env := newEmailEnv(t, nil)
	res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "email,sms@5m"})
	env.n.waitSends(t, 1)
	ctx := context.Background()
	if n, err := env.e.StopUser(ctx, "bo"); err != nil || n != 1 {
		t.Fatalf("stop user: %d, %v", n, err)
	}
	if _, err := env.e.ConfirmByLink(ctx, res.ID, 0, 0); !errors.Is(err, engine.ErrNotRecipient) {
		t.Fatalf("confirm by the link of a removed recipient: %v", err)
	}
	if rs := status(t, env.e, res.ID).Recipients[0]; rs.Status != engine.StatusRemoved {
		t.Fatalf("recipient %+v", rs)
	}
}

// A pending e-mail step survives a restart (Pebble) and fires once, on
// time; a confirmation by link after the restart stops the SMS after it.
func TestEmailStepSurvivesARestart(t *testing.T) {
	dir := t.TempDir()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	env := newDingEnv(t, db, func(c *engine.Config) {
		c.Contacts = contacts{"ana": {Name: "Ana"}, "bo": {Name: "Bo", Phone: boPhone, Email: "bo@example.com"}}
	})
	res := env.ding(t, engine.DingRequest{To: []string{"bo"}, Policy: "inapp,email@1m,sms@5m"})
	env.e.Close()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if db, err = pebblestore.Open(dir, pebblestore.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	env.cfg.Store = db
	env.open(t)
	env.clock.Advance(59 * time.Second)
	env.barrier(t)
	if n := len(env.n.all()); n != 0 {
		t.Fatalf("%d sends before the step's time", n)
	}
	env.clock.Advance(time.Second)
	if s := env.n.waitSends(t, 1); s[0].Channel != engine.ChannelEmail || s[0].To != "bo@example.com" {
		t.Fatalf("send %+v", s[0].Outbound)
	}
	waitLedger(t, env.e, res.ID, 0, engine.LedgerEmailSent)
	if _, err := env.e.ConfirmByLink(context.Background(), res.ID, 0, 0); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(10 * time.Minute)
	env.barrier(t)
	if n := len(env.n.all()); n != 1 {
		t.Fatalf("%d sends, want the one e-mail", n)
	}
}

// Webhook subscribers can ask for the e-mail ledger events by name.
func TestEmailLedgerEventsAreWebhookTypes(t *testing.T) {
	for _, typ := range []string{"ding.email_sent", "ding.email_failed", "ding.no_email"} {
		if err := engine.CheckWebhookFilter(typ); err != nil {
			t.Errorf("%s: %v", typ, err)
		}
	}
}
