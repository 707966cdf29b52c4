"""The matcher: events in (EVT), run triggers out (CMD), one outcome record per event (TASK).

Each batch of events is matched against cached per-tenant rules and everything it produces
is published pipelined before the batch is acked. Every id is derived from the event id, the
workflow and the filter, so a redelivered batch republishes the same msg-ids (dropped by the
stream) and the same run ids (ignored by the scheduler): an event never triggers twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from prometheus_client import Counter, Histogram

from libs.common import db, events, jetstream, subjects
from libs.common.cel import Bindings, to_cel
from libs.common.jetstream import BatchConsumer, Outgoing, Rejected
from libs.common.match_messages import EventMatches, MatchBatch, MatchOutcome
from libs.common.messages import TriggerRun, encode
from libs.common.payloads import (
    InvalidPayloadKey,
    PayloadAccessDenied,
    PayloadCorrupt,
    PayloadNotFound,
    PayloadStore,
    maybe_ref,
    open_store,
)
from libs.common.publish import AckedPublisher
from libs.common.service import Service
from libs.common.settings import Settings
from libs.common.subjects import Stream, valid_tenant
from services.matcher.rules import DEFAULT_TTL_S, RuleCache, TenantRules, WorkflowRule
from services.matcher.waits import EventWaits

log = logging.getLogger(__name__)
# Outcome records per MatchBatch message: a few hundred bytes each, well under 1 MiB.
RECORDS_PER_MESSAGE = 500

# Fixed namespace: run ids must come out the same in every process and after restarts.
RUN_NAMESPACE = uuid.UUID("3b1f7c52-57a4-4a52-9a0e-8d1c2f6b9e01")

EVENTS = Counter("ratchet_matcher_events_total", "Events read from EVT", ["result"])
TRIGGERS = Counter("ratchet_matcher_triggers_total", "Runs triggered by events")
EVALS = Counter("ratchet_matcher_evaluations_total", "Filter evaluations", ["outcome"])
# Observing a histogram costs a fraction of an evaluation; a 1-in-16 sample keeps the
# distribution and the per-evaluation eval_us in every outcome record keeps the detail.
EVAL_SAMPLE_EVERY = 16
EVAL_SECONDS = Histogram(
    "ratchet_matcher_eval_seconds",
    f"CEL evaluation time (one evaluation in {EVAL_SAMPLE_EVERY} observed)",
    buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2),
)

_EVALS_BY_OUTCOME = {o: EVALS.labels(o) for o in ("matched", "no_match", "error")}
_NAMESPACE_BYTES = RUN_NAMESPACE.bytes


def event_run_id(tenant: str, event_id: str, workflow: str, filter_id: str) -> str:
    """uuid5(RUN_NAMESPACE, name).hex, computed without building UUID objects."""
    name = f"evt\x00{tenant}\x00{event_id}\x00{workflow}\x00{filter_id}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return digest.hex()


@dataclass(slots=True)
class Tally:
    """Counts of one batch, added to the Prometheus counters once per batch."""

    matched: int = 0
    no_match: int = 0
    error: int = 0
    triggers: int = 0
    evaluations: int = 0

    def flush(self) -> None:
        for outcome, count in (("matched", self.matched), ("no_match", self.no_match),
                               ("error", self.error)):
            if count:
                _EVALS_BY_OUTCOME[outcome].inc(count)
        if self.triggers:
            TRIGGERS.inc(self.triggers)


class MatcherService(Service):
    name = "matcher"

    def __init__(
        self,
        settings: Settings,
        *,
        durable: str = "matcher",
        filter_subject: str = subjects.EVT_ALL,
        batch_size: int = 500,
        max_in_flight: int = 3,  # batches matched/awaiting acks at once (measured: 3 > 2)
        rules_ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        super().__init__(settings)
        self._durable = durable
        self._filter_subject = filter_subject  # narrower in benchmarks: one tenant's events
        self._batch_size = batch_size
        self._max_in_flight = max_in_flight
        self._rules_ttl_s = rules_ttl_s
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._pool: asyncpg.Pool | None = None
        self._consumer: BatchConsumer | None = None
        self._publisher: AckedPublisher | None = None
        self._changes: Subscription | None = None
        self.rules: RuleCache | None = None
        self._store: PayloadStore | None = None
        self.waits: EventWaits | None = None

    async def _start(self) -> None:
        s = self.settings
        self._nc = await jetstream.connect(s, "matcher")
        self._js = self._nc.jetstream()
        await jetstream.provision(self._js, s)
        await db.migrate(s.database_url)
        self._pool = await db.create_pool(s.database_url, max_size=4)
        self._store = open_store(s)
        self.rules = RuleCache(self._pool, ttl_s=self._rules_ttl_s)
        self.waits = EventWaits(self._pool)
        self._publisher = AckedPublisher(self._nc)
        await self._publisher.start()
        # Subscribe before consuming so no change made after our first load can be missed.
        self._changes = await self._nc.subscribe(subjects.MATCHER_CHANGES, cb=self._on_change)
        # Batches overlap: one is matched (CPU) while the triggers of others are being acked.
        self._consumer = BatchConsumer(
            self._js, stream=Stream.EVT, durable=self._durable, filter_subject=self._filter_subject,
            handler=self.handle, batch_size=self._batch_size, max_deliver=s.max_deliver,
            max_in_flight=self._max_in_flight,
        )
        await self._consumer.start()

    async def _stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._changes is not None:
            with contextlib.suppress(Exception):
                await self._changes.unsubscribe()
        if self._publisher is not None:
            await self._publisher.stop()
        if self._pool is not None:
            await self._pool.close()
        if self._store is not None:
            await self._store.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    async def _on_change(self, msg: Msg) -> None:
        tenant = msg.data.decode(errors="replace").strip()
        if self.rules is not None and valid_tenant(tenant):
            self.rules.invalidate(tenant)

    async def handle(self, msgs: list[Msg]) -> Rejected:
        """Match a batch of EVT messages; malformed ones are returned to be dead-lettered."""
        assert self._publisher is not None and self.rules is not None and self.waits is not None
        parsed: list[events.Event] = []
        with_msgs: list[tuple[Msg, events.Event]] = []
        rejected: Rejected = []
        for msg in msgs:
            try:
                parsed.append(await self._parse(msg))
                with_msgs.append((msg, parsed[-1]))
            except events.BadEvent as exc:
                log.warning("rejecting event on %s: %s", msg.subject, exc)
                EVENTS.labels("rejected").inc()
                rejected.append((msg, f"bad event: {exc}"))
        if parsed:
            rules = await self.rules.rules_for(e.tenant for e in parsed)
            outgoing: list[Outgoing] = []
            records: dict[str, list[EventMatches]] = {}
            tally = Tally()
            for event in parsed:
                triggers, record = match_event(event, rules.get(event.tenant), tally)
                outgoing.extend(triggers)
                if record is not None:
                    records.setdefault(event.tenant, []).append(record)
            outgoing.extend(_record_messages(records))
            outgoing.extend(await self.waits.match(with_msgs))  # durable waits (waits.py)
            await self._publisher.publish_batch(outgoing)
            tally.flush()
            EVENTS.labels("matched").inc(len(parsed))
        return rejected


    async def _parse(self, msg: Msg) -> events.Event:
        """An EVT message as an event; a payload the API stored (its reference in the body) is
        read back for the filters, and the run it triggers gets the reference as its input."""
        try:
            ref = maybe_ref(msg.data or b"")
        except InvalidPayloadKey as exc:
            raise events.BadEvent(str(exc)) from None
        if ref is None:
            return events.parse(msg)
        assert self._store is not None
        tenant = msg.subject.split(".")[1] if msg.subject.count(".") >= 2 else ""
        try:
            body = await self._store.get_bytes(tenant, ref)
        except (PayloadAccessDenied, PayloadNotFound, PayloadCorrupt, InvalidPayloadKey) as exc:
            raise events.BadEvent(f"event payload {ref.key}: {exc}") from None
        stored = msg.data
        msg.data = body
        try:
            event = events.parse(msg)
        finally:
            msg.data = stored
        return dataclasses.replace(event, raw=stored)


def _record_messages(records: dict[str, list[EventMatches]]) -> list[Outgoing]:
    """One MatchBatch per tenant (chunked); the msg-id names the events it records."""
    out: list[Outgoing] = []
    for tenant, recs in records.items():
        for i in range(0, len(recs), RECORDS_PER_MESSAGE):
            chunk = recs[i : i + RECORDS_PER_MESSAGE]
            msg_id = f"matches:{tenant}:{chunk[0].event_id}:{chunk[-1].event_id}:{len(chunk)}"
            out.append(Outgoing(subjects.task_match(tenant), encode(MatchBatch(records=chunk)),
                                msg_id))
    return out


def match_event(
    event: events.Event, rules: TenantRules | None, tally: Tally | None = None
) -> tuple[list[Outgoing], EventMatches | None]:
    """The run triggers and the outcome record one event produces (counted into `tally`)."""
    workflows = rules.by_key.get(event.key) if rules is not None else None
    if not workflows:
        return [], None
    out: list[Outgoing] = []
    outcomes: list[MatchOutcome] = []
    bindings: Bindings | None = None
    for rule in workflows:
        if not rule.filters:
            run_id = event_run_id(event.tenant, event.event_id, rule.workflow, "")
            out.append(_trigger(event, rule, run_id, None))
            outcomes.append(MatchOutcome(workflow=rule.workflow, outcome="matched", run_id=run_id))
            continue
        for flt in rule.by_scope.get(event.scope, ()):
            if flt.program is None:
                outcomes.append(MatchOutcome(workflow=rule.workflow, outcome="error",
                                             filter_id=flt.id, error=flt.compile_error))
                continue
            if bindings is None:  # converted once per event, shared by all its filters
                bindings = Bindings({
                    "input": to_cel(event.payload),
                    "metadata": to_cel(event.metadata),
                    "event_key": to_cel(event.key),
                })
            bindings.bind("payload", flt.payload_cel)
            started = time.perf_counter_ns()
            matched, error = flt.program.evaluate(bindings)
            eval_ns = time.perf_counter_ns() - started
            eval_us = eval_ns // 1000
            if tally is not None:
                tally.evaluations += 1
                if tally.evaluations % EVAL_SAMPLE_EVERY == 1:
                    EVAL_SECONDS.observe(eval_ns / 1e9)
            if matched:
                run_id = event_run_id(event.tenant, event.event_id, rule.workflow, flt.id)
                out.append(_trigger(event, rule, run_id, flt.payload_json))
                outcomes.append(MatchOutcome(workflow=rule.workflow, outcome="matched",
                                             filter_id=flt.id, run_id=run_id, eval_us=eval_us))
            else:
                outcomes.append(MatchOutcome(
                    workflow=rule.workflow, outcome="error" if error else "no_match",
                    filter_id=flt.id, error=error or "", eval_us=eval_us,
                ))
    if tally is not None:
        for o in outcomes:
            if o.outcome == "matched":
                tally.matched += 1
            elif o.outcome == "no_match":
                tally.no_match += 1
            else:
                tally.error += 1
        tally.triggers += len(out)
    if not outcomes:
        return out, None
    record = EventMatches(tenant=event.tenant, event_id=event.event_id, event_key=event.key,
                          scope=event.scope, ts_ms=int(time.time() * 1000), outcomes=outcomes)
    return out, record


def _trigger(event: events.Event, rule: WorkflowRule, run_id: str,
             filter_payload: bytes | None) -> Outgoing:
    trig = TriggerRun(
        run_id=run_id, workflow=rule.workflow, version_id=rule.version_id, input=event.raw,
        metadata=events.run_metadata(event.metadata), source="event",
        additional={"filter_payload": filter_payload} if filter_payload is not None else {},
        idempotency_key=event.idempotency_key,
    )
    return Outgoing(subjects.cmd(event.tenant, "run.trigger"), encode(trig),
                    f"run:{run_id}:trigger")
