"""Workflow versions: listing, rollback, pinning a run, and which version new runs start on.

Listing and rollback go through the SDK (`r.workflows.versions` / `rollback`), so both the REST
endpoints and the client calls are covered; registration and runs go over plain REST.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import Stack, WorkerFactory, eventually
from ratchet import ApiError, Context, Ratchet

from libs.common import db, tokens
from services.matcher.service import MatcherService

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _spec(name: str, task: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "tasks": [{"name": task}], **extra}


async def _register(client: Ratchet, spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = await client.arequest("POST", "/workflows", json=spec)
    return out


async def _versions(client: Ratchet, name: str) -> list[dict[str, Any]]:
    return await client.workflows.aio_versions(name)


async def _current(client: Ratchet, name: str) -> str:
    return str((await client.arequest("GET", f"/workflows/{name}"))["version_id"])


async def _rollback(client: Ratchet, name: str, version_id: str) -> dict[str, Any]:
    out: dict[str, Any] = await client.workflows.aio_rollback(name, version_id)
    return out


async def _run(client: Ratchet, name: str, **body: Any) -> dict[str, Any]:
    out: dict[str, Any] = await client.arequest("POST", f"/workflows/{name}/run", json=body)
    return out


async def _finished(client: Ratchet, run_id: str) -> dict[str, Any]:
    """The run once it has ended (it may not exist yet when the trigger was just sent)."""
    async def exists() -> bool:
        try:
            await client.arequest("GET", f"/runs/{run_id}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    await eventually(exists, timeout_s=30)
    run: dict[str, Any] = await client.arequest("GET", f"/runs/{run_id}", params={"wait_s": 30})
    assert run["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"), run
    return run


async def _crons(client: Ratchet, name: str) -> list[str]:
    rows = await client.arequest("GET", "/crons", params={"workflow": name})
    return sorted(r["expression"] for r in rows)


async def _status_of(client: Ratchet, call: Any) -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        await call
    return info.value.status, info.value.detail


async def test_versions_listing_and_which_registration_moves_current(client: Ratchet) -> None:
    name = f"vers-{uuid.uuid4().hex[:8]}"
    # A yearly cron: it never comes due while other tests drive the tickers.
    v1 = await _register(client, _spec(name, "one", on_crons=["0 0 1 1 *"]))
    assert v1["created"] and v1["current"]
    v2 = await _register(client, _spec(name, "two"))
    assert v2["created"] and v2["current"]

    versions = await _versions(client, name)
    assert [(v["id"], v["hash"], v["current"]) for v in versions] == [
        (v2["id"], v2["hash"], True), (v1["id"], v1["hash"], False)]
    assert datetime.fromisoformat(versions[0]["created_at"]) >= datetime.fromisoformat(
        versions[1]["created_at"])
    assert await _crons(client, name) == []  # v2 declares no on_crons

    # A worker restarting with v1's code registers it again: nothing moves.
    again = await _register(client, _spec(name, "one", on_crons=["0 0 1 1 *"]))
    assert (again["id"], again["created"], again["current"]) == (v1["id"], False, False)
    assert await _current(client, name) == v2["id"]

    rolled = await _rollback(client, name, v1["id"])
    assert (rolled["id"], rolled["hash"], rolled["current"]) == (v1["id"], v1["hash"], True)
    workflow = await client.arequest("GET", f"/workflows/{name}")
    assert workflow["version_id"] == v1["id"]
    assert [t["name"] for t in workflow["spec"]["tasks"]] == ["one"]
    assert [v["current"] for v in await _versions(client, name)] == [False, True]
    assert await _crons(client, name) == ["0 0 1 1 *"]  # on_crons follow the current version

    # v2's worker restarting does not undo the rollback either.
    again = await _register(client, _spec(name, "two"))
    assert (again["id"], again["created"], again["current"]) == (v2["id"], False, False)
    assert await _current(client, name) == v1["id"]

    # New runs start on the current version unless a run names its own.
    plain = await _run(client, name)
    pinned = await _run(client, name, version_id=v2["id"])
    bulk = await client.arequest("POST", f"/workflows/{name}/run/bulk",
                                 json={"runs": [{}, {"version_id": v2["id"]}]})
    assert (plain["version_id"], pinned["version_id"]) == (v1["id"], v2["id"])
    expected = {plain["run_id"]: v1["id"], pinned["run_id"]: v2["id"],
                bulk["run_ids"][0]: v1["id"], bulk["run_ids"][1]: v2["id"]}

    async def stored() -> bool:
        runs = await client.arequest("GET", "/runs", params={"workflow": name})
        return len(runs) == len(expected)

    await eventually(stored)
    for run_id, version_id in expected.items():
        assert (await client.arequest("GET", f"/runs/{run_id}"))["version_id"] == version_id
        await client.arequest("POST", f"/runs/{run_id}/cancel")  # no worker serves them

    # A definition never seen before ends the rollback (and takes the crons away again).
    v3 = await _register(client, _spec(name, "three"))
    assert v3["created"] and v3["current"]
    assert await _current(client, name) == v3["id"]
    assert [v["id"] for v in await _versions(client, name)] == [v3["id"], v2["id"], v1["id"]]
    assert await _crons(client, name) == []


async def test_unknown_versions_are_404_naming_them(client: Ratchet) -> None:
    name = f"vers-{uuid.uuid4().hex[:8]}"
    await _register(client, _spec(name, "one"))
    other = await _register(client, _spec(f"{name}-other", "one"))

    status, detail = await _status_of(client, _rollback(client, name, "wv_nope"))
    assert status == 404 and "'wv_nope'" in detail and repr(name) in detail
    # Another workflow's version is not one of this workflow's.
    status, detail = await _status_of(client, _rollback(client, name, other["id"]))
    assert status == 404 and repr(other["id"]) in detail
    status, detail = await _status_of(client, _run(client, name, version_id=other["id"]))
    assert status == 404 and repr(other["id"]) in detail
    status, detail = await _status_of(client, _versions(client, "never-registered"))
    assert status == 404 and "'never-registered'" in detail
    status, _ = await _status_of(
        client, client.arequest("POST", f"/workflows/{name}/rollback", json={}))
    assert status == 400


@pytest.fixture
async def matcher(stack: Stack) -> AsyncIterator[MatcherService]:
    svc = MatcherService(stack.settings, durable=f"matcher-versions-{uuid.uuid4().hex[:6]}",
                         rules_ttl_s=3600.0)  # a long TTL: the rollback's invalidation must do it
    await svc.start()
    yield svc
    await svc.stop()


async def test_rollback_end_to_end(
    client: Ratchet, start_worker: WorkerFactory, matcher: MatcherService
) -> None:
    name = f"rb-{uuid.uuid4().hex[:8]}"
    key = f"{name}.go"
    release = asyncio.Event()
    v2_started = asyncio.Event()

    v1 = client.workflow(name, on_events=[key])

    @v1.task()
    async def one(input: dict, ctx: Context) -> dict:
        return {"version": 1, "x": input.get("x")}

    v2 = client.workflow(name, on_events=[key])

    @v2.task()
    async def two(input: dict, ctx: Context) -> dict:
        v2_started.set()
        await release.wait()  # held in flight until the test lets it go
        return {"version": 2}

    # Each worker registers its code on start: v1 first, then v2 (new, so current).
    await start_worker("v1-box", workflows=[v1])
    await start_worker("v2-box", workflows=[v2])
    listed = await _versions(client, name)
    assert [v["current"] for v in listed] == [True, False]
    v2_id, v1_id = listed[0]["id"], listed[1]["id"]

    in_flight = await _run(client, name)
    assert in_flight["version_id"] == v2_id
    await asyncio.wait_for(v2_started.wait(), 30)

    await _rollback(client, name, v1_id)

    # An API trigger starts on v1 now.
    run = await _finished(client, (await _run(client, name, input={"x": 1}))["run_id"])
    assert (run["status"], run["version_id"]) == ("SUCCEEDED", v1_id)
    assert run["output"] == {"one": {"version": 1, "x": 1}}

    # So does an event-matched trigger (the matcher heard about the rollback) ...
    before = {r["id"] for r in await client.arequest("GET", "/runs", params={"workflow": name})}
    await client.arequest("POST", "/events", json={"key": key, "payload": {"x": 2}})
    new_ids: list[str] = []

    async def event_run() -> bool:
        runs = await client.arequest("GET", "/runs", params={"workflow": name})
        new_ids[:] = [r["id"] for r in runs if r["id"] not in before]
        return bool(new_ids)

    await eventually(event_run, timeout_s=30)
    run = await _finished(client, new_ids[0])
    assert (run["version_id"], run["output"]) == (v1_id, {"one": {"version": 1, "x": 2}})

    # ... and a run the scheduler starts (a scheduled run due now).
    due = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    scheduled = await client.arequest(
        "POST", "/scheduled", json={"workflow": name, "run_at": due, "input": {"x": 3}})
    run = await _finished(client, scheduled["run_id"])
    assert (run["version_id"], run["output"]) == (v1_id, {"one": {"version": 1, "x": 3}})

    # The run started before the rollback kept its version and is still going.
    held = await client.arequest("GET", f"/runs/{in_flight['run_id']}")
    assert (held["status"], held["version_id"]) == ("RUNNING", v2_id)
    release.set()
    held = await _finished(client, in_flight["run_id"])
    assert (held["status"], held["version_id"]) == ("SUCCEEDED", v2_id)
    assert held["output"] == {"two": {"version": 2}}

    # One run can still ask for v2 while v1 is current.
    pinned = await _finished(client, (await _run(client, name, version_id=v2_id))["run_id"])
    assert (pinned["version_id"], pinned["output"]) == (v2_id, {"two": {"version": 2}})
    assert await _current(client, name) == v1_id


async def test_tenants_cannot_see_or_roll_back_each_others_versions(
    client: Ratchet, stack: Stack
) -> None:
    name = f"iso-{uuid.uuid4().hex[:8]}"
    a1 = await _register(client, _spec(name, "one"))
    a2 = await _register(client, _spec(name, "two"))
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        token_b = await tokens.ensure_tenant(pool, "t" + uuid.uuid4().hex[:12])
    finally:
        await pool.close()
    headers = {"authorization": f"Bearer {token_b}"}
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers) as b:
        resp = await b.get(f"/workflows/{name}/versions")
        assert resp.status_code == 404
        resp = await b.post(f"/workflows/{name}/rollback", json={"version_id": a1["id"]})
        assert resp.status_code == 404
        # B registers the very same definition under the same name: its own version, and A's
        # version ids still mean nothing to B.
        resp = await b.post("/workflows", json=_spec(name, "one"))
        b1 = resp.json()
        assert resp.status_code == 201 and b1["id"] != a1["id"] and b1["hash"] == a1["hash"]
        resp = await b.post(f"/workflows/{name}/rollback", json={"version_id": a1["id"]})
        assert resp.status_code == 404 and a1["id"] in resp.json()["detail"]
        resp = await b.post(f"/workflows/{name}/run", json={"version_id": a2["id"]})
        assert resp.status_code == 404
        resp = await b.get(f"/workflows/{name}/versions")
        assert [v["id"] for v in resp.json()] == [b1["id"]]
    # A's workflow is as A left it.
    assert [v["id"] for v in await _versions(client, name)] == [a2["id"], a1["id"]]
    assert await _current(client, name) == a2["id"]


async def test_a_refused_registration_stores_nothing(client: Ratchet) -> None:
    # The unknown rate-limit key is refused inside the registration's transaction: no version,
    # workflow or cron is left behind.
    name = f"vers-{uuid.uuid4().hex[:8]}"
    spec = {"name": name, "on_crons": ["0 0 1 1 *"],
            "tasks": [{"name": "t", "rate_limits": [{"key": f"missing-{name}"}]}]}
    status, detail = await _status_of(client, _register(client, spec))
    assert status == 400 and f"missing-{name}" in detail
    status, _ = await _status_of(client, _versions(client, name))
    assert status == 404
    assert await _crons(client, name) == []
