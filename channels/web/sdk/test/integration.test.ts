// Against a real dingd on loopback: two SDK clients over WebSocket.
// Every wait is for an event or a promise, never a sleep.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { connect, DingClient, DingError, Kind, MemoryCursorStore, State, type Events, type Message, type WebSocketCtor } from "../src/index.js";
import { Dingd } from "./dingd.js";

const WS = WebSocket as unknown as WebSocketCtor;
let d: Dingd;

before(async () => {
  d = await Dingd.start();
  for (const u of ["kim", "lee", "ann", "bob"]) await d.addUser(u);
});
after(async () => {
  await d?.cleanup();
});

async function client(user: string, device = "web", extra: Partial<Parameters<typeof connect>[0]> = {}) {
  return connect({ url: d.wsURL, token: await d.token(user, device), device, WebSocket: WS, ...extra });
}

/** The first event of this kind that passes the test. */
function next<K extends keyof Events>(c: DingClient, event: K, ok: (ev: Events[K]) => boolean = () => true): Promise<Events[K]> {
  return new Promise((resolve) => {
    const off = c.on(event, (ev) => {
      if (ok(ev)) {
        off();
        resolve(ev);
      }
    });
  });
}

const text = (m: Message) => new TextDecoder().decode(m.body);

test("two clients exchange a message: send resolves on the durable ack, delivered and read receipts come back", async () => {
  const kim = await client("kim");
  const lee = await client("lee");
  try {
    const got = next(kim, "message");
    const delivered = next(lee, "receipt", (r) => r.state === State.DELIVERED);
    const res = await lee.send(["kim"], "hello kim");
    assert.equal(res.id.length, 26);
    assert.equal(res.duplicate, false);
    const m = await got;
    assert.equal(m.id, res.id);
    assert.equal(m.from, "lee");
    assert.equal(text(m), "hello kim");
    // kim's client acked it on its own: the DELIVERED receipt reaches lee.
    const dr = await delivered;
    assert.deepEqual([dr.ids, dr.user], [[res.id], "kim"]);

    const readByKim = next(lee, "receipt", (r) => r.state === State.READ_STATE);
    const ownRead = next(kim, "receipt", (r) => r.state === State.READ_STATE); // kim's other devices learn it
    await kim.read([res.id]);
    assert.deepEqual((await readByKim).ids, [res.id]);
    assert.deepEqual((await ownRead).ids, [res.id]);
    const states = await lee.receipts(res.id);
    assert.deepEqual(states.map((s) => [s.user, s.state]), [["kim", State.READ_STATE]]);
  } finally {
    await Promise.all([kim.close(), lee.close()]);
  }
});

test("dingd restarted mid-conversation: both clients resume; a send made while it was down resolves after; nothing lost or repeated", async () => {
  const store = new MemoryCursorStore();
  const ann = await client("ann", "web", { store });
  const bob = await client("bob");
  try {
    const got: string[] = [];
    ann.on("message", (m) => got.push(text(m)));
    const first = next(ann, "message", (m) => text(m) === "one");
    await bob.send(["ann"], "one");
    await first;

    const annBack = next(ann, "open");
    const bobBack = next(bob, "open");
    // Subscribed before: "two" can arrive in the same task as ann's WELCOME.
    const two = next(ann, "message", (m) => text(m) === "two");
    await d.stop();
    const pending = bob.send(["ann"], "two"); // queued: no connection now
    await d.run();
    await Promise.all([annBack, bobBack]);
    const res = await pending; // resent on the new connection, stored once
    assert.equal(res.id.length, 26);
    await two;
    const three = next(ann, "message", (m) => text(m) === "three");
    await bob.send(["ann"], "three");
    await three;
    assert.deepEqual(got, ["one", "two", "three"]);

    // A new run of ann's app with the same cursor store starts after "three".
    await ann.close();
    assert.equal((await store.get("web"))?.seq, ann.cursor);
    await bob.send(["ann"], "four");
    const again = await client("ann", "web", { store });
    try {
      const four = await next(again, "message");
      assert.equal(text(four), "four");
    } finally {
      await again.close();
    }
  } finally {
    await Promise.all([ann.close(), bob.close()]);
  }
});

test("a dropped socket (the server replaced by nothing but a lost TCP link) resumes without loss or repeats", async () => {
  const seen: bigint[] = [];
  const kim = await client("kim", "tab2", {
    cursor: 0n, // everything from the start
    on: { message: (m) => seen.push(m.seq), receipt: (r) => seen.push(r.seq) }, // from the first entry on
  });
  const lee = await client("lee", "tab2");
  try {
    const before = next(kim, "message", (m) => text(m) === "before drop");
    await lee.send(["kim"], "before drop");
    await before;
    const back = next(kim, "open");
    // Cut the transport under the client, as a flaky network would.
    (kim as unknown as { ws: { terminate(): void } }).ws.terminate();
    await back;
    const after = next(kim, "message", (m) => text(m) === "after drop");
    await lee.send(["kim"], "after drop");
    await after;
    assert.deepEqual(seen, [...seen].sort((a, b) => (a < b ? -1 : 1)));
    assert.equal(new Set(seen).size, seen.length, "no entry twice");
    assert.equal(seen[0], 1n, "cursor 0 replays the stream from its start");
    for (let i = 1; i < seen.length; i++) assert.equal(seen[i], seen[i - 1]! + 1n, "no gap");
  } finally {
    await Promise.all([kim.close(), lee.close()]);
  }
});

test("a DING from the admin API: the recipient confirms with a choice; the sender's client sees the ledger's events", async () => {
  const kim = await client("kim", "ding");
  const lee = await client("lee", "ding");
  try {
    const arrives = next(kim, "message", (m) => m.kind === Kind.DING);
    const confirmedEv = next(lee, "ding", (e) => e.event === "confirmed");
    const { id } = await d.api("POST", "/v1/dings", { from: "lee", to: ["kim"], text: "db down", choices: ["on it", "can't"], policy: "inapp" });
    const m = await arrives;
    assert.equal(m.id, id);
    assert.deepEqual(m.choices, ["on it", "can't"]);
    assert.deepEqual(await kim.confirm(id, 1), {});
    const ev = await confirmedEv;
    assert.deepEqual([ev.id, ev.recipient, ev.channel, ev.detail], [id, "kim", "inapp", "1 on it"]);
    // Again, with another answer: the first stands, and the answer says so.
    const again = await kim.confirm(id, 2);
    assert.equal(again.alreadyConfirmed?.answer, 1);
    await assert.rejects(kim.confirm(id, 9), (e: unknown) => e instanceof DingError && e.code === "BAD_ANSWER");
  } finally {
    await Promise.all([kim.close(), lee.close()]);
  }
});

test("a secret chat: pseudonyms, no-copy flags, and a BURN in both streams 5 s after the read", async () => {
  const ann = await client("ann", "secret");
  const bob = await client("bob", "secret");
  try {
    const bobCreated = next(bob, "secret", (e) => e.event === "created");
    const chat = await ann.createChat("bob", 3, 5000);
    assert.equal(chat.length, 26);
    const created = await bobCreated;
    assert.match(created.you, /^anon-/);
    const arrives = next(bob, "message", (m) => m.chat === chat);
    const sent = await ann.send([], "for your eyes", { chat });
    const m = await arrives;
    assert.deepEqual([m.id, m.from, m.level, m.burnAfterMs, m.noCopy, m.noForward], [sent.id, created.peer, 3, 5000, true, true]);
    const burnedForBob = next(bob, "burn", (b) => b.id === sent.id);
    const burnedForAnn = next(ann, "burn", (b) => b.id === sent.id);
    await bob.read([sent.id]); // starts the 5 s burn delay
    await Promise.all([burnedForBob, burnedForAnn]);
  } finally {
    await Promise.all([ann.close(), bob.close()]);
  }
});

test("a bad token is a typed error, and the client does not retry it", async () => {
  await assert.rejects(
    connect({ url: d.wsURL, token: "not-a-token", device: "web", WebSocket: WS }),
    (e: unknown) => e instanceof DingError && e.code === "BAD_TOKEN" && e.fatal && !e.message.includes("not-a-token"),
  );
  await assert.rejects(
    connect({ url: d.wsURL, token: await d.token("kim", "phone"), device: "web", WebSocket: WS }),
    (e: unknown) => e instanceof DingError && e.code === "DEVICE_MISMATCH",
  );
  const lee = await client("lee", "t3");
  try {
    await assert.rejects(lee.send(["nobody"], "x"), (e: unknown) => e instanceof DingError && e.code === "UNKNOWN_RECIPIENT" && !e.fatal);
  } finally {
    await lee.close();
  }
});
