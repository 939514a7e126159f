package fanout

import (
	"errors"
	"hash/maphash"
	"log/slog"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine"
)

// Endpoint is one live device connection as the hub sees it. The socket
// gateway implements it.
type Endpoint interface {
	// Send queues an encoded frame for writing and returns at once. The
	// frame is shared with other endpoints and must not be modified. It
	// returns false if the endpoint is closed, or has just closed itself
	// because its queue overflowed (a slow consumer).
	Send(frame []byte) bool
	// Room returns how many more bytes catch-up may queue now; zero or
	// less means wait for Drained. The endpoint knows its own capacity,
	// the hub does not.
	Room() int
	// Fail closes the endpoint because delivery to it failed internally.
	Fail(err error)
}

// Source reads streams from the store; *engine.Engine implements it.
type Source interface {
	Range(user string, from uint64, max int) ([]engine.Entry, error)
}

// HubConfig configures a Hub. Source and Encode are required.
type HubConfig struct {
	Source Source
	// Encode appends the wire frame for an entry to dst and returns the
	// extended slice. Live pushes encode once per entry and user, however
	// many devices the user has; catch-up appends a whole chunk into one
	// buffer, written with one Send.
	Encode func(dst []byte, e engine.Entry) []byte
	// Workers is the number of catch-up goroutines; zero means 4.
	Workers int
	// Chunk is the most entries one catch-up step reads; zero means 512.
	Chunk int
	// ChunkBytes bounds the frames one catch-up step encodes and sends at
	// once (less when the endpoint has less Room); zero means 512 KiB.
	// Entries past it are read again next step.
	ChunkBytes int
	// Ownership says which users' devices may attach here (Join); nil
	// means SingleNode: all of them.
	Ownership Ownership
	// DeviceHooks are told when devices attach and detach, under the
	// registry's shard lock (see DeviceHook); none means none.
	DeviceHooks []DeviceHook
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the hub's metrics; nil means none.
	Registerer prometheus.Registerer
}

// Hub is the registry of the devices attached to this node: the
// broker's Receiver, and the node's Presence.
type Hub struct {
	cfg    HubConfig
	seed   maphash.Seed
	shards [64]shard

	wmu     sync.Mutex
	wcond   *sync.Cond
	work    []*Device // devices waiting for a catch-up step; guarded by wmu
	wclosed bool      // guarded by wmu
	wg      sync.WaitGroup

	devices    prometheus.Gauge
	deliveries *prometheus.CounterVec
	delivLive  prometheus.Counter // deliveries{path="live"}, resolved once: Deliver is hot
	delivCatch prometheus.Counter // deliveries{path="catchup"}
	catchupQ   prometheus.GaugeFunc
}

var (
	_ Receiver = (*Hub)(nil)
	_ Presence = (*Hub)(nil)
)

type shard struct {
	mu sync.RWMutex
	// users maps a user to their attached devices. Slices are copied on
	// write, so a reader may keep one after unlocking. Guarded by mu.
	users map[string][]*Device
}

// Device is one attached device. Its fields are guarded by mu.
type Device struct {
	hub    *Hub
	User   string
	ID     string
	ep     Endpoint
	mu     sync.Mutex
	next   uint64 // next sequence number to send
	catch  bool   // in catch-up mode: a worker sends, live pushes only mark behind
	behind bool   // a live push arrived during catch-up
	queued bool   // in the hub's work queue
	paused bool   // catch-up waits for the endpoint to drain
	closed bool
}

// NewHub starts a hub and its catch-up workers.
func NewHub(cfg HubConfig) (*Hub, error) {
	if cfg.Source == nil || cfg.Encode == nil {
		return nil, errors.New("fanout: hub config: Source and Encode are required")
	}
	if cfg.Workers == 0 {
		cfg.Workers = 4
	}
	if cfg.Chunk == 0 {
		cfg.Chunk = 512
	}
	if cfg.ChunkBytes == 0 {
		cfg.ChunkBytes = 512 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Ownership == nil {
		cfg.Ownership = SingleNode{}
	}
	h := &Hub{cfg: cfg, seed: maphash.MakeSeed()}
	h.wcond = sync.NewCond(&h.wmu)
	for i := range h.shards {
		h.shards[i].users = map[string][]*Device{}
	}
	h.devices = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ding_fanout_devices", Help: "Devices attached to the hub (authenticated connections).",
	})
	h.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ding_fanout_deliveries_total",
		Help: "Stream entries written to devices, by path: live (pushed at commit) or catchup (read back from the store).",
	}, []string{"path"})
	h.delivLive = h.deliveries.WithLabelValues("live")
	h.delivCatch = h.deliveries.WithLabelValues("catchup")
	h.catchupQ = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ding_fanout_catchup_queue", Help: "Devices waiting for a catch-up step.",
	}, func() float64 { h.wmu.Lock(); defer h.wmu.Unlock(); return float64(len(h.work)) })
	if r := cfg.Registerer; r != nil {
		for _, c := range []prometheus.Collector{h.devices, h.deliveries, h.catchupQ} {
			if err := r.Register(c); err != nil {
				return nil, err
			}
		}
	}
	for range cfg.Workers {
		h.wg.Add(1)
		go h.catchupLoop()
	}
	return h, nil
}

func (h *Hub) shard(user string) *shard {
	return &h.shards[maphash.String(h.seed, user)%uint64(len(h.shards))]
}

// Attach registers a device that needs user's stream from sequence number
// from on, and starts sending it. If the same device was attached already,
// the old endpoint is detached and returned so the caller can close it.
// Attach does not consult Ownership (Join does).
func (h *Hub) Attach(user, device string, ep Endpoint, from uint64) (d *Device, replaced Endpoint) {
	return h.attach(user, device, ep, from, nil)
}

func (h *Hub) attach(user, device string, ep Endpoint, from uint64, first []byte) (d *Device, replaced Endpoint) {
	d = &Device{hub: h, User: user, ID: device, ep: ep, next: from, catch: true}
	s := h.shard(user)
	s.mu.Lock()
	old := s.users[user]
	devs := make([]*Device, 0, len(old)+1)
	for _, o := range old {
		if o.ID == device {
			o.mu.Lock()
			o.closed = true
			o.mu.Unlock()
			replaced = o.ep
			h.devices.Dec()
			continue
		}
		devs = append(devs, o)
	}
	s.users[user] = append(devs, d)
	for _, dh := range h.cfg.DeviceHooks {
		dh.Attached(user, device)
	}
	s.mu.Unlock()
	h.devices.Inc()
	if first != nil {
		// Not scheduled yet, and live pushes only mark a catching-up
		// device behind: nothing reaches ep before first.
		ep.Send(first)
	}
	d.mu.Lock()
	h.scheduleLocked(d)
	d.mu.Unlock()
	return d, replaced
}

// Join is Attach for an edge that does not know where user's stream is:
// if this node owns it (Ownership), Join attaches the device as Attach
// does; otherwise it attaches nothing and returns a *NotOwnerError (see
// ErrNotOwner) naming the owner, so that the edge can send the device
// there.
//
// first, when not nil, is sent to ep once the device is registered and
// before any entry: the handshake's answer (WELCOME). The device is thus
// registered before its client can see the answer, so a connection of
// the same device that the client opens after it replaces this one, never
// the other way round.
func (h *Hub) Join(user, device string, ep Endpoint, from uint64, first []byte) (d *Device, replaced Endpoint, err error) {
	if node, local := h.cfg.Ownership.Owner(user); !local {
		return nil, nil, notOwner(user, node)
	}
	d, replaced = h.attach(user, device, ep, from, first)
	return d, replaced, nil
}

// Detach removes the device; nothing more is sent to it. Idempotent.
func (d *Device) Detach() {
	h := d.hub
	s := h.shard(d.User)
	s.mu.Lock()
	old := s.users[d.User]
	if i := slices.Index(old, d); i >= 0 {
		devs := slices.Delete(slices.Clone(old), i, i+1)
		if len(devs) == 0 {
			delete(s.users, d.User)
		} else {
			s.users[d.User] = devs
		}
		h.devices.Dec()
		for _, dh := range h.cfg.DeviceHooks {
			dh.Detached(d.User, d.ID)
		}
	}
	s.mu.Unlock()
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
}

// ErrTokenRevoked is what Kick fails the endpoints of revoked tokens
// with (a session answers fatal BAD_TOKEN).
var ErrTokenRevoked = errors.New("fanout: token revoked")

// ErrUserRemoved is what Kick fails a removed user's endpoints with.
var ErrUserRemoved = engine.NewError(engine.CodeUserRemoved, "fanout: user removed")

// Kick detaches every device of user and fails its endpoint with err (for
// offboarding: ErrUserRemoved). It returns how many devices it closed.
func (h *Hub) Kick(user string, err error) int { return h.KickDevice(user, "", err) }

// KickWhere is Kick for every user match says yes to (a partition this
// node stops serving: its users reconnect to its new owner). It returns
// how many devices it closed.
func (h *Hub) KickWhere(match func(user string) bool, err error) int {
	var users []string
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		for u := range s.users {
			if match(u) {
				users = append(users, u)
			}
		}
		s.mu.Unlock()
	}
	n := 0
	for _, u := range users {
		n += h.Kick(u, err)
	}
	return n
}

// KickDevice is Kick for one device of user ("": every device).
func (h *Hub) KickDevice(user, device string, err error) int {
	s := h.shard(user)
	s.mu.Lock()
	devs := s.users[user]
	if device == "" {
		delete(s.users, user)
	} else {
		var keep, gone []*Device
		for _, d := range devs {
			if d.ID == device {
				gone = append(gone, d)
			} else {
				keep = append(keep, d)
			}
		}
		devs = gone
		if len(keep) == 0 {
			delete(s.users, user)
		} else {
			s.users[user] = keep
		}
	}
	for _, d := range devs {
		for _, dh := range h.cfg.DeviceHooks {
			dh.Detached(user, d.ID)
		}
	}
	s.mu.Unlock()
	n := 0
	for _, d := range devs {
		d.mu.Lock()
		was := d.closed
		d.closed = true
		d.mu.Unlock()
		h.devices.Dec()
		if !was {
			d.ep.Fail(err)
			n++
		}
	}
	return n
}

// Drained tells the hub that the device's endpoint wrote out its queue, so
// a paused catch-up may go on. Endpoints call it after each flush.
func (d *Device) Drained() {
	d.mu.Lock()
	if d.paused && !d.closed {
		d.paused = false
		d.hub.scheduleLocked(d)
	}
	d.mu.Unlock()
}

// Online implements Presence: whether user has at least one attached
// device that can still be delivered to.
func (h *Hub) Online(user string) bool {
	s := h.shard(user)
	s.mu.RLock()
	devs := s.users[user]
	s.mu.RUnlock()
	for _, d := range devs {
		d.mu.Lock()
		closed := d.closed
		d.mu.Unlock()
		if !closed {
			return true
		}
	}
	return false
}

// Devices implements Presence: the ids of user's attached devices that
// can still be delivered to, nil if none.
func (h *Hub) Devices(user string) []string {
	s := h.shard(user)
	s.mu.RLock()
	devs := s.users[user]
	s.mu.RUnlock()
	var out []string
	for _, d := range devs {
		d.mu.Lock()
		if !d.closed {
			out = append(out, d.ID)
		}
		d.mu.Unlock()
	}
	return out
}

// Deliver implements Receiver: the local delivery, the broker's
// subscriber. It encodes each entry at most once and queues it on every
// live device of the user. In process it runs on the engine's publish
// loop (Publisher → LocalBroker → Deliver), once per user and batch.
func (h *Hub) Deliver(user string, entries []engine.Entry) {
	s := h.shard(user)
	s.mu.RLock()
	devs := s.users[user]
	s.mu.RUnlock()
	if len(devs) == 0 {
		return
	}
	frames := make([][]byte, len(entries))
	sent := 0
	for _, d := range devs {
		sent += d.push(entries, frames)
	}
	h.delivLive.Add(float64(sent))
}

func (d *Device) push(entries []engine.Entry, frames [][]byte) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0
	}
	if d.catch {
		d.behind = true
		return 0
	}
	sent := 0
	for i := range entries {
		e := &entries[i]
		switch {
		case e.Seq < d.next:
			continue
		case e.Seq > d.next:
			// A gap: this device missed something (it is new, or a push
			// was lost with a failed write). The store has it.
			d.catch = true
			d.hub.scheduleLocked(d)
			return sent
		}
		if frames[i] == nil {
			frames[i] = d.hub.cfg.Encode(nil, *e)
		}
		if !d.ep.Send(frames[i]) {
			d.closed = true
			return sent
		}
		d.next++
		sent++
	}
	return sent
}

// scheduleLocked queues d for a catch-up step. d.mu must be held.
func (h *Hub) scheduleLocked(d *Device) {
	if d.queued || d.closed {
		return
	}
	d.queued = true
	h.wmu.Lock()
	h.work = append(h.work, d)
	h.wmu.Unlock()
	h.wcond.Signal()
}

func (h *Hub) catchupLoop() {
	defer h.wg.Done()
	for {
		h.wmu.Lock()
		for len(h.work) == 0 && !h.wclosed {
			h.wcond.Wait()
		}
		if h.wclosed {
			h.wmu.Unlock()
			return
		}
		d := h.work[0]
		h.work[0] = nil
		h.work = h.work[1:]
		h.wmu.Unlock()
		h.catchupStep(d)
	}
}

// catchupStep sends one chunk of d's stream from the store.
func (h *Hub) catchupStep(d *Device) {
	d.mu.Lock()
	d.queued = false
	if d.closed {
		d.mu.Unlock()
		return
	}
	from := d.next
	d.behind = false
	d.mu.Unlock()

	entries, err := h.cfg.Source.Range(d.User, from, h.cfg.Chunk)
	if err != nil {
		h.cfg.Logger.Error("catch-up read failed", "user", d.User, "device", d.ID, "err", err)
		d.ep.Fail(err)
		d.Detach()
		return
	}
	// Encode the chunk into one buffer, up to what the endpoint has room
	// for; entries past that are read again by the next step.
	budget := min(h.cfg.ChunkBytes, d.ep.Room())
	var buf []byte
	n := 0
	for n < len(entries) && (n == 0 || len(buf) < budget) {
		buf = h.cfg.Encode(buf, entries[n])
		n++
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return
	case n > 0 && entries[0].Seq < d.next:
		// Cannot happen: only this step moves next while catch is set.
		h.cfg.Logger.Error("catch-up out of step", "user", d.User, "device", d.ID, "want", d.next, "got", entries[0].Seq)
		h.scheduleLocked(d)
		return
	case n > 0 && d.ep.Room() <= 0:
		d.paused = true // Drained reschedules; the chunk is read again then
		return
	case n > 0:
		if !d.ep.Send(buf) {
			d.closed = true
			return
		}
		// Past the last entry sent: retention may have left gaps (an
		// entry above next is the first one kept).
		d.next = entries[n-1].Seq + 1
		h.delivCatch.Add(float64(n))
	}
	if n == len(entries) && len(entries) < h.cfg.Chunk && !d.behind {
		d.catch = false // caught up: live pushes take over
		return
	}
	if d.ep.Room() <= 0 {
		d.paused = true
		return
	}
	h.scheduleLocked(d)
}

// Close stops the catch-up workers and waits for them. Devices stay
// attached; their owners detach them. Idempotent.
func (h *Hub) Close() {
	h.wmu.Lock()
	h.wclosed = true
	h.wmu.Unlock()
	h.wcond.Broadcast()
	h.wg.Wait()
}
