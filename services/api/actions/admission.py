"""Per-tenant limits on the request path: admitting triggers and events, and usage.

Limits are set by the operator (`python -m tools.admin set-limits TENANT ...`), not
through the API: a tenant must not raise its own. The `admit_*` functions are what the trigger
and event actions call before publishing; over a limit they raise `LimitExceeded`, which
app.py turns into 429 with `Retry-After` and the limit's name.
"""

from __future__ import annotations

from libs.common import limits
from libs.common.limits import Limit, LimitExceeded
from libs.common.subjects import Bucket
from services.api.actions import alerts
from services.api.schemas.limits import LimitsView, LimitUsage
from services.api.state import ApiState

UNFINISHED_RETRY_AFTER_S = 5


async def admit_triggers(api: ApiState, tenant: str, count: int) -> None:
    """Refuse `count` new runs over triggers_per_s or unfinished_runs (all or none)."""
    try:
        await _admit_triggers(api, tenant, count)
    except LimitExceeded as exc:
        await alerts.limit_reached(api, tenant, exc)
        raise


async def _admit_triggers(api: ApiState, tenant: str, count: int) -> None:
    current = await api.limits.get(tenant)
    if current.unfinished_runs is not None:
        unfinished = await api.usage.unfinished_runs(tenant)
        if unfinished + count > current.unfinished_runs:
            raise LimitExceeded(
                Limit.UNFINISHED_RUNS, current.unfinished_runs, UNFINISHED_RETRY_AFTER_S,
                f"{unfinished} unfinished runs; {count} more would go over "
                f"{Limit.UNFINISHED_RUNS.value}={current.unfinished_runs}",
            )
    api.rates.take(tenant, Limit.TRIGGERS_PER_S, current.triggers_per_s, count)


async def admit_events(api: ApiState, tenant: str, count: int) -> None:
    """Refuse `count` events over events_per_s (all or none)."""
    current = await api.limits.get(tenant)
    try:
        api.rates.take(tenant, Limit.EVENTS_PER_S, current.events_per_s, count)
    except LimitExceeded as exc:
        await alerts.limit_reached(api, tenant, exc)
        raise


async def usage(api: ApiState, tenant: str) -> LimitsView:
    """Every limit of the tenant (None = unlimited) with its current usage."""
    current = await limits.load(api.pool, tenant)
    kv = await api.js.key_value(Bucket.WORKERS.value)
    workers, slots = await limits.worker_usage(kv, tenant)
    in_use: dict[Limit, float | None] = {
        Limit.UNFINISHED_RUNS: await api.usage.unfinished_runs(tenant),
        Limit.TRIGGERS_PER_S: None,
        Limit.EVENTS_PER_S: None,
        Limit.PAYLOAD_BYTES: None,
        Limit.WORKERS: workers,
        Limit.SLOTS: slots,
    }
    return LimitsView(limits=[
        LimitUsage(name=name.value, limit=current.get(name), usage=value)
        for name, value in in_use.items()
    ])
