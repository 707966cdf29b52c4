"""The audit log: every change names the token that made it; the log is append-only, and a
change that fails leaves no entry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import Stack, eventually


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as c:
        yield c


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _ok(resp: httpx.Response) -> Any:
    assert resp.status_code < 300, resp.text
    return resp.json() if resp.content else None


async def test_changes_are_audited_with_their_token(
    stack: Stack, tenant: str, http: httpx.AsyncClient
) -> None:
    admin = stack.tokens[tenant]  # type: ignore[attr-defined]
    start = datetime.now(UTC).isoformat()
    writer = await _ok(await http.post(
        "/tokens", json={"name": "ci-bot", "scopes": ["write"]}, headers=_auth(admin)
    ))
    w = _auth(writer["token"])
    name = "wf-" + uuid.uuid4().hex[:8]
    v1 = await _ok(await http.post("/workflows", headers=w, json={
        "name": name, "tasks": [{"name": "a", "action": f"{name}:a"}]}))
    await _ok(await http.post("/workflows", headers=w, json={
        "name": name, "tasks": [{"name": "b", "action": f"{name}:b"}]}))
    run = await _ok(await http.post(f"/workflows/{name}/run", json={"input": {}}, headers=w))
    bulk = await _ok(await http.post(
        f"/workflows/{name}/run/bulk", json={"runs": [{"input": {}}, {"input": {}}]}, headers=w
    ))

    async def stored() -> bool:
        return (await http.get(f"/runs/{run['run_id']}", headers=w)).status_code == 200

    await eventually(stored)
    await _ok(await http.post(f"/runs/{run['run_id']}/cancel", headers=w))

    async def cancelled() -> bool:
        resp = await http.get(f"/runs/{run['run_id']}", headers=w)
        return resp.status_code == 200 and resp.json()["status"] == "CANCELLED"

    await eventually(cancelled)
    await _ok(await http.post(f"/runs/{run['run_id']}/replay", headers=w))
    flt = await _ok(await http.post(
        "/filters", json={"workflow": name, "expression": "true"}, headers=w
    ))
    await _ok(await http.patch(f"/filters/{flt['id']}", json={"scope": "s"}, headers=w))
    await _ok(await http.delete(f"/filters/{flt['id']}", headers=w))
    cron = await _ok(await http.post(
        "/crons", json={"workflow": name, "expression": "0 9 * * 1"}, headers=w
    ))
    await _ok(await http.delete(f"/crons/{cron['id']}", headers=w))
    await _ok(await http.post(
        f"/workflows/{name}/rollback", json={"version_id": v1["id"]}, headers=w
    ))
    await _ok(await http.put("/rate-limits/llm", json={"limit": 5}, headers=w))
    await _ok(await http.delete(f"/tokens/{writer['id']}", headers=_auth(admin)))

    entries = await _ok(await http.get("/audit", params={"since": start}, headers=_auth(admin)))
    actions = [e["action"] for e in reversed(entries)]  # oldest first
    assert actions == [
        "token.create", "run.trigger", "run.trigger_bulk", "run.cancel", "run.replay",
        "filter.create", "filter.update", "filter.delete", "cron.create", "cron.delete",
        "workflow.rollback", "rate_limit.put", "token.revoke",
    ]
    by_writer = [e for e in entries if e["token_id"] == writer["id"]]
    assert len(by_writer) == len(entries) - 2
    assert {e["token_name"] for e in by_writer} == {"ci-bot"}
    targets = {e["action"]: e["target"] for e in entries}
    assert targets["run.trigger"] == run["run_id"] and targets["run.cancel"] == run["run_id"]
    assert targets["token.revoke"] == writer["id"] and targets["filter.delete"] == flt["id"]
    bulk_entry = next(e for e in entries if e["action"] == "run.trigger_bulk")
    assert bulk_entry["detail"]["run_ids"] == bulk["run_ids"]

    only = await _ok(await http.get(
        "/audit", params={"action": "run.cancel", "since": start}, headers=_auth(admin)
    ))
    assert [e["target"] for e in only] == [run["run_id"]]
    one = await _ok(await http.get("/audit", params={"limit": 1}, headers=_auth(admin)))
    assert [e["action"] for e in one] == ["token.revoke"]


async def test_a_failed_change_leaves_no_entry(
    stack: Stack, tenant: str, http: httpx.AsyncClient
) -> None:
    admin = _auth(stack.tokens[tenant])  # type: ignore[attr-defined]
    name = "wf-" + uuid.uuid4().hex[:8]
    await _ok(await http.post("/workflows", headers=admin, json={
        "name": name, "tasks": [{"name": "a", "action": f"{name}:a"}]}))
    flt = await _ok(await http.post(
        "/filters", json={"workflow": name, "expression": "true"}, headers=admin
    ))
    bad = await http.patch(f"/filters/{flt['id']}", json={"expression": "1 +"}, headers=admin)
    assert bad.status_code == 400
    missing = await http.post(
        f"/workflows/{name}/rollback", json={"version_id": "nope"}, headers=admin
    )
    assert missing.status_code == 404
    entries = await _ok(await http.get("/audit", headers=admin))
    assert [e["action"] for e in entries] == ["filter.create"]


async def test_the_log_is_append_only(stack: Stack, tenant: str, http: httpx.AsyncClient) -> None:
    admin = _auth(stack.tokens[tenant])  # type: ignore[attr-defined]
    await _ok(await http.post("/tokens", json={"name": "x", "scopes": ["read"]}, headers=admin))
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        for sql in ("UPDATE audit_log SET action = 'x' WHERE tenant_id = $1",
                    "DELETE FROM audit_log WHERE tenant_id = $1"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(sql, tenant)
    finally:
        await conn.close()
    assert len(await _ok(await http.get("/audit", headers=admin))) == 1
