"""Per-tenant matching rules: workflows by event key, with their compiled filters.

A tenant's rules are loaded with two queries the first time one of its events arrives and
kept until a change message (`ratchet.matcher.changed`, sent by the API) or the TTL safety
net expires them. Reloading reuses every already-compiled program whose expression did not
change, so a CEL expression is compiled once per filter version, never per event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from libs.common.cel import CelError, Program, compile_filter, to_cel

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0
MAX_TENANTS = 10_000


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    id: str
    workflow: str
    scope: str | None
    expression: str
    program: Program | None  # None: stored before a sandbox rule tightened; always an error
    compile_error: str
    payload_json: bytes  # the filter's payload as JSON, handed to the task as filter_payload
    payload_cel: Any  # the same payload as CEL values, built once


@dataclass(slots=True)
class WorkflowRule:
    workflow: str
    version_id: str
    filters: list[CompiledFilter] = field(default_factory=list)
    by_scope: dict[str | None, list[CompiledFilter]] = field(default_factory=dict)


@dataclass(slots=True)
class TenantRules:
    by_key: dict[str, list[WorkflowRule]]
    filters: dict[tuple[str, str], CompiledFilter]  # (filter id, expression) → compiled
    expires_at: float


_EMPTY = TenantRules(by_key={}, filters={}, expires_at=0.0)


class RuleCache:
    """Rules per tenant with change-message invalidation and a TTL safety net."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_tenants: int = MAX_TENANTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._max_tenants = max_tenants
        self._clock = clock
        self._tenants: dict[str, TenantRules] = {}
        # Bumped by every invalidation: a load that raced with one is used once, not cached.
        self._generation: dict[str, int] = {}
        self.loads = 0
        self.compiles = 0

    def invalidate(self, tenant: str) -> None:
        self._generation[tenant] = self._generation.get(tenant, 0) + 1
        rules = self._tenants.get(tenant)
        if rules is not None:
            rules.expires_at = 0.0

    async def rules_for(self, tenants: Iterable[str]) -> dict[str, TenantRules]:
        """Rules of each tenant; stale or missing ones are (re)loaded in one round trip."""
        now = self._clock()
        out: dict[str, TenantRules] = {}
        stale: list[str] = []
        for tenant in set(tenants):
            rules = self._tenants.get(tenant)
            if rules is not None and rules.expires_at > now:
                out[tenant] = rules
            else:
                stale.append(tenant)
        if stale:
            out.update(await self._load(stale))
        return out

    async def _load(self, tenants: list[str]) -> dict[str, TenantRules]:
        generations = {t: self._generation.get(t, 0) for t in tenants}
        async with self._pool.acquire() as conn:
            workflows = await conn.fetch(
                "SELECT w.tenant_id, w.name, w.current_version_id AS version_id,"
                " COALESCE(v.spec->'on_events', '[]'::jsonb)::text AS on_events"
                " FROM workflows w JOIN workflow_versions v ON v.id = w.current_version_id"
                " WHERE w.tenant_id = ANY($1::text[])"
                " AND jsonb_array_length(COALESCE(v.spec->'on_events', '[]'::jsonb)) > 0",
                tenants,
            )
            filters = await conn.fetch(
                "SELECT tenant_id, id, workflow, scope, expression, payload::text AS payload"
                " FROM filters WHERE tenant_id = ANY($1::text[])",
                tenants,
            )
        self.loads += 1
        expires = self._clock() + self._ttl_s
        built: dict[str, TenantRules] = {
            t: TenantRules(by_key={}, filters={}, expires_at=expires) for t in tenants
        }
        rules_by_wf: dict[tuple[str, str], WorkflowRule] = {}
        for row in workflows:
            rule = WorkflowRule(workflow=row["name"], version_id=row["version_id"])
            rules_by_wf[(row["tenant_id"], row["name"])] = rule
            for key in msgspec.json.decode(row["on_events"], type=list[str]):
                built[row["tenant_id"]].by_key.setdefault(key, []).append(rule)
        for row in filters:
            tenant = row["tenant_id"]
            owner = rules_by_wf.get((tenant, row["workflow"]))
            if owner is None:
                continue  # a filter for a workflow that listens to no event
            compiled = self._compiled(tenant, row)
            built[tenant].filters[(compiled.id, compiled.expression)] = compiled
            owner.filters.append(compiled)
            owner.by_scope.setdefault(compiled.scope, []).append(compiled)
        for tenant, rules in built.items():
            if self._generation.get(tenant, 0) != generations[tenant]:
                rules.expires_at = 0.0  # changed while we read: use once, reload next time
            self._tenants.pop(tenant, None)
            self._tenants[tenant] = rules
        while len(self._tenants) > self._max_tenants:
            # Dicts keep insertion order and reloads re-insert: the first key is the stalest.
            del self._tenants[next(iter(self._tenants))]
        return built

    def _compiled(self, tenant: str, row: asyncpg.Record) -> CompiledFilter:
        previous = self._tenants.get(tenant, _EMPTY).filters.get((row["id"], row["expression"]))
        payload_text: str | None = row["payload"]
        payload_json = payload_text.encode() if payload_text is not None else b"null"
        if previous is not None and previous.payload_json == payload_json \
                and previous.scope == row["scope"] and previous.workflow == row["workflow"]:
            return previous
        program: Program | None = None
        error = ""
        if previous is not None:
            program, error = previous.program, previous.compile_error
        else:
            self.compiles += 1
            try:
                program = compile_filter(row["expression"])
            except CelError as exc:
                error = str(exc)
                log.warning("filter %s of tenant %s does not compile: %s", row["id"], tenant, exc)
        payload = msgspec.json.decode(payload_json)
        return CompiledFilter(
            id=row["id"], workflow=row["workflow"], scope=row["scope"],
            expression=row["expression"], program=program, compile_error=error,
            payload_json=payload_json, payload_cel=to_cel(payload),
        )
