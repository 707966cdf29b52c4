// Concurrency limits and rate limits decided by the scheduler, observed from a TS worker.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ApiError } from "../src/index.js";
import { client, eventually, startWorker, unique } from "./helpers.js";

/** The run's status; MISSING until the scheduler has written the run (the API answers 404). */
async function statusOf(runId: string): Promise<string> {
  try {
    return (await client.runs.get(runId)).status;
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return "MISSING";
    throw err;
  }
}

test("a concurrency key lets one run per group at a time", async (t) => {
  let running = 0;
  let peak = 0;
  const wf = client.workflow<{ group: string }>({
    name: unique("one-at-a-time"), concurrency: { key: "input.group", maxRuns: 1 },
  });
  wf.task({ name: "work" }, async () => {
    running += 1;
    peak = Math.max(peak, running);
    await new Promise((r) => setTimeout(r, 50));
    running -= 1;
    return { ok: true };
  });
  await startWorker(t, "w-conc", { workflows: [wf], slots: 4 });
  const refs = await wf.runMany([1, 2, 3, 4].map(() => ({ group: "g" })));
  for (const ref of refs) assert.deepEqual(await ref.result({ timeoutMs: 30_000 }), { work: { ok: true } });
  assert.equal(peak, 1);
});

test("a static rate limit holds back starts beyond its window", async (t) => {
  const key = unique("quota");
  await client.rateLimits.put(key, { limit: 1, per: "hour" });
  const limited = client.task({ name: unique("limited"), rateLimits: [{ key, units: 1 }] }, () => ({ ok: true }));
  await startWorker(t, "w-rate", { workflows: [limited], slots: 4 });
  const refs = await limited.runMany([{}, {}]);
  const ids = refs.map((r) => r.runId);
  const statuses = async (): Promise<string[]> => Promise.all(ids.map(statusOf));
  await eventually(async () => (await statuses()).includes("SUCCEEDED"), 30_000);
  // The hour's one unit is spent: the other run's task stays queued and never starts.
  const waiting = await Promise.all(ids.map((id) => client.runs.get(id)));
  const held = waiting.filter((run) => run.status !== "SUCCEEDED");
  assert.equal(held.length, 1);
  assert.equal(held[0]?.tasks[0]?.status, "QUEUED");
  assert.equal(held[0]?.tasks[0]?.started_at, null);
  await client.runs.cancel(held[0]?.id as string);
});
