"""The infrastructure retry policy, against a real failure: PostgreSQL on a port nobody serves."""

from __future__ import annotations

import asyncio
import logging
import re

import asyncpg
import pytest
from prometheus_client import REGISTRY
from tenacity import RetryCallState

from libs.common import retry
from tools import devstack


async def _connect_closed(port: int) -> None:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=2)
    await conn.close()  # pragma: no cover - nothing listens there


def _retries(site: str) -> float:
    return REGISTRY.get_sample_value("ratchet_infra_retries_total", {"site": site}) or 0.0


async def test_connection_refused_is_retried_until_the_attempt_bound() -> None:
    port = devstack.free_port()
    tries = 0
    with pytest.raises(OSError):
        async for attempt in retry.policy("test.refused", attempts=4):
            with attempt:
                tries += 1
                await _connect_closed(port)
    assert tries == 4
    assert _retries("test.refused") == 3  # a retry is counted before each wait


async def test_the_deadline_bounds_an_unlimited_attempt_count() -> None:
    port = devstack.free_port()
    tries = 0
    with pytest.raises(OSError):
        async for attempt in retry.policy("test.deadline", timeout_s=0.5, attempts=None):
            with attempt:
                tries += 1
                await _connect_closed(port)
    assert tries >= 1


async def test_errors_that_are_not_transient_are_raised_at_once() -> None:
    tries = 0
    with pytest.raises(ValueError, match="bad input"):
        async for attempt in retry.policy("test.bug", attempts=5):
            with attempt:
                tries += 1
                raise ValueError("bad input")
    assert tries == 1
    assert not retry.transient(ValueError("x"))
    assert not retry.transient(asyncpg.UniqueViolationError("dup"))
    assert retry.transient(ConnectionRefusedError())
    assert retry.transient(asyncpg.CannotConnectNowError("starting up"))
    assert retry.any_error(ValueError("x"))


async def test_a_set_event_stops_the_retries_with_the_last_error() -> None:
    port = devstack.free_port()
    stopping = asyncio.Event()
    tries = 0
    with pytest.raises(OSError):
        async for attempt in retry.policy("test.until", timeout_s=None, until=stopping):
            with attempt:
                tries += 1
                if tries == 3:
                    stopping.set()  # e.g. the service's stop() during an outage
                await _connect_closed(port)
    assert tries == 3


async def test_waits_are_logged_jittered_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    port = devstack.free_port()
    with caplog.at_level(logging.WARNING, logger="libs.common.retry"), pytest.raises(OSError):
        async for attempt in retry.policy("test.log", attempts=3):
            with attempt:
                await _connect_closed(port)
    waits = [float(m) for m in re.findall(r"retrying in ([0-9.]+) s", caplog.text)]
    assert len(waits) == 2
    assert all(retry.WAIT_MIN_S <= w <= retry.WAIT_MAX_S for w in waits)


def test_full_jitter_also_at_the_cap() -> None:
    # Far past the cap every wait is still drawn from [min, max]: clients that failed together
    # (every service after a NATS restart) do not retry in lockstep.
    policy = retry.policy("test.jitter")
    state = RetryCallState(retry_object=policy, fn=None, args=(), kwargs={})
    state.attempt_number = 20
    waits = {policy.wait(state) for _ in range(50)}
    assert len(waits) > 40
    assert all(retry.WAIT_MIN_S <= w <= retry.WAIT_MAX_S for w in waits)
    state.attempt_number = 1
    assert all(policy.wait(state) <= retry.WAIT_FIRST_S for _ in range(50))


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="attempts"):
        retry.policy("test.bad", attempts=0)
    with pytest.raises(ValueError, match="timeout_s"):
        retry.policy("test.bad", timeout_s=-1)


async def test_call_retries_like_the_policy_with_the_same_attempt_bound() -> None:
    port = devstack.free_port()
    tries = 0

    async def connect() -> None:
        nonlocal tries
        tries += 1
        await _connect_closed(port)

    with pytest.raises(OSError):
        await retry.call("test.call_refused", connect, attempts=4)
    assert tries == 4
    assert _retries("test.call_refused") == 3


async def test_call_returns_what_succeeds_after_a_transient_failure() -> None:
    port = devstack.free_port()
    tries = 0

    async def flaky() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            await _connect_closed(port)  # refused: transient
        return "done"

    assert await retry.call("test.call_flaky", flaky, attempts=3) == "done"
    assert tries == 2
    assert _retries("test.call_flaky") == 1


async def test_call_raises_other_errors_and_a_stopped_loop_at_once() -> None:
    tries = 0

    async def broken() -> None:
        nonlocal tries
        tries += 1
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        await retry.call("test.call_value", broken, attempts=5)
    stopping = asyncio.Event()
    stopping.set()

    async def refused() -> None:
        nonlocal tries
        tries += 1
        await _connect_closed(devstack.free_port())

    with pytest.raises(OSError):
        await retry.call("test.call_stopping", refused, until=stopping)
    assert tries == 2  # one attempt each
