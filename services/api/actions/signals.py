"""Signals to a run and its state (docs/interaction.md).

A signal is checked here (the run exists and has not finished, its inbox has room, the
payload is JSON of at most MAX_SIGNAL_BYTES) and published as a `SignalRun` command: the
scheduler owns the run and its inbox, and hands the signal to a durable wait of the run or
keeps it until one asks. The command's msg-id is the signal's id, so a publish retried
inside the stream's duplicate window is stored once.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import msgspec

from libs.common import jetstream, subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import MAX_PENDING_SIGNALS, MAX_SIGNAL_BYTES, SignalRun, encode
from libs.common.statuses import RUN_TERMINAL
from libs.common.tokens import Principal
from services.api.actions.audit import audit_entry
from services.api.repos.errors import Conflict, Invalid, NotFound, TooLarge, TooMany
from services.api.state import ApiState

SIGNAL_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
# A run triggered a moment ago may not be written yet: wait this long for it to appear.
APPEAR_WAIT_S = 5.0
SIGNAL_VERB = "run.signal"


class InboxFull(TooMany):
    """The run's inbox holds MAX_PENDING_SIGNALS messages no wait has taken (429)."""


class PayloadTooLarge(TooLarge):
    """A signal or completion payload over MAX_SIGNAL_BYTES (413)."""


def encode_payload(payload: Any) -> bytes:
    raw = msgspec.json.encode(payload)
    if len(raw) > MAX_SIGNAL_BYTES:
        raise PayloadTooLarge(
            f"the payload is {len(raw)} bytes; signals and waitpoint completions take at most"
            f" {MAX_SIGNAL_BYTES}")
    return raw


async def run_status(api: ApiState, tenant: str, run_id: str) -> str:
    """The run's status, waiting a little for one triggered a moment ago to be written."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + APPEAR_WAIT_S
    delay = 0.01
    while True:
        status = await api.runs.status(tenant, run_id)
        if status is not None:
            return status
        if loop.time() + delay > deadline:
            raise NotFound(f"run {run_id!r} not found")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


async def publish_message(api: ApiState, tenant: str, msg: SignalRun) -> None:
    await jetstream.publish_one(
        api.js,
        Outgoing(subjects.cmd(tenant, SIGNAL_VERB), encode(msg), f"signal:{msg.signal_id}"),
    )


async def send_signal(
    api: ApiState, caller: Principal, run_id: str, name: str, payload: Any
) -> str:
    """Send signal `name` to the run; returns the signal's id.

    Raises:
        Invalid: a bad name; PayloadTooLarge: the payload is too big.
        NotFound: no such run of the caller's tenant.
        Conflict: the run has finished (the message names its status).
        InboxFull: MAX_PENDING_SIGNALS signals already wait for the run.
    """
    if not SIGNAL_NAME.fullmatch(name):
        raise Invalid(f"signal name {name!r}: 1 to 128 of A-Z a-z 0-9 _ . : -")
    raw = encode_payload(payload)
    tenant = caller.tenant
    found = await api.interaction.status_and_waiting(tenant, run_id)
    if found is None:  # triggered a moment ago, perhaps: wait a little for it
        await run_status(api, tenant, run_id)
        found = await api.interaction.status_and_waiting(tenant, run_id)
        assert found is not None
    status, waiting = found
    if status in RUN_TERMINAL:
        raise Conflict(f"run {run_id!r} is {status}; signals go to runs that have not finished",
                       extra={"status": status})
    if waiting >= MAX_PENDING_SIGNALS:
        raise InboxFull(
            f"run {run_id!r} already has {waiting} signals no wait has taken (the limit is"
            f" {MAX_PENDING_SIGNALS}); wait for the run to take some", extra={"waiting": waiting})
    signal_id = "sig_" + uuid.uuid4().hex
    await publish_message(
        api, tenant, SignalRun(run_id=run_id, signal_id=signal_id, name=name, payload=raw))
    await api.audit.record(audit_entry(caller, "run.signal", run_id, {"name": name}))
    return signal_id


async def run_state(api: ApiState, tenant: str, run_id: str) -> tuple[Any, str | None]:
    """The latest state a durable task of the run set, and when (None, None: none yet).

    Raises:
        NotFound: no such run of the tenant (after waiting a little for a new one).
    """
    row = await api.interaction.state(tenant, run_id)
    if row is None:
        await run_status(api, tenant, run_id)  # 404 unless it exists (or appears shortly)
        return None, None
    return msgspec.json.decode(row["state"]), row["updated_at"].isoformat()
