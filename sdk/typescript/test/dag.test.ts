// Single tasks, DAGs and bulk triggers end to end: REST -> scheduler -> dispatcher -> TS worker.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ApiError, Ratchet } from "../src/index.js";
import { client, startWorker, unique } from "./helpers.js";

test("a single task returns its output", async (t) => {
  const echo = client.task({ name: unique("echo") }, (input, ctx) => ({ got: input, attempt: ctx.attempt, run: ctx.runId }));
  await startWorker(t, "w-echo", { workflows: [echo], slots: 4 });
  const ref = await echo.runNoWait({ x: 1 });
  const out = await ref.result({ timeoutMs: 30_000 });
  assert.deepEqual(out[echo.name], { got: { x: 1 }, attempt: 0, run: ref.runId });
  const run = await client.runs.get(ref.runId);
  assert.equal(run.status, "SUCCEEDED");
  assert.deepEqual(run.tasks.map((task) => task.status), ["SUCCEEDED"]);
});

test("a diamond DAG runs in order and hands outputs down", async (t) => {
  const wf = client.workflow<{ docId: string; user: string }>({ name: unique("diamond") });
  const order: string[] = [];
  const fetch = wf.task({ name: "fetch" }, async (input) => {
    order.push("fetch");
    return { text: `doc ${input.docId} by ${input.user}` };
  });
  const left = wf.task({ name: "left", parents: [fetch] }, (_input, ctx) => {
    order.push("left");
    return { words: ctx.parentOutput(fetch).text.split(" ").length };
  });
  const right = wf.task({ name: "right", parents: [fetch] }, async (_input, ctx) => {
    order.push("right");
    return { upper: ctx.parentOutput(fetch).text.toUpperCase() };
  });
  wf.task({ name: "join", parents: [left, right] }, (_input, ctx) => {
    order.push("join");
    return { words: ctx.parentOutput(left).words, upper: ctx.parentOutput<{ upper: string }>("right").upper };
  });
  await startWorker(t, "w-diamond", { workflows: [wf], slots: 4 });
  const out = await wf.run({ docId: "7", user: "ann" }, { timeoutMs: 30_000 });
  assert.deepEqual(out, {
    fetch: { text: "doc 7 by ann" },
    left: { words: 4 },
    right: { upper: "DOC 7 BY ANN" },
    join: { words: 4, upper: "DOC 7 BY ANN" },
  });
  assert.equal(order[0], "fetch");
  assert.equal(order[3], "join");
  assert.deepEqual(order.slice(1, 3).sort(), ["left", "right"]);
});

test("runMany triggers in bulk and every run finishes", async (t) => {
  const square = client.task<{ i: number }>({ name: unique("square") }, (input) => ({ sq: input.i * input.i }));
  await startWorker(t, "w-square", { workflows: [square], slots: 8 });
  const refs = await square.runMany([1, 2, 3, 4, 5].map((i) => ({ i })));
  const outs = await Promise.all(refs.map((ref) => ref.result({ timeoutMs: 30_000 })));
  assert.deepEqual(outs.map((o) => o[square.name]), [1, 4, 9, 16, 25].map((sq) => ({ sq })));
});

test("API errors carry the status and the server's detail", async () => {
  const missing = await client.runs.get("no-such-run").then(() => undefined, (e: unknown) => e);
  assert.ok(missing instanceof ApiError && missing.status === 404, String(missing));
  assert.match(missing.detail, /no-such-run/);
  const stranger = new Ratchet({ token: "rt_not-a-token" });
  const denied = await stranger.runs.list().then(() => undefined, (e: unknown) => e);
  assert.ok(denied instanceof ApiError && denied.status === 401, String(denied));
});
