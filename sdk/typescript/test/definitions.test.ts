// Definitions fail when declared, like the Python SDK's decorators; no server involved.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Ratchet, WorkflowDefinitionError } from "../src/index.js";

const r = new Ratchet({ token: "unused", apiUrl: "http://127.0.0.1:1", grpcAddr: "127.0.0.1:1" });

test("spec matches the API's workflow schema", () => {
  const wf = r.workflow({ name: "spec", onEvents: ["doc.uploaded"], concurrency: { key: "input.user", maxRuns: 2 } });
  const fetch = wf.task({ name: "fetch", retries: 3, executionTimeout: "30s", rateLimits: [{ key: "llm" }] }, () => ({}));
  wf.task({ name: "summarize", parents: [fetch], desiredLabels: { gpu: "a100" } }, () => ({}));
  const spec = wf.spec();
  assert.deepEqual(spec.on_events, ["doc.uploaded"]);
  assert.deepEqual(spec.concurrency, [{ key: "input.user", max_runs: 2, strategy: "GROUP_ROUND_ROBIN" }]);
  assert.equal(spec.tasks[0]?.execution_timeout_s, 30);
  assert.deepEqual(spec.tasks[0]?.rate_limits, [{ key: "llm", units: 1 }]);
  assert.deepEqual(spec.tasks[1]?.parents, ["fetch"]);
  assert.deepEqual(spec.tasks[1]?.desired_labels, { gpu: { value: "a100", required: false, weight: 1 } });
});

test("bad definitions are refused when declared", () => {
  const wf = r.workflow({ name: "bad" });
  const other = r.workflow({ name: "other" });
  const foreign = other.task({ name: "x" }, () => 1);
  assert.throws(() => r.workflow({ name: "has space" }), WorkflowDefinitionError);
  assert.throws(() => wf.task({ name: "a", parents: [foreign] }, () => 1), /parents must be tasks of workflow "bad"/);
  assert.throws(() => wf.task({ name: "a", retries: -1 }, () => 1), /retries/);
  assert.throws(() => wf.task({ name: "a", rateLimits: [{ key: "k", dynamicKey: "input.k" }] }, () => 1), /exactly one/);
  assert.throws(() => wf.task({ name: "a", executionTimeout: "30 seconds" as "30s" }, () => 1), /must look like/);
  wf.task({ name: "a" }, () => 1);
  assert.throws(() => wf.task({ name: "a" }, () => 1), /already has a task named "a"/);
  assert.throws(() => r.workflow({ name: "empty" }).spec(), /has no tasks/);
});

test("mockRun calls the function with parent outputs", async () => {
  const wf = r.workflow({ name: "mock" });
  const fetch = wf.task({ name: "fetch" }, () => ({ text: "a b c" }));
  const count = wf.task({ name: "count", parents: [fetch] }, (_input, ctx) => ({
    words: ctx.parentOutput(fetch).text.split(" ").length,
  }));
  assert.deepEqual(await count.mockRun({}, { parentOutputs: { fetch: { text: "one two" } } }), { words: 2 });
});

test("a standalone task is a one-task workflow with workflow-level concurrency", () => {
  const wf = r.task({ name: "embed", retries: 2, concurrency: { key: "input.user" } }, () => ({}));
  const spec = wf.spec();
  assert.equal(spec.name, "embed");
  assert.deepEqual(spec.tasks.map((t) => [t.name, t.retries]), [["embed", 2]]);
  assert.deepEqual(spec.concurrency, [{ key: "input.user", max_runs: 1, strategy: "GROUP_ROUND_ROBIN" }]);
  assert.deepEqual(spec.tasks[0]?.concurrency, []);
});
