package fanout_test

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
)

// nopSource has no stored entries: a new device is live after one step.
type nopSource struct{}

func (nopSource) Range(string, uint64, int) ([]engine.Entry, error) { return nil, nil }

// countingEndpoint accepts every frame and counts them.
type countingEndpoint struct{ sent atomic.Int64 }

func (c *countingEndpoint) Send([]byte) bool { c.sent.Add(1); return true }
func (c *countingEndpoint) Room() int        { return 1 << 30 }
func (c *countingEndpoint) Fail(error)       {}

// nopHook is an offline hook that takes nothing.
type nopHook struct{}

func (nopHook) Appended(string, []engine.Entry, []string) {}

// BenchmarkDeliver measures one user's committed batch (one entry)
// reaching that user's live devices, as the engine's publish loop does it
// once per user and batch (an announcement to 100k users: 100k calls):
//
//	path=direct   the engine's Sink is the hub (the path before the broker)
//	path=broker   Publisher → LocalBroker → hub, no hooks (dingd's path)
//	path=hooked   the same with one offline hook (Presence.Devices per call)
//
// Compare with: go test ./fanout -run '^$' -bench Deliver -count 10 > b.txt;
// benchstat -col /path b.txt
func BenchmarkDeliver(b *testing.B) {
	for _, devices := range []int{0, 1, 4} {
		for _, path := range []struct {
			name string
			w    wiring
		}{
			{"direct", direct},
			{"broker", viaBroker()},
			{"hooked", viaBroker(nopHook{})},
		} {
			b.Run(fmt.Sprintf("devices=%d/path=%s", devices, path.name), func(b *testing.B) {
				h, err := fanout.NewHub(fanout.HubConfig{
					Source: nopSource{},
					Encode: func(dst []byte, e engine.Entry) []byte { return binary.BigEndian.AppendUint64(dst, e.Seq) },
				})
				if err != nil {
					b.Fatal(err)
				}
				defer h.Close()
				sink := path.w(b, h)
				const user = "user-42"
				eps := make([]*countingEndpoint, devices)
				for i := range eps {
					eps[i] = &countingEndpoint{}
					h.Attach(user, fmt.Sprintf("device-%d", i), eps[i], 1)
				}
				entries := []engine.Entry{{Seq: 1, Kind: engine.EntryMessage}}
				for _, ep := range eps { // until every device is live
					for ep.sent.Load() == 0 {
						sink.Deliver(user, entries)
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					entries[0].Seq = uint64(i) + 2
					sink.Deliver(user, entries)
				}
				b.StopTimer()
				for i, ep := range eps {
					if got := ep.sent.Load(); got != int64(b.N)+1 {
						b.Fatalf("device %d got %d entries, want %d", i, got, b.N+1)
					}
				}
			})
		}
	}
}
