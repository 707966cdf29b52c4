"""Browser tests of the dashboard: the integration stack plus Debian's chromium via Playwright.

The stack fixtures (`stack`, `tenant`, `client`, `start_worker`) are the integration suite's,
re-exported. Re-exported fixtures are new instances, so this directory gets its own NATS server
and database: a second stack's scheduler must not share the first one's durable consumers. `make test` installs chromium when /usr/bin/chromium is missing (Makefile
`chromium` target); Playwright never downloads a browser.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from services.replicator.service import ReplicatorService
from tests.conftest import database_url  # noqa: F401  (a fresh database for this stack)
from tests.integration import conftest as integration
from tests.integration.conftest import Stack
from tests.ui.screenshots import CHROMIUM, CHROMIUM_ARGS, VIEWPORT
from tools import devstack

stack = integration.stack
tenant = integration.tenant
client = integration.client
start_worker = integration.start_worker

if not os.path.exists(CHROMIUM):
    pytest.exit(f"{CHROMIUM} is missing: run `make chromium` (make test does it)", returncode=2)


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("nats-ui")
    server = devstack.NatsServer(base / "store", log_file=base / "nats-server.log")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    ctx.set_default_timeout(20_000)
    yield ctx
    await ctx.close()


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    return await context.new_page()


@pytest.fixture
def token(stack: Stack, tenant: str) -> str:
    return str(stack.tokens[tenant])  # type: ignore[attr-defined]


@pytest.fixture
async def logged_in(page: Page, stack: Stack, token: str) -> Page:
    """The page, logged in as the test's tenant through the login form."""
    await page.goto(f"{stack.api_url}/ui/login")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url("**/ui/runs")
    return page


# Module scope, not session: chDB is one embedded server per process, so it must be stopped
# before a later test opens its own at another path.
@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def replicator(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ReplicatorService]:
    """The log store (embedded chDB), for the run page's logs panel."""
    settings = msgspec.structs.replace(
        stack.settings, data_dir=str(tmp_path_factory.mktemp("olap-ui")), clickhouse_url=""
    )
    service = ReplicatorService(settings, linger_s=0.05, lag_interval_s=0.2)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
