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
