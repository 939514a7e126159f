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

func TestLatenciesQuantile(t *testing.T) {
	var oneToThousand Latencies
	for i := 1000; i >= 1; i-- { // unsorted on purpose
		oneToThousand = append(oneToThousand, time.Duration(i)*time.Millisecond)
	}
	tests := []struct {
		name string
		l    Latencies
		q    float64
		want time.Duration
	}{
		{"none", nil, 0.99, 0},
		{"one sample", Latencies{7}, 0.999, 7},
		{"p50 of 1..1000", oneToThousand, 0.5, 500 * time.Millisecond},
		{"p99 of 1..1000", oneToThousand, 0.99, 990 * time.Millisecond},
		{"p99.9 of 1..1000", oneToThousand, 0.999, 999 * time.Millisecond},
		{"max", oneToThousand, 1, 1000 * time.Millisecond},
		{"min", oneToThousand, 0, time.Millisecond},
		{"p99 of 10", Latencies{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 0.99, 10},
		{"p50 of 3", Latencies{30, 10, 20}, 0.5, 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.l.Quantile(tc.q); got != tc.want {
				t.Errorf("Quantile(%v) = %v, want %v", tc.q, got, tc.want)
			}
		})
	}
	if oneToThousand[0] != time.Second {
		t.Error("Quantile sorted its receiver")
	}
}
