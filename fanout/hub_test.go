package fanout_test

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/memstore"
	"github.com/dingmq/ding/fanout"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeEndpoint records frames; it drains only when told to. A Send may
// carry several fixed-size frames (catch-up sends a chunk at once).
type fakeEndpoint struct {
	mu      sync.Mutex
	size    int // frame size; zero means 16
	frames  [][]byte
	pending int
	limit   int // Send fails past this many pending bytes (0: no limit)
	roomFor int // Room is roomFor minus pending (0: unlimited)
	dev     *fanout.Device
	closed  bool
}

func (f *fakeEndpoint) Send(b []byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || (f.limit > 0 && f.pending+len(b) > f.limit) {
		f.closed = true
		return false
	}
	size := f.size
	if size == 0 {
		size = 16
	}
	for off := 0; off < len(b); off += size {
		f.frames = append(f.frames, b[off:off+size])
	}
	f.pending += len(b)
	return true
}
func (f *fakeEndpoint) Room() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.roomFor == 0 {
		return 1 << 30
	}
	return f.roomFor - f.pending
}
func (f *fakeEndpoint) Fail(error) { f.mu.Lock(); f.closed = true; f.mu.Unlock() }

// drain pretends the frames were written.
func (f *fakeEndpoint) drain() {
	f.mu.Lock()
	f.pending = 0
	d := f.dev
	f.mu.Unlock()
	d.Drained()
}

func (f *fakeEndpoint) seqs() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]uint64, len(f.frames))
	for i, b := range f.frames {
		out[i] = binary.BigEndian.Uint64(b)
	}
	return out
}

// encoder appends the seq, padded to size bytes.
func encoder(size int) func([]byte, engine.Entry) []byte {
	return func(dst []byte, e engine.Entry) []byte {
		b := make([]byte, size)
		binary.BigEndian.PutUint64(b, e.Seq)
		return append(dst, b...)
	}
}

// setup starts an engine and a hub, wired as dingd wires them (viaBroker).
func setup(t *testing.T, hc fanout.HubConfig) (*engine.Engine, *fanout.Hub) {
	t.Helper()
	return setupWired(t, hc, viaBroker())
}

// A wiring makes the engine's Sink for a hub.
type wiring func(t testing.TB, h *fanout.Hub) engine.Sink

// direct is the path before the broker: the engine calls the hub.
func direct(_ testing.TB, h *fanout.Hub) engine.Sink { return h }

// viaBroker is dingd's path: Publisher → LocalBroker → hub, with hooks.
func viaBroker(hooks ...fanout.OfflineHook) wiring {
	return func(t testing.TB, h *fanout.Hub) engine.Sink {
		t.Helper()
		p, err := fanout.NewPublisher(fanout.PublisherConfig{
			Broker: fanout.NewLocalBroker(h, nil), Presence: h, Hooks: hooks,
		})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
}

func setupWired(t *testing.T, hc fanout.HubConfig, w wiring) (*engine.Engine, *fanout.Hub) {
	t.Helper()
	e, err := engine.Open(engine.Config{Store: memstore.New()})
	if err != nil {
		t.Fatal(err)
	}
	hc.Source = e
	if hc.Encode == nil {
		hc.Encode = encoder(16)
	}
	h, err := fanout.NewHub(hc)
	if err != nil {
		t.Fatal(err)
	}
	e.SetSink(w(t, h))
	e.SetPresence(h)
	t.Cleanup(func() { e.Close(); h.Close() })
	return e, h
}

func submitN(t *testing.T, e *engine.Engine, n int, to ...string) {
	t.Helper()
	for range n {
		if _, err := e.Submit(context.Background(), engine.Submission{From: "ana", To: to, Kind: engine.KindText, Body: []byte("hi")}); err != nil {
			t.Fatal(err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func checkSeqs(t *testing.T, got []uint64, from, to uint64) {
	t.Helper()
	if uint64(len(got)) != to-from+1 {
		t.Fatalf("got %d entries, want %d (%v...)", len(got), to-from+1, got[:min(len(got), 10)])
	}
	for i, s := range got {
		if s != from+uint64(i) {
			t.Fatalf("entry %d has seq %d, want %d", i, s, from+uint64(i))
		}
	}
}

func TestCatchUpThenLiveInOrder(t *testing.T) {
	e, h := setup(t, fanout.HubConfig{Chunk: 7})
	submitN(t, e, 50, "bo")
	ep := &fakeEndpoint{}
	d, _ := h.Attach("bo", "phone", ep, 11)
	ep.dev = d
	// Submit while catch-up runs: the live pushes race the reads.
	submitN(t, e, 50, "bo")
	waitFor(t, "100 entries", func() bool { return len(ep.seqs()) == 90 })
	checkSeqs(t, ep.seqs(), 11, 100)
	submitN(t, e, 1, "bo")
	waitFor(t, "live entry", func() bool { return len(ep.seqs()) == 91 })
	checkSeqs(t, ep.seqs(), 11, 101)
}

func TestEveryDeviceGetsEveryEntry(t *testing.T) {
	e, h := setup(t, fanout.HubConfig{})
	eps := map[string]*fakeEndpoint{"phone": {}, "laptop": {}, "web": {}}
	for name, ep := range eps {
		ep.dev, _ = h.Attach("bo", name, ep, 1)
	}
	submitN(t, e, 20, "bo", "cy")
	for name, ep := range eps {
		waitFor(t, name, func() bool { return len(ep.seqs()) == 20 })
		checkSeqs(t, ep.seqs(), 1, 20)
	}
}

func TestCatchUpPausesWithoutRoomAndResumes(t *testing.T) {
	e, h := setup(t, fanout.HubConfig{Chunk: 64, Encode: encoder(100)})
	submitN(t, e, 300, "bo")
	ep := &fakeEndpoint{limit: 2000, roomFor: 1000, size: 100} // would overflow without pacing
	d, _ := h.Attach("bo", "phone", ep, 1)
	ep.mu.Lock()
	ep.dev = d
	ep.mu.Unlock()
	n := 0 // frames seen before the last drain
	for len(ep.seqs()) < 300 {
		waitFor(t, "progress or pause", func() bool { return ep.Room() <= 0 || len(ep.seqs()) == 300 })
		if len(ep.seqs()) == n {
			t.Fatal("no progress")
		}
		n = len(ep.seqs())
		ep.drain()
	}
	if ep.closed {
		t.Fatal("catch-up overflowed the endpoint")
	}
	checkSeqs(t, ep.seqs(), 1, 300)
}

func TestReplaceAndDetach(t *testing.T) {
	e, h := setup(t, fanout.HubConfig{})
	a := &fakeEndpoint{}
	a.dev, _ = h.Attach("bo", "phone", a, 1)
	b := &fakeEndpoint{}
	var replaced fanout.Endpoint
	b.dev, replaced = h.Attach("bo", "phone", b, 1)
	if replaced != a {
		t.Fatalf("replaced = %v, want the first endpoint", replaced)
	}
	submitN(t, e, 3, "bo")
	waitFor(t, "new endpoint", func() bool { return len(b.seqs()) == 3 })
	if len(a.seqs()) != 0 {
		t.Fatalf("replaced endpoint got %d entries", len(a.seqs()))
	}
	b.dev.Detach()
	b.dev.Detach()
	if h.Online("bo") {
		t.Fatal("bo still online")
	}
	submitN(t, e, 1, "bo")
	if len(b.seqs()) != 3 {
		t.Fatal("detached endpoint got an entry")
	}
}

// greetingEndpoint records, when the greeting reaches it, whether the hub
// already listed its device.
type greetingEndpoint struct {
	fakeEndpoint
	h          *fanout.Hub
	mu2        sync.Mutex
	greeted    bool
	registered bool // the device was online when the greeting was sent
}

func (g *greetingEndpoint) Send(b []byte) bool {
	g.mu2.Lock()
	if !g.greeted {
		g.greeted, g.registered = true, g.h.Online("bo")
	}
	g.mu2.Unlock()
	return g.fakeEndpoint.Send(b)
}

// Join sends its first frame (the session's WELCOME) once the device is
// registered, so that a client who saw it and connects the same device
// again replaces this connection, and before any entry of the stream,
// even when entries are waiting and arriving live.
func TestJoinGreetsOnceRegisteredAndBeforeTheStream(t *testing.T) {
	e, h := setup(t, fanout.HubConfig{Chunk: 3})
	submitN(t, e, 10, "bo")
	hello := make([]byte, 16)
	binary.BigEndian.PutUint64(hello, 1<<63) // no seq looks like it
	ep := &greetingEndpoint{h: h}
	d, _, err := h.Join("bo", "phone", ep, 1, hello)
	if err != nil {
		t.Fatal(err)
	}
	ep.fakeEndpoint.mu.Lock()
	ep.dev = d
	ep.fakeEndpoint.mu.Unlock()
	submitN(t, e, 5, "bo")
	waitFor(t, "greeting and 15 entries", func() bool { return len(ep.seqs()) == 16 })
	got := ep.seqs()
	if got[0] != 1<<63 {
		t.Fatalf("first frame is seq %d, want the greeting", got[0])
	}
	checkSeqs(t, got[1:], 1, 15)
	if !ep.registered {
		t.Fatal("the greeting was sent before the device was registered")
	}
	// The same device joining again replaces the greeted endpoint.
	again := &greetingEndpoint{h: h}
	if _, replaced, _ := h.Join("bo", "phone", again, 16, hello); replaced != ep {
		t.Fatalf("second Join replaced %v, want the first endpoint", replaced)
	}
}
