"""The `ratchet` console script, run as a subprocess against the in-process test stack.

Every command here goes through the installed entry point (.venv/bin/ratchet) with the same
environment a user would set, so option parsing, exit codes and the one-line errors are what a
shell sees. A second API process on the same NATS/PostgreSQL has an operator token for the
`ratchet admin` commands (the session's API has none, which must answer 404).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from ratchet import Context, NonRetryable, Ratchet
from ratchet.cli._common import CliError, Exit
from ratchet.cli._tokens import parse_duration_s, parse_limit
from ratchet.resources import Runs

from libs.common import db, tokens
from services.api.service import ApiService
from services.matcher.service import MatcherService
from services.replicator.service import ReplicatorService
from tests.integration.conftest import Stack, WorkerFactory, eventually

RATCHET = Path(sys.executable).with_name("ratchet")
OPERATOR_TOKEN = "op_" + uuid.uuid4().hex
CLI_TIMEOUT_S = 60.0


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli_env(api_url: str, token: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATCHET_")}
    env.update(RATCHET_API_URL=api_url, COLUMNS="200", NO_COLOR="1", **extra)
    if token is not None:
        env["RATCHET_TOKEN"] = token
    return env


async def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> Result:
    # Asynchronous on purpose: the API under test runs on this same event loop.
    proc = await asyncio.create_subprocess_exec(
        str(RATCHET), *args, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_one_line_error(result: Result, code: Exit) -> None:
    assert result.code == code, result
    assert "Traceback" not in result.err, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err


@pytest.fixture(scope="module")
async def operator_api(stack: Stack) -> AsyncIterator[ApiService]:
    """A second API process with an operator token, on the session's NATS and PostgreSQL."""
    settings = msgspec.structs.replace(
        stack.settings, api_port=0, ratchet_operator_token=OPERATOR_TOKEN
    )
    api = ApiService(settings)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture(scope="module")
async def matcher(stack: Stack) -> AsyncIterator[MatcherService]:
    """Events become runs through the matcher, which the session stack does not run."""
    svc = MatcherService(stack.settings, durable=f"matcher-cli-{uuid.uuid4().hex[:6]}")
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
def env(stack: Stack, tenant: str) -> dict[str, str]:
    return cli_env(stack.api_url, stack.tokens[tenant], RATCHET_GRPC_ADDR=stack.grpc_addr)  # type: ignore[attr-defined]


async def test_round_trip_trigger_wait_list_replay(
    client: Ratchet, start_worker: WorkerFactory, env: dict[str, str]
) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    wf = client.workflow(name)
    fail = {"on": False}

    @wf.task()
    async def double(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if fail["on"]:
            raise NonRetryable("told to fail")
        return {"double": input["x"] * 2}

    await start_worker(f"{name}-w", workflows=[wf], slots=2)

    done = await run_cli("runs", "trigger", name, "--input", '{"x": 21}', "--wait", "--json", env=env)
    assert done.code == Exit.OK, done
    run = done.json()
    assert run["status"] == "SUCCEEDED" and run["output"] == {"double": {"double": 42}}

    started = await run_cli("runs", "trigger", name, "-i", '{"x": 1}', "--json", env=env)
    assert started.code == Exit.OK, started
    run_id = started.json()["run_id"]
    waited = await run_cli("runs", "get", run_id, "--wait", "--json", env=env)
    assert waited.code == Exit.OK and waited.json()["output"] == {"double": {"double": 2}}

    listed = await run_cli("runs", "list", "--workflow", name, "--json", env=env)
    assert {r["id"] for r in listed.json()} == {run["id"], run_id}
    assert {r["status"] for r in listed.json()} == {"SUCCEEDED"}
    # The default is a table a person reads: the ids and statuses are in it.
    shown = await run_cli("runs", "list", "-w", name, env=env)
    assert shown.code == Exit.OK and run_id in shown.out and "SUCCEEDED" in shown.out

    # A failed run exits 1 and names the failing task; replayed once fixed, it succeeds.
    fail["on"] = True
    failed = await run_cli("runs", "trigger", name, "-i", '{"x": 5}', "--wait", "--json", env=env)
    assert failed.code == Exit.FAILED, failed
    assert failed.json()["status"] == "FAILED"
    assert failed.json()["errors"]["double"]["message"] == "told to fail"
    failed_id = failed.json()["id"]
    shown_failed = await run_cli("runs", "get", failed_id, env=env)
    assert shown_failed.code == Exit.OK and "told to fail" in shown_failed.err
    fail["on"] = False
    replayed = await run_cli("runs", "replay", failed_id, "--json", env=env)
    assert replayed.code == Exit.OK, replayed
    assert replayed.json() == {"ok": 1, "failed": 0,
                               "results": [{"run_id": failed_id, "ok": True, "error": None}]}

    async def succeeded() -> bool:
        return (await client.runs.aio_get(failed_id))["status"] == "SUCCEEDED"

    await eventually(succeeded)
    again = await run_cli("runs", "get", failed_id, "--json", env=env)
    assert again.json()["output"] == {"double": {"double": 10}}


async def test_cancel_by_id_and_by_filter(client: Ratchet, env: dict[str, str]) -> None:
    # Registered but served by no worker: its runs wait, so there is something to cancel.
    name = f"cli-idle-{uuid.uuid4().hex[:8]}"
    wf = client.workflow(name)

    @wf.task()
    async def never(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    await client.aregister(wf)
    ids = []
    for _ in range(4):
        started = await run_cli("runs", "trigger", name, "--json", env=env)
        assert started.code == Exit.OK, started
        ids.append(started.json()["run_id"])

    one = await run_cli("runs", "cancel", ids[0], "--json", env=env)
    assert one.code == Exit.OK and one.json()["ok"] == 1
    waited = await run_cli("runs", "get", ids[0], "--wait", "--timeout", "30", "--json", env=env)
    assert waited.code == Exit.FAILED and waited.json()["status"] == "CANCELLED"

    bulk = await run_cli("runs", "cancel", "--workflow", name, "--status", "pending", "--json",
                         env=env)
    assert bulk.code == Exit.OK, bulk
    assert sorted(r["run_id"] for r in bulk.json()["results"]) == sorted(ids[1:])

    async def all_cancelled() -> bool:
        runs = await client.arequest("GET", "/runs", params={"workflow": name})
        return {r["status"] for r in runs} == {"CANCELLED"}

    await eventually(all_cancelled)

    # Mixed: one run that exists and one that does not → the missing one is reported, exit 3.
    mixed = await run_cli("runs", "cancel", ids[1], "no-such-run", "--json", env=env)
    assert mixed.code == Exit.NOT_FOUND, mixed
    assert [r["ok"] for r in mixed.json()["results"]] == [True, False]

    neither = await run_cli("runs", "cancel", env=env)
    assert_one_line_error(neither, Exit.USAGE)


async def test_events_push_and_workflow_versions(
    client: Ratchet, start_worker: WorkerFactory, env: dict[str, str], matcher: MatcherService
) -> None:
    name = f"cli-ev-{uuid.uuid4().hex[:8]}"
    key = f"{name}.happened"
    wf = client.workflow(name, on_events=[key])

    @wf.task()
    async def seen(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"n": input["n"]}

    await start_worker(f"{name}-w", workflows=[wf])
    pushed = await run_cli("events", "push", key, "--data", '{"n": 7}', "--json", env=env)
    assert pushed.code == Exit.OK, pushed
    assert pushed.json()["key"] == key and pushed.json()["event_id"]

    async def ran() -> bool:
        runs = await client.arequest("GET", "/runs", params={"workflow": name,
                                                             "status": "SUCCEEDED"})
        return len(runs) == 1

    await eventually(ran)

    listed = await run_cli("workflows", "list", "--json", env=env)
    assert name in {w["name"] for w in listed.json()}
    versions = await run_cli("workflows", "versions", name, "--json", env=env)
    assert [v["current"] for v in versions.json()] == [True]
    version_id = versions.json()[0]["id"]
    rolled = await run_cli("workflows", "rollback", name, version_id, "--json", env=env)
    assert rolled.code == Exit.OK and rolled.json()["id"] == version_id
    missing = await run_cli("workflows", "rollback", name, "no-such-version", env=env)
    assert_one_line_error(missing, Exit.NOT_FOUND)

    bad = await run_cli("events", "push", key, "--data", "{not json", env=env)
    assert_one_line_error(bad, Exit.USAGE)


async def test_exit_codes_for_missing_runs_and_bad_tokens(
    stack: Stack, client: Ratchet, env: dict[str, str]
) -> None:
    missing = await run_cli("runs", "get", "no-such-run", env=env)
    assert_one_line_error(missing, Exit.NOT_FOUND)
    assert "not found" in missing.err

    bad_token = await run_cli("runs", "list", env=cli_env(stack.api_url, "rt_not-a-token"))
    assert_one_line_error(bad_token, Exit.AUTH)
    no_token = await run_cli("runs", "list", env=cli_env(stack.api_url, None))
    assert_one_line_error(no_token, Exit.AUTH)
    # --token and --api-url win over the environment.
    flags = await run_cli("--api-url", stack.api_url, "--token", client.config.token,
                          "runs", "list", "--json", env=cli_env("http://127.0.0.1:9", "rt_x"))
    assert flags.code == Exit.OK and flags.json() == []

    unreachable = await run_cli("runs", "list", env=cli_env("http://127.0.0.1:9", "rt_x"))
    assert_one_line_error(unreachable, Exit.FAILED)
    usage = await run_cli("runs", "get", env=env)
    assert usage.code == Exit.USAGE and "Traceback" not in usage.err
    bad_input = await run_cli("runs", "trigger", "anything", "--input", "[1,", env=env)
    assert_one_line_error(bad_input, Exit.USAGE)
    no_workflow = await run_cli("runs", "trigger", "no-such-workflow", env=env)
    assert_one_line_error(no_workflow, Exit.NOT_FOUND)


async def test_other_tenants_runs_are_not_found(
    stack: Stack, client: Ratchet, env: dict[str, str]
) -> None:
    name = f"cli-iso-{uuid.uuid4().hex[:8]}"
    wf = client.workflow(name)

    @wf.task()
    async def idle(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    await client.aregister(wf)
    run_id = (await run_cli("runs", "trigger", name, "--json", env=env)).json()["run_id"]
    created = await run_cli("admin", "tenant", "create", "t" + uuid.uuid4().hex[:12], "--json",
                            env=cli_env(stack.api_url, None, RATCHET_OPERATOR_TOKEN=OPERATOR_TOKEN))
    # The session API has no operator token: its /admin routes are not there at all.
    assert_one_line_error(created, Exit.NOT_FOUND)

    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        other = await tokens.ensure_tenant(pool, "t" + uuid.uuid4().hex[:12])
    finally:
        await pool.close()
    other_env = cli_env(stack.api_url, other)
    for args in (("runs", "get", run_id), ("runs", "cancel", run_id),
                 ("workflows", "versions", name)):
        result = await run_cli(*args, env=other_env)
        assert result.code == Exit.NOT_FOUND, (args, result)
    assert (await client.runs.aio_get(run_id))["status"] != "CANCELLED"


async def test_admin_tenant_create_list_migrate(operator_api: ApiService) -> None:
    url = f"http://127.0.0.1:{operator_api.port}"
    op_env = cli_env(url, None, RATCHET_OPERATOR_TOKEN=OPERATOR_TOKEN)
    tenant_id = "t" + uuid.uuid4().hex[:12]

    created = await run_cli("admin", "tenant", "create", tenant_id, "--json", env=op_env)
    assert created.code == Exit.OK, created
    token = created.json()["token"]
    assert created.json()["id"] == tenant_id and token
    # The new tenant's token works at once, and sees an empty tenant.
    mine = await run_cli("runs", "list", "--json", env=cli_env(url, token))
    assert mine.code == Exit.OK and mine.json() == []

    listed = await run_cli("admin", "tenant", "list", "--json", env=op_env)
    row = next(t for t in listed.json() if t["id"] == tenant_id)
    assert row["tokens"] == 1

    again = await run_cli("admin", "tenant", "create", tenant_id, env=op_env)
    assert_one_line_error(again, Exit.FAILED)
    assert "already exists" in again.err
    invalid = await run_cli("admin", "tenant", "create", "Not Valid!", env=op_env)
    assert_one_line_error(invalid, Exit.USAGE)

    # Limits are the operator's: set through the operator endpoint where the API has one.
    schema = await _schema(url)
    set_limits = await run_cli("limits", "set", tenant_id, "unfinished-runs=5", "workers=none",
                               "--json", env=op_env)
    if "/admin/tenants/{tenant_id}/limits" in schema["paths"]:
        assert set_limits.code == Exit.OK, set_limits
        assert set_limits.json()["unfinished_runs"] == 5
        shown = await run_cli("limits", "get", "--json", env=cli_env(url, token))
        assert {x["name"]: x["limit"] for x in shown.json()["limits"]}["unfinished_runs"] == 5
        nobody = await run_cli("limits", "set", "no-such-tenant", "workers=1", env=op_env)
        assert_one_line_error(nobody, Exit.NOT_FOUND)
    else:
        assert_one_line_error(set_limits, Exit.NOT_FOUND)
    bad_limit = await run_cli("limits", "set", tenant_id, "bogus=1", env=op_env)
    assert_one_line_error(bad_limit, Exit.USAGE)

    migrated = await run_cli("admin", "migrate", "--json", env=op_env)
    assert migrated.code == Exit.OK and migrated.json() == {"applied": []}

    # A tenant's token is not the operator's, and neither is a wrong one.
    as_tenant = await run_cli("admin", "tenant", "list", "--operator-token", token, env=op_env)
    assert_one_line_error(as_tenant, Exit.AUTH)
    none = await run_cli("admin", "migrate", env=cli_env(url, token))
    assert_one_line_error(none, Exit.AUTH)


async def _schema(api_url: str) -> Any:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{api_url}/schema/openapi.json")).json()


WORKER_MODULE = """
from ratchet import Ratchet

r = Ratchet()
wf = r.workflow({name!r})


@wf.task()
def greet(input: dict, ctx) -> dict:
    return {{"hello": input["who"]}}


not_a_workflow = 42
"""


async def _read_until(stream: asyncio.StreamReader, needle: str, timeout_s: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout_s
    while needle not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{needle!r} not printed; got {seen!r}")
        line = await asyncio.wait_for(stream.readline(), remaining)
        if not line:
            raise AssertionError(f"stream ended before {needle!r}; got {seen!r}")
        seen += line.decode()
    return seen


async def test_worker_command_serves_a_module_and_drains_on_sigint(
    tmp_path: Path, env: dict[str, str]
) -> None:
    name = f"cli-mod-{uuid.uuid4().hex[:8]}"
    module = f"cli_worker_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(WORKER_MODULE.format(name=name)))

    wrong = await run_cli("worker", f"{module}:not_a_workflow", env=env, cwd=tmp_path)
    assert_one_line_error(wrong, Exit.USAGE)
    assert "expected a Worker, a Workflow" in wrong.err
    missing = await run_cli("worker", f"{module}:nothing", env=env, cwd=tmp_path)
    assert_one_line_error(missing, Exit.USAGE)

    proc = await asyncio.create_subprocess_exec(
        str(RATCHET), "worker", f"{module}:wf", "--name", "cli-box", "--slots", "2",
        env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        await _read_until(proc.stderr, "worker cli-box connected", CLI_TIMEOUT_S)
        done = await run_cli("runs", "trigger", name, "--input", '{"who": "cli"}', "--wait",
                             "--timeout", "30", "--json", env=env)
        assert done.code == Exit.OK, done
        assert done.json()["output"] == {"greet": {"hello": "cli"}}
        proc.send_signal(signal.SIGINT)
        await _read_until(proc.stderr, "worker cli-box stopped", CLI_TIMEOUT_S)
        assert await asyncio.wait_for(proc.wait(), CLI_TIMEOUT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture(scope="module")
async def log_store(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ReplicatorService | None]:
    """The replicator that holds task logs, started only when this SDK can read them."""
    if not hasattr(Runs, "logs"):
        yield None
        return
    settings = msgspec.structs.replace(
        stack.settings, data_dir=str(tmp_path_factory.mktemp("cli-olap")), clickhouse_url=""
    )
    service = ReplicatorService(settings, linger_s=0.05, lag_interval_s=0.2)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def test_logs_and_stream_of_a_run(
    client: Ratchet, start_worker: WorkerFactory, env: dict[str, str],
    log_store: ReplicatorService | None,
) -> None:
    if log_store is None or not hasattr(client.runs, "stream"):
        # Until the SDK has runs.logs()/runs.stream() the commands say so in one line.
        for command in ("logs", "stream"):
            result = await run_cli("runs", command, "any-run", env=env)
            assert_one_line_error(result, Exit.FAILED)
            assert f"runs.{command}()" in result.err
        return
    name = f"cli-out-{uuid.uuid4().hex[:8]}"
    wf = client.workflow(name)

    @wf.task()
    async def talk(input: dict[str, Any], ctx: Any) -> dict[str, Any]:
        ctx.log("hello from the cli test")
        for chunk in ("tok ", "en"):
            await ctx.aio_put_stream(chunk)
        await ctx.aio_put_stream({"n": 1})
        return {}

    await start_worker(f"{name}-w", workflows=[wf])
    done = await run_cli("runs", "trigger", name, "--wait", "--json", env=env)
    assert done.code == Exit.OK, done
    run_id = done.json()["id"]

    streamed = await run_cli("runs", "stream", run_id, env=env)
    assert streamed.code == Exit.OK and streamed.out == 'tok en{"n": 1}\n', streamed
    as_json = await run_cli("runs", "stream", run_id, "--json", env=env)
    assert [json.loads(line) for line in as_json.out.splitlines()] == ["tok ", "en", {"n": 1}]

    async def logged() -> bool:
        return len(await client.runs.aio_logs(run_id)) >= 1  # type: ignore[attr-defined]

    await eventually(logged, timeout_s=30)
    logs = await run_cli("runs", "logs", run_id, "--json", env=env)
    assert logs.code == Exit.OK, logs
    assert [(x["task"], x["message"]) for x in logs.json()] == [("talk", "hello from the cli test")]
    shown = await run_cli("runs", "logs", run_id, env=env)
    assert "hello from the cli test" in shown.out
    missing = await run_cli("runs", "logs", "no-such-run", env=env)
    assert_one_line_error(missing, Exit.NOT_FOUND)


async def test_tokens_where_the_api_has_them(
    stack: Stack, client: Ratchet, env: dict[str, str]
) -> None:
    """`tokens` needs the API's /tokens routes (other work); until then a one-line 404."""
    schema = await _schema(stack.api_url)
    if "/tokens" not in schema["paths"]:
        listed = await run_cli("tokens", "list", env=env)
        assert_one_line_error(listed, Exit.NOT_FOUND)
        return
    created = await run_cli("tokens", "create", "ci", "--scope", "read", "--expires-in", "1h",
                            "--json", env=env)
    assert created.code == Exit.OK, created
    secret, token_id = created.json()["token"], created.json()["id"]
    reader = cli_env(stack.api_url, secret)
    assert (await run_cli("runs", "list", "--json", env=reader)).code == Exit.OK
    listed = await run_cli("tokens", "list", "--json", env=env)
    assert token_id in {t["id"] for t in listed.json()}
    revoked = await run_cli("tokens", "revoke", token_id, env=env)
    assert revoked.code == Exit.OK, revoked

    async def refused() -> bool:
        return (await run_cli("runs", "list", env=reader)).code == Exit.AUTH

    await eventually(refused, timeout_s=10)
    limits = await run_cli("limits", "get", "--json", env=env)
    assert limits.code == Exit.OK and {x["name"] for x in limits.json()["limits"]} >= {
        "unfinished_runs", "workers"}


def test_duration_and_limit_parsing() -> None:
    assert [parse_duration_s(x) for x in ("90", "90s", "15m", "12h", "30d")] == [
        90, 90, 900, 43200, 2592000]
    for bad in ("", "0", "-5", "1w", "m"):
        with pytest.raises(CliError) as info:
            parse_duration_s(bad)
        assert info.value.code == Exit.USAGE
    assert parse_limit("unfinished-runs=100") == ("unfinished_runs", 100)
    assert parse_limit("events_per_s=2.5") == ("events_per_s", 2.5)
    assert parse_limit("workers=none") == ("workers", None)
    for bad in ("bogus=1", "workers", "workers=-1", "workers=lots"):
        with pytest.raises(CliError):
            parse_limit(bad)
