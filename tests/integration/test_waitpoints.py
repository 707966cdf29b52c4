"""Waitpoints (docs/interaction.md) on the real stack: a signed URL a person or a program
completes without a token, once; expiry; completion before the wait; tenant isolation."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from conftest import Stack, eventually
from ratchet import DurableContext, Ratchet
from ratchet.errors import ApiError

from libs.common import db, tokens

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def published_state(client: Ratchet, run_id: str) -> dict[str, Any] | None:
    state: dict[str, Any] | None = await client.runs.aio_state(run_id)
    return state


async def url_of(client: Ratchet, run_id: str) -> dict[str, Any]:
    """The task publishes its waitpoint through set_state; wait for it."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        state = await published_state(client, run_id)
        if state and "url" in state:
            found.update(state)
            return True
        return False

    await eventually(check, timeout_s=30)
    return found


async def test_a_waitpoint_url_completes_once_without_a_token(
    client: Ratchet, start_worker: Any
) -> None:
    @client.durable_task(name="refund", execution_timeout=timedelta(minutes=2))
    async def refund(input: dict, ctx: DurableContext) -> dict:
        wp = await ctx.aio_create_waitpoint(timeout=timedelta(hours=1), label="refund 42")
        ctx.set_state({"id": wp.id, "url": wp.url})
        answer = await ctx.aio_wait_for_waitpoint(wp)
        return {"answer": answer, "id": wp.id}

    await start_worker("w-refund", workflows=[refund], slots=1)
    ref = await refund.aio_run_no_wait({})
    wp = await url_of(client, ref.run_id)
    async with httpx.AsyncClient(timeout=15) as anon:  # no token anywhere
        page = await anon.get(wp["url"])
        assert page.status_code == 200
        assert "refund 42" in page.text and "Approve" in page.text and "Reject" in page.text
        done = await anon.post(wp["url"], json={"ok": True, "by": "ada"})
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "completed"
        again = await anon.post(wp["url"], json={"ok": False})
        assert again.status_code == 409
        # A signature no key made, and a changed expiry, are both refused.
        parts = urlsplit(wp["url"])
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        forged = dict(query, sig="0" * 64)
        bad = await anon.post(f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(forged)}",
                              json={})
        assert bad.status_code == 403
        longer = dict(query, exp=str(int(query["exp"]) + 10_000_000))
        bad = await anon.get(f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(longer)}")
        assert bad.status_code == 403
    out = (await ref.aio_result(60))["refund"]
    assert out == {"answer": {"ok": True, "by": "ada"}, "id": wp["id"]}
    seen = await client.waitpoints.aio_get(wp["id"])
    assert seen["status"] == "completed" and seen["payload"] == {"ok": True, "by": "ada"}
    assert seen["url"] is None  # the URL is given to the task only


async def test_completion_before_the_wait_and_by_token_and_the_form(
    client: Ratchet, start_worker: Any
) -> None:
    @client.durable_task(name="two-approvals", execution_timeout=timedelta(minutes=2))
    async def two(input: dict, ctx: DurableContext) -> dict:
        first = await ctx.aio_create_waitpoint(label="first")
        second = await ctx.aio_create_waitpoint(label="second")
        ctx.set_state({"url": first.url, "first": first.id, "second": second.id})
        await ctx.aio_wait_for_signal("go")
        a = await ctx.aio_wait_for_waitpoint(first)
        b = await ctx.aio_wait_for_waitpoint(second)
        return {"a": a, "b": b}

    await start_worker("w-two", workflows=[two], slots=1)
    ref = await two.aio_run_no_wait({})
    state = await url_of(client, ref.run_id)
    async with httpx.AsyncClient(timeout=15) as anon:  # the page's form, as a browser sends it
        resp = await anon.post(state["url"], data={"decision": "approve", "comment": "fine"})
        assert resp.status_code == 200 and "recorded" in resp.text
    await client.waitpoints.aio_complete(state["second"], {"by": "token"})
    pending = await client.waitpoints.aio_list(pending=True, run_id=ref.run_id)
    assert pending == []
    await client.runs.aio_signal(ref.run_id, "go")  # both completions wait in the inbox
    out = (await ref.aio_result(60))["two-approvals"]
    assert out == {"a": {"approved": True, "comment": "fine"}, "b": {"by": "token"}}
    with pytest.raises(ApiError) as twice:
        await client.waitpoints.aio_complete(state["second"], {"by": "again"})
    assert twice.value.status == 409


async def test_expiry_wakes_the_task_with_timeout_and_the_url_is_gone(
    client: Ratchet, start_worker: Any
) -> None:
    @client.durable_task(name="short-lived", execution_timeout=timedelta(minutes=2))
    async def short(input: dict, ctx: DurableContext) -> dict:
        wp = await ctx.aio_create_waitpoint(timeout=timedelta(seconds=1), label="quick")
        ctx.set_state({"url": wp.url, "id": wp.id})
        try:
            await ctx.aio_wait_for_waitpoint(wp)
        except TimeoutError:
            return {"expired": True}
        return {"expired": False}

    await start_worker("w-short", workflows=[short], slots=1)
    ref = await short.aio_run_no_wait({})
    state = await url_of(client, ref.run_id)
    assert (await ref.aio_result(60))["short-lived"] == {"expired": True}
    async with httpx.AsyncClient(timeout=15) as anon:
        assert (await anon.post(state["url"], json={"late": True})).status_code == 410
        assert (await anon.get(state["url"])).status_code == 410
    assert (await client.waitpoints.aio_get(state["id"]))["status"] == "expired"


async def test_another_tenant_can_neither_see_nor_complete_a_waitpoint(
    client: Ratchet, start_worker: Any, stack: Stack
) -> None:
    @client.durable_task(name="private", execution_timeout=timedelta(minutes=2))
    async def private(input: dict, ctx: DurableContext) -> dict:
        wp = await ctx.aio_create_waitpoint(label="mine")
        ctx.set_state({"url": wp.url, "id": wp.id})
        return {"answer": await ctx.aio_wait_for_waitpoint(wp)}

    await start_worker("w-private", workflows=[private], slots=1)
    ref = await private.aio_run_no_wait({})
    state = await url_of(client, ref.run_id)
    other = "t" + uuid.uuid4().hex[:12]
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        token_b = await tokens.ensure_tenant(pool, other)
    finally:
        await pool.close()
    b = Ratchet(token=token_b, api_url=stack.api_url, grpc_addr=stack.grpc_addr)
    try:
        for call in (b.waitpoints.aio_get(state["id"]),
                     b.waitpoints.aio_complete(state["id"], {"evil": True})):
            with pytest.raises(ApiError) as refused:
                await call
            assert refused.value.status == 404
        assert await b.waitpoints.aio_list() == []
    finally:
        await b.aclose()
        b.close()
    assert (await client.waitpoints.aio_get(state["id"]))["status"] == "pending"
    await client.waitpoints.aio_complete(state["id"], {"by": "a"})
    assert (await ref.aio_result(60))["private"] == {"answer": {"by": "a"}}
