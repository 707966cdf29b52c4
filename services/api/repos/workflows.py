"""Workflows and their versions.

A version is an immutable, content-hashed definition, and every run is pinned to one. Each
workflow has one *current* version (`workflows.current_version_id`): the one new runs start on,
whoever starts them — API triggers, the matcher (events), the scheduler's ticker (crons and
scheduled runs). The rules that move the pointer:

- registering a definition never seen before for this workflow creates a version and makes it
  current (a deploy of new code takes effect);
- registering a definition that already has a version changes nothing: a worker restarting
  with older code, or an old replica still up during a rolling deploy, must not silently undo
  a newer deploy or an operator's rollback;
- a rollback points the pointer at any version of the workflow, older or newer; it lasts until
  the next rollback or the next registration of a definition never seen before.

The workflow's `on_crons` follow the current version: they are synced in the same transaction
that moves the pointer.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import NamedTuple

import asyncpg
import msgspec

from libs.common import audit, specs
from libs.common.audit import AuditEntry
from libs.common.specs import WorkflowSpec
from services.api.repos.crons import WorkflowCron, sync_workflow_crons
from services.api.repos.errors import Invalid, NotFound
from services.api.repos.rate_limits import missing_keys

# The one "current version" lookup of the API: a workflow (or all of a tenant's) with the
# definition new runs start on.
_CURRENT = (
    "SELECT w.name, w.current_version_id AS version_id, v.spec::text AS spec, w.updated_at"
    " FROM workflows w JOIN workflow_versions v ON v.id = w.current_version_id"
    " WHERE w.tenant_id = $1 AND ($2::text IS NULL OR w.name = $2) ORDER BY w.name"
)
# One version of one workflow: the tenant and the name are part of the key, so another
# tenant's or another workflow's version id is simply not found.
_VERSION = (
    "SELECT id, hash, created_at, spec::text AS spec FROM workflow_versions"
    " WHERE tenant_id = $1 AND name = $2 AND id = $3"
)
_VERSIONS = (
    "SELECT v.id, v.hash, v.created_at, v.id = w.current_version_id AS current"
    " FROM workflow_versions v JOIN workflows w ON w.tenant_id = v.tenant_id AND w.name = v.name"
    " WHERE v.tenant_id = $1 AND v.name = $2 ORDER BY v.created_at DESC, v.id LIMIT $3"
)
_JSON = msgspec.json.Encoder()
_MAX_CACHED = 10_000

CronsFor = Callable[[WorkflowSpec], list[WorkflowCron]]


class Version(NamedTuple):
    """A version and its decoded definition."""

    id: str
    spec: WorkflowSpec


class VersionInfo(NamedTuple):
    id: str
    hash: str
    created_at: datetime
    current: bool


class Registered(NamedTuple):
    version_id: str
    hash: str
    created: bool  # a definition never seen before
    current: bool  # this version is the current one after the registration


def version_id_for(tenant: str, digest: str) -> str:
    """Version ids are derived from the tenant and the content hash, so re-registering the
    same definition finds the same row."""
    return "wv_" + hashlib.sha256(f"{tenant}/{digest}".encode()).hexdigest()[:24]


class WorkflowRepo:
    """Workflow versions and the current-version pointer, with a short cache of the pointer
    (runs are triggered far more often than workflows change)."""

    def __init__(
        self, pool: asyncpg.Pool, *, cache_ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._ttl_s = cache_ttl_s
        self._clock = clock
        self._current: dict[str, dict[str, tuple[float, str, str]]] = {}
        self._cached = 0
        self._specs: dict[str, WorkflowSpec] = {}

    # reads ----------------------------------------------------------------------------
    async def list_current(self, tenant: str) -> list[asyncpg.Record]:
        """Every workflow of the tenant with its current version (name order)."""
        rows: list[asyncpg.Record] = await self._pool.fetch(_CURRENT, tenant, None)
        return rows

    async def names(self, tenant: str) -> list[str]:
        """The tenant's workflow names, sorted (for pickers: no definitions read)."""
        rows = await self._pool.fetch(
            "SELECT name FROM workflows WHERE tenant_id = $1 ORDER BY name", tenant
        )
        return [str(r["name"]) for r in rows]

    async def get_current(self, tenant: str, name: str) -> asyncpg.Record:
        """One workflow with its current version; NotFound when it was never registered."""
        row: asyncpg.Record | None = await self._pool.fetchrow(_CURRENT, tenant, name)
        if row is None:
            raise NotFound(f"workflow {name!r} not found")
        self._remember(tenant, name, row["version_id"], row["spec"])
        return row

    async def current(self, tenant: str, name: str) -> Version:
        """The version a new run of `name` starts on (cached for a moment)."""
        hit = self._current.get(tenant, {}).get(name)
        if hit is None or hit[0] < self._clock():
            row = await self.get_current(tenant, name)
            return Version(row["version_id"], self.spec_of(row["version_id"], row["spec"]))
        return Version(hit[1], self.spec_of(hit[1], hit[2]))

    async def version(self, tenant: str, name: str, version_id: str) -> Version:
        """A given version of the workflow (to pin a run to it)."""
        row = await self._pool.fetchrow(_VERSION, tenant, name, version_id)
        if row is None:
            raise NotFound(f"version {version_id!r} of workflow {name!r} not found")
        return Version(row["id"], self.spec_of(row["id"], row["spec"]))

    async def versions(self, tenant: str, name: str, limit: int) -> list[VersionInfo]:
        """The workflow's versions, newest first; NotFound when it was never registered."""
        rows = await self._pool.fetch(_VERSIONS, tenant, name, limit)
        if not rows:  # a registered workflow has at least its current version
            raise NotFound(f"workflow {name!r} not found")
        return [VersionInfo(r["id"], r["hash"], r["created_at"], r["current"]) for r in rows]

    # writes ---------------------------------------------------------------------------
    async def register(
        self, tenant: str, spec: WorkflowSpec, crons: list[WorkflowCron],
        rate_limit_keys: Iterable[str] = (),
    ) -> Registered:
        """Store a definition and, when it is new, make it current and sync its crons: one
        transaction, so a crash leaves either all of it or none."""
        digest = specs.content_hash(spec)
        version_id = version_id_for(tenant, digest)
        spec_json = _JSON.encode(spec).decode()
        async with self._pool.acquire() as conn, conn.transaction():
            missing = await missing_keys(conn, tenant, rate_limit_keys)
            if missing:
                raise Invalid(
                    f"unknown rate limit key(s) {missing}: create them first with"
                    " r.rate_limits.put(key, limit=..., per=...) or PUT /rate-limits/{key}"
                )
            created = bool(await conn.fetchval(
                "INSERT INTO workflow_versions (id, tenant_id, name, hash, spec)"
                " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING RETURNING true",
                version_id, tenant, spec.name, digest, spec_json,
            ))
            # A new definition takes the pointer; a known one only when the workflow has none.
            current_id = await conn.fetchval(
                "INSERT INTO workflows (tenant_id, name, current_version_id) VALUES ($1, $2, $3)"
                " ON CONFLICT (tenant_id, name) DO UPDATE SET current_version_id = CASE WHEN $4"
                " THEN EXCLUDED.current_version_id ELSE workflows.current_version_id END,"
                " updated_at = CASE WHEN $4 THEN now() ELSE workflows.updated_at END"
                " RETURNING current_version_id",
                tenant, spec.name, version_id, created,
            )
            is_current = current_id == version_id
            if is_current:
                await sync_workflow_crons(conn, tenant, spec.name, crons)
        if is_current:
            self._remember(tenant, spec.name, version_id, spec_json)
        return Registered(version_id, digest, created, is_current)

    async def make_current(
        self, tenant: str, name: str, version_id: str, crons_for: CronsFor,
        entry: AuditEntry | None = None,
    ) -> VersionInfo:
        """Point the workflow at one of its versions (a rollback, or a roll forward) and sync
        the crons that version declares. Runs already started keep their version."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_VERSION, tenant, name, version_id)
            if row is None:
                raise NotFound(f"version {version_id!r} of workflow {name!r} not found")
            spec = self.spec_of(row["id"], row["spec"])
            await conn.execute(
                "UPDATE workflows SET current_version_id = $3, updated_at = now()"
                " WHERE tenant_id = $1 AND name = $2",
                tenant, name, version_id,
            )
            await sync_workflow_crons(conn, tenant, name, crons_for(spec))
            if entry is not None:
                await audit.record(conn, entry)
        self._remember(tenant, name, version_id, row["spec"])
        return VersionInfo(row["id"], row["hash"], row["created_at"], True)

    # cache ----------------------------------------------------------------------------
    def forget(self, tenant: str) -> None:
        """Drop the tenant's cached pointers (another API replica moved one)."""
        dropped = self._current.pop(tenant, None)
        if dropped is not None:
            self._cached -= len(dropped)

    def spec_of(self, version_id: str, spec_json: str) -> WorkflowSpec:
        """Versions are immutable: decode each definition once."""
        spec = self._specs.get(version_id)
        if spec is None:
            if len(self._specs) >= _MAX_CACHED:
                self._specs.clear()
            spec = msgspec.json.decode(spec_json, type=WorkflowSpec)
            self._specs[version_id] = spec
        return spec

    def _remember(self, tenant: str, name: str, version_id: str, spec_json: str) -> None:
        if self._cached >= _MAX_CACHED:
            self._current.clear()
            self._cached = 0
        names = self._current.setdefault(tenant, {})
        if name not in names:
            self._cached += 1
        names[name] = (self._clock() + self._ttl_s, version_id, spec_json)
