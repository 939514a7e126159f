import { test } from "node:test";
import assert from "node:assert/strict";
import { ApiError, call, describe, onUnauthenticated } from "../src/api";

function answer(status: number, body: string, type = "application/json") {
  globalThis.fetch = (async () => new Response(body, { status, headers: { "Content-Type": type } })) as typeof fetch;
}

test("the API's errors carry its code, detail and the permission missing", async () => {
  answer(403, JSON.stringify({ error: { code: "FORBIDDEN", detail: "not allowed", permission: "dings" } }));
  await assert.rejects(call("GET", "/v1/dings", { token: "t" }), (e: unknown) => {
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 403);
    assert.equal(describe(e), "FORBIDDEN: not allowed (needs the dings permission)");
    return true;
  });
});

test("a 401 says to sign in again, and signs out only with the saved token", async () => {
  let signedOut = 0;
  onUnauthenticated(() => signedOut++);
  answer(401, JSON.stringify({ error: { code: "UNAUTHENTICATED", detail: "admin token invalid" } }));
  await assert.rejects(call("GET", "/v1/admins/me", { token: "pasted" }), (e: unknown) => {
    assert.match(describe(e), /^UNAUTHENTICATED: admin token invalid\. Sign in again/);
    return true;
  });
  assert.equal(signedOut, 0, "a sign-in attempt is not a sign-out");
  (globalThis as { sessionStorage?: unknown }).sessionStorage = { getItem: () => "saved" };
  await assert.rejects(call("GET", "/v1/users"));
  assert.equal(signedOut, 1);
  onUnauthenticated(null);
});

test("an answer that is not the API's error still says something", async () => {
  answer(502, "<html>bad gateway</html>", "text/html");
  await assert.rejects(call("GET", "/v1/stats", { token: "t" }), /HTTP_502/);
  globalThis.fetch = (async () => {
    throw new TypeError("network");
  }) as typeof fetch;
  await assert.rejects(call("GET", "/v1/stats", { token: "t" }), /UNREACHABLE/);
});
