package ratelimit

import "github.com/prometheus/client_golang/prometheus"

// Counter is ding_rate_limited_total{what}, for tests.
func (l *Limits) Counter(what string) prometheus.Counter { return l.counter.WithLabelValues(what) }
