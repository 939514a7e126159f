package main

import (
	"math"
	"os"
	"testing"
	"time"
)

func TestScheduleRotates(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := schedule{start: t0, warm: time.Second, round: 2 * time.Second, windows: 9}
	tests := []struct {
		name          string
		at            time.Duration
		kind          int
		counted, over bool
	}{
		{"warm-up", 500 * time.Millisecond, 0, false, false},
		{"round 0, plain", 1500 * time.Millisecond, 0, true, false},
		{"round 0, level 1", 3500 * time.Millisecond, 1, true, false},
		{"round 0, level 3", 5500 * time.Millisecond, 3, true, false},
		{"round 1 starts one later", 7500 * time.Millisecond, 1, true, false},
		{"round 1, last", 11500 * time.Millisecond, 0, true, false},
		{"round 2 starts with level 3", 13500 * time.Millisecond, 3, true, false},
		{"over", 19 * time.Second, 0, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, c, o := s.at(t0.Add(tc.at))
			if k != tc.kind || c != tc.counted || o != tc.over {
				t.Errorf("at(+%v) = %d, %v, %v; want %d, %v, %v", tc.at, k, c, o, tc.kind, tc.counted, tc.over)
			}
		})
	}
	// Every kind gets the same number of windows.
	n := map[int]int{}
	for i := range s.windows {
		n[s.kind(i)]++
	}
	for _, k := range kinds {
		if n[k] != 3 {
			t.Errorf("kind %d has %d windows, want 3", k, n[k])
		}
	}
}

func TestBacklogRate(t *testing.T) {
	t0 := time.Unix(1000, 0)
	// 10,000 burns all due at t0; the counter grows 100 per 20 ms (5,000/s)
	// from t0 until it has them all.
	dues := make([]time.Time, 10_000)
	for i := range dues {
		dues[i] = t0
	}
	var samples []counterSample
	for i := 0; i <= 100; i++ {
		samples = append(samples, counterSample{t0.Add(time.Duration(i) * 20 * time.Millisecond), float64(min(10_000, 100*i))})
	}
	rate, d := backlogRate(samples, dues, 1024)
	if math.Abs(rate-5000) > 1 {
		t.Errorf("rate = %.1f/s, want 5000", rate)
	}
	if d < 1700*time.Millisecond || d > 2*time.Second {
		t.Errorf("backlog lasted %v, want about 1.8-2s", d)
	}
	// Burns that keep up leave no backlog.
	if rate, _ := backlogRate(samples[:1], dues[:10], 1024); rate != 0 {
		t.Errorf("rate without a backlog = %v, want 0", rate)
	}
}

func TestHistogram(t *testing.T) {
	s := series{
		`h_bucket{le="0.001"}`: 0,
		`h_bucket{le="0.002"}`: 50,
		`h_bucket{le="0.004"}`: 100,
		`h_bucket{le="+Inf"}`:  100,
		`h_sum`:                0.2,
	}
	h, err := s.histogram("h")
	if err != nil {
		t.Fatal(err)
	}
	if h.count() != 100 {
		t.Fatalf("count = %v, want 100", h.count())
	}
	if got := h.quantile(0.5); got != 2*time.Millisecond {
		t.Errorf("p50 = %v, want 2ms", got)
	}
	if got := h.bucketOf(0.99); got != "2 ms–4 ms" {
		t.Errorf("p99 bucket = %q", got)
	}
	if d := h.minus(h); d.count() != 0 {
		t.Errorf("h - h counts %v", d.count())
	}
}

func TestWithEnvRestores(t *testing.T) {
	t.Setenv("DINGBENCH_TEST_A", "old")
	err := withEnv([]string{"DINGBENCH_TEST_A=new", "DINGBENCH_TEST_B=x"}, func() error {
		if v := os.Getenv("DINGBENCH_TEST_A"); v != "new" {
			t.Errorf("inside: A = %q", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v := os.Getenv("DINGBENCH_TEST_A"); v != "old" {
		t.Errorf("after: A = %q, want old", v)
	}
	if _, ok := os.LookupEnv("DINGBENCH_TEST_B"); ok {
		t.Error("after: B still set")
	}
}
