package bench

import (
	"container/heap"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dingmq/ding/channels/twilio/twiliotest"
	"github.com/dingmq/ding/engine/store/pebblestore"
)

// EscalateConfig sizes the escalate scenario.
type EscalateConfig struct {
	Bin, Tmp string
	// Steps is how many escalation steps are loaded and left pending
	// (due in two hours); zero means 1,000,000.
	Steps int
	// Fires is how many steps fall due during the lateness window; zero
	// means 3,000.
	Fires int
	// Window is how long the lateness window's due times are spread
	// over, in whole seconds; zero means 30s.
	Window time.Duration
	// Overdue is how many steps fall due while the server is down, per
	// restart; zero means 100.
	Overdue int
	// Pprof, if set, makes dingd serve net/http/pprof on this address, to
	// profile it while the scenario runs.
	Pprof string
}

func (c *EscalateConfig) setDefaults() {
	if c.Steps == 0 {
		c.Steps = 1_000_000
	}
	if c.Fires == 0 {
		c.Fires = 3000
	}
	if c.Window < time.Second {
		c.Window = 30 * time.Second
	}
	if c.Overdue == 0 {
		c.Overdue = 100
	}
}

// The fake Twilio account, and the numbers each phase DINGs. Every phase
// has its own number range, so that the fake's requests say which step
// fired and how often.
const (
	benchSID   = "AC0123456789abcdef0123456789abcdef"
	benchToken = "benchtoken0123456789abcdef"
	benchFrom  = "+15005550006"

	loadPolicy  = "sms@2h" // loaded steps stay pending for the whole run
	perLoadDing = 1000     // the API's limit of recipients per DING
	loaders     = 8        // load DINGs in flight
	// A fire DING has a team's worth of recipients: one recipient per
	// DING would measure the API, and a thousand would measure a burst of
	// a thousand sends rather than when a timer fires.
	perFireDing = 10
	fireLead    = 5 * time.Second // from creating the fire DINGs to the window
	warmPhone   = "+15590000000"
)

func loadPhone(i int) string    { return fmt.Sprintf("+1555%07d", i) }
func firePhone(i int) string    { return fmt.Sprintf("+1556%07d", i) }
func downPhone(r, i int) string { return fmt.Sprintf("+1557%d%06d", r, i) }
func upPhone(r, i int) string   { return fmt.Sprintf("+1558%d%06d", r, i) }

// Escalate loads Steps pending escalation steps (SMS steps two hours out,
// to bare phone numbers, 1,000 per DING) into a dingd whose Twilio is a
// fake in this process, and reports:
//
//   - dingd's RSS growth per pending step, beside what one timer costs in
//     memory kept the rejected way (a container/heap entry, a
//     time.AfterFunc timer), measured in this process;
//   - how late Fires steps due over Window fire while the others stay
//     pending: end to end (due time to the fake Twilio receiving the
//     SMS request) and as the server's own timer-lateness histogram,
//     beside time.AfterFunc timers in this process due at the same
//     moments;
//   - the time from restarting dingd (after SIGKILL, then after SIGTERM)
//     to the first send of a step that fell due while it was down, beside
//     what an in-memory heap rebuilt at start-up would need first: open
//     the same store, scan every timer key, heapify.
//
// It also checks that every step that fell due was sent exactly once and
// that no loaded step was sent.
func Escalate(cfg EscalateConfig) (Table, error) {
	cfg.setDefaults()
	tw := twiliotest.NewServer(benchSID, benchToken)
	defer tw.Close()
	srv, err := newServer(cfg.Bin, cfg.Tmp)
	if err != nil {
		return Table{}, err
	}
	defer srv.Stop()
	srv.args = []string{
		"--twilio-account-sid", benchSID, "--twilio-from", benchFrom,
		"--public-url", "http://" + srv.HTTP, "--twilio-api-url", tw.URL(),
		"--ding-sender-daily", "-1", "--ding-recipient-interval", "-1s",
		"--sms-per-day", "-1", "--calls-per-day", "-1",
	}
	if cfg.Pprof != "" {
		srv.args = append(srv.args, "--pprof", cfg.Pprof)
	}
	srv.env = append(srv.env, "TWILIO_AUTH_TOKEN="+benchToken)
	if err := srv.start(); err != nil {
		return Table{}, err
	}
	if err := srv.AddUsers("u", 0, 1); err != nil {
		return Table{}, err
	}
	e := &escalation{cfg: cfg, srv: srv, tw: tw, dues: map[string]time.Time{}}
	return e.run()
}

// escalation is one run of the scenario.
type escalation struct {
	cfg  EscalateConfig
	srv  *Server
	tw   *twiliotest.Server
	sent int                  // SMS the fake should have received so far
	dues map[string]time.Time // phone → due time of its one step that should fire
}

// restartFigures is what one restart measured, from the exec of dingd.
type restartFigures struct {
	mode              string
	stopped           time.Duration // from the signal to the process's end
	overdueBy         time.Duration // how overdue the earliest step was at exec
	ready, first, all time.Duration
	upLate            Latencies // steps due 2 s after the exec
	pending           float64
	// The rejected design restarting on the same data: a copy of the
	// store taken while dingd was down, opened, every timer key scanned
	// into a heap, heapified.
	copyDir                  string
	rebuildOpen, rebuildScan time.Duration
}

func (e *escalation) run() (Table, error) {
	cfg, srv := e.cfg, e.srv
	// Warm up: one SMS at once, so that the Twilio client and its
	// connection exist before anything is measured.
	if _, err := e.ding([]string{warmPhone}, "sms", 0); err != nil {
		return Table{}, err
	}
	if err := e.awaitSent(30 * time.Second); err != nil {
		return Table{}, err
	}
	if err := e.awaitPending(0); err != nil {
		return Table{}, err
	}
	rss0, heap0, err := e.settledRSS()
	if err != nil {
		return Table{}, err
	}

	// Load, in two halves, to see whether RSS grows with the steps or is
	// a fixed cost.
	c0, err := e.commits()
	if err != nil {
		return Table{}, err
	}
	half := cfg.Steps / 2
	d1, err := e.load(0, half)
	if err != nil {
		return Table{}, err
	}
	rssHalf, _, err := e.settledRSS()
	if err != nil {
		return Table{}, err
	}
	d2, err := e.load(half, cfg.Steps)
	if err != nil {
		return Table{}, err
	}
	loadTime := d1 + d2
	c1, err := e.commits()
	if err != nil {
		return Table{}, err
	}
	if err := e.awaitPending(float64(cfg.Steps)); err != nil {
		return Table{}, err
	}
	rss1, heap1, err := e.settledRSS()
	if err != nil {
		return Table{}, err
	}
	perStep := float64(rss1-rss0) / float64(cfg.Steps)

	// Lateness, with every loaded step still pending.
	fmt.Fprintf(os.Stderr, "escalate: %d steps firing over %v\n", cfg.Fires, cfg.Window)
	h0, err := e.histogram()
	if err != nil {
		return Table{}, err
	}
	endToEnd, afterFunc, created, err := e.fire()
	if err != nil {
		return Table{}, err
	}
	h1, err := e.histogram()
	if err != nil {
		return Table{}, err
	}
	server := h1.Minus(h0)

	// Restarts: a crash, then a clean stop.
	var restarts []restartFigures
	for r, m := range []struct {
		name string
		sig  os.Signal
	}{{"SIGKILL", os.Kill}, {"SIGTERM", syscall.SIGTERM}} {
		fmt.Fprintf(os.Stderr, "escalate: restart after %s\n", m.name)
		f, err := e.restart(r, m.name, m.sig)
		if err != nil {
			return Table{}, err
		}
		restarts = append(restarts, f)
	}
	once, err := e.checkSends()
	if err != nil {
		return Table{}, err
	}

	// Baselines, with dingd stopped.
	if _, err := srv.Kill(syscall.SIGTERM); err != nil {
		return Table{}, err
	}
	fmt.Fprintln(os.Stderr, "escalate: baselines")
	for i := range restarts {
		f := &restarts[i]
		var scanned int
		f.rebuildOpen, f.rebuildScan, scanned, err = rebuildHeap(f.copyDir)
		os.RemoveAll(f.copyDir)
		if err != nil {
			return Table{}, err
		}
		// The copy was taken before the steps due after the restart
		// fired: they are in it too.
		if want := cfg.Steps + 2*cfg.Overdue; scanned != want {
			return Table{}, fmt.Errorf("rebuild baseline scanned %d timer keys, want %d", scanned, want)
		}
	}
	heapPer := heapBytesPerTimer(cfg.Steps)
	afterPer := afterFuncBytesPerTimer(cfg.Steps)
	baseRate, err := pebbleDingWrites(cfg.Tmp, cfg.Steps)
	if err != nil {
		return Table{}, err
	}
	loadRate := rate(int64(cfg.Steps), loadTime)

	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	rows := []Row{
		{"server RSS per pending step (RSS growth ÷ steps)", fmt.Sprintf("%.1f B", perStep),
			fmt.Sprintf("%.1f B per entry in a container/heap", heapPer), ratio(perStep, heapPer),
			"≤ 200 B: " + met(perStep <= 200)},
		{"… the same, beside time.AfterFunc timers", fmt.Sprintf("%.1f B", perStep),
			fmt.Sprintf("%.1f B per time.AfterFunc timer", afterPer), ratio(perStep, afterPer), ""},
		{fmt.Sprintf("server RSS: start → %d steps → %d steps", half, cfg.Steps), mib(rss0) + " → " + mib(rssHalf) + " → " + mib(rss1),
			fmt.Sprintf("%s for a container/heap of %d", mib(int64(heapPer*float64(cfg.Steps))), cfg.Steps), "", ""},
		{"server Go heap in use: start → loaded", mib(heap0) + " → " + mib(heap1), "", "", ""},
		{"load rate (1,000-number DINGs, 8 in flight)", fmt.Sprintf("%.0f steps/s", loadRate),
			fmt.Sprintf("%.0f steps/s into Pebble", baseRate), ratio(loadRate, baseRate), ""},
		{"timer lateness p50 (server histogram: due → fire decided)", ms(server.Quantile(0.5)),
			ms(afterFunc.Quantile(0.5)) + " time.AfterFunc", "", ""},
		{"timer lateness p99 (server histogram)", ms(server.Quantile(0.99)),
			ms(afterFunc.Quantile(0.99)) + " time.AfterFunc", "", "< 100 ms: " + met(server.Quantile(0.99) < 100*time.Millisecond)},
		{"end-to-end lateness p50 (due → fake Twilio got the SMS)", ms(endToEnd.Quantile(0.5)), "", "", ""},
		{"end-to-end lateness p99", ms(endToEnd.Quantile(0.99)), "", "", "< 100 ms: " + met(endToEnd.Quantile(0.99) < 100*time.Millisecond)},
		{"end-to-end lateness max", ms(endToEnd.Quantile(1)), ms(afterFunc.Quantile(1)) + " time.AfterFunc", "", ""},
	}
	for _, f := range restarts {
		rebuild := f.rebuildOpen + f.rebuildScan
		rows = append(rows,
			Row{fmt.Sprintf("restart after %s → ready (/readyz)", f.mode), ms(f.ready), "", "", ""},
			Row{fmt.Sprintf("restart after %s → first overdue step sent", f.mode), ms(f.first),
				fmt.Sprintf("%s in-memory heap: open + scan + heapify", ms(rebuild)), ratio(f.first.Seconds(), rebuild.Seconds()),
				"< 2 s: " + met(f.first < 2*time.Second)},
			Row{fmt.Sprintf("restart after %s → all %d overdue steps sent", f.mode, cfg.Overdue), ms(f.all), "", "", ""},
			Row{fmt.Sprintf("after %s: lateness of steps due 2 s after the restart, p50 / max", f.mode),
				ms(f.upLate.Quantile(0.5)) + " / " + ms(f.upLate.Quantile(1)), "", "", ""},
		)
	}
	rows = append(rows,
		Row{"SMS per step that fell due", once, "", "", "exactly 1"},
		Row{"pending steps the server counts at the end", fmt.Sprintf("%.0f", restarts[len(restarts)-1].pending), fmt.Sprint(cfg.Steps) + " expected", "", ""},
	)
	t := Table{
		Scenario: "escalate",
		Setup: fmt.Sprintf("%d pending escalation steps (policy %q, to bare phone numbers, %d per DING, loaded through the admin API) in one dingd whose SMS go through twilio-go to a fake Twilio in the load generator's process; quotas off. "+
			"Then %d steps (DINGs of %d numbers, policy sms@Ks) fall due over %v while the others stay pending; then %d steps fall due while dingd is down, once after SIGKILL and once after SIGTERM. "+
			"Baselines, same run, in the load generator's process: the memory of %d timers kept in a container/heap (32-byte entries: due, ding id, recipient, n) and as time.AfterFunc timers; time.AfterFunc timers due at the same moments as the fired steps; "+
			"an in-memory heap rebuilt at start-up from a copy of dingd's store taken while it was down (open, scan every timer key, heapify); %d steps written by %d goroutines into a fresh Pebble as synced batches of 1,000 recipients' keys (state, timer; the record), as a DING writes them.",
			cfg.Steps, loadPolicy, perLoadDing, cfg.Fires, perFireDing, cfg.Window, cfg.Overdue, cfg.Steps, cfg.Steps, loaders),
		Rows: rows,
		Notes: []string{
			fmt.Sprintf("RSS is read after 5 s of quiet. Load took %v (%v for the first half); the fire DINGs took %v to create (the window starts %v after the first).", loadTime.Round(time.Millisecond), d1.Round(time.Millisecond), created.Round(time.Millisecond), fireLead),
			fmt.Sprintf("During the load, the engine's commit loop made %.0f commits of %.1f operations (DINGs) on average; Pebble's part of a commit (WAL write, fsync, memtable inserts) took %.1f ms on average, %.0f%% of the load's wall time (without the settling pause).",
				c1.n-c0.n, (c1.ops-c0.ops)/(c1.n-c0.n), 1000*(c1.secs-c0.secs)/(c1.n-c0.n), 100*(c1.secs-c0.secs)/loadTime.Seconds()),
			fmt.Sprintf("Server histogram: %.0f fires observed in the window; quantiles interpolated inside buckets that double from 1 ms, so a p99 in the 16–32 ms bucket says 16–32 ms.", server.Count()),
			fmt.Sprintf("Restart figures: %s.", restartNotes(restarts)),
			fmt.Sprintf("Rebuild baseline: %s.", rebuildNotes(restarts, cfg.Steps+2*cfg.Overdue)),
		},
	}
	return t, nil
}

func rebuildNotes(rs []restartFigures, keys int) string {
	var parts []string
	for _, f := range rs {
		parts = append(parts, fmt.Sprintf("on the store as dingd left it after %s, open %v (it replays the WAL as dingd does), then scan %d timer keys and heapify %v",
			f.mode, f.rebuildOpen.Round(time.Millisecond), keys, f.rebuildScan.Round(time.Millisecond)))
	}
	return strings.Join(parts, "; ")
}

func restartNotes(rs []restartFigures) string {
	var parts []string
	for _, f := range rs {
		parts = append(parts, fmt.Sprintf("%s: stopped %v after the signal, the earliest step %v overdue at the exec",
			f.mode, f.stopped.Round(time.Millisecond), f.overdueBy.Round(time.Millisecond)))
	}
	return strings.Join(parts, "; ")
}

// dingAnswer is the part of POST /v1/dings's answer the scenario uses.
type dingAnswer struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Refused []struct {
		Recipient, Reason string
	} `json:"refused"`
}

// ding sends a DING from u0 to phones and records, for each phone, when
// its step is due (created + after) if it is to fire in this run.
func (e *escalation) ding(phones []string, policy string, after time.Duration) (time.Time, error) {
	var a dingAnswer
	err := e.srv.call("POST", "/v1/dings", map[string]any{"from": "u0", "to": phones, "text": "dingbench", "policy": policy}, &a)
	if err != nil {
		return time.Time{}, err
	}
	if len(a.Refused) > 0 {
		return time.Time{}, fmt.Errorf("ding %s: %d recipients refused (%s)", a.ID, len(a.Refused), a.Refused[0].Reason)
	}
	due := a.Created.Add(after)
	if policy != loadPolicy {
		for _, p := range phones {
			e.dues[p] = due
		}
		e.sent += len(phones)
	}
	return due, nil
}

// awaitSent waits until the fake has every SMS the run should have caused.
func (e *escalation) awaitSent(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := e.tw.WaitFor(ctx, "sms", e.sent)
	if err != nil {
		return fmt.Errorf("%w (have %d)", err, e.tw.Count("sms"))
	}
	return nil
}

// awaitPending waits until dingd counts n pending steps: every send's
// outcome recorded, so that no recovery timer is left to fire later.
func (e *escalation) awaitPending(n float64) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		v, err := e.srv.Metric("ding_escalation_pending_steps")
		if err == nil && v == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dingd counts %v pending steps after 60s, want %v (err %v)", v, n, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// histogram scrapes dingd's timer-lateness histogram.
func (e *escalation) histogram() (Histogram, error) {
	m, err := e.srv.Scrape()
	if err != nil {
		return Histogram{}, err
	}
	return m.Histogram("ding_escalation_timer_lateness_seconds")
}

// commitStats are the engine's commit counters.
type commitStats struct{ n, ops, secs float64 }

func (e *escalation) commits() (commitStats, error) {
	var c commitStats
	var err error
	for _, m := range []struct {
		name string
		v    *float64
	}{
		{"ding_engine_commit_batch_ops_count", &c.n},
		{"ding_engine_commit_batch_ops_sum", &c.ops},
		{"ding_engine_commit_duration_seconds_sum", &c.secs},
	} {
		if *m.v, err = e.srv.Metric(m.name); err != nil {
			return c, err
		}
	}
	return c, nil
}

// settledRSS reads dingd's RSS and Go heap in use after 5 s of quiet.
func (e *escalation) settledRSS() (rss, heapInUse int64, err error) {
	time.Sleep(5 * time.Second)
	if rss, err = e.srv.RSS(); err != nil {
		return 0, 0, err
	}
	h, err := e.srv.Metric("go_memstats_heap_inuse_bytes")
	return rss, int64(h), err
}

// load DINGs loaded phones [from, to), loaders at a time, and returns how
// long it took.
func (e *escalation) load(from, to int) (time.Duration, error) {
	var next atomic.Int64
	next.Store(int64(from))
	var done atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	start := time.Now()
	for range loaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			phones := make([]string, 0, perLoadDing)
			for {
				lo := int(next.Add(perLoadDing)) - perLoadDing
				if lo >= to || firstErr.Load() != nil {
					return
				}
				phones = phones[:0]
				for i := lo; i < min(lo+perLoadDing, to); i++ {
					phones = append(phones, loadPhone(i))
				}
				var a dingAnswer
				err := e.srv.call("POST", "/v1/dings", map[string]any{"from": "u0", "to": phones, "text": "dingbench", "policy": loadPolicy}, &a)
				if err == nil && len(a.Refused) > 0 {
					err = fmt.Errorf("ding %s: %d recipients refused (%s)", a.ID, len(a.Refused), a.Refused[0].Reason)
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				if n := done.Add(int64(len(phones))); n/100_000 != (n-int64(len(phones)))/100_000 {
					fmt.Fprintf(os.Stderr, "escalate: loaded %d steps\n", int64(from)+n)
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, fmt.Errorf("load: %w", err)
	}
	return time.Since(start), nil
}

// fire creates the lateness window's steps, one DING at a time, with
// delays cycling over the window's seconds so that consecutive DINGs fall
// due in different seconds, and arms a time.AfterFunc timer in this
// process for each step's due time. It waits for every send and returns
// the end-to-end lateness, the AfterFunc lateness and how long creating
// the DINGs took.
func (e *escalation) fire() (endToEnd, afterFunc Latencies, created time.Duration, err error) {
	cfg := e.cfg
	secs := int(cfg.Window / time.Second)
	var mu sync.Mutex
	var wg sync.WaitGroup
	var timers []*time.Timer
	defer func() {
		for _, t := range timers {
			t.Stop()
		}
	}()
	start := time.Now()
	var phones []string
	for d := 0; d*perFireDing < cfg.Fires; d++ {
		to := make([]string, 0, perFireDing)
		for i := d * perFireDing; i < min((d+1)*perFireDing, cfg.Fires); i++ {
			to = append(to, firePhone(i))
		}
		after := fireLead + time.Duration(d%secs)*time.Second
		due, err := e.ding(to, fmt.Sprintf("sms@%ds", int(after/time.Second)), after)
		if err != nil {
			return nil, nil, 0, err
		}
		phones = append(phones, to...)
		for range to {
			wg.Add(1)
			timers = append(timers, time.AfterFunc(time.Until(due), func() {
				late := time.Since(due)
				mu.Lock()
				afterFunc = append(afterFunc, late)
				mu.Unlock()
				wg.Done()
			}))
		}
	}
	created = time.Since(start)
	if err := e.awaitSent(fireLead + cfg.Window + 60*time.Second); err != nil {
		return nil, nil, 0, err
	}
	wg.Wait()
	if err := e.awaitPending(float64(cfg.Steps)); err != nil {
		return nil, nil, 0, err
	}
	endToEnd = e.lateness(phones)
	return endToEnd, afterFunc, created, nil
}

// lateness returns, for each phone, the fake's arrival time of its SMS
// minus its step's due time.
func (e *escalation) lateness(phones []string) Latencies {
	want := make(map[string]bool, len(phones))
	for _, p := range phones {
		want[p] = true
	}
	var l Latencies
	for _, r := range e.tw.Requests() {
		if want[r.To] {
			l = append(l, r.At.Sub(e.dues[r.To]))
			delete(want, r.To) // the first send counts; checkSends reports repeats
		}
	}
	return l
}

// restart creates steps due while dingd will be down and steps due 2 s
// after it restarts, stops it with sig, restarts it once the first are
// overdue, and times the restart.
func (e *escalation) restart(r int, mode string, sig os.Signal) (f restartFigures, err error) {
	f.mode = mode
	defer func() {
		if err != nil && f.copyDir != "" {
			os.RemoveAll(f.copyDir)
		}
	}()
	var down, up []string
	var firstDown, lastDown, firstUp time.Time
	const downAfter, upAfter = 4 * time.Second, 7 * time.Second
	for d := 0; d*perFireDing < e.cfg.Overdue; d++ {
		var to []string
		for i := d * perFireDing; i < min((d+1)*perFireDing, e.cfg.Overdue); i++ {
			to = append(to, downPhone(r, i))
		}
		due, err := e.ding(to, fmt.Sprintf("sms@%ds", int(downAfter/time.Second)), downAfter)
		if err != nil {
			return f, err
		}
		if firstDown.IsZero() {
			firstDown = due
		}
		lastDown = due
		down = append(down, to...)
	}
	for d := 0; d*perFireDing < e.cfg.Overdue; d++ {
		var to []string
		for i := d * perFireDing; i < min((d+1)*perFireDing, e.cfg.Overdue); i++ {
			to = append(to, upPhone(r, i))
		}
		due, err := e.ding(to, fmt.Sprintf("sms@%ds", int(upAfter/time.Second)), upAfter)
		if err != nil {
			return f, err
		}
		if firstUp.IsZero() {
			firstUp = due
		}
		up = append(up, to...)
	}
	signalled := time.Now()
	stopped, err := e.srv.Kill(sig)
	if err != nil {
		return f, err
	}
	f.stopped = stopped.Sub(signalled)
	if !stopped.Before(firstDown) {
		return f, fmt.Errorf("dingd took %v to stop after %s: steps fell due before it stopped", f.stopped, mode)
	}
	execAt := firstUp.Add(-2 * time.Second)
	if execAt.Before(lastDown.Add(500 * time.Millisecond)) {
		return f, fmt.Errorf("creating the restart steps took too long to leave them overdue at the restart")
	}
	// Copy the store for the rebuild baseline, and sync the copy so that
	// its writeback does not compete with the restart.
	if f.copyDir, err = os.MkdirTemp(e.cfg.Tmp, "dingbench-rebuild-"); err != nil {
		return f, err
	}
	if err := copyFiles(filepath.Join(e.srv.Data, "store"), f.copyDir); err != nil {
		return f, err
	}
	syscall.Sync()
	if time.Now().After(execAt) {
		return f, fmt.Errorf("copying the store took until %v after the planned restart", time.Since(execAt))
	}
	time.Sleep(time.Until(execAt))
	started, ready, err := e.srv.Restart()
	if err != nil {
		return f, err
	}
	f.overdueBy = started.Sub(firstDown)
	f.ready = ready.Sub(started)
	if err := e.awaitSent(60 * time.Second); err != nil {
		return f, err
	}
	var first, last time.Time
	for _, req := range e.tw.Requests() {
		if !slices.Contains(down, req.To) {
			continue
		}
		if first.IsZero() || req.At.Before(first) {
			first = req.At
		}
		if req.At.After(last) {
			last = req.At
		}
	}
	f.first, f.all = first.Sub(started), last.Sub(started)
	f.upLate = e.lateness(up)
	if err := e.awaitPending(float64(e.cfg.Steps)); err != nil {
		return f, err
	}
	f.pending, _ = e.srv.Metric("ding_escalation_pending_steps")
	return f, nil
}

// checkSends counts the fake's SMS per number: each step that fell due
// must have been sent once, and no loaded step at all.
func (e *escalation) checkSends() (string, error) {
	count := map[string]int{}
	for _, r := range e.tw.Requests() {
		count[r.To]++
	}
	var dup, missing, early int
	for p := range e.dues {
		switch n := count[p]; {
		case n == 0:
			missing++
		case n > 1:
			dup++
		}
	}
	for p := range count {
		if _, ok := e.dues[p]; !ok {
			early++
		}
	}
	s := fmt.Sprintf("1 for each of %d (%d duplicated, %d missing; %d loaded steps sent)", len(e.dues), dup, missing, early)
	if missing > 0 || early > 0 {
		return s, fmt.Errorf("escalate: %s", s)
	}
	if dup > 0 {
		s = strings.Replace(s, "1 for each", "1 or more for each", 1)
	}
	return s, nil
}

// timerEntry is one pending step as an in-memory timer structure would
// hold it: 32 bytes.
type timerEntry struct {
	due  int64
	ding [16]byte
	idx  uint16
	n    uint32
}

type timerHeap []timerEntry

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)        { *h = append(*h, x.(timerEntry)) }
func (h *timerHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// copyFiles copies the regular files of directory src (a stopped Pebble
// store has no subdirectories) into dst.
func copyFiles(src, dst string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, ent := range ents {
		if !ent.Type().IsRegular() {
			continue
		}
		if err := copyFile(filepath.Join(src, ent.Name()), filepath.Join(dst, ent.Name())); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// rebuildHeap is the start-up of the rejected design: open the store in
// dir, scan every timer key ('t' | due(8) | ding(16) | recipient(2) |
// n(4), engine/keys.go) into a heap, heapify. It returns the time to open
// and the time to scan and heapify.
func rebuildHeap(dir string) (open, scan time.Duration, n int, err error) {
	start := time.Now()
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		return 0, 0, 0, err
	}
	defer db.Close()
	open = time.Since(start)
	start = time.Now()
	var h timerHeap
	err = db.Scan([]byte{'t'}, []byte{'u'}, func(k, _ []byte) bool {
		if len(k) != 31 {
			return true
		}
		var t timerEntry
		t.due = int64(binary.BigEndian.Uint64(k[1:9]))
		copy(t.ding[:], k[9:25])
		t.idx = binary.BigEndian.Uint16(k[25:27])
		t.n = binary.BigEndian.Uint32(k[27:31])
		h = append(h, t)
		return true
	})
	if err != nil {
		return 0, 0, 0, err
	}
	heap.Init(&h)
	return open, time.Since(start), len(h), nil
}

// heapAlloc returns the live heap after a collection.
func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// heapBytesPerTimer builds a container/heap of n timers, appended one by
// one as a rebuild would, and returns its live heap per timer.
func heapBytesPerTimer(n int) float64 {
	before := heapAlloc()
	var h timerHeap
	for i := range n {
		h = append(h, timerEntry{due: int64(n - i), idx: uint16(i), n: 1})
	}
	heap.Init(&h)
	after := heapAlloc()
	runtime.KeepAlive(h)
	return float64(after-before) / float64(n)
}

// afterFuncBytesPerTimer arms n time.AfterFunc timers two hours out, each
// closure holding its step, and returns the live heap per timer (the
// *Timer, the closure, the runtime's timer heap slot, and a slice to stop
// them with; a real server would need a map to find them by step, on top).
func afterFuncBytesPerTimer(n int) float64 {
	before := heapAlloc()
	timers := make([]*time.Timer, n)
	for i := range timers {
		t := timerEntry{due: int64(i), idx: uint16(i), n: 1}
		timers[i] = time.AfterFunc(2*time.Hour+time.Duration(i)*time.Microsecond, func() { _ = t })
	}
	after := heapAlloc()
	for _, t := range timers {
		t.Stop()
	}
	return float64(after-before) / float64(n)
}

// pebbleDingWrites is the load baseline: steps recipients written as
// synced batches of 1,000 into a fresh Pebble by loaders goroutines, each
// recipient the two keys a DING writes for a bare phone number (its state,
// ~100 bytes of JSON, and its timer key; the phone key is written when a
// send is decided) and each batch a ~30 KB value, as the DING record. It
// returns steps/s.
func pebbleDingWrites(tmp string, steps int) (float64, error) {
	dir, err := os.MkdirTemp(tmp, "dingbench-baseline-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	db, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	state := []byte(`{"s":"pending","p":"+15550000000","next":0,"ln":0,"tn":1,"t":[{"n":1,"due":1764412345678,"k":1}]}`)
	record := make([]byte, 30*perLoadDing)
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	start := time.Now()
	for range loaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				lo := int(next.Add(perLoadDing)) - perLoadDing
				if lo >= steps {
					return
				}
				var id [16]byte
				binary.BigEndian.PutUint64(id[:], uint64(lo))
				b := db.NewBatch()
				b.Set(append([]byte{'g'}, id[:]...), record)
				for i := lo; i < min(lo+perLoadDing, steps); i++ {
					idx := binary.BigEndian.AppendUint16(nil, uint16(i-lo))
					b.Set(slices.Concat([]byte{'e'}, id[:], idx), state)
					b.Set(slices.Concat([]byte{'t'}, binary.BigEndian.AppendUint64(nil, uint64(i)), id[:], idx, []byte{0, 0, 0, 1}), nil)
				}
				if err := b.Commit(true); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				b.Close()
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, fmt.Errorf("load baseline: %w", err)
	}
	return rate(int64(steps), time.Since(start)), nil
}
