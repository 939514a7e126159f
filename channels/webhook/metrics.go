package webhook

import "github.com/prometheus/client_golang/prometheus"

// metrics are a dispatcher's; see the package doc.
type metrics struct {
	reg        prometheus.Registerer // nil: not registered
	deliveries *prometheus.CounterVec
	latency    prometheus.Histogram
	backlog    *prometheus.GaugeVec
}

// The outcomes of ding_webhook_deliveries_total.
const (
	outcomeDelivered    = "delivered"
	outcomeFailed       = "failed"
	outcomeDeadLettered = "dead_lettered"
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_webhook_deliveries_total",
			Help: "Webhook delivery attempts, by outcome: delivered (2xx), failed (retried later), dead_lettered (given up after the horizon).",
		}, []string{"outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ding_webhook_delivery_seconds",
			Help:    "Duration of one webhook delivery attempt, whatever its outcome.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ding_webhook_backlog_events",
			Help: "Durable webhook events after the subscription's cursor in the source's outbox (not yet delivered, parked or skipped), as of its worker's last step.",
		}, []string{"subscription", "source"}),
	}
	for _, o := range []string{outcomeDelivered, outcomeFailed, outcomeDeadLettered} {
		m.deliveries.WithLabelValues(o)
	}
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{m.deliveries, m.latency, m.backlog}
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

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{m.deliveries, m.latency, m.backlog} {
		m.reg.Unregister(c)
	}
}
