"""Audit entries: who (the token), did what, to what."""

from __future__ import annotations

from typing import Any

from libs.common.audit import AuditEntry
from libs.common.tokens import Principal


def audit_entry(caller: Principal, action: str, target: str | None = None,
                detail: dict[str, Any] | None = None) -> AuditEntry:
    """The entry recording that `caller` did `action` (written by the repository call that
    makes the change, in its transaction, or by `AuditRepo.record` for publish-only changes)."""
    return AuditEntry(
        tenant=caller.tenant, action=action, token_id=caller.token_id,
        token_name=caller.token_name, target=target, detail=detail or {},
    )
