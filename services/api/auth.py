"""Bearer token → tenant, as a Litestar dependency."""

from __future__ import annotations

from litestar import Request
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException

from services.api.state import ApiState


async def provide_tenant(request: Request, api: NamedDependency[ApiState]) -> str:  # type: ignore[type-arg]
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        raise NotAuthorizedException("missing bearer token (Authorization: Bearer <token>)")
    tenant = await api.tokens.tenant(header[7:].strip())
    if tenant is None:
        raise NotAuthorizedException("unknown token")
    return tenant


Api = NamedDependency[ApiState]
Tenant = NamedDependency[str]
