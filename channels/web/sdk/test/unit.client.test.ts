import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { ClosedError, connect, DingError, DisconnectedError, MemoryCursorStore, type Message } from "../src/index.js";
import * as pb from "../src/gen/ding_pb.js";
import { FakeWS } from "./fakews.js";

afterEach(() => FakeWS.reset());

const opts = { url: "ws://ding.test/ws", token: "tok", device: "web", WebSocket: FakeWS, minBackoffMs: 1, maxBackoffMs: 2 };

/** Opens the next socket and completes the handshake; returns it and the HELLO. */
async function accept(welcome: Parameters<FakeWS["welcome"]>[0] = {}) {
  const s = await FakeWS.next();
  s.open();
  const hello = await s.read();
  assert.equal(hello.type, pb.FrameType.HELLO);
  s.welcome(welcome);
  return { s, hello: hello.msg as pb.Hello };
}

function deliver(s: FakeWS, seq: bigint, id = `m${seq}`) {
  s.push(pb.FrameType.DELIVER, pb.DeliverSchema, { seq, id, from: "lee", to: ["kim"], kind: pb.Kind.TEXT, body: new TextEncoder().encode("hi") });
}

/** Resolves with the first n values the subscription gets. */
function collect<T>(sub: (fn: (v: T) => void) => () => void, n: number): Promise<T[]> {
  return new Promise((resolve) => {
    const got: T[] = [];
    const off = sub((v) => {
      got.push(v);
      if (got.length === n) {
        off();
        resolve(got);
      }
    });
  });
}

test("HELLO carries token, device, subprotocol and the stored cursor; entries are acked after the app got them", async () => {
  const store = new MemoryCursorStore();
  await store.set("web", { user: "kim", seq: 4n });
  const pc = connect({ ...opts, store });
  const { s, hello } = await accept({ resumeFrom: 5n, head: 4n });
  const c = await pc;
  assert.equal(s.protocols, "ding.v1");
  assert.equal(hello.token, "tok");
  assert.equal(hello.device, "web");
  assert.equal(hello.cursor, 4n);
  assert.equal((await s.expect(pb.FrameType.ACK)).msg.seq, 4n); // once after the handshake
  const got = collect<Message>((fn) => c.on("message", fn), 2);
  deliver(s, 5n);
  deliver(s, 6n);
  assert.deepEqual((await got).map((m) => m.seq), [5n, 6n]);
  assert.equal((await s.expect(pb.FrameType.ACK)).msg.seq, 6n); // both in one ack
  assert.deepEqual(await store.get("web"), { user: "kim", seq: 6n });
  await c.close();
});

test("a reconnect resumes from the cursor and drops repeats by seq", async () => {
  const pc = connect(opts);
  const first = await accept({ resumeFrom: 1n });
  const c = await pc;
  const seen: bigint[] = [];
  c.on("message", (m) => seen.push(m.seq));
  c.on("receipt", (r) => seen.push(r.seq));
  deliver(first.s, 1n);
  first.s.push(pb.FrameType.RECEIPT, pb.ReceiptSchema, { seq: 2n, ids: ["x"], user: "lee", state: pb.State.READ_STATE });
  await first.s.expect(pb.FrameType.ACK);
  first.s.drop(1006);
  const second = await accept({ resumeFrom: 3n });
  assert.equal(second.hello.cursor, 2n);
  // A server that sends again what the app has (no cursor stored yet) gets nothing through twice.
  deliver(second.s, 1n);
  deliver(second.s, 2n);
  const more = collect<Message>((fn) => c.on("message", fn), 1);
  deliver(second.s, 3n);
  await more;
  assert.deepEqual(seen, [1n, 2n, 3n]);
  await c.close();
});

test("send resolves on SUBMIT_ACK, is resent with the same client_msg_id after a drop, and rejects on its ERROR", async () => {
  const pc = connect(opts);
  const first = await accept();
  const c = await pc;
  const p = c.send(["lee"], "hello");
  const sub = (await first.s.expect(pb.FrameType.SUBMIT)).msg as pb.Submit;
  assert.deepEqual(sub.to, ["lee"]);
  assert.equal(new TextDecoder().decode(sub.body), "hello");
  assert.equal(sub.clientMsgId.length > 24, true);
  first.s.drop(1006); // no ack: the outcome is unknown, so it is resent
  const second = await accept();
  const again = (await second.s.expect(pb.FrameType.SUBMIT)).msg as pb.Submit;
  assert.equal(again.clientMsgId, sub.clientMsgId);
  second.s.push(pb.FrameType.SUBMIT_ACK, pb.SubmitAckSchema, { ref: again.ref, id: "01ID", createdMs: 5n, duplicate: true });
  assert.deepEqual(await p, { id: "01ID", createdMs: 5, duplicate: true });

  const bad = c.send(["zed"], "x");
  const s2 = (await second.s.expect(pb.FrameType.SUBMIT)).msg as pb.Submit;
  second.s.push(pb.FrameType.ERROR, pb.ErrorSchema, { code: pb.Code.UNKNOWN_RECIPIENT, ref: s2.ref, detail: "zed" });
  await assert.rejects(bad, (e: unknown) => e instanceof DingError && e.code === "UNKNOWN_RECIPIENT" && !e.fatal);
  // Too large for the WELCOME's max_body: refused locally, nothing sent.
  await assert.rejects(c.send(["lee"], new Uint8Array(65537)), (e: unknown) => e instanceof DingError && e.code === "MESSAGE_TOO_LARGE");
  await c.close();
});

test("submits stay within WELCOME.max_inflight", async () => {
  const pc = connect(opts);
  const { s } = await accept({ maxInflight: 2 });
  const c = await pc;
  const ps = [c.send(["lee"], "1"), c.send(["lee"], "2"), c.send(["lee"], "3")];
  const a = (await s.expect(pb.FrameType.SUBMIT)).msg as pb.Submit;
  const b = (await s.expect(pb.FrameType.SUBMIT)).msg as pb.Submit;
  s.push(pb.FrameType.SUBMIT_ACK, pb.SubmitAckSchema, { ref: a.ref, id: "A" });
  const third = (await s.expect(pb.FrameType.SUBMIT)).msg as pb.Submit; // only after an answer
  assert.equal(new TextDecoder().decode(third.body), "3");
  s.push(pb.FrameType.SUBMIT_ACK, pb.SubmitAckSchema, { ref: b.ref, id: "B" });
  s.push(pb.FrameType.SUBMIT_ACK, pb.SubmitAckSchema, { ref: third.ref, id: "C" });
  assert.deepEqual((await Promise.all(ps)).map((r) => r.id), ["A", "B", "C"]);
  await c.close();
});

test("read and confirm resolve on OK; a request in flight fails on disconnect", async () => {
  const pc = connect(opts);
  const first = await accept();
  const c = await pc;
  const r = c.read(["01A"]);
  const rf = (await first.s.expect(pb.FrameType.READ)).msg as pb.Read;
  assert.deepEqual(rf.ids, ["01A"]);
  first.s.push(pb.FrameType.OK, pb.OkSchema, { ref: rf.ref });
  await r;
  const cf = c.confirm("01D", 2);
  const cm = (await first.s.expect(pb.FrameType.CONFIRM)).msg as pb.Confirm;
  assert.equal(cm.answer, 2);
  first.s.push(pb.FrameType.OK, pb.OkSchema, { ref: cm.ref, alreadyConfirmed: { answer: 1, choice: "yes", channel: "sms", atMs: 9n } });
  assert.deepEqual(await cf, { alreadyConfirmed: { answer: 1, choice: "yes", channel: "sms", atMs: 9 } });
  const lost = c.read(["01B"]);
  await first.s.expect(pb.FrameType.READ);
  first.s.drop(1006);
  await assert.rejects(lost, DisconnectedError);
  await accept();
  await c.close();
});

test("burns, DING events and secret events are stream entries", async () => {
  const pc = connect(opts);
  const { s } = await accept({ resumeFrom: 1n });
  const c = await pc;
  const got: string[] = [];
  const done = new Promise<void>((resolve) => {
    c.on("ding", (d) => got.push(`ding ${d.event} ${d.seq}`));
    c.on("secret", (e) => got.push(`secret ${e.event} ${e.you}`));
    c.on("burn", (b) => {
      got.push(`burn ${b.id}`);
      resolve();
    });
  });
  s.push(pb.FrameType.DING_EVENT, pb.DingEventSchema, { seq: 1n, id: "D", event: "confirmed", detail: "2 no" });
  s.push(pb.FrameType.SECRET_EVENT, pb.SecretEventSchema, { seq: 2n, chat: "C", event: "created", you: "anon-a" });
  s.push(pb.FrameType.BURN, pb.BurnSchema, { seq: 3n, id: "M" });
  await done;
  assert.deepEqual(got, ["ding confirmed 1", "secret created anon-a", "burn M"]);
  await c.close();
});

test("a permanent error stops the client: the first connect rejects with it", async () => {
  const pc = connect(opts);
  const s = await FakeWS.next();
  s.open();
  await s.read();
  s.drop(4007, { code: pb.Code.BAD_TOKEN, detail: "bad token" });
  await assert.rejects(pc, (e: unknown) => e instanceof DingError && e.code === "BAD_TOKEN" && e.fatal);
});

test("the close code alone (4000+code) is enough when the ERROR frame was not read", async () => {
  const pc = connect(opts);
  const { s } = await accept();
  const c = await pc;
  const closed = new Promise<Error | undefined>((r) => c.on("closed", (e) => r(e.error)));
  const pending = c.send(["lee"], "x");
  await s.expect(pb.FrameType.SUBMIT);
  s.drop(4019); // REPLACED: another instance took the device
  const err = await closed;
  assert.ok(err instanceof DingError && err.code === "REPLACED");
  await assert.rejects(pending, (e: unknown) => e instanceof DingError && e.code === "REPLACED");
  await assert.rejects(c.send(["lee"], "y"), ClosedError);
});

test("NOT_OWNER follows the redirect through redirectURL; other fatal errors reconnect", async () => {
  const pc = connect({ ...opts, redirectURL: (addr: string) => `ws://${addr}/ws` });
  const s = await FakeWS.next();
  s.open();
  await s.read();
  s.drop(4031, { code: pb.Code.NOT_OWNER, redirect: "10.0.0.2:7443" });
  const { s: s2 } = await accept();
  assert.equal(s2.url, "ws://10.0.0.2:7443/ws");
  const c = await pc;
  s2.drop(4020, { code: pb.Code.SHUTTING_DOWN }); // back to the configured URL
  const { s: s3 } = await accept();
  assert.equal(s3.url, opts.url);
  await c.close();
});

test("close() rejects pending sends with ClosedError and is idempotent", async () => {
  const pc = connect(opts);
  await accept();
  const c = await pc;
  const p = c.send(["lee"], "x");
  await Promise.all([c.close(), c.close()]);
  await assert.rejects(p, ClosedError);
});

test("entries in the same task as the WELCOME wait for the app: none is lost or acked before it subscribed", async () => {
  const pc = connect(opts);
  const s = await FakeWS.next();
  s.open();
  await s.read();
  s.welcome({ resumeFrom: 1n });
  deliver(s, 1n); // same task as the WELCOME
  const c = await pc;
  const m = await new Promise<Message>((r) => c.on("message", r));
  assert.equal(m.seq, 1n);
  assert.equal((await s.expect(pb.FrameType.ACK)).msg.seq, 1n);
  await c.close();
});

test("listeners given to connect() see entries from the first one on", async () => {
  const seen: bigint[] = [];
  let resolve!: () => void;
  const two = new Promise<void>((r) => (resolve = r));
  const pc = connect({ ...opts, on: { message: (m) => (seen.push(m.seq), m.seq === 2n && resolve()) } });
  const { s } = await accept({ resumeFrom: 1n });
  deliver(s, 1n);
  deliver(s, 2n);
  const c = await pc;
  await two;
  assert.deepEqual(seen, [1n, 2n]);
  await c.close();
});

test("a stored cursor of another user is not used: the client reconnects without one", async () => {
  const store = new MemoryCursorStore();
  await store.set("web", { user: "lee", seq: 40n });
  const pc = connect({ ...opts, store });
  const s = await FakeWS.next();
  s.open();
  assert.equal(((await s.read()).msg as pb.Hello).cursor, 40n);
  s.welcome({ user: "kim", resumeFrom: 41n }); // kim's stream, not lee's
  const again = await accept({ user: "kim", resumeFrom: 3n });
  assert.equal(again.hello.cursor, undefined);
  const c = await pc;
  deliver(again.s, 3n);
  assert.equal((await again.s.expect(pb.FrameType.ACK)).msg.seq, 3n);
  assert.deepEqual(await store.get("web"), { user: "kim", seq: 3n });
  await c.close();
});

test("a server that answers nothing after a PING (frozen) is left within pongTimeoutMs, not three ping intervals", async () => {
  const pc = connect({ ...opts, pongTimeoutMs: 20 });
  const { s } = await accept({ pingIntervalMs: 3000 }); // three silent intervals: 9 s
  const c = await pc;
  const down = collect<{ error?: Error }>((fn) => c.on("disconnect", fn), 1);
  assert.equal((await s.read()).type, pb.FrameType.PING); // read, never answered
  const [ev] = await down;
  assert.match(String(ev.error?.message), /server silent after a PING/);
  const again = await FakeWS.next(); // it connects again
  assert.ok(again);
  await c.close();
});

test("a send met by silence pings at once, not at the next interval, and a frozen server is left pongTimeoutMs later", async () => {
  const pc = connect({ ...opts, pongTimeoutMs: 40 });
  const { s } = await accept({ pingIntervalMs: 600000 }); // the next interval's PING: ten minutes away
  const c = await pc;
  // The first send is answered; then the server freezes.
  const first = c.send(["lee"], "answered");
  const sub = (await s.expect(pb.FrameType.SUBMIT)).msg as pb.Submit;
  s.push(pb.FrameType.SUBMIT_ACK, pb.SubmitAckSchema, { ref: sub.ref, id: "01ID", createdMs: 5n });
  await first;
  const down = collect<{ error?: Error }>((fn) => c.on("disconnect", fn), 1);
  void c.send(["lee"], "met by silence").catch(() => {});
  assert.equal((await s.read()).type, pb.FrameType.SUBMIT);
  assert.equal((await s.read()).type, pb.FrameType.PING); // a quarter of pongTimeoutMs later, never answered
  const [ev] = await down;
  assert.match(String(ev.error?.message), /server silent after a PING/);
  assert.ok(await FakeWS.next()); // it connects again
  await c.close();
});
