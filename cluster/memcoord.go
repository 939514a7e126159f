package cluster

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"
)

// MemCoord is a Coord in memory, on a clock the caller gives: the
// stand-in for Redis in tests and in the deterministic simulation. Its
// fault switches make it misbehave the ways the package doc says Redis
// may: DropAppends loses appended entries, Snapshot and Restore roll its
// state back (a failover to a replica that missed the latest writes).
type MemCoord struct {
	mu    sync.Mutex
	now   func() time.Time
	parts map[Partition]*memPart
	// nextID numbers stream entries across rollbacks, as Redis's
	// time-based stream ids keep growing after a failover.
	nextID uint64
	addrs  map[string]memAddr
	// members: Registry.
	members map[string]memMember
	// partitions: PartitionCounter (0: none recorded).
	partitions int
	// listeners: Announcer, by a number of their own.
	listeners map[int]func(Partition)
	nextL     int
	// DropAppends, while positive, makes each Append a no-op that
	// reports success, and counts down.
	DropAppends int
	// StreamKeep, when positive, bounds each partition's stream: Append
	// drops the oldest entries beyond it (RedisCoord.StreamKeep);
	// Trimmed counts the entries dropped so.
	StreamKeep, Trimmed int
	// watch: Watch.
	watch func(p Partition, holder, standby string)
	// ackWatchers: AckNotifier, by partition and a number of their own.
	ackWatchers map[Partition]map[int]func(Ack)
	// appended is closed (and replaced) by every Append: ReadEntries
	// waits on it.
	appended chan struct{}
	// DropAckNotices, while positive, makes PutAck record an ack without
	// passing it on to its watchers (a lost notice), and counts down.
	DropAckNotices int
}

// Watch makes the coordinator call f after every change of a
// partition's lease holder or standby name (a lease taken or released, a
// standby named; not a lease lapsing with time), with both as they are
// then, in the order of the changes: a test sees every role move. f runs
// under the coordinator's lock and must not call it.
func (m *MemCoord) Watch(f func(p Partition, holder, standby string)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.watch = f
}

func (m *MemCoord) changed(p Partition, mp *memPart) {
	if m.watch != nil {
		h := mp.holder
		if !mp.live(m.now()) {
			h = ""
		}
		m.watch(p, h, mp.standby)
	}
}

type memPart struct {
	holder  string
	epoch   uint64 // the live lease's
	expires time.Time
	maxEp   uint64 // every epoch handed out is <= maxEp
	stream  []memEntry
	acks    map[string]Ack
	standby string
}

type memAddr struct {
	addr    string
	expires time.Time
}

type memEntry struct {
	id uint64
	e  Entry
}

// NewMemCoord returns an empty MemCoord on the clock now.
func NewMemCoord(now func() time.Time) *MemCoord {
	return &MemCoord{now: now, parts: map[Partition]*memPart{}}
}

func (m *MemCoord) part(p Partition) *memPart {
	mp := m.parts[p]
	if mp == nil {
		mp = &memPart{}
		m.parts[p] = mp
	}
	return mp
}

func (mp *memPart) live(now time.Time) bool { return mp.holder != "" && now.Before(mp.expires) }

// TakeLease implements Coord.
func (m *MemCoord) TakeLease(_ context.Context, p Partition, node string, min uint64, ttl time.Duration) (uint64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mp, now := m.part(p), m.now()
	if mp.live(now) && mp.holder != node {
		return mp.epoch, false, nil
	}
	mp.maxEp = max(mp.maxEp, min) + 1
	mp.holder, mp.epoch, mp.expires = node, mp.maxEp, now.Add(ttl)
	m.changed(p, mp)
	return mp.epoch, true, nil
}

// RenewLease implements Coord.
func (m *MemCoord) RenewLease(_ context.Context, p Partition, node string, epoch uint64, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mp, now := m.part(p), m.now()
	if !mp.live(now) || mp.holder != node || mp.epoch != epoch {
		return false, nil
	}
	mp.expires = now.Add(ttl)
	return true, nil
}

// ReleaseLease implements Coord.
func (m *MemCoord) ReleaseLease(_ context.Context, p Partition, node string, epoch uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	mp := m.part(p)
	if mp.holder == node && mp.epoch == epoch {
		mp.holder = ""
		m.changed(p, mp)
	}
	return nil
}

// Lease implements Coord.
func (m *MemCoord) Lease(_ context.Context, p Partition) (string, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mp := m.part(p)
	if !mp.live(m.now()) {
		return "", mp.epoch, nil
	}
	return mp.holder, mp.epoch, nil
}

// ClaimPartitions implements PartitionCounter.
func (m *MemCoord) ClaimPartitions(_ context.Context, p int) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.partitions == 0 {
		m.partitions = p
	}
	return m.partitions, nil
}

// Announce implements Announcer: the listeners are called before it
// returns.
func (m *MemCoord) Announce(_ context.Context, p Partition) error {
	m.mu.Lock()
	fs := slices.Collect(maps.Values(m.listeners))
	m.mu.Unlock()
	for _, f := range fs {
		f(p)
	}
	return nil
}

// Listen implements Announcer.
func (m *MemCoord) Listen(ctx context.Context, f func(Partition)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.listeners == nil {
		m.listeners = map[int]func(Partition){}
	}
	id := m.nextL
	m.nextL++
	m.listeners[id] = f
	context.AfterFunc(ctx, func() {
		m.mu.Lock()
		delete(m.listeners, id)
		m.mu.Unlock()
	})
	return nil
}

// Append implements Coord.
func (m *MemCoord) Append(_ context.Context, p Partition, e Entry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.DropAppends > 0 {
		m.DropAppends--
		return nil
	}
	m.nextID++
	e.Data = append([]byte(nil), e.Data...)
	if e.Keys != nil {
		e.Keys = append([]byte(nil), e.Keys...)
	}
	mp := m.part(p)
	mp.stream = append(mp.stream, memEntry{m.nextID, e})
	if m.appended != nil {
		close(m.appended)
		m.appended = nil
	}
	if k := m.StreamKeep; k > 0 && len(mp.stream) > k {
		m.Trimmed += len(mp.stream) - k
		mp.stream = append(mp.stream[:0:0], mp.stream[len(mp.stream)-k:]...)
	}
	return nil
}

// Entries implements Coord. The cursor is the id of the last entry read.
func (m *MemCoord) Entries(_ context.Context, p Partition, cursor string, n int) ([]Entry, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var after uint64
	if cursor != "" {
		v, err := strconv.ParseUint(cursor, 10, 64)
		if err != nil {
			return nil, cursor, err
		}
		after = v
	}
	var out []Entry
	for _, me := range m.part(p).stream {
		if me.id <= after {
			continue
		}
		if len(out) == n {
			break
		}
		out = append(out, me.e)
		cursor = strconv.FormatUint(me.id, 10)
	}
	return out, cursor, nil
}

// ReadEntries implements EntryReader: it waits (on the real clock, not
// the coordinator's) for the next Append to any partition, at most max.
func (m *MemCoord) ReadEntries(ctx context.Context, p Partition, cursor string, n int, max time.Duration) ([]Entry, string, error) {
	deadline := time.NewTimer(max)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		if m.appended == nil {
			m.appended = make(chan struct{})
		}
		next := m.appended
		m.mu.Unlock()
		es, cur, err := m.Entries(ctx, p, cursor, n)
		if err != nil || len(es) > 0 {
			return es, cur, err
		}
		select {
		case <-next:
		case <-deadline.C:
			return nil, cursor, nil
		case <-ctx.Done():
			return nil, cursor, ctx.Err()
		}
	}
}

// PutAck implements Coord. The partition's watchers (AckNotifier) are
// called before it returns, outside the coordinator's lock.
func (m *MemCoord) PutAck(_ context.Context, p Partition, a Ack) error {
	m.mu.Lock()
	mp := m.part(p)
	if mp.acks == nil {
		mp.acks = map[string]Ack{}
	}
	mp.acks[a.Standby] = a
	fs := slices.Collect(maps.Values(m.ackWatchers[p]))
	if m.DropAckNotices > 0 {
		m.DropAckNotices--
		fs = nil
	}
	m.mu.Unlock()
	for _, f := range fs {
		f(a)
	}
	return nil
}

// WatchAcks implements AckNotifier.
func (m *MemCoord) WatchAcks(ctx context.Context, p Partition, f func(Ack)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ackWatchers == nil {
		m.ackWatchers = map[Partition]map[int]func(Ack){}
	}
	if m.ackWatchers[p] == nil {
		m.ackWatchers[p] = map[int]func(Ack){}
	}
	id := m.nextL
	m.nextL++
	m.ackWatchers[p][id] = f
	context.AfterFunc(ctx, func() {
		m.mu.Lock()
		delete(m.ackWatchers[p], id)
		m.mu.Unlock()
	})
	return nil
}

// Acks implements Coord.
func (m *MemCoord) Acks(_ context.Context, p Partition) (map[string]Ack, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]Ack{}
	for k, v := range m.part(p).acks {
		out[k] = v
	}
	return out, nil
}

// SetStandby implements Coord.
func (m *MemCoord) SetStandby(_ context.Context, p Partition, node string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	mp := m.part(p)
	mp.standby = node
	m.changed(p, mp)
	return nil
}

// Standby implements Coord.
func (m *MemCoord) Standby(_ context.Context, p Partition) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.part(p).standby, nil
}

// SetAddr implements Coord.
func (m *MemCoord) SetAddr(_ context.Context, node, addr string, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.addrs == nil {
		m.addrs = map[string]memAddr{}
	}
	m.addrs[node] = memAddr{addr, m.now().Add(ttl)}
	return nil
}

// Addr implements Coord.
func (m *MemCoord) Addr(_ context.Context, node string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.addrs[node]
	if !ok || !m.now().Before(a.expires) {
		return "", nil
	}
	return a.addr, nil
}

// SetMember implements Registry.
func (m *MemCoord) SetMember(_ context.Context, node string, mb Member, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.members == nil {
		m.members = map[string]memMember{}
	}
	m.members[node] = memMember{mb, m.now().Add(ttl)}
	return nil
}

// Members implements Registry.
func (m *MemCoord) Members(context.Context) (map[string]Member, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]Member{}
	for id, mb := range m.members {
		if m.now().Before(mb.expires) {
			out[id] = mb.Member
		}
	}
	return out, nil
}

type memMember struct {
	Member
	expires time.Time
}

// MemState is a copy of a MemCoord's state, for Restore.
type MemState struct{ parts map[Partition]memPart }

// Snapshot copies the state (leases, epochs, streams, acks; not the
// standby names, which the protocol trusts: see the package doc).
func (m *MemCoord) Snapshot() MemState {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := MemState{parts: map[Partition]memPart{}}
	for p, mp := range m.parts {
		c := *mp
		c.stream = append([]memEntry(nil), mp.stream...)
		c.acks = maps.Clone(mp.acks)
		s.parts[p] = c
	}
	return s
}

// Restore rolls the state back to s, keeping the standby names and the
// stream ids' counter.
func (m *MemCoord) Restore(s MemState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for p, mp := range m.parts {
		old, ok := s.parts[p]
		standby := mp.standby
		if !ok {
			*mp = memPart{}
		} else {
			*mp = old
			mp.stream = append([]memEntry(nil), old.stream...)
			mp.acks = maps.Clone(old.acks)
		}
		mp.standby = standby
	}
}

var (
	_ Coord       = (*MemCoord)(nil)
	_ AckNotifier = (*MemCoord)(nil)
	_ EntryReader = (*MemCoord)(nil)
	_ Announcer   = (*MemCoord)(nil)
	_ Announcer   = (*RedisCoord)(nil)

	_ PartitionCounter = (*MemCoord)(nil)
	_ PartitionCounter = (*RedisCoord)(nil)
)
