import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff, decodeFrame, decodeFrames, encodeFrame, FrameError, FrameType, StreamPosition } from "../src/index.js";
import * as pb from "../src/gen/ding_pb.js";

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(" ");

test("frames encode as PROTOCOL.md §2's worked examples", () => {
  assert.equal(hex(encodeFrame(FrameType.PING, pb.PingSchema, { nonce: 7n })), "00 00 00 03 0a 08 07");
  assert.equal(hex(encodeFrame(FrameType.PING, pb.PingSchema, {})), "00 00 00 01 0a");
  assert.equal(hex(encodeFrame(FrameType.ACK, pb.AckSchema, { seq: 300n })), "00 00 00 04 07 08 ac 02");
  assert.equal(
    hex(encodeFrame(FrameType.HELLO, pb.HelloSchema, { version: 1, token: "t", device: "d" })),
    "00 00 00 09 01 08 01 12 01 74 1a 01 64",
  );
  // cursor is a proto3 optional: an explicit 0 is on the wire.
  assert.equal(
    hex(encodeFrame(FrameType.HELLO, pb.HelloSchema, { version: 1, token: "t", device: "d", cursor: 0n })),
    "00 00 00 0b 01 08 01 12 01 74 1a 01 64 20 00",
  );
});

test("decodeFrame reads a server frame and its 64-bit fields", () => {
  const f = decodeFrame(encodeFrame(FrameType.DELIVER, pb.DeliverSchema, { seq: 2n ** 60n, id: "x", body: new Uint8Array([1, 2]) }));
  assert.equal(f.type, FrameType.DELIVER);
  if (f.type !== FrameType.DELIVER) return;
  assert.equal(f.msg.seq, 2n ** 60n);
  assert.deepEqual([...f.msg.body], [1, 2]);
  // A view into a larger buffer (as a WebSocket may hand over) decodes too.
  const big = new Uint8Array(100);
  const fr = encodeFrame(FrameType.PONG, pb.PongSchema, { nonce: 9n });
  big.set(fr, 10);
  const g = decodeFrame(big.subarray(10, 10 + fr.length));
  assert.equal(g.type, FrameType.PONG);
});

test("decodeFrame refuses what is not one whole server frame", () => {
  assert.throws(() => decodeFrame(new Uint8Array([0, 0, 0])), FrameError); // short
  assert.throws(() => decodeFrame(new Uint8Array([0, 0, 0, 2, 10])), FrameError); // prefix says more than there is
  assert.throws(() => decodeFrame(new Uint8Array([0, 0, 0, 1, 10, 0])), FrameError); // two frames' worth
  assert.throws(() => decodeFrame(encodeFrame(FrameType.HELLO, pb.HelloSchema, {})), FrameError); // a client type
  assert.throws(() => decodeFrame(new Uint8Array([0, 0, 0, 1, 99])), FrameError); // unknown type
  assert.throws(() => decodeFrame(new Uint8Array([0, 0, 0, 3, 10, 0x08, 0x80])), FrameError); // truncated varint
});

test("StreamPosition drops repeats and follows the resume point", () => {
  const p = new StreamPosition();
  p.welcome(5n); // no cursor: the stream starts at resume_from
  assert.equal(p.last, 4n);
  assert.ok(p.accept(5n));
  assert.ok(!p.accept(5n)); // repeat
  assert.ok(!p.accept(3n));
  assert.ok(p.accept(6n));
  p.welcome(7n); // reconnect with cursor 6
  assert.equal(p.last, 6n);
  p.welcome(3n); // clamped: the server was restored from an older backup
  assert.equal(p.last, 2n);
  assert.ok(p.accept(3n));
  p.welcome(10n); // retention deleted 4..9: keep last, take what comes
  assert.equal(p.last, 3n);
  assert.ok(p.accept(10n));
  const q = new StreamPosition(0n);
  assert.ok(q.accept(1n));
});

test("Backoff: random in [b/2, b], doubling to the cap, reset", () => {
  const lo = new Backoff(50, 400, () => 0);
  assert.deepEqual([lo.next(), lo.next(), lo.next(), lo.next(), lo.next()], [25, 50, 100, 200, 200]);
  lo.reset();
  assert.equal(lo.next(), 25);
  const hi = new Backoff(50, 400, () => 1);
  assert.deepEqual([hi.next(), hi.next(), hi.next(), hi.next(), hi.next()], [50, 100, 200, 400, 400]);
});

test("decodeFrames takes whole frames back to back (dingd's catch-up does that), nothing partial", () => {
  const a = encodeFrame(FrameType.PONG, pb.PongSchema, { nonce: 1n });
  const b = encodeFrame(FrameType.DELIVER, pb.DeliverSchema, { seq: 2n, id: "x" });
  const both = new Uint8Array(a.length + b.length);
  both.set(a);
  both.set(b, a.length);
  assert.deepEqual(decodeFrames(both).map((f) => f.type), [FrameType.PONG, FrameType.DELIVER]);
  assert.throws(() => decodeFrames(both.subarray(0, both.length - 1)), FrameError);
  assert.throws(() => decodeFrames(new Uint8Array([0, 0, 0, 0, 10])), FrameError);
});
