"""The dashboard in a real browser: login, trigger, live status, output, cancel, filters, tenants."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect
from ratchet import Ratchet

from libs.common import db, tokens
from tests.integration.conftest import Stack, eventually
from tests.ui import seed

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _worker(client: Ratchet, start_worker: Any) -> dict[str, Any]:
    wfs = {w.name: w for w in seed.workflows(client)}
    await start_worker("ui-test-worker", workflows=list(wfs.values()), slots=8)
    return wfs


async def _status(client: Ratchet, run_id: str) -> str:
    """The run's status; "" while a just-triggered run is not stored yet."""
    run = await client.runs.aio_get(run_id, missing_ok=True)
    return str(run["status"]) if run else ""


async def test_login_refuses_a_wrong_token_and_accepts_the_right_one(
    page: Page, stack: Stack, token: str, tenant: str
) -> None:
    await page.goto(f"{stack.api_url}/")
    await expect(page).to_have_url(f"{stack.api_url}/ui/login")
    await page.get_by_label("API token").fill("rt_not-a-real-token")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not valid")
    assert not [c for c in await page.context.cookies() if c["name"] == "ratchet_token"]

    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{stack.api_url}/ui/runs")
    await expect(page.locator("header.top")).to_contain_text(tenant)
    cookie = next(c for c in await page.context.cookies() if c["name"] == "ratchet_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(f"{stack.api_url}/ui/login")
    await page.goto(f"{stack.api_url}/ui/runs")
    await expect(page).to_have_url(f"{stack.api_url}/ui/login")


async def test_login_link_for_the_dev_token(page: Page, stack: Stack, token: str) -> None:
    await page.goto(f"{stack.api_url}/ui/login?token={token}")
    await expect(page).to_have_url(f"{stack.api_url}/ui/runs")
    await expect(page.get_by_role("heading", name="Runs")).to_be_visible()


async def test_trigger_from_the_form_and_watch_it_succeed_live(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    page = logged_in
    await _worker(client, start_worker)
    await page.goto(f"{stack.api_url}/ui/workflows/{seed.PIPELINE}")
    # The form comes from the input schema: a required field left empty is refused by the API.
    await page.get_by_label("url").fill("https://example.com/a")
    await page.get_by_label("user").fill("ada")
    await page.get_by_label("words").fill("7")
    await page.get_by_role("button", name=f"Run {seed.PIPELINE}").click()
    await page.wait_for_url("**/ui/runs/*")
    await page.evaluate("window.__sameDocument = true")

    await expect(page.locator("#run-head .badge")).to_have_text("SUCCEEDED")
    assert await page.evaluate("window.__sameDocument === true")  # no reload happened
    await expect(page.locator('svg.dag .node[data-task="publish"]')).to_have_class("node s-ok")

    # Open a task's output.
    publish = page.locator("section.task", has=page.locator("h3", has_text="publish"))
    await publish.get_by_text("Output", exact=True).click()
    await expect(publish.locator(".task-output pre")).to_contain_text('"by": "ada"')
    fetch = page.locator("section.task", has=page.locator("h3", has_text="fetch"))
    await fetch.get_by_text("Output", exact=True).click()
    await expect(fetch.locator(".task-output pre")).to_contain_text('"words": 7')


async def test_a_bad_form_value_comes_back_with_the_api_message(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    page = logged_in
    await _worker(client, start_worker)
    await page.goto(f"{stack.api_url}/ui/workflows/{seed.PIPELINE}")
    await page.get_by_label("url").fill("https://example.com/a")
    await page.get_by_label("user").fill("ada")
    await page.get_by_label("words").evaluate("el => { el.type = 'text'; el.value = 'many'; }")
    await page.get_by_role("button", name=f"Run {seed.PIPELINE}").click()
    await expect(page.get_by_role("alert")).to_contain_text("input.words")
    assert await client.arequest("GET", "/runs") == []


async def test_cancel_a_running_run(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    page = logged_in
    wfs = await _worker(client, start_worker)
    ref = await wfs[seed.PIPELINE].aio_run_no_wait(
        seed.Article(url="https://example.com/long", user="ada", hold=True)
    )
    await page.goto(f"{stack.api_url}/ui/runs/{ref.run_id}")
    await expect(page.locator('svg.dag .node[data-task="publish"]')).to_have_class(
        "node s-running"
    )
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.get_by_role("status")).to_contain_text("Cancellation requested")
    await expect(page.locator("#run-head .badge")).to_have_text("CANCELLED")
    assert await _status(client, ref.run_id) == "CANCELLED"


async def test_runs_list_filters_and_updates_live(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    page = logged_in
    wfs = await _worker(client, start_worker)
    failed = await wfs[seed.FLAKY].aio_run_no_wait({"fail": True}, metadata={"team": "red"})
    ok = await wfs[seed.FLAKY].aio_run_no_wait({"fail": False}, metadata={"team": "blue"})
    held = await wfs[seed.PIPELINE].aio_run_no_wait(
        seed.Article(url="https://example.com/long", user="ada", hold=True)
    )

    async def settled() -> bool:
        return (await _status(client, failed.run_id) == "FAILED"
                and await _status(client, ok.run_id) == "SUCCEEDED"
                and await _status(client, held.run_id) == "RUNNING")

    await eventually(settled)
    await page.goto(f"{stack.api_url}/ui/runs")
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(3)

    await page.get_by_label("Status").select_option("FAILED")
    await page.get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text(failed.run_id[:12])

    await page.goto(f"{stack.api_url}/ui/runs")
    await page.get_by_label("Metadata").fill("team:blue")
    await page.get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text(ok.run_id[:12])

    # Live: the held run's row turns CANCELLED without a reload when it is cancelled elsewhere.
    await page.goto(f"{stack.api_url}/ui/runs?workflow={seed.PIPELINE}")
    await page.evaluate("window.__sameDocument = true")
    cell = page.locator(f'td[sse-swap="run-{held.run_id}"] .badge')
    await expect(cell).to_have_text("RUNNING")
    await client.arequest("POST", f"/runs/{held.run_id}/cancel")
    await expect(cell).to_have_text("CANCELLED")
    # A run started after the page loaded is announced, not inserted (rows never jump).
    await wfs[seed.FLAKY].aio_run_no_wait({"fail": False})
    await expect(page.locator(".new-runs")).to_contain_text("1 new run since this page loaded")
    assert await page.evaluate("window.__sameDocument === true")


async def test_bulk_cancel_of_a_selection(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    page = logged_in
    wfs = await _worker(client, start_worker)
    refs = [
        await wfs[seed.PIPELINE].aio_run_no_wait(
            seed.Article(url=f"https://example.com/{i}", user="bo", hold=True)
        )
        for i in range(3)
    ]

    async def stored() -> bool:
        return all([await _status(client, r.run_id) for r in refs])

    await eventually(stored)
    await page.goto(f"{stack.api_url}/ui/runs")
    for ref in refs[:2]:
        await page.get_by_label(f"select run {ref.run_id}").check()
    await page.get_by_role("button", name="Cancel", exact=True).click()
    await expect(page.get_by_role("status")).to_contain_text("cancel 2 run(s)")

    async def two_cancelled() -> bool:
        return [await _status(client, r.run_id) for r in refs[:2]] == ["CANCELLED"] * 2

    await eventually(two_cancelled)
    assert await _status(client, refs[2].run_id) != "CANCELLED"

    # Then every run the filter matches: the one still running.
    async def third_running() -> bool:
        return await _status(client, refs[2].run_id) == "RUNNING"

    await eventually(third_running)
    await page.goto(f"{stack.api_url}/ui/runs?status=RUNNING")
    await expect(page.locator("tbody tr")).to_have_count(1)
    await page.get_by_label("every run matching the filter").check()
    await page.get_by_role("button", name="Cancel", exact=True).click()
    await expect(page.get_by_role("status")).to_contain_text("cancel 1 run(s)")

    async def third_cancelled() -> bool:
        return await _status(client, refs[2].run_id) == "CANCELLED"

    await eventually(third_cancelled)


async def test_another_tenant_sees_none_of_these_runs(
    page: Page, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    wfs = await _worker(client, start_worker)
    ref = await wfs[seed.FLAKY].aio_run_no_wait({"fail": False})
    await ref.aio_result(timeout_s=30)
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        other = "t" + ref.run_id[:12]
        other_token = await tokens.ensure_tenant(pool, other)
    finally:
        await pool.close()

    await page.goto(f"{stack.api_url}/ui/login?token={other_token}")
    await expect(page).to_have_url(f"{stack.api_url}/ui/runs")
    await expect(page.locator("header.top")).to_contain_text(other)
    await expect(page.locator("tbody tr")).to_have_count(0)
    await expect(page.get_by_text("No runs yet.")).to_be_visible()
    response = await page.goto(f"{stack.api_url}/ui/runs/{ref.run_id}")
    assert response is not None and response.status == 404
    await page.goto(f"{stack.api_url}/ui/workflows")
    await expect(page.get_by_text("No workflows registered.")).to_be_visible()


async def test_state_changing_requests_need_the_csrf_token(
    stack: Stack, token: str, client: Ratchet, start_worker: Any
) -> None:
    wfs = await _worker(client, start_worker)
    ref = await wfs[seed.PIPELINE].aio_run_no_wait(
        seed.Article(url="https://example.com/long", user="ada", hold=True)
    )
    async with httpx.AsyncClient(base_url=stack.api_url, cookies={"ratchet_token": token}) as h:
        forged = await h.post(f"/ui/runs/{ref.run_id}/cancel", data={})
        assert forged.status_code == 403
        assert await _status(client, ref.run_id) != "CANCELLED"
        page = await h.get(f"/ui/runs/{ref.run_id}")
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        done = await h.post(f"/ui/runs/{ref.run_id}/cancel", data={"csrf": csrf})
        assert done.status_code == 303

    async def cancelled() -> bool:
        return await _status(client, ref.run_id) == "CANCELLED"

    await eventually(cancelled)
