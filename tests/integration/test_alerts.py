"""Alerts: failing runs give one grouped message per rule per window on a local Slack stand-in
and a real local SMTP server; filters and workflows narrow rules; the other alert kinds."""

from __future__ import annotations

import asyncio
import email
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller
from conftest import Stack, WorkerFactory, eventually
from ratchet import ApiError, Context, NonRetryable, Ratchet
from receiver import Receiver

from libs.common import db, limits
from libs.common.limits import Limit

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Mailbox:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[email.message.Message]:
        return [m for m, r in zip(self.messages, self.recipients, strict=True) if address in r]


@pytest.fixture(scope="module")
def smtp(stack: Stack) -> Iterator[Mailbox]:
    """A real SMTP server where the stack's RATCHET_SMTP_URL points."""
    url = urlsplit(stack.settings.ratchet_smtp_url)
    box = Mailbox()
    controller = Controller(box, hostname=url.hostname, port=url.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def _failing(client: Ratchet) -> Any:
    wf = client.workflow(f"al-{uuid.uuid4().hex[:8]}")

    @wf.task()
    def fails(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        raise NonRetryable(f"bad input for team {input.get('team')}")

    return wf


def _body(message: email.message.Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


async def test_failing_runs_give_one_grouped_alert_on_slack_and_email(
    client: Ratchet, start_worker: WorkerFactory, smtp: Mailbox,
) -> None:
    wf = _failing(client)
    other = _failing(client)
    ops = f"ops-{uuid.uuid4().hex[:6]}@example.com"
    with Receiver() as slack, Receiver() as quiet:
        rule = await client.alerts.aio_create(
            on=["run.failed"], workflow=wf.name, filter="run.input.team == 'a'",
            slack_webhook_url=slack.url, email=[ops], window_s=5,
        )
        # Same workflow, a filter that never holds; and another workflow's rule.
        never = await client.alerts.aio_create(
            on=["run.failed"], workflow=wf.name, filter="run.input.team == 'zzz'",
            slack_webhook_url=quiet.url, window_s=1)
        elsewhere = await client.alerts.aio_create(
            on=["run.failed"], workflow=other.name, slack_webhook_url=quiet.url, window_s=1)
        await start_worker("al", workflows=[wf, other], slots=4)
        refs = await wf.aio_run_many([{"team": "a"}, {"team": "a"}, {"team": "a"},
                                      {"team": "b"}])

        async def alerted() -> bool:
            return len(slack.ok()) >= 1 and len(smtp.to(ops)) >= 1

        await eventually(alerted, timeout_s=30)

        async def settled() -> bool:
            log = await asyncio.to_thread(client.alerts.deliveries, rule["id"])
            return len(log) == 2 and all(e["status"] == "delivered" for e in log)

        await eventually(settled)
        # One message per destination for the window, counting the three team-a failures.
        assert len(slack.ok()) == 1 and len(smtp.to(ops)) == 1
        text = slack.ok()[0].json()["text"]
        assert f"3 runs of {wf.name} failed" in text
        assert "bad input for team a" in text  # the last run's error
        team_a = {r.run_id for r in refs[:3]}
        assert any(f"/ui/runs/{run_id}|" in text for run_id in team_a)
        mail = smtp.to(ops)[0]
        assert mail["Subject"] == f"[Ratchet] 3 runs of {wf.name} failed"
        assert mail["From"] == "alerts@ratchet.test"
        assert any(f"/ui/runs/{run_id}" in _body(mail) for run_id in team_a)
        # The filter and workflow kept the other rules quiet.
        assert quiet.received == []
        for silent in (never, elsewhere):
            assert await asyncio.to_thread(client.alerts.deliveries, silent["id"]) == []


async def test_alert_rules_crud_and_test_message(
    client: Ratchet, smtp: Mailbox,
) -> None:
    with Receiver() as hook:
        rule = await client.alerts.aio_create(on=["run.failed", "limit.reached"],
                                              webhook_url=hook.url, email=["a@example.com"])
        assert rule["window_s"] == 2.0 and rule["on"] == ["limit.reached", "run.failed"]
        assert [r["id"] for r in await asyncio.to_thread(client.alerts.list)] == [rule["id"]]
        sent = await asyncio.to_thread(client.alerts.test, rule["id"])
        assert len(sent["delivery_ids"]) == 2

        async def arrived() -> bool:
            return len(hook.ok()) == 1

        await eventually(arrived)
        body = hook.ok()[0].json()
        assert body["test"] is True and body["rule_id"] == rule["id"]
        await asyncio.to_thread(client.alerts.delete, rule["id"])
        with pytest.raises(ApiError) as gone:
            await asyncio.to_thread(client.alerts.get, rule["id"])
        assert gone.value.status == 404
    for bad, word in (
        ({"on": ["run.failed"]}, "somewhere to go"),
        ({"on": ["run.exploded"], "webhook_url": "http://x.test/a"}, "on"),
        ({"on": ["run.failed"], "webhook_url": "http://x.test/a", "filter": "input.x"},
         "unknown variable 'input'"),
    ):
        with pytest.raises(ApiError) as exc:
            await client.arequest("POST", "/alerts", json=bad)
        assert exc.value.status == 400 and word in exc.value.detail
    audit = [e["action"] for e in await client.arequest("GET", "/audit", params={"limit": 20})]
    assert {"alert.create", "alert.test", "alert.delete"} <= set(audit)


async def test_pool_empty_token_expiring_and_limit_reached(
    stack: Stack, tenant: str, client: Ratchet,
) -> None:
    with Receiver() as hook:
        await client.alerts.aio_create(
            on=["worker.pool_empty", "token.expiring", "limit.reached"], webhook_url=hook.url,
            window_s=1)
        # A workflow with a queued run and no worker at all.
        wf = client.workflow(f"nowk-{uuid.uuid4().hex[:8]}")

        @wf.task()
        def only(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
            return {}

        await wf.aio_run_no_wait({})
        # A token that expires within the warning period.
        await client.arequest("POST", "/tokens", json={"name": "ci", "scopes": ["read"],
                                                       "expires_in_s": 3600})
        # A trigger refused by the tenant's limit.
        pool = await db.create_pool(stack.settings.database_url, max_size=1)
        try:
            await limits.store(pool, tenant, {Limit.UNFINISHED_RUNS: 1})
        finally:
            await pool.close()

        async def refused() -> bool:
            try:
                await wf.aio_run_no_wait({})
            except ApiError as exc:
                return exc.status == 429
            return False

        await eventually(refused)

        def events() -> set[str]:
            return {r.json()["event"] for r in hook.ok()}

        async def all_three() -> bool:
            return events() >= {"worker.pool_empty", "token.expiring", "limit.reached"}

        await eventually(all_three, timeout_s=30)
        by_event = {r.json()["event"]: r.json() for r in hook.ok()}
        assert by_event["worker.pool_empty"]["subject"] == wf.name
        assert by_event["limit.reached"]["subject"] == "unfinished_runs"
        assert by_event["token.expiring"]["subject"].startswith("ci (")
