"""Outgoing webhooks: a run's callback_url and its workflow's on_finish_webhook hear how the
run ended, signed, retried while the receiver is down, with a delivery log."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import Stack, WorkerFactory, eventually
from ratchet import ApiError, Context, NonRetryable, Ratchet
from ratchet.webhooks import SIGNATURE_HEADER, verify_signature
from receiver import Receiver

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_callback_reaches_a_receiver_down_for_its_first_three_attempts(
    client: Ratchet, start_worker: WorkerFactory,
) -> None:
    wf = client.workflow(f"cb-{uuid.uuid4().hex[:8]}")

    @wf.task()
    def only(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"doubled": input["n"] * 2}

    await start_worker("cb", workflows=[wf], slots=2)
    with Receiver(fail_first=3) as receiver:
        ref = await wf.aio_run_no_wait({"n": 21}, callback_url=receiver.url)

        async def delivered() -> bool:
            return len(receiver.ok()) == 1

        await eventually(delivered, timeout_s=30)
        assert [r.answered for r in receiver.received] == [503, 503, 503, 200]
        got = receiver.ok()[0]
        body = got.json()
        assert body["run_id"] == ref.run_id and body["status"] == "SUCCEEDED"
        assert body["event"] == "run.finished" and body["workflow"] == wf.name
        assert body["output"] == {"only": {"doubled": 42}}
        # Every attempt carried the same delivery id, and the signature checks out.
        assert len({r.headers["ratchet-delivery"] for r in receiver.received}) == 1
        secret = await client.webhooks.aio_signing_secret()
        assert verify_signature(secret, got.headers[SIGNATURE_HEADER.lower()], got.body)
        assert not verify_signature("whsec_wrong", got.headers[SIGNATURE_HEADER.lower()],
                                    got.body)
        assert not verify_signature(secret, got.headers[SIGNATURE_HEADER.lower()],
                                    got.body + b" ")

    async def logged() -> bool:
        log = await client.webhooks.aio_outgoing(run_id=ref.run_id)
        return len(log) == 1 and log[0]["status"] == "delivered"

    await eventually(logged)
    [entry] = await client.webhooks.aio_outgoing(run_id=ref.run_id)
    assert entry["kind"] == "callback" and entry["attempts"] == 4
    assert entry["last_status"] == 200 and entry["target"] == receiver.url


async def test_on_finish_webhook_hears_a_failed_run_with_its_errors(
    client: Ratchet, start_worker: WorkerFactory,
) -> None:
    with Receiver() as receiver:
        wf = client.workflow(f"fin-{uuid.uuid4().hex[:8]}", on_finish_webhook=receiver.url)

        @wf.task()
        def boom(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
            raise NonRetryable("no such invoice")

        await start_worker("fin", workflows=[wf], slots=2)
        ref = await wf.aio_run_no_wait({})

        async def heard() -> bool:
            return len(receiver.ok()) == 1

        await eventually(heard, timeout_s=30)
        body = receiver.ok()[0].json()
        assert body["run_id"] == ref.run_id and body["status"] == "FAILED"
        assert "no such invoice" in body["errors"]["boom"]["message"]
        assert body["output"] == {}
        # Both a callback_url and the workflow's webhook: each URL hears once.
        with Receiver() as other:
            ref2 = await wf.aio_run_no_wait({}, callback_url=other.url)

            async def both() -> bool:
                return len(other.ok()) == 1 and len(receiver.ok()) == 2

            await eventually(both, timeout_s=30)
            assert other.ok()[0].json()["run_id"] == ref2.run_id
    log = await client.webhooks.aio_outgoing(run_id=ref2.run_id)
    assert sorted(e["target"] for e in log) == sorted([receiver.url, other.url])


async def test_a_bad_callback_url_is_refused(client: Ratchet) -> None:
    wf = client.workflow(f"bad-{uuid.uuid4().hex[:8]}")

    @wf.task()
    def only(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    with pytest.raises(ApiError) as exc:
        await wf.aio_run_no_wait({}, callback_url="ftp://example.com/x")
    assert exc.value.status == 400 and "callback_url" in exc.value.detail


async def test_old_finished_deliveries_are_pruned(stack: Stack, client: Ratchet,
                                                  tenant: str) -> None:
    assert stack.api.state is not None
    pool = stack.api.state.pool
    for delivery_id, age_days in (("old", 30), ("new", 1)):
        await pool.execute(
            "INSERT INTO outbound_deliveries (tenant_id, id, kind, channel, target, body, status,"
            " created_at, finished_at) VALUES ($1, $2, 'callback', 'webhook', 'http://x.test',"
            " '{}', 'delivered', now() - make_interval(days => $3),"
            " now() - make_interval(days => $3))", tenant, delivery_id, age_days)
    await stack.api.state.deliveries.prune(7 * 86400, 60 * 86400)
    assert [d["id"] for d in await client.webhooks.aio_outgoing()] == ["new"]
