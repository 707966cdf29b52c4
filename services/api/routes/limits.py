"""Per-tenant limits: `GET /limits` shows each limit against current usage (`read` scope).

Limits are set by the operator (`python -m tools.admin set-limits TENANT ...`), not
through this API: a tenant must not raise its own. Admitting triggers and events under them is
`services.api.actions.admission`.
"""

from __future__ import annotations

from litestar import Controller, get

from libs.common.tokens import Scope
from services.api.actions import admission
from services.api.auth import Api, Tenant, requires
from services.api.schemas.limits import LimitsView


class LimitController(Controller):
    path = "/limits"
    tags = ["limits"]
    guards = [requires(Scope.READ)]

    @get("/", operation_id="getLimits")
    async def get_limits(self, tenant: Tenant, api: Api) -> LimitsView:
        """Every limit of the tenant (null = unlimited) with its current usage."""
        return await admission.usage(api, tenant)
