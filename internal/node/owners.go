package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dingmq/ding/cluster"
)

// coordOwners finds the node that serves a partition now, for the pump's
// destinations on other nodes (partitionPeers.Owner; stage 5a): the
// holder of the partition's lease in the coordinator and the HTTP
// address it publishes. An answer is kept for ttl (a third of a lease),
// so a busy relay asks the coordinator a few times a second at most; a
// stale one costs a wrong_partition answer and the pump's retry, after
// which the owner is asked again (Forget).
type coordOwners struct {
	c   cluster.Coord
	ttl time.Duration
	now func() time.Time

	mu    sync.Mutex
	cache map[uint32]ownerAnswer // guarded by mu
	// moved: per partition, the requests to its owner in flight, ended
	// at the announcement that it has a new owner (Moved); guarded by mu.
	moved map[uint32]*ownerMoves
}

// ownerMoves ends requests to a partition's owner, bound (boundTo) to
// what current returned before the owner was looked up, when moved is
// called: the coordinator announced that the partition has
// a new owner, and the old one may be frozen (paused, its machine hung,
// the network to it dropping packets) rather than dead, holding each
// request until its own timeout, or until TCP gives up (minutes). The
// zero value is ready.
type ownerMoves struct {
	mu     sync.Mutex
	ctx    context.Context // cancelled by the next moved; nil before the first current
	cancel context.CancelFunc
}

// errOwnerMoved is the cause of a context ownerMoves ended.
var errOwnerMoved = errors.New("node: the partition has a new owner")

// current returns the move the requests made now wait on: a context
// that the next moved cancels. A caller that takes it before it looks up
// the owner, and binds its request to it (boundTo), learns of a move
// announced in between too.
func (s *ownerMoves) current() context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx == nil {
		s.ctx, s.cancel = context.WithCancel(context.Background())
	}
	return s.ctx
}

// boundTo returns ctx, ended also by the move since waits on (an
// ownerMoves.current result), with errOwnerMoved as the cause: at once
// if that move happened already.
func boundTo(ctx, since context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	if since.Err() != nil {
		cancel(errOwnerMoved)
		return ctx, func() {}
	}
	stop := context.AfterFunc(since, func() { cancel(errOwnerMoved) })
	return ctx, func() { stop(); cancel(nil) }
}

// boundToOwner is boundTo for a request sent to a partition's owner: a
// move announced while it is in flight ends it only if, asked again past
// every cache (still), the owner is no longer the node it was sent to;
// else it waits for the next move (next returns what that one cancels).
// The move announced may be that very node's: it took the partition over
// and announced it after the request was sent to it as the owner. Ended,
// such a request was answered 503 (retry) for a change the owner made
// all the same, and a retried POST met 409 (seen in make test:
// TestClusterPartitionsWebhookEventsSurviveKill9).
func boundToOwner(ctx, since context.Context, next func() context.Context, still func(context.Context) bool) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	var (
		mu   sync.Mutex
		stop func() bool
		done bool
	)
	var arm func(since context.Context)
	arm = func(since context.Context) {
		s := context.AfterFunc(since, func() {
			lctx, lcancel := context.WithTimeout(ctx, 2*time.Second)
			ok := still(lctx)
			lcancel()
			if ok && ctx.Err() == nil {
				arm(next())
				return
			}
			cancel(errOwnerMoved)
		})
		mu.Lock()
		defer mu.Unlock()
		if done {
			s()
			return
		}
		stop = s
	}
	arm(since)
	return ctx, func() {
		mu.Lock()
		done = true
		if stop != nil {
			stop()
		}
		mu.Unlock()
		cancel(nil)
	}
}

// moved ends the requests bound to what current returned so far.
func (s *ownerMoves) moved() {
	s.mu.Lock()
	cancel := s.cancel
	s.ctx, s.cancel = nil, nil
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// ownerMovedErr returns errOwnerMoved if ctx, made by boundTo from
// parent, ended for that reason while parent had not.
func ownerMovedErr(parent, ctx context.Context) error {
	if cause := context.Cause(ctx); parent.Err() == nil && errors.Is(cause, errOwnerMoved) {
		return cause
	}
	return nil
}

type ownerAnswer struct {
	url string
	at  time.Time
}

func newCoordOwners(c cluster.Coord, ttl time.Duration) *coordOwners {
	return &coordOwners{c: c, ttl: ttl, now: time.Now, cache: map[uint32]ownerAnswer{}, moved: map[uint32]*ownerMoves{}}
}

// errNoOwner: no node holds the partition's lease now.
var errNoOwner = errors.New("node: no owner now")

// Owner returns the base URL of the node holding partition p's lease.
func (o *coordOwners) Owner(ctx context.Context, p uint32) (string, error) {
	o.mu.Lock()
	a, ok := o.cache[p]
	o.mu.Unlock()
	if ok && o.now().Sub(a.at) < o.ttl {
		return a.url, nil
	}
	since := o.Since(p)
	_, url, err := o.lookup(ctx, p)
	if err != nil {
		return "", err
	}
	o.mu.Lock()
	if since.Err() == nil {
		// Kept only if no move was announced while it was looked up: the
		// answer may be the old owner's, which Moved just forgot.
		o.cache[p] = ownerAnswer{url: url, at: o.now()}
	}
	o.mu.Unlock()
	return url, nil
}

// lookup asks the coordinator, past the cache, which node holds
// partition p's lease and the HTTP address it publishes.
func (o *coordOwners) lookup(ctx context.Context, p uint32) (holder, url string, err error) {
	holder, _, err = o.c.Lease(ctx, cluster.Partition(p))
	if err != nil {
		return "", "", err
	}
	if holder == "" {
		return "", "", fmt.Errorf("%w: partition %d (a takeover in progress)", errNoOwner, p)
	}
	if url, err = o.c.Addr(ctx, holder); err != nil {
		return "", "", err
	}
	if url == "" {
		return "", "", fmt.Errorf("node: partition %d's owner %s has published no address", p, holder)
	}
	return holder, url, nil
}

// Forget drops what is known of partition p's owner (it answered that
// it does not serve p any more).
func (o *coordOwners) Forget(p uint32) {
	o.mu.Lock()
	delete(o.cache, p)
	o.mu.Unlock()
}

// Moved is Forget, told by the coordinator's announcement that partition
// p has a new owner: it also ends the requests to p's owner in flight
// that are bound to Since(p) (ownerMoves).
func (o *coordOwners) Moved(p uint32) {
	o.Forget(p)
	o.movesOf(p).moved()
}

// Since returns what the next Moved(p) cancels: taken before the owner is
// looked up, a request bound to it (boundTo) also ends for a move
// announced during the lookup.
func (o *coordOwners) Since(p uint32) context.Context { return o.movesOf(p).current() }

// movesOf returns partition p's ownerMoves, which Moved(p) ends: the one
// the node's member for p binds its own requests to as well.
func (o *coordOwners) movesOf(p uint32) *ownerMoves {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.moved[p]
	if s == nil {
		s = &ownerMoves{}
		o.moved[p] = s
	}
	return s
}
