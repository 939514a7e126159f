package fanout

import (
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/engine"
)

// PublisherConfig configures a Publisher. Broker is required, and
// Presence if there are Hooks.
type PublisherConfig struct {
	// Broker carries the entries to the devices.
	Broker Broker
	// Presence tells the hooks which devices are connected; in process,
	// the hub.
	Presence Presence
	// Hooks are told about each user's entries after they are published;
	// none means none.
	Hooks []OfflineHook
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the publisher's metrics; nil means none.
	Registerer prometheus.Registerer
}

// Publisher is the engine's Sink: it publishes each user's durable
// entries through the Broker, then tells the offline hooks. It has no
// goroutine and no state but its configuration.
type Publisher struct {
	broker   Broker
	presence Presence
	hooks    []OfflineHook
	log      *slog.Logger

	errors      prometheus.Counter // ding_fanout_publish_errors_total
	hookEntries prometheus.Counter // ding_fanout_hook_entries_total
}

var _ engine.Sink = (*Publisher)(nil)

// NewPublisher returns a Publisher for cfg.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if cfg.Broker == nil || (len(cfg.Hooks) > 0 && cfg.Presence == nil) {
		return nil, errors.New("fanout: publisher config: Broker is required, and Presence with Hooks")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Publisher{
		broker: cfg.Broker, presence: cfg.Presence, hooks: cfg.Hooks, log: cfg.Logger,
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "ding_fanout_publish_errors_total",
			Help: "Batches of a user's entries the broker did not publish to every node (the stream is not this node's, or a node was unreachable)."}),
		hookEntries: prometheus.NewCounter(prometheus.CounterOpts{Name: "ding_fanout_hook_entries_total",
			Help: "Stream entries handed to the offline hooks (push), counted once whatever the number of hooks."}),
	}
	if r := cfg.Registerer; r != nil {
		for _, c := range []prometheus.Collector{p.errors, p.hookEntries} {
			if err := r.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return p, nil
}

// Deliver implements engine.Sink: it runs on the engine's publish loop,
// once per user and committed batch. It publishes the entries, then, if
// there are hooks, asks Presence which devices are connected and tells
// each hook. Nothing is told about a stream this node does not own (its
// owner does that); another publish error is counted and logged, and the
// hooks are still told (the devices that missed the entries catch up).
func (p *Publisher) Deliver(user string, entries []engine.Entry) {
	if err := p.broker.Publish(user, entries); err != nil && !p.failed(user, len(entries), err) {
		return
	}
	if len(p.hooks) == 0 {
		return
	}
	connected := p.presence.Devices(user)
	for _, h := range p.hooks {
		h.Appended(user, entries, connected)
	}
	p.hookEntries.Add(float64(len(entries)))
}

// failed counts and logs a publish error, and reports whether the hooks
// are to be told anyway (not if the stream is not this node's). It is
// apart from Deliver to keep the logging off Deliver's fast path.
func (p *Publisher) failed(user string, entries int, err error) (tellHooks bool) {
	p.errors.Inc()
	p.log.Error("fanout: publish failed", "user", user, "entries", entries, "err", err)
	return !errors.Is(err, ErrNotOwner)
}
