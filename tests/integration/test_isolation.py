"""Tenant isolation, for every route the API serves.

Routes are enumerated from the served OpenAPI schema, so a new route is covered the day it is
added. Tenant B (a full-scope token) calls each route on tenant A's resources:
- a route naming one of A's resources in its path must answer 404 or 403;
- any route may answer what it likes about B's own (empty) namespace, but never with one of
  A's identifiers in the body;
- afterwards A's state (runs, workflows, versions, filters, crons, schedules, rate limits,
  tokens, audit log) is exactly what it was.
A path or query parameter the suite cannot fill fails the suite: extend `path_values` (and
`BODIES` when the route needs a body to reach its lookup) for the new route.

Over gRPC, B's worker serving A's action names is never given A's task, and its reports of
A's task change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from conftest import Stack, eventually
from raw_worker import RawWorker

from libs.common import db, tokens
from libs.common.proto import worker_pb2 as pb

# Upsert by name into the caller's own namespace: B may create its own key of the same name.
OWN_NAMESPACE = frozenset({("PUT", "/rate-limits/{key}"), ("PUT", "/payloads/{scope_id}")})
# Public endpoints with their own auth: B's token means nothing there, so B is refused (401)
# like anyone without the webhook's secret.
PUBLIC = frozenset({("POST", "/hooks/{tenant_id}/{name}")})
# Documentation, not data.
SKIPPED_PATHS = re.compile(r"^/schema")


@dataclass
class TenantA:
    tenant: str
    token: str
    workflow: str
    action: str
    version_ids: list[str]
    run_id: str
    filter_id: str
    cron_id: str
    scheduled_id: str
    rate_limit_key: str
    token_id: str
    blob_key: str
    blob_size: int
    rule_id: str
    signing_secret: str
    waitpoint_id: str

    def path_values(self) -> dict[str, str]:
        """Path parameter name → A's resource of that kind."""
        return {
            "run_id": self.run_id, "name": self.workflow, "filter_id": self.filter_id,
            "cron_id": self.cron_id, "scheduled_id": self.scheduled_id,
            "key": self.rate_limit_key, "token_id": self.token_id, "workflow": self.workflow,
            "version_id": self.version_ids[0], "scope_id": self.run_id,
            "blob_key": self.blob_key, "size": str(self.blob_size),
            "rule_id": self.rule_id,
            "waitpoint_id": self.waitpoint_id,
            # Operator routes: B's tenant token is not the operator token (refused outright).
            "tenant_id": self.tenant,
        }

    def identifiers(self) -> list[str]:
        return [self.rule_id, self.signing_secret, self.tenant, self.workflow, self.run_id, self.filter_id, self.cron_id,
                self.scheduled_id, self.token_id, self.waitpoint_id, *self.version_ids]

    def bodies(self) -> dict[tuple[str, str], Any]:
        """Bodies that pass validation, so the request reaches its tenant lookup."""
        later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
        return {
            ("POST", "/workflows/{name}/rollback"): {"version_id": self.version_ids[0]},
            ("POST", "/workflows/{name}/run"): {"input": {}},
            ("POST", "/workflows/{name}/run/bulk"): {"runs": [{"input": {}}]},
            ("PATCH", "/filters/{filter_id}"): {"expression": "false"},
            ("PUT", "/rate-limits/{key}"): {"limit": 1},
            ("PUT", "/admin/tenants/{tenant_id}/limits"): {"triggers_per_s": 1},
            ("POST", "/runs/results"): {"run_ids": [self.run_id]},
            ("POST", "/workflows"): {"name": self.workflow, "tasks": [
                {"name": "evil", "action": self.action}]},
            ("POST", "/filters"): {"workflow": self.workflow, "expression": "true"},
            ("POST", "/crons"): {"workflow": self.workflow, "expression": "* * * * *"},
            ("POST", "/scheduled"): {"workflow": self.workflow, "run_at": later},
            ("POST", "/events"): {"key": "isolation"},
            ("POST", "/events/bulk"): {"events": [{"key": "isolation"}]},
            ("POST", "/tokens"): {"name": "b", "scopes": ["read"]},
            ("POST", "/webhooks"): {"name": self.workflow, "source": "github", "secret": "b",
                                    "event_key": "'b'"},
            ("POST", "/alerts"): {"on": ["run.failed"], "workflow": self.workflow,
                                  "webhook_url": "http://127.0.0.1:9/b"},
            ("POST", "/runs/{run_id}/waitpoints"): {"task_id": "a", "position": 0},
            ("POST", "/runs/{run_id}/fork"): {"from_task": "a"},
        }


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _new_tenant(stack: Stack) -> tuple[str, str]:
    tenant_id = "t" + uuid.uuid4().hex[:12]
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        return tenant_id, await tokens.ensure_tenant(pool, tenant_id)
    finally:
        await pool.close()


async def _ok(resp: httpx.Response) -> Any:
    assert resp.status_code < 300, f"{resp.request.method} {resp.request.url}: {resp.text}"
    return resp.json() if resp.content else None


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=15) as c:
        yield c


@pytest.fixture
async def tenant_a(stack: Stack, http: httpx.AsyncClient) -> TenantA:
    """A tenant with one of everything: two versions, a finished run, a filter, a cron, a
    scheduled run, a rate-limit key, a second token and a waitpoint."""
    tenant, token = await _new_tenant(stack)
    h = _auth(token)
    workflow = "wf-" + uuid.uuid4().hex[:8]
    action = f"{workflow}:a"
    await _ok(await http.put("/rate-limits/llm-a", json={"limit": 10}, headers=h))
    v1 = await _ok(await http.post("/workflows", headers=h, json={
        "name": workflow, "tasks": [{"name": "a", "action": action}]}))
    v2 = await _ok(await http.post("/workflows", headers=h, json={
        "name": workflow, "tasks": [{"name": "a", "action": action, "retries": 1}]}))
    run = await _ok(await http.post(f"/workflows/{workflow}/run", json={"input": {}}, headers=h))
    run_id = run["run_id"]

    async def stored() -> bool:
        return (await http.get(f"/runs/{run_id}", headers=h)).status_code == 200

    await eventually(stored)
    await _ok(await http.post(f"/runs/{run_id}/cancel", headers=h))

    async def finished() -> bool:
        return (await http.get(f"/runs/{run_id}", headers=h)).json()["status"] == "CANCELLED"

    await eventually(finished)
    flt = await _ok(await http.post(
        "/filters", json={"workflow": workflow, "expression": "true"}, headers=h))
    cron = await _ok(await http.post(
        "/crons", json={"workflow": workflow, "expression": "0 9 * * 1"}, headers=h))
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    sch = await _ok(await http.post(
        "/scheduled", json={"workflow": workflow, "run_at": later}, headers=h))
    extra = await _ok(await http.post(
        "/tokens", json={"name": "a-extra", "scopes": ["read"]}, headers=h))
    blob = await _ok(await http.put(f"/payloads/{run_id}", content=b"a's secret", headers=h))
    # A webhook named like the workflow, an alert rule, the signing secret (docs/webhooks.md).
    await _ok(await http.post("/webhooks", headers=h, json={
        "name": workflow, "source": "github", "secret": "a", "event_key": "'a'"}))
    rule = await _ok(await http.post("/alerts", headers=h, json={
        "on": ["run.failed"], "workflow": workflow, "webhook_url": "http://127.0.0.1:9/a"}))
    secret = await _ok(await http.get("/signing-secret", headers=h))
    # What a durable task of the run would ask for (docs/interaction.md).
    wp = await _ok(await http.post(f"/runs/{run_id}/waitpoints", headers=h,
                                   json={"task_id": "a-task", "position": 0, "label": "a's"}))
    return TenantA(
        tenant=tenant, token=token, workflow=workflow, action=action,
        blob_key=blob["key"], blob_size=blob["size"],
        version_ids=[v1["id"], v2["id"]], run_id=run_id, filter_id=flt["id"],
        cron_id=cron["id"], scheduled_id=sch["id"], rate_limit_key="llm-a",
        rule_id=rule["id"], signing_secret=secret["secret"],
        token_id=extra["id"], waitpoint_id=wp["id"],
    )


async def _state_of(http: httpx.AsyncClient, a: TenantA) -> dict[str, Any]:
    """Everything of A that B must not be able to change, as A sees it."""
    h = _auth(a.token)
    paths = [
        f"/runs/{a.run_id}", f"/runs?workflow={a.workflow}", "/workflows",
        f"/workflows/{a.workflow}/versions", f"/filters/{a.filter_id}", f"/crons/{a.cron_id}",
        f"/scheduled/{a.scheduled_id}", "/rate-limits", "/tokens", "/audit?limit=1000",
        "/webhooks", "/alerts", "/deliveries", "/signing-secret",
        "/limits", f"/waitpoints/{a.waitpoint_id}",
    ]
    return {p: (await http.get(p, headers=h)).json() for p in paths}


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for path, item in schema["paths"].items():
        if SKIPPED_PATHS.match(path):
            continue
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                ops.append((method.upper(), path, op))
    # Routes naming A's resources first, then reads of B's own collections, then B's own
    # creations last: B may create a workflow of the same name in its own namespace, after
    # which "/workflows/{name}" would rightly find B's.
    return sorted(ops, key=lambda o: ("{" not in o[1], o[0] != "GET"))


async def test_every_route_keeps_tenants_apart(
    stack: Stack, http: httpx.AsyncClient, tenant_a: TenantA
) -> None:
    _, token_b = await _new_tenant(stack)
    schema = (await http.get("/schema/openapi.json")).json()
    ops = _operations(schema)
    assert len(ops) > 20, "the schema lists fewer routes than the API serves"
    values = tenant_a.path_values()
    bodies = tenant_a.bodies()
    before = await _state_of(http, tenant_a)

    unfillable: list[str] = []
    leaks: list[str] = []
    for method, path, op in ops:
        params = op.get("parameters", [])
        missing = [
            p["name"] for p in params
            if (p.get("in") == "path" and p["name"] not in values)
            or (p.get("in") == "query" and p.get("required") and p["name"] not in values)
        ]
        if missing:
            unfillable.append(f"{method} {path}: {missing}")
            continue
        url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        query = {p["name"]: values[p["name"]] for p in params
                 if p.get("in") == "query" and p.get("required")}
        body = bodies.get((method, path))
        if body is None and "requestBody" in op:
            body = {}
        resp = await http.request(
            method, url, params=query, headers=_auth(token_b),
            json=body if method in ("POST", "PUT", "PATCH") else None,
        )
        names_a_resource = "{" in path and (method, path) not in OWN_NAMESPACE
        if (method, path) in PUBLIC and resp.status_code == 401:
            names_a_resource = False
        if names_a_resource and resp.status_code not in (403, 404):
            leaks.append(f"{method} {path}: {resp.status_code} {resp.text[:200]}")
        seen = [i for i in tenant_a.identifiers() if i in resp.text and i not in url
                and not (body and i in msgspec.json.encode(body).decode())]
        if seen:
            leaks.append(f"{method} {path}: response shows A's {seen}")

    assert unfillable == [], (
        "routes the isolation suite cannot fill parameters for (add them to "
        f"TenantA.path_values / bodies): {unfillable}"
    )
    assert leaks == [], f"tenant B reached tenant A: {leaks}"
    assert await _state_of(http, tenant_a) == before


async def test_a_worker_of_another_tenant_never_gets_or_reports_a_task(
    stack: Stack, http: httpx.AsyncClient, tenant_a: TenantA
) -> None:
    _, token_b = await _new_tenant(stack)
    h = _auth(tenant_a.token)
    worker_b = RawWorker(stack.grpc_addr, token_b, [tenant_a.action], slots=5)
    worker_a = RawWorker(stack.grpc_addr, tenant_a.token, [tenant_a.action])
    received_b: list[pb.DispatcherMessage] = []

    async def collect_b() -> None:
        with contextlib.suppress(Exception):
            while True:
                received_b.append(await worker_b.next_message())

    try:
        await worker_b.connect()
        reader = asyncio.create_task(collect_b())
        run = await _ok(await http.post(
            f"/workflows/{tenant_a.workflow}/run", json={"input": {"n": 1}}, headers=h))
        await worker_a.connect()
        msg = await worker_a.next_message()
        assert msg.WhichOneof("msg") == "assignments"
        task = msg.assignments.items[0]
        assert task.run_id == run["run_id"]
        # B claims A's task as done: addressed to B's tenant, it matches nothing of A's.
        await worker_b.send(pb.WorkerMessage(events=pb.TaskEvents(events=[pb.TaskEvent(
            task_id=task.task_id, attempt=task.attempt, kind=pb.COMPLETED, output=b'{"by":"b"}',
        )])))
        await worker_a.send(pb.WorkerMessage(events=pb.TaskEvents(events=[
            pb.TaskEvent(task_id=task.task_id, attempt=task.attempt, kind=pb.STARTED),
            pb.TaskEvent(task_id=task.task_id, attempt=task.attempt, kind=pb.COMPLETED,
                         output=b'{"by":"a"}'),
        ])))

        async def done() -> bool:
            view = (await http.get(f"/runs/{run['run_id']}", headers=h)).json()
            return bool(view["status"] == "SUCCEEDED")

        await eventually(done)
        view = (await http.get(f"/runs/{run['run_id']}", headers=h)).json()
        assert view["output"] == {"a": {"by": "a"}}
        assert view["tasks"][0]["worker_id"] == worker_a.registered.worker_id  # type: ignore[union-attr]
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        assert received_b == []
    finally:
        await worker_a.close()
        await worker_b.close()
