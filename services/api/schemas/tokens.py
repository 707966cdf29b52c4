"""Bodies of `/tokens`."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from libs.common.tokens import Scope

MAX_NAME_CHARS = 200
MAX_EXPIRES_IN_S = 10 * 365 * 24 * 3600


class TokenIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS, pattern=r"\S",
                              description="shown in the audit log; not blank")]
    scopes: Annotated[list[Scope], Meta(min_length=1)]
    # None: never expires
    expires_in_s: Annotated[int, Meta(ge=1, le=MAX_EXPIRES_IN_S)] | None = None


class TokenView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    scopes: list[str]
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class TokenCreated(msgspec.Struct, kw_only=True):
    """`token` is the secret: it is shown here once and stored only as a hash."""

    id: str
    name: str
    scopes: list[str]
    expires_at: str | None
    token: str
