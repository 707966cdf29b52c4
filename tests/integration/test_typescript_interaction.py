"""The TypeScript client's signal / state / waitpoints.complete / fork (docs/interaction.md)
against the real stack: a Python worker runs the durable task, a Node script (the compiled
SDK, `tsc`) talks to its run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Stack, eventually
from ratchet import DurableContext, Ratchet

pytestmark = pytest.mark.asyncio(loop_scope="session")

PKG = Path(__file__).resolve().parents[2] / "sdk" / "typescript"

SCRIPT = """
import { Ratchet } from "./dist/src/index.js";
const [runId, waitpointId] = process.argv.slice(2);
const r = new Ratchet();
const out = {};
out.signal = await r.runs.signal(runId, "go", { from: "ts" });
out.completed = await r.waitpoints.complete(waitpointId, { ok: true });
try { await r.waitpoints.complete(waitpointId, { ok: false }); } catch (err) { out.again = err.status; }
for (;;) {
  const run = await r.runs.get(runId, { waitS: 5 });
  if (run.status === "SUCCEEDED") break;
}
out.state = await r.runs.state(runId);
const fork = await r.runs.fork(runId, { fromTask: "ts-talk", fromStep: 2 });
out.forkId = fork.runId;
console.log(JSON.stringify(out));
"""


async def _node(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=PKG, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    return proc.returncode or 0, out.decode(errors="replace")


async def test_the_typescript_client_signals_reads_state_completes_and_forks(
    client: Ratchet, start_worker: Any, stack: Stack, tenant: str, tmp_path: Path
) -> None:
    if shutil.which("node") is None or not (PKG / "node_modules").exists():
        pytest.fail("node and the TypeScript SDK's node_modules are needed (make sdk-ts-deps)")

    @client.durable_task(name="ts-talk", execution_timeout=timedelta(minutes=2))
    async def talk(input: dict, ctx: DurableContext) -> dict:
        wp = await ctx.aio_create_waitpoint(label="from ts")
        ctx.set_state({"waitpoint": wp.id})                      # position 1
        go = await ctx.aio_wait_for_signal("go")                  # position 2
        answer = await ctx.aio_wait_for_waitpoint(wp)            # position 3
        ctx.set_state({"done": True})
        return {"go": go, "answer": answer}

    await start_worker("w-ts-talk", workflows=[talk], slots=2)
    ref = await talk.aio_run_no_wait({})
    state: dict[str, Any] = {}

    async def published() -> bool:
        state.update(await client.runs.aio_state(ref.run_id) or {})
        return "waitpoint" in state

    await eventually(published, timeout_s=30)
    code, out = await _node(["npx", "tsc", "-p", "tsconfig.json"], dict(os.environ))
    assert code == 0, out
    script = PKG / f".interaction-{tenant}.mjs"  # beside dist/, so its import resolves
    script.write_text(SCRIPT)
    env = dict(os.environ, RATCHET_TOKEN=stack.tokens[tenant],  # type: ignore[attr-defined]
               RATCHET_API_URL=stack.api_url, RATCHET_GRPC_ADDR=stack.grpc_addr)
    try:
        code, out = await _node(["node", script.name, ref.run_id, state["waitpoint"]], env)
    finally:
        script.unlink()
    assert code == 0, out
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["signal"]["name"] == "go" and doc["signal"]["run_id"] == ref.run_id
    assert doc["completed"]["status"] == "completed" and doc["again"] == 409
    assert doc["state"] == {"done": True}
    assert (await ref.aio_result(30))["ts-talk"] == {"go": {"from": "ts"}, "answer": {"ok": True}}
    # The fork kept the state at position 1 but not the waitpoint at 0 (a waitpoint belongs
    # to its run): its task makes its own, then waits for "go" again.
    forked = await client.runs.aio_get(doc["forkId"], wait_s=5)
    assert forked["forked_from"] == ref.run_id and forked["from_step"] == 2
    own: list[dict[str, Any]] = []

    async def fork_waitpoint() -> bool:
        own[:] = await client.waitpoints.aio_list(run_id=doc["forkId"])
        return bool(own)

    await eventually(fork_waitpoint, timeout_s=30)
    assert own[0]["id"] != state["waitpoint"] and own[0]["label"] == "from ts"
    await client.runs.aio_signal(doc["forkId"], "go", {"again": True})
    await client.waitpoints.aio_complete(own[0]["id"], {"ok": "fork"})
    done = await client.runs.aio_get(doc["forkId"], wait_s=30)
    assert done["status"] == "SUCCEEDED", done
    assert done["output"]["ts-talk"] == {"go": {"again": True}, "answer": {"ok": "fork"}}
