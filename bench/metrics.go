package bench

import (
	"bufio"
	"cmp"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Metrics is one scrape of dingd's /metrics: each sample's value by its
// series name as exposed, labels included
// (`ding_secret_burns_total{level="1",reason="read"}`).
type Metrics map[string]float64

// Scrape reads dingd's /metrics once, so that figures taken from it
// (counters at a window's boundary, a histogram) are of the same moment.
func (s *Server) Scrape() (Metrics, error) {
	resp, err := s.web().Get(s.url("/metrics"))
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", s.HTTP, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", s.HTTP, resp.Status)
	}
	m := Metrics{}
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
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// Sum returns the sum of a metric family's samples, over all their labels
// (histograms: their _sum and _count are addressed by those names).
func (m Metrics) Sum(name string) float64 {
	total := 0.0
	for k, v := range m {
		if rest, ok := strings.CutPrefix(k, name); ok && (rest == "" || rest[0] == '{') {
			total += v
		}
	}
	return total
}

// Histogram is a Prometheus histogram's cumulative bucket counts.
type Histogram struct {
	le []float64 // upper bounds, ascending, the last +Inf
	n  []float64 // cumulative counts
}

// Histogram returns the histogram name (one without labels).
func (m Metrics) Histogram(name string) (Histogram, error) {
	prefix := name + `_bucket{le="`
	type bucket struct{ le, n float64 }
	var bs []bucket
	for k, v := range m {
		bound, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		le, err := strconv.ParseFloat(strings.TrimSuffix(bound, `"}`), 64) // "+Inf" parses
		if err != nil {
			return Histogram{}, fmt.Errorf("%s bucket %q: %w", name, bound, err)
		}
		bs = append(bs, bucket{le, v})
	}
	if len(bs) == 0 {
		return Histogram{}, fmt.Errorf("no %s in /metrics", name)
	}
	// Map order is random: sort the buckets by bound.
	slices.SortFunc(bs, func(a, b bucket) int { return cmp.Compare(a.le, b.le) })
	var h Histogram
	for _, b := range bs {
		h.le, h.n = append(h.le, b.le), append(h.n, b.n)
	}
	return h, nil
}

// Minus returns the observations made between o and h.
func (h Histogram) Minus(o Histogram) Histogram {
	d := Histogram{le: h.le, n: slices.Clone(h.n)}
	for i := range d.n {
		if i < len(o.n) {
			d.n[i] -= o.n[i]
		}
	}
	return d
}

// Count returns the number of observations.
func (h Histogram) Count() float64 {
	if len(h.n) == 0 {
		return 0
	}
	return h.n[len(h.n)-1]
}

// Quantile estimates the q-quantile as Prometheus's histogram_quantile
// does: linearly inside the bucket that holds it.
func (h Histogram) Quantile(q float64) time.Duration {
	total := h.Count()
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

// BucketOf names the bucket holding the q-quantile, "1 ms–2 ms", since
// interpolation inside a doubling bucket says little.
func (h Histogram) BucketOf(q float64) string {
	total := h.Count()
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
