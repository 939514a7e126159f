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
	// moved: per partition, a context cancelled at the next announcement
	// that the partition has a new owner (Moved); guarded by mu.
	moved map[uint32]movedSignal
}

type movedSignal struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// errOwnerMoved is the cause of a context Bound ended: the partition's
// new owner was announced while a request to the old one was in flight.
var errOwnerMoved = errors.New("node: the partition has a new owner")

type ownerAnswer struct {
	url string
	at  time.Time
}

func newCoordOwners(c cluster.Coord, ttl time.Duration) *coordOwners {
	return &coordOwners{c: c, ttl: ttl, now: time.Now, cache: map[uint32]ownerAnswer{}, moved: map[uint32]movedSignal{}}
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
	holder, _, err := o.c.Lease(ctx, cluster.Partition(p))
	if err != nil {
		return "", err
	}
	if holder == "" {
		return "", fmt.Errorf("%w: partition %d (a takeover in progress)", errNoOwner, p)
	}
	url, err := o.c.Addr(ctx, holder)
	if err != nil {
		return "", err
	}
	if url == "" {
		return "", fmt.Errorf("node: partition %d's owner %s has published no address", p, holder)
	}
	o.mu.Lock()
	o.cache[p] = ownerAnswer{url: url, at: o.now()}
	o.mu.Unlock()
	return url, nil
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
// under Bound, which the old owner, if it is frozen (paused, its machine
// hung, the network to it dropping packets) rather than dead, would
// otherwise hold until their own timeouts.
func (o *coordOwners) Moved(p uint32) {
	o.mu.Lock()
	delete(o.cache, p)
	s, ok := o.moved[p]
	delete(o.moved, p)
	o.mu.Unlock()
	if ok {
		s.cancel()
	}
}

// Bound returns ctx, ended also by the next Moved(p) (with errOwnerMoved
// as its cause), for a request to partition p's owner.
func (o *coordOwners) Bound(ctx context.Context, p uint32) (context.Context, context.CancelFunc) {
	o.mu.Lock()
	s, ok := o.moved[p]
	if !ok {
		s.ctx, s.cancel = context.WithCancel(context.Background())
		o.moved[p] = s
	}
	o.mu.Unlock()
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(s.ctx, func() { cancel(errOwnerMoved) })
	return ctx, func() { stop(); cancel(nil) }
}
