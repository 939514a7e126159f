package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
)

// ClusterConfig sizes the cluster scenario.
type ClusterConfig struct {
	Bin, Tmp string
	// Conns, Payload, Warmup and Run are the ingest load's (a closed
	// loop of the Go client library).
	Conns, Payload int
	Warmup, Run    time.Duration
	// Failovers is how many times the serving member is killed.
	Failovers int
	// Pauses, with Partitions, is how many times the node serving u0 is
	// paused (SIGSTOP) instead, and woken (SIGCONT) once u0's client has
	// an acknowledgement again; PongTimeout is that client's (zero: the
	// client library's default, a third of the ping interval).
	Pauses      int
	PongTimeout time.Duration
	// OwnerOnly also runs the load against three members with
	// --ack-replicas 0 (owner-only durability), on a redis-server of
	// their own: the replication's cost in the same run.
	OwnerOnly bool
	// Profiling, if set, profiles the owner over the measured window;
	// with Partitions, each node (ports from Pprof's on, files
	// Profile.a, .b, .c).
	Profiling Profiling
	// Partitions, from 2, runs three nodes of that many partitions each
	// (a member per partition) instead of one partition
	// (clusterPartitions).
	Partitions int
	// Handovers, with Partitions, is how many times a partition is handed
	// over while a user of another partition sends into it.
	Handovers int
	// AnnUsers and AnnConns, with Partitions, size the announcement to
	// all after the closed loop, on one dingd and on the cluster
	// (clusterann.go): AnnUsers more users, AnnConns of them online. Zero
	// AnnUsers: none.
	AnnUsers, AnnConns int
	// Sweep, with Partitions, is more connection counts at which the
	// closed loop runs again, on one dingd and on the cluster alike,
	// after the main one (sweep.go): each system's peak beside the
	// other's.
	Sweep []int
	// Rolling, with Partitions, is how many rounds of rolling restarts
	// (each node drained, stopped and started again in turn) run under a
	// sender per partition (rolling.go).
	Rolling int
	// UpgradeTo, with Rolling, is another dingd binary each node is
	// started again from (a rolling upgrade from Bin to it).
	UpgradeTo string
}

// Cluster compares three dingd members on one redis-server (cluster mode:
// an owner, its standby, a spare) with one dingd on its own, in the same
// run: the ingest closed loop against each (acknowledged msgs/s, submit→
// ack and submit→delivered latencies), what Redis does per acknowledged
// message, and the time from SIGKILL of the serving member to the first
// acknowledgement on the next one, Failovers times in a row (the killed
// member is restarted and rejoins before the next kill).
func Cluster(cfg ClusterConfig) (Table, error) {
	cfg.Payload = max(cfg.Payload, 8)
	icfg := IngestConfig{Bin: cfg.Bin, Tmp: cfg.Tmp, Conns: cfg.Conns, Payload: cfg.Payload, Warmup: cfg.Warmup, Run: cfg.Run}

	fmt.Fprintf(os.Stderr, "cluster: one dingd, closed loop, %d connections\n", cfg.Conns)
	if (len(cfg.Sweep) > 0 || cfg.Rolling > 0 || cfg.UpgradeTo != "") && cfg.Partitions < 2 {
		return Table{}, errors.New("cluster: --sweep, --rolling and --upgrade-to are for --partitions")
	}
	if cfg.UpgradeTo != "" && cfg.Rolling == 0 {
		return Table{}, errors.New("cluster: --upgrade-to needs --rolling")
	}
	srv, err := StartServer(cfg.Bin, cfg.Tmp, sweepUsers(cfg.Conns, cfg.Sweep))
	if err != nil {
		return Table{}, err
	}
	singleCPU := cpuWindow(cfg.Warmup, cfg.Run, map[string]int{"dingd": srv.cmd.Process.Pid})
	single, err := runIngestOn(icfg, srv, 0)
	var oneSweep []sweepPoint
	if err == nil {
		oneSweep, err = sweepOn("one dingd", icfg, srv, cfg.Sweep, map[string]int{"dingd": srv.cmd.Process.Pid})
	}
	var oneAnn annFigures
	if err == nil && cfg.Partitions > 1 && cfg.AnnUsers > 0 {
		oneAnn, err = announceToAll(srv, []*Server{srv}, nil, cfg.AnnUsers, cfg.AnnConns, sweepUsers(cfg.Conns, cfg.Sweep))
	}
	srv.Stop()
	if err != nil {
		return Table{}, err
	}
	if cfg.Partitions > 1 {
		return clusterPartitions(cfg, icfg, single, singleCPU, oneAnn, oneSweep)
	}

	rs, err := startRedis(cfg.Tmp)
	if err != nil {
		return Table{}, err
	}
	defer rs.stop()
	fmt.Fprintf(os.Stderr, "cluster: three members on redis-server %s\n", rs.addr)
	cl, err := startCluster(cfg.Bin, cfg.Tmp, rs.addr, cfg.Conns, nil, cfg.Profiling.dingdArgs()...)
	if err != nil {
		return Table{}, err
	}
	defer cl.stop()
	fmt.Fprintf(os.Stderr, "cluster: closed loop, %d connections, against the owner\n", cfg.Conns)
	pids := map[string]int{"redis-server": rs.cmd.Process.Pid}
	for i, m := range cl.members {
		pids[[]string{"owner", "standby", "spare"}[i]] = m.cmd.Process.Pid
	}
	clusterCPU := cpuWindow(cfg.Warmup, cfg.Run, pids)
	var before, after redisStats
	start := time.Now()
	// Redis's counters at the measured window's edges.
	beforeAt := time.AfterFunc(cfg.Warmup, func() { before = rs.stats() })
	afterAt := time.AfterFunc(cfg.Warmup+cfg.Run, func() { after = rs.stats() })
	var profiled func() (string, error)
	profAt := time.AfterFunc(cfg.Warmup, func() { profiled = cfg.Profiling.begin(int(cfg.Run.Seconds())) })
	repl, err := runIngestOn(icfg, cl.serving(), 0)
	profAt.Stop()
	if profiled != nil {
		if f, perr := profiled(); perr != nil {
			fmt.Fprintf(os.Stderr, "cluster: owner profile: %v\n", perr)
		} else if f != "" {
			fmt.Fprintf(os.Stderr, "cluster: owner CPU profile over the window in %s\n", f)
		}
	}
	beforeAt.Stop()
	afterAt.Stop()
	if err != nil {
		return Table{}, err
	}
	if time.Since(start) < cfg.Warmup+cfg.Run || after.calls == 0 {
		return Table{}, errors.New("cluster: the load ended before its window")
	}

	var ownerOnly *ingestRun
	if cfg.OwnerOnly {
		if ownerOnly, err = clusterIngest(cfg, icfg, []string{"--ack-replicas", "0"}); err != nil {
			return Table{}, fmt.Errorf("ack-replicas 0: %w", err)
		}
	}

	var failovers Latencies
	for i := range cfg.Failovers {
		fmt.Fprintf(os.Stderr, "cluster: failover %d of %d\n", i+1, cfg.Failovers)
		d, err := cl.failover()
		if err != nil {
			return Table{}, fmt.Errorf("failover %d: %w", i+1, err)
		}
		failovers = append(failovers, d)
	}
	t := clusterTable(cfg, single, repl, before, after, failovers)
	if ownerOnly != nil {
		cr, or := rate(repl.w.acked.Load(), cfg.Run), rate(ownerOnly.w.acked.Load(), cfg.Run)
		p50d := repl.ack.Quantile(0.5) - ownerOnly.ack.Quantile(0.5)
		t.Rows = append(t.Rows,
			Row{"--ack-replicas 0: acknowledged msgs/s", fmt.Sprintf("%.0f (ack-replicas 1)", cr), fmt.Sprintf("%.0f (ack-replicas 0)", or), ratio(cr, or), ""},
			Row{"--ack-replicas 0: submit→ack p50 / p99", repl.ack.ms(0.5) + " / " + repl.ack.ms(0.99), ownerOnly.ack.ms(0.5) + " / " + ownerOnly.ack.ms(0.99),
				fmt.Sprintf("%+.2f ms at p50", float64(p50d)/1e6), "the standby's durable apply adds ≤ 2 ms to p50"})
		t.Notes = append(t.Notes, "--ack-replicas 0 rows: the same three members and load, each member started with --ack-replicas 0 (owner-only durability) on a redis-server of its own, right after the default run: what waiting for the standby costs, measured beside it.")
	}
	t.Rows = append(t.Rows, Row{"CPU seconds over the measured window", clusterCPU(), singleCPU(), "", ""})
	return t, nil
}

// clusterIngest runs the ingest load against three fresh members started
// with memberArgs, on a redis-server of their own.
func clusterIngest(cfg ClusterConfig, icfg IngestConfig, memberArgs []string) (*ingestRun, error) {
	rs, err := startRedis(cfg.Tmp)
	if err != nil {
		return nil, err
	}
	defer rs.stop()
	fmt.Fprintf(os.Stderr, "cluster: three members %v on redis-server %s\n", memberArgs, rs.addr)
	cl, err := startCluster(cfg.Bin, cfg.Tmp, rs.addr, cfg.Conns, memberArgs)
	if err != nil {
		return nil, err
	}
	defer cl.stop()
	return runIngestOn(icfg, cl.serving(), 0)
}

// cpuWindow reads the CPU time of each process (and of this load
// generator) at the edges of the window that starts warmup from now and
// lasts run; the function it returns renders them once the window ended.
func cpuWindow(warmup, run time.Duration, pids map[string]int) func() string {
	window := cpuAtEdges(warmup, run, pids)
	return func() string {
		from, to, ok := window()
		if !ok {
			return "not measured"
		}
		var parts []string
		for name := range to {
			parts = append(parts, fmt.Sprintf("%s %.1f", name, to[name]-from[name]))
		}
		slices.Sort(parts)
		return strings.Join(parts, ", ") + fmt.Sprintf(" (of %.0f core-seconds)", 2*run.Seconds())
	}
}

// loadGenerator names this process among cpuAtEdges' readings.
const loadGenerator = "load generator"

// cpuAtEdges reads the CPU seconds of each process of pids, and of this
// load generator, at the edges of the window that starts warmup from now
// and lasts run; the function it returns gives both readings, ok once
// the window ended.
func cpuAtEdges(warmup, run time.Duration, pids map[string]int) func() (from, to map[string]float64, ok bool) {
	read := func() map[string]float64 {
		m := map[string]float64{loadGenerator: selfCPUSeconds()}
		for name, pid := range pids {
			m[name], _ = cpuSeconds(pid)
		}
		return m
	}
	var from, to map[string]float64
	done := make(chan struct{})
	go func() { // one goroutine, so that done orders both reads before their use
		time.Sleep(warmup)
		from = read()
		time.Sleep(run)
		to = read()
		close(done)
	}()
	return func() (map[string]float64, map[string]float64, bool) {
		select {
		case <-done:
			return from, to, true
		default:
			return nil, nil, false
		}
	}
}

func clusterTable(cfg ClusterConfig, single, repl *ingestRun, before, after redisStats, failovers Latencies) Table {
	sr, cr := rate(single.w.acked.Load(), cfg.Run), rate(repl.w.acked.Load(), cfg.Run)
	p50d := repl.ack.Quantile(0.5) - single.ack.Quantile(0.5)
	acked := float64(max(repl.w.acked.Load(), 1))
	rows := []Row{
		{"acknowledged msgs/s (closed loop)", fmt.Sprintf("%.0f", cr), fmt.Sprintf("%.0f (one dingd)", sr), ratio(cr, sr), "≥ 0.5× one dingd (the issue's goal for cross-partition traffic)" + met(cr >= sr/2)},
		{"submit→ack p50", repl.ack.ms(0.5), single.ack.ms(0.5), fmt.Sprintf("%+.2f ms", float64(p50d)/1e6), "replication adds ≤ 2 ms" + met(p50d <= 2*time.Millisecond)},
		{"submit→ack p99", repl.ack.ms(0.99), single.ack.ms(0.99), "", ""},
		{"submit→delivered p50", repl.del.ms(0.5), single.del.ms(0.5), "", ""},
		{"submit→delivered p99", repl.del.ms(0.99), single.del.ms(0.99), "", ""},
		{"owner: a batch's wait for its standby, p50 / p99", replWaits(repl), "", "", ""},
		{"Redis commands per acknowledged message", fmt.Sprintf("%.3f", float64(after.calls-before.calls)/acked), "", "", ""},
		{"Redis bytes in+out per acknowledged message", fmt.Sprintf("%.0f", float64(after.bytes-before.bytes)/acked), "", "", ""},
	}
	if len(failovers) > 0 {
		rows = append(rows, failoverRow("failover: SIGKILL → first ack on the next member", failovers))
	}
	notes := append(runNotes("One dingd", single), runNotes("Cluster", repl)...)
	notes = append(notes,
		"One partition (cluster mode today): every user on the owner, so this is same-partition traffic; cross-partition traffic and its relay are not built.",
		"Redis per message: every command the members sent (INFO commandstats, calls) and every byte in and out (INFO stats), over the measured window, divided by the messages acknowledged in it; a batch of many messages costs one stream append, its standby's read and ack, and the owner's ack polls.")
	return Table{
		Scenario: "cluster",
		Setup: fmt.Sprintf("Three dingd members (owner, standby, spare; default lease 3s) on one redis-server, on this machine's 2 cores with the load generator, against one dingd on its own in the same run. "+
			"%d connections through the Go client library, each a user submitting %d-byte messages to the next user (online), one at a time (closed loop); %v warm-up, %v measured. "+
			"Failover: a client given every member's address sends one message at a time; the serving member is killed with SIGKILL; the time is from the kill to that client's first acknowledgement from the next member, which includes noticing the silence, the lease running out (3s), the takeover, the spare becoming the new standby (no acknowledgement without one) and the client moving; the killed member is restarted and rejoins before the next kill.",
			cfg.Conns, cfg.Payload, cfg.Warmup, cfg.Run),
		Rows:  rows,
		Notes: notes,
	}
}

// failoverRow renders the failover times: median, max and each, against
// the 5 s.
func failoverRow(label string, failovers Latencies) Row {
	sorted := slices.Clone(failovers)
	slices.Sort(sorted)
	var each []string
	for _, d := range failovers {
		each = append(each, fmt.Sprintf("%.2f", d.Seconds()))
	}
	return Row{label, fmt.Sprintf("median %.2f s, max %.2f s (%s s)",
		sorted[len(sorted)/2].Seconds(), sorted[len(sorted)-1].Seconds(), strings.Join(each, ", ")), "", "", "≤ 5 s" + met(sorted[len(sorted)-1] <= 5*time.Second)}
}

// redisServer is a redis-server child process, asked through redis-cli
// (only package cluster imports a Redis client: internal/layout).
type redisServer struct {
	addr, cli string
	cmd       *exec.Cmd
}

// do runs one command through redis-cli and returns its output.
func (r *redisServer) do(args ...string) (string, error) {
	host, port, _ := strings.Cut(r.addr, ":")
	out, err := exec.Command(r.cli, append([]string{"-h", host, "-p", port}, args...)...).Output()
	return string(out), err
}

func startRedis(tmp string) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found (make test installs Debian's redis-server): %w", err)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("redis-cli not found (it comes with Debian's redis-server): %w", err)
	}
	dir, err := os.MkdirTemp(tmp, "dingbench-redis-")
	if err != nil {
		return nil, err
	}
	addr := freeAddr()
	_, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &redisServer{addr: addr, cli: cli, cmd: cmd}
	deadline := time.Now().Add(10 * time.Second)
	for out, err := r.do("PING"); err != nil || !strings.Contains(out, "PONG"); out, err = r.do("PING") {
		if time.Now().After(deadline) {
			r.stop()
			return nil, errors.New("redis-server did not answer within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r, nil
}

func (r *redisServer) stop() {
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
}

// redisStats are Redis's cumulative counters.
type redisStats struct {
	calls, bytes int64
	byCommand    map[string]int64 // calls per command
}

// top renders the commands called most between before and s, per
// acknowledged message: "xadd 0.41, hgetall 0.30, …" (at most n).
func (s redisStats) top(before redisStats, acked float64, n int) string {
	type kv struct {
		cmd string
		d   int64
	}
	var all []kv
	for c, v := range s.byCommand {
		if d := v - before.byCommand[c]; d > 0 {
			all = append(all, kv{c, d})
		}
	}
	slices.SortFunc(all, func(a, b kv) int { return cmp.Compare(b.d, a.d) })
	var out []string
	for i, c := range all {
		if i == n {
			break
		}
		out = append(out, fmt.Sprintf("%s %.3f", c.cmd, float64(c.d)/acked))
	}
	return strings.Join(out, ", ")
}

// stats reads them (the INFO itself counts one call).
func (r *redisServer) stats() redisStats {
	info, err := r.do("INFO", "everything")
	if err != nil {
		return redisStats{}
	}
	s := redisStats{byCommand: map[string]int64{}}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "cmdstat_"); ok {
			cmd, fields, _ := strings.Cut(rest, ":")
			for _, f := range strings.Split(fields, ",") {
				if v, ok := strings.CutPrefix(f, "calls="); ok {
					n, _ := strconv.ParseInt(v, 10, 64)
					s.calls += n
					s.byCommand[cmd] += n
				}
			}
		}
		for _, k := range []string{"total_net_input_bytes:", "total_net_output_bytes:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				s.bytes += n
			}
		}
	}
	return s
}

// dingCluster is three dingd members on one Redis.
type dingCluster struct {
	members []*Server
	killed  int // index of the member killed last, -1 for none
}

// startCluster starts member a (it founds the cluster), b (it joins as
// the standby) and c (a spare), and creates users u0 .. u<users-1>.
func startCluster(bin, tmp, redisAddr string, users int, memberArgs []string, ownerArgs ...string) (*dingCluster, error) {
	cl := &dingCluster{killed: -1}
	for _, id := range []string{"a", "b", "c"} {
		s, err := newServer(bin, tmp)
		if err != nil {
			cl.stop()
			return nil, err
		}
		s.args = append([]string{"--cluster", "redis://" + redisAddr, "--node-id", id, "--advertise", "http://" + s.HTTP}, memberArgs...)
		s.env = append(s.env, "DING_CLUSTER_SECRET=dingbench")
		cl.members = append(cl.members, s)
	}
	a := cl.members[0]
	a.args = append(a.args, ownerArgs...)
	if err := a.start(); err != nil {
		cl.stop()
		return nil, err
	}
	for _, s := range cl.members[1:] {
		s.admin, s.keys = a.admin, a.keys // shared through the snapshot
		if _, err := s.launch(); err != nil {
			cl.stop()
			return nil, err
		}
		if s == cl.members[1] {
			if err := cl.waitStandby(a, 30*time.Second); err != nil {
				cl.stop()
				return nil, err
			}
		}
	}
	if err := a.AddUsers("u", 0, users); err != nil { // acknowledged once replicated
		cl.stop()
		return nil, err
	}
	return cl, nil
}

// serving returns the member that serves now (nil if none does).
func (cl *dingCluster) serving() *Server {
	for _, s := range cl.members {
		if s.Ready() {
			return s
		}
	}
	return nil
}

// waitStandby waits until owner reports a standby.
func (cl *dingCluster) waitStandby(owner *Server, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		var st struct{ Standby string }
		if err := owner.call("GET", "/v1/cluster", nil, &st); err == nil && st.Standby != "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no standby within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// failover kills the serving member while a client sends one message at
// a time, and returns the time from the kill to that client's first
// acknowledgement afterwards. It then restarts the killed member and
// waits until the new owner has a standby again.
func (cl *dingCluster) failover() (time.Duration, error) {
	owner := cl.serving()
	if owner == nil {
		return 0, errors.New("no member serving")
	}
	took, err := cl.probeKill(owner.Token("u0", "failover"), func() (time.Time, error) { return owner.Kill(os.Kill) })
	if err != nil {
		return 0, err
	}
	if _, err := owner.launch(); err != nil { // it rejoins as the spare
		return 0, err
	}
	next := cl.serving()
	if next == nil {
		return 0, errors.New("acknowledged, yet no member serving")
	}
	if err := cl.waitStandby(next, 30*time.Second); err != nil {
		return 0, err
	}
	return took, nil
}

// probeKill connects u0's client (token) to every member's address and
// sends one message at a time to u1; once one is acknowledged it calls
// kill, and returns the time from the kill to the first acknowledgement
// after it.
func (cl *dingCluster) probeKill(token string, kill func() (time.Time, error)) (time.Duration, error) {
	return cl.probe(token, 0, 60*time.Second, kill)
}

// probe is probeKill with the client's PongTimeout (zero: its default),
// giving up limit after the kill.
func (cl *dingCluster) probe(token string, pong, limit time.Duration, kill func() (time.Time, error)) (time.Duration, error) {
	c, err := client.Dial(context.Background(), client.Config{Addr: cl.socks(), Token: token, Device: "failover",
		DialTimeout: time.Second, MaxBackoff: 100 * time.Millisecond, PongTimeout: pong})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	send := func(d time.Duration) (time.Time, error) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		_, err := c.Send(ctx, []string{"u1"}, []byte("failover probe"))
		return time.Now(), err
	}
	if _, err := send(10 * time.Second); err != nil {
		return 0, fmt.Errorf("before the kill: %w", err)
	}
	killed, err := kill()
	if err != nil {
		return 0, err
	}
	for {
		at, err := send(limit)
		if err == nil {
			return at.Sub(killed), nil
		}
		if time.Since(killed) > limit {
			return 0, fmt.Errorf("no acknowledgement within %v of the kill: %w", limit, err)
		}
	}
}

// socks is every member's socket address, comma-separated: a client
// given it finds the member serving its user (NOT_OWNER redirects it).
func (cl *dingCluster) socks() string {
	var addrs []string
	for _, s := range cl.members {
		addrs = append(addrs, s.Sock)
	}
	return strings.Join(addrs, ",")
}

// pids is the members' processes by name (a, b, c).
func (cl *dingCluster) pids() map[string]int {
	m := map[string]int{}
	for i, s := range cl.members {
		m[string(rune('a'+i))] = s.cmd.Process.Pid
	}
	return m
}

func (cl *dingCluster) stop() {
	for _, s := range cl.members {
		s.Stop()
	}
}

// replWaits renders the owner's replication wait quantiles (bucket
// bounds: a histogram's resolution).
func replWaits(r *ingestRun) string {
	if r.replWait == nil {
		return "not scraped"
	}
	return fmt.Sprintf("≤ %s / ≤ %s (%.0f batches)", ms(r.replWait.Quantile(0.5)), ms(r.replWait.Quantile(0.99)), r.replWait.Count())
}
