package twilio

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requestsTotal *prometheus.CounterVec   // kind, status
	seconds       *prometheus.HistogramVec // kind
	webhooksTotal *prometheus.CounterVec   // endpoint, result
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requestsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_twilio_requests_total",
			Help: "Twilio REST requests (kind sms or call), by status: ok, rejected (certainly not accepted), error (outcome unknown).",
		}, []string{"kind", "status"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ding_twilio_request_duration_seconds",
			Help:    "Duration of Twilio REST requests, by kind.",
			Buckets: prometheus.DefBuckets,
		}, []string{"kind"}),
		webhooksTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_twilio_webhooks_total",
			Help: "Twilio webhook requests, by endpoint and result: ok (handled or ignored), forged (bad signature), bad_request, unknown (no such SID or pending DING), not_understood (a reply or keypress that did not confirm; recorded), error (reporting failed).",
		}, []string{"endpoint", "result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requestsTotal, m.seconds, m.webhooksTotal} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) requests(kind, status string) { m.requestsTotal.WithLabelValues(kind, status).Inc() }

func (m *metrics) latency(kind string, d time.Duration) {
	m.seconds.WithLabelValues(kind).Observe(d.Seconds())
}

func (m *metrics) webhook(endpoint, result string) {
	m.webhooksTotal.WithLabelValues(endpoint, result).Inc()
}
