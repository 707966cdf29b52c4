"""Event conditions of durable waits: which events satisfy which pending waits.

The scheduler writes each pending wait's event conditions to `durable_event_waits` in the
transaction that records the wait (and deletes them when the wait completes). For each batch
of events the matcher reads the conditions on the batch's (tenant, key) pairs — one indexed
query — and, for every condition an event satisfies, publishes a `WaitSatisfied` command to
the scheduler on `cmd.<tenant>.run.wait`. That command is durable in the CMD stream, so an
event that arrives while the waiting task's worker (or the scheduler) is down is not lost.

An event counts for a wait when:
- its key is the condition's key, and the condition has no scope or the event's scope is it;
- it was published (its JetStream timestamp) at or after the wait was registered: events
  from before the wait never satisfy it, even if the matcher reads them later;
- the condition's CEL expression (if any) holds, with `input` the event payload, `metadata`
  its metadata and `event_key` its key, as for filters.

Msg-ids are derived from the task, position, condition and event, so a redelivered batch is
deduplicated by the stream, and the scheduler completes a wait only once anyway.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg
from nats.aio.msg import Msg

from libs.common import events, subjects
from libs.common.cel import CelError, Program, compile_filter, to_cel
from libs.common.jetstream import Outgoing
from libs.common.messages import WaitSatisfied, encode

log = logging.getLogger(__name__)
PROGRAM_CACHE = 4096


@dataclass(frozen=True, slots=True)
class WaitCondition:
    tenant: str
    task_id: str
    position: int
    index: int
    scope: str | None
    expression: str
    registered_ms: int


class EventWaits:
    """Matches batches of events against the pending event conditions in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._programs: OrderedDict[str, Program | None] = OrderedDict()
        self.satisfied = 0

    async def match(self, batch: list[tuple[Msg, events.Event]]) -> list[Outgoing]:
        if not batch:
            return []
        pairs = sorted({(e.tenant, e.key) for _, e in batch})
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT w.tenant_id, w.key, w.task_id, w.position, w.idx, w.scope, w.expression,"
                " (extract(epoch FROM w.registered_at) * 1000)::int8 AS registered_ms"
                " FROM durable_event_waits w"
                " JOIN unnest($1::text[], $2::text[]) AS x(t, k)"
                " ON w.tenant_id = x.t AND w.key = x.k",
                [p[0] for p in pairs], [p[1] for p in pairs],
            )
        if not rows:
            return []
        by_key: dict[tuple[str, str], list[WaitCondition]] = {}
        for r in rows:
            by_key.setdefault((r["tenant_id"], r["key"]), []).append(WaitCondition(
                r["tenant_id"], r["task_id"], r["position"], r["idx"], r["scope"],
                r["expression"], r["registered_ms"],
            ))
        out: list[Outgoing] = []
        for msg, event in batch:
            conds = by_key.get((event.tenant, event.key))
            if not conds:
                continue
            published_ms = _published_ms(msg)
            for cond in conds:
                if cond.scope is not None and cond.scope != event.scope:
                    continue
                if published_ms < cond.registered_ms or not self._holds(cond, event):
                    continue
                cmd = WaitSatisfied(task_id=cond.task_id, position=cond.position,
                                    index=cond.index, event_id=event.event_id, payload=event.raw)
                out.append(Outgoing(
                    subjects.cmd(event.tenant, subjects.CMD_WAIT_VERB), encode(cmd),
                    f"wait:{cond.task_id}:{cond.position}:{cond.index}:{event.event_id}",
                ))
        self.satisfied += len(out)
        return out

    def _holds(self, cond: WaitCondition, event: events.Event) -> bool:
        if not cond.expression:
            return True
        program = self._program(cond.expression)
        if program is None:
            return False
        matched, _error = program.evaluate({
            "input": to_cel(event.payload), "metadata": to_cel(event.metadata),
            "event_key": to_cel(event.key),
        })
        return matched

    def _program(self, expression: str) -> Program | None:
        """Compiled once per expression (bounded); one that does not compile never holds."""
        if expression in self._programs:
            self._programs.move_to_end(expression)
            return self._programs[expression]
        try:
            program: Program | None = compile_filter(expression)
        except CelError as exc:
            log.warning("durable wait expression %r does not compile: %s", expression, exc)
            program = None
        self._programs[expression] = program
        if len(self._programs) > PROGRAM_CACHE:
            self._programs.popitem(last=False)
        return program


def _published_ms(msg: Msg) -> int:
    """When the stream stored the event (read only for events some wait listens to)."""
    try:
        return int(msg.metadata.timestamp.timestamp() * 1000)
    except Exception:  # not a JetStream message (a test, a replay): count it as new
        return 2**62
