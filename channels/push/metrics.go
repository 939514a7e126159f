package push

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine"
)

type metrics struct {
	requests  *prometheus.CounterVec   // provider, outcome
	seconds   *prometheus.HistogramVec // provider
	retries   *prometheus.CounterVec   // provider
	dead      *prometheus.CounterVec   // provider
	notes     *prometheus.CounterVec   // result
	coalesced prometheus.Counter
	dropped   prometheus.Counter
	delay     prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, tokens func() float64) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_push_requests_total",
			Help: "Requests to the push providers, by provider (apns, fcm) and outcome: ok, unregistered (the token is dead: removed), rejected (a 4xx: final), error (a 5xx, a 429 or no answer: retried).",
		}, []string{"provider", "outcome"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ding_push_request_duration_seconds",
			Help:    "Duration of one request to a push provider, answered or not.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"provider"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_push_retries_total",
			Help: "Push requests tried again after a 5xx, a 429 or no answer, by provider.",
		}, []string{"provider"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_push_dead_tokens_removed_total",
			Help: "Push registrations removed because the provider said the token is dead (APNs 410 or BadDeviceToken, FCM UNREGISTERED), by provider.",
		}, []string{"provider"}),
		notes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ding_push_message_notifications_total",
			Help: "Notifications of new messages to devices without a connection, by result: sent, unregistered, failed.",
		}, []string{"result"}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ding_push_coalesced_total",
			Help: "Messages folded into another message's notification to the same device (at most one per device per coalescing window).",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ding_push_dropped_total",
			Help: "Users whose message notifications were dropped because the push queue was full (the messages stay in their streams).",
		}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ding_push_delay_seconds",
			Help:    "From a message's append to its notification accepted by the provider, for notifications not held back by coalescing.",
			Buckets: []float64{.01, .025, .05, .1, .2, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	for _, p := range []string{engine.PushAPNs, engine.PushFCM} {
		for _, o := range []string{"ok", "unregistered", "rejected", "error"} {
			m.requests.WithLabelValues(p, o)
		}
		m.retries.WithLabelValues(p)
		m.dead.WithLabelValues(p)
		m.seconds.WithLabelValues(p)
	}
	for _, r := range []string{"sent", "unregistered", "failed"} {
		m.notes.WithLabelValues(r)
	}
	cs := []prometheus.Collector{m.requests, m.seconds, m.retries, m.dead, m.notes, m.coalesced, m.dropped, m.delay}
	if tokens != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ding_push_registered_tokens",
			Help: "Push registrations stored (one per user and device).",
		}, tokens))
	}
	if reg != nil {
		for _, c := range cs {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) observe(provider string, d time.Duration, err error) {
	m.seconds.WithLabelValues(provider).Observe(d.Seconds())
	outcome := "ok"
	var se *SendError
	switch {
	case err == nil:
	case errors.As(err, &se) && se.Dead:
		outcome = "unregistered"
	case errors.As(err, &se) && se.Permanent:
		outcome = "rejected"
	default:
		outcome = "error"
	}
	m.requests.WithLabelValues(provider, outcome).Inc()
}
