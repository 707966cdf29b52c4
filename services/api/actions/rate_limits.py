"""Rate limits: static keys a tenant defines, and the CEL checks a workflow's fairness options
must pass before it is registered (that its static keys exist is checked inside the
registration's transaction, by the workflow repository).

A definition takes effect in the scheduler within a fraction of a second (it polls the
table for changes).
"""

from __future__ import annotations

import asyncpg

from libs.common import specs
from libs.common.cel import check_expression
from libs.common.tokens import Principal
from services.api.actions.audit import audit_entry
from services.api.repos.errors import Invalid, NotFound
from services.api.schemas.limits import MAX_KEY_CHARS, RateLimitIn, RateLimitView
from services.api.state import ApiState


def rate_limit_view(row: asyncpg.Record) -> RateLimitView:
    return RateLimitView(
        key=row["key"], limit=row["limit_units"], per=row["per"], burst=row["burst"],
        updated_at=row["updated_at"].isoformat(),
    )


async def list_rate_limits(api: ApiState, tenant: str) -> list[RateLimitView]:
    return [rate_limit_view(r) for r in await api.rate_limits.list_limits(tenant)]


async def get_rate_limit(api: ApiState, tenant: str, key: str) -> RateLimitView:
    row = await api.rate_limits.get(tenant, key)
    if row is None:
        raise NotFound(f"rate limit {key!r} not found")
    return rate_limit_view(row)


async def put_rate_limit(
    api: ApiState, caller: Principal, key: str, data: RateLimitIn
) -> RateLimitView:
    """Create or change a static rate-limit key."""
    if not key or len(key) > MAX_KEY_CHARS:
        raise Invalid(f"key must be 1-{MAX_KEY_CHARS} characters")
    if data.key is not None and data.key != key:
        raise Invalid("key in the body differs from the key in the path")
    if data.limit < 1:
        raise Invalid("limit must be >= 1")
    if data.burst is not None and data.burst < 1:
        raise Invalid("burst must be >= 1")
    entry = audit_entry(caller, "rate_limit.put", key,
                        {"limit": data.limit, "per": data.per, "burst": data.burst})
    row = await api.rate_limits.put(caller.tenant, key, data.limit, data.per, data.burst, entry)
    return rate_limit_view(row)


def check_fairness(spec: specs.WorkflowSpec) -> None:
    """`Invalid` for a CEL key or units expression that does not compile (with its position)."""
    for where, expression in specs.cel_expressions(spec):
        problem = check_expression(expression)
        if problem is not None:
            raise Invalid(f"{where}: {problem}")
