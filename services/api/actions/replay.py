"""Replaying a finished run's failed and cancelled tasks: audited, then a command."""

from __future__ import annotations

import uuid

from libs.common import jetstream, subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import ReplayRun, encode
from libs.common.statuses import RUN_TERMINAL
from libs.common.tokens import Principal
from services.api.actions.audit import audit_entry
from services.api.actions.runs import require_run
from services.api.repos.errors import Invalid
from services.api.state import ApiState


async def replay_run(api: ApiState, caller: Principal, run_id: str) -> None:
    """Ask the scheduler to run a finished run's failed and cancelled tasks again.

    Raises:
        NotFound: no such run of the caller's tenant.
        Invalid: the run has not finished.
    """
    tenant = caller.tenant
    status = await require_run(api, tenant, run_id)
    if status not in RUN_TERMINAL:
        raise Invalid(f"run {run_id!r} is {status}; only finished runs replay")
    await api.audit.record(audit_entry(caller, "run.replay", run_id))
    msg = ReplayRun(run_id=run_id)
    await jetstream.publish_one(
        api.js,
        Outgoing(subjects.cmd(tenant, "run.replay"), encode(msg), f"replay:{uuid.uuid4().hex}"),
    )
