import { test } from "node:test";
import assert from "node:assert/strict";
import { composePolicy, formatDuration, parseDuration, parsePolicy, plan } from "../src/policy";
import { parseMetrics, quantile, sum } from "../src/prom";

test("a policy round-trips through the server's text form", () => {
  for (const [spec, want] of [
    ["inapp,sms@5m,voice@15m until=confirmed", "inapp,sms@5m,voice@15m until=confirmed"],
    ["inapp, sms@1s*3/10s until=read", "inapp,sms@1s*3/10s until=read"],
    ["inapp,sms@90s,voice@1h30m", "inapp,sms@1m30s,voice@1h30m until=confirmed"],
    ["inapp;voice@3600s until=confirm", "inapp,voice@1h until=confirmed"],
  ]) {
    assert.equal(composePolicy(parsePolicy(spec)), want, spec);
  }
});

test("bad policies are refused with the reason", () => {
  for (const [spec, want] of [
    ["", /at least one step/],
    ["fax@1m", /unknown channel "fax"/],
    ["sms@soon", /bad delay/],
    ["sms@1500ms", /whole seconds/],
    ["sms*3", /repeat is \*times\/every/],
    ["sms*40/1s", /more than 32 sends/],
    ["sms@200h", /later than 7 days/],
    ["inapp until=never", /want read or confirmed/],
  ] as const) {
    assert.throws(() => parsePolicy(spec), want, spec);
  }
});

test("the plan expands repeats in time order", () => {
  const p = plan(parsePolicy("inapp,voice@20s,sms@1s*3/10s"));
  assert.deepEqual(p.map((s) => `${s.channel}@${s.at}`), ["inapp@0", "sms@1", "sms@11", "voice@20", "sms@21"]);
});

test("durations", () => {
  assert.equal(parseDuration("1h30m"), 5400);
  assert.equal(formatDuration(3661), "1h1m1s");
  assert.equal(formatDuration(3601), "1h0m1s");
  assert.throws(() => parseDuration("5 min"));
});

test("Prometheus text: sums and histogram quantiles", () => {
  const s = parseMetrics(`# HELP x
# TYPE ding_fanout_devices gauge
ding_fanout_devices 3
ding_ws_connections{state="open"} 2
ding_ws_connections{state="closed"} 5
ding_engine_commit_duration_seconds_bucket{le="0.001"} 0
ding_engine_commit_duration_seconds_bucket{le="0.002"} 50
ding_engine_commit_duration_seconds_bucket{le="0.004"} 100
ding_engine_commit_duration_seconds_bucket{le="+Inf"} 100
ding_engine_commit_duration_seconds_sum 0.2
ding_engine_commit_duration_seconds_count 100
`);
  assert.equal(sum(s, "ding_fanout_devices"), 3);
  assert.equal(sum(s, "ding_ws_connections", { state: "open" }), 2);
  assert.equal(quantile(s, "ding_engine_commit_duration_seconds", 0.5), 0.002);
  assert.equal(quantile(s, "ding_engine_commit_duration_seconds", 0.75), 0.003);
  assert.ok(Number.isNaN(quantile(s, "nothing", 0.5)));
});
