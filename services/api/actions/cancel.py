"""Cancelling a run: audited, then a command to the scheduler."""

from __future__ import annotations

from libs.common import jetstream, subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import CancelRun, encode
from libs.common.tokens import Principal
from services.api.actions.audit import audit_entry
from services.api.actions.runs import require_run
from services.api.state import ApiState


async def cancel_run(api: ApiState, caller: Principal, run_id: str) -> None:
    """Ask the scheduler to cancel the run's unfinished tasks (a finished run stays as it is).

    Raises:
        NotFound: no such run of the caller's tenant.
    """
    tenant = caller.tenant
    await require_run(api, tenant, run_id)
    await api.audit.record(audit_entry(caller, "run.cancel", run_id))
    msg = CancelRun(run_id=run_id)
    await jetstream.publish_one(
        api.js, Outgoing(subjects.cmd(tenant, "run.cancel"), encode(msg), f"cancel:{run_id}")
    )
