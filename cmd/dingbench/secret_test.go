package main

import (
	"math"
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
	// Burns that keep up leave no backlog: the same counter, with only
	// 10 burns due (never more than floor waiting).
	if rate, _ := backlogRate(samples, dues[:10], 1024); rate != 0 {
		t.Errorf("rate without a backlog = %v, want 0", rate)
	}
}
