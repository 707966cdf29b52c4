"""Waitpoints: a URL that resumes a durable task when someone POSTs JSON to it.

A durable task asks for one (`ctx.aio_create_waitpoint`, through POST /runs/{id}/waitpoints
with its token); its id is derived from the tenant, the task and the log position, so a
replayed task gets the same waitpoint back. The URL carries the expiry and an HMAC-SHA256 of
"<id>.<expiry ms>" under the server's key: anyone holding it may complete the waitpoint,
nobody can make one for another id or expiry. The keys never leave the server
(RATCHET_WAITPOINT_KEYS, the first signing and all accepted, so rotating means putting a new
key first; unset: one key kept in PostgreSQL).

Completing marks the row completed only if it is still pending and not expired (one UPDATE:
a second completion finds it completed, 409) and then publishes the completion to the run
(a `SignalRun` of kind "waitpoint") for the scheduler to hand to the wait, or keep until the
task waits. If that publish fails the row is set back to pending and the caller told 503.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.common.messages import SignalRun
from libs.common.statuses import RUN_TERMINAL
from services.api.actions.signals import encode_payload, publish_message
from services.api.repos.errors import Conflict, Forbidden, Gone, Invalid, NotFound, Unavailable
from services.api.repos.interaction import Waitpoint
from services.api.schemas.interaction import WAITPOINT_MAX_TIMEOUT_S
from services.api.state import ApiState

DEFAULT_TIMEOUT_S = 7 * 24 * 3600.0
MAX_TIMEOUT_S = WAITPOINT_MAX_TIMEOUT_S
MAX_LABEL = 200
PUBLIC_PATH = "/wp"


def waitpoint_id(tenant: str, task_id: str, position: int) -> str:
    return "wp_" + hashlib.sha256(f"{tenant}:{task_id}:{position}".encode()).hexdigest()[:32]


async def _keys(api: ApiState) -> list[bytes]:
    configured = [k.strip() for k in api.settings.ratchet_waitpoint_keys.split(",") if k.strip()]
    if configured:
        return [k.encode() for k in configured]
    cached: list[bytes] | None = getattr(api, "_waitpoint_keys", None)
    if cached is None:
        cached = await api.interaction.signing_keys()
        api._waitpoint_keys = cached  # type: ignore[attr-defined]  # one per process
    return cached


def _sign(key: bytes, wp_id: str, expires_ms: int) -> str:
    return hmac.new(key, f"{wp_id}.{expires_ms}".encode(), hashlib.sha256).hexdigest()


async def signed_url(api: ApiState, wp: Waitpoint, base_url: str) -> str:
    expires_ms = int(wp.expires_at.timestamp() * 1000)
    sig = _sign((await _keys(api))[0], wp.id, expires_ms)
    public = api.settings.ratchet_public_url or base_url
    return f"{public.rstrip('/')}{PUBLIC_PATH}/{wp.id}?exp={expires_ms}&sig={sig}"


async def check_signature(api: ApiState, wp_id: str, exp: int, sig: str) -> None:
    """Raises Forbidden for a signature no key made, Gone once the expiry has passed."""
    if not any(hmac.compare_digest(_sign(k, wp_id, exp), sig) for k in await _keys(api)):
        raise Forbidden("this waitpoint link is not valid (bad signature)")
    if exp <= int(datetime.now(UTC).timestamp() * 1000):
        raise Gone("this waitpoint link has expired")


async def create(
    api: ApiState, tenant: str, run_id: str, task_id: str, position: int,
    timeout_s: float | None, label: str,
) -> Waitpoint:
    """The task's waitpoint at `position`: made now, or the one made before (a replay)."""
    if len(label) > MAX_LABEL:
        raise Invalid(f"a waitpoint label takes at most {MAX_LABEL} characters")
    timeout = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise Invalid(f"a waitpoint's timeout is more than 0 and at most {MAX_TIMEOUT_S:.0f} s")
    status = await api.runs.status(tenant, run_id)
    if status is None:
        raise NotFound(f"run {run_id!r} not found")
    now = datetime.now(UTC)
    made = Waitpoint(
        id=waitpoint_id(tenant, task_id, position), tenant=tenant, run_id=run_id,
        task_id=task_id, position=position, label=label, status="pending", payload=None,
        created_at=now, expires_at=now + timedelta(seconds=timeout), completed_at=None,
    )
    return await api.interaction.create_waitpoint(made)


async def complete(
    api: ApiState, wp_id: str, payload: Any, *, by: str, tenant: str | None = None
) -> Waitpoint:
    """Complete the waitpoint once, handing `payload` to the task.

    Raises:
        NotFound: no such waitpoint (of `tenant`, when given).
        Conflict: completed already, or its run has finished.
        Gone: expired.
        TooLarge: the payload is over MAX_SIGNAL_BYTES.
        Unavailable: the completion could not be sent (nothing was recorded).
    """
    raw = encode_payload(payload)
    wp = await api.interaction.waitpoint(wp_id, tenant)
    if wp is None:
        raise NotFound(f"waitpoint {wp_id!r} not found")
    _refuse_done(wp)
    status = await api.runs.status(wp.tenant, wp.run_id)
    if status in RUN_TERMINAL:
        raise Conflict(f"the run of waitpoint {wp_id!r} is {status}", extra={"status": status})
    now = datetime.now(UTC)
    done = await api.interaction.complete_waitpoint(wp_id, raw, by, now)
    if done is None:  # completed or expired between the read and the update
        again = await api.interaction.waitpoint(wp_id)
        assert again is not None
        _refuse_done(again)
        raise Conflict(f"waitpoint {wp_id!r} could not be completed")
    try:
        await publish_message(api, wp.tenant, SignalRun(
            run_id=wp.run_id, signal_id=f"wp:{wp.id}", name=wp.id, payload=raw, kind="waitpoint",
        ))
    except Exception as exc:
        await api.interaction.uncomplete_waitpoint(wp_id, now)
        raise Unavailable(f"the completion could not be sent ({exc!r}); try again") from exc
    return done


def _refuse_done(wp: Waitpoint) -> None:
    if wp.status == "completed":
        when = wp.completed_at.isoformat() if wp.completed_at else "earlier"
        raise Conflict(f"waitpoint {wp.id!r} was already completed ({when})")
    if wp.expires_at <= datetime.now(UTC):
        raise Gone(f"waitpoint {wp.id!r} expired at {wp.expires_at.isoformat()}")
