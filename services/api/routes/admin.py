"""Operator endpoints: create and list tenants, apply migrations.

They answer only to the operator token (`RATCHET_OPERATOR_TOKEN` in the API's environment),
never to a tenant's: a request without a bearer token is a 401; with no operator token
configured every route here is a 404, and any other token than the operator's is a 403. The `ratchet admin` commands call them, so an
operator needs no database credentials on their own machine.
"""

from __future__ import annotations

import hmac
from typing import Annotated

import msgspec
from litestar import Controller, Request, get, post, put
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from msgspec import UNSET, Meta, UnsetType

from libs.common import db, limits
from libs.common.limits import Limit
from services.api.auth import Api
from services.api.contract import OPERATOR_AUTH
from services.api.repos.tenants import TenantRepo
from services.api.schemas import errors
from services.api.state import ApiState

# subjects.valid_tenant's rule: the id is part of NATS subjects and database keys.
TENANT_ID_PATTERN = "^[a-z0-9_-]+$"
TenantId = Annotated[str, Meta(min_length=1, max_length=64, pattern=TENANT_ID_PATTERN)]
TenantIdParam = Annotated[str, Parameter(min_length=1, max_length=64, pattern=TENANT_ID_PATTERN)]
# A limit's new value: positive, or null for unlimited; a limit left out keeps its value.
LimitValue = Annotated[float, Meta(gt=0)] | None | UnsetType


class TenantIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: TenantId


class LimitsIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The limits to change (at least one); the names are libs.common.limits.Limit's."""

    unfinished_runs: LimitValue = UNSET
    triggers_per_s: LimitValue = UNSET
    events_per_s: LimitValue = UNSET
    payload_bytes: LimitValue = UNSET
    workers: LimitValue = UNSET
    slots: LimitValue = UNSET


class TenantCreated(msgspec.Struct, kw_only=True):
    """`token` is the tenant's first API token: shown here once, stored only as a hash."""

    id: str
    token: str


class TenantView(msgspec.Struct, kw_only=True):
    id: str
    created_at: str
    tokens: int


class Migrated(msgspec.Struct, kw_only=True):
    applied: list[str]


def require_operator(request: Request, api: ApiState) -> None:  # type: ignore[type-arg]
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.startswith("Bearer ") else ""
    if not given:
        raise NotAuthorizedException("the operator token is required (Authorization: Bearer)")
    expected = api.settings.ratchet_operator_token
    if not expected:
        raise NotFoundException("operator endpoints are disabled (RATCHET_OPERATOR_TOKEN unset)")
    # Constant-time: the comparison must not tell an attacker how much of a guess was right.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise PermissionDeniedException("the operator token is required")


# require_operator's answers: no token (401), none configured (404), another token (403).
_OPERATOR_ERRORS = errors(401, 403, 404)


class AdminController(Controller):
    path = "/admin"
    tags = ["admin"]
    security = [{OPERATOR_AUTH: []}]

    @post("/tenants", status_code=HTTP_201_CREATED, operation_id="createTenant",
          responses=_OPERATOR_ERRORS | errors(409))
    async def create_tenant(
        self, data: TenantIn, request: Request, api: Api  # type: ignore[type-arg]
    ) -> TenantCreated:
        """Create a tenant and its first API token (409 when the tenant exists)."""
        require_operator(request, api)
        token = await TenantRepo(api.pool).create(data.id)
        return TenantCreated(id=data.id, token=token)

    @get("/tenants", operation_id="listTenants", responses=_OPERATOR_ERRORS)
    async def list_tenants(self, request: Request, api: Api) -> list[TenantView]:  # type: ignore[type-arg]
        """Every tenant with how many API tokens it has."""
        require_operator(request, api)
        return [
            TenantView(id=r["id"], created_at=r["created_at"].isoformat(), tokens=r["tokens"])
            for r in await TenantRepo(api.pool).list_tenants()
        ]

    @post("/migrate", status_code=HTTP_200_OK, operation_id="migrateDatabase",
          responses=_OPERATOR_ERRORS)
    async def migrate(self, request: Request, api: Api) -> Migrated:  # type: ignore[type-arg]
        """Apply pending SQL migrations; the names of those that ran (none when up to date)."""
        require_operator(request, api)
        return Migrated(applied=await db.migrate(api.settings.database_url))

    @put("/tenants/{tenant_id:str}/limits", operation_id="setTenantLimits",
         responses=_OPERATOR_ERRORS)
    async def set_limits(
        self, tenant_id: TenantIdParam, data: LimitsIn, request: Request, api: Api  # type: ignore[type-arg]
    ) -> dict[str, float | None]:
        """Set a tenant's limits (null: unlimited); answers every limit of the tenant. 404
        when the tenant does not exist; 400 when the body names no limit."""
        require_operator(request, api)
        changes = {Limit(name): value for name, value in msgspec.structs.asdict(data).items()
                   if value is not UNSET}
        if not changes:
            raise ClientException("name at least one limit, positive or null for unlimited")
        try:
            stored = await limits.store(api.pool, tenant_id, changes)
        except ValueError as exc:
            raise NotFoundException(str(exc)) from None
        out: dict[str, float | None] = msgspec.structs.asdict(stored)
        return out
