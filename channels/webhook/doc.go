// Package webhook delivers outbound event webhooks: the engine's durable
// event outbox (engine/webhook.go) to each subscription's URL, signed,
// in order, at least once.
//
// # Never lost
//
// An event is written to the outbox in the same commit batch as the
// change that causes it, and read from it only once that batch is
// durable (engine.Engine.WebhookEvents never reads past WebhookDurable).
// A subscription's cursor moves past an event only after the receiver
// answered 2xx (AckWebhook) or the event was parked as a dead letter
// (ParkWebhookEvent, which stores the event and moves the cursor in one
// batch). So a crash at any point (kill -9 between the commit and the
// delivery, during a delivery, before the acknowledgement is durable)
// leads to a redelivery of the same event, under the same id, never to a
// loss. Receivers deduplicate by webhook-id. The cursor's commit is
// pipelined with the next delivery (one commit in flight per worker, the
// latest cursor waiting behind it): a crash redelivers the events whose
// cursor was not durable yet, a few at most; bench/RESULTS.md has what
// it gains.
//
// # Order and isolation
//
// A Dispatcher runs one worker goroutine per subscription, which has at
// most one request in flight: the events a subscription's filter matches
// arrive in outbox order (per engine: with partitions, each partition's
// engine and the directory's have an outbox of their own, and the
// subscription a cursor and a worker in each; order holds per source).
// The next event waits until the one before was delivered or parked, and
// Config.Rate (dingd --webhook-rate) bounds a subscription's attempts per
// second. A
// worker reads the outbox in pages (Config.Batch) after its own cursor:
// a receiver that is down holds back only its own subscription, and the
// commit loop never waits for a receiver (it only writes events; the
// acknowledgements are small ops of their own). The outbox keeps an
// event until every subscription is past it, so a dead receiver grows
// the store by its backlog until its horizon parks its events
// (ding_webhook_backlog_events, and the DingWebhookBacklogGrowing alert).
//
// # Retries
//
// A failed attempt (a connection error, a timeout after Config.Timeout,
// any status but 2xx; a redirect is not followed and counts as a
// failure) is retried after an exponential backoff with jitter: the
// n-th retry waits a random time in [d/2, d], d = MinBackoff·2ⁿ capped at
// MaxBackoff. Once Config.Horizon (default 3 days) has passed since the
// event was written, the event is parked as a dead letter and the worker
// moves on. An admin lists dead letters (dingctl webhook deliveries) and
// replays them (dingctl webhook replay): a replayed dead letter is
// delivered again, before the subscription's newer events, with its
// original id, and dropped once delivered (parked again, after another
// horizon, if it still fails).
//
// # Signatures (Standard Webhooks)
//
// Every request is a POST of the event as JSON:
//
//	{"id":"evt_0_42","type":"ding.confirmed","timestamp":"2026-12-04T20:31:07.120Z",
//	 "data":{"ding":"01J...","from":"ops","recipient_index":0,"recipient":"ana",
//	         "ledger_event":"confirmed","channel":"inapp","answer":1,"choice":"on my way"}}
//
// with the headers
//
//	webhook-id:        evt_0_42 (stable across retries: deduplicate by it)
//	webhook-timestamp: unix seconds of this attempt
//	webhook-signature: v1,<base64 of HMAC-SHA256(key, id + "." + timestamp + "." + body)>
//
// where key is the base64-decoded part of the subscription's secret after
// "whsec_". A receiver recomputes the signature over the raw body,
// compares it in constant time, and rejects a timestamp more than a few
// minutes from its clock (replays). Sign and Verify implement it.
//
// # Metrics (on Config.Registerer)
//
//	ding_webhook_deliveries_total{outcome}   attempts: delivered, failed (retried), dead_lettered
//	ding_webhook_delivery_seconds            one attempt's duration, any outcome
//	ding_webhook_backlog_events{subscription,source} events after the subscription's cursor (some may not match its filter)
//
// Usage (internal/node does this for each engine):
//
//	d, err := webhook.New(webhook.Config{Sources: []webhook.Source{eng}, Registerer: reg})
//	defer d.Close()
package webhook
