package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
)

// A rolling restart (ClusterConfig.Rolling): what an operator does to
// upgrade a cluster, one node after another. Each node is drained
// (POST /v1/cluster/drain, dingctl cluster drain: its partitions go to
// their standbys, its standby places to the others), stopped once it
// holds no role (SIGTERM), started again on its data directory, and the
// next one waits until the roles are even and quiet again. Meanwhile a
// sender in each partition sends to a user of the next partition, one
// message at a time, its client given every node's address; each
// receiver's device acknowledges what it gets. The figures: how long the
// round took, the longest submit→ack a sender saw, and the messages
// acknowledged and not delivered (lost: must be 0) or delivered twice.
// With ClusterConfig.UpgradeTo each node comes back on another build: a
// rolling upgrade, the old and the new build running side by side until
// the last node is restarted.

// rollingFigures is one round of restarts.
type rollingFigures struct {
	took    time.Duration
	acks    Latencies       // every send's submit→ack
	sent    int             // messages acknowledged
	lost    int             // acknowledged, not delivered 30 s after the round
	twice   int             // delivered more than once
	unsure  int             // sends whose answer did not come in time, sent again with their client id
	retried map[string]int  // sends the server answered with an error to retry, by code, sent again
	perNode []time.Duration // each node's drain, stop, start and settling
}

// rollingRestart runs one round over the cluster's three nodes, with
// users u0…u(users-1) spread over parts partitions; each node is started
// again from the binary upgradeTo when it is set (an upgrade between two
// builds), else from its own.
func (cl *dingCluster) rollingRestart(parts, users int, upgradeTo string) (rollingFigures, error) {
	var f rollingFigures
	// Two users in each partition: a sender, and the receiver the sender
	// of the partition before sends to.
	byPart := make([][]string, parts)
	for i := range users {
		u := fmt.Sprintf("u%d", i)
		p := partitionOf(u, parts)
		if len(byPart[p]) < 2 {
			byPart[p] = append(byPart[p], u)
		}
	}
	for p, us := range byPart {
		if len(us) < 2 {
			return f, fmt.Errorf("rolling restart: fewer than two of %d users in partition %d", users, p)
		}
	}
	entry := cl.members[0]
	dial := func(user, device string) (*client.Client, error) {
		return client.Dial(context.Background(), client.Config{Addr: cl.socks(), Token: entry.Token(user, device), Device: device,
			DialTimeout: time.Second, MaxBackoff: 100 * time.Millisecond})
	}
	var mu sync.Mutex
	// What the receivers got: each message id's stream seqs (a reconnect
	// may deliver an entry again under its seq: not a duplicate), and
	// each body's ids (one body stored under two ids would be).
	seqs := map[string]map[uint64]bool{}
	ids := map[string]map[string]bool{}
	acked := map[string]bool{}
	got := make(chan struct{}, 1)
	var clients []*client.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for p := range parts {
		rc, err := dial(byPart[p][1], "rolling")
		if err != nil {
			return f, err
		}
		clients = append(clients, rc)
		go func() {
			for e := range rc.Entries() {
				rc.Ack(e.Seq)
				if e.Message == nil || !strings.HasPrefix(string(e.Message.Body), "rolling ") {
					continue // the load's, before this probe
				}
				mu.Lock()
				if seqs[e.Message.ID] == nil {
					seqs[e.Message.ID] = map[uint64]bool{}
				}
				seqs[e.Message.ID][e.Seq] = true
				body := string(e.Message.Body)
				if ids[body] == nil {
					ids[body] = map[string]bool{}
				}
				ids[body][e.Message.ID] = true
				mu.Unlock()
				select {
				case got <- struct{}{}:
				default:
				}
			}
		}()
	}
	senders := make([]*client.Client, parts)
	for p := range parts {
		sc, err := dial(byPart[p][0], "rolling")
		if err != nil {
			return f, err
		}
		clients = append(clients, sc)
		senders[p] = sc
	}
	stopCtx, stop := context.WithCancel(context.Background())
	defer stop()
	start := time.Now()
	f.retried = map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan error, parts)
	for p, sc := range senders {
		to := byPart[(p+1)%parts][1]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; stopCtx.Err() == nil; n++ {
				body := []byte(fmt.Sprintf("rolling %d %d", p, n))
				at := time.Now()
				// Its own client id, so that a send sent again is stored
				// at most once.
				id := client.WithClientID(fmt.Sprintf("rolling-%d-%d-%d", start.UnixNano(), p, n))
				for {
					ctx, cancel := context.WithTimeout(stopCtx, 20*time.Second)
					res, err := sc.Send(ctx, []string{to}, body, id)
					cancel()
					if stopCtx.Err() != nil && err != nil {
						return // the round ended (or failed): this one is not counted either way
					}
					var ue *client.UnsureError
					var se *client.Error
					switch {
					case err == nil:
						mu.Lock()
						acked[res.ID] = true
						f.acks = append(f.acks, time.Since(at))
						mu.Unlock()
					case errors.As(err, &ue) && time.Since(at) < 2*time.Minute:
						mu.Lock()
						f.unsure++
						mu.Unlock()
						continue
					case errors.As(err, &se) && se.Retry && time.Since(at) < 2*time.Minute:
						// The server says to send it again: counted, and
						// sent again after its RetryAfter or a moment (a
						// client's backoff, not a wait for an event).
						mu.Lock()
						f.retried[se.Code.String()]++
						mu.Unlock()
						time.Sleep(max(se.RetryAfter, 50*time.Millisecond))
						continue
					default:
						errs <- fmt.Errorf("sender %d, message %d: %w", p, n, err)
						return
					}
					break
				}
			}
		}()
	}
	restart := func(s *Server) error {
		id := string(rune('a' + slices.Index(cl.members, s)))
		began := time.Now()
		fmt.Fprintf(os.Stderr, "cluster: rolling restart: draining %s\n", id)
		if err := s.call("POST", "/v1/cluster/drain", nil, nil); err != nil {
			return fmt.Errorf("drain %s: %w", id, err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for !cl.holdsNoRole(id) {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s still holds a role 2 minutes after its drain: %s", id, render(cl.statuses()))
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := s.Kill(syscall.SIGTERM); err != nil {
			return fmt.Errorf("stop %s: %w", id, err)
		}
		if !s.cmd.ProcessState.Success() {
			return fmt.Errorf("%s's stop after its drain: %v", id, s.cmd.ProcessState)
		}
		if upgradeTo != "" {
			s.bin = upgradeTo
		}
		if _, err := s.launch(); err != nil {
			return fmt.Errorf("start %s again: %w", id, err)
		}
		if err := cl.waitSettled(5*time.Second, 3*time.Minute); err != nil {
			return fmt.Errorf("after restarting %s: %w", id, err)
		}
		f.perNode = append(f.perNode, time.Since(began))
		return nil
	}
	var rerr error
	for _, s := range cl.members {
		if rerr = restart(s); rerr == nil {
			select {
			case rerr = <-errs: // a sender failed meanwhile
			default:
			}
		}
		if rerr != nil {
			break
		}
	}
	f.took = time.Since(start)
	stop()
	wg.Wait()
	select {
	case err := <-errs:
		rerr = errors.Join(rerr, err)
	default:
	}
	if rerr != nil {
		return f, rerr
	}
	missing := func() (lost, twice int) {
		mu.Lock()
		defer mu.Unlock()
		for id := range acked {
			if len(seqs[id]) == 0 {
				lost++
			}
		}
		for _, ss := range seqs {
			if len(ss) > 1 { // one message in the stream twice
				twice++
			}
		}
		for _, is := range ids {
			if len(is) > 1 { // one body stored twice
				twice += len(is) - 1
			}
		}
		return lost, twice
	}
	// Until every acknowledged message came (30 s at most), then for as
	// long as more keep coming, 2 s at a time: a copy delivered late is
	// counted too.
	deadline := time.After(30 * time.Second)
wait:
	for {
		lost, _ := missing()
		quiet := time.After(2 * time.Second)
		if lost > 0 {
			quiet = nil
		}
		select {
		case <-got:
		case <-quiet:
			break wait
		case <-deadline:
			break wait
		}
	}
	f.lost, f.twice = missing()
	f.sent = len(acked)
	if len(f.retried) > 0 {
		// What the nodes logged of the requests they answered with a
		// server error (session: "request failed", with its cause).
		cl.logLines(10, func(line string) bool { return strings.Contains(line, "request failed") })
	}
	return f, nil
}

// holdsNoRole reports whether node id answers and owns or follows no
// partition.
func (cl *dingCluster) holdsNoRole(id string) bool {
	for _, st := range cl.statuses() {
		if st.Member != id {
			continue
		}
		for _, p := range st.Partitions {
			if p.Role == "owner" || p.Role == "standby" {
				return false
			}
		}
		return true
	}
	return false
}

// rollingRow renders the rounds of rolling restarts.
func rollingRow(rounds []rollingFigures) Row {
	var each []string
	for _, f := range rounds {
		var per []string
		for _, d := range f.perNode {
			per = append(per, fmt.Sprintf("%.1f", d.Seconds()))
		}
		retried := "none"
		if len(f.retried) > 0 {
			var rs []string
			for code, n := range f.retried {
				rs = append(rs, fmt.Sprintf("%d %s", n, code))
			}
			slices.Sort(rs)
			retried = strings.Join(rs, ", ")
		}
		each = append(each, fmt.Sprintf("%.1f s (%s s per node); %d messages acknowledged, %d lost, %d delivered twice, %d sends answered late and sent again, answered retry: %s; submit→ack p50 %s, p99 %s, max %s",
			f.took.Seconds(), strings.Join(per, ", "), f.sent, f.lost, f.twice, f.unsure, retried, f.acks.ms(0.5), f.acks.ms(0.99), f.acks.ms(1)))
	}
	return Row{"rolling restart of the three nodes (drain, SIGTERM, start), a sender per partition", strings.Join(each, "; "), "", "", "0 lost" + met(allZeroLost(rounds))}
}

func allZeroLost(rounds []rollingFigures) bool {
	for _, f := range rounds {
		if f.lost > 0 {
			return false
		}
	}
	return true
}

// logTails prints the last n lines of each node's log (dingd's stderr,
// at --log-level warn) to stderr: a failed round's evidence, which
// would otherwise go with the nodes' data directories.
func (cl *dingCluster) logTails(n int) { cl.logLines(n, nil) }

// logLines prints, to stderr, the last n lines of each node's log that
// keep says to (every line for nil).
func (cl *dingCluster) logLines(n int, keep func(string) bool) {
	for i, s := range cl.members {
		b, err := os.ReadFile(filepath.Join(s.Data, "dingd.log"))
		if err != nil {
			continue
		}
		var lines []string
		for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			if keep == nil || keep(l) {
				lines = append(lines, l)
			}
		}
		fmt.Fprintf(os.Stderr, "cluster: node %c's log, last %d lines of %d:\n%s\n", 'a'+i, min(n, len(lines)), len(lines), strings.Join(lines[max(0, len(lines)-n):], "\n"))
	}
}
