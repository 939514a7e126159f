// Unit tests of the app's state (src/model.ts), fed the SDK's events as
// the stream would deliver them. The browser tests (cmd/dingd/web_test.go)
// cover the page against a real dingd.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Kind, State, type Message } from "../../sdk/src/index.js";
import { ANNOUNCEMENTS, Model, tokenIdentity } from "../src/model.js";

const enc = new TextEncoder();
let seq = 0n;

function msg(over: Partial<Message>): Message {
  return {
    seq: ++seq,
    id: "01M8" + String(seq).padStart(22, "0"),
    from: "ana",
    to: ["bo"],
    kind: Kind.TEXT,
    body: enc.encode("hi"),
    createdMs: Number(seq),
    choices: [],
    confirm: false,
    forwardOf: "",
    quoteOf: "",
    chat: "",
    level: 0,
    burnAfterMs: 0,
    noCopy: false,
    noForward: false,
    watermark: "",
    ...over,
  };
}

test("messages fold into conversations by the other party, announcements apart", () => {
  const m = new Model("bo");
  m.onMessage(msg({ from: "ana", to: ["bo"] }));
  m.onMessage(msg({ from: "cy", to: ["bo", "ana"] }));
  m.onMessage(msg({ from: "", to: ["bo"], kind: Kind.ANNOUNCEMENT, confirm: true }));
  m.onMessage(msg({ from: "ana", to: ["bo"], kind: Kind.DING, choices: ["attend", "decline"] }));
  const keys = m.conversations().map((c) => c.key).sort();
  assert.deepEqual(keys, ["ana", "ana,cy", ANNOUNCEMENTS].sort());
  const ana = m.conversations().find((c) => c.key === "ana")!;
  assert.equal(ana.unread, 2);
  assert.deepEqual(ana.msgs.map((x) => x.kind), ["text", "ding"]);
  assert.equal(ana.msgs[1].mustConfirm, true);
  const ann = m.conversations().find((c) => c.key === ANNOUNCEMENTS)!;
  assert.equal(ann.msgs[0].mustConfirm, true);
});

test("a repeated id is shown once", () => {
  const m = new Model("bo");
  const x = msg({});
  m.onMessage(x);
  m.onMessage({ ...x, seq: ++seq });
  assert.equal(m.conversations()[0].msgs.length, 1);
});

test("ticks of a sent message follow its receipts, and only move forward", () => {
  const m = new Model("ana");
  const local = m.addOutgoing("bo", ["bo"], "hi");
  assert.equal(m.tick(m.message(local)!), "sending");
  // The delivered receipt may come before the ack resolves the send.
  m.onReceipt({ seq: ++seq, ids: ["01MSENT0000000000000000000"], user: "bo", state: State.DELIVERED, atMs: 1 });
  m.acked(local, "01MSENT0000000000000000000", 5);
  const sent = m.message("01MSENT0000000000000000000")!;
  assert.equal(m.tick(sent), "delivered");
  m.onReceipt({ seq: ++seq, ids: [sent.id], user: "bo", state: State.READ_STATE, atMs: 2 });
  assert.equal(m.tick(sent), "read");
  m.onReceipt({ seq: ++seq, ids: [sent.id], user: "bo", state: State.DELIVERED, atMs: 3 });
  assert.equal(m.tick(sent), "read");
  const failed = m.addOutgoing("zed", ["zed"], "x");
  m.failed(failed, "UNKNOWN_RECIPIENT");
  assert.equal(m.tick(m.message(failed)!), "failed");
});

test("to several users, the tick is the least advanced one's", () => {
  const m = new Model("ana");
  const local = m.addOutgoing("bo,cy", ["bo", "cy"], "hi");
  m.acked(local, "01MTWO00000000000000000000", 1);
  const x = m.message("01MTWO00000000000000000000")!;
  m.onReceipt({ seq: ++seq, ids: [x.id], user: "bo", state: State.READ_STATE, atMs: 2 });
  assert.equal(m.tick(x), "sent");
  m.onReceipt({ seq: ++seq, ids: [x.id], user: "cy", state: State.DELIVERED, atMs: 3 });
  assert.equal(m.tick(x), "delivered");
});

test("a secret message: pseudonyms, a countdown from the read, gone on burn", () => {
  const m = new Model("bo");
  m.onSecret({ seq: ++seq, chat: "CHAT1", event: "created", id: "", by: "anon-A", level: 1, burnAfterMs: 5000, you: "anon-B", peer: "anon-A", atMs: 0 });
  const x = msg({ chat: "CHAT1", from: "anon-A", to: ["anon-B"], level: 1, burnAfterMs: 5000, noCopy: true });
  m.onMessage(x);
  const conv = m.conversations().find((c) => c.key === "secret:CHAT1")!;
  assert.equal(conv.title, "Secret chat with anon-A");
  const got = m.message(x.id)!;
  assert.equal(m.burnAt(got), undefined, "no countdown before the read");
  // bo's own read receipt names him by his pseudonym.
  m.onReceipt({ seq: ++seq, ids: [x.id], user: "anon-B", state: State.READ_STATE, atMs: 1000 });
  assert.equal(m.burnAt(got), 6000);
  m.onBurn({ seq: ++seq, id: x.id });
  assert.equal(m.message(x.id), undefined);
  assert.equal(m.conversations().find((c) => c.key === "secret:CHAT1")!.msgs.length, 0);
});

test("the sender's countdown starts at the recipient's read", () => {
  const m = new Model("ana");
  m.onSecret({ seq: ++seq, chat: "CHAT2", event: "created", id: "", by: "anon-A", level: 1, burnAfterMs: 5000, you: "anon-A", peer: "anon-B", atMs: 0 });
  const local = m.addOutgoing("secret:CHAT2", [], "door code", "CHAT2");
  m.acked(local, "01MSECRET00000000000000000", 1);
  const x = m.message("01MSECRET00000000000000000")!;
  assert.deepEqual(x.to, ["anon-B"]);
  m.onReceipt({ seq: ++seq, ids: [x.id], user: "anon-B", state: State.DELIVERED, atMs: 10 });
  assert.equal(m.tick(x), "delivered");
  assert.equal(m.burnAt(x), undefined);
  m.onReceipt({ seq: ++seq, ids: [x.id], user: "anon-B", state: State.READ_STATE, atMs: 20 });
  assert.equal(m.burnAt(x), 5020);
});

test("tokenIdentity reads a client token's user and device, and explains the rest", () => {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = part({ alg: "HS256", typ: "JWT" });
  assert.deepEqual(tokenIdentity(`${head}.${part({ knd: "client", sub: "kim", dev: "web" })}.sig`), { user: "kim", device: "web" });
  assert.throws(() => tokenIdentity("not a token"), /three parts/);
  assert.throws(() => tokenIdentity(`${head}.%%%.sig`), /does not decode/);
  assert.throws(() => tokenIdentity(`${head}.${part({ knd: "admin", sub: "owner" })}.sig`), /admin token/);
  assert.throws(() => tokenIdentity(`${head}.${part({ knd: "client" })}.sig`), /names no user/);
});
