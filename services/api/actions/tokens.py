"""API tokens: create (the secret is shown once), revoke, and the view both callers list.

A revocation is committed, then broadcast so every API and dispatcher process drops the token
at once (their caches re-check within `tokens.CACHE_TTL_S` should the broadcast be lost).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from libs.common import tokens as tokens_lib
from libs.common.tokens import Principal
from services.api.actions.audit import audit_entry
from services.api.repos.errors import Invalid, NotFound
from services.api.schemas.tokens import (
    MAX_EXPIRES_IN_S,
    MAX_NAME_CHARS,
    TokenCreated,
    TokenIn,
    TokenView,
)
from services.api.state import ApiState


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def token_view(row: Any) -> TokenView:
    return TokenView(
        id=row["id"], name=row["name"], scopes=list(row["scopes"]),
        created_at=row["created_at"].isoformat(), expires_at=_iso(row["expires_at"]),
        revoked_at=_iso(row["revoked_at"]),
    )


async def list_tokens(api: ApiState, tenant: str, include_revoked: bool) -> list[TokenView]:
    """The tenant's tokens (never their secrets)."""
    return [token_view(r) for r in await api.token_repo.list_tokens(tenant, include_revoked)]


async def get_token(api: ApiState, tenant: str, token_id: str) -> TokenView:
    row = await api.token_repo.get(tenant, token_id)
    if row is None:
        raise NotFound(f"token {token_id!r} not found")
    return token_view(row)


async def create_token(api: ApiState, caller: Principal, data: TokenIn) -> TokenCreated:
    """A new token of the caller's tenant; its secret is in the answer only."""
    name = data.name.strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise Invalid(f"name must be 1-{MAX_NAME_CHARS} characters")
    try:
        scopes = tokens_lib.parse_scopes(data.scopes)
    except ValueError as exc:
        raise Invalid(str(exc)) from exc
    expires_at = None
    if data.expires_in_s is not None:
        if not 1 <= data.expires_in_s <= MAX_EXPIRES_IN_S:
            raise Invalid(f"expires_in_s must be between 1 and {MAX_EXPIRES_IN_S}")
        expires_at = datetime.now(UTC) + timedelta(seconds=data.expires_in_s)
    entry = audit_entry(caller, "token.create", detail={
        "name": name, "scopes": [s.value for s in scopes], "expires_at": _iso(expires_at),
    })
    secret, row = await api.token_repo.create(caller.tenant, name, scopes, expires_at, entry)
    return TokenCreated(
        id=row["id"], name=row["name"], scopes=list(row["scopes"]),
        expires_at=_iso(row["expires_at"]), token=secret,
    )


async def revoke_token(api: ApiState, caller: Principal, token_id: str) -> None:
    """Revoke a token: within 2 s no API or dispatcher process accepts it. Revoking a token
    already revoked does nothing and succeeds."""
    entry = audit_entry(caller, "token.revoke", target=token_id)
    if not await api.token_repo.revoke(caller.tenant, token_id, entry):
        if await api.token_repo.get(caller.tenant, token_id) is None:
            raise NotFound(f"token {token_id!r} not found")
        return  # revoked before: a second revoke changes nothing (idempotent)
    api.tokens.forget(token_id)
    await tokens_lib.announce_revoked(api.nc, token_id)
