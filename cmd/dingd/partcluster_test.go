package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
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
// a real redis-server. The first founds every partition; the others join
// and the roles even out, every partition with an owner and a standby on
// two different nodes. Senders of every partition send to a user of the
// next partition, their clients given all three addresses (a node not
// serving a user redirects it). The node owning the most partitions is
// killed with SIGKILL mid-flight: its partitions' standbys take them over
// (time to writable measured), and every message whose durable ack
// reached a sender is in its recipient's stream, read back through the
// surviving nodes, once.
func TestClusterPartitionsKill9LosesNothingAcknowledged(t *testing.T) {
	const parts = 4
	redisURL := "redis://" + redistest.Start(t).Addr
	coord, closeRedis, err := cluster.DialRedis(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	ctx := context.Background()
	c := &pair{t: t, redisURL: redisURL, lease: "1s", coord: coord, extra: []string{"--partitions", "4", "--idle-timeout", "1500ms"}}
	roles := func() (owner, standby [parts]string) {
		for p := range parts {
			owner[p], _, _ = coord.Lease(ctx, cluster.Partition(p))
			standby[p], _ = coord.Standby(ctx, cluster.Partition(p))
		}
		return owner, standby
	}
	waitRoles := func(what string, ok func(owner, standby [parts]string) bool) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			o, s := roles()
			if ok(o, s) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 90s; owners %q, standbys %q", what, o, s)
			}
			time.Sleep(50 * time.Millisecond) // polling the coordinator: nothing to wait on
		}
	}
	procs := map[string]*proc{}
	procs["a"] = c.member("a")
	procs["a"].waitReady(t, 30*time.Second)
	waitRoles("a to found every partition", func(o, _ [parts]string) bool { return o == [parts]string{"a", "a", "a", "a"} })
	procs["b"], procs["c"] = c.member("b"), c.member("c")
	for _, id := range []string{"b", "c"} {
		procs[id].waitReady(t, 30*time.Second)
	}
	// Even: every node owns one or two, every partition has a standby
	// elsewhere.
	waitRoles("the roles to even out", func(o, s [parts]string) bool {
		owns := map[string]int{}
		for p := range parts {
			if o[p] == "" || s[p] == "" || o[p] == s[p] {
				return false
			}
			owns[o[p]]++
		}
		return owns["a"] >= 1 && owns["b"] >= 1 && owns["c"] >= 1
	})

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
	// Created through c (which proxies the directory's changes to the
	// node owning the directory's partition); every node then holds them.
	for _, us := range byPart {
		for _, u := range us {
			if code := procs["c"].admin(t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil); code != 201 {
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
	addrs := procs["a"].sock + "," + procs["b"].sock + "," + procs["c"].sock
	sctx, stopSenders := context.WithCancel(ctx)
	var mu sync.Mutex
	acked := map[string]map[string]bool{} // recipient → ids acknowledged to the sender
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
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, ids := range acked {
			n += len(ids)
		}
		return n
	}
	for deadline := time.Now().Add(30 * time.Second); count() < 200; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d acks in 30s", count())
		}
	}
	owners, _ := roles()
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
	if err := procs[victim].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-procs[victim].exited
	before := count()
	// Writable again: each of its partitions has a live owner and a
	// standby (ack-replicas 1), and the senders' acknowledgements resume.
	waitRoles("the victim's partitions to be taken over", func(o, s [parts]string) bool {
		for _, p := range owns[victim] {
			if o[p] == "" || o[p] == victim || s[p] == "" || s[p] == victim {
				return false
			}
		}
		return true
	})
	for deadline := time.Now().Add(30 * time.Second); count() < before+100; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("acks did not resume after the kill: %d then %d", before, count())
		}
	}
	writable := time.Since(killed)
	stopSenders()
	wg.Wait()

	// Every acknowledged message is in its recipient's stream, once.
	var live []string
	for id, pr := range procs {
		if id != victim {
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
					if id == victim {
						continue
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
	t.Logf("%d messages acknowledged across 4 partitions on 3 nodes, all delivered once; %s owned partitions %v and was killed; acknowledgements resumed %v after the kill (lease 1s)",
		total, victim, owns[victim], writable.Round(time.Millisecond))
}
