"""A run page's logs and live stream panels in a real browser."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Page, expect
from ratchet import Ratchet

from services.replicator.service import ReplicatorService
from tests.integration.conftest import Stack, eventually
from tests.ui import seed

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _worker(client: Ratchet, start_worker: Any) -> dict[str, Any]:
    wfs = {w.name: w for w in seed.workflows(client)}
    await start_worker("ui-output-worker", workflows=list(wfs.values()), slots=4)
    return wfs


async def test_logs_and_stream_arrive_live_while_the_run_runs(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any,
    replicator: ReplicatorService,
) -> None:
    wfs = await _worker(client, start_worker)
    ref = await wfs[seed.CHATTY].aio_run_no_wait({"hold": True})
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/runs/{ref.run_id}")
    await page.evaluate("window.__sameDocument = true")

    # The stream: every chunk, in order, as it is put (the task is still running).
    out = page.locator("#stream-out")
    await expect(out).to_have_text("".join(seed.STREAMED) + '{"progress":1.0}\n')
    await expect(page.locator("#run-head .badge")).to_have_text("RUNNING")
    # The logs: each line with its task, attempt and level, without a reload.
    logs = page.locator("#logs tbody tr")
    await expect(logs).to_have_count(3)
    await expect(logs.nth(0)).to_contain_text("warming up")
    await expect(logs.nth(0).locator(".level")).to_have_text("debug")
    await expect(logs.nth(2)).to_contain_text("page 2 was slow")
    await expect(logs.nth(2).locator(".level")).to_have_text("warning")
    await expect(logs.nth(1).locator("td").nth(1)).to_have_text("talk")
    await expect(logs.nth(1).locator("td").nth(2)).to_have_text("0")

    await client.arequest("POST", f"/runs/{ref.run_id}/cancel")
    await expect(page.locator("#stream-state")).to_contain_text("Stream ended with the run (CANCELLED)")
    await expect(page.locator("#stream-state")).to_contain_text("5 chunks")
    await expect(logs).to_have_count(4)  # "done", written as the task stopped
    assert await page.evaluate("window.__sameDocument === true")
    # The panel's connection was closed by stream-end, not reopened: nothing came twice.
    await expect(out).to_have_text("".join(seed.STREAMED) + '{"progress":1.0}\n')


async def test_a_finished_run_shows_its_stream_from_the_first_chunk(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any,
    replicator: ReplicatorService,
) -> None:
    wfs = await _worker(client, start_worker)
    ref = await wfs[seed.CHATTY].aio_run_no_wait({})
    await ref.aio_result(timeout_s=30)

    async def logged() -> bool:
        return len(await client.arequest("GET", f"/runs/{ref.run_id}/logs")) == 4

    await eventually(logged)
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/runs/{ref.run_id}")
    await expect(page.locator("#stream-out .chunk")).to_have_count(len(seed.STREAMED) + 1)
    await expect(page.locator("#stream-out")).to_have_text(
        "".join(seed.STREAMED) + '{"progress":1.0}\n'
    )
    await expect(page.locator("#stream-state")).to_contain_text("(SUCCEEDED): 5 chunks")
    await expect(page.locator("#logs tbody tr")).to_have_count(4)
    await expect(page.locator("#logs tbody tr").last).to_contain_text("done")
