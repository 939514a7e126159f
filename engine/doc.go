// Package engine is Ding's core: the message model, durable storage through
// one group-commit pipeline, per-user streams with gap-free sequence
// numbers, per-device cursors and monotonic receipts. It has no network
// code; the edges (package channels/...) call it and package fanout
// receives what it commits through the Sink interface.
//
// # Contract
//
//   - Submit answers only after the message is fsync'd (see commit.go).
//   - Each user has one stream: entries at seq 1, 2, 3, ... with no gaps.
//     An entry is a message addressed to the user, or a receipt event.
//   - Each device has a cursor: the last seq it acknowledged. Acks are
//     cumulative. A message is delivered when any of the recipient's
//     devices acknowledged it, read when any of them marked it read.
//   - Receipt states only move forward, and every change is appended as an
//     event to the sender's stream (and, for reads, the reader's own, so
//     the reader's other devices learn it): one event per ack or read and
//     sender, listing the messages it moved.
//   - Nothing is trusted from memory alone: heads are loaded from the
//     store on first use, and start-up scans nothing.
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
//	directory 'u' | ...                             -> owned by package fanout
//
// A resume is one range scan of 'i'|user|0x00 from the device's cursor; a
// stream's head is one reverse seek; a message's receipts are one range
// scan of 'r'|id.
//
// # Usage
//
//	e, err := engine.Open(engine.Config{Store: db})
//	res, err := e.Submit(ctx, engine.Submission{From: "ana", To: []string{"bo"}, Kind: engine.KindText, Body: []byte("hi")})
//	entries, err := e.Range("bo", 1, 100)  // bo's stream from seq 1
//	err = e.Ack(ctx, "bo", "phone", entries[len(entries)-1].Seq)
//	err = e.Read(ctx, "bo", res.ID)
package engine
