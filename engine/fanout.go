package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// Fanout of a message to many (an announcement to all staff, a message to
// a big group).
//
// A message whose recipients outnumber Config.FanoutChunk is acknowledged
// once the message, its audience (the recipients at the time it was sent,
// in chunks under 'a' | id | chunk) and a job record ('j' | id) are
// durable. The fanout loop then writes one chunk of stream entries and
// receipts per commit batch, oldest job first, deleting each audience
// chunk as it goes: so a restart resumes where it stopped, a huge fanout
// never holds the commit loop for long (other ops share every batch with
// it), and what stays per recipient is a stream entry and a receipt, not a
// copy of the body. A recipient removed from the directory before their
// chunk is written is skipped.

// fanoutJob is the record of a fanout in progress (binary, codec.go).
type fanoutJob struct {
	Chunks int `json:"chunks"`
	Next   int `json:"next"` // the next chunk to write
}

// ActiveFilter is an optional interface of Config.Recipients: the fanout
// skips users it reports inactive (removed since the message was sent).
type ActiveFilter interface {
	Active(user string) bool
}

func jobKey(id ID) []byte { return append([]byte{prefixJob}, id[:]...) }

func audienceKey(id ID, chunk int) []byte {
	return binary.BigEndian.AppendUint32(audiencePrefix(id), uint32(chunk))
}

func audiencePrefix(id ID) []byte {
	return append([]byte{prefixAudience}, id[:]...)
}

func encodeNames(names []string) []byte {
	n := 0
	for _, s := range names {
		n += 1 + len(s)
	}
	b := make([]byte, 0, n)
	for _, s := range names {
		b = appendStr(b, s)
	}
	return b
}

func decodeNames(b []byte) ([]string, error) {
	d := decoder{b: b}
	var out []string
	for len(d.b) > 0 && !d.err {
		out = append(out, d.str())
	}
	if d.err {
		return nil, ErrCorrupt
	}
	return out, nil
}

// Presence says who is online; the hub implements it. A fanout writes
// online recipients first, so that their devices are not held up by
// offline ones.
type Presence interface {
	Online(user string) bool
}

// SetPresence sets where fanouts learn who is online. Call it before the
// first write.
func (e *Engine) SetPresence(p Presence) {
	e.sinkMu.Lock()
	e.presence = p
	e.sinkMu.Unlock()
}

// fanoutTx is the fanout's per-batch overlay.
type fanoutTx struct {
	jobsStarted bool              // a fanout job was recorded
	jobs        map[ID]*fanoutJob // jobs' records as this batch left them (nil: done or dropped)
}

// published wakes the fanout loop for the jobs the batch recorded.
func (f *fanoutTx) published(c *txn) {
	if f.jobsStarted {
		select {
		case c.e.fanoutWake <- struct{}{}:
		default:
		}
	}
}

func (f *fanoutTx) reset() {
	f.jobsStarted = false
	clear(f.jobs)
}

// startFanout records a fanout job for the loop to run after this batch.
// Online recipients come first (each chunk is sorted, for the store).
func (c *txn) startFanout(id ID, recipients []string) {
	c.e.sinkMu.RLock()
	p := c.e.presence
	c.e.sinkMu.RUnlock()
	if p != nil {
		ordered := make([]string, 0, len(recipients))
		var offline []string
		for _, u := range recipients {
			if p.Online(u) {
				ordered = append(ordered, u)
			} else {
				offline = append(offline, u)
			}
		}
		recipients = append(ordered, offline...)
	}
	size := c.e.cfg.FanoutChunk
	for i := 0; i < len(recipients); i += size {
		slices.Sort(recipients[i:min(i+size, len(recipients))])
	}
	var job fanoutJob
	for i := 0; i < len(recipients); i += size {
		c.batch.Set(audienceKey(id, job.Chunks), encodeNames(recipients[i:min(i+size, len(recipients))]))
		job.Chunks++
	}
	c.batch.Set(jobKey(id), encodeFanoutJob(&job))
	c.jobsStarted = true
}

// job returns fanout job id's record as this batch sees it (nil if it is
// done or gone).
func (c *txn) job(id ID) (*fanoutJob, error) {
	if j, ok := c.jobs[id]; ok {
		return j, nil
	}
	v, err := c.e.st.Get(jobKey(id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, abort(err)
	}
	var j fanoutJob
	if err := decodeFanoutJob(v, &j); err != nil {
		return nil, c.dropJob(id, ErrCorrupt)
	}
	if c.jobs == nil {
		c.jobs = map[ID]*fanoutJob{}
	}
	c.jobs[id] = &j
	return &j, nil
}

// fanoutChunk writes chunk k of job id, if it is the job's next one (the
// fanout loop queues a few chunks ahead; one that finds the job past it,
// or done, does nothing).
func (c *txn) fanoutChunk(id ID, k int) error {
	job, err := c.job(id)
	if err != nil || job == nil || job.Next != k {
		return err
	}
	m, err := c.e.Message(id)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
		return c.dropJob(id, err)
	}
	if err != nil {
		return abort(fmt.Errorf("fanout %s: %w", id, err))
	}
	ak := audienceKey(id, job.Next)
	v, err := c.e.st.Get(ak)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return abort(err)
	}
	names, err := decodeNames(v)
	if err != nil {
		c.e.log.Error("fanout: dropping a corrupt audience chunk", "message", id.String(), "chunk", job.Next)
		names = nil
	}
	if err := c.fanout(m, names); err != nil { // skips removed users
		return abort(err)
	}
	c.e.metrics.fanoutEntries.Add(float64(len(names)))
	c.batch.Delete(ak)
	job.Next++
	if job.Next >= job.Chunks {
		c.batch.Delete(jobKey(id))
		c.jobs[id] = nil
		return nil
	}
	c.batch.Set(jobKey(id), encodeFanoutJob(job))
	return nil
}

// dropJob gives up a fanout whose record or message cannot be read, rather
// than failing every batch it would share: its job and audience keys are
// deleted, and the recipients not yet reached are lost (logged).
func (c *txn) dropJob(id ID, why error) error {
	c.e.log.Error("fanout: dropping a job whose record or message is unreadable", "message", id.String(), "err", why)
	c.batch.Delete(jobKey(id))
	if c.jobs == nil {
		c.jobs = map[ID]*fanoutJob{}
	}
	c.jobs[id] = nil
	p := audiencePrefix(id)
	return c.e.st.Scan(p, prefixEnd(p), func(k, _ []byte) bool {
		c.batch.Delete(append([]byte(nil), k...))
		return true
	})
}

// fanoutWindow is how many chunk ops of a job the fanout loop keeps
// queued: the next chunk is built and applied while the one before is
// being synced and the one before that delivered (package
// engine/internal/pipeline), instead of each waiting for the last's fsync.
const fanoutWindow = 3

// fanoutLoop runs fanout jobs, oldest first: one chunk per op, up to
// fanoutWindow ops in flight.
func (e *Engine) fanoutLoop() {
	defer close(e.fanoutDone)
	done := make(chan error, fanoutWindow) // ops' answers; never blocks them
	for {
		id, job, err := e.oldestJob()
		if err != nil {
			e.log.Error("fanout: reading jobs failed; retrying", "err", err)
			select {
			case <-e.cfg.Clock.Until(e.cfg.Clock.Now().Add(time.Second)):
			case <-time.After(time.Second): // a fake clock may stand still
			case <-e.stopFanout:
				return
			}
			continue
		}
		if job == nil {
			select {
			case <-e.fanoutWake:
				continue
			case <-e.stopFanout:
				return
			}
		}
		k, inflight, failed := job.Next, 0, false
		for (k < job.Chunks && !failed) || inflight > 0 {
			for ; k < job.Chunks && inflight < fanoutWindow && !failed; k, inflight = k+1, inflight+1 {
				chunk := k
				// A chunk is background work that weighs a whole batch: a
				// batch takes one at most, after its foreground ops, so
				// the submits queued meanwhile are not held behind the
				// fan-out.
				e.enqueueBackground(func(c *txn) error { return c.fanoutChunk(id, chunk) }, func(err error) { done <- err }, e.cfg.MaxBatch, "")
			}
			select {
			case err := <-done:
				inflight--
				switch {
				case errors.Is(err, ErrClosed) || errors.Is(err, ErrFailed):
					return
				case err != nil && !failed:
					failed = true // the chunks queued after it find the job behind them and do nothing
					e.log.Error("fanout chunk failed; retrying in a second", "message", id.String(), "err", err)
				}
			case <-e.stopFanout:
				return
			}
		}
		if failed {
			select {
			case <-time.After(time.Second):
			case <-e.stopFanout:
				return
			}
		}
	}
}

// oldestJob returns the oldest fanout job and its record, or a nil record
// when there is none. A record that does not decode is returned as a job
// at its first chunk, whose op drops it.
func (e *Engine) oldestJob() (ID, *fanoutJob, error) {
	var id ID
	var v []byte
	found := false
	err := e.st.Scan([]byte{prefixJob}, []byte{prefixJob + 1}, func(k, val []byte) bool {
		if len(k) == 17 {
			copy(id[:], k[1:])
			v, found = append([]byte(nil), val...), true
		}
		return false
	})
	if err != nil || !found {
		return id, nil, err
	}
	var job fanoutJob
	if decodeFanoutJob(v, &job) != nil {
		return id, &fanoutJob{Chunks: 1}, nil
	}
	return id, &job, nil
}

// PendingFanout returns how many recipients of message id are still
// waiting for their stream entry (0 when the fanout is done or there was
// none).
func (e *Engine) PendingFanout(id ID) (int, error) {
	names, err := e.pendingAudience(id)
	return len(names), err
}

// pendingAudience returns the recipients of id not yet fanned out.
func (e *Engine) pendingAudience(id ID) ([]string, error) {
	p := audiencePrefix(id)
	var out []string
	var derr error
	err := e.st.Scan(p, prefixEnd(p), func(_, v []byte) bool {
		names, err := decodeNames(v)
		if err != nil {
			derr = err
			return false
		}
		out = append(out, names...)
		return true
	})
	if err == nil {
		err = derr
	}
	return out, err
}
