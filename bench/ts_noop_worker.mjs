// The no-op bench's worker in TypeScript (`make bench-ts`): the built SDK (sdk/typescript/dist),
// one no-op task recording trigger->start per run. Prints "ready" once connected; on SIGTERM it
// drains, prints the start latencies (ms) as one JSON line, and exits.
import { Ratchet } from "../sdk/typescript/dist/src/index.js";

const [name, slots] = process.argv.slice(2);
const r = new Ratchet();
const wf = r.workflow({ name });
const starts = [];
wf.task({ name: "noop" }, (input) => {
  if (input.i >= 0) starts.push(Date.now() - input.t * 1000);
  return { ok: 1 };
});
const worker = r.worker("bench-worker-ts", { workflows: [wf], slots: Number(slots), handleSignals: false });
await worker.start({ timeoutMs: 30_000 });
console.log("ready");
process.once("SIGTERM", async () => {
  await worker.stop();
  console.log(JSON.stringify(starts));
});
