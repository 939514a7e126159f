package engine

import (
	"fmt"
	"testing"
	"time"

	"github.com/dingmq/ding/engine/store/pebblestore"
)

// BenchmarkAdminStatsYear answers a year's statistics for a company with
// 100 departments (36,500 daily rollups), 250 announcements and 50 people
// with unanswered DINGs on every day. Baseline in the same run: one scan
// over the same number of keys without decoding, the floor of any design
// that keeps one record per day and department.
func BenchmarkAdminStatsYear(b *testing.B) {
	db, err := pebblestore.Open(b.TempDir(), pebblestore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d0 := dayOf(start)
	r := Rollup{MessagesSent: 5000, MessagesDelivered: 20000, MessagesRead: 15000, DingsSent: 20, DingRecipients: 60,
		Outcomes:   map[string]uint64{OutcomeReadInApp: 10, OutcomeConfirmedInApp: 30, OutcomeConfirmedSMS: 10, OutcomeConfirmedVoice: 5, OutcomeUnanswered: 5},
		TimeToRead: make([]uint32, len(latencyBuckets)), TimeToConfirm: make([]uint32, len(latencyBuckets)), SMS: 15, Calls: 5, Announcements: 1}
	for i := range r.TimeToRead {
		r.TimeToRead[i], r.TimeToConfirm[i] = uint32(i), uint32(2*i)
	}
	v := encodeRollup(&r)
	batch := db.NewBatch()
	for d := range 365 {
		for dept := range 100 {
			batch.Set(rollupKey(d0+uint32(d), fmt.Sprintf("dept%03d", dept)), v)
		}
		for u := range 50 {
			batch.Set(unansweredKey(d0+uint32(d), fmt.Sprintf("user%05d", u*37+d)), u64(1))
		}
	}
	av := encodeAnnouncementCounts(&AnnouncementCounts{From: "admin", To: []string{"all"}, Total: 100000, Delivered: 90000, Read: 80000})
	for i := range 250 {
		batch.Set(announcementKey(idAtMillis(start.Add(time.Duration(i)*35*time.Hour).UnixMilli())), av)
	}
	if err := batch.Commit(true); err != nil {
		b.Fatal(err)
	}
	batch.Close()
	e := &Engine{st: db, cfg: Config{}}
	q := StatsQuery{From: start, To: start.AddDate(0, 0, 364)}
	b.Run("baseline=scan", func(b *testing.B) {
		for b.Loop() {
			n := 0
			db.Scan(rollupKey(d0, ""), rollupKey(d0+365, ""), func(k, v []byte) bool { n++; return true })
			if n != 36500 {
				b.Fatalf("%d keys", n)
			}
		}
	})
	b.Run("stats", func(b *testing.B) {
		for b.Loop() {
			st, err := e.AdminStats(q)
			if err != nil || st.RollupsScanned != 36500 || len(st.Announcements) != 250 {
				b.Fatalf("%v %+v", err, st)
			}
		}
	})
}
