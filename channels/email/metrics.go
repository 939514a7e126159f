package email

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	sentTotal  *prometheus.CounterVec // outcome
	seconds    prometheus.Histogram
	linksTotal *prometheus.CounterVec // result
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		sentTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_email_sent_total",
			Help: "E-mails handed to the SMTP server, by outcome: ok (accepted), rejected (a 5xx or an invalid address: certainly not accepted, not retried), error (a 4xx, or the server unreachable: retried).",
		}, []string{"outcome"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ding_email_send_duration_seconds",
			Help:    "Duration of one e-mail send: connect, TLS, auth and the message.",
			Buckets: prometheus.DefBuckets,
		}),
		linksTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_email_links_total",
			Help: "Requests to e-mail confirmation links, by result: shown (the page with the button), confirmed, used (already confirmed: nothing changed), forged, expired, not_found, bad_request, error.",
		}, []string{"result"}),
	}
	// Every outcome and result from the start, at zero: a rate over them
	// needs the series before the first e-mail.
	for _, o := range []string{"ok", "rejected", "error"} {
		m.sentTotal.WithLabelValues(o)
	}
	for _, r := range []string{"shown", "confirmed", "used", "forged", "expired", "not_found", "bad_request", "error"} {
		m.linksTotal.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.sentTotal, m.seconds, m.linksTotal} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) sent(outcome string)     { m.sentTotal.WithLabelValues(outcome).Inc() }
func (m *metrics) latency(d time.Duration) { m.seconds.Observe(d.Seconds()) }
func (m *metrics) link(result string)      { m.linksTotal.WithLabelValues(result).Inc() }
