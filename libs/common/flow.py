"""Flow control on the trigger path, shared by the API and the scheduler (docs/flow-control.md):
claiming idempotency keys, joining debounce windows and batches, and the CEL keys of both.

Both rest on PostgreSQL unique keys, so concurrent triggers agree without any process
holding a lock: two claims of one idempotency key meet on `idempotency_keys`' primary key;
two triggers opening a window for one key meet on the partial unique index over open
windows (the `ratchet_flow_join` function in migration 080 retries the loser into the
winner's window).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import msgspec
from celpy import celtypes

from libs.common.cel import EvaluationError, compile_expression, to_cel
from libs.common.specs import BatchSpec, DebounceSpec, WorkflowSpec

DEFAULT_IDEMPOTENCY_TTL = timedelta(hours=24)
UNTIL_FINISHED = "until_finished"
MAX_IDEMPOTENCY_KEY_CHARS = 256
MAX_GROUP_KEY_CHARS = 256
TERMINAL_RUN_STATUSES = ["SUCCEEDED", "FAILED", "CANCELLED"]

_JSON = msgspec.json.Encoder()


class FlowKeyError(ValueError):
    """A debounce, batch or idempotency key expression gave no usable key for this input."""


def key_activation(input_json: bytes, metadata: dict[str, str]) -> dict[str, Any]:
    """The CEL variables a flow key sees: `input` and `metadata`, as concurrency keys do."""
    try:
        data = msgspec.json.decode(input_json) if input_json else {}
    except msgspec.DecodeError:
        data = {}
    return {"input": to_cel(data), "metadata": to_cel(dict(metadata))}


def eval_flow_key(expression: str, act: dict[str, Any], limit: int = MAX_GROUP_KEY_CHARS) -> str:
    """A key from CEL: strings as they are, numbers and bools spelled out, anything else as
    JSON; null, an evaluation error or a key over `limit` characters raise FlowKeyError."""
    program = compile_expression(expression)
    try:
        value = program.value(act)
    except EvaluationError as exc:
        raise FlowKeyError(f"{expression!r}: {exc}") from exc
    if value is None:
        raise FlowKeyError(f"{expression!r} evaluated to null")
    if isinstance(value, str):
        out = str(value)
    elif isinstance(value, (bool, celtypes.BoolType)):
        out = "true" if value else "false"
    elif isinstance(value, (int, float)):
        out = str(value)
    else:
        out = _JSON.encode(_plain(value)).decode()
    if len(out) > limit:
        raise FlowKeyError(f"{expression!r} produced a key longer than {limit} characters")
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, celtypes.BoolType)):
        return bool(value)
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


# idempotency ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Claim:
    """One trigger's idempotency key: `ttl_s` None means until the run finishes."""

    key: str
    run_id: str
    ttl_s: float | None


def ttl_of(spec: WorkflowSpec, ttl: float | str | None) -> float | None:
    """The TTL in seconds of a claim (None: until finished) from a request's value or the
    workflow's default."""
    if ttl is None and spec.idempotency is not None:
        return None if spec.idempotency.until_finished else spec.idempotency.ttl_s
    if ttl == UNTIL_FINISHED:
        return None
    if ttl is None:
        return DEFAULT_IDEMPOTENCY_TTL.total_seconds()
    return float(ttl)


_CLAIM = """
INSERT INTO idempotency_keys AS k (tenant_id, workflow, key, run_id, expires_at, until_finished)
SELECT $1, $2, x.key, x.run_id,
       CASE WHEN x.ttl_s IS NULL THEN 'infinity'::timestamptz
            ELSE clock_timestamp() + make_interval(secs => x.ttl_s) END,
       x.ttl_s IS NULL
  FROM unnest($3::text[], $4::text[], $5::float8[]) AS x(key, run_id, ttl_s)
ON CONFLICT (tenant_id, workflow, key) DO UPDATE
   SET run_id = EXCLUDED.run_id, expires_at = EXCLUDED.expires_at,
       until_finished = EXCLUDED.until_finished, created_at = clock_timestamp()
 WHERE k.run_id = EXCLUDED.run_id
    OR (NOT k.until_finished AND k.expires_at <= clock_timestamp())
    OR (k.until_finished AND EXISTS (
           SELECT 1 FROM runs r WHERE r.tenant_id = k.tenant_id AND r.id = k.run_id
              AND r.status = ANY($6::text[])))
RETURNING key, run_id
"""
_HOLDERS = """
SELECT key, run_id FROM idempotency_keys
 WHERE tenant_id = $1 AND workflow = $2 AND key = ANY($3::text[])
"""


async def claim_keys(
    conn: asyncpg.Connection, tenant: str, workflow: str, claims: list[Claim]
) -> dict[str, str]:
    """Claim each key for its run; returns key -> the run it stands for (its own run when the
    claim took, an earlier run's when the key was live). Keys must be distinct.

    The upsert takes a key that is free, expired, or held by a finished run under
    until_finished; a live key stays with its run. Keys the upsert did not take are read in
    a second statement, which sees a concurrent claimer's committed row (the upsert waited
    for it)."""
    if not claims:
        return {}
    rows = await conn.fetch(
        _CLAIM, tenant, workflow, [c.key for c in claims], [c.run_id for c in claims],
        [c.ttl_s for c in claims], TERMINAL_RUN_STATUSES,
    )
    out = {r["key"]: r["run_id"] for r in rows}
    missing = [c.key for c in claims if c.key not in out]
    if missing:
        for r in await conn.fetch(_HOLDERS, tenant, workflow, missing):
            out[r["key"]] = r["run_id"]
    return out


async def release_keys(conn: asyncpg.Connection, tenant: str, workflow: str,
                       claims: list[Claim]) -> None:
    """Give back keys claimed for runs that will not start after all (the trigger failed)."""
    if claims:
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND workflow = $2"
            " AND (key, run_id) IN (SELECT * FROM unnest($3::text[], $4::text[]))",
            tenant, workflow, [c.key for c in claims], [c.run_id for c in claims],
        )


async def move_key(conn: asyncpg.Connection, tenant: str, workflow: str, key: str,
                   run_id: str) -> None:
    """Point a claimed key at the run its trigger joined (a window's, not its own)."""
    await conn.execute(
        "UPDATE idempotency_keys SET run_id = $4 WHERE tenant_id = $1 AND workflow = $2"
        " AND key = $3", tenant, workflow, key, run_id,
    )


async def release_runs(conn: asyncpg.Connection, runs: list[tuple[str, str, str]]) -> None:
    """Give back the keys naming runs that will never exist (tenant, workflow, run id): their
    triggers were dropped by a pause, so a key held until_finished would otherwise stay."""
    if runs:
        await conn.execute(
            "DELETE FROM idempotency_keys k USING unnest($1::text[], $2::text[], $3::text[])"
            " AS x(t, w, r) WHERE k.tenant_id = x.t AND k.workflow = x.w AND k.run_id = x.r",
            [r[0] for r in runs], [r[1] for r in runs], [r[2] for r in runs],
        )


async def expire_keys(conn: asyncpg.Connection, limit: int = 10_000) -> int:
    """Delete up to `limit` keys past their TTL (the claim would replace them anyway)."""
    status = await conn.execute(
        "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys"
        " WHERE NOT until_finished AND expires_at < clock_timestamp() LIMIT $1)", limit,
    )
    return int(status.split()[-1])


# windows ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Joined:
    """Where one trigger went: the window's run, its deadline (epoch ms), and whether this
    trigger opened the window or sealed it (a batch it filled)."""

    run_id: str
    deadline_ms: int
    opened: bool
    sealed: bool


def window_kind(spec: WorkflowSpec) -> DebounceSpec | BatchSpec | None:
    return spec.debounce or spec.batch


def group_key(spec: WorkflowSpec, act: dict[str, Any]) -> str:
    rule = window_kind(spec)
    if rule is None or not rule.key:
        return ""
    return eval_flow_key(rule.key, act)


async def join_window(
    conn: asyncpg.Connection, tenant: str, spec: WorkflowSpec, key: str, *,
    trigger_id: str, source: str, trigger: bytes,
) -> Joined:
    """Add one trigger (its msgpack TriggerRun) to its key's open window (or open one whose
    run id is the trigger's own)."""
    if spec.debounce is not None:
        d = spec.debounce
        kind, keep = "debounce", d.keep
        period_ms, max_wait_ms, size = int(d.period_s * 1000), int(d.max_wait_s * 1000), 0
    elif spec.batch is not None:
        b = spec.batch
        kind, keep = "batch", "all"
        period_ms, max_wait_ms, size = 0, int(b.max_wait_s * 1000), b.size
    else:
        raise ValueError(f"workflow {spec.name!r} has neither debounce nor batch")
    row = await conn.fetchrow(
        "SELECT run_id, ceil(extract(epoch FROM deadline) * 1000)::bigint AS due, opened, sealed"
        " FROM ratchet_flow_join($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        tenant, spec.name, kind, key, keep, trigger_id, trigger_id, source, trigger,
        period_ms, max_wait_ms, size,
    )
    assert row is not None
    return Joined(row["run_id"], int(row["due"]), bool(row["opened"]), bool(row["sealed"]))
