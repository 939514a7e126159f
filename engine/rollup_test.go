package engine_test

import (
	"context"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// Admin statistics are derived from rollups written with the events, and
// are the same after a restart.
func TestAdminStatsCountWhatHappened(t *testing.T) {
	dir := t.TempDir()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	env := newDingEnv(t, db, func(c *engine.Config) {
		c.Quotas.RecipientInterval = -1
		c.Quotas.SMSPerDay = 100
		cts := c.Contacts.(contacts)
		for u, dept := range map[string]string{"ana": "ops", "bo": "eng", "cy": "eng"} {
			ct := cts[u]
			ct.Department = dept
			cts[u] = ct
		}
	})
	e, ctx := env.e, context.Background()
	m1 := send(t, e, "ana", "hello", "bo", "cy")
	send(t, e, "bo", "hi", "ana")
	if err := e.Read(ctx, "bo", m1.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.Ack(ctx, "cy", "phone", 1); err != nil {
		t.Fatal(err)
	}
	// DINGs: bo confirms in the app after 30s; cy never answers; a
	// stranger confirms by SMS.
	d := env.ding(t, engine.DingRequest{To: []string{"bo", "cy", outside}, Policy: "inapp,sms@1m"})
	env.clock.Advance(30 * time.Second)
	if err := e.Confirm(ctx, "bo", d.ID, 0); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(time.Minute)
	env.n.waitFor(t, func(s []sent) bool { return countTo(s, cyPhone) == 1 && countTo(s, outside) == 1 })
	waitLedger(t, e, d.ID, 0, engine.LedgerSMSQueued)
	if err := e.InboundSMS(ctx, outside, "OK"); err != nil {
		t.Fatal(err)
	}
	a, err := e.Announce(ctx, engine.Announcement{From: "ana", To: []string{"bo", "cy"}, Text: "fire drill"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Read(ctx, "cy", a.ID); err != nil {
		t.Fatal(err)
	}
	day := env.clock.Now()
	check := func(st *engine.AdminStats) {
		t.Helper()
		rows := map[string]engine.DepartmentStats{}
		for _, r := range st.Departments {
			rows[r.Department] = r
		}
		ops, eng, out := rows["ops"], rows["eng"], rows[""]
		if ops.Totals.MessagesSent != 1 || ops.Totals.MessagesDelivered != 2 || ops.Totals.MessagesRead != 1 || ops.Totals.DingsSent != 1 {
			t.Errorf("ops: %+v", ops.Totals)
		}
		if eng.Totals.MessagesSent != 1 || eng.Totals.DingRecipients != 2 || eng.Totals.Outcomes[engine.OutcomeConfirmedInApp] != 1 ||
			eng.Totals.Outcomes[engine.OutcomeUnanswered] != 1 || eng.Totals.SMS != 1 || eng.TimeToConfirm.Count != 1 || eng.TimeToConfirm.Median != 30 {
			t.Errorf("eng: %+v %+v", eng.Totals, eng.TimeToConfirm)
		}
		if out.Totals.DingRecipients != 1 || out.Totals.Outcomes[engine.OutcomeConfirmedSMS] != 1 || out.Totals.SMS != 1 {
			t.Errorf("outside the app: %+v", out.Totals)
		}
		if len(st.TopUnanswered) != 1 || st.TopUnanswered[0] != (engine.UserCount{User: "cy", Count: 1}) {
			t.Errorf("top unanswered: %v", st.TopUnanswered)
		}
		if len(st.Announcements) != 1 || st.Announcements[0].ID != a.ID || st.Announcements[0].ReadRatio != 0.5 || st.Announcements[0].Delivered != 1 {
			t.Errorf("announcements: %+v", st.Announcements)
		}
		if st.SMSBudget != 100 || st.Total.Totals.SMS != 2 {
			t.Errorf("spend: %d of %d", st.Total.Totals.SMS, st.SMSBudget)
		}
	}
	st, err := e.AdminStats(engine.StatsQuery{From: day, To: day})
	if err != nil {
		t.Fatal(err)
	}
	check(st)
	// cy confirms late: no longer unanswered.
	if err := e.Confirm(ctx, "cy", d.ID, 0); err != nil {
		t.Fatal(err)
	}
	st, _ = e.AdminStats(engine.StatsQuery{From: day, To: day})
	if len(st.TopUnanswered) != 0 || st.Total.Totals.Outcomes[engine.OutcomeUnanswered] != 0 || st.Total.Totals.Outcomes[engine.OutcomeConfirmedInApp] != 2 {
		t.Fatalf("after cy confirmed: %v %v", st.TopUnanswered, st.Total.Totals.Outcomes)
	}
	// Nothing in another range; the same after a restart.
	if st, _ := e.AdminStats(engine.StatsQuery{From: day.AddDate(0, 0, 1), To: day.AddDate(0, 0, 2)}); len(st.Departments) != 0 {
		t.Fatalf("next days: %+v", st.Departments)
	}
	before, _ := e.AdminStats(engine.StatsQuery{From: day, To: day})
	e.Close()
	db.Close()
	db, err = pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	env.cfg.Store = db
	env.open(t)
	after, err := env.e.AdminStats(engine.StatsQuery{From: day, To: day})
	if err != nil || len(after.Departments) != len(before.Departments) || after.Total.Totals.MessagesDelivered != before.Total.Totals.MessagesDelivered ||
		after.Total.Totals.Outcomes[engine.OutcomeConfirmedInApp] != 2 {
		t.Fatalf("after restart: %+v (%v)", after.Total, err)
	}
}
