"""The TypeScript SDK (sdk/typescript) against the real stack, and across languages.

`npm test` runs as a subprocess with a fresh tenant's RATCHET_* pointing at this session's
in-process services, while a Python worker serves the Python half of a cross-language
workflow: `first` runs on the TypeScript worker, `second` here. One run is triggered from
TypeScript (inside the npm suite) and one from Python (below); both must finish.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import Stack
from ratchet import Context, DesiredLabel, NonRetryable, Ratchet

from services.matcher.service import MatcherService
from services.replicator.service import ReplicatorService

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "sdk" / "typescript"
NPM_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
async def matcher(stack: Stack) -> AsyncIterator[MatcherService]:
    """The TS suite pushes events, so this module runs a matcher like `make up` does."""
    svc = MatcherService(stack.settings, durable=f"matcher-ts-{uuid.uuid4().hex[:6]}")
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture(scope="module")
async def log_store(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ReplicatorService]:
    """The TS suite reads logs back (`r.runs.logs`): the log store in embedded mode (chDB)."""
    settings = msgspec.structs.replace(
        stack.settings, data_dir=str(tmp_path_factory.mktemp("olap-ts")), clickhouse_url=""
    )
    svc = ReplicatorService(settings)
    await svc.start()
    yield svc
    await svc.stop()


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm are required for the TypeScript SDK tests; `make test` installs them")
    return npm


async def _run(*args: str, env: dict[str, str] | None = None, timeout_s: float) -> tuple[int, str]:
    # An asyncio subprocess, not subprocess.run: the services under test live on this loop.
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=PKG, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -1, out.decode(errors="replace") + f"\n(killed after {timeout_s}s)"
    return proc.returncode or 0, out.decode(errors="replace")


async def _ensure_node_modules(npm: str) -> None:
    """`npm ci` when node_modules is missing or older than the lockfile (`make test` does it too)."""
    stamp = PKG / "node_modules" / ".package-lock.json"
    lock = PKG / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    code, out = await _run(npm, "ci", "--no-audit", "--no-fund", timeout_s=NPM_TIMEOUT_S)
    assert code == 0, f"npm ci failed:\n{out}"


def _xlang_workflow(client: Ratchet, name: str) -> Any:
    """The Python half of the DAG test/xlang.test.ts declares; labels route each task."""
    wf = client.workflow(name)

    @wf.task(name="first", desired_labels={"lang": DesiredLabel(value="ts", required=True)})
    async def first(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        raise NonRetryable("`first` belongs to the TypeScript worker")

    @wf.task(name="second", parents=[first],
             desired_labels={"lang": DesiredLabel(value="py", required=True)})
    async def second(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"lang": "py", "plus_one": ctx.parent_output(first)["doubled"] + 1}

    return wf


@pytest.mark.timeout(NPM_TIMEOUT_S + 60)
async def test_typescript_suite_and_cross_language_workflow(
    stack: Stack, tenant: str, client: Ratchet, start_worker: Any, matcher: MatcherService,
    log_store: ReplicatorService,
) -> None:
    npm = _npm()
    await _ensure_node_modules(npm)
    wf = _xlang_workflow(client, f"xlang-{uuid.uuid4().hex[:8]}")
    await start_worker("w-xlang-py", workflows=[wf], slots=2, labels={"lang": "py"})
    # Triggered from Python before any TypeScript worker exists: it waits for one.
    ref = await wf.aio_run_no_wait({"n": 7})

    env = {
        **os.environ,
        "RATCHET_TOKEN": stack.tokens[tenant],  # type: ignore[attr-defined]
        "RATCHET_API_URL": stack.api_url,
        "RATCHET_GRPC_ADDR": stack.grpc_addr,
        "RATCHET_XLANG_WORKFLOW": wf.name,
        "RATCHET_XLANG_RUN_ID": ref.run_id,
    }
    code, out = await _run(npm, "test", env=env, timeout_s=NPM_TIMEOUT_S)
    assert code == 0, f"npm test failed (exit {code}):\n{out}"
    assert "# fail 0" in out and "# skipped 0" in out, out

    assert await ref.aio_result(30) == {
        "first": {"lang": "ts", "doubled": 14},
        "second": {"lang": "py", "plus_one": 15},
    }


async def test_generated_typescript_client_is_fresh() -> None:
    npm = _npm()
    await _ensure_node_modules(npm)
    code, out = await _run(npm, "run", "gen:check", timeout_s=120)
    assert code == 0, f"{out}\nrun `make sdk-ts-gen`"


async def test_npm_lockfile_matches_package_json() -> None:
    """`npm ci` refuses a lockfile that disagrees with package.json; say so by name here."""
    code, out = await _run(_npm(), "ci", "--dry-run", "--no-audit", "--no-fund", timeout_s=120)
    assert code == 0, f"{out}\nrun `npm install` in sdk/typescript and commit package-lock.json"
