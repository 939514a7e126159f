// Package engine is Ding's core: the message model, durable storage
// through one group-commit pipeline, per-user streams with gap-free
// sequence numbers, per-device cursors and monotonic receipts; DINGs:
// urgent messages that escalate per recipient along a policy (in-app,
// SMS, voice) on durable timers until read or confirmed; announcements and
// their statistics; and secret chats, whose messages are masked, sealed
// with keys of their own and burned after reading (secret.go). It has no
// network code.
//
// # Where it sits
//
// Data flows one way (DESIGN.md: channels → engine → fanout):
//
//	channels (socket, httpapi, twilio webhooks)
//	   │  SubmitAsync, AckAsync, ReadAsync, Ding, Confirm, CreateChat, ...
//	   │  (validated on the caller's goroutine, then queued as an op:
//	   │   ACKs and fan-out chunks in the background lane, after submits)
//	   ▼
//	┌──────────────────────────── engine ─────────────────────────────┐
//	│ commit loop (internal/pipeline): ops → one batch → applied      │
//	│   each op is a feature's function of the batch's txn; features  │
//	│   keep their per-batch state in overlays (commit.go):           │
//	│   streams+receipts (stream.go) · DINGs (escalate.go)            │
//	│   statistics (rollup.go) · secret chats (secret.go)             │
//	│   fanout jobs (fanout.go) · outside changes (change.go)         │
//	│   relay to other partitions (relay.go)                          │
//	│ publish loop: fsync done → durable hooks → answer each op       │
//	│   → Sink.Deliver, sends to the dispatch workers                 │
//	│ timer loop (timer.go), fanout loop (fanout.go) queue ops too    │
//	└─────────────────────────────────────────────────────────────────┘
//	   │ Outbox → a pump → another partition's engine's ApplyRelay (relay.go)
//	   │ Sink (fanout.Publisher → Broker → Hub: who is online, encode once, write many)
//	   │ Notifier (channels/twilio: SMS, calls)
//	   ▼
//
// The store is an interface (engine/store, Pebble in production); the
// directory (package fanout) is read through Recipients, Contacts and
// ActiveFilter, and writes its records through the pipeline as Changes
// (change.go), so that offboarding is one atomic batch with the DINGs it
// stops and the secret messages it burns.
//
// # Contract
//
//   - Submit answers only after the message is fsync'd (package
//     engine/internal/pipeline; batch N+1 is built while N's fsync runs).
//   - Each user has one stream: entries at seq 1, 2, 3, ... with no gaps
//     above its trim mark (retention.go deletes old entries, never the
//     newest).
//     An entry is a message addressed to the user, a receipt event, a DING
//     event, a burn, or a secret chat event. Readers never see an entry
//     beyond the stream's durable head (stream.go).
//   - Each device has a cursor: the last seq it acknowledged. Acks are
//     cumulative. A message is delivered when any of the recipient's
//     devices acknowledged it, read when any of them marked it read.
//   - Receipt states only move forward, and every change is appended as an
//     event to the sender's stream (and, for reads, the reader's own, so
//     the reader's other devices learn it): one event per ack or read and
//     sender, listing the messages it moved.
//   - Nothing is trusted from memory alone: stream heads are loaded from
//     the store on first use. Start-up reads the timer, secret and relay
//     counters, checks the secret keyring against the store in one sorted pass, and
//     lists the live level-3 messages ('f'); it scans the secret states
//     ('b') only when keys were lost. Nothing else is scanned.
//   - A DING's pending steps are timers in the store; reading or confirming
//     (whichever its policy stops on) stops every later step in the same
//     batch; an SMS or call is sent at least once per step and a crash
//     causes at most one duplicate (see escalate.go).
//   - A secret message's plaintext and key never enter the store; its key
//     is erased (zeroed and synced, package keyring) once the batch that
//     burns it is durable, before the burn is published (see secret.go).
//   - Errors carry a Code (errors.go): whether the request was at fault,
//     whether a retry is safe, and a detail safe to show a client.
//
// # Goroutines
//
//	commit loop     builds and applies batches: every op's apply runs here
//	publish loop    waits for each batch's fsync, runs its durable hooks,
//	                answers its ops, calls the Sink, hands sends over
//	timer loop      finds due timers ('t' keys) and queues one op to fire them
//	fanout loop     queues one op per chunk of a message to many
//	dispatch (8)    make SMS and calls through the Notifier, then queue an op
//	                recording the outcome
//	startup burns   once, after Open, if level-3 or keyless messages remain
//	sweeper         every Retention.Interval, deletes what is past retention
//	                (retention.go) through background-lane ops
//
// Shutdown stops them in the reverse order of what feeds them (timer and
// fanout loops, sends in flight, then the pipeline drains its queue) and
// honours its context's deadline.
//
// # Key layout
//
// One byte of prefix, then fixed-width or 0x00-terminated parts. User and
// device names never contain 0x00 (see ValidName). Integers are big-endian
// so that keys sort numerically.
//
//	message   'm' | id (16)                         -> message record (body stored once)
//	inbox     'i' | user | 0x00 | seq (8)           -> stream entry (id and sender for a message)
//	cursor    'c' | user | 0x00 | device            -> seq (8)
//	watermark 'w' | user                            -> seq (8): highest seq any device acked
//	receipt   'r' | id (16) | user                  -> state (1) | delivered ms (8) | read ms (8)
//	dedupe    'd' | sender | 0x00 | client msg id   -> id (16)
//	trim mark 'T' | user                            -> seq (8): newest seq a retention sweep found past retention
//	directory 'u' | ...                             -> owned by package fanout
//
// DINGs (the DING's id is its message's id; idx is the recipient's index):
//
//	ding      'g' | id (16)                         -> DING record (sender, policy plan, choices, recipients)
//	recipient 'e' | id (16) | idx (2)               -> escalation state (status, next step, armed timers)
//	ledger    'l' | id (16) | idx (2) | n (4)       -> one ledger event
//	timer     't' | due ms (8) | id (16) | idx (2) | n (4) -> empty; the state lists it too
//	phone     'p' | E.164 | 0x00 | id (16) | idx (2) -> empty: a pending DING for that phone (SMS replies)
//	ref       'x' | provider reference (SID)        -> id (16) | idx (2) | channel (1) | attempt (1) [| acted (1)]
//	quota     'q' | kind (1) | scope | 0x00 | sub   -> count (8) per UTC day, or last DING time (8)
//	policy    'y' | name                            -> policy text
//	counter   'k' | name                            -> u64 ("timers": armed timers; "secrets": live secret messages;
//	                                                   "dir": the audit seq of the last removal Forget applied;
//	                                                   "relay" | to (4): see below)
//
// Secret chats (see secret.go; keys live in package keyring, not here):
//
//	chat      's' | chat (16)                       -> chat record (level, burn delay, members, pseudonyms)
//	user chat 'o' | user | 0x00 | chat (16)         -> empty
//	secret    'b' | id (16)                         -> a live secret message's state (parties, seq, deadlines)
//	user msg  'h' | user | 0x00 | id (16)           -> empty: a party's live secret messages (offboarding)
//	fleeting  'f' | id (16)                         -> empty: a live level-3 message (burned at start-up)
//	timer     't' | due ms (8) | id (16) | 0xFFFF | n (4) -> a burn (n=1) or unread expiry (n=2)
//
// Relay between partitions (relay.go; written only when Config.Placement
// is set; to and from are partitions):
//
//	outbox    'O' | to (4) | seq (8)                -> relay record: a message's recipients in to (and a secret one's chat; never its key), a stream entry, a receipt, or a secret chat
//	relayed   'I' | from (4)                        -> seq (8): the last record from partition from applied here
//	counter   'k' | "relay" | to (4)                -> u64: the last outbox seq allocated for to (records are
//	                                                   deleted once acknowledged, so the outbox's last key is not it)
//
// Outbound event webhooks (webhook.go; events written only while a
// subscription's filter matches them):
//
//	event     'W' | seq (8)                         -> webhook event: type, time, data (never a body, token or phone)
//	hook      'H' | subscription id                 -> subscription: url, event filter, secret, paused
//	cursor    'C' | subscription id                 -> seq (8): the events the subscription is done with
//	dead      'D' | subscription id | 0x00 | seq (8) -> a dead letter: the event, attempts, last error, replay mark
//	counter   'k' | "webhook"                       -> u64: the last event seq allocated
//
// Push registrations (push.go; channels/push sends):
//
//	push      'P' | user | 0x00 | device            -> push token record (JSON: provider, token, bundle id,
//	                                                   sandbox, no_preview, mute, updated; rare writes, never
//	                                                   on a message's path). Deleted on a dead token and
//	                                                   with the user's offboarding
//
// The records' own layouts (DING, recipient state, ledger event, chat,
// secret state, announcement counts, fanout job, relay record) are drawn in codec.go:
// binary, each led by a version byte; the JSON records of data
// directories written before 2026-12 are still read.
//
// The timer loop finds the next due timer with one seek of 't', so a
// million pending steps cost disk, not memory, and a restart fires overdue
// steps without a scan.
//
// A resume is one range scan of 'i'|user|0x00 from the device's cursor; a
// stream's head is one reverse seek; a message's receipts are one range
// scan of 'r'|id.
//
// # Crash points
//
// TestCrashPoints (crashpoint_test.go) holds the contract above to every
// write the store makes: it runs a workload through every step of the
// commit and publish path on Pebble over a file system that numbers its
// writes (package engine/store/pebblestore/crashfs), then, for each
// write, fails it or cuts the power just before it, reopens the store
// from what the disk kept, and checks that what was acknowledged is there
// (messages, receipts, cursors, escalation steps, burns), that Check
// finds nothing, and that what came after a failure was answered
// UNAVAILABLE rather than with a crash. A failing point prints its number
// and replays with -crash.point N; bench/RESULTS.md has the matrix.
//
// # Usage
//
//	e, err := engine.Open(engine.Config{Store: db})
//	res, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("hi")})
//	entries, err := e.Range("bo", 1, 100)  // bo's stream from seq 1
//	err = e.Ack(ctx, "bo", "phone", entries[len(entries)-1].Seq)
//	err = e.Read(ctx, "bo", res.ID)
//	d, err := e.Ding(ctx, engine.DingRequest{From: "ana", To: []string{"bo", "+14155550123"},
//		Text: "server down", Policy: "inapp,sms@5m,voice@15m until=confirmed"})
//	err = e.Confirm(ctx, "bo", d.ID, 0)
package engine
