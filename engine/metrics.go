package engine

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	submits *prometheus.CounterVec
	// The submits series, resolved once (counted per op on the publish loop).
	submitsOK, submitsDup, submitsRejected, submitsFailed prometheus.Counter
	submitSeconds                                         prometheus.Histogram
	commitSeconds                                         prometheus.Histogram
	batchOps                                              prometheus.Histogram
	queueFull                                             prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, queueDepth func() float64) (*metrics, error) {
	m := &metrics{
		submits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_engine_submits_total",
			Help: "Messages submitted, by result: ok, duplicate (client id seen before), rejected (invalid), failed (store error).",
		}, []string{"result"}),
		submitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ding_engine_submit_duration_seconds",
			Help:    "Time from a submit entering the commit queue to its durable acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ding_engine_commit_duration_seconds",
			Help:    "Time to write and fsync one group-commit batch.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		batchOps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ding_engine_commit_batch_ops",
			Help:    "Operations (submits, acks, reads) carried by one group-commit batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}),
		queueFull: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ding_engine_queue_full_total",
			Help: "Times an operation waited because the commit queue was full (back-pressure).",
		}),
	}
	m.submitsOK = m.submits.WithLabelValues("ok")
	m.submitsDup = m.submits.WithLabelValues("duplicate")
	m.submitsRejected = m.submits.WithLabelValues("rejected")
	m.submitsFailed = m.submits.WithLabelValues("failed")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{
		m.submits, m.submitSeconds, m.commitSeconds, m.batchOps, m.queueFull,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ding_engine_queue_depth",
			Help: "Operations waiting for the commit loop.",
		}, queueDepth),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
