"""Bodies of `/limits` (per-tenant limits) and `/rate-limits` (static rate-limit keys)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar.params import Parameter

from libs.common import specs

Per = Literal["second", "minute", "hour"]
MAX_KEY_CHARS = 256
Key = Annotated[str, Parameter(min_length=1, max_length=MAX_KEY_CHARS)]


class LimitUsage(msgspec.Struct, kw_only=True):
    name: str
    limit: float | None  # None: unlimited
    usage: float | None  # None: a rate, measured per process (see docs/security.md)


class LimitsView(msgspec.Struct, kw_only=True):
    limits: list[LimitUsage]


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
