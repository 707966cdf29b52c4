"""Flow control in the scheduler (docs/flow-control.md): what becomes of a trigger before the
engine sees it, and the runs that windows, batches and resumed pauses start.

Every batch first passes its commands through `FlowStage.intake`, in arrival order:

- a pause or resume changes this scheduler's view of the workflow (the API wrote the row; the
  command arrives on the tenant's CMD partition in order with its triggers);
- a trigger carrying an idempotency key (an event's header, or the workflow's CEL key for an
  event or cron trigger) claims it; a live key absorbs the trigger;
- a trigger of a debounced or batched workflow joins its key's window (the API joins its own
  triggers itself and sends only `FlowDue`); the window's deadline is armed here;
- a trigger of a paused workflow is held (queue) or skipped and counted (drop).

Then windows whose timer is due are sealed in PostgreSQL and become triggers the engine
applies in the same batch, under their pre-assigned run ids. The timers are a heap in
memory over rows in PostgreSQL: the rows are the truth (a deadline moved later by a join
re-arms the timer; a restart re-reads every pending window), the heap only says when to look.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
import msgspec

from libs.common import flow
from libs.common.flow import Claim, FlowKeyError
from libs.common.flow_messages import FlowDue, PauseWorkflow, ResumeWorkflow
from libs.common.messages import ENCODER, TriggerRun
from libs.common.payloads import REF_MAGIC
from libs.common.specs import WorkflowSpec
from services.scheduler.persistence import flow as rows
from services.scheduler.persistence import store
from services.scheduler.persistence.flow import WindowRow

log = logging.getLogger(__name__)

SWEEP_EVERY_MS = 1000  # re-read windows due soon (one whose FlowDue was lost)
SWEEP_HORIZON_MS = 2000
MAINTAIN_EVERY_MS = 600_000  # expired idempotency keys, old windows (with retention set)
MAX_ARMED = 200_000  # timers in memory; past it the sweep finds the rest when they are due
API_SOURCES = frozenset({"api", "child"})  # the API claims these triggers' keys itself
_TRIGGER = msgspec.msgpack.Decoder(TriggerRun)

# A payload reference inside a window (an offloaded input) read back as JSON bytes.
Resolve = Callable[[str, bytes], Awaitable[bytes]]


@dataclass(slots=True)
class Outcome:
    """What intake did with a batch: the item messages it took (by id()), and the triggers
    that windows and resumes start now, with their specs."""

    absorbed: set[int]
    starts: list[tuple[str, TriggerRun]]


class FlowStage:
    def __init__(self, specs: store.SpecCache, resolve: Resolve, retention_days: int = 0) -> None:
        self._specs = specs
        self._resolve = resolve
        self._retention_days = retention_days
        self._next_maintain_ms = 0
        self.paused: dict[tuple[str, str], str] = {}
        self._heap: list[tuple[int, str, str]] = []
        self._armed: dict[tuple[str, str], int] = {}
        self._marks: list[tuple[str, str, str]] = []
        self._dropped: dict[tuple[str, str], int] = {}
        self._dropped_runs: list[tuple[str, str, str]] = []  # their keys are given back
        self._next_sweep_ms = 0
        self.counts = {"deduplicated": 0, "joined": 0, "held": 0, "dropped": 0, "started": 0}

    async def load(self, conn: asyncpg.Connection, owns: Callable[[str], bool]) -> None:
        """The pauses and pending windows of the tenants this scheduler owns."""
        self.paused = {(t, w): m for t, w, m in await rows.pauses(conn) if owns(t)}
        for w in await rows.pending(conn):
            if owns(w.tenant):
                self.arm(w.tenant, w.run_id, 0 if w.state == "sealed" else w.due_ms)

    def arm(self, tenant: str, run_id: str, due_ms: int) -> None:
        key = (tenant, run_id)
        known = self._armed.get(key)
        if known is not None and known <= due_ms:
            return
        if len(self._armed) >= MAX_ARMED and known is None:
            return
        self._armed[key] = due_ms
        heapq.heappush(self._heap, (due_ms, tenant, run_id))

    def next_due_ms(self) -> int | None:
        due = self._heap[0][0] if self._heap else None
        if self._armed or self.paused:
            due = self._next_sweep_ms if due is None else min(due, self._next_sweep_ms)
        return due

    # intake -------------------------------------------------------------------------------
    async def intake(
        self, conn: asyncpg.Connection, items: Sequence[tuple[object, str, object]], specs: dict[str, WorkflowSpec],
        now_ms: int, owns: Callable[[str], bool],
    ) -> Outcome:
        out = Outcome(absorbed=set(), starts=[])
        for _work, tenant, msg in items:
            if isinstance(msg, PauseWorkflow):
                self.paused[(tenant, msg.workflow)] = msg.mode
            elif isinstance(msg, ResumeWorkflow):
                self.paused.pop((tenant, msg.workflow), None)
                for w in await rows.sealed_of(conn, tenant, msg.workflow):
                    self.arm(tenant, w.run_id, 0)
            elif isinstance(msg, FlowDue):
                self.arm(tenant, msg.run_id, msg.due_ms)
            elif isinstance(msg, TriggerRun):
                spec = specs.get(msg.version_id)
                if spec is not None and await self._absorbs(conn, tenant, msg, spec):
                    out.absorbed.add(id(msg))
        if now_ms >= self._next_sweep_ms:
            self._next_sweep_ms = now_ms + SWEEP_EVERY_MS
            for w in await rows.pending(conn, now_ms + SWEEP_HORIZON_MS):
                if owns(w.tenant) and (w.state == "open" or (w.tenant, w.workflow) not in self.paused):
                    self.arm(w.tenant, w.run_id, 0 if w.state == "sealed" else w.due_ms)
        if now_ms >= self._next_maintain_ms:
            self._next_maintain_ms = now_ms + MAINTAIN_EVERY_MS
            await self._maintain(conn)
        out.starts = await self._due(conn, now_ms)
        return out

    async def _maintain(self, conn: asyncpg.Connection) -> None:
        """Delete expired idempotency keys (a claim would replace them anyway: this only
        bounds the table) and, with a retention set, windows that ended before it."""
        try:
            await flow.expire_keys(conn)
            if self._retention_days >= 1:
                await rows.prune(conn, self._retention_days)
        except Exception as exc:  # bookkeeping: the next round retries
            log.warning("flow control maintenance failed (%r)", exc)

    async def _absorbs(self, conn: asyncpg.Connection, tenant: str, msg: TriggerRun,
                       spec: WorkflowSpec) -> bool:
        """Whether flow control takes this trigger instead of the engine starting its run."""
        claim = self._claim(msg, spec)
        if claim is not None:
            held = await flow.claim_keys(conn, tenant, spec.name, [claim])
            if held[claim.key] != msg.run_id:
                self.counts["deduplicated"] += 1
                return True
        if flow.window_kind(spec) is not None:
            try:
                key = flow.group_key(spec, flow.key_activation(msg.input, msg.metadata))
            except FlowKeyError as exc:  # no key for this input: it shares the keyless window
                log.warning("workflow %s: %s; trigger %s joins the window of key ''",
                            spec.name, exc, msg.run_id, extra={"tenant": tenant})
                key = ""
            joined = await flow.join_window(conn, tenant, spec, key, trigger_id=msg.run_id,
                                            source=msg.source, trigger=ENCODER.encode(msg))
            if claim is not None and joined.run_id != msg.run_id:  # the key names the window's run
                await flow.move_key(conn, tenant, spec.name, claim.key, joined.run_id)
            self.arm(tenant, joined.run_id, joined.deadline_ms)
            self.counts["joined"] += 1
            return True
        mode = self.paused.get((tenant, msg.workflow))
        if mode == "queue":
            await rows.hold(conn, tenant, msg)
            self.counts["held"] += 1
            return True
        if mode == "drop":
            self._drop(tenant, msg.workflow, msg.run_id)
            return True
        return False

    @staticmethod
    def _claim(msg: TriggerRun, spec: WorkflowSpec) -> Claim | None:
        key = msg.idempotency_key
        if key is None and spec.idempotency is not None and msg.source not in API_SOURCES:
            try:
                key = flow.eval_flow_key(spec.idempotency.key,
                                         flow.key_activation(msg.input, msg.metadata),
                                         flow.MAX_IDEMPOTENCY_KEY_CHARS)
            except FlowKeyError as exc:
                log.warning("workflow %s: idempotency key: %s; trigger %s goes on without one",
                            spec.name, exc, msg.run_id)
                return None
        if not key:
            return None
        return Claim(key=key[: flow.MAX_IDEMPOTENCY_KEY_CHARS], run_id=msg.run_id,
                     ttl_s=flow.ttl_of(spec, None))

    def _drop(self, tenant: str, workflow: str, run_id: str) -> None:
        self._dropped[(tenant, workflow)] = self._dropped.get((tenant, workflow), 0) + 1
        self._dropped_runs.append((tenant, workflow, run_id))
        self.counts["dropped"] += 1

    # due windows --------------------------------------------------------------------------
    async def _due(self, conn: asyncpg.Connection, now_ms: int) -> list[tuple[str, TriggerRun]]:
        keys: list[tuple[str, str]] = []
        while self._heap and self._heap[0][0] <= now_ms:
            due, tenant, run_id = heapq.heappop(self._heap)
            if self._armed.get((tenant, run_id)) == due:
                del self._armed[(tenant, run_id)]
                keys.append((tenant, run_id))
        if not keys:
            return []
        ready: list[WindowRow] = []
        for w in await rows.seal_due(conn, keys):
            if w.state == "open":
                self.arm(w.tenant, w.run_id, w.due_ms)  # a join moved the deadline on
            elif w.state == "sealed":
                mode = self.paused.get((w.tenant, w.workflow))
                if mode == "drop":
                    self._marks.append((w.tenant, w.run_id, "dropped"))
                    self._drop(w.tenant, w.workflow, w.run_id)
                elif mode is None:
                    ready.append(w)
                # queue: it waits for the resume
        if not ready:
            return []
        # keep="last" needs only the last trigger; a batch or keep="all" all of them.
        held = await rows.items(conn, [
            (w.tenant, w.run_id, max(1, w.items) if w.kind == "debounce" and w.keep == "last" else 1)
            for w in ready
        ])
        existing = await store.existing_runs(conn, [(w.tenant, w.run_id) for w in ready])
        starts: list[tuple[str, TriggerRun]] = []
        for w in ready:
            self._marks.append((w.tenant, w.run_id, "started"))
            if w.run_id in existing or not held.get(w.run_id):
                continue
            starts.append((w.tenant, await self._trigger(w, held[w.run_id])))
        self.counts["started"] += len(starts)
        return starts

    async def _trigger(self, w: WindowRow, raw: list[bytes]) -> TriggerRun:
        """The run a window becomes: its one held trigger (a pause), the last one (debounce,
        keep last), or all of them as {"items": [...]} in arrival order."""
        trigs = [_TRIGGER.decode(r) for r in raw]
        last = trigs[-1]
        if w.kind == "paused":
            return last
        if w.kind == "debounce" and w.keep == "last":
            body = last.input
        else:
            inputs = [await self._inline(w.tenant, t.input) for t in trigs]
            body = b'{"items":[' + b",".join(inputs) + b"]}"
        priorities = [t.priority for t in trigs if t.priority is not None]
        return TriggerRun(
            run_id=w.run_id, workflow=w.workflow, version_id=last.version_id, input=body,
            metadata=dict(last.metadata), priority=max(priorities) if priorities else None,
            additional=dict(last.additional), source=w.kind, traceparent=last.traceparent,
        )

    async def _inline(self, tenant: str, raw: bytes) -> bytes:
        if raw.startswith(REF_MAGIC):
            return await self._resolve(tenant, raw)
        return raw or b"null"

    # after the batch committed -------------------------------------------------------------
    async def after_commit(self, conn: asyncpg.Connection) -> None:
        """Mark the windows whose runs the batch created; add up dropped triggers. Lost on a
        crash, both are redone: a sealed window whose run exists is marked again."""
        marks, self._marks = self._marks, []
        dropped, self._dropped = self._dropped, {}
        gone, self._dropped_runs = self._dropped_runs, []
        try:
            await rows.mark(conn, marks)
            await rows.count_dropped(conn, dropped)
            await flow.release_runs(conn, gone)
        except Exception as exc:
            log.warning("flow bookkeeping after the batch failed (%r); redone later", exc)
            for tenant, run_id, state in marks:
                if state == "started":
                    self.arm(tenant, run_id, 0)
