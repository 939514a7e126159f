package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/internal/redistest"
)

// TestClusterPartitionsWebhookEventsSurviveKill9: three dingd processes
// of 4 partitions on a real redis-server, and a subscription to user.*
// made through one of them. Users are added through a node that does not
// own the directory's partition; the receiver answers the first
// deliveries, then hangs, so that when the directory partition's owner
// is killed with SIGKILL one event is in flight and the others are
// committed (each add was answered: durable on the owner and its
// standby) but not delivered. The standby takes the partition over and
// its node delivers the outbox from the durable cursor: every user added,
// before the kill and after it, reaches the receiver once it is back, in
// order, from the directory's outbox, signed with the one secret, the
// event in flight under the id its first attempt had.
func TestClusterPartitionsWebhookEventsSurviveKill9(t *testing.T) {
	const before, answered, after = 20, 5, 5
	hr := newHoldingReceiver(t, answered)
	hr.dedup = true // several nodes may deliver an event: a receiver deduplicates by id

	const parts, dir = 4, 4 // the directory's partition is D = P
	c := newPair(t, "redis://"+redistest.Start(t).Addr, "1s")
	c.extra = []string{"--partitions", "4", "--webhook-max-backoff", "1s", "--webhook-timeout", "1m"}
	ctx := context.Background()
	roles := func() (owner, standby [parts + 1]string) {
		for p := range parts + 1 {
			owner[p], _, _ = c.coord.Lease(ctx, cluster.Partition(p))
			standby[p], _ = c.coord.Standby(ctx, cluster.Partition(p))
		}
		return owner, standby
	}
	procs := map[string]*proc{}
	for _, id := range []string{"a", "b", "c"} {
		procs[id] = c.member(id)
		procs[id].waitReady(t, 30*time.Second)
	}
	waitRoles := func(what string, okay func(o, s [parts + 1]string) bool) {
		t.Helper()
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(50 * time.Millisecond) { // polling the coordinator
			o, s := roles()
			if okay(o, s) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 90s; owners %q, standbys %q", what, o, s)
			}
		}
	}
	waitRoles("every partition, the directory's included, to have an owner and a standby elsewhere", func(o, s [parts + 1]string) bool {
		for p := range o {
			if o[p] == "" || s[p] == "" || o[p] == s[p] {
				return false
			}
		}
		return true
	})
	rolesQuiet(t, func() [2][parts + 1]string { o, s := roles(); return [2][parts + 1]string{o, s} })
	o, _ := roles()
	victim := o[dir]
	via := "a"
	for via == victim {
		via = string(via[0] + 1)
	}

	var sub struct{ ID, Secret string }
	if code := procs[victim].admin(t, "POST", "/v1/webhooks", map[string]any{"url": hr.srv.URL, "events": []string{"user.*"}}, &sub); code != http.StatusCreated || sub.Secret == "" {
		t.Fatalf("POST /v1/webhooks through %s: %d %+v", victim, code, sub)
	}
	hr.setSecret(sub.Secret)
	var users []string
	add := func(u string) {
		t.Helper()
		// Right after the takeover, via may still send the change to the
		// dead owner once (503, retried), never acknowledge it undone.
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			code := procs[via].admin(t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil)
			if code == http.StatusCreated {
				users = append(users, u)
				return
			}
			if code != http.StatusServiceUnavailable || time.Now().After(deadline) {
				t.Fatalf("add %s through %s: %d; logs:\n%s", u, via, code, logsOf(procs))
			}
		}
	}
	for i := range before {
		add(fmt.Sprintf("u%02d", i))
	}
	select { // the receiver holds one delivery; the rest wait in the outbox
	case <-hr.hung:
	case <-time.After(30 * time.Second):
		t.Fatalf("no delivery reached the receiver's hang within 30s; logs:\n%s", logsOf(procs))
	}
	hr.mu.Lock()
	delivered := len(hr.ok)
	hr.mu.Unlock()
	if err := procs[victim].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-procs[victim].exited
	killed := time.Now()
	waitRoles("the directory's partition to be taken over", func(o, s [parts + 1]string) bool {
		return o[dir] != "" && o[dir] != victim
	})
	t.Logf("%s owned the directory's partition and was killed with %d of %d events delivered; taken over in %v",
		victim, delivered, before, time.Since(killed).Round(time.Millisecond))
	hr.recover()
	for i := range after {
		add(fmt.Sprintf("v%02d", i))
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		hr.mu.Lock()
		n := len(hr.ok)
		hr.mu.Unlock()
		if n >= len(users) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver got %d of %d user.added events 60s after the kill; logs:\n%s", n, len(users), logsOf(procs))
		}
		time.Sleep(20 * time.Millisecond) // polling the receiver's list
	}
	hr.mu.Lock()
	defer hr.mu.Unlock()
	var order []string
	for _, g := range hr.ok {
		if !strings.HasPrefix(g.id, "evt_dir_") {
			t.Fatalf("event %s: not from the directory's outbox", g.id)
		}
		order = append(order, g.user)
	}
	if !slices.Equal(order, users) {
		t.Fatalf("delivered %v, want every user added in order: %v", order, users)
	}
	for id, u := range hr.tried {
		if i := slices.IndexFunc(hr.ok, func(g hookGot) bool { return g.user == u }); hr.ok[i].id != id {
			t.Fatalf("user %s's event came as %s, first tried as %s", u, hr.ok[i].id, id)
		}
	}
}

// logsOf is every node's log, for a failure's message.
func logsOf(procs map[string]*proc) string {
	var b strings.Builder
	for id, pr := range procs {
		fmt.Fprintf(&b, "--- %s:\n%s\n", id, pr.stderr)
	}
	return b.String()
}
