package bench

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Latencies collects samples; not safe for concurrent use (keep one per
// goroutine and Merge).
type Latencies []time.Duration

// Merge appends other's samples.
func (l *Latencies) Merge(other Latencies) { *l = append(*l, other...) }

// Quantile returns the q-quantile (0..1) by nearest rank: the smallest
// sample that at least a fraction q of the samples do not exceed (p99 of
// 1,000 samples is the 990th smallest; 1 is the largest). Without samples
// it returns 0.
func (l Latencies) Quantile(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	rank := int(math.Ceil(q*float64(len(s)) - 1e-9)) // 1-based; the epsilon absorbs 0.99*1000 = 990.0000000000001
	return s[min(len(s), max(rank, 1))-1]
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
	// Against, if set, is a second dingd's figures for the same rows
	// (Table.Versus).
	Against *Against
}

// Markdown renders the table. With Against set, the other dingd's figures
// and the ratio new/old stand between this dingd's and the baseline.
func (t Table) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n%s\n\n", t.Scenario, t.Setup)
	if t.Against != nil {
		b.WriteString("| metric | this dingd | --against dingd | new/old | baseline (same run) | new/baseline | goal |\n|---|---|---|---|---|---|---|\n")
	} else {
		b.WriteString("| metric | Ding | baseline (same run) | ratio | goal |\n|---|---|---|---|---|\n")
	}
	for i, r := range t.Rows {
		if t.Against != nil {
			old := ""
			if i < len(t.Against.Figures) {
				old = t.Against.Figures[i]
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", r.Metric, r.Ding, old, newOld(r.Ding, old), r.Baseline, r.Ratio, r.Goal)
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r.Metric, r.Ding, r.Baseline, r.Ratio, r.Goal)
	}
	for _, n := range t.Notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

// ms is the p-quantile of l in milliseconds, as ms prints it.
func (l Latencies) ms(p float64) string { return ms(l.Quantile(p)) }

// met is a goal's verdict as the tables print it after the goal.
func met(ok bool) string {
	if ok {
		return " (met)"
	}
	return " (NOT met)"
}

func rate(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() }

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", a/b)
}
