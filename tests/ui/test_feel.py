"""Keyboard navigation, no layout shift on live updates, and child runs in the dashboard."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Page, expect
from ratchet import Ratchet

from tests.integration.conftest import Stack, eventually
from tests.ui import seed

pytestmark = pytest.mark.asyncio(loop_scope="session")

NAV = ["Runs", "Workflows", "Workers", "Events", "Filters", "Crons & scheduled", "Webhooks",
       "Rate limits", "Waitpoints", "Analytics", "Settings"]


async def _worker(client: Ratchet, start_worker: Any) -> dict[str, Any]:
    wfs = {w.name: w for w in seed.workflows(client)}
    await start_worker("ui-feel-worker", workflows=list(wfs.values()), slots=8)
    return wfs


async def _status(client: Ratchet, run_id: str) -> str:
    run = await client.runs.aio_get(run_id, missing_ok=True)
    return str(run["status"]) if run else ""


async def _focused(page: Page) -> str:
    """What has the keyboard focus, as "<tag> <accessible text>"."""
    return str(await page.evaluate(
        "() => { const e = document.activeElement;"
        " return e.tagName.toLowerCase() + ' ' + (e.getAttribute('aria-label')"
        " || e.textContent || e.value || '').trim().replace(/\\s+/g, ' '); }"
    ))


async def _tab_through(page: Page, limit: int = 80) -> list[str]:
    seen: list[str] = []
    for _ in range(limit):
        await page.keyboard.press("Tab")
        seen.append(await _focused(page))
    return seen


async def test_the_main_nav_is_reachable_and_usable_by_keyboard(
    logged_in: Page, stack: Stack
) -> None:
    page = logged_in
    seen = await _tab_through(page, 14)
    links = [s.removeprefix("a ") for s in seen if s.startswith("a ")]
    # Skip link, brand, then the main nav in order.
    assert links[:2] == ["Skip to content", "Ratchet"]
    assert links[2:2 + len(NAV)] == NAV
    await page.goto(f"{stack.api_url}/ui/runs")
    for _ in range(2 + NAV.index("Workflows") + 1):
        await page.keyboard.press("Tab")
    assert await _focused(page) == "a Workflows"
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(f"{stack.api_url}/ui/workflows")


async def test_every_action_of_the_runs_list_is_reachable_by_keyboard(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    wfs = await _worker(client, start_worker)
    ref = await wfs[seed.FLAKY].aio_run_no_wait({"fail": False})
    await ref.aio_result(timeout_s=30)
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/runs")
    seen = await _tab_through(page)
    for wanted in ("button Filter", "a Clear", "button Cancel", "button Replay",
                   f"input select run {ref.run_id}", f"a {ref.run_id[:12]}"):
        assert wanted in seen, f"{wanted!r} is never focused: {seen}"
    # Enter on the focused run link opens the run.
    await page.goto(f"{stack.api_url}/ui/runs")
    while await _focused(page) != f"a {ref.run_id[:12]}":
        await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(f"{stack.api_url}/ui/runs/{ref.run_id}")
    # And the run page's own action.
    seen = await _tab_through(page, 30)
    assert "button Replay run" in seen


async def test_a_live_row_update_moves_nothing(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    wfs = await _worker(client, start_worker)
    held = await wfs[seed.PIPELINE].aio_run_no_wait(
        seed.Article(url="https://example.com/long", user="ada", hold=True)
    )
    done = await wfs[seed.FLAKY].aio_run_no_wait({"fail": False})
    await done.aio_result(timeout_s=30)

    async def running() -> bool:
        return await _status(client, held.run_id) == "RUNNING"

    await eventually(running)
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/runs")
    badge = page.locator(f'td[sse-swap="run-{held.run_id}"] .badge')
    await expect(badge).to_have_text("RUNNING")

    async def boxes() -> list[Any]:
        cells = page.locator("table, tbody tr, tbody td, .badge")
        return [await cells.nth(i).bounding_box() for i in range(await cells.count())]

    before = await boxes()
    await client.arequest("POST", f"/runs/{held.run_id}/cancel")
    await expect(badge).to_have_text("CANCELLED")
    assert await boxes() == before


async def test_child_runs_link_both_ways_and_filter_the_list(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    wfs = await _worker(client, start_worker)
    parent = await wfs[seed.FAMILY].aio_run_no_wait({"children": 2})
    await parent.aio_result(timeout_s=60)
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/runs/{parent.run_id}")
    kids = page.locator("table.children tbody tr")
    await expect(kids).to_have_count(2)
    await expect(page.get_by_role("heading", name="Child runs")).to_contain_text("(2)")
    await expect(kids.first).to_contain_text(seed.FLAKY)
    await expect(kids.first).to_contain_text("spawn")

    child_id = (await kids.first.locator("a").text_content() or "").strip()
    await kids.first.locator("a").click()
    await expect(page).to_have_url(re.compile(rf"/ui/runs/{child_id}[0-9a-f]+$"))
    await page.locator("#parent-link").click()
    await expect(page).to_have_url(f"{stack.api_url}/ui/runs/{parent.run_id}")

    await page.goto(f"{stack.api_url}/ui/runs")
    await expect(page.locator("tbody tr")).to_have_count(3)
    await page.get_by_label("Parent run").fill(parent.run_id)
    await page.get_by_role("button", name="Filter").click()
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text(f"child of {parent.run_id[:8]}")
