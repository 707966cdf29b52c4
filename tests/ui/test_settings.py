"""Settings in a real browser: API tokens (secret shown once, revoke), limits with usage, the
audit log (filter, paging); and rolling a workflow back from its page."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.async_api import Dialog, Page, expect
from ratchet import Ratchet

from libs.common import db, limits
from libs.common.limits import Limit
from services.api.ui.controllers.settings import AUDIT_PAGE
from tests.integration.conftest import Stack, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _accept(dialog: Dialog) -> Any:
    return dialog.accept()


async def test_create_a_token_see_its_secret_once_then_revoke_it(
    logged_in: Page, stack: Stack, client: Ratchet
) -> None:
    page = logged_in
    await page.get_by_role("link", name="Settings").click()
    await page.get_by_label("Name").fill("ci-deploy")
    await page.get_by_label("write").check()
    await page.get_by_label("Expires").select_option("7 days")
    await page.get_by_role("button", name="Create token").click()

    secret_box = page.locator("#new-secret")
    await expect(page.get_by_text("it is shown this once")).to_be_visible()
    secret = (await secret_box.text_content() or "").strip()
    assert secret.startswith("rt_")
    await expect(page.get_by_role("button", name="Copy")).to_be_visible()
    row = page.locator("table.tokens tr", has_text="ci-deploy")
    await expect(row).to_contain_text("write")
    await expect(row).to_contain_text("live")

    async with httpx.AsyncClient(base_url=stack.api_url,
                                 headers={"Authorization": f"Bearer {secret}"}) as http:
        assert (await http.get("/runs")).status_code == 200
        # Shown once: a reload of the settings page never shows it again.
        await page.goto(f"{stack.api_url}/ui/settings")
        await expect(page.locator("#new-secret")).to_have_count(0)
        assert secret not in await page.content()

        page.once("dialog", _accept)
        await row.get_by_role("button", name="Revoke ci-deploy").click()
        await expect(page.get_by_role("status")).to_contain_text("revoked")
        await expect(page.locator("table.tokens tr", has_text="ci-deploy")).to_contain_text(
            "revoked"
        )

        async def refused() -> bool:
            return (await http.get("/runs")).status_code == 401

        await eventually(refused)
    actions = [e["action"] for e in await client.arequest("GET", "/audit")]
    assert actions[:2] == ["token.revoke", "token.create"]


async def test_a_bad_token_form_is_refused_with_the_api_message(logged_in: Page,
                                                                 stack: Stack) -> None:
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/settings")
    await page.get_by_label("read").uncheck()
    await page.get_by_label("Name").fill("no-scopes")
    await page.get_by_role("button", name="Create token").click()
    await expect(page.get_by_role("alert")).to_contain_text("at least one scope")
    await expect(page.locator("#new-secret")).to_have_count(0)


async def test_limits_show_their_usage(
    logged_in: Page, stack: Stack, tenant: str, client: Ratchet
) -> None:
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        await limits.store(pool, tenant, {Limit.UNFINISHED_RUNS: 40})
    finally:
        await pool.close()
    await client.arequest("POST", "/workflows", json={"name": "wf-lim", "tasks": [{"name": "a"}]})
    for _ in range(3):  # no worker: they stay unfinished
        await client.arequest("POST", "/workflows/wf-lim/run", json={"input": {}})

    async def three() -> bool:
        return len(await client.arequest("GET", "/runs")) == 3

    await eventually(three)
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/settings")
    row = page.locator("table.limits tr", has_text="unfinished_runs")
    await expect(row.locator("td.num").nth(0)).to_have_text("3")
    await expect(row.locator("td.num").nth(1)).to_have_text("40")
    await expect(row.get_by_role("meter")).to_have_attribute("aria-valuenow", "3")
    await expect(page.locator("table.limits tr", has_text="workers")).to_contain_text("unlimited")


async def test_audit_log_filters_by_action_and_pages(
    logged_in: Page, stack: Stack, client: Ratchet
) -> None:
    await client.arequest("POST", "/workflows", json={"name": "wf-aud", "tasks": [{"name": "a"}]})
    total = AUDIT_PAGE + 5
    for i in range(total):
        await client.arequest("POST", "/workflows/wf-aud/run", json={"input": {"i": i}})
    await client.arequest("POST", "/tokens", json={"name": "audited", "scopes": ["read"]})

    page = logged_in
    await page.goto(f"{stack.api_url}/ui/settings")
    rows = page.locator("table.audit tbody tr")
    await expect(rows).to_have_count(AUDIT_PAGE)
    await expect(rows.first).to_contain_text("token.create")

    await page.get_by_label("Action").select_option("token.create")
    await page.get_by_role("button", name="Filter", exact=True).click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("audited")

    await page.get_by_label("Action").select_option("run.trigger")
    await page.get_by_role("button", name="Filter", exact=True).click()
    await expect(rows).to_have_count(AUDIT_PAGE)
    first_page = set(await rows.locator("td:nth-child(3)").all_text_contents())
    await page.get_by_role("link", name="Older →").click()
    await expect(rows).to_have_count(total - AUDIT_PAGE)
    second_page = set(await rows.locator("td:nth-child(3)").all_text_contents())
    assert not first_page & second_page
    await expect(page.get_by_role("link", name="Older →")).to_have_count(0)


async def test_roll_back_a_workflow_to_an_older_version(
    logged_in: Page, stack: Stack, client: Ratchet
) -> None:
    first = await client.arequest("POST", "/workflows",
                                  json={"name": "wf-rb", "tasks": [{"name": "a"}]})
    second = await client.arequest("POST", "/workflows",
                                   json={"name": "wf-rb", "tasks": [{"name": "a"}, {"name": "b"}]})
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/workflows/wf-rb")
    newer = page.locator("tr", has_text=second["id"])
    older = page.locator("tr", has_text=first["id"])
    await expect(newer.locator(".current-tag")).to_have_text("current")
    await expect(older.locator(".current-tag")).to_have_count(0)

    # Dismissing the confirmation changes nothing.
    page.once("dialog", lambda d: d.dismiss())
    await older.get_by_role("button", name=f"Roll back to {first['id']}").click()
    await expect(newer.locator(".current-tag")).to_have_text("current")

    page.once("dialog", _accept)
    await older.get_by_role("button", name=f"Roll back to {first['id']}").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Version {first['id']} is now current")
    await expect(older.locator(".current-tag")).to_have_text("current")
    await expect(newer.get_by_role("button", name=f"Roll back to {second['id']}")).to_be_visible()
    versions = await client.arequest("GET", "/workflows/wf-rb/versions")
    assert [v["id"] for v in versions if v["current"]] == [first["id"]]
    entries = await client.arequest("GET", "/audit", params={"action": "workflow.rollback"})
    assert [e["target"] for e in entries] == ["wf-rb"]
