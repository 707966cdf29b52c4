// What a TypeScript task can do beyond the basics, as the Python SDK does: durable waits with
// replay, child runs, DAG conditions, scheduled runs, versions and rollback, large payloads.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  type DurableContext,
  event,
  NonDeterminism,
  NonRetryable,
  parentOutput,
  RunFailed,
  signal,
  sleep,
  WaitTimeoutError,
} from "../src/index.js";
import { client, eventually, startWorker, unique } from "./helpers.js";

/**
 * Push `events` every 300 ms until the run ends: a wait counts only events published after it
 * was registered, and the test cannot see that moment, so it repeats them (a wait takes the
 * first that arrives after it; the rest find no wait and change nothing).
 */
async function pushUntilEnded(runId: string, events: [string, unknown][], timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const [key, payload] of events) await client.events.push(key, payload);
    if (["SUCCEEDED", "FAILED", "CANCELLED"].includes((await client.runs.get(runId)).status)) return;
    if (Date.now() > deadline) throw new Error(`run ${runId} did not end before the deadline`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

test("durable: now, sleepFor, waitForEvent with CEL, waitAny, a timeout", async (t) => {
  const key = unique("approval");
  const wf = client.workflow<{ doc: string }>({ name: unique("durable-ts") });
  wf.durableTask({ name: "approve", executionTimeout: "5m" }, async (input, ctx) => {
    const start = await ctx.now();
    await ctx.sleepFor("1s");
    const woke = await ctx.now();
    await ctx.sleepUntil(new Date(woke.getTime() + 200)); // from the recorded time: replay-safe
    const approval = (await ctx.waitForEvent(key, { expression: `input.doc == '${input.doc}'` })) as { by: string };
    const first = await ctx.waitAny(sleep("10m"), event(`${key}.veto`), event(`${key}.ok`));
    let timedOut = false;
    try {
      await ctx.waitForEvent(`${key}.never`, { timeout: "500ms" });
    } catch (err) {
      timedOut = err instanceof WaitTimeoutError;
    }
    return { slept: woke.getTime() - start.getTime(), by: approval.by, fired: first.index, payload: first.payload, timedOut };
  });
  await startWorker(t, "w-durable", { workflows: [wf], slots: 1 });
  const ref = await wf.runNoWait({ doc: "7" });
  // A non-matching event (doc 8) is ignored; the matching one wakes the first wait, `.ok` the
  // waitAny after it.
  await pushUntilEnded(ref.runId, [[key, { doc: "8", by: "mallory" }], [key, { doc: "7", by: "ann" }], [`${key}.ok`, { fine: true }]]);
  const out = (await ref.result({ timeoutMs: 30_000 })).approve as Record<string, unknown>;
  assert.ok((out.slept as number) >= 1000, `slept ${String(out.slept)} ms`);
  assert.equal(out.by, "ann");
  assert.equal(out.fired, 2);
  assert.deepEqual(out.payload, { fine: true });
  assert.equal(out.timedOut, true);
});

test("durable: a replay asking for another wait fails naming the position", async (t) => {
  const wf = client.workflow({ name: unique("nondet-ts") });
  wf.durableTask({ name: "drift", retries: 1, backoffBase: "100ms" }, async (_input, ctx: DurableContext) => {
    await ctx.sleepFor(ctx.attempt === 0 ? "200ms" : "300ms");
    if (ctx.attempt === 0) throw new Error("fail once, so attempt 1 replays the log");
    return "unreachable";
  });
  await startWorker(t, "w-nondet", { workflows: [wf], slots: 1 });
  const ref = await wf.runNoWait({});
  await assert.rejects(ref.result({ timeoutMs: 60_000 }), RunFailed);
  const run = await client.runs.get(ref.runId);
  const error = (run.errors ?? {}).drift as { type?: string; message?: string } | undefined;
  assert.equal(error?.type, "NonDeterminism");
  assert.match(String(error?.message), /position 0: the log has wait .*"sleep_ms":200.*asked for wait .*"sleep_ms":300/);
  assert.ok(new NonDeterminism(3, "x").message.includes("position 3"));
});

test("children: runChild / runMany set parent_run_id; a durable parent waits without its slot", async (t) => {
  const child = client.workflow<{ n: number }>({ name: unique("child-ts") });
  child.task({ name: "square" }, (input) => input.n * input.n);
  const parent = client.workflow<{ n: number }>({ name: unique("parent-ts") });
  // One slot: the children can only run once the durable parent has given its slot back.
  parent.durableTask({ name: "fan" }, async (input, ctx) => {
    const one = await ctx.runChild(child, { n: input.n });
    const many = await ctx.runMany(child, [{ n: 2 }, { n: 3 }], { keys: ["a", "b"] });
    const outs = [];
    for (const ref of [one, ...many]) outs.push((await ref.result()).square);
    return { outs, ids: [one.runId, ...many.map((r) => r.runId)] };
  });
  await startWorker(t, "w-children", { workflows: [parent, child], slots: 1 });
  const ref = await parent.runNoWait({ n: 4 });
  const out = (await ref.result({ timeoutMs: 60_000 })).fan as { outs: number[]; ids: string[] };
  assert.deepEqual(out.outs, [16, 4, 9]);
  for (const id of out.ids) assert.equal((await client.runs.get(id)).parent_run_id, ref.runId);
  const listed = await client.runs.list({ parentRunId: ref.runId });
  assert.deepEqual(new Set(listed.map((r) => r.id)), new Set(out.ids));
  // Outside a task a run is top-level; a key there is refused.
  const top = await child.runNoWait({ n: 1 });
  await top.result({ timeoutMs: 30_000 });
  assert.equal((await client.runs.get(top.runId)).parent_run_id ?? null, null);
  await assert.rejects(child.runNoWait({ n: 1 }, { key: "k" }), /only inside a running task/);
});

test("DAG conditions: waitFor an event, skipIf and cancelIf on parent outputs", async (t) => {
  const key = unique("go");
  const wf = client.workflow<{ score: number }>({ name: unique("conds-ts") });
  const score = wf.task({ name: "score" }, (input) => ({ score: input.score }));
  wf.task({ name: "gated", parents: [score], waitFor: [event(key, { expression: "input.go == true" })] }, () => "ran");
  wf.task({ name: "maybe", parents: [score], skipIf: [parentOutput("input.score < 5", score)] }, () => "ran");
  wf.task({ name: "halt", parents: [score], cancelIf: [parentOutput("input.score > 100")] }, () => "ran");
  await startWorker(t, "w-conds", { workflows: [wf], slots: 3 });
  const low = await wf.runNoWait({ score: 1 });
  await pushUntilEnded(low.runId, [[key, { go: false }], [key, { go: true }]]);
  const out = await low.result({ timeoutMs: 30_000 });
  assert.equal(out.gated, "ran");
  assert.equal(out.halt, "ran");
  assert.ok(!("maybe" in out) || out.maybe === null, JSON.stringify(out));
  const high = await wf.runNoWait({ score: 1000 });
  await pushUntilEnded(high.runId, [[key, { go: true }]]);
  await assert.rejects(high.result({ timeoutMs: 30_000 }), RunFailed);
  const tasks = Object.fromEntries((await client.runs.get(high.runId)).tasks.map((x) => [x.name, x.status]));
  assert.equal(tasks.halt, "CANCELLED");
  assert.throws(
    () => wf.task({ name: "bad", parents: [score], skipIf: [parentOutput("true", "nobody")] }),
    /names "nobody", which is not a parent/,
  );
});

test("scheduled runs, versions and rollback", async (t) => {
  const wf = client.workflow({ name: unique("sched-ts") });
  wf.task({ name: "v" }, () => 1);
  await startWorker(t, "w-sched", { workflows: [wf], slots: 1 });
  const made = await client.scheduled.create({ workflow: wf.name, runAt: new Date(Date.now() + 500), input: { at: 1 } });
  assert.ok((await client.scheduled.list({ workflow: wf.name })).some((s) => s.id === made.id));
  await eventually(async () => (await client.runs.list({ workflow: wf.name, status: "SUCCEEDED" })).length === 1, 30_000);
  const later = await client.scheduled.create({ workflow: wf.name, runAt: new Date(Date.now() + 3_600_000) });
  await client.scheduled.delete(later.id);
  assert.ok(!(await client.scheduled.list({ workflow: wf.name })).some((s) => s.id === later.id));

  // A second definition is a second version; rollback makes the first current again.
  const v2 = client.workflow({ name: wf.name });
  v2.task({ name: "v", retries: 2 }, () => 2);
  await client.register(v2);
  const versions = await client.workflows.versions(wf.name);
  assert.equal(versions.length, 2);
  const first = versions.find((v) => !v.current);
  assert.ok(first);
  await client.workflows.rollback(wf.name, first.id);
  const after = await client.workflows.versions(wf.name);
  assert.equal(after.find((v) => v.current)?.id, first.id);
});

test("large payloads: an output over the inline limit is offloaded and read back", async (t) => {
  const wf = client.workflow<{ n: number }>({ name: unique("big-ts") });
  const make = wf.task({ name: "make" }, (input) => "x".repeat(input.n));
  wf.task({ name: "measure", parents: [make] }, (_input, ctx) => ctx.parentOutput(make).length);
  await startWorker(t, "w-big", { workflows: [wf], slots: 2 });
  const n = 300 * 1024; // over the 128 KiB inline limit: travels as a reference
  const big = "y".repeat(n);
  const out = await wf.run({ n, pad: big } as { n: number }, { timeoutMs: 60_000 });
  assert.equal(out.measure, n);
  assert.equal((out.make as string).length, n);
});

test("replay, run events, filters and crons", async (t) => {
  const key = unique("filtered");
  const flaky = { fail: true };
  const wf = client.workflow<{ size: number }>({ name: unique("replay-ts"), onEvents: [key] });
  wf.task({ name: "work" }, (input, ctx) => {
    if (flaky.fail) throw new NonRetryable("first time fails");
    return { size: input.size, filter: ctx.filterPayload ?? null };
  });
  await startWorker(t, "w-replay", { workflows: [wf], slots: 2 });
  const ref = await wf.runNoWait({ size: 1 });
  await assert.rejects(ref.result({ timeoutMs: 30_000 }), RunFailed);
  flaky.fail = false;
  await client.runs.replay(ref.runId);
  await eventually(async () => (await client.runs.get(ref.runId)).status === "SUCCEEDED", 30_000);
  const kinds = (await client.runs.events(ref.runId)).map((e) => JSON.stringify(e));
  assert.ok(kinds.length >= 4, kinds.join("\n"));

  // With a filter, only matching events start runs, and the task sees the filter's payload.
  const filter = await client.filters.create({ workflow: wf.name, expression: "input.size > 10", payload: { tier: "big" } });
  assert.equal((await client.filters.get(filter.id)).expression, "input.size > 10");
  await client.events.push(key, { size: 5 });
  await client.events.push(key, { size: 50 });
  await eventually(async () => (await client.runs.list({ workflow: wf.name, status: "SUCCEEDED" })).length === 2, 30_000);
  const runs = await client.runs.list({ workflow: wf.name });
  const outputs = await Promise.all(runs.map(async (r) => (await client.runs.get(r.id)).output?.work));
  assert.deepEqual(outputs.filter((o) => (o as { size: number }).size === 50), [{ size: 50, filter: { tier: "big" } }]);
  assert.equal(outputs.filter((o) => (o as { size: number }).size === 5).length, 0);
  await client.filters.delete(filter.id);

  const cron = await client.crons.create({ workflow: wf.name, expression: "0 3 * * *", input: { size: 0 } });
  assert.ok((await client.crons.list()).some((c) => c.id === cron.id));
  await client.crons.delete(cron.id);
  assert.ok(!(await client.crons.list()).some((c) => c.id === cron.id));
});

test("durable: run state, a signal, a waitpoint (and waitAny on a signal)", async (t) => {
  const wf = client.workflow({ name: unique("interact-ts") });
  wf.durableTask({ name: "review", executionTimeout: "5m" }, async (_input, ctx) => {
    ctx.setState({ step: "waiting for approve" });
    const approved = await ctx.waitForSignal("approve", { timeout: "5m" });
    const wp = await ctx.createWaitpoint({ label: "sign-off", timeout: "10m" });
    ctx.setState({ step: "waiting for sign-off", waitpoint: wp.id });
    const signedOff = await ctx.waitForWaitpoint(wp);
    const fired = await ctx.waitAny(sleep("10m"), signal("done"));
    return { approved, signedOff, fired: fired.index, done: fired.payload, hasUrl: wp.url.length > 0 };
  });
  await startWorker(t, "w-interact", { workflows: [wf], slots: 1 });
  const ref = await wf.runNoWait({});
  // Signals wait in the run's inbox until a wait takes them: no need to time them.
  await eventually(async () => {
    try {
      await client.runs.signal(ref.runId, "approve", { by: "ann" });
      return true;
    } catch {
      return false; // the run is not stored yet
    }
  });
  let waitpointId = "";
  await eventually(async () => {
    const state = (await client.runs.state(ref.runId)) as { waitpoint?: string } | null;
    waitpointId = state?.waitpoint ?? "";
    return waitpointId !== "";
  }, 30_000);
  await client.waitpoints.complete(waitpointId, { signed: true });
  await client.runs.signal(ref.runId, "done", { n: 1 });
  const out = (await ref.result({ timeoutMs: 60_000 })).review;
  assert.deepEqual(out, { approved: { by: "ann" }, signedOff: { signed: true }, fired: 1, done: { n: 1 }, hasUrl: true });
  assert.deepEqual(await client.runs.state(ref.runId), { step: "waiting for sign-off", waitpoint: waitpointId });
});

test("debounce and batch windows: one run per burst or batch", async (t) => {
  const deb = client.workflow<{ thread: string; n: number }>({
    name: unique("deb-ts"), debounce: { key: "input.thread", period: "2s", maxWait: "30s" },
  });
  deb.task({ name: "echo" }, (input) => input);
  const bat = client.workflow<{ n: number }>({ name: unique("bat-ts"), batch: { size: 3, maxWait: "30s" } });
  bat.task({ name: "echo" }, (input) => input);
  await startWorker(t, "w-windows", { workflows: [deb, bat], slots: 4 });
  const refs = [];
  for (let n = 0; n < 4; n++) refs.push(await deb.runNoWait({ thread: "t1", n }));
  assert.equal(new Set(refs.map((r) => r.runId)).size, 1);
  assert.deepEqual((await refs[0]!.result({ timeoutMs: 60_000 })).echo, { thread: "t1", n: 3 });
  const batched = await bat.runMany([{ n: 0 }, { n: 1 }, { n: 2 }]);
  assert.equal(new Set(batched.map((r) => r.runId)).size, 1);
  assert.deepEqual((await batched[0]!.result({ timeoutMs: 60_000 })).echo, { items: [{ n: 0 }, { n: 1 }, { n: 2 }] });
  const both = client.workflow({ name: unique("both"), debounce: { period: "1s" }, batch: {} });
  both.task({ name: "t" }, () => 1);
  assert.throws(() => both.spec(), /debounce and batch do not combine/);
});
