// Retries, non-retryable failures, execution timeouts, cancellation and the ctx protocol events.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Context, NonRetryable, RunFailed } from "../src/index.js";
import { client, signal, startWorker, unique, within } from "./helpers.js";

function aborted(s: AbortSignal): Promise<void> {
  return new Promise((resolve) => s.addEventListener("abort", () => resolve(), { once: true }));
}

test("a failing task is retried and every attempt is kept", async (t) => {
  const flaky = client.task({ name: unique("flaky"), retries: 2, backoffBase: "50ms" }, (_input, ctx) => {
    if (ctx.attempt < 2) throw new Error(`boom ${ctx.attempt}`);
    return { attempt: ctx.attempt };
  });
  await startWorker(t, "w-flaky", { workflows: [flaky], slots: 2 });
  const ref = await flaky.runNoWait();
  assert.deepEqual(await ref.result({ timeoutMs: 30_000 }), { [flaky.name]: { attempt: 2 } });
  const run = await client.runs.get(ref.runId);
  const attempts = run.tasks[0]?.attempts ?? [];
  assert.deepEqual(attempts.map((a) => a.status), ["FAILED", "FAILED", "SUCCEEDED"]);
  assert.equal(attempts[0]?.error?.message, "boom 0");
});

test("NonRetryable fails at once and RunFailed carries the error", async (t) => {
  let calls = 0;
  const fatal = client.task({ name: unique("fatal"), retries: 3 }, () => {
    calls += 1;
    throw new NonRetryable("no point retrying");
  });
  await startWorker(t, "w-fatal", { workflows: [fatal], slots: 2 });
  const err = await fatal.run({}, { timeoutMs: 30_000 }).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof RunFailed, String(err));
  assert.equal(err.status, "FAILED");
  assert.equal(err.errors[fatal.name]?.type, "NonRetryable");
  assert.equal(err.errors[fatal.name]?.non_retryable, true);
  assert.equal(calls, 1);
});

test("an execution timeout aborts the attempt's signal and retries", async (t) => {
  const sawAbort = signal();
  const sleepy = client.task(
    { name: unique("sleepy"), retries: 1, backoffBase: "50ms", executionTimeout: "500ms" },
    async (_input, ctx) => {
      if (ctx.attempt === 0) {
        await aborted(ctx.signal);
        sawAbort.resolve();
        throw ctx.signal.reason;
      }
      return { attempt: ctx.attempt };
    },
  );
  await startWorker(t, "w-sleepy", { workflows: [sleepy], slots: 2 });
  const ref = await sleepy.runNoWait();
  assert.deepEqual(await ref.result({ timeoutMs: 30_000 }), { [sleepy.name]: { attempt: 1 } });
  assert.ok(sawAbort.done(), "the first attempt's AbortSignal fired");
  const run = await client.runs.get(ref.runId);
  assert.deepEqual((run.tasks[0]?.attempts ?? []).map((a) => a.status), ["TIMED_OUT", "SUCCEEDED"]);
});

test("cancelling a run aborts its running task and cancels the rest", async (t) => {
  const started = signal();
  const sawAbort = signal();
  const wf = client.workflow({ name: unique("cancel-me") });
  const long = wf.task({ name: "long" }, async (_input, ctx) => {
    started.resolve();
    await aborted(ctx.signal);
    sawAbort.resolve();
    return {};
  });
  wf.task({ name: "after", parents: [long] }, () => ({}));
  await startWorker(t, "w-cancel", { workflows: [wf], slots: 2 });
  const ref = await wf.runNoWait();
  await within(started.promise, 20_000, "task start");
  await client.runs.cancel(ref.runId);
  const err = await ref.result({ timeoutMs: 30_000 }).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof RunFailed, String(err));
  assert.equal(err.status, "CANCELLED");
  await within(sawAbort.promise, 10_000, "abort seen by the task");
  const run = await client.runs.get(ref.runId);
  assert.deepEqual(Object.fromEntries(run.tasks.map((task) => [task.name, task.status])), {
    long: "CANCELLED", after: "CANCELLED",
  });
});

test("refreshTimeout extends the deadline; every log line and stream chunk reads back", async (t) => {
  const refresher = client.task({ name: unique("refresher"), executionTimeout: "1s" }, async (_input, ctx) => {
    ctx.refreshTimeout("10s");
    ctx.log("line 0");
    ctx.log("line 1", "warning");
    ctx.log("line 2", "error");
    ctx.putStream("tok0 ");
    ctx.putStream("tok1 ");
    ctx.putStream({ n: 2 });
    ctx.putStream(new TextEncoder().encode("raw"));
    await new Promise((r) => setTimeout(r, 1_500));
    ctx.log("after the wait", "debug");
    return { done: true };
  });
  await startWorker(t, "w-refresh", { workflows: [refresher], slots: 1 });
  const ref = await refresher.runNoWait({});
  assert.deepEqual(await ref.result({ timeoutMs: 30_000 }), { [refresher.name]: { done: true } });
  // Read-your-writes: the run is reported ended, so every line is already readable.
  const lines = await client.runs.logs(ref.runId);
  assert.deepEqual(
    lines.map((l) => [l.level, l.message, l.task, l.attempt]),
    [
      ["info", "line 0", refresher.name, 0], ["warning", "line 1", refresher.name, 0],
      ["error", "line 2", refresher.name, 0], ["debug", "after the wait", refresher.name, 0],
    ],
  );
  const chunks: unknown[] = [];
  for await (const chunk of client.runs.stream(ref.runId)) chunks.push(chunk);
  assert.deepEqual(chunks, ["tok0 ", "tok1 ", { n: 2 }, new Uint8Array(Buffer.from("raw"))]);
  const ctx = new Context({
    runId: "r", taskId: "t", taskName: "n", workflow: "w", attempt: 0, parentOutputs: {},
    signal: new AbortController().signal,
  });
  assert.throws(() => ctx.log("x", "loud" as "info"), /log level must be one of debug, info, warning, error, critical/);
});

test("on-failure and on-success tasks run after the DAG", async (t) => {
  const wf = client.workflow<{ fail: boolean }>({ name: unique("hooked") });
  wf.task({ name: "work" }, (input) => {
    if (input.fail) throw new NonRetryable("nope");
    return { ok: true };
  });
  wf.onFailureTask({ name: "cleanup" }, (_input, ctx) => ({ failed: Object.keys(ctx.taskErrors()).sort() }));
  wf.onSuccessTask({ name: "celebrate" }, () => ({ yay: true }));
  await startWorker(t, "w-hooks", { workflows: [wf], slots: 2 });
  assert.deepEqual(await wf.run({ fail: false }, { timeoutMs: 30_000 }), { work: { ok: true }, celebrate: { yay: true } });
  const ref = await wf.runNoWait({ fail: true });
  await assert.rejects(ref.result({ timeoutMs: 30_000 }), RunFailed);
  const run = await client.runs.get(ref.runId);
  assert.deepEqual(run.output.cleanup, { failed: ["work"] });
  assert.equal(run.tasks.find((task) => task.name === "celebrate")?.status, "SKIPPED");
});
