package httpapi

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
)

// normalize copies what it changes and leaves types that marshal
// themselves, byte slices and omitempty fields as JSON would have them.
func TestNormalizeCopies(t *testing.T) {
	at := time.Date(2026, 12, 4, 5, 48, 35, 121_724_255, time.FixedZone("X", 3600))
	type Inner struct {
		At    time.Time  `json:"at"`
		Ptr   *time.Time `json:"ptr,omitempty"`
		List  []string   `json:"list"`
		Empty []string   `json:"empty,omitempty"`
	}
	type outer struct {
		*Inner
		Items   []Inner           `json:"items"`
		Map     map[string]any    `json:"map"`
		Raw     json.RawMessage   `json:"raw"`
		Bytes   []byte            `json:"bytes"`
		ID      engine.ID         `json:"id"`
		Refused []engine.Refusal  `json:"refused"`
		Times   map[string]string `json:"times"`
		hidden  []string
	}
	in := &outer{
		Inner: &Inner{At: at, Ptr: &at},
		Items: []Inner{{At: at}},
		Map:   map[string]any{"at": at, "nil": []int(nil)},
		Raw:   json.RawMessage(`{"a":1}`),
	}
	got, err := json.Marshal(normalize(in))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"at":"2026-12-04T04:48:35.121Z","ptr":"2026-12-04T04:48:35.121Z","list":[],"items":[{"at":"2026-12-04T04:48:35.121Z","list":[]}],` +
		`"map":{"at":"2026-12-04T04:48:35.121Z","nil":[]},"raw":{"a":1},"bytes":null,"id":"00000000000000000000000000","refused":[],"times":{}}`
	if string(got) != want {
		t.Fatalf("normalize:\n got %s\nwant %s", got, want)
	}
	if !in.At.Equal(at) || in.At.Nanosecond() != 121_724_255 || *in.Ptr != at || in.Items[0].At != at || in.Map["at"] != at || in.List != nil {
		t.Fatalf("normalize changed its input: %+v", in)
	}
	if normalize(nil) != nil {
		t.Fatal("normalize(nil) is not nil")
	}
}
