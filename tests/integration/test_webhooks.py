"""Incoming webhooks: signed GitHub, Stripe and Slack requests start the right workflow;
forged, replayed and malformed ones are refused, and every request is in the hook's log."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import Stack, eventually
from prometheus_client import REGISTRY
from ratchet import ApiError, Context, Ratchet

from services.matcher.service import MatcherService

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def matcher(stack: Stack) -> AsyncIterator[MatcherService]:
    svc = MatcherService(stack.settings, durable=f"matcher-hooks-{uuid.uuid4().hex[:6]}",
                         rules_ttl_s=3600.0)
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def public(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no API token: what GitHub, Stripe or Slack would be."""
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as http:
        yield http


async def _listening(client: Ratchet, key: str) -> str:
    name = f"wf-{uuid.uuid4().hex[:8]}"
    wf = client.workflow(name, on_events=[key])

    @wf.task()
    def only(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    await client.aregister(wf)
    return name


async def _runs(client: Ratchet, workflow: str) -> list[dict[str, Any]]:
    return await client.arequest("GET", "/runs", params={"workflow": workflow, "limit": 100})


async def _log(client: Ratchet, hook: str) -> list[dict[str, Any]]:
    return await client.webhooks.aio_deliveries(hook)


def _count(source: str, outcome: str) -> float:
    """The API's counter of hook requests (it runs in this process)."""
    value = REGISTRY.get_sample_value("ratchet_api_webhook_requests_total",
                                      {"source": source, "outcome": outcome})
    return value or 0.0


def _mac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


async def test_github_signed_request_starts_the_workflow_and_redelivery_is_one_event(
    matcher: MatcherService, client: Ratchet, tenant: str, public: httpx.AsyncClient,
) -> None:
    workflow = await _listening(client, "gh.push")
    await client.webhooks.aio_create(
        "gh", source="github", secret="s3cret", event_key="'gh.' + headers['x-github-event']",
        scope="input.repository.full_name",
    )
    body = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}})
    delivery = str(uuid.uuid4())
    headers = {
        "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + _mac("s3cret", body.encode()),
        "Content-Type": "application/json",
    }
    resp = await public.post(f"/hooks/{tenant}/gh", content=body, headers=headers)
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"event_id": delivery, "key": "gh.push"}

    async def one_run() -> bool:
        return len(await _runs(client, workflow)) == 1

    await eventually(one_run)
    run_id = (await _runs(client, workflow))[0]["id"]
    run = await client.arequest("GET", f"/runs/{run_id}")
    assert run["input"]["repository"]["full_name"] == "acme/app"

    # GitHub redelivers with the same delivery id: the same event, no second run.
    again = await public.post(f"/hooks/{tenant}/gh", content=body, headers=headers)
    assert again.status_code == 202 and again.json()["event_id"] == delivery
    log = await _log(client, "gh")
    assert [(e["status"], e["outcome"], e["event_id"]) for e in log] == [
        (202, "duplicate", delivery), (202, "accepted", delivery),
    ]
    assert log[0]["event_key"] == "gh.push"
    # The stream dropped the repeat (same event id), so the matcher never saw a second one.
    assert len(await _runs(client, workflow)) == 1


async def test_github_forged_and_malformed_requests_are_refused_and_logged(
    client: Ratchet, tenant: str, public: httpx.AsyncClient,
) -> None:
    await client.webhooks.aio_create("gh", source="github", secret="right",
                                     event_key="'gh.' + headers['x-github-event']")
    body = b'{"zen": "hi"}'
    base = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": str(uuid.uuid4())}
    forbidden_before = _count("github", "forbidden")
    forged = await public.post(f"/hooks/{tenant}/gh", content=body, headers={
        **base, "X-Hub-Signature-256": "sha256=" + _mac("wrong", body)})
    assert forged.status_code == 403
    assert "does not match" in forged.json()["detail"]
    unsigned = await public.post(f"/hooks/{tenant}/gh", content=body, headers=base)
    assert unsigned.status_code == 401
    tampered = await public.post(f"/hooks/{tenant}/gh", content=body + b" ", headers={
        **base, "X-Hub-Signature-256": "sha256=" + _mac("right", body)})
    assert tampered.status_code == 403
    text = b"not json"
    malformed = await public.post(f"/hooks/{tenant}/gh", content=text, headers={
        **base, "X-Hub-Signature-256": "sha256=" + _mac("right", text)})
    assert malformed.status_code == 400 and "not JSON" in malformed.json()["detail"]
    unknown = await public.post(f"/hooks/{tenant}/nope", content=body, headers=base)
    assert unknown.status_code == 404

    log = await _log(client, "gh")
    assert [(e["status"], e["outcome"]) for e in log] == [
        (400, "bad_request"), (403, "forbidden"), (401, "unauthorized"), (403, "forbidden"),
    ]
    assert all(e["event_id"] is None for e in log)
    assert _count("github", "forbidden") == forbidden_before + 2  # also a metric
    missing = await _log(client, "_unknown")
    assert missing[0]["status"] == 404 and "'nope'" in missing[0]["detail"]


def _stripe_header(secret: str, body: bytes, ts: int) -> str:
    return f"t={ts},v1={_mac(secret, str(ts).encode() + b'.' + body)}"


async def test_stripe_signed_request_starts_the_workflow_and_a_replay_is_refused(
    matcher: MatcherService, client: Ratchet, tenant: str, public: httpx.AsyncClient,
) -> None:
    workflow = await _listening(client, "stripe.invoice.paid")
    await client.webhooks.aio_create("stripe", source="stripe", secret="whsec_test",
                                     event_key="'stripe.' + input.type")
    event_id = "evt_" + uuid.uuid4().hex
    body = json.dumps({"id": event_id, "type": "invoice.paid",
                       "data": {"object": {"amount_paid": 1200}}}).encode()
    ok = await public.post(f"/hooks/{tenant}/stripe", content=body, headers={
        "Stripe-Signature": _stripe_header("whsec_test", body, int(time.time()))})
    assert ok.status_code == 202, ok.text
    assert ok.json() == {"event_id": event_id, "key": "stripe.invoice.paid"}

    async def started() -> bool:
        runs = await _runs(client, workflow)
        return len(runs) == 1

    await eventually(started)
    run_id = (await _runs(client, workflow))[0]["id"]
    run = await client.arequest("GET", f"/runs/{run_id}")
    assert run["input"]["data"]["object"]["amount_paid"] == 1200

    # The same signed request captured and sent ten minutes later: outside the tolerance.
    old = int(time.time()) - 600
    replay = await public.post(f"/hooks/{tenant}/stripe", content=body, headers={
        "Stripe-Signature": _stripe_header("whsec_test", body, old)})
    assert replay.status_code == 403 and "tolerance" in replay.json()["detail"]
    forged = await public.post(f"/hooks/{tenant}/stripe", content=body, headers={
        "Stripe-Signature": _stripe_header("whsec_other", body, int(time.time()))})
    assert forged.status_code == 403
    log = await _log(client, "stripe")
    assert [(e["status"], e["outcome"]) for e in log] == [
        (403, "forbidden"), (403, "forbidden"), (202, "accepted"),
    ]
    assert len(await _runs(client, workflow)) == 1


def _slack_headers(secret: str, body: bytes, ts: int) -> dict[str, str]:
    base = f"v0:{ts}:".encode() + body
    return {"X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": "v0=" + _mac(secret, base),
            "Content-Type": "application/json"}


async def test_slack_challenge_and_signed_event_and_stale_timestamp(
    matcher: MatcherService, client: Ratchet, tenant: str, public: httpx.AsyncClient,
) -> None:
    workflow = await _listening(client, "slack.app_mention")
    await client.webhooks.aio_create("slack", source="slack", secret="slack-signing",
                                     event_key="'slack.' + input.event.type",
                                     scope="input.team_id")
    challenge = json.dumps({"type": "url_verification", "challenge": "abc123",
                            "token": "x"}).encode()
    now = int(time.time())
    resp = await public.post(f"/hooks/{tenant}/slack", content=challenge,
                             headers=_slack_headers("slack-signing", challenge, now))
    assert resp.status_code == 200 and resp.json() == {"challenge": "abc123"}
    unsigned_challenge = await public.post(f"/hooks/{tenant}/slack", content=challenge)
    assert unsigned_challenge.status_code == 401

    event_id = "Ev" + uuid.uuid4().hex[:10].upper()
    body = json.dumps({"type": "event_callback", "team_id": "T1", "event_id": event_id,
                       "event": {"type": "app_mention", "text": "hi"}}).encode()
    ok = await public.post(f"/hooks/{tenant}/slack", content=body,
                           headers=_slack_headers("slack-signing", body, now))
    assert ok.status_code == 202 and ok.json()["event_id"] == event_id

    async def started() -> bool:
        return len(await _runs(client, workflow)) == 1

    await eventually(started)
    stale = await public.post(f"/hooks/{tenant}/slack", content=body,
                              headers=_slack_headers("slack-signing", body, now - 3600))
    assert stale.status_code == 403
    log = await _log(client, "slack")
    assert [e["outcome"] for e in log] == ["forbidden", "accepted", "unauthorized", "challenge"]


async def test_hmac_basic_and_api_key_hooks(
    client: Ratchet, tenant: str, public: httpx.AsyncClient,
) -> None:
    await client.webhooks.aio_create("generic", source="hmac", secret="k",
                                     event_key="'ci.' + input.status", header="X-Sig",
                                     prefix="", id_header="X-Request-Id")
    await client.webhooks.aio_create("basic", source="basic", secret="pw", username="ci",
                                     event_key="'ci.basic'")
    await client.webhooks.aio_create("keyed", source="api_key", secret="key-1",
                                     event_key="'ci.keyed'")
    body = b'{"status": "green"}'
    rid = uuid.uuid4().hex
    ok = await public.post(f"/hooks/{tenant}/generic", content=body,
                           headers={"X-Sig": _mac("k", body), "X-Request-Id": rid})
    assert ok.status_code == 202 and ok.json() == {"event_id": rid, "key": "ci.green"}
    bad = await public.post(f"/hooks/{tenant}/generic", content=body,
                            headers={"X-Sig": _mac("not-k", body)})
    assert bad.status_code == 403

    def basic(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    assert (await public.post(f"/hooks/{tenant}/basic", content=body,
                              headers=basic("ci", "pw"))).status_code == 202
    assert (await public.post(f"/hooks/{tenant}/basic", content=body,
                              headers=basic("ci", "nope"))).status_code == 403
    assert (await public.post(f"/hooks/{tenant}/basic", content=body)).status_code == 401
    assert (await public.post(f"/hooks/{tenant}/keyed", content=body,
                              headers={"X-API-Key": "key-1"})).status_code == 202
    assert (await public.post(f"/hooks/{tenant}/keyed", content=body,
                              headers={"X-API-Key": "key-2"})).status_code == 403


async def test_webhook_crud_and_bad_definitions(client: Ratchet, tenant: str) -> None:
    created = await client.webhooks.aio_create("gh", source="github", secret="x",
                                               event_key="'gh.' + headers['x-github-event']")
    assert created["url_path"] == f"/hooks/{tenant}/gh" and "secret" not in created
    listed = await asyncio.to_thread(client.webhooks.list)
    assert [h["name"] for h in listed] == ["gh"]
    with pytest.raises(ApiError) as taken:
        await client.webhooks.aio_create("gh", source="github", secret="x", event_key="'a'")
    assert taken.value.status == 409
    with pytest.raises(ApiError) as bad_cel:
        await client.webhooks.aio_create("g2", source="github", secret="x",
                                         event_key="payload.x")
    assert bad_cel.value.status == 400 and "unknown variable 'payload'" in bad_cel.value.detail
    with pytest.raises(ApiError) as no_user:
        await client.webhooks.aio_create("b", source="basic", secret="x", event_key="'a'")
    assert no_user.value.status == 400 and "username" in no_user.value.detail
    with pytest.raises(ApiError) as bad_source:
        await client.webhooks.aio_create("s", source="gitlab", secret="x", event_key="'a'")
    assert bad_source.value.status == 400
    await asyncio.to_thread(client.webhooks.delete, "gh")
    with pytest.raises(ApiError) as gone:
        await asyncio.to_thread(client.webhooks.get, "gh")
    assert gone.value.status == 404
    audit = await client.arequest("GET", "/audit", params={"limit": 10})
    actions = [e["action"] for e in audit]
    assert "webhook.create" in actions and "webhook.delete" in actions
