package httpapi

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/dingmq/ding/engine"
)

// Outbound event webhooks (package channels/webhook delivers them; the
// engine stores the subscriptions and the outbox). Every route needs the
// "webhooks" permission:
//
//	POST   /v1/webhooks               {"url","events":["ding.confirmed","user.*",...],"description"}
//	                                  -> 201 the subscription with its "secret" (whsec_...), shown only here;
//	                                     400 BAD_REQUEST naming a bad url (not absolute http(s), user info,
//	                                     a fragment) or an unknown event type. Private and loopback
//	                                     addresses are accepted: receivers are often on the same network
//	GET    /v1/webhooks               -> {"webhooks":[{"id","url","events","description","paused","created","cursor","backlog"}],"event_types":[...]}
//	GET    /v1/webhooks/{id}          -> one, without its secret
//	DELETE /v1/webhooks/{id}          -> {"id","removed":true}; its undelivered events and dead letters go
//	POST   /v1/webhooks/{id}/pause    -> the subscription; its events wait in the outbox
//	POST   /v1/webhooks/{id}/resume   -> the subscription
//	GET    /v1/webhooks/{id}/deliveries?after=SEQ&limit=N
//	                                  -> {"dead_letters":[{"seq","id","type","timestamp","attempts","last_error","parked","replay"}],"next"}
//	                                     (with partitions: up to limit from each outbox, after applying to each's seqs)
//	POST   /v1/webhooks/{id}/replay   {"ids":["evt_0_12",...]} (empty or absent: all) -> {"replayed": n}: delivered
//	                                     again, before newer events, with their original ids

// Webhooks is what the webhook routes use. *engine.Engine implements it.
type Webhooks interface {
	AddWebhook(ctx context.Context, w engine.Webhook) (engine.Webhook, error)
	Webhooks() ([]engine.Webhook, error)
	Webhook(id string) (engine.Webhook, error)
	RemoveWebhook(ctx context.Context, id string) error
	PauseWebhook(ctx context.Context, id string, paused bool) (engine.Webhook, error)
	// WebhookBacklog is how many durable events are after w's cursor(s).
	WebhookBacklog(w engine.Webhook) uint64
	WebhookDeadLetters(id string, after uint64, max int, onlyReplay bool) ([]engine.DeadLetter, error)
	// ReplayWebhook marks dead letters, by event id (all: none given),
	// for another delivery.
	ReplayWebhook(ctx context.Context, id string, events []string) (int, error)
}

var _ Webhooks = (*engine.Engine)(nil)

func (a *API) hooks() (Webhooks, error) {
	if a.cfg.Hooks == nil {
		reason := a.cfg.HooksRefusal
		if reason == "" {
			reason = "webhooks are not configured on this server"
		}
		return nil, errf(http.StatusNotImplemented, "UNSUPPORTED", "%s", reason)
	}
	return a.cfg.Hooks, nil
}

// webhookView is a subscription as the API shows it.
type webhookView struct {
	ID          string    `json:"id"`
	URL         string    `json:"url"`
	Events      []string  `json:"events"`
	Description string    `json:"description,omitempty"`
	Paused      bool      `json:"paused"`
	Created     time.Time `json:"created"`
	Cursor      uint64    `json:"cursor"`
	Backlog     uint64    `json:"backlog"` // events after the cursor (some may not match the filter)
	Secret      string    `json:"secret,omitempty"`
}

func viewWebhook(w engine.Webhook, backlog uint64, withSecret bool) webhookView {
	v := webhookView{ID: w.ID, URL: w.URL, Events: w.Events, Description: w.Description, Paused: w.Paused,
		Created: w.Created, Cursor: w.Cursor, Backlog: backlog}
	if withSecret {
		v.Secret = w.Secret
	}
	return v
}

func (a *API) addWebhook(r *http.Request) (int, any, error) {
	h, err := a.hooks()
	if err != nil {
		return 0, nil, err
	}
	var req struct {
		URL         string   `json:"url"`
		Events      []string `json:"events"`
		Description string   `json:"description"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	w, err := h.AddWebhook(r.Context(), engine.Webhook{URL: req.URL, Events: req.Events, Description: req.Description})
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, viewWebhook(w, 0, true), nil
}

func (a *API) listWebhooks(r *http.Request) (int, any, error) {
	h, err := a.hooks()
	if err != nil {
		return 0, nil, err
	}
	ws, err := h.Webhooks()
	if err != nil {
		return 0, nil, err
	}
	out := make([]webhookView, 0, len(ws))
	for _, w := range ws {
		out = append(out, viewWebhook(w, h.WebhookBacklog(w), false))
	}
	return http.StatusOK, map[string]any{"webhooks": out, "event_types": engine.WebhookEventTypes()}, nil
}

func (a *API) getWebhook(r *http.Request) (int, any, error) {
	h, err := a.hooks()
	if err != nil {
		return 0, nil, err
	}
	w, err := h.Webhook(r.PathValue("id"))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, viewWebhook(w, h.WebhookBacklog(w), false), nil
}

func (a *API) deleteWebhook(r *http.Request) (int, any, error) {
	h, err := a.hooks()
	if err != nil {
		return 0, nil, err
	}
	if err := h.RemoveWebhook(r.Context(), r.PathValue("id")); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"id": r.PathValue("id"), "removed": true}, nil
}

func (a *API) pauseWebhook(paused bool) func(r *http.Request) (int, any, error) {
	return func(r *http.Request) (int, any, error) {
		h, err := a.hooks()
		if err != nil {
			return 0, nil, err
		}
		w, err := h.PauseWebhook(r.Context(), r.PathValue("id"), paused)
		if err != nil {
			return 0, nil, err
		}
		return http.StatusOK, viewWebhook(w, h.WebhookBacklog(w), false), nil
	}
}

func (a *API) webhookDeliveries(r *http.Request) (int, any, error) {
	h, err := a.hooks()
	if err != nil {
		return 0, nil, err
	}
	id := r.PathValue("id")
	if _, err := h.Webhook(id); err != nil {
		return 0, nil, err
	}
	q := r.URL.Query()
	after, limit := uint64(0), 100
	if s := q.Get("after"); s != "" {
		if after, err = strconv.ParseUint(s, 10, 64); err != nil {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "after: not a sequence number")
		}
	}
	if s := q.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > 1000 {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "limit: 1 to 1000")
		}
	}
	dls, err := h.WebhookDeadLetters(id, after, limit, false)
	if err != nil {
		return 0, nil, err
	}
	type view struct {
		Seq       uint64    `json:"seq"`
		ID        string    `json:"id"`
		Type      string    `json:"type"`
		Timestamp time.Time `json:"timestamp"`
		Attempts  int       `json:"attempts"`
		LastError string    `json:"last_error"`
		Parked    time.Time `json:"parked"`
		Replay    bool      `json:"replay"`
	}
	out := make([]view, 0, len(dls))
	next := uint64(0)
	for _, dl := range dls {
		out = append(out, view{Seq: dl.Event.Seq, ID: engine.WebhookEventID(dl.Source, dl.Event.Seq), Type: dl.Event.Type,
			Timestamp: dl.Event.At, Attempts: dl.Attempts, LastError: dl.LastError, Parked: dl.Parked, Replay: dl.Replay})
		next = dl.Event.Seq
	}
	resp := map[string]any{"dead_letters": out}
	if len(dls) == limit {
		resp["next"] = next
	}
	return http.StatusOK, resp, nil
}

func (a *API) replayWebhook(r *http.Request) (int, any, error) {
	h, err := a.hooks()
	if err != nil {
		return 0, nil, err
	}
	var req struct {
		IDs []string `json:"ids"`
	}
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return 0, nil, err
		}
	}
	n, err := h.ReplayWebhook(r.Context(), r.PathValue("id"), req.IDs)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"replayed": n}, nil
}
