"""The SDK as a user gets it: `./sdk` installed alone into a clean venv runs a worker.

The venv must hold none of the server's dependencies, and the worker runs in a subprocess with
that venv's interpreter, so nothing from the repository's own environment can leak in.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from ratchet import Ratchet
from uv import find_uv_bin

pytestmark = pytest.mark.asyncio(loop_scope="session")

SDK_DIR = Path(__file__).resolve().parents[2] / "sdk"
SERVER_ONLY = ("chdb", "asyncpg", "litestar", "nats", "libs", "services")

WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os

    from ratchet import Context, Ratchet

    async def main() -> None:
        r = Ratchet()  # token and addresses from RATCHET_* variables
        wf = r.workflow(os.environ["DIST_WORKFLOW"])

        @wf.task()
        def greet(input: dict, ctx: Context) -> dict:
            return {"greeting": "hello " + input["who"]}

        @wf.task(parents=[greet])
        async def shout(input: dict, ctx: Context) -> dict:
            return {"loud": ctx.parent_output(greet)["greeting"].upper()}

        worker = r.worker("dist-worker", [wf], slots=2)
        running = asyncio.create_task(worker.astart())
        await worker.wait_connected(30)
        ref = await wf.aio_run_no_wait({"who": "dist"})
        output = await ref.aio_result(60)
        await worker.astop(drain_timeout_s=5)
        await running
        await r.aclose()
        print(json.dumps({"run_id": ref.run_id, "output": output}))

    asyncio.run(main())
    """
)


def _clean_env(**extra: str) -> dict[str, str]:
    # Nothing that points an interpreter at the repository or its venv.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("RATCHET_")}
    env.update(extra)
    return env


async def _run(*cmd: str | Path, env: dict[str, str], cwd: Path, timeout_s: float) -> str:
    """Run a command without blocking the loop the in-process services live on."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, cmd), env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{cmd[0]} did not finish within {timeout_s}s") from None
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{err.decode()[-4000:]}"
    return out.decode()


async def test_sdk_alone_in_a_clean_venv_runs_a_workflow(
    stack, client: Ratchet, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    env = _clean_env()
    await _run(sys.executable, "-m", "venv", "--without-pip", venv, env=env, cwd=tmp_path,
               timeout_s=60)
    await _run(find_uv_bin(), "pip", "install", "--python", python, SDK_DIR, env=env,
               cwd=tmp_path, timeout_s=180)

    probe = "import importlib.util as u, json, sys; print(json.dumps([m for m in sys.argv[1:] if u.find_spec(m)]))"
    found = json.loads(await _run(python, "-c", probe, *SERVER_ONLY, "opentelemetry",
                                  env=env, cwd=tmp_path, timeout_s=30))
    assert found == [], f"the SDK venv can import server-side packages: {found}"

    script = tmp_path / "dist_worker.py"
    script.write_text(WORKER_SCRIPT)
    name = f"dist-{uuid.uuid4().hex[:8]}"
    worker_env = _clean_env(
        RATCHET_TOKEN=client.config.token, RATCHET_API_URL=stack.api_url,
        RATCHET_GRPC_ADDR=stack.grpc_addr, DIST_WORKFLOW=name,
    )
    stdout = await _run(python, script, env=worker_env, cwd=tmp_path, timeout_s=90)
    result = json.loads(stdout.strip().splitlines()[-1])

    assert result["output"] == {
        "greet": {"greeting": "hello dist"}, "shout": {"loud": "HELLO DIST"},
    }
    run = await client.runs.aio_get(result["run_id"])
    assert run["status"] == "SUCCEEDED"
    assert run["workflow"] == name

    # The `ratchet` command comes with the SDK: the same clean venv has it, and it works.
    shown = await _run(venv / "bin" / "ratchet", "runs", "get", result["run_id"], "--json",
                       env=worker_env, cwd=tmp_path, timeout_s=60)
    assert json.loads(shown)["status"] == "SUCCEEDED"
