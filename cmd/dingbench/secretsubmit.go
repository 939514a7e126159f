package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/bench"
)

// kinds are the message kinds phase 1 rotates through: plain 1:1, then
// level-1 and level-3 secret chats.
var kinds = [3]int{0, 1, 3}

func kindName(k int) string {
	if k == 0 {
		return "plain 1:1"
	}
	return fmt.Sprintf("level-%d secret", k)
}

func kindTag(k int) string {
	if k == 0 {
		return "plain"
	}
	return fmt.Sprintf("l%d", k)
}

// schedule is phase 1's timeline: a warm-up of plain submits, then
// windows of Round, rotating through kinds (see kind).
type schedule struct {
	start       time.Time
	warm, round time.Duration
	windows     int
}

// at returns the kind to send at t, whether t is in a measured window,
// and whether the schedule is over.
func (s schedule) at(t time.Time) (kind int, counted, over bool) {
	d := t.Sub(s.start)
	if d < s.warm {
		return 0, false, false
	}
	i := int((d - s.warm) / s.round)
	if i >= s.windows {
		return 0, false, true
	}
	return s.kind(i), true, false
}

// kind is window i's kind. Each round starts one kind later than the
// last (plain, 1, 3; then 1, 3, plain; ...), so that no kind always
// follows the same one.
func (s schedule) kind(i int) int {
	n := len(kinds)
	return kinds[(i%n+i/n)%n]
}

// boundary is the start of window i (i = windows: the end).
func (s schedule) boundary(i int) time.Time {
	return s.start.Add(s.warm + time.Duration(i)*s.round)
}

// kindStats is what phase 1 measured for one kind over its windows.
type kindStats struct {
	acked    int64           // acks of submits started inside the kind's windows
	sent     int64           // every acked submit of the kind, windows or not
	received int             // messages of the kind the recipients got (secret kinds)
	ack, del bench.Latencies // submit→ack; submit→delivered (sent inside the windows)
	// From dingd's /metrics, summed over the kind's windows.
	batches, ops, commitSec, cpuSec float64
}

// throughputFigures is phase 1's result.
type throughputFigures struct {
	kinds    map[int]*kindStats
	measured time.Duration // per kind: rounds × round
}

// throughput runs phase 1 and leaves its parties connected (their
// messages are read and burned in phase 3).
func (r *secretRun) throughput() (throughputFigures, []*party, error) {
	cfg := r.cfg
	ps, err := dialUsers(r.srv, "u", 2*cfg.Pairs)
	if err != nil {
		return throughputFigures{}, nil, err
	}
	// Each pair has a level-1 and a level-3 chat, created by its first user.
	chats := make([][4]string, cfg.Pairs) // by level
	err = forEach(cfg.Pairs, 64, func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, l := range []int{1, 3} {
			var burn time.Duration
			if l == 3 {
				burn = burnDelay
			}
			id, err := ps[2*i].c.CreateChat(ctx, ps[2*i+1].user, l, burn)
			if err != nil {
				return fmt.Errorf("create level-%d chat %d: %w", l, i, err)
			}
			chats[i][l] = id
		}
		return nil
	})
	if err != nil {
		closeParties(ps)
		return throughputFigures{}, nil, err
	}

	sched := schedule{start: time.Now(), warm: cfg.Warmup, round: cfg.Round, windows: cfg.Rounds * len(kinds)}
	type senderStats struct {
		acked, sent [4]int64
		ack         [4]bench.Latencies
	}
	per := make([]senderStats, len(ps))
	var wg sync.WaitGroup
	var sendErr atomic.Value
	for j, p := range ps {
		peer, chat := ps[j^1].user, chats[j/2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := &per[j]
			body := make([]byte, cfg.Payload)
			for {
				t0 := time.Now()
				kind, counted, over := sched.at(t0)
				if over {
					return
				}
				stamp(body, t0)
				var err error
				if kind == 0 {
					_, err = p.c.Send(context.Background(), []string{peer}, body)
				} else {
					_, err = p.c.SendChat(context.Background(), chat[kind], body)
				}
				if err != nil {
					sendErr.CompareAndSwap(nil, fmt.Errorf("%s: send %s: %w", p.user, kindName(kind), err))
					return
				}
				st.sent[kind]++
				if counted {
					st.acked[kind]++
					st.ack[kind] = append(st.ack[kind], time.Since(t0))
				}
			}
		}()
	}
	// The server's counters at each window boundary.
	snaps := make([]bench.Metrics, sched.windows+1)
	var snapErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range snaps {
			time.Sleep(time.Until(sched.boundary(i)))
			if i < len(kinds) { // the first round's windows
				r.profile("submit-"+kindTag(sched.kind(i)), cfg.Round-time.Second) // profiles must not overlap
			}
			s, err := r.srv.Scrape()
			if err != nil && snapErr == nil {
				snapErr = err
			}
			snaps[i] = s
		}
	}()
	wg.Wait()
	if err, _ := sendErr.Load().(error); err != nil {
		closeParties(ps)
		return throughputFigures{}, nil, err
	}
	if snapErr != nil {
		closeParties(ps)
		return throughputFigures{}, nil, snapErr
	}

	out := throughputFigures{kinds: map[int]*kindStats{}, measured: time.Duration(cfg.Rounds) * cfg.Round}
	for _, k := range kinds {
		ks := &kindStats{}
		for j := range per {
			ks.acked += per[j].acked[k]
			ks.sent += per[j].sent[k]
			ks.ack.Merge(per[j].ack[k])
		}
		out.kinds[k] = ks
	}
	for i := range sched.windows {
		ks, a, b := out.kinds[sched.kind(i)], snaps[i], snaps[i+1]
		ks.batches += b["ding_engine_commit_batch_ops_count"] - a["ding_engine_commit_batch_ops_count"]
		ks.ops += b["ding_engine_commit_batch_ops_sum"] - a["ding_engine_commit_batch_ops_sum"]
		ks.commitSec += b["ding_engine_commit_duration_seconds_sum"] - a["ding_engine_commit_duration_seconds_sum"]
		ks.cpuSec += b["process_cpu_seconds_total"] - a["process_cpu_seconds_total"]
	}
	// Every message reaches its recipient (who is online) before the
	// deliveries are counted.
	want := out.kinds[1].sent + out.kinds[3].sent
	err = poll(30*time.Second, "phase 1's secret messages to arrive", func() bool {
		n := 0
		for _, p := range ps {
			n += p.count(1) + p.count(3)
		}
		return int64(n) >= want
	})
	if err != nil {
		closeParties(ps)
		return throughputFigures{}, nil, err
	}
	for _, p := range ps {
		out.kinds[1].received += p.count(1)
		out.kinds[3].received += p.count(3)
		for _, d := range p.deliveries() {
			if k, counted, _ := sched.at(d.sent); counted && k == d.kind {
				out.kinds[k].del = append(out.kinds[k].del, d.lat)
			}
		}
	}
	return out, ps, nil
}
