"""The audit log (`admin` scope): who did what, when, to what; newest first."""

from __future__ import annotations

import msgspec
from litestar import Controller, get
from litestar.params import Parameter

from libs.common.tokens import Scope
from services.api.actions.analytics import parse_instant
from services.api.auth import Api, Tenant, requires
from services.api.schemas.analytics import Instant
from services.api.schemas.logs import AuditView


class AuditController(Controller):
    path = "/audit"
    tags = ["audit"]
    guards = [requires(Scope.ADMIN)]

    @get("/", operation_id="listAuditEntries")
    async def list_audit(
        self, tenant: Tenant, api: Api, since: Instant = None,
        action: str | None = Parameter(default=None, min_length=1, max_length=100), limit: int = Parameter(default=100, ge=1, le=10_000),
    ) -> list[AuditView]:
        """Entries at or after `since` (ISO 8601), optionally of one `action` (e.g.
        run.trigger, run.cancel, run.replay, run.trigger_bulk, token.create, token.revoke,
        limits.set, filter.create, filter.update, filter.delete, cron.create, cron.delete,
        workflow.rollback)."""
        rows = await api.audit.list_entries(tenant, parse_instant("since", since), action, limit)
        return [
            AuditView(
                id=r["id"], ts=r["ts"].isoformat(), token_id=r["token_id"],
                token_name=r["token_name"], action=r["action"], target=r["target"],
                detail=msgspec.json.decode(r["detail"]),
            )
            for r in rows
        ]
