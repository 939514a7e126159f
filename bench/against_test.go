package bench

import (
	"strings"
	"testing"
)

func TestLeadingFigure(t *testing.T) {
	tests := []struct {
		in   string
		v    float64
		unit string
		ok   bool
	}{
		{"13144", 13144, "", true},
		{"72.67 ms", 72.67, "ms", true},
		{"6.09 KiB", 6.09, "KiB", true},
		{"12.5% of sends", 12.5, "%", true},
		{"1,234 msgs/s", 1234, "msgs/s", true},
		{"0.45 s in 12.00 ms (0.04 cores)", 0.45, "s", true},
		{"3 (met)", 3, "", true},
		{"-2.5 ms", -2.5, "ms", true},
		{"with the ack (one batch)", 0, "", false},
		{"", 0, "", false},
		{"n/a", 0, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			v, unit, ok := leadingFigure(tc.in)
			if v != tc.v || unit != tc.unit || ok != tc.ok {
				t.Errorf("leadingFigure(%q) = %v, %q, %v; want %v, %q, %v", tc.in, v, unit, ok, tc.v, tc.unit, tc.ok)
			}
		})
	}
}

func TestNewOld(t *testing.T) {
	tests := []struct{ now, then, want string }{
		{"20000", "10000", "2.00×"},
		{"5.00 ms", "10.00 ms", "0.50×"},
		{"5.00 ms", "1.00 s", ""}, // units differ: not compared
		{"5.00 ms", "", ""},
		{"with the ack", "12.00 ms", ""},
		{"3", "0", "n/a"},
	}
	for _, tc := range tests {
		if got := newOld(tc.now, tc.then); got != tc.want {
			t.Errorf("newOld(%q, %q) = %q, want %q", tc.now, tc.then, got, tc.want)
		}
	}
}

func TestVersus(t *testing.T) {
	now := Table{
		Scenario: "s", Setup: "setup.",
		Rows: []Row{
			{"rate", "200", "100 writes/s", "2.00×", "≥ 1×"},
			{"p99", "4.00 ms", "", "", ""},
			{"only new", "1", "", "", ""},
			{"p99", "8.00 ms", "", "", ""}, // a metric named twice matches in order
		},
		Notes: []string{"new note"},
	}
	old := Table{
		Rows: []Row{
			{"p99", "2.00 ms", "", "", ""},
			{"rate", "100", "90 writes/s", "1.11×", "≥ 1×"},
			{"p99", "16.00 ms", "", "", ""},
			{"only old", "5", "", "", ""},
		},
		Notes: []string{"old note"},
	}
	md := now.Versus(old, "/tmp/base/dingd").Markdown()
	for _, want := range []string{
		"| metric | this dingd | --against dingd | new/old | baseline (same run) | new/baseline | goal |",
		"| rate | 200 | 100 | 2.00× | 100 writes/s | 2.00× | ≥ 1× |",
		"| p99 | 4.00 ms | 2.00 ms | 2.00× |  |  |  |",
		"| only new | 1 |  |  |  |  |  |",
		"| p99 | 8.00 ms | 16.00 ms | 0.50× |  |  |  |",
		"This dingd: new note",
		"--against dingd: old note",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "only old") {
		t.Errorf("a row only the old table has was shown:\n%s", md)
	}
}
