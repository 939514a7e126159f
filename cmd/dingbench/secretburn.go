package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/bench"
)

const latenessMetric = "ding_secret_burn_lateness_seconds"

// burns is dingd's count of burns of a level for a reason.
func burns(m bench.Metrics, level int, reason string) float64 {
	return m[fmt.Sprintf(`ding_secret_burns_total{level="%d",reason="%s"}`, level, reason)]
}

// readJob is one recipient reading its secret messages from one sender.
type readJob struct {
	reader, sender *party
	ids            []string
}

// pairJobs reads, for every party of phase 1, the messages of a level it
// received from its pair.
func pairJobs(ps []*party, level int) []readJob {
	var jobs []readJob
	for j, p := range ps {
		if ids := p.ids(level); len(ids) > 0 {
			jobs = append(jobs, readJob{reader: p, sender: ps[j^1], ids: ids})
		}
	}
	return jobs
}

// burnFigures is what one burn run measured.
type burnFigures struct {
	level, n int
	readers  int
	// Lateness of the BURN at both parties (the later arrival) after the
	// deadline: the server's read time (from the RECEIPT event the sender
	// got; ms, as dingd arms it) + delay; lateUpper from READ sent + delay,
	// which can only overstate it.
	late, lateUpper bench.Latencies
	// outside counts deadlines outside [READ sent + delay - 1 ms, OK +
	// delay]: the RECEIPT's time disagreeing with the READ's round trip.
	outside      int
	afterFunc    bench.Latencies // time.AfterFunc set for OK + delay in dingbench: its lateness
	readLat      bench.Latencies // READ sent → OK, per frame
	readSpan     time.Duration   // first READ sent → last OK
	dueSpread    time.Duration   // earliest deadline → latest
	burnSpan     time.Duration   // earliest deadline → last BURN at both parties
	serverAll    time.Duration   // earliest deadline → dingd's burn counter complete (polled every 50 ms)
	sendRead     bench.Latencies // the server's read time − READ sent
	backlogRate  float64         // burns/s while a backlog waited (see backlogRate)
	backlogFor   time.Duration   // how long that backlog lasted
	server       bench.Histogram // ding_secret_burn_lateness_seconds over the run
	cpuSec       float64         // dingd CPU from the first READ to the last BURN
	wall         time.Duration   // the same interval
	batches, ops float64         // commit batches (and their ops) in that interval
}

// lateness runs phase 2: level-3 chats between users of their own, every
// message read at the same moment.
func (r *secretRun) lateness() (burnFigures, error) {
	cfg := r.cfg
	ps, err := dialUsers(r.srv, "b", 2*cfg.Chats)
	if err != nil {
		return burnFigures{}, err
	}
	defer closeParties(ps)
	chats := make([]string, cfg.Chats)
	err = forEach(cfg.Chats, 128, func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		id, err := ps[2*i].c.CreateChat(ctx, ps[2*i+1].user, 3, burnDelay)
		if err != nil {
			return fmt.Errorf("create chat %d: %w", i, err)
		}
		chats[i] = id
		return nil
	})
	if err != nil {
		return burnFigures{}, err
	}
	err = forEach(cfg.Chats*cfg.PerChat, 128, func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		body := make([]byte, cfg.Payload)
		stamp(body, time.Now())
		c := i % cfg.Chats
		if _, err := ps[2*c].c.SendChat(ctx, chats[c], body); err != nil {
			return fmt.Errorf("send in chat %d: %w", c, err)
		}
		return nil
	})
	if err != nil {
		return burnFigures{}, err
	}
	err = poll(30*time.Second, "phase 2's messages to arrive", func() bool {
		for i := range cfg.Chats {
			if ps[2*i+1].count(3) < cfg.PerChat {
				return false
			}
		}
		return true
	})
	if err != nil {
		return burnFigures{}, err
	}
	jobs := make([]readJob, cfg.Chats)
	for i := range jobs {
		jobs[i] = readJob{reader: ps[2*i+1], sender: ps[2*i], ids: ps[2*i+1].ids(3)}
	}
	return r.burnRun(jobs, 3, "lateness")
}

// readResult is what reading every job's ids at the same moment took.
type readResult struct {
	n, readers int
	t0, t1     []time.Time     // per id (jobs flattened): its READ sent, its OK received
	readLat    bench.Latencies // READ sent → OK, per frame
	first      time.Time       // the READs started
	span       time.Duration   // first READ sent → last OK
}

// readAll makes every job's reader read its ids at the same moment: READs
// of up to 1,000 ids, one at a time per reader. onOK is called (on the
// reader's goroutine) for each id once its READ is answered, with the
// id's index in the jobs flattened and the time the OK arrived.
func readAll(jobs []readJob, onOK func(k int, ok time.Time)) (readResult, error) {
	res := readResult{readers: len(jobs)}
	for _, j := range jobs {
		res.n += len(j.ids)
	}
	res.t0, res.t1 = make([]time.Time, res.n), make([]time.Time, res.n)
	lats := make([]bench.Latencies, len(jobs))
	start := make(chan struct{})
	var wg sync.WaitGroup
	var readErr atomic.Value
	off := 0
	for ji, j := range jobs {
		o := off
		off += len(j.ids)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for c := 0; c < len(j.ids); c += 1000 {
				chunk := j.ids[c:min(c+1000, len(j.ids))]
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				t0 := time.Now()
				err := j.reader.c.Read(ctx, chunk...)
				t1 := time.Now()
				cancel()
				if err != nil {
					readErr.CompareAndSwap(nil, fmt.Errorf("%s: read: %w", j.reader.user, err))
					return
				}
				lats[ji] = append(lats[ji], t1.Sub(t0))
				for i := range chunk {
					k := o + c + i
					res.t0[k], res.t1[k] = t0, t1
					if onOK != nil {
						onOK(k, t1)
					}
				}
			}
		}()
	}
	res.first = time.Now()
	close(start)
	wg.Wait()
	if err, _ := readErr.Load().(error); err != nil {
		return res, err
	}
	last := res.first
	for _, t := range res.t1 {
		last = later(last, t)
	}
	res.span = last.Sub(res.first)
	for _, l := range lats {
		res.readLat.Merge(l)
	}
	return res, nil
}

// readPlain is phase 3's baseline: every plain message of phase 1 read at
// once, as the secret ones are (a plain read arms no timer).
func (r *secretRun) readPlain(ps []*party) (readResult, float64, error) {
	jobs := pairJobs(ps, 0)
	before, err := r.srv.Scrape()
	if err != nil {
		return readResult{}, 0, err
	}
	res, err := readAll(jobs, nil)
	if err != nil {
		return res, 0, err
	}
	after, err := r.srv.Scrape()
	if err != nil {
		return res, 0, err
	}
	return res, after["process_cpu_seconds_total"] - before["process_cpu_seconds_total"], nil
}

// burnRun reads every job's ids at the same moment (readAll) and waits
// for each id's BURN at both parties.
func (r *secretRun) burnRun(jobs []readJob, level int, prof string) (burnFigures, error) {
	defer r.profiles.Wait() // a profile must not outlive its phase
	f := burnFigures{level: level, readers: len(jobs)}
	for _, j := range jobs {
		f.n += len(j.ids)
	}
	if f.n == 0 {
		return f, fmt.Errorf("no level-%d messages to read", level)
	}
	before, err := r.srv.Scrape()
	if err != nil {
		return f, err
	}
	h0, err := before.Histogram(latenessMetric)
	if err != nil {
		return f, err
	}
	base := burns(before, level, "read")

	// The baseline: a time.AfterFunc per id, set for OK + delay.
	afterLate := make([]time.Duration, f.n)
	var after sync.WaitGroup
	after.Add(f.n)
	var armed atomic.Int64
	onOK := func(k int, ok time.Time) {
		due := ok.Add(burnDelay)
		armed.Add(1)
		time.AfterFunc(time.Until(due), func() {
			afterLate[k] = time.Since(due)
			after.Done()
		})
	}
	// dingd's burn counter, polled every 50 ms until complete (it is
	// counted before the BURNs are published, so it completes before the
	// last one arrives).
	var samples []counterSample
	stopPoll, pollDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(pollDone)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		deadline := time.Now().Add(burnDelay + 2*time.Minute)
		for time.Now().Before(deadline) {
			select {
			case <-stopPoll:
				return
			case <-t.C:
			}
			s, err := r.srv.Scrape()
			if err != nil {
				continue
			}
			n := burns(s, level, "read") - base
			samples = append(samples, counterSample{time.Now(), n})
			if n >= float64(f.n) {
				return
			}
		}
	}()
	if prof != "" {
		r.profile(prof+"-reads", burnDelay-time.Second)
	}
	reads, err := readAll(jobs, onOK)
	if err != nil {
		close(stopPoll)
		<-pollDone
		for range f.n - int(armed.Load()) {
			after.Done() // ids whose READ failed arm no baseline timer
		}
		return f, err
	}
	r.profiles.Wait()
	time.Sleep(time.Until(reads.first.Add(burnDelay)))
	if prof != "" {
		r.profile(prof+"-burns", burnDelay)
	}
	// A burned id stays burned: each poll resumes where the last stopped.
	cj, ci := 0, 0
	allBurned := func() bool {
		for ; cj < len(jobs); cj, ci = cj+1, 0 {
			j := jobs[cj]
			for ; ci < len(j.ids); ci++ {
				if _, ok := j.reader.burned(j.ids[ci]); !ok {
					return false
				}
				if _, ok := j.sender.burned(j.ids[ci]); !ok {
					return false
				}
				if _, ok := j.sender.readTime(j.ids[ci]); !ok {
					return false
				}
			}
		}
		return true
	}
	err = poll(burnDelay+2*time.Minute, fmt.Sprintf("%d level-%d burns at both parties", f.n, level), allBurned)
	if err == nil {
		// The counter is complete before the last BURN is published: give
		// the poller a moment to see it.
		select {
		case <-pollDone:
		case <-time.After(2 * time.Second):
		}
	}
	close(stopPoll)
	<-pollDone
	after.Wait()
	if err != nil {
		return f, err
	}
	end, err := r.srv.Scrape()
	if err != nil {
		return f, err
	}

	var earliest, latestDue, lastArrival time.Time
	dues := make([]time.Time, 0, f.n)
	k := 0
	for _, j := range jobs {
		for _, id := range j.ids {
			a, _ := j.reader.burned(id)
			b, _ := j.sender.burned(id)
			read, _ := j.sender.readTime(id)
			arr, due := later(a, b), read.Add(burnDelay)
			lo, hi := reads.t0[k].Add(burnDelay), reads.t1[k].Add(burnDelay)
			if due.Before(lo.Add(-time.Millisecond)) || due.After(hi) {
				f.outside++
			}
			f.late = append(f.late, arr.Sub(due))
			f.lateUpper = append(f.lateUpper, arr.Sub(lo))
			f.sendRead = append(f.sendRead, read.Sub(reads.t0[k]))
			f.afterFunc = append(f.afterFunc, afterLate[k])
			if k == 0 {
				earliest, latestDue = due, due
			}
			earliest, latestDue = earlier(earliest, due), later(latestDue, due)
			lastArrival = later(lastArrival, arr)
			dues = append(dues, due)
			k++
		}
	}
	f.readLat, f.readSpan = reads.readLat, reads.span
	f.dueSpread = latestDue.Sub(earliest)
	f.burnSpan = lastArrival.Sub(earliest)
	if n := len(samples); n > 0 && samples[n-1].n >= float64(f.n) {
		f.serverAll = samples[n-1].t.Sub(earliest)
	}
	f.backlogRate, f.backlogFor = backlogRate(samples, dues, timerBatchSize)
	h1, err := end.Histogram(latenessMetric)
	if err != nil {
		return f, err
	}
	f.server = h1.Minus(h0)
	f.cpuSec = end["process_cpu_seconds_total"] - before["process_cpu_seconds_total"]
	f.wall = time.Since(reads.first)
	f.batches = end["ding_engine_commit_batch_ops_count"] - before["ding_engine_commit_batch_ops_count"]
	f.ops = end["ding_engine_commit_batch_ops_sum"] - before["ding_engine_commit_batch_ops_sum"]
	return f, nil
}

// timerBatchSize is the most timers dingd's timer loop fires in one op
// (engine.timerBatch).
const timerBatchSize = 1024

// counterSample is dingd's burn counter (burns since the run began) at t.
type counterSample struct {
	t time.Time
	n float64
}

// backlogRate is the burn rate while burns were waiting: over the longest
// stretch of consecutive samples in which more than floor burns were due
// and not yet counted, the counter's growth per second.
// While a backlog waits, the rate is what dingd can burn, not how fast
// burns fell due.
func backlogRate(samples []counterSample, dues []time.Time, floor int) (float64, time.Duration) {
	slices.SortFunc(dues, func(a, b time.Time) int { return a.Compare(b) })
	dueBy := func(t time.Time) int {
		i, _ := slices.BinarySearchFunc(dues, t, func(d, t time.Time) int {
			if d.After(t) {
				return 1
			}
			return -1
		})
		return i
	}
	best, bestI, bestJ := time.Duration(0), -1, -1
	for i := 0; i < len(samples); {
		if float64(dueBy(samples[i].t))-samples[i].n <= float64(floor) {
			i++
			continue
		}
		j := i
		for j+1 < len(samples) && float64(dueBy(samples[j+1].t))-samples[j+1].n > float64(floor) {
			j++
		}
		// The stretch runs to the sample after the last backlogged one
		// (burns made up to then are still burns of the backlog).
		end := min(j+1, len(samples)-1)
		if d := samples[end].t.Sub(samples[i].t); d > best {
			best, bestI, bestJ = d, i, end
		}
		i = j + 1
	}
	if bestI < 0 || best <= 0 {
		return 0, 0
	}
	return (samples[bestJ].n - samples[bestI].n) / best.Seconds(), best
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
