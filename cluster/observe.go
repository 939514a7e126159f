package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Observers: read-only copies of a partition on nodes that neither own it
// nor stand by for it (stage 5c of PARTITIONS.md: every node keeps a copy
// of the directory's partition, to check users and expand groups without
// asking its owner).
//
// An observer applies only what the partition's standby holds: the
// entries its owner shipped through the highest Seq its standby acked at
// the owner's epoch, which is what the owner acknowledges to clients
// (with --ack-replicas 0, somewhat less than it acknowledges). Not the
// history a new owner starts from: after a recovery that history may be
// on that node alone, so it reaches observers only once the new owner's
// standby acks it (the deterministic simulation found this). By the
// safety argument of the package doc,
// every owner after a takeover holds those entries at the same Seq, so
// an observer's copy is always a prefix of the history of the partition's
// owner, now and after any failover: it never shows a change that a
// failover could take back, and it follows a new owner without starting
// over whenever that owner still holds the entries after the observer's
// Seq in memory. That holds for an owner that was deposed and does not
// know it yet too: it acknowledges nothing its standby did not hold.
//
// The owner keeps its latest entries for observers (Owner.KeepRecent,
// bounded in bytes) and answers GET /cluster/changes (ChangesHandler)
// with the entries after the observer's Seq, through its acked Seq,
// waiting for new ones up to a time the observer names. An observer
// further behind than the owner keeps (a new owner keeps only what it
// shipped itself) gets ErrChangesTrimmed and starts from the owner's
// snapshot; since a snapshot holds everything the owner applied, acked
// or not, an observer does not use it until the same owner says its
// standby holds the snapshot's Seq (Observer.Confirmed).

// Changes is an owner's answer to an observer.
type Changes struct {
	Epoch uint64 `json:"epoch"` // the answering owner's
	Owner string `json:"owner"`
	// Acked is how far the owner's standby holds its history.
	Acked uint64 `json:"acked"`
	// Entries follow the observer's Seq, consecutive, none above Acked.
	Entries []Entry `json:"entries"`
}

// ErrChangesTrimmed is returned when the owner no longer keeps the
// entries after the observer's Seq: the observer starts from a snapshot.
var ErrChangesTrimmed = errors.New("cluster: the owner no longer keeps the changes after that point: start from its snapshot")

// KeepRecent makes the owner keep its latest entries, up to bytes of
// data, for observers (Changes). Zero keeps none.
func (o *Owner) KeepRecent(bytes int) { o.recent.keep(bytes) }

// recentRing is the latest entries of a history, consecutive, up to cap
// bytes of data (the last one always, if cap > 0): an owner's for its
// observers, and a standby's for the owner it may become.
type recentRing struct {
	entries []Entry
	bytes   int
	cap     int
}

// keep sets the bound (zero keeps none).
func (r *recentRing) keep(bytes int) {
	r.cap = bytes
	r.trim()
}

func (r *recentRing) remember(e Entry) {
	if r.cap <= 0 {
		return
	}
	r.entries = append(r.entries, e)
	r.bytes += len(e.Data) + len(e.Keys)
	r.trim()
}

func (r *recentRing) trim() {
	i := 0
	for i < len(r.entries)-1 && r.bytes > r.cap {
		r.bytes -= len(r.entries[i].Data) + len(r.entries[i].Keys)
		i++
	}
	if r.cap <= 0 {
		i, r.bytes = len(r.entries), 0
	}
	if i > 0 {
		r.entries = append(r.entries[:0], r.entries[i:]...)
	}
}

// Changes returns up to max entries after seq after, through what a
// standby acked at this owner's epoch, or ErrChangesTrimmed if the owner no longer keeps the
// first of them. No entries (and no error) means none is acked after it
// yet; wake is then closed once that may have changed.
func (o *Owner) Changes(after uint64, max int) (ch Changes, wake <-chan struct{}, err error) {
	ch = Changes{Epoch: o.epoch, Owner: o.node, Acked: o.confirmed}
	if after >= o.confirmed {
		if after >= o.next {
			// A Seq this owner never shipped: the observer read another
			// history (a deposed owner's, through a coordinator that lost
			// its state); it starts again from a snapshot.
			return ch, nil, fmt.Errorf("%w: seq %d is beyond this owner's history (%d)", ErrChangesTrimmed, after, o.next-1)
		}
		if o.ackWake == nil {
			o.ackWake = make(chan struct{})
		}
		return ch, o.ackWake, nil
	}
	recent := o.recent.entries
	if len(recent) == 0 || recent[0].Seq > after+1 {
		return ch, nil, ErrChangesTrimmed
	}
	for _, e := range recent[after+1-recent[0].Seq:] {
		if e.Seq > o.confirmed || len(ch.Entries) == max {
			break
		}
		ch.Entries = append(ch.Entries, e)
	}
	return ch, nil, nil
}

// KeepRecent makes the owner keep its latest entries for observers (see
// Owner.KeepRecent). Call it before the first batch.
func (r *ReplicatedStore) KeepRecent(bytes int) {
	r.mu.Lock()
	r.owner.KeepRecent(bytes)
	r.mu.Unlock()
}

// WaitChanges is Owner.Changes, waiting up to wait for an entry to be
// acked after after when none is yet.
func (r *ReplicatedStore) WaitChanges(ctx context.Context, after uint64, max int, wait time.Duration) (Changes, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ch, wake, err := r.owner.Changes(after, max)
		r.mu.Unlock()
		if err != nil || len(ch.Entries) > 0 || wait <= 0 {
			return ch, err
		}
		select {
		case <-wake:
		case <-deadline.C:
			return ch, nil
		case <-ctx.Done():
			return ch, nil
		case <-r.ctx.Done():
			return ch, nil
		}
	}
}

// ChangesPath is the route ChangesHandler serves.
const ChangesPath = "/cluster/changes"

// maxChangesWait bounds how long one request waits for a change.
const maxChangesWait = 30 * time.Second

// ChangesHandler serves GET /cluster/changes?after=SEQ[&max=N][&wait=MS]
// from rs for observers: 200 with Changes as JSON, 410 when the owner no
// longer keeps the entries after SEQ (ErrChangesTrimmed), 401 without
// the cluster secret.
func ChangesHandler(rs *ReplicatedStore, secret string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !Authorized(r, secret) {
			http.Error(w, "cluster: bad or missing cluster secret", http.StatusUnauthorized)
			return
		}
		q := r.URL.Query()
		after, err := strconv.ParseUint(q.Get("after"), 10, 64)
		if err != nil {
			http.Error(w, "cluster: after must be a seq", http.StatusBadRequest)
			return
		}
		limit := 256
		if v := q.Get("max"); v != "" {
			if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 4096 {
				http.Error(w, "cluster: max must be 1 to 4096", http.StatusBadRequest)
				return
			}
		}
		var wait time.Duration
		if v := q.Get("wait"); v != "" {
			ms, err := strconv.Atoi(v)
			if err != nil || ms < 0 {
				http.Error(w, "cluster: wait must be milliseconds", http.StatusBadRequest)
				return
			}
			wait = min(time.Duration(ms)*time.Millisecond, maxChangesWait)
		}
		ch, err := rs.WaitChanges(r.Context(), after, limit, wait)
		if errors.Is(err, ErrChangesTrimmed) {
			http.Error(w, err.Error(), http.StatusGone)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(ch)
	})
}

// FetchChanges asks the owner at baseURL for its changes after seq
// after, waiting up to wait for one (ChangesHandler).
func FetchChanges(ctx context.Context, client *http.Client, baseURL, secret string, after uint64, wait time.Duration) (Changes, error) {
	return Endpoint{Client: client, URL: baseURL, Secret: secret}.FetchChanges(ctx, after, wait)
}

// FetchChanges is the package's FetchChanges for e's partition.
func (e Endpoint) FetchChanges(ctx context.Context, after uint64, wait time.Duration) (Changes, error) {
	baseURL := e.URL
	q := url.Values{"after": {strconv.FormatUint(after, 10)}, "wait": {strconv.FormatInt(wait.Milliseconds(), 10)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.target(ChangesPath, q), nil)
	if err != nil {
		return Changes{}, err
	}
	resp, err := e.do(req)
	if err != nil {
		return Changes{}, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		var ch Changes
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<30)).Decode(&ch); err != nil {
			return Changes{}, fmt.Errorf("cluster: changes from %s: %w", baseURL, err)
		}
		return ch, nil
	case http.StatusGone:
		return Changes{}, ErrChangesTrimmed
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return Changes{}, fmt.Errorf("cluster: changes from %s: %s: %s", baseURL, resp.Status, strings.TrimSpace(string(msg)))
}

// Observer keeps a node's read-only copy of a partition: it applies the
// Changes an owner answers to its Log (a Follower's, whose store then
// holds the copy), each entry once, in Seq order.
type Observer struct {
	log Log
	st  StandbyState // FenceEpoch/FenceOwner: the owner it last read from
	// unconfirmed: the copy is a snapshot whose Seq the owner's standby
	// did not yet hold (see Confirmed).
	unconfirmed bool
}

// NewObserver observes from st: the state its Log's store holds (a new
// copy: the zero state, Seq 0, which reads a partition's history from
// its start; use NewObserverFromSnapshot when the owner trimmed it).
func NewObserver(log Log, st StandbyState) *Observer { return &Observer{log: log, st: st} }

// NewObserverFromSnapshot observes from an owner's snapshot, whose state
// is snap (FetchSnapshot). The copy is not Confirmed until that owner
// answers that its standby holds snap.Seq.
func NewObserverFromSnapshot(log Log, snap StandbyState) *Observer {
	snap.Cursor, snap.Demoted, snap.Stale, snap.Leaving = "", false, false, false
	return &Observer{log: log, st: snap, unconfirmed: true}
}

// ErrSnapshotUnconfirmed is returned by Observer.Apply when the copy is
// a snapshot not yet confirmed and another owner answers: the snapshot
// may hold entries that owner lacks. Start again from its snapshot.
var ErrSnapshotUnconfirmed = errors.New("cluster: the snapshot's owner changed before its standby held the snapshot: start from the new owner's snapshot")

// State returns how far the copy runs (Seq) and the owner it last read.
func (o *Observer) State() StandbyState { return o.st }

// Confirmed reports whether every entry the copy holds is held by the
// partition's standby, so survives any failover: always, except for a
// snapshot until its owner confirms it. A node shows nothing of an
// unconfirmed copy.
func (o *Observer) Confirmed() bool { return !o.unconfirmed }

// Apply applies ch's entries after the copy's Seq, durably, and returns
// how many it applied. Entries not following the copy's Seq are refused
// (nothing applied): the answer was for another point.
func (o *Observer) Apply(ch Changes) (int, error) {
	if o.unconfirmed {
		if ch.Epoch != o.st.FenceEpoch || ch.Owner != o.st.FenceOwner {
			return 0, ErrSnapshotUnconfirmed
		}
		if ch.Acked >= o.st.Seq {
			o.unconfirmed = false
		}
	}
	next := o.st
	next.FenceEpoch, next.FenceOwner = ch.Epoch, ch.Owner
	applied := 0
	for _, e := range ch.Entries {
		if e.Seq != next.Seq+1 || e.Seq > ch.Acked {
			return applied, fmt.Errorf("cluster: observer: entry %d after %d (acked %d): not the next one", e.Seq, next.Seq, ch.Acked)
		}
		next.Seq = e.Seq
		if err := o.log.Apply(e, next); err != nil {
			return applied, err
		}
		applied++
	}
	if applied == 0 && next == o.st {
		return 0, nil
	}
	if err := o.log.SaveState(next); err != nil {
		return applied, err
	}
	o.st = next
	return applied, nil
}
