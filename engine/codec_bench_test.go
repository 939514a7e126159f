package engine

import (
	"encoding/json"
	"testing"
)

// BenchmarkRecordCodec encodes and decodes each record the commit loop
// reads and writes, in its binary form beside the JSON the engine wrote
// before (json.Marshal and json.Unmarshal of the same struct), in the same
// run. bytes/record is the size of the stored record.
//
//	go test ./engine -run '^$' -bench RecordCodec -count 5 | tee codec.txt
//	benchstat -col /format codec.txt
func BenchmarkRecordCodec(b *testing.B) {
	for _, rc := range recordCases() {
		b.Run("record="+rc.name, rc.bench)
	}
}

func benchCodec[T any](b *testing.B, c codec[T], v T) {
	b.Run("format=binary", func(b *testing.B) {
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			enc := c.enc(&v)
			var x T
			if err := c.dec(enc, &x); err != nil {
				b.Fatal(err)
			}
			n = len(enc)
		}
		b.ReportMetric(float64(n), "bytes/record")
	})
	b.Run("format=json", func(b *testing.B) {
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			enc, err := json.Marshal(&v)
			if err != nil {
				b.Fatal(err)
			}
			var x T
			if err := json.Unmarshal(enc, &x); err != nil {
				b.Fatal(err)
			}
			n = len(enc)
		}
		b.ReportMetric(float64(n), "bytes/record")
	})
}
