package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/redistest"
)

// partitionsOf is the placement of --partitions p: user's partition.
func partitionsOf(user string, p int) int {
	return int(fanout.PartitionOf(user)) * p / fanout.Partitions
}

// Three dingd processes of 4 partitions each (a member per partition) on
// a real redis-server, under load (partitionsUnderLoad). The node owning
// the most partitions is killed with SIGKILL mid-flight: its partitions'
// standbys take them over (time to writable measured), and every message
// whose durable ack reached a sender is in its recipient's stream, read
// back through the surviving nodes, once.
func TestClusterPartitionsKill9LosesNothingAcknowledged(t *testing.T) {
	partitionsUnderLoad(t, "redis://"+redistest.Start(t).Addr, "1s", []string{"a", "b", "c"}, func(lc *loadCluster) {
		victim, owned := lc.mostOwners()
		killed := time.Now()
		if err := lc.procs[victim].cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-lc.procs[victim].exited
		lc.takenOver(victim, owned)
		t.Logf("%s owned partitions %v and was killed; acknowledgements resumed %v after (lease 1s)", victim, owned, time.Since(killed).Round(time.Millisecond))
		// An admin's send (the real dingctl) through the surviving node
		// that does not serve the sender's partition: that node sends it
		// on to the one that does (it answered 500 INTERNAL before).
		owners, _ := lc.roles()
		var via *proc
		for id, pr := range lc.procs {
			if id != victim && id != owners[partitionsOf("u0", 4)] {
				via = pr
			}
		}
		ctl := exec.Command(dingctlBinary(t), "--server", "http://"+via.http, "--data", via.data, "send", "--from", "u0", "--to", "u1", "through a node not serving u0")
		var ctlErr strings.Builder
		ctl.Stderr = &ctlErr
		out, err := ctl.Output()
		if id := strings.TrimSpace(string(out)); err != nil || len(id) != 26 {
			t.Fatalf("dingctl send through a node not serving the sender: %v, %q %q; want a message id", err, out, ctlErr.String())
		}
	})
}

// As above, but the node owning the most partitions is paused (SIGSTOP)
// instead: its standbys take its partitions over while it sleeps, and
// when it wakes (SIGCONT), with its clients' submits in flight, it gets
// no acknowledgement through for the partitions it lost: every message
// acknowledged to a sender, before the pause, during it or after, is in
// its recipient's stream on the owner of the recipient's partition then,
// once. The woken node says it lost its partitions and follows them
// again (a member per partition rejoins from the new owner's snapshot)
// instead of serving on.
func TestClusterPartitionsPausedOwnerGetsNothingAcknowledged(t *testing.T) {
	partitionsUnderLoad(t, "redis://"+redistest.Start(t).Addr, "1s", []string{"a", "b", "c"}, func(lc *loadCluster) {
		victim, owned := lc.mostOwners()
		pr := lc.procs[victim]
		if err := pr.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		paused := time.Now()
		lc.takenOver(victim, owned)
		t.Logf("%s owned partitions %v and was paused; acknowledgements resumed %v after (lease 1s)", victim, owned, time.Since(paused).Round(time.Millisecond))
		if err := pr.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		// It wakes as the owner it was, finds its leases gone, and joins
		// its partitions again as a standby or a spare: it stays up.
		lc.waitRoles("the woken node to follow a partition again", func(_, s [4]string) bool {
			return slices.Contains(s[:], victim)
		})
		lc.moreAcks("beside the woken node", 100)
		select {
		case <-pr.exited:
			t.Fatalf("the woken node exited:\n%s", pr.stderr)
		default:
		}
		if out := pr.stderr.String(); !strings.Contains(out, "deposed") && !strings.Contains(out, "lost the partition's lease") {
			t.Fatalf("the paused node did not say it lost its partitions:\n%s", out)
		}
	})
}

// Two nodes under load; a third joins: it takes standby places, then
// ownership by hand-overs (balance), while every partition's sender
// sends; then it is drained (POST /v1/cluster/drain) under the same
// load, and hands everything back. Every acknowledged message is in its
// recipient's stream once, whichever nodes served it meanwhile.
func TestClusterPartitionsJoinAndDrainUnderLoad(t *testing.T) {
	partitionsUnderLoad(t, "redis://"+redistest.Start(t).Addr, "1s", []string{"a", "b"}, func(lc *loadCluster) {
		c := lc.start("c")
		lc.waitRoles("c to own a partition, every partition with a standby elsewhere", func(o, s [4]string) bool {
			return lc.healthy(o, s) && slices.Contains(o[:], "c")
		})
		lc.moreAcks("with c serving", 100)
		if code := c.admin(t, "POST", "/v1/cluster/drain", nil, nil); code != http.StatusAccepted {
			t.Fatalf("drain of c: %d, want 202", code)
		}
		lc.waitRoles("c to hold no role, every partition owned and followed by a and b", func(o, s [4]string) bool {
			return lc.healthy(o, s) && !slices.Contains(o[:], "c") && !slices.Contains(s[:], "c")
		})
		lc.moreAcks("after the drain", 100)
	})
}

// A rolling restart under load, as an operator upgrades a cluster: each
// of the three nodes in turn is drained (POST /v1/cluster/drain), stopped
// with SIGTERM once it holds no role, started again on its data
// directory, and given roles again (balance) before the next one, while
// every partition's sender sends. Every acknowledged message is in its
// recipient's stream once, and acknowledgements go on at every step.
func TestClusterPartitionsRollingRestartUnderLoad(t *testing.T) {
	partitionsUnderLoad(t, "redis://"+redistest.Start(t).Addr, "1s", []string{"a", "b", "c"}, func(lc *loadCluster) {
		for _, id := range []string{"a", "b", "c"} {
			// Once the roles are quiet, as an operator waits for them
			// (balance may still be moving one after the last restart).
			rolesQuiet(t, func() [2][4]string { o, s := lc.roles(); return [2][4]string{o, s} })
			pr := lc.procs[id]
			if code := pr.admin(t, "POST", "/v1/cluster/drain", nil, nil); code != http.StatusAccepted {
				t.Fatalf("drain of %s: %d, want 202", id, code)
			}
			lc.waitRoles(id+" to hold no role, every partition owned and followed by the others", func(o, s [4]string) bool {
				return lc.healthy(o, s) && !slices.Contains(o[:], id) && !slices.Contains(s[:], id)
			})
			lc.moreAcks(id+" drained", 50)
			if err := pr.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := pr.wait(t, 30*time.Second); err != nil {
				t.Fatalf("%s's stop after its drain: %v\n%s", id, err, pr.stderr)
			}
			lc.moreAcks(id+" stopped", 50)
			lc.restart(id)
			lc.waitRoles(id+" to own a partition again, every partition with a standby elsewhere", func(o, s [4]string) bool {
				return lc.healthy(o, s) && slices.Contains(o[:], id)
			})
			lc.moreAcks(id+" back", 50)
		}
	})
}

// Three nodes of partitions on a real Redis Cluster (3 masters, 3
// replicas), under load: the master holding partition 0's slot is killed
// with SIGKILL. Redis Cluster promotes its replica; the nodes recover by
// themselves (an owner keeps its partition, or loses it and its standby
// takes over, or, if the failover lost the partition's coordinator state,
// the members recover it together: internal/node/recover.go), every
// partition is owned and followed again, acknowledgements resume, and
// every acknowledged message is in its recipient's stream once.
func TestClusterPartitionsSurviveARedisMasterKill(t *testing.T) {
	rc := redistest.StartCluster(t, 3, 1, time.Second)
	partitionsUnderLoad(t, "redis://"+strings.Join(rc.Addrs(), ","), "2s", []string{"a", "b", "c"}, func(lc *loadCluster) {
		rc.MasterOf(t, "{ding:p:0}:lease").Kill()
		killed := time.Now()
		lc.waitRoles("every partition owned and followed again", lc.healthy)
		lc.moreAcks("after the Redis master's death", 100)
		t.Logf("acknowledgements resumed %v after SIGKILL of the Redis master of partition 0's slot", time.Since(killed).Round(time.Millisecond))
	})
}

// The same through Redis Sentinel (three sentinels, a master and a
// replica; the nodes log in as an ACL user with only cluster.RedisACL's
// rights, its password in the --cluster URL, which no node logs): the
// master is killed with SIGKILL, the sentinels
// promote the replica, and the nodes, told the new master by the
// sentinels, recover by themselves as above. Sentinel's replication is
// asynchronous, so the promoted replica may lack the latest writes: the
// fencing epochs and the members' own histories, not Redis, keep every
// acknowledged message.
func TestClusterPartitionsSurviveASentinelFailover(t *testing.T) {
	acl := append([]string{"--user", "dingd", "on", ">dingd-pw"}, strings.Fields(cluster.RedisACL)...)
	sen := redistest.StartSentinel(t, redistest.SentinelConfig{Name: "ding", Password: "s3cret-pw", Replicas: 1, Sentinels: 3, DownAfter: time.Second, ServerArgs: acl})
	partitionsUnderLoad(t, "redis://dingd:dingd-pw@"+sen.SentinelAddrs()+"?master_name=ding", "2s", []string{"a", "b", "c"}, func(lc *loadCluster) {
		old := sen.Master.Addr
		sen.Master.Kill()
		killed := time.Now()
		lc.waitRoles("every partition owned and followed again", lc.healthy)
		lc.moreAcks("after the Redis master's death", 100)
		if now := sen.MasterAddr(t); now == old {
			t.Fatalf("the sentinels still name %s, the killed master", old)
		}
		t.Logf("acknowledgements resumed %v after SIGKILL of the Redis master (Sentinel)", time.Since(killed).Round(time.Millisecond))
		// Each node logs the URL it reached Redis at (at info), with the
		// password replaced; and what go-redis said of the failover is
		// in the node's own log records (cluster.LogRedisTo).
		heard := false
		for id, pr := range lc.procs {
			log := pr.stderr.String()
			heard = heard || strings.Contains(log, "component=redis")
			if strings.Contains(log, "dingd-pw") || !strings.Contains(log, "redis://dingd:xxxxx@") {
				t.Errorf("node %s logged Redis's password, or no redacted URL:\n%s", id, log)
			}
			for _, line := range strings.Split(log, "\n") {
				if strings.HasPrefix(line, "redis: ") {
					t.Errorf("node %s let go-redis log in its own format: %q", id, line)
				}
			}
		}
		if !heard {
			t.Error("no node logged what go-redis said of the failover (component=redis)")
		}
		// And their metrics counted the commands the dead master did not
		// answer (what DingRedisUnreachable watches, were it to last).
		missed := 0.0
		for _, pr := range lc.procs {
			missed += redisCommandsNotAnswered(t, pr)
		}
		if missed == 0 {
			t.Error("no node counted a failed or unavailable Redis command across the master's death")
		}
	})
}

// redisCommandsNotAnswered sums ding_redis_commands_total{result="failed"
// or "unavailable"} on p's /metrics.
func redisCommandsNotAnswered(t *testing.T, p *proc) float64 {
	t.Helper()
	sum := 0.0
	for _, line := range strings.Split(p.metrics(t), "\n") {
		if !strings.HasPrefix(line, "ding_redis_commands_total{") || !(strings.Contains(line, `result="failed"`) || strings.Contains(line, `result="unavailable"`)) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// loadCluster is a cluster under load, as partitionsUnderLoad hands it to
// its tests.
type loadCluster struct {
	t     *testing.T
	procs map[string]*proc
	// start runs another node and waits until it is ready.
	start func(id string) *proc
	// restart runs node id again, on its data directory and addresses,
	// once it has exited, and waits until it is ready.
	restart func(id string)
	roles   func() (owner, standby [4]string)
	// waitRoles polls the coordinator until ok holds, for up to 90s.
	waitRoles func(what string, ok func(owner, standby [4]string) bool)
	count     func() int // acknowledgements so far
}

// healthy: every partition has an owner and a standby, on two nodes.
func (lc *loadCluster) healthy(o, s [4]string) bool {
	for p := range o {
		if o[p] == "" || s[p] == "" || o[p] == s[p] {
			return false
		}
	}
	return true
}

// mostOwners returns the node owning the most partitions, and which.
func (lc *loadCluster) mostOwners() (string, []int) {
	owners, _ := lc.roles()
	owns := map[string][]int{}
	for p, o := range owners {
		owns[o] = append(owns[o], p)
	}
	victim := "a"
	for id, ps := range owns {
		if len(ps) > len(owns[victim]) {
			victim = id
		}
	}
	return victim, owns[victim]
}

// takenOver waits until each of owned, the partitions victim owned, has
// another owner and a standby that is not victim (ack-replicas 1), and
// the senders' acknowledgements resume.
func (lc *loadCluster) takenOver(victim string, owned []int) {
	lc.t.Helper()
	lc.waitRoles("the victim's partitions to be taken over", func(o, s [4]string) bool {
		for _, p := range owned {
			if o[p] == "" || o[p] == victim || s[p] == "" || s[p] == victim {
				return false
			}
		}
		return true
	})
	lc.moreAcks("after the takeover", 100)
}

// moreAcks waits until n more messages are acknowledged.
func (lc *loadCluster) moreAcks(what string, n int) {
	lc.t.Helper()
	for deadline, before := time.Now().Add(30*time.Second), lc.count(); lc.count() < before+n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			for id, pr := range lc.procs {
				lc.t.Logf("node %s's log:\n%s", id, pr.stderr)
			}
			lc.t.Fatalf("acknowledgements %s: %d in 30s, want %d", what, lc.count()-before, n)
		}
	}
}

// partitionsUnderLoad runs dingd processes of 4 partitions each (a member
// per partition), the nodes named, on the Redis at redisURL (one server,
// a Redis Cluster's seeds, or Sentinel), with the lease given. The first
// founds every partition; the others join and the roles even out (every
// node owning one or more, every partition with an owner and a standby on
// two different nodes) and stay put. Senders of every partition send to
// a user of the next partition, their clients given the nodes' addresses
// (a node not serving a user redirects it). During runs while they send;
// then the senders stop, and every message whose durable ack reached a
// sender is read back from its recipient's stream through the nodes
// still running: there, once, in a stream without holes.
func partitionsUnderLoad(t *testing.T, redisURL, lease string, nodes []string, during func(lc *loadCluster)) {
	const parts = 4
	coord, closeRedis, err := cluster.DialRedis(cluster.RedisConfig{URL: redisURL})
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	ctx := context.Background()
	c := &pair{t: t, redisURL: redisURL, lease: lease, coord: coord, extra: []string{"--partitions", "4", "--idle-timeout", "1500ms", "--log-level", "info"}}
	roles := func() (owner, standby [parts]string) {
		for p := range parts {
			owner[p], _, _ = coord.Lease(ctx, cluster.Partition(p))
			standby[p], _ = coord.Standby(ctx, cluster.Partition(p))
		}
		return owner, standby
	}
	procs := map[string]*proc{}
	waitRoles := func(what string, ok func(owner, standby [parts]string) bool) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			o, s := roles()
			if ok(o, s) {
				return
			}
			if time.Now().After(deadline) {
				for id, pr := range procs {
					t.Logf("node %s's log:\n%s", id, pr.stderr)
				}
				t.Fatalf("%s: not within 90s; owners %q, standbys %q", what, o, s)
			}
			time.Sleep(50 * time.Millisecond) // polling the coordinator: nothing to wait on
		}
	}
	var mu sync.Mutex
	acked := map[string]map[string]bool{} // recipient → ids acknowledged to the sender
	lc := &loadCluster{t: t, procs: procs, roles: roles, waitRoles: waitRoles,
		start: func(id string) *proc {
			pr := c.member(id)
			procs[id] = pr
			pr.waitReady(t, 30*time.Second)
			return pr
		},
		restart: func(id string) {
			c.launch(procs[id], id)
			procs[id].waitReady(t, 30*time.Second)
		},
		count: func() int {
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for _, ids := range acked {
				n += len(ids)
			}
			return n
		}}
	lc.start(nodes[0])
	waitRoles(nodes[0]+" to found every partition", func(o, _ [parts]string) bool {
		return o == [parts]string{nodes[0], nodes[0], nodes[0], nodes[0]}
	})
	for _, id := range nodes[1:] {
		lc.start(id)
	}
	// Even: every node owns one or two, every partition has a standby
	// elsewhere.
	waitRoles("the roles to even out", func(o, s [parts]string) bool {
		for _, id := range nodes {
			if !slices.Contains(o[:], id) {
				return false
			}
		}
		return lc.healthy(o, s)
	})
	// And quiet: the nodes' balance moves a role at most every three
	// lease TTLs, and a partition handed over has no standby until its
	// old owner joins again from a snapshot: a node killed then would
	// leave that partition to no one. Five TTLs without a change: balance
	// has nothing left to move.
	rolesQuiet(t, func() [2][parts]string { o, s := roles(); return [2][parts]string{o, s} })

	// A sender and a recipient in each partition.
	byPart := make([][]string, parts)
	for i := 0; ; i++ {
		u := fmt.Sprintf("u%d", i)
		p := partitionsOf(u, parts)
		if len(byPart[p]) < 2 {
			byPart[p] = append(byPart[p], u)
		}
		if full := func() bool {
			for _, us := range byPart {
				if len(us) < 2 {
					return false
				}
			}
			return true
		}(); full {
			break
		}
	}
	// Created through the last node (which proxies the directory's
	// changes to the node owning the directory's partition, if another);
	// every node then holds them.
	for _, us := range byPart {
		for _, u := range us {
			if code := procs[nodes[len(nodes)-1]].admin(t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil); code != 201 {
				t.Fatalf("create %s: %d", u, code)
			}
		}
	}
	for id, pr := range procs {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			var list struct {
				Users []map[string]any `json:"users"`
			}
			if code := pr.admin(t, "GET", "/v1/users", nil, &list); code == 200 && len(list.Users) == 2*parts {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s's directory does not hold the %d users", id, 2*parts)
			}
		}
	}
	var socks []string
	for _, id := range nodes {
		socks = append(socks, procs[id].sock)
	}
	addrs := strings.Join(socks, ",")
	sctx, stopSenders := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for p := range parts {
		from, to := byPart[p][0], byPart[(p+1)%parts][1]
		mu.Lock() // the senders started before write to acked
		acked[to] = map[string]bool{}
		mu.Unlock()
		cl, err := client.Dial(ctx, client.Config{Addr: addrs, Token: procs["a"].token(t, from, "sender"), Device: "sender", MaxBackoff: 100 * time.Millisecond})
		if err != nil {
			t.Fatalf("dial %s: %v", from, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cl.Close()
			for i := 0; sctx.Err() == nil; i++ {
				actx, cancel := context.WithTimeout(sctx, 500*time.Millisecond)
				res, err := cl.Send(actx, []string{to}, []byte(fmt.Sprintf("%s-%d", from, i)))
				cancel()
				if err == nil {
					mu.Lock()
					acked[to][res.ID] = true
					mu.Unlock()
				}
			}
		}()
	}
	lc.moreAcks("before", 200)
	during(lc)
	stopSenders()
	wg.Wait()

	// Every acknowledged message is in its recipient's stream, once.
	var live []string
	for _, pr := range procs {
		select {
		case <-pr.exited:
		default:
			live = append(live, pr.sock)
		}
	}
	total := 0
	for to, ids := range acked {
		// The roles may still be moving (balance): a partition between
		// owners answers NOT_OWNER with no owner, and the dial is retried.
		var rc *client.Client
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if rc, err = client.Dial(ctx, client.Config{Addr: strings.Join(live, ","), Token: procs["a"].token(t, to, "check"), Device: "check"}); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("dial %s: %v", to, err)
			}
		}
		// Relays from the senders' partitions may still be in flight (a
		// message is acknowledged once durable in its sender's partition,
		// then relayed): read until every acknowledged one is there.
		have := map[string]int{}
		missing := func() int {
			n := 0
			for id := range ids {
				if have[id] == 0 {
					n++
				}
			}
			return n
		}
		timeout := time.After(30 * time.Second)
		for seq := uint64(1); missing() > 0; seq++ {
			select {
			case e, ok := <-rc.Entries():
				if !ok {
					t.Fatalf("%s's client stopped at seq %d: %v", to, seq, rc.Err())
				}
				if e.Seq != seq {
					t.Fatalf("%s's stream: seq %d, want %d", to, e.Seq, seq)
				}
				if e.Message != nil {
					have[e.Message.ID]++
				}
			case <-timeout:
				for id, pr := range procs {
					select {
					case <-pr.exited:
						continue
					default:
					}
					var relay []string
					if resp, err := http.Get("http://" + pr.http + "/metrics"); err == nil {
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						for _, l := range strings.Split(string(b), "\n") {
							if strings.HasPrefix(l, "ding_relay_backlog_records") || strings.HasPrefix(l, "ding_relay_apply_errors_total") || strings.HasPrefix(l, "ding_relay_records_total") {
								relay = append(relay, l)
							}
						}
					}
					t.Logf("node %s: relay metrics:\n%s\nlog:\n%s", id, strings.Join(relay, "\n"), pr.stderr)
				}
				t.Fatalf("%d of the %d messages acknowledged to %s's sender (partition %d to %d) are not in their stream after 30s (read through seq %d)", missing(), len(ids), to, (partitionsOf(to, parts)+parts-1)%parts, partitionsOf(to, parts), seq-1)
			}
		}
		rc.Close()
		for id, n := range have {
			if n > 1 {
				t.Errorf("message %s is %d times in %s's stream", id, n, to)
			}
		}
		total += len(ids)
	}
	t.Logf("%d messages acknowledged across 4 partitions, all delivered once", total)
}

// rolesQuiet waits until roles (the owners and standbys of the
// partitions, read from the coordinator) have not changed for five
// seconds, for up to 90s.
func rolesQuiet[T comparable](t *testing.T, roles func() T) {
	t.Helper()
	var last T
	for deadline, since := time.Now().Add(90*time.Second), time.Now(); ; time.Sleep(50 * time.Millisecond) { // polling the coordinator
		if now := roles(); now != last {
			last, since = now, time.Now()
		}
		if time.Since(since) >= 5*time.Second {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the roles did not stay put for 5s within 90s: %v", last)
		}
	}
}
