"""Flow control in a real browser: pause and resume a workflow from its page (the badge on
the page and in the list, held runs starting on resume), and a batched run's page listing the
triggers it holds."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from playwright.async_api import Dialog, Page, expect
from ratchet import Batch, Context, Ratchet

from tests.integration.conftest import Stack, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _accept(dialog: Dialog) -> Any:
    return dialog.accept()


async def test_pause_and_resume_from_the_workflow_page(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any,
) -> None:
    wf = client.workflow("ui-pausable")

    @wf.task()
    async def step(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"n": input.get("n")}

    await start_worker("w-ui-pause", workflows=[wf], slots=2)
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/workflows/ui-pausable")
    await expect(page.locator("#paused-badge")).to_have_count(0)
    await page.get_by_label("New runs while paused").select_option("queue")
    page.once("dialog", _accept)
    await page.get_by_role("button", name="Pause", exact=True).click()
    await expect(page.get_by_role("status")).to_contain_text("ui-pausable is paused (queue)")
    await expect(page.locator("#paused-badge")).to_have_text("paused")
    assert (await client.workflows.aio_pause_state("ui-pausable"))["mode"] == "queue"

    held = await wf.aio_run_no_wait({"n": 1})

    async def is_held() -> bool:
        return (await client.workflows.aio_pause_state("ui-pausable"))["held"] == 1

    await eventually(is_held)
    await page.goto(f"{stack.api_url}/ui/workflows")
    row = page.locator("tr", has=page.get_by_role("link", name="ui-pausable", exact=True))
    await expect(row.locator(".badge.s-paused")).to_have_text("paused")

    await page.goto(f"{stack.api_url}/ui/workflows/ui-pausable")
    await expect(page.locator("#pause")).to_contain_text("1 held")
    await page.get_by_role("button", name="Resume").click()
    await expect(page.get_by_role("status")).to_contain_text("1 held run(s) start now")
    await expect(page.locator("#paused-badge")).to_have_count(0)
    assert (await held.aio_result())["step"] == {"n": 1}
    entries = await client.arequest("GET", "/audit", params={"action": "workflow.resume"})
    assert [e["target"] for e in entries] == ["ui-pausable"]


async def test_a_batched_run_page_lists_its_triggers(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any,
) -> None:
    wf = client.workflow("ui-digest", batch=Batch(size=3, max_wait=timedelta(seconds=30)))

    @wf.task()
    async def digest(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"count": len(input["items"])}

    await start_worker("w-ui-digest", workflows=[wf], slots=2)
    refs = [await wf.aio_run_no_wait({"i": i}) for i in range(3)]
    outs = await asyncio.gather(*(r.aio_result() for r in refs))
    assert outs[0]["digest"] == {"count": 3}
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/runs/{refs[0].run_id}")
    panel = page.locator("#flow-triggers")
    await expect(panel).to_contain_text("Batch: 3 trigger(s)")
    await expect(panel.locator("tbody tr")).to_have_count(3)
    await expect(panel.locator("tbody tr").first).to_contain_text(refs[0].run_id)
