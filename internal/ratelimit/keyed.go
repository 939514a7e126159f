package ratelimit

import (
	"hash/maphash"
	"sync"
	"time"
)

// Rate is N events per Per, in bursts of at most Burst: a token bucket
// of Burst tokens refilled at N/Per. N of zero or less means no limit.
type Rate struct {
	N   int
	Per time.Duration // zero means a second
	// Burst is the bucket's size; zero means N.
	Burst int
}

// On reports whether r limits anything.
func (r Rate) On() bool { return r.N > 0 }

func (r Rate) perSecond() float64 {
	per := r.Per
	if per <= 0 {
		per = time.Second
	}
	return float64(r.N) / per.Seconds()
}

func (r Rate) burst() float64 {
	if r.Burst > 0 {
		return float64(r.Burst)
	}
	return float64(max(r.N, 1))
}

// Keyed is a token bucket per key (a user, an admin, a source address),
// created on a key's first event. A key whose bucket has refilled (and
// that is not locked out) is the same as a key never seen, so it is
// dropped: the keys held are those active within about Burst/rate (plus
// those locked out), never every key ever seen. Safe for concurrent use;
// the keys are spread over shards, each with its own lock.
//
// A nil *Keyed limits nothing.
type Keyed struct {
	rate, burst float64
	lockFor     time.Duration // Fail's lockout; zero: Fail locks nothing
	now         func() time.Time
	seed        maphash.Seed
	shards      [64]shard
}

type shard struct {
	mu      sync.Mutex
	buckets map[string]bucket // guarded by mu
	sweepAt int               // sweep the idle buckets when the map reaches this size; guarded by mu
}

type bucket struct {
	tokens float64
	last   time.Time // when tokens was computed
	until  time.Time // locked out until then (Fail); zero: not locked
}

// minSweep is the smallest map size at which a shard sweeps idle buckets.
const minSweep = 64

// NewKeyed returns a bucket per key at rate r, on the clock now (nil: the
// system clock); nil if r is off. lockFor is the lockout Fail starts when
// a key runs out of tokens (zero for buckets used with Take only).
func NewKeyed(r Rate, lockFor time.Duration, now func() time.Time) *Keyed {
	if !r.On() {
		return nil
	}
	if now == nil {
		now = time.Now
	}
	k := &Keyed{rate: r.perSecond(), burst: r.burst(), lockFor: lockFor, now: now, seed: maphash.MakeSeed()}
	for i := range k.shards {
		k.shards[i].buckets = map[string]bucket{}
		k.shards[i].sweepAt = minSweep
	}
	return k
}

func (k *Keyed) shard(key string) *shard {
	return &k.shards[maphash.String(k.seed, key)%uint64(len(k.shards))]
}

// refillLocked returns key's bucket as of now (a full one if key has
// none).
func (k *Keyed) refillLocked(sh *shard, key string, now time.Time) bucket {
	b, ok := sh.buckets[key]
	if !ok {
		return bucket{tokens: k.burst, last: now}
	}
	if now.After(b.last) {
		b.tokens = min(k.burst, b.tokens+now.Sub(b.last).Seconds()*k.rate)
		b.last = now
	}
	return b
}

// storeLocked keeps key's bucket b, sweeping the shard's idle buckets
// first when it has grown to its threshold.
func (k *Keyed) storeLocked(sh *shard, key string, b bucket, now time.Time) {
	if _, ok := sh.buckets[key]; !ok && len(sh.buckets) >= sh.sweepAt {
		for kk, bb := range sh.buckets {
			if k.idle(bb, now) {
				delete(sh.buckets, kk)
			}
		}
		// The next sweep when the map has doubled: a sweep's cost is
		// paid for by as many insertions.
		sh.sweepAt = max(minSweep, 2*len(sh.buckets))
	}
	sh.buckets[key] = b
}

// idle reports whether b is full again at now and not locked out: the
// same as no bucket.
func (k *Keyed) idle(b bucket, now time.Time) bool {
	if b.until.After(now) {
		return false
	}
	return b.tokens+now.Sub(b.last).Seconds()*k.rate >= k.burst
}

// Take takes a token from key's bucket. If there is none, it takes
// nothing and returns false and how long until there is one.
func (k *Keyed) Take(key string) (ok bool, wait time.Duration) {
	if k == nil {
		return true, 0
	}
	now := k.now()
	sh := k.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := k.refillLocked(sh, key, now)
	if b.tokens < 1 {
		return false, k.waitFor(b)
	}
	b.tokens--
	k.storeLocked(sh, key, b, now)
	return true, 0
}

func (k *Keyed) waitFor(b bucket) time.Duration {
	return time.Duration((1 - b.tokens) / k.rate * float64(time.Second))
}

// Locked reports whether key is locked out (by Fail), and for how long
// still.
func (k *Keyed) Locked(key string) (locked bool, wait time.Duration) {
	if k == nil {
		return false, 0
	}
	now := k.now()
	sh := k.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b, ok := sh.buckets[key]
	if !ok || !b.until.After(now) {
		return false, 0
	}
	return true, b.until.Sub(now)
}

// Fail counts a failure of key against its bucket. The failure that
// empties the bucket (Burst failures in a row, or more than the rate
// allows) locks key out for the lockout given to NewKeyed, and Fail
// reports it. The bucket refills meanwhile, so after a lockout of at
// least Burst/rate, key has Burst attempts again.
func (k *Keyed) Fail(key string) (lockedNow bool) {
	if k == nil {
		return false
	}
	now := k.now()
	sh := k.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := k.refillLocked(sh, key, now)
	b.tokens = max(b.tokens-1, 0)
	if b.tokens < 1 && k.lockFor > 0 && !b.until.After(now) {
		b.until = now.Add(k.lockFor)
		lockedNow = true
	}
	k.storeLocked(sh, key, b, now)
	return lockedNow
}

// Len returns how many keys have a bucket now (idle ones not yet swept
// included).
func (k *Keyed) Len() int {
	if k == nil {
		return 0
	}
	n := 0
	for i := range k.shards {
		sh := &k.shards[i]
		sh.mu.Lock()
		n += len(sh.buckets)
		sh.mu.Unlock()
	}
	return n
}
