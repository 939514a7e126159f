package main

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/dingmq/ding/bench"
)

// table renders the scenario's result.
func (r *secretRun) table(tp throughputFigures, lat burnFigures, plainReads readResult, plainCPU float64, bulk3, bulk1 burnFigures, erase float64, rs restartFigures, ring keyringFigures, took time.Duration) bench.Table {
	cfg := r.cfg
	t := bench.Table{
		Scenario: "secret",
		Setup: fmt.Sprintf("One dingd (`--burn-after %v`) on loopback, clients through the Go client library. "+
			"(1) Submit throughput: %d pairs of online users (%d connections) each sending %d-byte messages to the other, one at a time per user, "+
			"rotating every %v between plain 1:1 messages, a level-1 chat and a level-3 chat of the same pair (%v warm-up, then %d rounds, each starting one kind later; %v measured per kind). "+
			"(2) Burn lateness: %d level-3 chats (burn delay %v) between %d other online users, %d messages each; every recipient reads its messages at the same moment; "+
			"lateness is the later BURN arrival at the two parties after the deadline. "+
			"(3) Bulk reads and burns: then every message of (1) is read at once by its recipient, plain ones first (baseline), then level 3 (keys in memory), then level 1 (keys in the keyring file). "+
			"(4) Two more dingd, one holding %d live level-1 messages and one %d plain ones, restarted in turn (SIGTERM, exec → /readyz 200), %d times each; then %d level-3 messages added to the plain one and one more restart. "+
			"Baselines, same run: the plain submits; time.AfterFunc timers in dingbench set for the same deadlines; the keyring package alone erasing keys in batches of 1,024, and its file's size holding them; the plain server's restart.",
			burnDelay, cfg.Pairs, 2*cfg.Pairs, cfg.Payload, cfg.Round, cfg.Warmup, cfg.Rounds, tp.measured,
			cfg.Chats, burnDelay, 2*cfg.Chats, cfg.PerChat,
			rs.live, rs.live, cfg.Restarts, rs.live),
	}
	add := func(metric, ding, base, ratio, goal string) {
		t.Rows = append(t.Rows, bench.Row{Metric: metric, Ding: ding, Baseline: base, Ratio: ratio, Goal: goal})
	}

	// (1) Throughput.
	plain := tp.kinds[0]
	rate := func(k *kindStats) float64 { return float64(k.acked) / tp.measured.Seconds() }
	for _, l := range []int{1, 3} {
		k := tp.kinds[l]
		add(fmt.Sprintf("(1) level-%d secret submits acked/s", l), fmt.Sprintf("%.0f", rate(k)), fmt.Sprintf("%.0f plain 1:1", rate(plain)), ratio(rate(k), rate(plain)), "")
	}
	for _, l := range []int{1, 3} {
		k := tp.kinds[l]
		add(fmt.Sprintf("(1) … level %d submit→ack p50 / p99", l), ms(k.ack.Quantile(0.5))+" / "+ms(k.ack.Quantile(0.99)),
			ms(plain.ack.Quantile(0.5))+" / "+ms(plain.ack.Quantile(0.99)), ratio(float64(k.ack.Quantile(0.99)), float64(plain.ack.Quantile(0.99))), "")
	}
	for _, l := range []int{1, 3} {
		k := tp.kinds[l]
		add(fmt.Sprintf("(1) … level %d submit→delivered p50 / p99", l), ms(k.del.Quantile(0.5))+" / "+ms(k.del.Quantile(0.99)),
			ms(plain.del.Quantile(0.5))+" / "+ms(plain.del.Quantile(0.99)), ratio(float64(k.del.Quantile(0.99)), float64(plain.del.Quantile(0.99))), "")
	}
	perMsg := func(k *kindStats) float64 { return k.cpuSec / float64(max(1, k.acked)) * 1e6 }
	for _, l := range []int{1, 3} {
		k := tp.kinds[l]
		add(fmt.Sprintf("(1) … level %d dingd CPU per acked submit", l), fmt.Sprintf("%.1f µs", perMsg(k)), fmt.Sprintf("%.1f µs", perMsg(plain)), ratio(perMsg(k), perMsg(plain)), "")
	}
	batch := func(k *kindStats) string {
		if k.batches == 0 {
			return "no commits"
		}
		return fmt.Sprintf("%.0f/s of %.0f ops, Pebble %.2f ms each", k.batches/tp.measured.Seconds(), k.ops/k.batches, k.commitSec/k.batches*1e3)
	}
	for _, l := range []int{1, 3} {
		add(fmt.Sprintf("(1) … level %d commit batches: rate, mean ops, mean Pebble write+fsync", l), batch(tp.kinds[l]), batch(plain), "", "")
	}
	for _, l := range []struct {
		level int
		rate  float64
	}{{1, rs.load1}, {3, rs.load3}} {
		add(fmt.Sprintf("(1) … level-%d submits acked/s with %d in flight over %d connections (loading (4)'s servers)", l.level, loadInflight, 2*loadPairs),
			fmt.Sprintf("%.0f", l.rate), fmt.Sprintf("%.0f plain 1:1", rs.loadPlain), ratio(l.rate, rs.loadPlain), "")
	}
	add(fmt.Sprintf("(1) … keyring: %d keys (a level-1 window's mean batch, acks included) put + Sync, as such a batch adds before its Pebble commit", ring.syncKeys), ms(ring.syncCost), "", "", "")

	// (2) Lateness at scale.
	goal := func(d time.Duration) string {
		if d <= time.Second {
			return "≤ 1 s: met"
		}
		return "≤ 1 s: NOT met"
	}
	three := func(l bench.Latencies) string {
		return ms(l.Quantile(0.5)) + " / " + ms(l.Quantile(0.99)) + " / " + ms(l.Quantile(1))
	}
	add(fmt.Sprintf("(2) burn lateness p50 / p99 / max, %d burns (deadline: the server's read time + 5 s)", lat.n), three(lat.late), three(lat.afterFunc)+" time.AfterFunc", "", goal(lat.late.Quantile(1)))
	add("(2) … the same from READ sent + 5 s (an upper bound)", three(lat.lateUpper), "", "", "")
	add("(2) … server histogram, due → burn decided: p50 / p99 (bucket)", fmt.Sprintf("%s / %s (%s)", ms(lat.server.Quantile(0.5)), ms(lat.server.Quantile(0.99)), lat.server.BucketOf(0.99)), "", "", "")
	add("(2) … deadlines spread over; first deadline → server counted every burn / last BURN at both parties",
		fmt.Sprintf("%s; %s / %s", ms(lat.dueSpread), ms(lat.serverAll), ms(lat.burnSpan)), "", "", "")
	add("(2) … READ sent → OK p50 / p99; READ sent → server's read time p50 / p99",
		fmt.Sprintf("%s / %s; %s / %s", ms(lat.readLat.Quantile(0.5)), ms(lat.readLat.Quantile(0.99)), ms(lat.sendRead.Quantile(0.5)), ms(lat.sendRead.Quantile(0.99))), "", "", "")

	// (3) Bulk reads and burns.
	readRate := func(n int, span time.Duration) float64 { return float64(n) / span.Seconds() }
	plainRate := readRate(plainReads.n, plainReads.span)
	for _, f := range []burnFigures{bulk3, bulk1} {
		add(fmt.Sprintf("(3) level-%d bulk READ: ids marked read/s (%d ids, %d READs at once)", f.level, f.n, f.readers),
			fmt.Sprintf("%.0f", readRate(f.n, f.readSpan)), fmt.Sprintf("%.0f plain (%d ids)", plainRate, plainReads.n), ratio(readRate(f.n, f.readSpan), plainRate), "")
	}
	for _, f := range []burnFigures{bulk3, bulk1} {
		base, br := "", ""
		if f.level == 1 {
			base, br = fmt.Sprintf("%.0f level 3", bulk3.backlogRate), ratio(f.backlogRate, bulk3.backlogRate)
		}
		add(fmt.Sprintf("(3) level-%d burns/s while a backlog waited (for %s)", f.level, ms(f.backlogFor)),
			fmt.Sprintf("%.0f", f.backlogRate), base, br, "")
	}
	add("(3) … the same level-1 burn rate (one key erased per burn, one keyring fsync per batch) beside the keyring erasing alone", fmt.Sprintf("%.0f", bulk1.backlogRate), fmt.Sprintf("%.0f keyring alone", erase), ratio(bulk1.backlogRate, erase), "")
	for _, f := range []burnFigures{bulk3, bulk1} {
		add(fmt.Sprintf("(3) level-%d burn lateness p50 / p99 / max (deadlines spread over %s)", f.level, ms(f.dueSpread)),
			three(f.late), three(f.afterFunc)+" time.AfterFunc", "", goal(f.late.Quantile(1)))
		add(fmt.Sprintf("(3) … level-%d server histogram p50 / p99 (bucket)", f.level),
			fmt.Sprintf("%s / %s (%s)", ms(f.server.Quantile(0.5)), ms(f.server.Quantile(0.99)), f.server.BucketOf(0.99)), "", "", "")
	}

	// (4) Costs.
	add("(4) keyring file bytes per live level-1 message", fmt.Sprintf("%.1f B (%d B for %d)", float64(rs.ringBytes)/float64(rs.live), rs.ringBytes, rs.live), fmt.Sprintf("%.1f B keyring alone", ring.aloneBytes), "", "")
	add("(4) … main server after (1): keyring file, live level-1 messages", fmt.Sprintf("%d B, %.0f (%.1f B each)", ring.size, ring.live1, float64(ring.size)/max(1, ring.live1)), "", "", "")
	add("(4) … main server after every message burned (3)", fmt.Sprintf("%d B", ring.after), fmt.Sprintf("%d B before", ring.size), "", "")
	add(fmt.Sprintf("(4) restart → ready, %d live level-1 messages: median (min–max)", rs.live), durRange(rs.withKeys), durRange(rs.plain)+fmt.Sprintf(" with %d plain", rs.live), ratio(float64(rs.withKeys.Quantile(0.5)), float64(rs.plain.Quantile(0.5))), "")
	add(fmt.Sprintf("(4) restart → ready, %d live level-3 messages (burned after start-up) + the %d plain", rs.live, rs.live), ms(rs.withL3), ms(rs.plain.Quantile(0.5))+" plain only", ratio(float64(rs.withL3), float64(rs.plain.Quantile(0.5))), "")
	add(fmt.Sprintf("(4) … restart → all %d level-3 messages burned (±20 ms polling)", rs.live), ms(rs.l3AllBurned), "", "", "")

	t.Notes = append(t.Notes,
		fmt.Sprintf("(1) Submits counted by their start inside a window of their kind; %d / %d / %d acked plain / level 1 / level 3. dingd CPU and commit figures are /metrics deltas at the window boundaries (process_cpu_seconds_total, ding_engine_commit_*). The Pebble commit time excludes the keyring's fsync, which the commit loop does just before it in a batch with level-1 or 2 messages.",
			plain.acked, tp.kinds[1].acked, tp.kinds[3].acked),
		fmt.Sprintf("(2) Lateness per burn: the later of the two BURN arrivals (each client's entries read by one goroutine per connection) minus the deadline. dingd arms a burn at the commit of the READ, at the batch's time in ms + the delay; the sender's RECEIPT event (read) carries that same time in ms, so the deadline is exact to the ms. Cross-check: %d of %d deadlines fell outside [READ sent + 5 s, OK + 5 s]. The AfterFunc baseline is dingbench's own timer lateness, one time.AfterFunc per message set for OK + 5 s, on the same %d cores. Server histogram: %.0f burns, buckets doubling from 1 ms, quantiles interpolated inside them. dingd CPU from the first READ to the last BURN: %.2f s in %s; %.0f commit batches (%.0f ops).",
			lat.outside, lat.n, runtime.NumCPU(), lat.server.Count(), lat.cpuSec, ms(lat.wall), lat.batches, lat.ops),
		fmt.Sprintf("(3) The phase-1 messages are read by their %d recipients at once, one READ of up to 1,000 ids at a time each: first the plain ones (the baseline: a plain read arms no timer; dingd CPU %.2f s; READ → OK p50 / p99 %s / %s), then level 3 (READ → OK %s / %s), then level 1 (%s / %s). Burns/s is the growth of dingd's ding_secret_burns_total (polled every 50 ms) over the longest stretch in which more than 1,024 burns (one timer batch) were due and not yet burned: the rate dingd burns at, not the rate burns fell due. dingd CPU from the first READ to the last BURN: level 3 %.2f s in %s (%.0f commit batches), level 1 %.2f s in %s (%.0f batches). The keyring baseline erases %d random keys from a fresh file, 1,024 per Erase (one fsync each). Deadlines outside the READ's round trip: %d (level 3), %d (level 1).",
			plainReads.readers, plainCPU, ms(plainReads.readLat.Quantile(0.5)), ms(plainReads.readLat.Quantile(0.99)),
			ms(bulk3.readLat.Quantile(0.5)), ms(bulk3.readLat.Quantile(0.99)), ms(bulk1.readLat.Quantile(0.5)), ms(bulk1.readLat.Quantile(0.99)),
			bulk3.cpuSec, ms(bulk3.wall), bulk3.batches, bulk1.cpuSec, ms(bulk1.wall), bulk1.batches, bulk1.n, bulk3.outside, bulk1.outside),
		fmt.Sprintf("(4) Loading %d messages through %d connections, %d in flight: %.0f level-1 / %.0f plain / %.0f level-3 msgs/s. Live secret messages after the level-1 server's restarts: %.0f (want %d); after the level-3 restart, level-3 messages burned with reason restart: %.0f, live: %.0f (want 0).",
			rs.live, 2*loadPairs, loadInflight, rs.load1, rs.loadPlain, rs.load3, rs.liveAfter, rs.live, rs.l3Burned, rs.l3LiveAfter),
		fmt.Sprintf("The scenario took %s.", took.Round(time.Second)),
	)
	return t
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// durRange renders a median and the range of a few samples.
func durRange(ds bench.Latencies) string {
	if len(ds) == 0 {
		return "none"
	}
	parts := []string{ms(ds.Quantile(0.5))}
	if len(ds) > 1 {
		parts = append(parts, fmt.Sprintf("(%s–%s)", strings.TrimSuffix(ms(slices.Min(ds)), " ms"), ms(slices.Max(ds))))
	}
	return strings.Join(parts, " ")
}
