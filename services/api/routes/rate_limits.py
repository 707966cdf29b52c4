"""Rate limits: static keys a tenant defines (`PUT /rate-limits/{key}`). The CEL checks a
workflow's fairness options must pass are `actions.rate_limits.check_fairness`.

A definition takes effect in the scheduler within a fraction of a second (it polls the
table for changes). `limit` units may start per `per` in ANY sliding window of that length;
with `burst` the key is a token bucket of `burst` units refilled at limit/per instead.
"""

from __future__ import annotations

from litestar import Controller, get, put

from libs.common.tokens import Scope
from services.api.actions import rate_limits
from services.api.auth import Api, Caller, Tenant, requires
from services.api.schemas import errors
from services.api.schemas.limits import Key, RateLimitIn, RateLimitView


class RateLimitController(Controller):
    path = "/rate-limits"
    tags = ["rate-limits"]
    guards = [requires(Scope.READ)]

    @put("/{key:str}", guards=[requires(Scope.WRITE)], operation_id="putRateLimit")
    async def put_limit(
        self, key: Key, data: RateLimitIn, tenant: Tenant, api: Api, caller: Caller
    ) -> RateLimitView:
        """Create or change a static rate-limit key."""
        return await rate_limits.put_rate_limit(api, caller, key, data)

    @get("/", operation_id="listRateLimits")
    async def list_limits(self, tenant: Tenant, api: Api) -> list[RateLimitView]:
        return await rate_limits.list_rate_limits(api, tenant)

    @get("/{key:str}", operation_id="getRateLimit", responses=errors(404))
    async def get_limit(self, key: Key, tenant: Tenant, api: Api) -> RateLimitView:
        return await rate_limits.get_rate_limit(api, tenant, key)
