"""The TypeScript SDK (sdk/typescript) against the real stack, and across languages.

`npm test` runs as a subprocess with a fresh tenant's RATCHET_* pointing at this session's
in-process services, while a Python worker serves the Python half of a cross-language
workflow: `first` runs on the TypeScript worker, `second` here. One run is triggered from
TypeScript (inside the npm suite) and one from Python (below); both must finish.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import Stack, eventually
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


async def _run(*args: str, env: dict[str, str] | None = None, timeout_s: float,
               cwd: Path = PKG) -> tuple[int, str]:
    # An asyncio subprocess, not subprocess.run: the services under test live on this loop.
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
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


def _dist_is_fresh() -> bool:
    """dist/src holds a build newer than every source file (and than package.json)."""
    built = PKG / "dist" / "src" / "index.js"
    if not built.exists():
        return False
    sources = [*(PKG / "src").rglob("*.ts"), PKG / "package.json", PKG / "tsconfig.json"]
    return built.stat().st_mtime > max(p.stat().st_mtime for p in sources)


def _quickstart_project(tmp_path: Path) -> Path:
    """An empty project depending on the packed SDK (`npm install ratchet-sdk-0.1.0.tgz`).

    Its lockfile pins the SDK's own locked runtime dependencies, so `npm ci --offline` installs
    from the cache the SDK's `npm ci` filled, never from the network."""
    (tarball,) = tmp_path.glob("ratchet-sdk-*.tgz")
    sdk_lock = json.loads((PKG / "package-lock.json").read_text())
    sdk = sdk_lock["packages"][""]
    packages: dict[str, Any] = {
        "": {"name": "quickstart", "dependencies": {"@ratchet/sdk": f"file:../{tarball.name}"}},
        "node_modules/@ratchet/sdk": {
            "version": sdk["version"], "resolved": f"file:../{tarball.name}",
            "license": sdk.get("license", ""), "dependencies": sdk["dependencies"],
            "engines": sdk.get("engines", {}),
        },
    }
    for key, entry in sdk_lock["packages"].items():
        if key and not entry.get("dev"):
            packages[key] = {k: v for k, v in entry.items() if k not in ("dev", "devOptional")}
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text(json.dumps(
        {"name": "quickstart", "private": True,
         "dependencies": {"@ratchet/sdk": f"file:../{tarball.name}"}}))
    (project / "package-lock.json").write_text(json.dumps(
        {"name": "quickstart", "lockfileVersion": 3, "requires": True, "packages": packages}))
    return project


def _readme_blocks() -> dict[str, str]:
    """The README's code blocks named by their info string (```js quickstart.mjs)."""
    text = (PKG / "README.md").read_text()
    found = dict(re.findall(r"```js (\S+)\n(.*?)```", text, flags=re.S))
    assert set(found) >= {"quickstart.mjs", "quickstart.cjs"}, sorted(found)
    return found


@pytest.mark.timeout(NPM_TIMEOUT_S + 120)
async def test_readme_quick_start_runs_verbatim_from_a_fresh_project(
    stack: Stack, tenant: str, log_store: ReplicatorService, tmp_path: Path
) -> None:
    """As a new user would: `npm pack` the SDK, install the tarball into an empty project
    (offline: from the cache `npm ci` filled), paste the README's quick start (ES module and
    CommonJS) and run it. Each script must print its result and then exit on its own."""
    npm = _npm()
    await _ensure_node_modules(npm)
    # `npm pack` compiles first (prepack); skipped when the suite above just compiled src/.
    fresh = ["--ignore-scripts"] if _dist_is_fresh() else []
    code, out = await _run(npm, "pack", *fresh, "--pack-destination", str(tmp_path),
                           timeout_s=NPM_TIMEOUT_S)
    assert code == 0, out
    project = _quickstart_project(tmp_path)
    code, out = await _run(npm, "ci", "--offline", "--no-audit", "--no-fund",
                           cwd=project, timeout_s=NPM_TIMEOUT_S)
    assert code == 0, f"npm install of the packed SDK failed:\n{out}"
    for name, code_text in _readme_blocks().items():
        (project / name).write_text(code_text)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RATCHET_")},
        "RATCHET_TOKEN": stack.tokens[tenant],  # type: ignore[attr-defined]
        "RATCHET_API_URL": stack.api_url,
        "RATCHET_GRPC_ADDR": stack.grpc_addr,
    }
    node = shutil.which("node") or "node"
    # Well under the 30 s a drain timer left running used to keep the process alive.
    code, out = await _run(node, "quickstart.mjs", cwd=project, env=env, timeout_s=25)
    assert code == 0, out
    assert "{ hello: { message: 'hello ada' } }" in out and "[ 'greeting ada' ]" in out, out
    code, out = await _run(node, "quickstart.cjs", cwd=project, env=env, timeout_s=25)
    assert code == 0, out
    assert "{ hello: { message: 'hello ada' } }" in out, out


async def test_generated_typescript_client_is_fresh() -> None:
    npm = _npm()
    await _ensure_node_modules(npm)
    code, out = await _run(npm, "run", "gen:check", timeout_s=120)
    assert code == 0, f"{out}\nrun `make sdk-ts-gen`"


async def test_npm_lockfile_matches_package_json() -> None:
    """`npm ci` refuses a lockfile that disagrees with package.json; say so by name here."""
    code, out = await _run(_npm(), "ci", "--dry-run", "--no-audit", "--no-fund", timeout_s=120)
    assert code == 0, f"{out}\nrun `npm install` in sdk/typescript and commit package-lock.json"


# A TypeScript worker in its own process (the built SDK), killed and restarted by the test.
TS_WORKER = """
import { Ratchet } from "%(sdk)s";

const [name, childName, eventKey] = process.argv.slice(2);
const r = new Ratchet();
const wf = r.workflow({ name });
wf.durableTask({ name: "approve", executionTimeout: "5m" }, async (input, ctx) => {
  const start = await ctx.now();
  await ctx.sleepFor(`${input.sleep_ms}ms`);
  const woke = await ctx.now();
  const ev = await ctx.waitForEvent(eventKey, { expression: "input.doc_id == '1'" });
  return { start: start.getTime(), woke: woke.getTime(), by: ev.user, attempt: ctx.attempt };
});
const child = r.workflow({ name: childName });
child.task({ name: "square" }, (input) => ({ lang: "ts", square: input.n * input.n }));
await r.worker("kill-" + name, { workflows: [wf, child], slots: 1 }).run();
"""
SLEEP_MS = 6000
KILL_AFTER_S = 3.0


async def _build_dist(npm: str) -> None:
    if not _dist_is_fresh():
        code, out = await _run(npm, "run", "build", timeout_s=NPM_TIMEOUT_S)
        assert code == 0, out


@pytest.mark.timeout(NPM_TIMEOUT_S + 120)
async def test_ts_durable_task_survives_sigkill_and_takes_a_python_event_and_python_parent_has_ts_children(
    stack: Stack, tenant: str, client: Ratchet, start_worker: Any, matcher: MatcherService,
    tmp_path: Path,
) -> None:
    """A TS durable task (in a node process) sleeps; the process is SIGKILLed mid-sleep and a
    new one replays it: the sleep ends at its original deadline. It then waits for an event
    that Python pushes (CEL-filtered) while no TS worker runs. A Python parent task then fans
    out to children that only the TS worker runs."""
    import asyncpg  # the durable log is read where the scheduler keeps it

    npm = _npm()
    await _ensure_node_modules(npm)
    await _build_dist(npm)
    name, child_name = f"ts-approve-{uuid.uuid4().hex[:6]}", f"ts-child-{uuid.uuid4().hex[:6]}"
    event_key = f"ts.approval.{uuid.uuid4().hex[:6]}"
    script = tmp_path / "worker.mjs"
    script.write_text(TS_WORKER % {"sdk": (PKG / "dist" / "src" / "index.js").as_uri()})
    env = {
        **os.environ, "RATCHET_TOKEN": stack.tokens[tenant],  # type: ignore[attr-defined]
        "RATCHET_API_URL": stack.api_url, "RATCHET_GRPC_ADDR": stack.grpc_addr,
    }
    procs: list[asyncio.subprocess.Process] = []

    async def spawn() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node", str(script), name, child_name, event_key, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        procs.append(proc)
        return proc

    async def kill(proc: asyncio.subprocess.Process) -> None:
        proc.kill()  # SIGKILL: no drain, no goodbye
        await proc.wait()

    pg = await asyncpg.connect(stack.settings.database_url)

    async def waiting_at(position: int) -> bool:
        row = await pg.fetchrow(
            "SELECT waiting_attempt FROM durable_log"
            " WHERE tenant_id = $1 AND position = $2 AND status = 'pending'", tenant, position)
        return row is not None and row["waiting_attempt"] is not None

    async def done_at(position: int) -> bool:
        return bool(await pg.fetchval(
            "SELECT status FROM durable_log WHERE tenant_id = $1 AND position = $2",
            tenant, position) == "done")

    async def versions(workflow: str) -> list[dict[str, Any]]:
        try:
            return await client.workflows.aio_versions(workflow)
        except Exception:
            return []

    try:
        first = await spawn()
        await eventually(lambda: _has(versions, name), timeout_s=60)
        version = (await client.workflows.aio_versions(name))[0]["id"]
        ref = await client.workflow(name).aio_run_no_wait({"sleep_ms": SLEEP_MS}, version_id=version)
        await eventually(lambda: waiting_at(1), timeout_s=30)  # parked in its sleep
        registered = await pg.fetchval(
            "SELECT registered_at FROM durable_log WHERE tenant_id = $1 AND position = 1", tenant)
        # Kill the worker well into the sleep: a restarted sleep would end KILL_AFTER_S late.
        await eventually(lambda: _after(registered.timestamp() + KILL_AFTER_S), timeout_s=30)
        await kill(first)
        second = await spawn()  # replays: the sleep resumes with its original deadline
        await eventually(lambda: waiting_at(3), timeout_s=60)  # now waiting for the event
        await kill(second)
        # From Python, while no TS worker runs: a non-matching event, then the matching one.
        await client.events.aio_push(event_key, {"doc_id": "2", "user": "mallory"})
        await client.events.aio_push(event_key, {"doc_id": "1", "user": "ann"})
        await eventually(lambda: done_at(3), timeout_s=30)
        await spawn()  # gets the recorded event at once
        out = (await ref.aio_result(60))["approve"]

        # A Python parent whose children only the TS worker can run.
        child_version = (await client.workflows.aio_versions(child_name))[0]["id"]
        child = client.workflow(child_name)
        parent = client.workflow(f"py-parent-{uuid.uuid4().hex[:6]}")

        @parent.task()
        async def fan(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
            refs = await child.aio_run_many([{"n": 2}, {"n": 3}], version_id=child_version)
            outs = [await r.aio_result(60) for r in refs]
            return {"children": [r.run_id for r in refs], "outs": [o["square"] for o in outs]}

        await start_worker("w-py-parent", workflows=[parent], slots=2)
        parent_ref = await parent.aio_run_no_wait({})
        fanned = (await parent_ref.aio_result(60))["fan"]
    finally:
        await pg.close()
        for proc in procs:
            if proc.returncode is None:
                await kill(proc)
    assert out["by"] == "ann"
    assert out["attempt"] >= 2
    slept_ms = out["woke"] - out["start"]
    assert SLEEP_MS <= slept_ms < SLEEP_MS + KILL_AFTER_S * 1000 - 500  # original deadline kept
    assert fanned["outs"] == [{"lang": "ts", "square": 4}, {"lang": "ts", "square": 9}]
    for child_id in fanned["children"]:
        assert (await client.runs.aio_get(child_id))["parent_run_id"] == parent_ref.run_id


async def _has(read: Any, name: str) -> bool:
    return bool(await read(name))


async def _after(ts: float) -> bool:
    return time.time() >= ts
