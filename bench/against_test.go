package bench

import (
	"errors"
	"slices"
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
			{"burns/s (16228 ids, 100 READs)", "300", "", "", ""},
			{"level-3 (1 READ)", "7", "", "", ""},
		},
		Notes: []string{"new note"},
	}
	old := Table{
		Rows: []Row{
			{"p99", "2.00 ms", "", "", ""},
			{"rate", "100", "90 writes/s", "1.11×", "≥ 1×"},
			{"p99", "16.00 ms", "", "", ""},
			{"only old", "5", "", "", ""},
			{"level-1 (1 READ)", "8", "", "", ""}, // the same shape, not the same name: matched second
			{"burns/s (13738 ids, 100 READs)", "100", "", "", ""},
			{"level-3 (1 READ)", "9", "", "", ""},
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
		"| burns/s (16228 ids, 100 READs) | 300 | 100 | 3.00× |  |  |  |",
		"| level-3 (1 READ) | 7 | 9 | 0.78× |  |  |  |",
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

func TestCompare(t *testing.T) {
	table := func(bin string) Table {
		return Table{Setup: "setup.", Rows: []Row{{"rate", map[string]string{"new": "20", "old": "10"}[bin], "", "", ""}}}
	}
	var ran []string
	measure := func(bin string) (Table, error) {
		ran = append(ran, bin)
		if bin == "broken" {
			return Table{}, errors.New("no")
		}
		return table(bin), nil
	}
	tests := []struct {
		name, against string
		ran           []string
		wantErr       bool
		setup         string
		md            string
	}{
		{"alone", "", []string{"new"}, false, "setup.", "| rate | 20 |  |  |  |"},
		{"against", "old", []string{"new", "old"}, false,
			"setup. Order of this run: the baseline, then this dingd (new), then the --against dingd (old).",
			"| rate | 20 | 10 | 2.00× |  |  |  |"},
		{"against fails", "broken", []string{"new", "broken"}, true, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ran = nil
			got, err := Compare("new", tc.against, "the baseline", measure)
			if !slices.Equal(ran, tc.ran) {
				t.Errorf("measured %v, want %v in that order", ran, tc.ran)
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error: %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if got.Setup != tc.setup {
				t.Errorf("setup %q, want %q", got.Setup, tc.setup)
			}
			if md := got.Markdown(); !strings.Contains(md, tc.md) {
				t.Errorf("markdown lacks %q:\n%s", tc.md, md)
			}
		})
	}
}
