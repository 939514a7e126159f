import assert from "node:assert/strict";
import { test } from "node:test";
import { IDBFactory } from "fake-indexeddb";
import { IndexedDBCursorStore, MemoryCursorStore, type CursorStore } from "../src/index.js";

async function conformance(s: CursorStore) {
  assert.equal(await s.get("web"), undefined);
  await s.set("web", { user: "kim", seq: 2n ** 63n + 5n });
  assert.deepEqual(await s.get("web"), { user: "kim", seq: 2n ** 63n + 5n });
  await s.set("web", { user: "kim", seq: 7n });
  assert.deepEqual(await s.get("web"), { user: "kim", seq: 7n });
  assert.equal(await s.get("phone"), undefined);
}

test("MemoryCursorStore", async () => {
  await conformance(new MemoryCursorStore());
});

test("IndexedDBCursorStore keeps cursors across instances (a reload)", async () => {
  const factory = new IDBFactory();
  const s = new IndexedDBCursorStore("ding-test", factory);
  await conformance(s);
  await s.close();
  const again = new IndexedDBCursorStore("ding-test", factory);
  assert.deepEqual(await again.get("web"), { user: "kim", seq: 7n });
  await again.close();
});
