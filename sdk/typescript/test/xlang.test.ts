// One workflow, two languages: `first` runs on this TypeScript worker, `second` on a Python
// worker. tests/integration/test_typescript.py starts the Python worker, declares the same
// workflow there, triggers one run from Python, and passes both through the environment:
//   RATCHET_XLANG_WORKFLOW  the workflow's name
//   RATCHET_XLANG_RUN_ID    the run Python triggered (it waits for this worker to run `first`)
// Without them (a plain `npm test` against `make up`) there is no Python worker: skipped.
import assert from "node:assert/strict";
import { test } from "node:test";

import { client, startWorker } from "./helpers.js";

const workflowName = process.env.RATCHET_XLANG_WORKFLOW;
const pythonRunId = process.env.RATCHET_XLANG_RUN_ID;

test(
  "a TS task feeds a Python task, triggered from TypeScript and from Python",
  { skip: workflowName ? false : "no Python worker (run through tests/integration/test_typescript.py)" },
  async (t) => {
    // Both SDKs declare the same DAG; required labels route each task to its language.
    const wf = client.workflow<{ n: number }>({ name: workflowName as string });
    const first = wf.task(
      { name: "first", desiredLabels: { lang: { value: "ts", required: true } } },
      (input) => ({ lang: "ts", doubled: input.n * 2 }),
    );
    // Declared without a function: part of the DAG, run by the Python worker.
    wf.task({ name: "second", parents: [first], desiredLabels: { lang: { value: "py", required: true } } });
    await startWorker(t, "w-xlang-ts", { workflows: [wf], slots: 2, labels: { lang: "ts" } });

    const out = await wf.run({ n: 20 }, { timeoutMs: 60_000 });
    assert.deepEqual(out, { first: { lang: "ts", doubled: 40 }, second: { lang: "py", plus_one: 41 } });

    assert.ok(pythonRunId, "RATCHET_XLANG_RUN_ID is set with RATCHET_XLANG_WORKFLOW");
    const fromPython = await client.runs.ref(pythonRunId).result({ timeoutMs: 60_000 });
    assert.deepEqual(fromPython, { first: { lang: "ts", doubled: 14 }, second: { lang: "py", plus_one: 15 } });
  },
);
