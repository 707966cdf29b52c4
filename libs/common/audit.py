"""The audit log: who (token id and name) did what to what, and when. Append-only.

`record` takes the caller's connection so the entry commits or rolls back together with the
change it describes.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

_JSON = msgspec.json.Encoder()

OPERATOR = "operator"  # the actor of changes made with `python -m tools.admin`


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    action: str  # e.g. run.trigger, token.revoke, limits.set, filter.update
    token_id: str | None
    token_name: str | None
    target: str | None = None
    detail: dict[str, Any] = {}


async def record(conn: asyncpg.Connection | asyncpg.Pool, entry: AuditEntry) -> None:
    await conn.execute(
        "INSERT INTO audit_log (tenant_id, token_id, token_name, action, target, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
        entry.tenant, entry.token_id, entry.token_name, entry.action, entry.target,
        _JSON.encode(entry.detail).decode(),
    )
