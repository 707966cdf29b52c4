"""Rate limits: static keys a tenant defines (`PUT /rate-limits/{key}`), and the CEL checks a
workflow's fairness options must pass before it is registered (that its static keys exist is
checked inside the registration's transaction, by the workflow repository).

A definition takes effect in the scheduler within a fraction of a second (it polls the
table for changes). `limit` units may start per `per` in ANY sliding window of that length;
with `burst` the key is a token bucket of `burst` units refilled at limit/per instead.
"""

from __future__ import annotations

from typing import Annotated, Literal

import asyncpg
import msgspec
from litestar import Controller, get, put
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import Parameter

from libs.common import specs
from libs.common.cel import check_expression
from libs.common.tokens import Scope
from services.api.auth import Api, Caller, Tenant, requires
from services.api.routes.tokens import audit_entry
from services.api.schemas import errors

Per = Literal["second", "minute", "hour"]
MAX_KEY_CHARS = 256
Key = Annotated[str, Parameter(min_length=1, max_length=MAX_KEY_CHARS)]


class RateLimitIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: specs.Positive
    per: Per = "second"
    burst: specs.Positive | None = None  # a token bucket of this size
    key: str | None = None  # optional echo of the path key: 400 when it differs


class RateLimitView(msgspec.Struct, kw_only=True):
    key: str
    limit: int
    per: str
    burst: int | None
    updated_at: str


class RateLimitController(Controller):
    path = "/rate-limits"
    tags = ["rate-limits"]
    guards = [requires(Scope.READ)]

    @put("/{key:str}", guards=[requires(Scope.WRITE)], operation_id="putRateLimit")
    async def put_limit(
        self, key: Key, data: RateLimitIn, tenant: Tenant, api: Api, caller: Caller
    ) -> RateLimitView:
        """Create or change a static rate-limit key."""
        if not key or len(key) > MAX_KEY_CHARS:
            raise ClientException(f"key must be 1-{MAX_KEY_CHARS} characters")
        if data.key is not None and data.key != key:
            raise ClientException("key in the body differs from the key in the path")
        if data.limit < 1:
            raise ClientException("limit must be >= 1")
        if data.burst is not None and data.burst < 1:
            raise ClientException("burst must be >= 1")
        entry = audit_entry(caller, "rate_limit.put", key,
                            {"limit": data.limit, "per": data.per, "burst": data.burst})
        return _view(
            await api.rate_limits.put(tenant, key, data.limit, data.per, data.burst, entry)
        )

    @get("/", operation_id="listRateLimits")
    async def list_limits(self, tenant: Tenant, api: Api) -> list[RateLimitView]:
        return [_view(r) for r in await api.rate_limits.list_limits(tenant)]

    @get("/{key:str}", operation_id="getRateLimit", responses=errors(404))
    async def get_limit(self, key: Key, tenant: Tenant, api: Api) -> RateLimitView:
        row = await api.rate_limits.get(tenant, key)
        if row is None:
            raise NotFoundException(f"rate limit {key!r} not found")
        return _view(row)


def _view(row: asyncpg.Record) -> RateLimitView:
    return RateLimitView(
        key=row["key"], limit=row["limit_units"], per=row["per"], burst=row["burst"],
        updated_at=row["updated_at"].isoformat(),
    )


def check_fairness(spec: specs.WorkflowSpec) -> None:
    """400 for a CEL key or units expression that does not compile (with its position)."""
    for where, expression in specs.cel_expressions(spec):
        problem = check_expression(expression)
        if problem is not None:
            raise ClientException(f"{where}: {problem}")
