"""Who may do what in the dashboard: scopes like the REST API, audit entries naming the
dashboard's token, and a revoked token's open pages and live streams ending."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect
from ratchet import Ratchet

from tests.integration.conftest import Stack, eventually
from tests.ui import seed

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _token(client: Ratchet, name: str, scopes: list[str]) -> dict[str, Any]:
    made: dict[str, Any] = await client.arequest(
        "POST", "/tokens", json={"name": name, "scopes": scopes}
    )
    return made


async def _login(page: Page, stack: Stack, secret: str) -> None:
    await page.goto(f"{stack.api_url}/ui/login?token={secret}")
    await expect(page).to_have_url(f"{stack.api_url}/ui/runs")


async def _held_run(client: Ratchet, start_worker: Any) -> str:
    wfs = {w.name: w for w in seed.workflows(client)}
    await start_worker("ui-access-worker", workflows=list(wfs.values()), slots=8)
    ref = await wfs[seed.PIPELINE].aio_run_no_wait(
        seed.Article(url="https://example.com/long", user="ada", hold=True)
    )

    async def running() -> bool:
        run = await client.runs.aio_get(ref.run_id, missing_ok=True)
        return bool(run) and run["status"] == "RUNNING"

    await eventually(running)
    return ref.run_id


async def test_a_read_only_token_sees_pages_but_is_refused_changes(
    page: Page, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    run_id = await _held_run(client, start_worker)
    viewer = await _token(client, "viewer", ["read"])
    await _login(page, stack, viewer["token"])
    await expect(page.locator("header.top")).to_contain_text("read-only")
    await expect(page.locator("tbody tr")).to_have_count(1)

    await page.goto(f"{stack.api_url}/ui/runs/{run_id}")
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    await expect(page.get_by_role("alert")).to_contain_text("needs the 'write' scope")
    assert (await client.runs.aio_get(run_id))["status"] == "RUNNING"

    await page.goto(f"{stack.api_url}/ui/workflows/{seed.PIPELINE}")
    await page.get_by_label("url").fill("https://example.com/a")
    await page.get_by_label("user").fill("ada")
    await page.get_by_role("button", name=f"Run {seed.PIPELINE}").click()
    await expect(page.get_by_role("alert")).to_contain_text("needs the 'write' scope")
    assert len(await client.arequest("GET", "/runs")) == 1

    # Settings: limits yes, tokens and the audit log no (they need admin).
    await page.goto(f"{stack.api_url}/ui/settings")
    await expect(page.get_by_role("heading", name="Limits")).to_be_visible()
    await expect(page.get_by_text("These need a token with the admin scope")).to_be_visible()
    await expect(page.get_by_role("button", name="Create token")).to_have_count(0)


async def test_a_dashboard_cancel_is_audited_with_the_token_that_did_it(
    page: Page, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    run_id = await _held_run(client, start_worker)
    operator = await _token(client, "night-operator", ["write"])
    await _login(page, stack, operator["token"])
    await page.goto(f"{stack.api_url}/ui/runs/{run_id}")
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.get_by_role("status")).to_contain_text("Cancellation requested")

    entries = await client.arequest("GET", "/audit", params={"action": "run.cancel"})
    assert [(e["target"], e["token_id"], e["token_name"]) for e in entries] == [
        (run_id, operator["id"], "night-operator")
    ]


async def test_a_revoked_token_ends_its_open_pages_and_streams(
    context: BrowserContext, stack: Stack, client: Ratchet, start_worker: Any
) -> None:
    run_id = await _held_run(client, start_worker)
    doomed = await _token(client, "doomed", ["write"])
    # Three open pages: one on the run's live stream, one on the runs list's, one with only
    # the session stream.
    run_page, list_page, plain_page = [await context.new_page() for _ in range(3)]
    await _login(list_page, stack, doomed["token"])
    await run_page.goto(f"{stack.api_url}/ui/runs/{run_id}")
    await plain_page.goto(f"{stack.api_url}/ui/workflows")
    await expect(run_page.locator("#run-head .badge")).to_have_text("RUNNING")

    await client.arequest("DELETE", f"/tokens/{doomed['id']}")

    for p in (run_page, list_page, plain_page):
        await expect(p).to_have_url(f"{stack.api_url}/ui/login?ended=1")
        await expect(p.get_by_role("alert")).to_contain_text("Your session has ended")
    # The cookie is gone and the token opens nothing any more.
    assert not [c for c in await context.cookies() if c["name"] == "ratchet_token"]
    await run_page.goto(f"{stack.api_url}/ui/login?token={doomed['token']}")
    await expect(run_page.get_by_role("alert")).to_contain_text("not valid")


async def test_a_worker_token_cannot_open_the_dashboard(
    page: Page, stack: Stack, client: Ratchet
) -> None:
    worker = await _token(client, "a-worker", ["worker"])
    await page.goto(f"{stack.api_url}/ui/login?token={worker['token']}")
    await expect(page.get_by_role("alert")).to_contain_text("lacks the 'read' scope")
    assert not [c for c in await page.context.cookies() if c["name"] == "ratchet_token"]
    async with httpx.AsyncClient(base_url=stack.api_url,
                                 cookies={"ratchet_token": worker["token"]}) as http:
        assert (await http.get("/ui/runs")).status_code == 403
