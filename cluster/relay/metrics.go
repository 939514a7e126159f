package relay

import "github.com/prometheus/client_golang/prometheus"

// metrics are a pump's; see the package doc.
type metrics struct {
	reg          prometheus.Registerer // nil: not registered
	relayed      *prometheus.CounterVec
	applyErrors  *prometheus.CounterVec
	originErrors *prometheus.CounterVec
	backlog      *prometheus.GaugeVec
	delay        prometheus.Histogram
	apply        prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_relay_records_total",
			Help: "Relay records the destination partition holds durably and the origin let go of.",
		}, []string{"from", "to"}),
		applyErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_relay_apply_errors_total",
			Help: "Relay batches a destination did not apply, by reason (gap, wrong_partition, bad_relay, no_destination, timeout, abandoned, or the engine's error code); each is retried.",
		}, []string{"from", "to", "reason"}),
		originErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_relay_origin_errors_total",
			Help: "Failures at the origin partition, by step (outbox: reading it, ack: deleting what was applied, dests: listing destinations at start); each is retried.",
		}, []string{"from", "step"}),
		backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ding_relay_backlog_records",
			Help: "Durable relay records in the origin's outbox that the destination has not acknowledged yet, as of the pump's last step for the pair.",
		}, []string{"from", "to"}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ding_relay_delay_seconds",
			Help:    "From a message's creation at its origin to its destination partition holding it durably (the relay's share of delivery across partitions), per message relayed.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ding_relay_apply_seconds",
			Help:    "How long a destination took to hold a relay batch durably and answer (ApplyRelay: for another node, the HTTP round trip), per batch applied.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
	}
	if reg == nil {
		return m, nil
	}
	cs := m.collectors()
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	m.reg = reg
	return m, nil
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.relayed, m.applyErrors, m.originErrors, m.backlog, m.delay, m.apply}
}

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors() {
		m.reg.Unregister(c)
	}
}
