package bench

import (
	"fmt"
	"os"
	"slices"
	"time"
)

// A concurrency sweep: the same closed loop at several connection
// counts, on one dingd and on the cluster alike (ClusterConfig.Sweep).
//
// A closed loop's throughput is its connections over its latency, so at
// one count it compares two systems at that count, not at their
// capacity: one dingd answers a submit after one fsync, the cluster after
// the owner's fsync, the standby's and four hops through Redis, so at
// 200 connections the cluster spends more of its time waiting and cuts
// smaller batches, each paying the per-batch costs (a stream append, the
// standby's read, fsync and ack, a relay request) over fewer messages.
// The sweep shows each system's rate, latency and CPU per message as the
// load grows, and the peak of each over the counts measured: what each
// can carry, which is what "throughput" means in the goal.

// sweepPoint is one closed loop of a sweep.
type sweepPoint struct {
	conns     int
	rate      float64
	ack       Latencies
	cpuPerAck float64 // µs of the server processes' CPU per acknowledged message over the window
}

// cell renders p as a table cell: rate, submit→ack p50 / p99, CPU per
// acknowledged message.
func (p sweepPoint) cell() string {
	return fmt.Sprintf("%.0f msgs/s, p50 / p99 %s / %s, %.0f µs", p.rate, p.ack.ms(0.5), p.ack.ms(0.99), p.cpuPerAck)
}

// sweepOn runs a closed loop of icfg's on srv at each of counts (its
// users u0… must exist up to the largest), the CPU of pids read at the
// window's edges.
func sweepOn(what string, icfg IngestConfig, srv *Server, counts []int, pids map[string]int) ([]sweepPoint, error) {
	var pts []sweepPoint
	for _, c := range counts {
		fmt.Fprintf(os.Stderr, "cluster: sweep, %s, closed loop, %d connections\n", what, c)
		cfg := icfg
		cfg.Conns = c
		cpu := cpuSum(cfg.Warmup, cfg.Run, pids)
		run, err := runIngestOn(cfg, srv, 0)
		if err != nil {
			return nil, fmt.Errorf("sweep at %d connections: %w", c, err)
		}
		acked := run.w.acked.Load()
		p := sweepPoint{conns: c, rate: rate(acked, cfg.Run), ack: run.ack}
		if s, ok := cpu(); ok && acked > 0 {
			p.cpuPerAck = s / float64(acked) * 1e6
		}
		pts = append(pts, p)
	}
	return pts, nil
}

// cpuSum is the CPU seconds of pids (not this load generator) over the
// window that starts warmup from now and lasts run, false until it
// ended (cpuAtEdges).
func cpuSum(warmup, run time.Duration, pids map[string]int) func() (float64, bool) {
	window := cpuAtEdges(warmup, run, pids)
	return func() (float64, bool) {
		from, to, ok := window()
		if !ok {
			return 0, false
		}
		s := 0.0
		for name := range pids {
			s += to[name] - from[name]
		}
		return s, true
	}
}

// sweepRows renders a sweep of the cluster beside one dingd's (the same
// counts), then the peak of each over the sweep and the main closed
// loop (mainC and mainS, at mainConns), against the goal.
func sweepRows(cl, one []sweepPoint, mainConns int, mainC, mainS float64) []Row {
	if len(cl) == 0 {
		return nil
	}
	var rows []Row
	peakC := sweepPoint{conns: mainConns, rate: mainC}
	peakS := sweepPoint{conns: mainConns, rate: mainS}
	for i, p := range cl {
		s := one[i]
		rows = append(rows, Row{fmt.Sprintf("sweep, %d connections: acknowledged msgs/s, submit→ack p50 / p99, dingd CPU per ack", p.conns),
			p.cell(), s.cell() + " (one dingd)", ratio(p.rate, s.rate), ""})
		if p.rate > peakC.rate {
			peakC = p
		}
		if s.rate > peakS.rate {
			peakS = s
		}
	}
	rows = append(rows, Row{"peak acknowledged msgs/s over the closed loops (main and sweep)",
		fmt.Sprintf("%.0f at %d connections", peakC.rate, peakC.conns),
		fmt.Sprintf("%.0f at %d connections (one dingd)", peakS.rate, peakS.conns),
		ratio(peakC.rate, peakS.rate), "≥ 0.5× one dingd for cross-partition traffic, each at its peak" + met(peakC.rate >= peakS.rate/2)})
	return rows
}

// sweepUsers is how many users a run with conns connections and this
// sweep needs.
func sweepUsers(conns int, sweep []int) int {
	if len(sweep) == 0 {
		return conns
	}
	return max(conns, slices.Max(sweep))
}
