package engine

import (
	"encoding/binary"
	"encoding/json"
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

// fanoutJob is the record of a fanout in progress.
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
	jobsStarted bool // a fanout job was recorded
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

func (f *fanoutTx) reset() { f.jobsStarted = false }

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
	v, _ := json.Marshal(job)
	c.batch.Set(jobKey(id), v)
	c.jobsStarted = true
}

// fanoutChunk writes the next chunk of job id.
func (c *txn) fanoutChunk(id ID) error {
	v, err := c.e.st.Get(jobKey(id))
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return abort(err)
	}
	var job fanoutJob
	if err := json.Unmarshal(v, &job); err != nil {
		return c.dropJob(id, ErrCorrupt)
	}
	m, err := c.e.Message(id)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
		return c.dropJob(id, err)
	}
	if err != nil {
		return abort(fmt.Errorf("fanout %s: %w", id, err))
	}
	ak := audienceKey(id, job.Next)
	v, err = c.e.st.Get(ak)
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
		return nil
	}
	v, _ = json.Marshal(job)
	c.batch.Set(jobKey(id), v)
	return nil
}

// dropJob gives up a fanout whose record or message cannot be read, rather
// than failing every batch it would share: its job and audience keys are
// deleted, and the recipients not yet reached are lost (logged).
func (c *txn) dropJob(id ID, why error) error {
	c.e.log.Error("fanout: dropping a job whose record or message is unreadable", "message", id.String(), "err", why)
	c.batch.Delete(jobKey(id))
	p := audiencePrefix(id)
	return c.e.st.Scan(p, prefixEnd(p), func(k, _ []byte) bool {
		c.batch.Delete(append([]byte(nil), k...))
		return true
	})
}

// fanoutLoop runs fanout jobs, one chunk per commit batch, oldest first.
func (e *Engine) fanoutLoop() {
	defer close(e.fanoutDone)
	for {
		var id ID
		found := false
		err := e.st.Scan([]byte{prefixJob}, []byte{prefixJob + 1}, func(k, _ []byte) bool {
			if len(k) == 17 {
				copy(id[:], k[1:])
				found = true
			}
			return false
		})
		if err != nil {
			e.log.Error("fanout: scan jobs failed; retrying", "err", err)
			select {
			case <-e.cfg.Clock.Until(e.cfg.Clock.Now().Add(time.Second)):
			case <-e.stopFanout:
				return
			}
			continue
		}
		if !found {
			select {
			case <-e.fanoutWake:
				continue
			case <-e.stopFanout:
				return
			}
		}
		done := make(chan error, 1)
		e.applyAsync(func(c *txn, now time.Time) error { return c.fanoutChunk(id) }, func(err error) { done <- err })
		select {
		case err := <-done:
			if errors.Is(err, ErrClosed) || errors.Is(err, ErrFailed) {
				return
			}
			if err != nil {
				e.log.Error("fanout chunk failed; retrying in a second", "message", id.String(), "err", err)
				select {
				case <-time.After(time.Second):
				case <-e.stopFanout:
					return
				}
			}
		case <-e.stopFanout:
			return
		}
	}
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
