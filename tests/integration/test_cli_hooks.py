"""`ratchet webhooks ...` and `ratchet alerts ...` through the installed console script."""

from __future__ import annotations

import hashlib
import hmac

import httpx
import pytest
from conftest import Stack
from ratchet.cli._common import Exit
from receiver import Receiver
from test_cli import cli_env, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def env(stack: Stack, tenant: str) -> dict[str, str]:
    return cli_env(stack.api_url, stack.tokens[tenant])  # type: ignore[attr-defined]


async def test_webhooks_commands(stack: Stack, tenant: str, env: dict[str, str]) -> None:
    made = await run_cli("webhooks", "create", "gh", "--source", "github", "--secret", "s",
                         "--event-key", "'gh.' + headers['x-github-event']", env=env)
    assert made.code == 0, made
    assert made.out.strip() == f"{stack.api_url}/hooks/{tenant}/gh"
    listed = await run_cli("webhooks", "list", "--json", env=env)
    assert [h["name"] for h in listed.json()] == ["gh"]
    body = b'{"zen": "x"}'
    sig = "sha256=" + hmac.new(b"s", body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient() as http:
        resp = await http.post(made.out.strip(), content=body, headers={
            "X-GitHub-Event": "ping", "X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": sig})
    assert resp.status_code == 202
    log = await run_cli("webhooks", "deliveries", "gh", "--json", env=env)
    assert [(d["outcome"], d["event_id"]) for d in log.json()] == [("accepted", "d-1")]
    table = await run_cli("webhooks", "deliveries", "gh", env=env)
    assert "accepted" in table.out and "d-1" in table.out
    secret = await run_cli("webhooks", "signing-secret", env=env)
    assert secret.code == 0 and secret.out.strip().startswith("whsec_")
    bad = await run_cli("webhooks", "create", "x", "--source", "gitlab", "--secret", "s",
                        "--event-key", "'a'", env=env)
    assert bad.code == Exit.USAGE and "--source" in bad.err
    gone = await run_cli("webhooks", "delete", "gh", env=env)
    assert gone.code == 0
    missing = await run_cli("webhooks", "delete", "gh", env=env)
    assert missing.code == Exit.NOT_FOUND


async def test_alerts_commands(env: dict[str, str]) -> None:
    with Receiver() as hook:
        made = await run_cli("alerts", "create", "--on", "run.failed", "--webhook", hook.url,
                             "--window-s", "30", env=env)
        assert made.code == 0, made
        rule_id = made.out.strip()
        listed = await run_cli("alerts", "list", env=env)
        assert rule_id in listed.out and "30 s" in listed.out
        sent = await run_cli("alerts", "test", rule_id, "--json", env=env)
        assert len(sent.json()["delivery_ids"]) == 1
        unknown = await run_cli("alerts", "create", "--on", "run.exploded", "--webhook",
                                hook.url, env=env)
        assert unknown.code == Exit.USAGE
        deleted = await run_cli("alerts", "delete", rule_id, env=env)
        assert deleted.code == 0
        assert (await run_cli("alerts", "list", "--json", env=env)).json() == []
