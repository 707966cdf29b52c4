"""The one retry policy for infrastructure calls: NATS publish/fetch, PostgreSQL, OLAP inserts.

Every site retries the same way: exponential backoff with *full* jitter (each wait is drawn
uniformly between a small floor and the exponential ceiling, capped at `WAIT_MAX_S`), bounded by a
deadline and/or an attempt count, and stoppable by an event so a service shuts down promptly in
the middle of an outage. After a NATS or PostgreSQL restart every process reconnects at once;
full jitter spreads them out even once their backoff has reached the cap.

Built on tenacity rather than stamina: stamina adds its jitter on top of the exponential delay
and then clamps to its maximum, so every client at the cap waits exactly the same time; and
tenacity lets a stop condition (our shutdown event) and an interruptible sleep be combined with
the deadline. Each retry is logged and counted in `ratchet_infra_retries_total{site}`.

Use it as a loop around the one call that may fail:

    async for attempt in retry.policy("dispatcher.publish", timeout_s=30):
        with attempt:
            await jetstream.publish_batch(js, batch)

When the policy gives up, the last error is raised as is. On a hot path (a publish per batch),
`await retry.call(site, fn, ...)` does the same with the first attempt made outside tenacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import nats.errors
import nats.js.errors
from prometheus_client import Counter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    stop_when_event_set,
    wait_random_exponential,
)
from tenacity.stop import stop_base

log = logging.getLogger(__name__)

T = TypeVar("T")

WAIT_MIN_S = 0.05
WAIT_FIRST_S = 0.2  # ceiling of the first wait; doubles per failure
WAIT_MAX_S = 2.0

INFRA_RETRIES = Counter(
    "ratchet_infra_retries",
    "Retries of infrastructure calls (NATS, PostgreSQL, OLAP) after a failure, by call site",
    ["site"],
)

# Errors that say "the server or the connection is not there right now": worth another try.
_TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,  # also nats.errors.TimeoutError and asyncio's
    OSError,  # connection refused/reset, unreachable
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # "connection is closed", pool closing under a restart
    asyncpg.CannotConnectNowError,  # the server is starting or shutting down
    asyncpg.TooManyConnectionsError,
)


def transient(exc: BaseException) -> bool:
    """True for errors of an unavailable server or connection (the policy's default).

    Bad requests, bugs and data errors (a ValueError, a stream-not-found, a constraint violation)
    are not: retrying them only hides them.
    """
    return isinstance(exc, _TRANSIENT)


def any_error(exc: BaseException) -> bool:
    """Retry every error: for loops that must outlive anything (a consumer's fetch loop)."""
    return isinstance(exc, Exception)


def _record(site: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        INFRA_RETRIES.labels(site).inc()
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        wait_s = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s failed (attempt %d: %r); retrying in %.2f s",
            site, state.attempt_number, error, wait_s,
        )

    return before_sleep


def _interruptible_sleep(until: asyncio.Event) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), seconds)

    return sleep


def policy(
    site: str,
    *,
    timeout_s: float | None = 30.0,
    attempts: int | None = None,
    on: Callable[[BaseException], bool] = transient,
    until: asyncio.Event | None = None,
) -> AsyncRetrying:
    """The retry loop for one call site.

    Args:
        site: names the call in logs and in the retry counter (e.g. "dispatcher.publish").
        timeout_s: give up once this much time has passed since the first attempt (None: never).
        attempts: give up after this many attempts, the first included (None: no limit).
        on: which errors are retried; others are raised at once. Default: `transient`.
        until: give up (raising the last error) as soon as this event is set, and wake from a
            backoff sleep when it is: a stopping service does not wait out its backoff.
    """
    if timeout_s is not None and timeout_s < 0:
        raise ValueError(f"timeout_s must be >= 0 or None, got {timeout_s}")
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be >= 1 or None, got {attempts}")
    stop: stop_base = stop_never
    if timeout_s is not None:
        stop = stop | stop_after_delay(timeout_s)
    if attempts is not None:
        stop = stop | stop_after_attempt(attempts)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    if until is not None:
        # tenacity's event stop only calls is_set(), which asyncio.Event has too.
        stop = stop | stop_when_event_set(until)  # type: ignore[arg-type]
        sleep = _interruptible_sleep(until)
    return AsyncRetrying(
        sleep=sleep,
        wait=wait_random_exponential(multiplier=WAIT_FIRST_S, max=WAIT_MAX_S, min=WAIT_MIN_S),
        stop=stop,
        retry=retry_if_exception(on),
        before_sleep=_record(site),
        reraise=True,
    )


async def call(
    site: str,
    fn: Callable[[], Awaitable[T]],
    *,
    timeout_s: float | None = 30.0,
    attempts: int | None = None,
    on: Callable[[BaseException], bool] = transient,
    until: asyncio.Event | None = None,
) -> T:
    """`await fn()` retried like `policy(site, ...)`, its first attempt made without tenacity.

    Nearly every call succeeds at once, and setting up tenacity's retry state for it cost
    about as much as the publish it wrapped on the scheduler's and dispatcher's paths (most of
    their per-message overhead at 100 tasks/s). Only after a first failure that `on` retries is
    the policy entered; its deadline (`timeout_s`) then counts from that failure.
    """
    try:
        return await fn()
    except Exception as exc:
        if not on(exc) or attempts == 1 or (until is not None and until.is_set()):
            raise
        INFRA_RETRIES.labels(site).inc()
        log.warning("%s failed (attempt 1: %r); retrying", site, exc)
    rest = None if attempts is None else attempts - 1
    async for attempt in policy(site, timeout_s=timeout_s, attempts=rest, on=on, until=until):
        with attempt:
            return await fn()
    raise AssertionError("unreachable: the policy re-raises the last error")
