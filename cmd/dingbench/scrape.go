package main

import (
	"bufio"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// series is one /metrics scrape: each sample's value by its series name
// as exposed, labels included (`ding_secret_burns_total{level="1",reason="read"}`).
type series map[string]float64

// scrape reads dingd's /metrics at addr (its admin HTTP address).
func scrape(addr string) (series, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", addr, resp.Status)
	}
	s := series{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		s[line[:i]] = v
	}
	return s, sc.Err()
}

// burns is the number of burns of a level for a reason.
func (s series) burns(level int, reason string) float64 {
	return s[fmt.Sprintf(`ding_secret_burns_total{level="%d",reason="%s"}`, level, reason)]
}

// histogram is a Prometheus histogram's cumulative bucket counts.
type histogram struct {
	le []float64 // upper bounds, ascending, the last +Inf
	n  []float64 // cumulative counts
}

// histogram returns the histogram name (one without labels) from s.
func (s series) histogram(name string) (histogram, error) {
	prefix := name + `_bucket{le="`
	var h histogram
	for k, v := range s {
		bound, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		le, err := strconv.ParseFloat(strings.TrimSuffix(bound, `"}`), 64) // "+Inf" parses
		if err != nil {
			return histogram{}, fmt.Errorf("%s bucket %q: %w", name, bound, err)
		}
		h.le = append(h.le, le)
		h.n = append(h.n, v)
	}
	if len(h.le) == 0 {
		return histogram{}, fmt.Errorf("no %s in /metrics", name)
	}
	// Map order is random: sort the buckets by bound (counts are
	// cumulative, so they sort the same way).
	idx := make([]int, len(h.le))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmpFloat(h.le[a], h.le[b]) })
	out := histogram{le: make([]float64, len(idx)), n: make([]float64, len(idx))}
	for i, j := range idx {
		out.le[i], out.n[i] = h.le[j], h.n[j]
	}
	return out, nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// minus returns the observations made between o and h.
func (h histogram) minus(o histogram) histogram {
	d := histogram{le: h.le, n: slices.Clone(h.n)}
	for i := range d.n {
		if i < len(o.n) {
			d.n[i] -= o.n[i]
		}
	}
	return d
}

func (h histogram) count() float64 {
	if len(h.n) == 0 {
		return 0
	}
	return h.n[len(h.n)-1]
}

// quantile estimates the q-quantile as Prometheus's histogram_quantile
// does: linearly inside the bucket that holds it.
func (h histogram) quantile(q float64) time.Duration {
	total := h.count()
	if total == 0 {
		return 0
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for i, n := range h.n {
		if n >= rank {
			if math.IsInf(h.le[i], 1) {
				return time.Duration(lower * 1e9)
			}
			frac := 1.0
			if n > below {
				frac = (rank - below) / (n - below)
			}
			return time.Duration((lower + (h.le[i]-lower)*frac) * 1e9)
		}
		lower, below = h.le[i], n
	}
	return time.Duration(lower * 1e9)
}

// bucketOf names the bucket holding the q-quantile, "1–2 ms", since
// interpolation inside a doubling bucket says little.
func (h histogram) bucketOf(q float64) string {
	total := h.count()
	if total == 0 {
		return "no samples"
	}
	rank := q * total
	lower := 0.0
	for i, n := range h.n {
		if n >= rank {
			if math.IsInf(h.le[i], 1) {
				return fmt.Sprintf("> %s", secs(lower))
			}
			return fmt.Sprintf("%s–%s", secs(lower), secs(h.le[i]))
		}
		lower = h.le[i]
	}
	return "?"
}

func secs(s float64) string {
	if s < 1 {
		return fmt.Sprintf("%g ms", s*1000)
	}
	return fmt.Sprintf("%g s", s)
}
