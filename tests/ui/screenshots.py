"""`make ui-screenshots`: a PNG of every main dashboard view, from a private in-process stack.

    python -m tests.ui.screenshots bench/results/ui

Starts NATS and PostgreSQL in a temporary directory, the services in this process, a real SDK
worker with the workflows of tests/ui/seed.py, triggers runs (some succeed, some fail, one
stays running), pushes events, defines a rate limit, a filter, a cron and a scheduled run,
then drives Debian's chromium through every view.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.async_api import Browser, async_playwright
from ratchet import Ratchet, Workflow

from libs.common import db, limits, tokens
from libs.common.limits import Limit
from libs.common.service import Service
from libs.common.settings import load_settings
from services.api.service import ApiService
from services.dispatcher.service import DispatcherService
from services.matcher.service import MatcherService
from services.replicator.service import ReplicatorService
from services.scheduler.service import SchedulerService
from tests.ui import seed
from tools import devstack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
VIEWPORT = {"width": 1366, "height": 860}


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium through Playwright (never a downloaded browser)."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met before the deadline")
        await asyncio.sleep(0.1)


async def _seed(r: Ratchet, wfs: dict[str, Workflow]) -> dict[str, str]:
    """Runs in every state; returns ids worth a screenshot."""
    pipeline, flaky = wfs[seed.PIPELINE], wfs[seed.FLAKY]
    runs: list[str] = []
    for i in range(14):
        ref = await pipeline.aio_run_no_wait(
            seed.Article(url=f"https://example.com/{i}", user=("ada", "lin", "bo")[i % 3],
                         words=100 + i),
            metadata={"team": ("red", "blue")[i % 2], "batch": "nightly"},
        )
        runs.append(ref.run_id)
    failed = await flaky.aio_run_no_wait({"fail": True}, metadata={"team": "red"})
    await flaky.aio_run_no_wait({"fail": False})
    held = await pipeline.aio_run_no_wait(
        seed.Article(url="https://example.com/long", user="ada", hold=True)
    )
    await r.events.aio_push("article.published", {"url": "https://example.com/e", "user": "ev"})
    await r.events.aio_push("unrelated.key", {"x": 1})
    await r.rate_limits.aio_put("llm", limit=60, per="minute")
    await r.arequest("POST", "/filters", json={"workflow": seed.PIPELINE,
                                               "expression": "input.user != 'bot'"})
    await r.arequest("POST", "/crons", json={"workflow": seed.FLAKY, "expression": "0 9 * * 1",
                                             "input": {"fail": False}, "name": "weekly-check"})
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    await r.arequest("POST", "/scheduled", json={
        "workflow": seed.PIPELINE, "run_at": later,
        "input": {"url": "https://example.com/later", "user": "lin"},
    })
    family = await wfs[seed.FAMILY].aio_run_no_wait({"children": 3})
    await family.aio_result(timeout_s=60)
    child = (await r.runs.aio_get(family.run_id))["children"][0]["id"]
    # A second version of the flaky workflow, then a rollback to the first: the versions table
    # shows a current version that is not the newest.
    old = await r.arequest("GET", f"/workflows/{seed.FLAKY}")
    spec = dict(old["spec"], description="Fails when asked to (v2)")
    await r.arequest("POST", "/workflows", json=spec)
    await r.arequest("POST", f"/workflows/{seed.FLAKY}/rollback",
                     json={"version_id": old["version_id"]})
    await r.arequest("POST", "/tokens", json={"name": "ci-deploy", "scopes": ["write"],
                                              "expires_in_s": 30 * 86_400})
    viewer = await r.arequest("POST", "/tokens", json={"name": "viewer", "scopes": ["read"]})
    await r.arequest("DELETE", f"/tokens/{viewer['id']}")
    chatty = await wfs[seed.CHATTY].aio_run_no_wait({})
    await chatty.aio_result(timeout_s=60)

    async def logged() -> bool:
        return len(await r.arequest("GET", f"/runs/{chatty.run_id}/logs")) == 4

    await until(logged)
    return {"ok": runs[0], "failed": failed.run_id, "held": held.run_id,
            "family": family.run_id, "child": child, "chatty": chatty.run_id}


@dataclass
class PrivateStack:
    api_url: str
    grpc_addr: str
    token: str  # of tenant "demo"
    database_url: str


@contextlib.asynccontextmanager
async def private_stack(base: Path) -> AsyncIterator[PrivateStack]:
    """NATS, PostgreSQL and every service, in this process, with state under `base`."""
    nats = devstack.NatsServer(base / "nats", log_file=base / "nats.log")
    pg = devstack.PostgresCluster(base / "pg", log_file=base / "pg.log")
    services: list[Service] = []
    try:
        nats_url = await asyncio.to_thread(nats.start)
        dsn = await asyncio.to_thread(pg.start)
        await db.migrate(dsn)
        settings = load_settings(
            nats_url=nats_url, database_url=dsn, api_port=0, grpc_port=0,
            data_dir=str(base / "data"), dispatcher_id=f"ui-{uuid.uuid4().hex[:6]}",
        )
        api, dispatcher = ApiService(settings), DispatcherService(settings)
        services = [ReplicatorService(settings), MatcherService(settings),
                    SchedulerService(settings), dispatcher, api]
        for svc in services:
            await svc.start()
        pool = await db.create_pool(dsn, max_size=1)
        token = await tokens.ensure_tenant(pool, "demo")
        await limits.store(pool, "demo", {Limit.UNFINISHED_RUNS: 500, Limit.WORKERS: 4,
                                          Limit.TRIGGERS_PER_S: 200})
        await pool.close()
        yield PrivateStack(f"http://127.0.0.1:{api.port}", f"127.0.0.1:{dispatcher.port}",
                           token, dsn)
    finally:
        for svc in reversed(services):
            with contextlib.suppress(Exception):
                await svc.stop()
        await asyncio.to_thread(pg.stop)
        await asyncio.to_thread(nats.stop)


async def main(out: Path, base: Path) -> None:
    async with private_stack(base) as st:
        await shoot(out, st.api_url, st.token, st.grpc_addr)


async def shoot(out: Path, url: str, token: str, grpc_addr: str) -> None:
    r = Ratchet(token=token, api_url=url, grpc_addr=grpc_addr)
    wfs = {w.name: w for w in seed.workflows(r)}
    worker = r.worker("shots-worker", workflows=list(wfs.values()), slots=8, labels={"zone": "local"})
    task = asyncio.create_task(worker.astart())
    await worker.wait_connected(30)
    try:
        ids = await _seed(r, wfs)

        async def settled() -> bool:
            runs = await r.arequest("GET", "/runs", params={"limit": 100})
            return sum(x["status"] in ("SUCCEEDED", "FAILED") for x in runs) >= 16

        await until(settled)
        async with browser() as b:
            page = await b.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            await page.goto(f"{url}/ui/login")
            await page.screenshot(path=str(out / "01-login.png"))
            await page.goto(f"{url}/ui/login?token={token}")
            await page.wait_for_url(f"{url}/ui/runs")
            views = [
                ("02-runs", "/ui/runs"),
                ("03-run-succeeded", f"/ui/runs/{ids['ok']}"),
                ("04-run-failed", f"/ui/runs/{ids['failed']}"),
                ("05-run-running", f"/ui/runs/{ids['held']}"),
                ("06-workflows", "/ui/workflows"),
                ("07-workflow", f"/ui/workflows/{seed.PIPELINE}"),
                ("08-workers", "/ui/workers"),
                ("09-events", "/ui/events"),
                ("10-filters", "/ui/filters"),
                ("11-crons", "/ui/crons"),
                ("12-rate-limits", "/ui/rate-limits"),
                ("13-analytics", "/ui/analytics"),
                ("14-runs-filtered", "/ui/runs?status=FAILED"),
                ("15-run-with-children", f"/ui/runs/{ids['family']}"),
                ("16-run-child", f"/ui/runs/{ids['child']}"),
                ("17-runs-of-parent", f"/ui/runs?parent={ids['family']}"),
                ("18-workflow-rolled-back", f"/ui/workflows/{seed.FLAKY}"),
                ("19-settings", "/ui/settings"),
                ("21-run-logs-and-stream", f"/ui/runs/{ids['chatty']}"),
            ]
            for name, path in views:
                await page.goto(url + path)
                await page.wait_for_load_state("networkidle")
                head = page.locator("#run-head .badge")
                if await head.count() and await head.text_content() != "RUNNING":
                    await page.locator(".stream-end").wait_for()  # the stream panel caught up
                await page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            # The one moment a token's secret is shown.
            await page.goto(f"{url}/ui/settings")
            await page.get_by_label("Name").fill("nightly-report")
            await page.get_by_role("button", name="Create token").click()
            await page.locator("#new-secret").wait_for()
            await page.screenshot(path=str(out / "20-settings-token-created.png"),
                                  full_page=True)
        await r.arequest("POST", f"/runs/{ids['held']}/cancel")
    finally:
        await worker.astop(drain_timeout_s=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await r.aclose()
    print(f"wrote {len(views) + 2} screenshots to {out}")


def scratch_dir() -> Path:
    # Not a 0700 temporary directory: as root, PostgreSQL runs as `postgres` and must enter it.
    base = Path(tempfile.mkdtemp(prefix="ratchet-ui-"))
    base.chmod(0o755)
    return base


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = scratch_dir()
    try:
        asyncio.run(main(out, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    run(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/ui"))
