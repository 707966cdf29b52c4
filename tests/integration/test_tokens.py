"""Tokens: scopes (403 naming the missing one), secrets shown once, revocation and expiry
reaching every API process and the dispatcher within 2 s."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from conftest import Stack, eventually
from raw_worker import RawWorker

from libs.common import db, tokens
from libs.common.settings import Settings
from services.api.app import create_app
from services.api.auth import declared_scopes
from services.api.service import ApiService

# Revocation and expiry must reach every process within this long.
REVOKE_DEADLINE_S = tokens.REVOKE_WITHIN_S


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as c:
        yield c


async def make_token(
    http: httpx.AsyncClient, admin: str, scopes: list[str], expires_in_s: int | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"t-{uuid.uuid4().hex[:6]}", "scopes": scopes}
    if expires_in_s is not None:
        body["expires_in_s"] = expires_in_s
    resp = await http.post("/tokens", json=body, headers=_auth(admin))
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def register_noop(http: httpx.AsyncClient, token: str, name: str) -> None:
    spec = {"name": name, "tasks": [{"name": "only", "action": f"{name}:only"}]}
    resp = await http.post("/workflows", json=spec, headers=_auth(token))
    assert resp.status_code == 201, resp.text


async def test_every_route_declares_a_scope(stack: Stack) -> None:
    assert stack.api.state is not None
    app = create_app(stack.api.state)
    unguarded = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if route.path == "/healthz" or route.path.startswith("/schema"):
                continue
            # The dashboard's pages check their session cookie themselves (services/api/ui).
            if route.path == "/" or route.path.startswith("/ui"):
                continue
            # Incoming webhooks verify each hook's own auth instead (routes/hooks.py).
            if route.path.startswith("/hooks/"):
                continue
            # A waitpoint's public page checks the HMAC signature its URL carries
            # (routes/interaction.py): it is meant for a person without a token.
            if route.path.startswith("/wp/"):
                continue
            # Operator routes answer only to the operator token (routes/admin.py).
            if route.path.startswith("/admin"):
                continue
            # Litestar's automatic OPTIONS answer lists the allowed methods and nothing else.
            if handler.http_methods == {"OPTIONS"}:
                continue
            if not declared_scopes(handler):
                unguarded.append(f"{sorted(handler.http_methods)} {route.path}")
    assert unguarded == [], f"routes without a scope guard (services/api/auth.py): {unguarded}"


async def test_create_list_and_use_a_token(
    stack: Stack, tenant: str, http: httpx.AsyncClient
) -> None:
    admin = stack.tokens[tenant]  # type: ignore[attr-defined]
    created = await make_token(http, admin, ["read"], expires_in_s=3600)
    assert created["token"].startswith("rt_") and created["scopes"] == ["read"]
    assert created["expires_at"] is not None
    listed = (await http.get("/tokens", headers=_auth(admin))).json()
    mine = [t for t in listed if t["id"] == created["id"]]
    assert mine and "token" not in mine[0] and mine[0]["name"] == created["name"]
    assert all(created["token"] not in str(t) for t in listed)
    resp = await http.get("/runs", headers=_auth(created["token"]))
    assert resp.status_code == 200

    bad = await http.post("/tokens", json={"name": "x", "scopes": ["root"]}, headers=_auth(admin))
    assert bad.status_code == 400 and "root" in bad.json()["detail"]


@pytest.mark.parametrize(
    ("scopes", "method", "path", "missing"),
    [
        (["read"], "POST", "/workflows/wf/run", "write"),
        (["read"], "POST", "/events", "write"),
        (["write"], "GET", "/tokens", "admin"),
        (["write"], "GET", "/audit", "admin"),
        (["worker"], "GET", "/runs", "read"),
        (["worker"], "POST", "/runs/r1/cancel", "write"),
    ],
)
async def test_missing_scope_is_403_naming_it(
    stack: Stack, tenant: str, http: httpx.AsyncClient,
    scopes: list[str], method: str, path: str, missing: str,
) -> None:
    token = (await make_token(http, stack.tokens[tenant], scopes))["token"]  # type: ignore[attr-defined]
    resp = await http.request(method, path, json={"key": "k"}, headers=_auth(token))
    assert resp.status_code == 403, resp.text
    assert f"'{missing}'" in resp.json()["detail"]


async def test_worker_scope_registers_workflows_and_connects(
    stack: Stack, tenant: str, http: httpx.AsyncClient
) -> None:
    worker_token = (await make_token(http, stack.tokens[tenant], ["worker"]))["token"]  # type: ignore[attr-defined]
    await register_noop(http, worker_token, "wf-" + uuid.uuid4().hex[:6])
    worker = RawWorker(stack.grpc_addr, worker_token, ["a:b"])
    try:
        assert (await worker.connect()).tenant == tenant
    finally:
        await worker.close()

    read_token = (await make_token(http, stack.tokens[tenant], ["read"]))["token"]  # type: ignore[attr-defined]
    refused = RawWorker(stack.grpc_addr, read_token, ["a:b"])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await refused.connect()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'worker'" in (err.value.details() or "")
    finally:
        await refused.close()


@pytest.fixture
async def second_api(stack: Stack) -> AsyncIterator[ApiService]:
    settings = Settings(**{**_fields(stack.settings), "api_port": 0})
    api = ApiService(settings)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def _fields(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__struct_fields__}


async def _status(url: str, token: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        return (await c.get("/runs", headers=_auth(token))).status_code


async def test_revocation_reaches_two_apis_and_the_dispatcher(
    stack: Stack, tenant: str, http: httpx.AsyncClient, second_api: ApiService
) -> None:
    admin = stack.tokens[tenant]  # type: ignore[attr-defined]
    victim = await make_token(http, admin, ["read", "worker"])
    urls = [stack.api_url, f"http://127.0.0.1:{second_api.port}"]
    for url in urls:  # both processes have the token cached
        assert await _status(url, victim["token"]) == 200
    worker = RawWorker(stack.grpc_addr, victim["token"], ["x:y"])
    try:
        await worker.connect()
        resp = await http.delete(f"/tokens/{victim['id']}", headers=_auth(admin))
        assert resp.status_code == 204
        for url in urls:
            await eventually(lambda u=url: _is(u, victim["token"], 401), REVOKE_DEADLINE_S)
        assert await worker.final_code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await worker.close()
    # Revoked stays revoked, and is listed as such on request only.
    listed = (await http.get("/tokens", headers=_auth(admin))).json()
    assert victim["id"] not in {t["id"] for t in listed}
    listed = (await http.get("/tokens?include_revoked=true", headers=_auth(admin))).json()
    assert [t["revoked_at"] for t in listed if t["id"] == victim["id"]] != [None]
    # Revoking again is idempotent (nothing changes); an unknown id is still a 404.
    again = await http.delete(f"/tokens/{victim['id']}", headers=_auth(admin))
    assert again.status_code == 204
    listed = (await http.get("/tokens?include_revoked=true", headers=_auth(admin))).json()
    assert [t["revoked_at"] for t in listed if t["id"] == victim["id"]] != [None]
    unknown = await http.delete("/tokens/tok_no-such-token", headers=_auth(admin))
    assert unknown.status_code == 404


async def _is(url: str, token: str, code: int) -> bool:
    return await _status(url, token) == code


async def test_revocation_without_the_broadcast_still_lands(
    stack: Stack, tenant: str, http: httpx.AsyncClient, second_api: ApiService
) -> None:
    """A revocation whose broadcast is lost (here: written straight to the table) is still
    honoured in time: cached tokens are re-checked within the cache TTL."""
    victim = await make_token(http, stack.tokens[tenant], ["read"])  # type: ignore[attr-defined]
    url2 = f"http://127.0.0.1:{second_api.port}"
    assert await _status(url2, victim["token"]) == 200
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        await conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = $1", victim["id"])
    finally:
        await conn.close()
    for url in (stack.api_url, url2):
        await eventually(lambda u=url: _is(u, victim["token"], 401), REVOKE_DEADLINE_S)


async def test_expired_token_is_refused_and_its_worker_disconnected(
    stack: Stack, tenant: str, http: httpx.AsyncClient
) -> None:
    short = await make_token(http, stack.tokens[tenant], ["read", "worker"], expires_in_s=1)  # type: ignore[attr-defined]
    worker = RawWorker(stack.grpc_addr, short["token"], ["x:y"])
    try:
        await worker.connect()
        assert await worker.final_code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await worker.close()
    assert await _status(stack.api_url, short["token"]) == 401
    late = RawWorker(stack.grpc_addr, short["token"], ["x:y"])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await late.connect()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await late.close()


async def test_unknown_or_missing_token_is_401(stack: Stack, http: httpx.AsyncClient) -> None:
    assert (await http.get("/runs")).status_code == 401
    assert (await http.get("/runs", headers=_auth("rt_nope"))).status_code == 401


async def test_existing_tokens_keep_every_scope(stack: Stack, tenant: str) -> None:
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        token = await tokens.ensure_tenant(conn, tenant)
        principal = await tokens.principal_for_token(conn, token)
    finally:
        await conn.close()
    assert principal is not None and principal.tenant == tenant
    assert principal.scopes == frozenset(tokens.ALL_SCOPES)


async def test_a_full_token_cache_evicts_the_least_recently_used_entry(
    stack: Stack, tenant: str
) -> None:
    """The cache is bounded without forgetting everyone at once: at its size, the entry used
    least recently goes and the others are still served from memory. Observed through rows
    revoked behind the cache's back (no broadcast, a TTL far away): a cached principal is
    still answered, an evicted one is read again and found revoked."""
    pool = await db.create_pool(stack.settings.database_url, max_size=2)
    cache = tokens.TokenCache(pool, max_entries=2, ttl_s=3600)
    try:
        first, second, third = [await tokens.ensure_tenant(pool, tenant, tokens.new_token())
                                for _ in range(3)]
        assert await cache.principal(first) is not None
        assert await cache.principal(second) is not None
        assert await cache.principal(first) is not None  # first is now the more recent
        assert await cache.principal(third) is not None  # full: second goes
        await pool.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = ANY($1::text[])",
            [tokens.hash_token(t) for t in (first, second, third)],
        )
        assert await cache.principal(first) is not None
        assert await cache.principal(third) is not None
        assert await cache.principal(second) is None
    finally:
        await pool.close()
