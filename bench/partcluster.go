package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/fanout"
)

// clusterPartitions is the cluster scenario with a member per partition
// (ClusterConfig.Partitions): three dingd nodes of P partitions each on
// one redis-server, the roles evened out (each node owns some), against
// one dingd in the same run. The clients dial node a and are redirected
// to their users' owners; each user sends to the next, most often in
// another partition, so most messages cross partitions and nodes (the
// relay over HTTP). Failover: the node serving u0 is killed with SIGKILL
// while u0's client (given every node's address) sends one message at a
// time; the time is to its first acknowledgement after the kill.
func clusterPartitions(cfg ClusterConfig, icfg IngestConfig, single *ingestRun, singleCPU func() string, oneAnn annFigures, oneSweep []sweepPoint) (Table, error) {
	profs := make([]Profiling, 3)
	for i, id := range []string{"a", "b", "c"} {
		var err error
		if profs[i], err = cfg.Profiling.node(i, id); err != nil {
			return Table{}, err
		}
	}
	users := sweepUsers(cfg.Conns, cfg.Sweep)
	cl, rs, err := startPartitioned(cfg, users, nil, profs)
	if cl != nil {
		defer cl.stop()
	}
	if rs != nil {
		defer rs.stop()
	}
	if err != nil {
		return Table{}, err
	}
	a := cl.members[0]
	balanced := func(owns map[string]int) bool { return owns["a"] > 0 && owns["b"] > 0 && owns["c"] > 0 }
	pids := cl.pids()
	pids["redis-server"] = rs.cmd.Process.Pid
	cpu := cpuWindow(cfg.Warmup, cfg.Run, pids)
	nodesCPU := cpuSum(cfg.Warmup, cfg.Run, cl.pids())
	var before, after redisStats
	beforeAt := time.AfterFunc(cfg.Warmup, func() { before = rs.stats() })
	afterAt := time.AfterFunc(cfg.Warmup+cfg.Run, func() { after = rs.stats() })
	fmt.Fprintf(os.Stderr, "cluster: closed loop, %d connections, dialling a (redirected to their owners)\n", cfg.Conns)
	var profiled []func() (string, error)
	profAt := time.AfterFunc(cfg.Warmup, func() {
		for _, p := range profs {
			profiled = append(profiled, p.begin(int(cfg.Run.Seconds())))
		}
	})
	run, err := runIngestOn(icfg, a, 0)
	profAt.Stop()
	beforeAt.Stop()
	afterAt.Stop()
	for _, wait := range profiled {
		if f, perr := wait(); perr != nil {
			fmt.Fprintf(os.Stderr, "cluster: profile: %v\n", perr)
		} else if f != "" {
			fmt.Fprintf(os.Stderr, "cluster: CPU profile over the window in %s\n", f)
		}
	}
	if err != nil {
		return Table{}, err
	}
	if after.calls == 0 {
		return Table{}, errors.New("cluster: the load ended before its window")
	}
	clSweep, err := sweepOn("three nodes", icfg, a, cfg.Sweep, cl.pids())
	if err != nil {
		return Table{}, err
	}
	cross := 0
	for i := range cfg.Conns {
		if partitionOf(fmt.Sprintf("u%d", i), cfg.Partitions) != partitionOf(fmt.Sprintf("u%d", (i+1)%cfg.Conns), cfg.Partitions) {
			cross++
		}
	}
	var clAnn annFigures
	if cfg.AnnUsers > 0 {
		if clAnn, err = announceToAll(a, cl.members, profs, cfg.AnnUsers, cfg.AnnConns, users); err != nil {
			return Table{}, err
		}
	}
	var handovers Latencies
	probes := 0
	for i := range cfg.Handovers {
		fmt.Fprintf(os.Stderr, "cluster: hand-over %d of %d\n", i+1, cfg.Handovers)
		d, n, err := cl.handoverProbe(cfg.Partitions, cfg.Conns)
		if err != nil {
			return Table{}, fmt.Errorf("hand-over %d: %w", i+1, err)
		}
		handovers, probes = append(handovers, d), probes+n
		// balance may move a partition back: the next probe starts once
		// the roles are quiet again.
		if err := cl.waitSettled(10*time.Second, 180*time.Second); err != nil {
			return Table{}, fmt.Errorf("after hand-over %d: %w", i+1, err)
		}
	}
	var failovers Latencies
	for i := range cfg.Failovers {
		fmt.Fprintf(os.Stderr, "cluster: failover %d of %d\n", i+1, cfg.Failovers)
		d, err := cl.failoverPartition(cfg.Partitions)
		if err != nil {
			return Table{}, fmt.Errorf("failover %d: %w", i+1, err)
		}
		failovers = append(failovers, d)
		if err := cl.waitOwners(balanced, 120*time.Second); err != nil {
			return Table{}, fmt.Errorf("after failover %d: %w", i+1, err)
		}
	}
	var pauses Latencies
	for i := range cfg.Pauses {
		fmt.Fprintf(os.Stderr, "cluster: pause %d of %d\n", i+1, cfg.Pauses)
		d, err := cl.pausePartition(cfg.Partitions, cfg.PongTimeout)
		if err != nil {
			return Table{}, fmt.Errorf("pause %d: %w", i+1, err)
		}
		pauses = append(pauses, d)
		// The woken node follows again, and balance hands partitions back
		// to it: the next pause starts once the roles are quiet again.
		if err := cl.waitSettled(10*time.Second, 180*time.Second); err != nil {
			return Table{}, fmt.Errorf("after pause %d: %w", i+1, err)
		}
	}
	var rolling []rollingFigures
	for i := range cfg.Rolling {
		fmt.Fprintf(os.Stderr, "cluster: rolling restart %d of %d\n", i+1, cfg.Rolling)
		f, err := cl.rollingRestart(cfg.Partitions, users, cfg.UpgradeTo)
		if err != nil {
			cl.logTails(40) // what the nodes said (their logs go with their data directories)
			return Table{}, fmt.Errorf("rolling restart %d: %w", i+1, err)
		}
		rolling = append(rolling, f)
	}
	var ownerOnly []sweepPoint
	if cfg.OwnerOnly {
		cl.stop() // its CPU and sockets are not the next run's
		rs.stop()
		if ownerOnly, err = partitionedOwnerOnly(cfg, icfg, users); err != nil {
			return Table{}, fmt.Errorf("ack-replicas 0: %w", err)
		}
	}
	sr, cr := rate(single.w.acked.Load(), cfg.Run), rate(run.w.acked.Load(), cfg.Run)
	acked := max(cr*cfg.Run.Seconds(), 1)
	rows := []Row{
		{"acknowledged msgs/s (closed loop)", fmt.Sprintf("%.0f", cr), fmt.Sprintf("%.0f (one dingd)", sr), ratio(cr, sr), "≥ 0.5× one dingd for cross-partition traffic" + met(cr >= sr/2)},
		{"submit→ack p50 / p99", run.ack.ms(0.5) + " / " + run.ack.ms(0.99), single.ack.ms(0.5) + " / " + single.ack.ms(0.99), "", ""},
		{"submit→delivered p50 / p99", run.del.ms(0.5) + " / " + run.del.ms(0.99), single.del.ms(0.5) + " / " + single.del.ms(0.99), "", ""},
		{"Redis commands per acknowledged message", fmt.Sprintf("%.3f (%s)", float64(after.calls-before.calls)/acked, after.top(before, acked, 6)), "", "", ""},
		{"Redis bytes in+out per acknowledged message", fmt.Sprintf("%.0f", float64(after.bytes-before.bytes)/acked), "", "", ""},
		{"messages to another partition", fmt.Sprintf("%d of %d senders (%.0f%%)", cross, cfg.Conns, 100*float64(cross)/float64(max(cfg.Conns, 1))), "", "", ""},
	}
	rows = append(rows, sweepRows(clSweep, oneSweep, cfg.Conns, cr, sr)...)
	rows = append(rows, annRows(clAnn, oneAnn)...)
	if ownerOnly != nil {
		main := sweepPoint{conns: cfg.Conns, rate: cr, ack: run.ack}
		if s, ok := nodesCPU(); ok && cr > 0 {
			main.cpuPerAck = s / (cr * cfg.Run.Seconds()) * 1e6
		}
		one := []sweepPoint{{conns: cfg.Conns, rate: sr}}
		rows = append(rows, ownerOnlyRows(append([]sweepPoint{main}, clSweep...), ownerOnly, append(one, oneSweep...))...)
	}
	if len(handovers) > 0 {
		sorted := slices.Clone(handovers)
		slices.Sort(sorted)
		var each []string
		for _, d := range handovers {
			each = append(each, ms(d))
		}
		rows = append(rows, Row{"hand-over of a partition: longest submit→delivered into it", fmt.Sprintf("median %s, max %s (%s; %d messages)",
			ms(sorted[len(sorted)/2]), ms(sorted[len(sorted)-1]), strings.Join(each, ", "), probes), "", "", ""})
	}
	if len(failovers) > 0 {
		rows = append(rows, failoverRow("failover: SIGKILL of the node serving u0 → u0's first ack", failovers))
	}
	if len(pauses) > 0 {
		pong := "the client's default PongTimeout (a third of the ping interval)"
		if cfg.PongTimeout > 0 {
			pong = "PongTimeout " + cfg.PongTimeout.String()
		}
		rows = append(rows, failoverRow("pause: SIGSTOP of the node serving u0 → u0's first ack ("+pong+")", pauses))
	}
	if len(rolling) > 0 {
		row := rollingRow(rolling)
		if cfg.UpgradeTo != "" {
			row.Metric = "rolling upgrade to " + cfg.UpgradeTo + " (drain, SIGTERM, start on the new build), a sender per partition"
		}
		rows = append(rows, row)
	}
	rows = append(rows, Row{"CPU seconds over the measured window", cpu(), singleCPU(), "", ""})
	notes := append(runNotes("One dingd", single), runNotes("Node a (its own partitions only)", run)...)
	if ownerOnly != nil {
		notes = append(notes, "--ack-replicas 1 against 0 rows: after everything above, the three nodes stopped, three fresh nodes of the same partitions started with --ack-replicas 0 (an owner acknowledges after its own fsync, without waiting for its standby) on a redis-server of their own ran the same closed loops; the difference at p50 is what waiting for the standby adds (the standbys still follow and apply, so their CPU is in both).")
	}
	return Table{
		Scenario: "cluster --partitions " + strconv.Itoa(cfg.Partitions),
		Setup: fmt.Sprintf("Three dingd nodes of %d partitions each (a member per partition, plus the directory's; roles evened out by the nodes; default lease 3s) on one redis-server, on this machine's 2 cores with the load generator, against one dingd on its own in the same run. "+
			"%d connections through the Go client library dialling node a and redirected to their users' owners, each a user submitting %d-byte messages to the next user (online), one at a time (closed loop); %v warm-up, %v measured. "+
			"Failover: u0's client, given every node's address, sends one message at a time; the node serving u0 is killed with SIGKILL; the time is to the client's first acknowledgement afterwards (the lease running out, the standby's takeover, a new standby joining: no acknowledgement without one, the client moving); the killed node is restarted and the roles even out before the next kill. "+
			"Pause (--pauses): the same, but the node is paused with SIGSTOP, and woken with SIGCONT once u0 has an acknowledgement again; u0's client, connected to it, gets no reset, and leaves it when a PING goes unanswered for its PongTimeout, or after three silent ping intervals. "+
			"Rolling restart (--rolling): each node in turn is drained (POST /v1/cluster/drain), stopped with SIGTERM once it holds no role, and started again, the next once the roles are even and quiet for 5 s; meanwhile a user of each partition sends to a user of the next, one message at a time (clients given every node's address; a send unanswered for 20 s, or answered with an error to retry, sent again with its client id); lost: acknowledged and not delivered 30 s after the round. "+
			"Hand-over: a user of one partition sends to a user of a partition another node owns, one message at a time, from 1 s before POST /v1/cluster/handover to the latter's owner until 6 s after; the figure is the longest submit→delivered of those messages, per hand-over (both clients given every node's address). "+
			"Announcement (after the closed loop, on one dingd and on the cluster alike): %d more users created through the entry node's admin API (node a, which sends them on to the directory's owner), %d of them online with one raw device each, dialled at the entry node (a device whose user another node serves is redirected, NOT_OWNER, and dials the owner), then u0 announces 256 bytes to \"all\" through the entry node; times from the request, and from its 201, to each online device's DELIVER.",
			cfg.Partitions, cfg.Conns, cfg.Payload, cfg.Warmup, cfg.Run, cfg.AnnUsers, cfg.AnnConns),
		Rows:  rows,
		Notes: notes,
	}, nil
}

// startPartitioned starts three nodes of cfg.Partitions partitions each,
// with memberArgs and profs' flags (nil: none), on a redis-server of
// their own: a founds the cluster, b and c join, and it returns once
// every node owns a partition, no role changed for 10 s, and users users
// (u0, u1, ...) are on every node's copy of the directory. It returns
// what it started, for the caller to stop, also with an error.
func startPartitioned(cfg ClusterConfig, users int, memberArgs []string, profs []Profiling) (*dingCluster, *redisServer, error) {
	rs, err := startRedis(cfg.Tmp)
	if err != nil {
		return nil, nil, err
	}
	args := append([]string{"--partitions", strconv.Itoa(cfg.Partitions)}, memberArgs...)
	fmt.Fprintf(os.Stderr, "cluster: three nodes of %d partitions %v on redis-server %s\n", cfg.Partitions, memberArgs, rs.addr)
	cl := &dingCluster{killed: -1}
	for i, id := range []string{"a", "b", "c"} {
		s, err := newServer(cfg.Bin, cfg.Tmp)
		if err != nil {
			return cl, rs, err
		}
		s.args = append([]string{"--cluster", "redis://" + rs.addr, "--node-id", id, "--advertise", "http://" + s.HTTP}, args...)
		if profs != nil {
			s.args = append(s.args, profs[i].dingdArgs()...)
		}
		s.env = append(s.env, "DING_CLUSTER_SECRET=dingbench")
		cl.members = append(cl.members, s)
	}
	a := cl.members[0]
	if err := a.start(); err != nil {
		return cl, rs, err
	}
	if err := cl.waitOwners(func(owns map[string]int) bool { return owns["a"] == cfg.Partitions+1 }, 60*time.Second); err != nil {
		return cl, rs, fmt.Errorf("a founding: %w", err)
	}
	for _, s := range cl.members[1:] {
		s.admin, s.keys = a.admin, a.keys // taken from a when they start
		if err := s.start(); err != nil {
			return cl, rs, err
		}
	}
	balanced := func(owns map[string]int) bool { return owns["a"] > 0 && owns["b"] > 0 && owns["c"] > 0 }
	if err := cl.waitOwners(balanced, 120*time.Second); err != nil {
		return cl, rs, fmt.Errorf("evening the roles out: %w", err)
	}
	// Measured once the roles settled: a partition handed over has no
	// standby, and waits, until its old owner joins again from a
	// snapshot.
	if err := cl.waitSettled(10*time.Second, 180*time.Second); err != nil {
		return cl, rs, err
	}
	if err := a.AddUsers("u", 0, users); err != nil { // proxied to the directory's owner
		return cl, rs, err
	}
	// a answered once its copy of the directory held them; the others'
	// copies follow within milliseconds, and a client redirected there
	// before must not find its user missing.
	if err := waitUser(cl.members, fmt.Sprintf("u%d", users-1), 30*time.Second); err != nil {
		return cl, rs, err
	}
	return cl, rs, nil
}

// partitionedOwnerOnly starts three nodes of cfg.Partitions partitions
// with --ack-replicas 0 (an owner acknowledges once its own fsync is
// done, without waiting for its standby) and runs the closed loop on them
// at cfg.Conns connections, then at each of cfg.Sweep: what waiting for
// the standbys costs, beside the default's figures of the same run.
func partitionedOwnerOnly(cfg ClusterConfig, icfg IngestConfig, users int) ([]sweepPoint, error) {
	cl, rs, err := startPartitioned(cfg, users, []string{"--ack-replicas", "0"}, nil)
	if cl != nil {
		defer cl.stop()
	}
	if rs != nil {
		defer rs.stop()
	}
	if err != nil {
		return nil, err
	}
	return sweepOn("three nodes with --ack-replicas 0", icfg, cl.members[0], append([]int{cfg.Conns}, cfg.Sweep...), cl.pids())
}

// ownerOnlyRows renders the default cluster's closed loops (withStandby:
// the main one, then the sweep's) beside the same loops on nodes with
// --ack-replicas 0, each with what waiting for the standby adds to p50
// (the goal: at most 2 ms), and the owner-only cluster's rate
// against one dingd's at the same count (single, in the same order).
func ownerOnlyRows(withStandby, ownerOnly, single []sweepPoint) []Row {
	var rows []Row
	for i, p := range withStandby {
		if i >= len(ownerOnly) {
			break
		}
		o := ownerOnly[i]
		add := p.ack.Quantile(0.5) - o.ack.Quantile(0.5)
		goal := fmt.Sprintf("the standby adds %+.2f ms to p50 (goal ≤ 2 ms%s)", float64(add)/1e6, met(add <= 2*time.Millisecond))
		if i < len(single) {
			goal += fmt.Sprintf("; --ack-replicas 0 is %s one dingd at %d connections", ratio(o.rate, single[i].rate), p.conns)
		}
		rows = append(rows, Row{fmt.Sprintf("--ack-replicas 1 against 0, %d connections: acknowledged msgs/s, submit→ack p50 / p99, dingd CPU per ack", p.conns),
			p.cell(), o.cell() + " (--ack-replicas 0)", ratio(p.rate, o.rate), goal})
	}
	return rows
}

// partitionOf is dingd's placement of user among p partitions.
func partitionOf(user string, p int) int {
	return int(fanout.PartitionOf(user)) * p / fanout.Partitions
}

// clusterRoles is what one node of partitions says of itself.
type clusterRoles struct {
	Member     string `json:"member"`
	Partitions []struct {
		Partition int    `json:"partition"`
		Role      string `json:"role"`
	} `json:"partitions"`
}

// statuses asks every running node what it does (GET /v1/cluster); a
// node that does not answer is left out.
func (cl *dingCluster) statuses() []clusterRoles {
	var out []clusterRoles
	for _, s := range cl.members {
		if s.cmd == nil || s.cmd.ProcessState != nil {
			continue
		}
		var st clusterRoles
		if err := s.call("GET", "/v1/cluster", nil, &st); err == nil {
			out = append(out, st)
		}
	}
	return out
}

// owners asks every running node which partitions it owns.
func (cl *dingCluster) owners() (byNode map[string][]int) {
	byNode = map[string][]int{}
	for _, st := range cl.statuses() {
		for _, p := range st.Partitions {
			if p.Role == "owner" {
				byNode[st.Member] = append(byNode[st.Member], p.Partition)
			}
		}
	}
	return byNode
}

// render is every node's role for every partition, as one string.
func render(sts []clusterRoles) string {
	var out []string
	for _, st := range sts {
		out = append(out, fmt.Sprintf("%s: %v", st.Member, st.Partitions))
	}
	return strings.Join(out, "; ")
}

// even reports whether every member answered and their owned and
// followed partitions are within one of each other's (where the nodes'
// balancing stops).
func (cl *dingCluster) even(sts []clusterRoles) bool {
	if len(sts) != len(cl.members) {
		return false
	}
	owns, follows := map[string]int{}, map[string]int{}
	for _, st := range sts {
		owns[st.Member], follows[st.Member] = 0, 0
		for _, p := range st.Partitions {
			switch p.Role {
			case "owner":
				owns[st.Member]++
			case "standby":
				follows[st.Member]++
			}
		}
	}
	spread := func(m map[string]int) int {
		lo, hi := 1<<30, 0
		for _, n := range m {
			lo, hi = min(lo, n), max(hi, n)
		}
		return hi - lo
	}
	return spread(owns) <= 1 && spread(follows) <= 1
}

// waitSettled waits until the roles are even and no role changed for
// quiet (at most d).
func (cl *dingCluster) waitSettled(quiet, d time.Duration) error {
	deadline := time.Now().Add(d)
	sts := cl.statuses()
	last, since := render(sts), time.Now()
	for time.Since(since) < quiet || !cl.even(sts) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the roles did not settle within %v: %s", d, last)
		}
		time.Sleep(200 * time.Millisecond)
		sts = cl.statuses()
		if now := render(sts); now != last {
			last, since = now, time.Now()
		}
	}
	return nil
}

// waitOwners waits until ok holds of the count of partitions each node
// owns.
func (cl *dingCluster) waitOwners(ok func(owns map[string]int) bool, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		owns := map[string]int{}
		for id, ps := range cl.owners() {
			owns[id] = len(ps)
		}
		if ok(owns) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v: owners %v", d, owns)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// handoverProbe measures what a hand-over costs a conversation into the
// partition that moves: a user of another partition, served by another
// node, sends to a user of the moving partition one message at a time
// (the next as soon as the last is acknowledged), from a second before
// POST /v1/cluster/handover to that partition's owner until 6 s after
// it. It returns the longest submit→delivered among those messages
// (the relay to the partition's new owner and the receiver's move to it)
// and how many there were.
func (cl *dingCluster) handoverProbe(parts, users int) (time.Duration, int, error) {
	byNode := cl.owners()
	ownerOf := func(p int) string {
		for id, ps := range byNode {
			if slices.Contains(ps, p) {
				return id
			}
		}
		return ""
	}
	to, from := -1, -1
	for i := range users {
		for j := range users {
			pi, pj := partitionOf(fmt.Sprintf("u%d", i), parts), partitionOf(fmt.Sprintf("u%d", j), parts)
			if to < 0 && pi != pj && ownerOf(pi) != "" && ownerOf(pj) != "" && ownerOf(pi) != ownerOf(pj) {
				to, from = i, j
			}
		}
	}
	if to < 0 {
		return 0, 0, fmt.Errorf("no two users of partitions owned by different nodes among %d", users)
	}
	moving := partitionOf(fmt.Sprintf("u%d", to), parts)
	owner := cl.members[int(ownerOf(moving)[0]-'a')]
	dial := func(user string) (*client.Client, error) {
		return client.Dial(context.Background(), client.Config{Addr: cl.socks(), Token: owner.Token(user, "handover"), Device: "handover",
			DialTimeout: time.Second, MaxBackoff: 100 * time.Millisecond})
	}
	rc, err := dial(fmt.Sprintf("u%d", to))
	if err != nil {
		return 0, 0, err
	}
	defer rc.Close()
	sc, err := dial(fmt.Sprintf("u%d", from))
	if err != nil {
		return 0, 0, err
	}
	defer sc.Close()
	var mu sync.Mutex
	delivered := map[string]time.Time{}
	got := make(chan struct{}, 1)
	go func() {
		for e := range rc.Entries() {
			if e.Message != nil {
				mu.Lock()
				delivered[string(e.Message.Body)] = time.Now()
				mu.Unlock()
				select {
				case got <- struct{}{}:
				default:
				}
				rc.Ack(e.Seq)
			}
		}
	}()
	submitted := map[string]time.Time{}
	start := time.Now()
	var handedAt time.Time
	for n := 0; handedAt.IsZero() || time.Since(handedAt) < 6*time.Second; n++ {
		if handedAt.IsZero() && time.Since(start) > time.Second {
			if err := owner.call("POST", fmt.Sprintf("/v1/cluster/handover?p=%d", moving), nil, nil); err != nil {
				return 0, 0, fmt.Errorf("hand-over of partition %d: %w", moving, err)
			}
			handedAt = time.Now()
		}
		body := fmt.Sprintf("handover probe %d", n)
		at := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := sc.Send(ctx, []string{fmt.Sprintf("u%d", to)}, []byte(body))
		cancel()
		if err != nil {
			return 0, 0, fmt.Errorf("send %d: %w", n, err)
		}
		submitted[body] = at
	}
	// The receiver's device is new: it gets the user's whole stream, the
	// load's messages first; only the probe's are counted.
	missing := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for body := range submitted {
			if _, ok := delivered[body]; !ok {
				n++
			}
		}
		return n
	}
	deadline := time.After(30 * time.Second)
	for missing() > 0 {
		select {
		case <-got:
		case <-deadline:
			return 0, 0, fmt.Errorf("%d of %d messages not delivered 30s after the last", missing(), len(submitted))
		}
	}
	var worst time.Duration
	mu.Lock()
	defer mu.Unlock()
	for body, at := range submitted {
		d, ok := delivered[body]
		if !ok {
			return 0, 0, fmt.Errorf("%q not delivered", body)
		}
		worst = max(worst, d.Sub(at))
	}
	return worst, len(submitted), nil
}

// pausePartition pauses (SIGSTOP) the node serving u0 while u0's client
// sends, and returns the time from the pause to its first
// acknowledgement; the node is woken (SIGCONT) afterwards, and, deposed,
// follows its partitions again. The client, connected to the paused node,
// gets no reset: it leaves it when a PING goes unanswered for pong (zero:
// the client's default), or after three silent ping intervals.
func (cl *dingCluster) pausePartition(parts int, pong time.Duration) (time.Duration, error) {
	victim, err := cl.servingU0(parts)
	if err != nil {
		return 0, err
	}
	// (Three silent ping intervals, 90 s by default, bound a client
	// that does not ping on a request: the limit is above it.)
	took, err := cl.probe(victim.Token("u0", "failover"), pong, 150*time.Second, func() (time.Time, error) {
		return time.Now(), victim.cmd.Process.Signal(syscall.SIGSTOP)
	})
	if cerr := victim.cmd.Process.Signal(syscall.SIGCONT); cerr != nil && err == nil {
		err = fmt.Errorf("waking the paused node: %w", cerr)
	}
	return took, err
}

// servingU0 returns the node that owns u0's partition now.
func (cl *dingCluster) servingU0(parts int) (*Server, error) {
	p := partitionOf("u0", parts)
	for id, ps := range cl.owners() {
		if slices.Contains(ps, p) {
			return cl.members[int(id[0]-'a')], nil
		}
	}
	return nil, fmt.Errorf("no node owns u0's partition %d", p)
}

// failoverPartition kills the node serving u0 while u0's client sends,
// and returns the time from the kill to its first acknowledgement; the
// killed node is restarted.
func (cl *dingCluster) failoverPartition(parts int) (time.Duration, error) {
	victim, err := cl.servingU0(parts)
	if err != nil {
		return 0, err
	}
	took, err := cl.probeKill(victim.Token("u0", "failover"), func() (time.Time, error) { return victim.Kill(os.Kill) })
	if err != nil {
		return 0, err
	}
	if _, err := victim.launch(); err != nil {
		return 0, errors.Join(errors.New("restarting the killed node"), err)
	}
	return took, nil
}
