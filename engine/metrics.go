package engine

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	submits *prometheus.CounterVec
	// The submits series, resolved once (counted per op on the publish loop).
	submitsOK, submitsDup, submitsRejected, submitsFailed prometheus.Counter
	submitSeconds                                         prometheus.Histogram
	commitSeconds                                         prometheus.Histogram
	buildSeconds, publishSeconds                          prometheus.Histogram
	batchOps                                              prometheus.Histogram
	queueFull                                             prometheus.Counter

	// Escalation.
	dings         *prometheus.CounterVec   // by result
	steps         *prometheus.CounterVec   // by channel, outcome
	refusals      *prometheus.CounterVec   // by reason
	lateness      prometheus.Histogram     // timer fire lateness
	timeToRead    *prometheus.HistogramVec // by channel
	timeToConfirm *prometheus.HistogramVec // by channel
	sendSeconds   *prometheus.HistogramVec // by channel
	sendsDropped  prometheus.Counter

	fanoutEntries prometheus.Counter

	// Secret chats.
	burns         *prometheus.CounterVec // by level, reason
	burnLateness  prometheus.Histogram
	chatsCreated  *prometheus.CounterVec // by level
	secretRefused *prometheus.CounterVec // by reason
	eraseFailures prometheus.Counter

	// Retention (retention.go).
	swept       *prometheus.CounterVec // by what
	sweepHeld   prometheus.Gauge
	sweepLast   prometheus.Gauge // unix seconds of the last sweep that finished
	sweepTook   prometheus.Gauge
	sweepFailed prometheus.Counter
}

// sweep records one retention sweep.
func (m *metrics) sweep(r *SweepReport, err error) {
	if err != nil {
		m.sweepFailed.Inc()
	}
	for what, n := range map[string]int{"entries": r.Entries, "messages": r.Messages, "dings": r.Dings,
		"dedupe_keys": r.Dedupe, "quota_keys": r.Quotas, "refs": r.Refs, "stat_days": r.Days} {
		m.swept.WithLabelValues(what).Add(float64(n))
	}
	if err == nil {
		m.sweepHeld.Set(float64(r.Held))
		m.sweepLast.SetToCurrentTime()
		m.sweepTook.Set(r.Took.Seconds())
	}
}

func (m *metrics) step(ch Channel, outcome string) {
	m.steps.WithLabelValues(ch.String(), outcome).Inc()
}

func newMetrics(reg prometheus.Registerer, queueDepth, pendingSteps, liveSecrets func() float64) (*metrics, error) {
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
			Help:    "Time to write and fsync one group-commit batch (from its apply to durable; the next batch is built meanwhile).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		buildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ding_engine_batch_build_duration_seconds",
			Help:    "Time the commit loop spent applying one batch's operations before writing it.",
			Buckets: prometheus.ExponentialBuckets(0.00002, 2, 16),
		}),
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ding_engine_publish_duration_seconds",
			Help:    "Time the publish loop spent on one durable batch: answering its operations and handing its entries to delivery.",
			Buckets: prometheus.ExponentialBuckets(0.00002, 2, 16),
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
	escBuckets := []float64{1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200}
	m.dings = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ding_dings_total",
		Help: "DING requests, by result: created, duplicate (client id seen before), refused (quota or quiet hours), invalid.",
	}, []string{"result"})
	m.steps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ding_escalation_steps_total",
		Help: "Escalation sends and in-app reminders, by channel and outcome: sent, reminder, not_configured, rejected, error (outcome unknown, retried), quota, no_phone, no_email, stopped (decided, then dropped because the recipient confirmed first).",
	}, []string{"channel", "outcome"})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ding_ding_refusals_total",
		Help: "DINGs, recipients or steps refused, by reason: sender_daily_limit, recipient_interval, quiet_hours, sms_budget, voice_budget.",
	}, []string{"reason"})
	m.lateness = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ding_escalation_timer_lateness_seconds",
		Help:    "How late escalation timers fire after their due time.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	})
	m.timeToRead = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ding_ding_time_to_read_seconds",
		Help:    "Time from a DING to the read that stopped a recipient's escalation, by the channel that reached them.",
		Buckets: escBuckets,
	}, []string{"channel"})
	m.timeToConfirm = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ding_ding_time_to_confirm_seconds",
		Help:    "Time from a DING to a recipient's confirmation, by the channel that reached them.",
		Buckets: escBuckets,
	}, []string{"channel"})
	m.sendSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ding_escalation_send_duration_seconds",
		Help:    "Time the notifier took to accept (or refuse) one SMS or call, by channel.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
	}, []string{"channel"})
	m.sendsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ding_escalation_sends_deferred_total",
		Help: "Sends that found the dispatch queue full; each is made by its recovery timer instead.",
	})
	m.fanoutEntries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ding_engine_fanout_entries_total",
		Help: "Stream entries written by background fanout of messages to many (announcements, big groups).",
	})
	m.burns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ding_secret_burns_total",
		Help: "Secret messages burned, by level (1-3) and reason: read (the burn delay after the first read passed), unread_expiry, offboarding, restart (a level-3 key lost with the process), key_lost (a level-1/2 key missing at start-up: a store restored from a backup, which holds no keys).",
	}, []string{"level", "reason"})
	m.burnLateness = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ding_secret_burn_lateness_seconds",
		Help:    "How late secret messages burn after their deadline (read burns and unread expiries), measured when the burn is durable and its key erased, just before the burn events are published.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	})
	m.chatsCreated = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ding_secret_chats_created_total",
		Help: "Secret chats created, by level.",
	}, []string{"level"})
	m.secretRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ding_secret_refusals_total",
		Help: "Submissions refused to protect a secret message, by reason: forward (a forward or quote of a secret message).",
	}, []string{"reason"})
	m.eraseFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ding_secret_key_erase_failures_total",
		Help: "Times erasing secret message keys from the keyring file failed: a burned message's key is still on disk until the next start erases it.",
	})
	m.swept = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ding_retention_deleted_total",
		Help: "What retention sweeps deleted, by what: entries (stream entries), messages (with receipts), dings (DING records, among messages), dedupe_keys, quota_keys, refs (provider references), stat_days.",
	}, []string{"what"})
	m.sweepHeld = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ding_retention_held",
		Help: "Entries and messages past retention that the last sweep kept because a DING or must-confirm message they belong to is not settled.",
	})
	m.sweepLast = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ding_retention_last_sweep_timestamp_seconds",
		Help: "When the last retention sweep finished without error (unix seconds; 0: none yet since start).",
	})
	m.sweepTook = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ding_retention_sweep_duration_seconds",
		Help: "How long the last retention sweep took.",
	})
	m.sweepFailed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ding_retention_sweep_failures_total",
		Help: "Retention sweeps that stopped on an error (refused writes included); the next one starts over.",
	})
	for _, w := range []string{"entries", "messages", "dings", "dedupe_keys", "quota_keys", "refs", "stat_days"} {
		m.swept.WithLabelValues(w)
	}
	for _, l := range []string{"1", "2", "3"} {
		for _, r := range []string{BurnRead, BurnUnread, BurnOffboarding} {
			m.burns.WithLabelValues(l, r)
		}
	}
	m.burns.WithLabelValues("3", BurnRestart)
	m.burns.WithLabelValues("1", BurnKeyLost)
	m.burns.WithLabelValues("2", BurnKeyLost)
	m.secretRefused.WithLabelValues("forward")
	m.submitsOK = m.submits.WithLabelValues("ok")
	m.submitsDup = m.submits.WithLabelValues("duplicate")
	m.submitsRejected = m.submits.WithLabelValues("rejected")
	m.submitsFailed = m.submits.WithLabelValues("failed")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{
		m.submits, m.submitSeconds, m.commitSeconds, m.buildSeconds, m.publishSeconds, m.batchOps, m.queueFull,
		m.dings, m.steps, m.refusals, m.lateness, m.timeToRead, m.timeToConfirm, m.sendSeconds, m.sendsDropped, m.fanoutEntries,
		m.burns, m.burnLateness, m.chatsCreated, m.secretRefused, m.eraseFailures,
		m.swept, m.sweepHeld, m.sweepLast, m.sweepTook, m.sweepFailed,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ding_secret_messages",
			Help: "Secret messages stored and not yet burned.",
		}, liveSecrets),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ding_escalation_pending_steps",
			Help: "Escalation timers armed: planned steps, retries and send recoveries.",
		}, pendingSteps),
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
