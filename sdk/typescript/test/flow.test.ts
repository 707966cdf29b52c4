// Flow control from TypeScript: idempotency keys on triggers, pause and resume.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ApiError } from "../src/index.js";
import { client, eventually, startWorker, unique } from "./helpers.js";

test("a repeated idempotency key answers the first run", async (t) => {
  const wf = client.workflow({ name: unique("ts-idem") });
  wf.task({ name: "echo" }, (input) => ({ input }));
  await startWorker(t, "w-ts-idem", { workflows: [wf], slots: 2 });
  const key = unique("order");
  const first = await wf.runNoWait({ n: 1 }, { idempotencyKey: key });
  const again = await wf.runNoWait({ n: 2 }, { idempotencyKey: key, idempotencyTtlS: 3600 });
  assert.equal(first.deduplicated, false);
  assert.equal(again.deduplicated, true);
  assert.equal(again.runId, first.runId);
  assert.deepEqual(await again.result(), { echo: { input: { n: 1 } } });
});

test("pause drop refuses with 409, queue holds until resume", async (t) => {
  const wf = client.workflow({ name: unique("ts-pause") });
  wf.task({ name: "echo" }, (input) => ({ input }));
  await startWorker(t, "w-ts-pause", { workflows: [wf], slots: 2 });
  await client.register(wf);
  await client.workflows.pause(wf.name, "drop");
  await assert.rejects(wf.runNoWait({ n: 1 }), (err: unknown) => err instanceof ApiError && err.status === 409);
  const state = await client.workflows.pause(wf.name, "queue");
  assert.equal(state.mode, "queue");
  const held = await wf.runNoWait({ n: 2 });
  await eventually(async () => (await client.workflows.pauseState(wf.name)).held === 1, 30_000);
  const resumed = await client.workflows.resume(wf.name);
  assert.equal(resumed.paused, false);
  assert.deepEqual(await held.result(), { echo: { input: { n: 2 } } });
});
