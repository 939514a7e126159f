package bench

import (
	"testing"
	"time"
)

func TestHistogram(t *testing.T) {
	m := Metrics{
		`h_bucket{le="0.001"}`: 0,
		`h_bucket{le="0.002"}`: 50,
		`h_bucket{le="0.004"}`: 100,
		`h_bucket{le="+Inf"}`:  100,
		`h_sum`:                0.2,
	}
	h, err := m.Histogram("h")
	if err != nil {
		t.Fatal(err)
	}
	if h.Count() != 100 {
		t.Fatalf("count = %v, want 100", h.Count())
	}
	if got := h.Quantile(0.5); got != 2*time.Millisecond {
		t.Errorf("p50 = %v, want 2ms", got)
	}
	if got := h.BucketOf(0.99); got != "2 ms–4 ms" {
		t.Errorf("p99 bucket = %q", got)
	}
	if d := h.Minus(h); d.Count() != 0 {
		t.Errorf("h - h counts %v", d.Count())
	}
}

func TestMetricsSum(t *testing.T) {
	m := Metrics{
		`ding_x_total{a="1"}`: 2,
		`ding_x_total{a="2"}`: 3,
		`ding_x_totals`:       100, // another family with the name as a prefix
		`ding_y`:              7,
	}
	tests := []struct {
		name string
		want float64
	}{
		{"ding_x_total", 5},
		{"ding_y", 7},
		{"ding_z", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := m.Sum(tc.name); got != tc.want {
				t.Errorf("Sum(%q) = %v, want %v", tc.name, got, tc.want)
			}
		})
	}
}
