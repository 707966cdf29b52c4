"""NATS with auth on: tenant credentials publish their own events and nothing else; services
hold only the permissions their role needs.

A dedicated nats-server (`nats_auth`, operator mode, the layout `make up` uses) and a second
in-process stack whose services each connect with their own role's credentials. The rest of
the suite keeps an open server: many tests connect to NATS directly as a harness (reading
TASK, publishing raw events) and would each need a credential for it, while what auth changes
(who may publish and subscribe what) is proved here against the real services.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import RawCredentials
from nats.js.errors import NotFoundError
from ratchet import ApiError, Context, Ratchet
from securestack import SecureStack, permission_violations, secure_stack

from libs.common import natsauth, subjects
from libs.common.subjects import Stream

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def sstack(
    nats_auth: Any, new_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SecureStack]:
    data_dir = tmp_path_factory.mktemp("secure-data")
    async with secure_stack(nats_auth.url, nats_auth.layout, new_database(), data_dir) as s:
        yield s


@pytest.fixture
async def tenant_client(sstack: SecureStack) -> AsyncIterator[tuple[str, Ratchet]]:
    tenant, token = await sstack.new_tenant()
    client = Ratchet(token=token, api_url=sstack.api_url, grpc_addr=sstack.grpc_addr)
    yield tenant, client
    await client.aclose()
    client.close()


class Conn:
    """A NATS connection that records the errors the server reports asynchronously."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Any = None

    async def open(self, url: str, **opts: Any) -> Conn:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        self.nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, **opts)
        return self

    def violation(self, kind: str, subject: str) -> bool:
        needle = f'permissions violation for {kind} to "{subject}"'
        return any(needle.lower() in error for error in self.errors)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()


@contextlib.asynccontextmanager
async def connected(url: str, **opts: Any) -> AsyncIterator[Conn]:
    conn = await Conn().open(url, **opts)
    try:
        yield conn
    finally:
        await conn.close()


async def until(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.05)


async def tenant_creds(client: Ratchet, **body: Any) -> dict[str, Any]:
    return dict(await client.arequest("POST", "/nats-credentials", json=body))


def tenant_opts(creds: dict[str, Any]) -> dict[str, Any]:
    return {"user_credentials": RawCredentials(creds["creds"]),
            "inbox_prefix": creds["inbox_prefix"]}


async def test_credentials_response_allows_only_own_events(
    tenant_client: tuple[str, Ratchet], sstack: SecureStack
) -> None:
    tenant, client = tenant_client
    creds = await tenant_creds(client, ttl_s=600)
    assert creds["publish"] == [f"evt.{tenant}.>"]
    assert creds["subscribe"] == [f"_INBOX_{tenant}.>"]
    assert creds["account"] == sstack.api.settings.nats_account
    claims = natsauth.decode_claims(creds["jwt"])
    assert claims["nats"]["pub"] == {"allow": [f"evt.{tenant}.>"]}
    assert 0 < claims["exp"] - time.time() <= 600
    # Each call issues a new, independent identity.
    assert (await tenant_creds(client))["seed"] != creds["seed"]
    with pytest.raises(ApiError) as err:
        await tenant_creds(client, ttl_s=10 * 365 * 24 * 3600)
    assert err.value.status == 400 and "ttl_s" in str(err.value)


async def test_no_credentials_no_connection(nats_auth: Any) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(nats_auth.url, allow_reconnect=False, max_reconnect_attempts=0,
                           connect_timeout=2)


async def test_tenant_publish_triggers_run_end_to_end(
    tenant_client: tuple[str, Ratchet], nats_auth: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tenant, client = tenant_client
    wf = client.workflow("on-nats-auth", on_events=["order.paid"])

    @wf.task()
    async def echo(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"got": input}

    worker = client.worker("w-nats-auth", workflows=[wf], slots=2)
    task = asyncio.create_task(worker.astart())
    try:
        await worker.wait_connected(30)
        creds = await tenant_creds(client)
        async with connected(nats_auth.url, **tenant_opts(creds)) as conn:
            ack = await conn.nc.jetstream().publish(
                subjects.evt(tenant, "order.paid"), b'{"amount": 7}', timeout=5
            )
            assert ack.stream == Stream.EVT.value
            assert conn.errors == []

        async def succeeded() -> bool:
            runs = await client.arequest("GET", "/runs", params={"workflow": "on-nats-auth"})
            return any(r["status"] == "SUCCEEDED" for r in runs)

        await until(succeeded, timeout_s=30)
        [run] = await client.arequest("GET", "/runs", params={"workflow": "on-nats-auth"})
        assert (await client.runs.aio_get(run["id"]))["output"]["echo"] == {"got": {"amount": 7}}
        assert permission_violations(caplog.records) == []
    finally:
        await worker.astop(drain_timeout_s=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def test_tenant_cannot_publish_outside_its_events(
    tenant_client: tuple[str, Ratchet], nats_auth: Any
) -> None:
    tenant, client = tenant_client
    other = "t" + uuid.uuid4().hex[:12]
    forbidden = [
        subjects.evt(other, "x"),
        subjects.cmd(tenant, "run.trigger"),
        subjects.task_report_batch(tenant),
        subjects.task_changes(tenant),
        subjects.dsp("dispatcher-1"),
    ]
    creds = await tenant_creds(client)
    async with connected(nats_auth.url, **tenant_opts(creds)) as conn:
        for subject in forbidden:
            await conn.nc.publish(subject, b'{"forged": true}')
        await conn.nc.flush()
        await until(lambda: all(conn.violation("publish", s) for s in forbidden))
        # A JetStream publish to another tenant gets no ack: the stream never saw it.
        with pytest.raises(nats.errors.TimeoutError):
            await conn.nc.jetstream().publish(subjects.evt(other, "y"), b"{}", timeout=1)
    # Nothing reached the streams (read with the operators' tools credentials).
    async with connected(nats_auth.url,
                         user_credentials=str(nats_auth.layout.tools_creds)) as admin:
        js = admin.nc.jetstream()
        for stream, subject in ((Stream.EVT, subjects.evt(other, "x")),
                                (Stream.EVT, subjects.evt(other, "y")),
                                (Stream.CMD, subjects.cmd(tenant, "run.trigger"))):
            with pytest.raises(NotFoundError):
                await js.get_last_msg(stream.value, subject)


async def test_tenant_cannot_subscribe_to_internal_subjects(
    tenant_client: tuple[str, Ratchet], nats_auth: Any
) -> None:
    _, client = tenant_client
    creds = await tenant_creds(client)
    internal = ["task.>", "cmd.>", "dsp.>", "evt.>", "_INBOX.>"]
    async with connected(nats_auth.url, **tenant_opts(creds)) as conn:
        for subject in internal:
            await conn.nc.subscribe(subject)
        await conn.nc.flush()
        await until(lambda: all(conn.violation("subscription", s) for s in internal))


async def test_default_inbox_gets_no_acks(
    tenant_client: tuple[str, Ratchet], nats_auth: Any
) -> None:
    """Without its private inbox prefix a tenant cannot read replies: `_INBOX.>` is shared."""
    tenant, client = tenant_client
    creds = await tenant_creds(client)
    async with connected(nats_auth.url, user_credentials=RawCredentials(creds["creds"])) as conn:
        with pytest.raises(nats.errors.TimeoutError):
            await conn.nc.jetstream().publish(subjects.evt(tenant, "z"), b"{}", timeout=1)


async def test_service_credentials_hold_only_their_role(nats_auth: Any) -> None:
    layout = nats_auth.layout
    # The dispatcher reports tasks; it cannot trigger runs.
    async with connected(nats_auth.url, user_credentials=str(layout.creds("dispatcher"))) as c:
        trigger = subjects.cmd("someone", "run.trigger")
        await c.nc.publish(trigger, b"x")
        await c.nc.flush()
        await until(lambda: c.violation("publish", trigger))
        assert not c.violation("publish", subjects.task_report_batch("someone"))
    # The scheduler consumes through JetStream; it cannot tap raw events or task reports.
    async with connected(nats_auth.url, user_credentials=str(layout.creds("scheduler"))) as c:
        await c.nc.subscribe(subjects.EVT_ALL)
        await c.nc.flush()
        await until(lambda: c.violation("subscription", subjects.EVT_ALL))
    # The replicator answers OLAP queries but cannot publish events.
    async with connected(nats_auth.url, user_credentials=str(layout.creds("replicator"))) as c:
        await c.nc.subscribe(subjects.OLAP_QUERY)
        forged = subjects.evt("someone", "x")
        await c.nc.publish(forged, b"{}")
        await c.nc.flush()
        await until(lambda: c.violation("publish", forged))
        assert not c.violation("subscription", subjects.OLAP_QUERY)


async def test_layout_is_reused(nats_auth: Any) -> None:
    from libs.common.natsauth_setup import ensure_layout

    again = ensure_layout(nats_auth.layout.root)
    assert again.account == nats_auth.layout.account
    assert again.server_conf.read_text() == nats_auth.layout.server_conf.read_text()
