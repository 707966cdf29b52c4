"""Webhooks and alerts in a real browser: a hook's request log (accepted and refused), the
outgoing deliveries, and alert rules under Settings with "Send a test alert"."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect
from ratchet import Ratchet

from tests.integration.conftest import Stack, eventually
from tests.integration.receiver import Receiver

pytestmark = pytest.mark.asyncio(loop_scope="session")
# Where the screenshots go (look at them: tests/ui/README or `make ui-screenshots`).
SHOTS = Path(os.environ.get("RATCHET_UI_SHOTS", "/tmp/ratchet-ui-shots"))


async def test_webhook_request_log_and_outgoing_deliveries(
    logged_in: Page, stack: Stack, tenant: str, client: Ratchet,
) -> None:
    page = logged_in
    await client.webhooks.aio_create("gh", source="github", secret="s",
                                     event_key="'gh.' + headers['x-github-event']")
    body = b'{"zen": "hi"}'
    signed = "sha256=" + hmac.new(b"s", body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        ok = await http.post(f"/hooks/{tenant}/gh", content=body, headers={
            "X-GitHub-Event": "ping", "X-GitHub-Delivery": "delivery-1",
            "X-Hub-Signature-256": signed})
        assert ok.status_code == 202
        forged = await http.post(f"/hooks/{tenant}/gh", content=body, headers={
            "X-GitHub-Event": "ping", "X-Hub-Signature-256": "sha256=00"})
        assert forged.status_code == 403
    await page.get_by_role("link", name="Webhooks").click()
    await expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    log = page.locator("table.hook-log")
    await expect(log.locator("tr", has_text="delivery-1")).to_contain_text("accepted")
    await expect(log.locator("tr", has_text="forbidden")).to_contain_text("403")
    await expect(page.locator("table.hooks")).to_contain_text(f"/hooks/{tenant}/gh")
    await page.screenshot(path=str(SHOTS / "webhooks.png"), full_page=True)


async def test_alert_rules_under_settings_with_a_test_alert(
    logged_in: Page, stack: Stack, client: Ratchet,
) -> None:
    page = logged_in
    with Receiver() as slack:
        await page.get_by_role("link", name="Settings").click()
        await page.get_by_role("link", name="alert rules").click()
        await expect(page.get_by_role("heading", name="Alert rules")).to_be_visible()
        await page.get_by_label("Slack webhook URL").fill(slack.url)
        await page.get_by_label("Window (s)").fill("120")
        await page.get_by_role("button", name="Create rule").click()
        await expect(page.get_by_role("status")).to_contain_text("created")
        [rule] = await client.arequest("GET", "/alerts")
        row = page.locator("table.alerts tr", has_text=rule["id"])
        await expect(row).to_contain_text("run.failed")
        await expect(row).to_contain_text("120 s")
        await row.get_by_role("button", name=f"send a test alert for {rule['id']}").click()
        await expect(page.get_by_role("status")).to_contain_text("Test alert queued")

        async def arrived() -> bool:
            return len(slack.ok()) == 1

        await eventually(arrived)
        assert slack.ok()[0].json()["text"].startswith("Ratchet alert")
        await page.reload()
        await expect(page.locator("table.alert-deliveries")).to_contain_text("delivered")
        await page.screenshot(path=str(SHOTS / "alerts.png"), full_page=True)
        # A bad form is refused with the API's message, nothing created.
        await page.get_by_role("checkbox", name="run.failed").uncheck()
        await page.get_by_label("Slack webhook URL").fill(slack.url)
        await page.get_by_role("button", name="Create rule").click()
        await expect(page.get_by_role("alert")).to_contain_text("Not created")
    audit = [e["action"] for e in await client.arequest("GET", "/audit")]
    assert "alert.test" in audit and "alert.create" in audit
