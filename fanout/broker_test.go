package fanout_test

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
)

// partitioned is a fake Ownership: the partitions in remote are owned by
// the node named there ("" for none); every other partition is local.
type partitioned map[fanout.Partition]string

func (p partitioned) Owner(user string) (string, bool) {
	if node, ok := p[fanout.PartitionOf(user)]; ok {
		return node, false
	}
	return "self:7070", true
}

// hookCall is what an OfflineHook was told once.
type hookCall struct {
	user      string
	seqs      []uint64
	connected []string // sorted
}

// recordingHook is an OfflineHook and a DeviceHook that records what it
// is told.
type recordingHook struct {
	mu     sync.Mutex
	calls  []hookCall
	events []string // "attached bo/phone", "detached bo/phone"
}

var (
	_ fanout.OfflineHook = (*recordingHook)(nil)
	_ fanout.DeviceHook  = (*recordingHook)(nil)
)

func (r *recordingHook) Appended(user string, entries []engine.Entry, connected []string) {
	c := hookCall{user: user, connected: slices.Sorted(slices.Values(connected))}
	for _, e := range entries {
		c.seqs = append(c.seqs, e.Seq)
	}
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
}

func (r *recordingHook) Attached(user, device string) { r.event("attached", user, device) }
func (r *recordingHook) Detached(user, device string) { r.event("detached", user, device) }

func (r *recordingHook) event(what, user, device string) {
	r.mu.Lock()
	r.events = append(r.events, what+" "+user+"/"+device)
	r.mu.Unlock()
}

// callsFor returns the calls for user.
func (r *recordingHook) callsFor(user string) []hookCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []hookCall
	for _, c := range r.calls {
		if c.user == user {
			out = append(out, c)
		}
	}
	return out
}

// takeEvents returns and forgets the device events so far.
func (r *recordingHook) takeEvents() (ev []string) {
	r.mu.Lock()
	ev, r.events = r.events, nil
	r.mu.Unlock()
	return ev
}

// TestDeliveryPaths runs the same traffic through the engine calling the
// hub directly (the path before the broker) and through the Publisher
// and the LocalBroker: every device gets every entry, in order, whether
// it was live, caught up from the store or joined in the middle.
func TestDeliveryPaths(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    wiring
	}{
		{"direct to the hub", direct},
		{"through the broker", viaBroker()},
		{"through the broker with a hook", viaBroker(&recordingHook{})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, h := setupWired(t, fanout.HubConfig{Chunk: 7}, tc.w)
			early := &fakeEndpoint{} // live from the start
			early.dev, _ = h.Attach("bo", "phone", early, 1)
			other := &fakeEndpoint{} // another user, same batches
			other.dev, _ = h.Attach("cy", "phone", other, 1)
			submitN(t, e, 50, "bo", "cy")
			late := &fakeEndpoint{} // catches up from 11 while live pushes race it
			late.dev, _ = h.Attach("bo", "laptop", late, 11)
			submitN(t, e, 50, "bo", "cy")
			submitN(t, e, 1, "bo")
			for _, c := range []struct {
				name     string
				ep       *fakeEndpoint
				from, to uint64
			}{{"bo/phone", early, 1, 101}, {"bo/laptop", late, 11, 101}, {"cy/phone", other, 1, 100}} {
				waitFor(t, c.name, func() bool { return len(c.ep.seqs()) == int(c.to-c.from+1) })
				checkSeqs(t, c.ep.seqs(), c.from, c.to)
			}
		})
	}
}

// TestJoinOwnership: a device of a user whose partition is another
// node's is refused with the owner's address, and nothing is attached.
func TestJoinOwnership(t *testing.T) {
	own := partitioned{fanout.PartitionOf("dee"): "node-b:7070", fanout.PartitionOf("eve"): ""}
	if _, clash := own[fanout.PartitionOf("bo")]; clash || len(own) != 2 {
		t.Fatal("the test's users share a partition: pick others")
	}
	for _, tc := range []struct {
		name    string
		user    string
		local   bool
		owner   string
		wantErr string
	}{
		{"local user attaches", "bo", true, "", ""},
		{"remote user is refused", "dee", false, "node-b:7070",
			fmt.Sprintf("fanout: user dee: partition %d is owned by node-b:7070", fanout.PartitionOf("dee"))},
		{"user of a partition with no owner is refused", "eve", false, "",
			fmt.Sprintf("fanout: user eve: partition %d is owned by no node now", fanout.PartitionOf("eve"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingHook{}
			_, h := setup(t, fanout.HubConfig{Ownership: own, DeviceHooks: []fanout.DeviceHook{rec}})
			d, _, err := h.Join(tc.user, "phone", &fakeEndpoint{}, 1, nil)
			if tc.local {
				if err != nil || d == nil {
					t.Fatalf("Join = %v, %v; want a device", d, err)
				}
				if !h.Online(tc.user) || !slices.Equal(rec.takeEvents(), []string{"attached " + tc.user + "/phone"}) {
					t.Fatal("joined device is not online, or its hook event is missing")
				}
				return
			}
			var noe *fanout.NotOwnerError
			if !errors.Is(err, fanout.ErrNotOwner) || !errors.As(err, &noe) || d != nil {
				t.Fatalf("Join = %v, %v; want a NotOwnerError", d, err)
			}
			if *noe != (fanout.NotOwnerError{User: tc.user, Partition: fanout.PartitionOf(tc.user), Owner: tc.owner}) || err.Error() != tc.wantErr {
				t.Fatalf("error = %+v (%q)", *noe, err)
			}
			if h.Online(tc.user) || len(rec.takeEvents()) != 0 {
				t.Fatal("a refused device is attached")
			}
		})
	}
}

// receiverFunc adapts a function to a fanout.Receiver.
type receiverFunc func(user string, entries []engine.Entry)

func (f receiverFunc) Deliver(user string, entries []engine.Entry) { f(user, entries) }

// TestLocalBrokerPublishesLocalStreams: the broker gives its receiver
// the entries of local streams and refuses the others.
func TestLocalBrokerPublishesLocalStreams(t *testing.T) {
	remote := partitioned{fanout.PartitionOf("dee"): "node-b:7070"}
	entries := []engine.Entry{{Seq: 1}, {Seq: 2}}
	for _, tc := range []struct {
		name    string
		own     fanout.Ownership
		user    string
		wantErr bool
	}{
		{"local stream", remote, "bo", false},
		{"remote stream", remote, "dee", true},
		{"single node: every stream is local", fanout.SingleNode{Addr: "self:7070"}, "dee", false},
		{"no ownership means single node", nil, "dee", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			b := fanout.NewLocalBroker(receiverFunc(func(user string, entries []engine.Entry) {
				got = append(got, fmt.Sprintf("%s:%d", user, len(entries)))
			}), tc.own)
			err := b.Publish(tc.user, entries)
			if tc.wantErr {
				if !errors.Is(err, fanout.ErrNotOwner) || got != nil {
					t.Fatalf("Publish = %v, delivered %v; want ErrNotOwner and nothing", err, got)
				}
				return
			}
			if err != nil || !slices.Equal(got, []string{tc.user + ":2"}) {
				t.Fatalf("Publish = %v, delivered %v", err, got)
			}
		})
	}
}

// fakeBroker records what it publishes and fails as told.
type fakeBroker struct {
	err       error
	published []string
}

func (b *fakeBroker) Publish(user string, _ []engine.Entry) error {
	b.published = append(b.published, user)
	return b.err
}

// fakePresence says every user has the devices in it.
type fakePresence []string

func (p fakePresence) Online(string) bool      { return len(p) > 0 }
func (p fakePresence) Devices(string) []string { return slices.Clone(p) }

// TestPublisher: what the hooks are told and what is counted, for each
// outcome of publishing.
func TestPublisher(t *testing.T) {
	entries := []engine.Entry{{Seq: 7}, {Seq: 8}}
	for _, tc := range []struct {
		name       string
		err        error
		hooks      int
		wantCalls  int // per hook
		wantErrors float64
	}{
		{"published, no hooks", nil, 0, 0, 0},
		{"published, two hooks", nil, 2, 1, 0},
		{"not the owner: hooks are not told", &fanout.NotOwnerError{User: "dee", Owner: "node-b:7070"}, 1, 0, 1},
		{"broker failed: hooks are still told", errors.New("redis: connection refused"), 1, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			var hooks []fanout.OfflineHook
			var recs []*recordingHook
			for range tc.hooks {
				r := &recordingHook{}
				recs = append(recs, r)
				hooks = append(hooks, r)
			}
			b := &fakeBroker{err: tc.err}
			p, err := fanout.NewPublisher(fanout.PublisherConfig{
				Broker: b, Presence: fakePresence{"phone"}, Hooks: hooks, Registerer: reg,
			})
			if err != nil {
				t.Fatal(err)
			}
			p.Deliver("bo", entries)
			if !slices.Equal(b.published, []string{"bo"}) {
				t.Fatalf("published %v", b.published)
			}
			for i, r := range recs {
				calls := r.callsFor("bo")
				if len(calls) != tc.wantCalls {
					t.Fatalf("hook %d called %d times, want %d", i, len(calls), tc.wantCalls)
				}
				for _, c := range calls {
					if !slices.Equal(c.seqs, []uint64{7, 8}) || !slices.Equal(c.connected, []string{"phone"}) {
						t.Fatalf("hook %d told %+v", i, c)
					}
				}
			}
			wantHooked := 0.0
			if tc.hooks > 0 {
				wantHooked = float64(tc.wantCalls * len(entries))
			}
			want := map[string]float64{
				"ding_fanout_publish_errors_total": tc.wantErrors,
				"ding_fanout_hook_entries_total":   wantHooked,
			}
			if got := counters(t, reg); !maps.Equal(got, want) {
				t.Errorf("counters = %v, want %v", got, want)
			}
		})
	}
	if _, err := fanout.NewPublisher(fanout.PublisherConfig{Broker: &fakeBroker{}, Hooks: []fanout.OfflineHook{&recordingHook{}}}); err == nil {
		t.Error("a publisher with hooks and no presence was made")
	}
}

// counters returns the counters in reg, by name.
func counters(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[mf.GetName()] += m.GetCounter().GetValue()
		}
	}
	return out
}

// TestOfflineHookSeesConnectedDevices: through a real engine and hub, the
// hook is told each recipient's new entries and which of their devices
// are connected.
func TestOfflineHookSeesConnectedDevices(t *testing.T) {
	for _, tc := range []struct {
		name     string
		attach   []string // devices attached before the message
		detach   []string // of those, detached again before it
		wantConn []string
	}{
		{"no device connected", nil, nil, nil},
		{"one device connected", []string{"phone"}, nil, []string{"phone"}},
		{"two devices connected", []string{"phone", "laptop"}, nil, []string{"laptop", "phone"}},
		{"one of two detached", []string{"phone", "laptop"}, []string{"phone"}, []string{"laptop"}},
		{"every device detached", []string{"phone"}, []string{"phone"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingHook{}
			e, h := setupWired(t, fanout.HubConfig{}, viaBroker(rec))
			devs := map[string]*fakeEndpoint{}
			for _, name := range tc.attach {
				ep := &fakeEndpoint{}
				ep.dev, _ = h.Attach("bo", name, ep, 1)
				devs[name] = ep
			}
			for _, name := range tc.detach {
				devs[name].dev.Detach()
			}
			submitN(t, e, 2, "bo")
			waitFor(t, "two hook calls", func() bool { return len(rec.callsFor("bo")) == 2 })
			for i, c := range rec.callsFor("bo") {
				if !slices.Equal(c.seqs, []uint64{uint64(i + 1)}) || !slices.Equal(c.connected, tc.wantConn) {
					t.Fatalf("call %d: %+v; want seq %d, connected %v", i, c, i+1, tc.wantConn)
				}
			}
			for _, name := range tc.wantConn {
				waitFor(t, name+" delivery", func() bool { return len(devs[name].seqs()) == 2 })
			}
		})
	}
}

// TestDeviceHookEvents: a device hook sees each attachment once and each
// departure once, in the order the registry changed.
func TestDeviceHookEvents(t *testing.T) {
	rec := &recordingHook{}
	_, h := setup(t, fanout.HubConfig{DeviceHooks: []fanout.DeviceHook{rec}})
	var phone, phone2, laptop *fanout.Device
	for _, step := range []struct {
		name string
		do   func()
		want []string
	}{
		{"attach", func() { phone, _ = h.Attach("bo", "phone", &fakeEndpoint{}, 1) }, []string{"attached bo/phone"}},
		{"another device", func() { laptop, _ = h.Attach("bo", "laptop", &fakeEndpoint{}, 1) }, []string{"attached bo/laptop"}},
		{"same device again replaces", func() { phone2, _ = h.Attach("bo", "phone", &fakeEndpoint{}, 1) }, []string{"attached bo/phone"}},
		{"replaced device detaching is silent", func() { phone.Detach() }, nil},
		{"detach twice, told once", func() { laptop.Detach(); laptop.Detach() }, []string{"detached bo/laptop"}},
		{"kick", func() { h.Attach("bo", "web", &fakeEndpoint{}, 1); h.Kick("bo", fanout.ErrUserRemoved) },
			[]string{"attached bo/web", "detached bo/phone", "detached bo/web"}},
		{"detach after kick is silent", func() { phone2.Detach() }, nil},
	} {
		step.do()
		if got := rec.takeEvents(); !slices.Equal(got, step.want) {
			t.Fatalf("%s: events %v, want %v", step.name, got, step.want)
		}
	}
}
