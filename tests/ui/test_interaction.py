"""Talking to a run in a real browser (docs/interaction.md): the run page shows the state a
task sets as it changes, lists its waitpoints and answers one, sends a signal, and forks from
a task; the waitpoint's public page works for a person without an account."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect
from ratchet import Context, DurableContext, Ratchet

from tests.integration.conftest import Stack, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_run_page_shows_state_live_answers_a_waitpoint_and_sends_a_signal(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any,
) -> None:
    @client.durable_task(name="ui-agent", execution_timeout=timedelta(minutes=2))
    async def agent(input: dict, ctx: DurableContext) -> dict:
        ctx.set_state({"step": "drafting"})
        await ctx.aio_wait_for_signal("poke")
        ctx.set_state({"step": "poked"})
        wp = await ctx.aio_create_waitpoint(label="publish the draft?")
        answer = await ctx.aio_wait_for_waitpoint(wp)
        ctx.set_state({"step": "waiting for go", "approved": answer["approved"]})
        go = await ctx.aio_wait_for_signal("go")
        return {"approved": answer["approved"], "go": go}

    await start_worker("w-ui-agent", workflows=[agent], slots=1)
    ref = await agent.aio_run_no_wait({})

    async def drafting() -> bool:
        return await client.runs.aio_state(ref.run_id) == {"step": "drafting"}

    await eventually(drafting, timeout_s=30)
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/runs/{ref.run_id}")
    await expect(page.locator("#run-state")).to_contain_text('"drafting"')
    # Sent from outside the page: the page shows the new state without being reloaded.
    await page.evaluate("window.__same_page = true")
    await client.runs.aio_signal(ref.run_id, "poke")
    await expect(page.locator("#run-state")).to_contain_text('"poked"', timeout=30_000)
    assert await page.evaluate("window.__same_page === true")
    rows = page.locator("#waitpoints tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("publish the draft?", timeout=30_000)
    await rows.first.get_by_role("link", name="Answer…").click()
    await page.get_by_label("Comment (optional)").fill("ship it")
    await page.get_by_role("button", name="Approve").click()
    await expect(page.get_by_role("status")).to_contain_text("publish the draft? completed")
    # The page updates by itself once the task sets its next state.
    await expect(page.locator("#run-state")).to_contain_text('"waiting for go"', timeout=30_000)
    await page.get_by_label("Name").fill("go")
    await page.get_by_label("Payload (JSON)").fill('{"by": "ada"}')
    await page.get_by_role("button", name="Send signal").click()
    await expect(page.get_by_role("status")).to_contain_text("Signal 'go' sent.")
    out = (await ref.aio_result(60))["ui-agent"]
    assert out == {"approved": True, "go": {"by": "ada"}}
    wp = (await client.waitpoints.aio_list(run_id=ref.run_id))[0]
    assert wp["payload"] == {"approved": True, "comment": "ship it"}

    await page.goto(f"{stack.api_url}/ui/waitpoints?all=true")
    await expect(page.locator(f"#wp-{wp['id']}")).to_contain_text("completed")


async def test_fork_from_here_starts_a_linked_run(
    logged_in: Page, stack: Stack, client: Ratchet, start_worker: Any,
) -> None:
    wf = client.workflow("ui-forkable")

    @wf.task()
    def first(input: dict, ctx: Context) -> dict:
        return {"n": input["n"]}

    @wf.task(parents=[first])
    def second(input: dict, ctx: Context) -> dict:
        return {"double": ctx.parent_output(first)["n"] * 2, "input": input["n"]}

    await start_worker("w-ui-fork", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({"n": 1})
    await ref.aio_result(60)
    page = logged_in
    await page.goto(f"{stack.api_url}/ui/runs/{ref.run_id}")
    task = page.locator("section.task", has=page.locator("h3", has_text="second"))
    await task.get_by_role("link", name="Fork from here").click()
    await page.get_by_label("Input (JSON; empty keeps this run's)").fill('{"n": 5}')
    await page.get_by_role("button", name="Fork").click()
    await expect(page.get_by_role("status")).to_contain_text("reused: first")
    await expect(page.locator("#forked-from")).to_have_text(ref.run_id[:12])
    fork_id = page.url.split("/ui/runs/")[1].split("?")[0]
    out = (await client.runs.aio_get(fork_id, wait_s=30))["output"]
    assert out == {"first": {"n": 1}, "second": {"double": 2, "input": 5}}
    await page.goto(f"{stack.api_url}/ui/runs/{ref.run_id}")
    await expect(page.locator("#forks")).to_contain_text(fork_id[:12])


async def test_the_public_waitpoint_page_needs_no_account(
    browser: Browser, stack: Stack, client: Ratchet, start_worker: Any,
) -> None:
    @client.durable_task(name="ui-refund", execution_timeout=timedelta(minutes=2))
    async def refund(input: dict, ctx: DurableContext) -> dict:
        wp = await ctx.aio_create_waitpoint(label="refund order 42")
        ctx.set_state({"url": wp.url})
        return await ctx.aio_wait_for_waitpoint(wp)

    await start_worker("w-ui-refund", workflows=[refund], slots=1)
    ref = await refund.aio_run_no_wait({})
    state: dict[str, Any] = {}

    async def published() -> bool:
        state.update(await client.runs.aio_state(ref.run_id) or {})
        return "url" in state

    await eventually(published, timeout_s=30)
    anonymous = await browser.new_context()  # no session cookie, no token
    try:
        page = await anonymous.new_page()
        await page.goto(state["url"])
        await expect(page.get_by_role("heading")).to_have_text("refund order 42")
        await page.get_by_role("button", name="Reject").click()
        await expect(page.get_by_role("status")).to_contain_text("Thank you")
    finally:
        await anonymous.close()
    out = (await ref.aio_result(60))["ui-refund"]
    assert out == {"approved": False, "comment": ""}
