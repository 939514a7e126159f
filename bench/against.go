package bench

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode"
)

// Against is a second dingd's figures in a table (dingbench --against):
// the same scenario measured, in the same dingbench run, with another
// binary, typically the previous commit's. Markdown then shows them in a
// column of their own beside this dingd's, with the ratio new/old.
type Against struct {
	// Bin is the other dingd binary.
	Bin string
	// Figures holds the other binary's Ding figure for each of the
	// table's rows, in the same order ("" where it has no such row).
	Figures []string
}

// Versus returns t with old's figures beside its own: old is the same
// scenario measured with the dingd at bin. Rows are matched by their
// Metric, first as written, then by its shape (numbers aside: a metric
// may name a count that differs between runs); old's notes follow t's,
// each side's marked. t's Baseline and Goal columns stay (old's
// baselines are not shown).
func (t Table) Versus(old Table, bin string) Table {
	a := &Against{Bin: bin, Figures: make([]string, len(t.Rows))}
	used := make([]bool, len(old.Rows))
	matched := make([]bool, len(t.Rows))
	for _, key := range []func(string) string{func(m string) string { return m }, metricShape} {
		for i, r := range t.Rows {
			if matched[i] {
				continue
			}
			for j, o := range old.Rows {
				// A metric named twice is matched in order of appearance.
				if !used[j] && key(o.Metric) == key(r.Metric) {
					a.Figures[i], used[j], matched[i] = o.Ding, true, true
					break
				}
			}
		}
	}
	notes := make([]string, 0, len(t.Notes)+len(old.Notes))
	for _, n := range t.Notes {
		notes = append(notes, "This dingd: "+n)
	}
	for _, n := range old.Notes {
		notes = append(notes, "--against dingd: "+n)
	}
	t.Notes, t.Against = notes, a
	return t
}

// numberRE matches the numbers in a metric's name.
var numberRE = regexp.MustCompile(`[0-9][0-9.,]*`)

// metricShape is a metric's name with each number replaced by "#".
func metricShape(m string) string { return numberRE.ReplaceAllString(m, "#") }

// Compare measures a scenario with the dingd at bin and, when against is
// set, then with the one at against, and returns bin's table or the two
// merged (Table.Versus). order completes the caption's sentence "Order of
// this run: ..." with what ran before the two binaries (", then" and the
// binaries are added), e.g. "the baseline"; empty means nothing did.
func Compare(bin, against, order string, measure func(bin string) (Table, error)) (Table, error) {
	t, err := measure(bin)
	if err != nil || against == "" {
		return t, err
	}
	old, err := measure(against)
	if err != nil {
		return Table{}, fmt.Errorf("--against %s: %w", against, err)
	}
	t = t.Versus(old, against)
	if order != "" {
		order += ", then "
	}
	t.Setup += fmt.Sprintf(" Order of this run: %sthis dingd (%s), then the --against dingd (%s).", order, bin, against)
	return t, nil
}

// newOld is the ratio of two figures as the table shows them: their
// leading numbers, when both have one and the same unit after it ("12.5
// ms" and "10.0 ms": 1.25×); "" when they cannot be compared.
func newOld(now, then string) string {
	a, ua, ok1 := leadingFigure(now)
	b, ub, ok2 := leadingFigure(then)
	if !ok1 || !ok2 || ua != ub {
		return ""
	}
	return ratio(a, b)
}

// leadingFigure splits a figure as the tables print it ("13144", "72.67
// ms", "6.09 KiB", "12.0% of sends") into its leading number and the word
// after it (its unit; "" for none). ok is false when it does not start
// with a number.
func leadingFigure(s string) (v float64, unit string, ok bool) {
	s = strings.TrimSpace(s)
	end := 0
	for end < len(s) && (s[end] >= '0' && s[end] <= '9' || s[end] == '.' || s[end] == ',' ||
		end == 0 && (s[end] == '-' || s[end] == '+')) {
		end++
	}
	num := strings.ReplaceAll(s[:end], ",", "")
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, "", false
	}
	rest := strings.TrimLeftFunc(s[end:], unicode.IsSpace)
	if i := strings.IndexFunc(rest, func(r rune) bool { return unicode.IsSpace(r) || r == '(' || r == ';' }); i >= 0 {
		rest = rest[:i]
	}
	return v, rest, true
}
