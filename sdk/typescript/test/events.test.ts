// An event pushed through the REST API triggers the workflows listening on its key.
import assert from "node:assert/strict";
import { test } from "node:test";

import { client, eventually, startWorker, unique } from "./helpers.js";

test("events.push triggers a run with the payload as input", async (t) => {
  const key = unique("doc.uploaded");
  const wf = client.workflow({ name: unique("on-upload"), onEvents: [key] });
  wf.task({ name: "echo" }, (input, ctx) => ({ input, filterPayload: ctx.filterPayload ?? null }));
  await startWorker(t, "w-events", { workflows: [wf], slots: 2 });
  const accepted = await client.events.push(key, { docId: "1" }, { metadata: { via: "ts" } });
  assert.ok(accepted.event_id);
  let runId = "";
  await eventually(async () => {
    const runs = await client.runs.list({ workflow: wf.name });
    runId = runs.find((r) => r.status === "SUCCEEDED")?.id ?? "";
    return runId !== "";
  }, 30_000);
  const run = await client.runs.get(runId);
  assert.deepEqual(run.output, { echo: { input: { docId: "1" }, filterPayload: null } });
  assert.deepEqual(run.metadata, { via: "ts" });
});
