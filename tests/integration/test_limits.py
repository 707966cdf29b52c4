"""Per-tenant limits: unlimited by default, set by the operator, 429 + Retry-After naming the
limit (RESOURCE_EXHAUSTED for workers), and nothing already accepted is lost."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from conftest import Stack, eventually
from raw_worker import RawWorker

from libs.common import db, limits
from libs.common.limits import Limit
from tools import admin


@pytest.fixture
async def http(stack: Stack, tenant: str) -> AsyncIterator[httpx.AsyncClient]:
    token = stack.tokens[tenant]  # type: ignore[attr-defined]
    async with httpx.AsyncClient(
        base_url=stack.api_url, timeout=10, headers={"authorization": f"Bearer {token}"}
    ) as c:
        yield c


async def set_limits(stack: Stack, tenant: str, **values: float | None) -> None:
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        await limits.store(pool, tenant, {Limit(k): v for k, v in values.items()})
    finally:
        await pool.close()


async def register(http: httpx.AsyncClient) -> str:
    name = "wf-" + uuid.uuid4().hex[:8]
    spec = {"name": name, "tasks": [{"name": "only", "action": f"{name}:only"}]}
    resp = await http.post("/workflows", json=spec)
    assert resp.status_code == 201, resp.text
    return name


def assert_limited(resp: httpx.Response, limit: Limit) -> None:
    assert resp.status_code == 429, resp.text
    assert int(resp.headers["retry-after"]) >= 1
    body = resp.json()
    assert body["extra"]["limit"] == limit.value and limit.value in body["detail"]


async def _all_stored(http: httpx.AsyncClient, run_ids: list[str]) -> bool:
    for run_id in run_ids:
        if (await http.get(f"/runs/{run_id}")).status_code != 200:
            return False
    return True


async def _limits_view(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    resp = await http.get("/limits")
    assert resp.status_code == 200, resp.text
    return {item["name"]: item for item in resp.json()["limits"]}


async def test_unlimited_by_default(tenant: str, http: httpx.AsyncClient) -> None:
    view = await _limits_view(http)
    assert set(view) == {limit.value for limit in Limit}
    assert all(item["limit"] is None for item in view.values())
    assert view["unfinished_runs"]["usage"] == 0 and view["workers"]["usage"] == 0


async def test_triggers_per_second_and_nothing_lost(
    stack: Stack, tenant: str, http: httpx.AsyncClient
) -> None:
    await set_limits(stack, tenant, triggers_per_s=2)
    name = await register(http)
    accepted: list[str] = []
    refused: list[httpx.Response] = []
    for i in range(8):
        resp = await http.post(f"/workflows/{name}/run", json={"input": {"i": i}})
        if resp.status_code == 202:
            accepted.append(resp.json()["run_id"])
        else:
            refused.append(resp)
    assert accepted and refused
    assert_limited(refused[0], Limit.TRIGGERS_PER_S)
    # A batch bigger than a second's worth can never pass: refused whole, not in part.
    bulk = await http.post(f"/workflows/{name}/run/bulk", json={"runs": [{"input": {}}] * 5})
    assert_limited(bulk, Limit.TRIGGERS_PER_S)
    await eventually(lambda: _all_stored(http, accepted))
    runs = (await http.get("/runs", params={"workflow": name, "limit": 100})).json()
    assert sorted(r["id"] for r in runs) == sorted(accepted)


async def test_unfinished_runs(stack: Stack, tenant: str, http: httpx.AsyncClient) -> None:
    await set_limits(stack, tenant, unfinished_runs=3)
    name = await register(http)  # no worker: its runs stay unfinished
    accepted = []
    for _ in range(3):
        resp = await http.post(f"/workflows/{name}/run", json={"input": {}})
        assert resp.status_code == 202, resp.text
        accepted.append(resp.json()["run_id"])
    await eventually(lambda: _all_stored(http, accepted))
    assert_limited(await http.post(f"/workflows/{name}/run", json={"input": {}}),
                   Limit.UNFINISHED_RUNS)
    view = await _limits_view(http)
    assert view["unfinished_runs"] == {"name": "unfinished_runs", "limit": 3, "usage": 3}
    # Cancelling one frees room for one.
    assert (await http.post(f"/runs/{accepted[0]}/cancel")).status_code == 202

    async def room() -> bool:
        return (await _limits_view(http))["unfinished_runs"]["usage"] == 2

    await eventually(room)
    assert (await http.post(f"/workflows/{name}/run", json={"input": {}})).status_code == 202


async def test_events_per_second(stack: Stack, tenant: str, http: httpx.AsyncClient) -> None:
    await set_limits(stack, tenant, events_per_s=1)
    assert (await http.post("/events", json={"key": "k"})).status_code == 202
    assert_limited(await http.post("/events", json={"key": "k"}), Limit.EVENTS_PER_S)
    bulk = await http.post("/events/bulk", json={"events": [{"key": "k"}] * 3})
    assert_limited(bulk, Limit.EVENTS_PER_S)


async def test_payload_bytes(stack: Stack, tenant: str, http: httpx.AsyncClient) -> None:
    name = await register(http)
    await set_limits(stack, tenant, payload_bytes=2000)

    async def refused() -> bool:
        resp = await http.post(f"/workflows/{name}/run", json={"input": {"blob": "x" * 5000}})
        return resp.status_code == 413 and "payload_bytes" in resp.json()["detail"]

    await eventually(refused)  # the API re-reads limits within a second
    small = await http.post(f"/workflows/{name}/run", json={"input": {"blob": "x"}})
    assert small.status_code == 202


async def test_workers_and_slots(stack: Stack, tenant: str) -> None:
    await set_limits(stack, tenant, workers=1, slots=4)
    token = stack.tokens[tenant]  # type: ignore[attr-defined]
    first = RawWorker(stack.grpc_addr, token, ["a:b"], slots=3)
    second = RawWorker(stack.grpc_addr, token, ["a:b"], slots=1)
    big = RawWorker(stack.grpc_addr, token, ["a:b"], slots=5)
    try:
        await first.connect()
        for worker, limit in ((second, Limit.WORKERS), (big, Limit.WORKERS)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await worker.connect()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = dict(err.value.trailing_metadata() or ())
            assert details["ratchet-limit"] == limit.value and limit.value in (err.value.details() or "")
    finally:
        for w in (first, second, big):
            await w.close()
    await set_limits(stack, tenant, workers=None)

    async def slots_refused() -> bool:
        worker = RawWorker(stack.grpc_addr, token, ["a:b"], slots=5)
        try:
            await worker.connect()
        except grpc.aio.AioRpcError as err:
            limit = dict(err.trailing_metadata() or ()).get("ratchet-limit")
            return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and limit == "slots"
        finally:
            await worker.close()
        return False

    # Once the dispatcher has re-read the limits, the slot limit is what refuses it.
    await eventually(slots_refused)


async def test_operator_command_sets_limits(
    stack: Stack, tenant: str, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", stack.settings.database_url)
    code = await admin._main(["set-limits", tenant, "--triggers-per-s", "5", "--workers", "2"])
    assert code == 0

    async def shown() -> bool:
        view = await _limits_view(http)
        return view["triggers_per_s"]["limit"] == 5 and view["workers"]["limit"] == 2

    await eventually(shown)
    assert await admin._main(["set-limits", tenant, "--workers", "none"]) == 0
    assert await admin._main(["set-limits", tenant, "--workers", "-1"]) == 2
    assert "positive" in capsys.readouterr().err
    audit = (await http.get("/audit", params={"action": "limits.set"})).json()
    assert [a["token_name"] for a in audit] == ["operator", "operator"]
    assert audit[-1]["detail"] == {"triggers_per_s": 5.0, "workers": 2}
