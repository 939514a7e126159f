package bench

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Latencies collects samples; not safe for concurrent use (keep one per
// goroutine and Merge).
type Latencies []time.Duration

// Merge appends other's samples.
func (l *Latencies) Merge(other Latencies) { *l = append(*l, other...) }

// Quantile returns the q-quantile (0..1), or 0 without samples.
func (l Latencies) Quantile(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// Row is one line of a result table.
type Row struct {
	Metric, Ding, Baseline, Ratio, Goal string
}

// Table is one scenario's result.
type Table struct {
	Scenario string
	Setup    string
	Rows     []Row
	Notes    []string
}

// Markdown renders the table.
func (t Table) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n%s\n\n", t.Scenario, t.Setup)
	b.WriteString("| metric | Ding | baseline (same run) | ratio | goal |\n|---|---|---|---|---|\n")
	for _, r := range t.Rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r.Metric, r.Ding, r.Baseline, r.Ratio, r.Goal)
	}
	for _, n := range t.Notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func rate(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() }

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", a/b)
}
