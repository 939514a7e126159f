package bench

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

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
func clusterPartitions(cfg ClusterConfig, icfg IngestConfig, single *ingestRun, singleCPU func() string) (Table, error) {
	rs, err := startRedis(cfg.Tmp)
	if err != nil {
		return Table{}, err
	}
	defer rs.stop()
	args := []string{"--partitions", strconv.Itoa(cfg.Partitions)}
	fmt.Fprintf(os.Stderr, "cluster: three nodes of %d partitions on redis-server %s\n", cfg.Partitions, rs.addr)
	cl := &dingCluster{killed: -1}
	defer cl.stop()
	for _, id := range []string{"a", "b", "c"} {
		s, err := newServer(cfg.Bin, cfg.Tmp)
		if err != nil {
			return Table{}, err
		}
		s.args = append([]string{"--cluster", "redis://" + rs.addr, "--node-id", id, "--advertise", "http://" + s.HTTP}, args...)
		s.env = append(s.env, "DING_CLUSTER_SECRET=dingbench")
		cl.members = append(cl.members, s)
	}
	a := cl.members[0]
	if err := a.start(); err != nil {
		return Table{}, err
	}
	if err := cl.waitOwners(func(owns map[string]int) bool { return owns["a"] == cfg.Partitions+1 }, 60*time.Second); err != nil {
		return Table{}, fmt.Errorf("a founding: %w", err)
	}
	for _, s := range cl.members[1:] {
		s.admin, s.keys = a.admin, a.keys // taken from a when they start
		if err := s.start(); err != nil {
			return Table{}, err
		}
	}
	balanced := func(owns map[string]int) bool { return owns["a"] > 0 && owns["b"] > 0 && owns["c"] > 0 }
	if err := cl.waitOwners(balanced, 120*time.Second); err != nil {
		return Table{}, fmt.Errorf("evening the roles out: %w", err)
	}
	// Measured once the roles settled: a standby place that moves stops
	// its partition's writes while the new standby joins.
	if err := cl.waitSettled(10*time.Second, 180*time.Second); err != nil {
		return Table{}, err
	}
	if err := a.AddUsers("u", 0, cfg.Conns); err != nil { // proxied to the directory's owner
		return Table{}, err
	}
	// a answered once its copy of the directory held them; the others'
	// copies follow within milliseconds, and a client redirected there
	// before must not find its user missing.
	for _, s := range cl.members {
		deadline := time.Now().Add(30 * time.Second)
		for {
			var list struct {
				Users []struct{} `json:"users"`
			}
			if err := s.call("GET", "/v1/users", nil, &list); err == nil && len(list.Users) >= cfg.Conns {
				break
			}
			if time.Now().After(deadline) {
				return Table{}, fmt.Errorf("node %s's directory does not hold the %d users after 30s", s.HTTP, cfg.Conns)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	pids := map[string]int{"redis-server": rs.cmd.Process.Pid}
	for i, m := range cl.members {
		pids[[]string{"a", "b", "c"}[i]] = m.cmd.Process.Pid
	}
	cpu := cpuWindow(cfg.Warmup, cfg.Run, pids)
	fmt.Fprintf(os.Stderr, "cluster: closed loop, %d connections, dialling a (redirected to their owners)\n", cfg.Conns)
	run, err := runIngestOn(icfg, a, 0)
	if err != nil {
		return Table{}, err
	}
	cross := 0
	for i := range cfg.Conns {
		if partitionOf(fmt.Sprintf("u%d", i), cfg.Partitions) != partitionOf(fmt.Sprintf("u%d", (i+1)%cfg.Conns), cfg.Partitions) {
			cross++
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
	sr, cr := rate(single.w.acked.Load(), cfg.Run), rate(run.w.acked.Load(), cfg.Run)
	rows := []Row{
		{"acknowledged msgs/s (closed loop)", fmt.Sprintf("%.0f", cr), fmt.Sprintf("%.0f (one dingd)", sr), ratio(cr, sr), "≥ 0.5× one dingd for cross-partition traffic" + met(cr >= sr/2)},
		{"submit→ack p50 / p99", run.ack.ms(0.5) + " / " + run.ack.ms(0.99), single.ack.ms(0.5) + " / " + single.ack.ms(0.99), "", ""},
		{"submit→delivered p50 / p99", run.del.ms(0.5) + " / " + run.del.ms(0.99), single.del.ms(0.5) + " / " + single.del.ms(0.99), "", ""},
		{"messages to another partition", fmt.Sprintf("%d of %d senders (%.0f%%)", cross, cfg.Conns, 100*float64(cross)/float64(max(cfg.Conns, 1))), "", "", ""},
	}
	if len(failovers) > 0 {
		rows = append(rows, failoverRow("failover: SIGKILL of the node serving u0 → u0's first ack", failovers))
	}
	rows = append(rows, Row{"CPU seconds over the measured window", cpu(), singleCPU(), "", ""})
	return Table{
		Scenario: "cluster --partitions " + strconv.Itoa(cfg.Partitions),
		Setup: fmt.Sprintf("Three dingd nodes of %d partitions each (a member per partition, plus the directory's; roles evened out by the nodes; default lease 3s) on one redis-server, on this machine's 2 cores with the load generator, against one dingd on its own in the same run. "+
			"%d connections through the Go client library dialling node a and redirected to their users' owners, each a user submitting %d-byte messages to the next user (online), one at a time (closed loop); %v warm-up, %v measured. "+
			"Failover: u0's client, given every node's address, sends one message at a time; the node serving u0 is killed with SIGKILL; the time is to the client's first acknowledgement afterwards (the lease running out, the standby's takeover, a new standby joining: no acknowledgement without one, the client moving); the killed node is restarted and the roles even out before the next kill.",
			cfg.Partitions, cfg.Conns, cfg.Payload, cfg.Warmup, cfg.Run),
		Rows:  rows,
		Notes: append(runNotes("One dingd", single), runNotes("Node a (its own partitions only)", run)...),
	}, nil
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

// failoverPartition kills the node serving u0 while u0's client sends,
// and returns the time from the kill to its first acknowledgement; the
// killed node is restarted.
func (cl *dingCluster) failoverPartition(parts int) (time.Duration, error) {
	p := partitionOf("u0", parts)
	var victim *Server
	for id, ps := range cl.owners() {
		if slices.Contains(ps, p) {
			victim = cl.members[int(id[0]-'a')]
		}
	}
	if victim == nil {
		return 0, fmt.Errorf("no node owns u0's partition %d", p)
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
