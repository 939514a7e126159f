package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/dingmq/ding/channels/httpapi"
	"github.com/dingmq/ding/channels/webhook"
	"github.com/dingmq/ding/engine"
)

// hookEngines is every engine with an event outbox: the partitions'
// attached now and the directory's, the first partition's first (it
// answers reads). A limit for stage 5a: the dispatcher's sources and the
// subscriptions' engines are those attached at start.
func (s *partitionSet) hookEngines() []*engine.Engine {
	return append(s.engines(), s.dirEng)
}

func (s *partitionSet) hookSources() []webhook.Source {
	var out []webhook.Source
	for _, e := range s.hookEngines() {
		out = append(out, e)
	}
	return out
}

// hookRouter manages webhook subscriptions over several engines (with
// partitions): each holds every subscription, with the same id and
// secret, and a cursor of its own. A change is made on each engine in
// turn; one that fails half-way leaves the subscription on some engines,
// which a retry (RemoveWebhook, PauseWebhook) completes: they skip the
// engines that do not have it. Reads answer from the first engine.
type hookRouter struct {
	engs []*engine.Engine // the first answers reads
}

var _ httpapi.Webhooks = hookRouter{}

// AddWebhook creates the subscription on the first engine (which makes
// its id and secret), then on the others; on a failure it removes it
// from those that have it.
func (r hookRouter) AddWebhook(ctx context.Context, w engine.Webhook) (engine.Webhook, error) {
	first, err := r.engs[0].AddWebhook(ctx, w)
	if err != nil {
		return engine.Webhook{}, err
	}
	w.ID, w.Secret = first.ID, first.Secret
	for i, e := range r.engs[1:] {
		if _, err := e.AddWebhook(ctx, w); err != nil {
			for _, done := range r.engs[:i+1] {
				_ = done.RemoveWebhook(context.WithoutCancel(ctx), w.ID) // a retry of remove finishes what fails here
			}
			return engine.Webhook{}, fmt.Errorf("webhook %s on outbox %s: %w", w.ID, e.WebhookSource(), err)
		}
	}
	return first, nil
}

func (r hookRouter) Webhooks() ([]engine.Webhook, error) { return r.engs[0].Webhooks() }

func (r hookRouter) Webhook(id string) (engine.Webhook, error) { return r.engs[0].Webhook(id) }

// each runs fn on every engine; an engine without the subscription is
// skipped (ErrNoWebhook only if none has it).
func (r hookRouter) each(id string, fn func(e *engine.Engine) error) error {
	found := false
	for _, e := range r.engs {
		err := fn(e)
		if errors.Is(err, engine.ErrNoWebhook) {
			continue
		}
		if err != nil {
			return fmt.Errorf("webhook %s on outbox %s: %w", id, e.WebhookSource(), err)
		}
		found = true
	}
	if !found {
		return fmt.Errorf("%w: %q", engine.ErrNoWebhook, id)
	}
	return nil
}

func (r hookRouter) RemoveWebhook(ctx context.Context, id string) error {
	return r.each(id, func(e *engine.Engine) error { return e.RemoveWebhook(ctx, id) })
}

func (r hookRouter) PauseWebhook(ctx context.Context, id string, paused bool) (engine.Webhook, error) {
	if err := r.each(id, func(e *engine.Engine) error { _, err := e.PauseWebhook(ctx, id, paused); return err }); err != nil {
		return engine.Webhook{}, err
	}
	return r.engs[0].Webhook(id)
}

// WebhookBacklog sums the subscription's backlog over the outboxes.
func (r hookRouter) WebhookBacklog(w engine.Webhook) uint64 {
	var n uint64
	for _, e := range r.engs {
		if ew, err := e.Webhook(w.ID); err == nil {
			n += e.WebhookBacklog(ew)
		}
	}
	return n
}

// WebhookDeadLetters lists up to max from each outbox (after applying to
// each one's seqs), by when they were parked, up to max in all.
func (r hookRouter) WebhookDeadLetters(id string, after uint64, max int, onlyReplay bool) ([]engine.DeadLetter, error) {
	var out []engine.DeadLetter
	for _, e := range r.engs {
		dls, err := e.WebhookDeadLetters(id, after, max, onlyReplay)
		if err != nil {
			return nil, err
		}
		out = append(out, dls...)
	}
	slices.SortStableFunc(out, func(a, b engine.DeadLetter) int { return cmp.Compare(a.Parked.UnixNano(), b.Parked.UnixNano()) })
	if len(out) > max {
		out = out[:max]
	}
	return out, nil
}

func (r hookRouter) ReplayWebhook(ctx context.Context, id string, events []string) (int, error) {
	n := 0
	err := r.each(id, func(e *engine.Engine) error {
		k, err := e.ReplayWebhook(ctx, id, events)
		n += k
		return err
	})
	return n, err
}
