"""Operator endpoints: create and list tenants, apply migrations.

They answer only to the operator token (`RATCHET_OPERATOR_TOKEN` in the API's environment),
never to a tenant's: with no operator token configured every route here is a 404, and a
request without the right bearer token is a 403. The `ratchet admin` commands call them, so an
operator needs no database credentials on their own machine.
"""

from __future__ import annotations

import hmac

import msgspec
from litestar import Controller, Request, get, post, put
from litestar.exceptions import ClientException, NotFoundException, PermissionDeniedException
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from libs.common import db, limits
from libs.common.limits import Limit
from services.api.auth import Api
from services.api.repos.tenants import TenantRepo
from services.api.state import ApiState


class TenantIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str


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
    expected = api.settings.ratchet_operator_token
    if not expected:
        raise NotFoundException("operator endpoints are disabled (RATCHET_OPERATOR_TOKEN unset)")
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.startswith("Bearer ") else ""
    # Constant-time: the comparison must not tell an attacker how much of a guess was right.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise PermissionDeniedException("the operator token is required")


class AdminController(Controller):
    path = "/admin"
    tags = ["admin"]

    @post("/tenants", status_code=HTTP_201_CREATED)
    async def create_tenant(
        self, data: TenantIn, request: Request, api: Api  # type: ignore[type-arg]
    ) -> TenantCreated:
        """Create a tenant and its first API token (409 when the tenant exists)."""
        require_operator(request, api)
        token = await TenantRepo(api.pool).create(data.id)
        return TenantCreated(id=data.id, token=token)

    @get("/tenants")
    async def list_tenants(self, request: Request, api: Api) -> list[TenantView]:  # type: ignore[type-arg]
        """Every tenant with how many API tokens it has."""
        require_operator(request, api)
        return [
            TenantView(id=r["id"], created_at=r["created_at"].isoformat(), tokens=r["tokens"])
            for r in await TenantRepo(api.pool).list_tenants()
        ]

    @post("/migrate", status_code=HTTP_200_OK)
    async def migrate(self, request: Request, api: Api) -> Migrated:  # type: ignore[type-arg]
        """Apply pending SQL migrations; the names of those that ran (none when up to date)."""
        require_operator(request, api)
        return Migrated(applied=await db.migrate(api.settings.database_url))

    @put("/tenants/{tenant_id:str}/limits")
    async def set_limits(
        self, tenant_id: str, data: dict[str, float | None], request: Request, api: Api  # type: ignore[type-arg]
    ) -> dict[str, float | None]:
        """Set a tenant's limits (null: unlimited); answers every limit of the tenant."""
        require_operator(request, api)
        try:
            changes = {Limit(name): value for name, value in data.items()}
        except ValueError:
            names = ", ".join(x.value for x in Limit)
            raise ClientException(f"limits are {names}; got {sorted(data)}") from None
        if not changes or any(v is not None and v <= 0 for v in changes.values()):
            raise ClientException("name at least one limit; each positive, or null for unlimited")
        try:
            stored = await limits.store(api.pool, tenant_id, changes)
        except ValueError as exc:
            raise NotFoundException(str(exc)) from None
        out: dict[str, float | None] = msgspec.structs.asdict(stored)
        return out
