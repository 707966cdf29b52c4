"""The scheduler service: one core loop applies batches from CMD and TASK reports.

Consumers hand decoded batches to the loop through a bounded inbox and wait; the loop
applies everything that is waiting to the in-memory engine, fires due timers, assigns free
slots, writes all effects (outbox included) in ONE transaction, lets the consumers ack, and
then relays the outbox. A crash anywhere before the commit loses nothing (messages are
redelivered); after it, the outbox is relayed on restart with the same msg-ids.

Several schedulers share the work by partitions of tenants (docs/scaling.md): each consumes
only the partitions it holds a lease on (ownership.py, consumers.py), its engine holds only
their state, and every commit is fenced by those leases' epochs (persistence/leases.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from libs.common import db, jetstream, metrics, partitions, retry, subjects
from libs.common.flow_messages import FLOW_DECODER, FLOW_VERB_PREFIX
from libs.common.jetstream import Outgoing, Rejected
from libs.common.logs import now_ms
from libs.common.messages import (
    COMMAND_DECODER,
    REPORT_BATCH_DECODER,
    REPORT_DECODER,
    WORKER_INFO_DECODER,
    CancelRun,
    CancelRuns,
    Command,
    ReplayRun,
    SignalRun,
    TaskReport,
    TriggerRun,
    TriggerRuns,
    WaitSatisfied,
    WorkerInfo,
)
from libs.common.payloads import REF_MAGIC, PayloadError, PayloadStore, maybe_ref, open_store
from libs.common.publish import IsolatingPublisher
from libs.common.service import Service
from libs.common.settings import Settings
from libs.common.specs import WorkflowSpec
from libs.common.subjects import Bucket
from services.scheduler import observe
from services.scheduler.consumers import PartitionConsumers, durables
from services.scheduler.cron import CronTicker
from services.scheduler.engine import TIMER_BATCH, TIMER_EXEC, Engine
from services.scheduler.flow import FlowStage
from services.scheduler.intake import Intake, Item, TimerTurn, Work
from services.scheduler.keys import uses_cel
from services.scheduler.model import RUN_TERMINAL
from services.scheduler.ownership import Ownership
from services.scheduler.persistence import durable, retention, store
from services.scheduler.persistence.batch import write_batch
from services.scheduler.persistence.fairness import FairnessStore
from services.scheduler.persistence.leases import Fenced, Leases

BATCH_SUFFIX = "." + subjects.REPORT_BATCH_KIND
log = logging.getLogger(__name__)

INBOX_MAX = 32
OUTBOX_RELAY_BATCH = 5000
# How long one relay keeps retrying a chunk before the next step takes over (same msg-ids).
OUTBOX_RELAY_RETRY_S = 2.0
PARTITION_MAINTENANCE_S = 3600.0
IDLE_REGISTRY_READ_S = 30.0  # registry resync while the engine knows no worker


class SchedulerService(Service):
    name = "scheduler"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.engine = Engine()
        self._specs = store.SpecCache()
        self._flow = FlowStage(self._specs, self._read_payload, settings.retention_days)
        self._fairness = FairnessStore()
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._publisher: IsolatingPublisher | None = None  # the outbox relay's
        self._pool: asyncpg.Pool | None = None
        self._conn: asyncpg.Connection | None = None  # the core loop's (_core_connection)
        self._payloads: PayloadStore | None = None
        self._kv: KeyValue | None = None
        self._inbox: asyncio.Queue[Work] = asyncio.Queue(maxsize=INBOX_MAX)
        self._intake = Intake()
        self._timer_turn = TimerTurn(TIMER_BATCH)
        self._worker_events: deque[tuple[str, WorkerInfo | str]] = deque()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.instance = settings.scheduler_instance or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self._partition_count = settings.partitions
        self._ownership: Ownership | None = None
        self._consumers: PartitionConsumers | None = None
        # The leases the engine's state was loaded under: every commit is fenced by them.
        self._loaded: Leases = {}
        self._reloads: list[asyncio.Future[None]] = []
        self._core_running = False
        self._tasks: list[asyncio.Task[None]] = []
        self._published: list[str] = []
        self._unsent: list[Outgoing] = []
        # The outbox of batch N is relayed while batch N+1 is applied; at most one relay is in
        # flight, which keeps publish order and bounds what waits in memory.
        self._relay_task: asyncio.Task[None] | None = None
        # API triggers on their first delivery, whose run cannot exist yet (_on_commands)
        self._fresh_runs: set[str] = set()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._cron: CronTicker | None = None

    # lifecycle ----------------------------------------------------------------------
    async def _start(self) -> None:
        s = self.settings
        self._nc = await jetstream.connect(s, "scheduler")
        self._js = self._nc.jetstream()
        self._publisher = IsolatingPublisher(
            self._nc, site="scheduler.outbox_relay", retry_s=OUTBOX_RELAY_RETRY_S,
            until=self._stopping,
        )
        await jetstream.provision(self._js, s)
        self._partition_count = await partitions.count(self._js, s)
        await db.migrate(s.database_url)
        # A scheduler stopped (SIGSTOP) inside a batch transaction would hold its partitions'
        # fence locks and keep a takeover waiting: PostgreSQL ends such a transaction.
        idle_ms = str(int(s.scheduler_lease_s * 1000))
        self._pool = await db.create_pool(
            s.database_url, max_size=5,
            server_settings={"idle_in_transaction_session_timeout": idle_ms},
        )
        self._payloads = open_store(s)
        async with self._pool.acquire() as conn:
            await retention.maintain(conn, s.retention_days, datetime.now(UTC))
        self._unsent = await store.pending_outbox(self._pool, OUTBOX_RELAY_BATCH * 20)
        self._kv = await self._js.key_value(Bucket.WORKERS.value)
        self._consumers = PartitionConsumers(
            self._js, on_commands=self._on_commands, on_reports=self._on_reports,
            max_deliver=s.max_deliver,
        )
        await self._consumers.remove_legacy()
        self._ownership = Ownership(
            self._pool, self.instance, self._partition_count,
            drop=self._drop_partitions, adopt=self._adopt_partitions, ttl_s=s.scheduler_lease_s,
        )
        await self._ownership.start()  # takes its share: loads their state, starts consuming
        self._watcher = await self._kv.watchall()
        self._tasks += [
            asyncio.create_task(self._core_loop(), name="scheduler-core"),
            asyncio.create_task(self._watch_workers(), name="scheduler-workers"),
            asyncio.create_task(self._sweep_stale_workers(), name="scheduler-stale"),
            asyncio.create_task(retention.maintain_every(
                self._pool, s.retention_days, self._stopping, PARTITION_MAINTENANCE_S,
            ), name="scheduler-partitions"),
            asyncio.create_task(self._ownership.run(self._stopping), name="scheduler-leases"),
        ]
        self._cron = CronTicker(s, self._pool, self._js)
        await self._cron.start()

    async def refresh_metrics(self) -> None:
        observe.refresh_gauges(self.engine)
        if self._consumers is not None:
            await metrics.refresh_consumer_lag(
                self._js, [d for p in self._consumers.partitions for d in durables(p)]
            )

    async def _stop(self) -> None:
        if self._cron is not None:
            await self._cron.stop()
        self._stopping.set()  # the lease loop takes and hands over nothing more
        if self._consumers is not None:
            await self._consumers.stop()
        self._wake.set()
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 10)
        if self._ownership is not None:
            await self._ownership.leave()  # after the last commit: the others take over at once
        if self._pool is not None:
            await self._pool.close()
        if self._payloads is not None:
            await self._payloads.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    async def _load(self) -> None:
        """Rebuild the engine from PostgreSQL: the state of the partitions held right now."""
        assert self._pool is not None
        self._loaded = dict(self._ownership.leases) if self._ownership is not None else {}
        self.engine = Engine()
        owned = sorted(self._loaded)
        async with self._pool.acquire() as conn:
            runs = await store.load_runs(
                conn, self._specs, "status IN ('PENDING', 'RUNNING')"
                " AND ratchet_partition(tenant_id, $1) = ANY($2::integer[])",
                self._partition_count, owned,
            )
            await self._fairness.load(conn, self.engine, self._owns)  # slot holders before runs
            for run in runs:
                await self._resolve_input(run.tenant, run.id, run.input, run.spec)
                self.engine.adopt(run)
            self.engine.release_stale_holders()
            for tenant, task_id, kind, attempt, due in await store.load_timers(conn):
                task = self.engine.tasks.get(task_id)
                if task is None:
                    continue
                if kind == TIMER_EXEC and task.attempt == attempt:
                    task.deadline_ms = due
                self.engine.adopt_timer(tenant, task_id, kind, attempt, due)
            for entry in await durable.load(conn):
                if self._owns(entry.tenant):
                    self.engine.restore_durable(entry)
            for item in await durable.load_inbox(conn):
                if self._owns(item.tenant):
                    self.engine.restore_inbox(item)
            self._flow = FlowStage(self._specs, self._read_payload,  # flow control's timers
                                   self.settings.retention_days)
            await self._flow.load(conn, self._owns)
        log.info("loaded %d active runs of partitions %s", len(self.engine.runs), owned)

    # partitions ---------------------------------------------------------------------
    def _owns(self, tenant: str) -> bool:
        """Whether the engine holds this tenant's state (its partition was loaded)."""
        return partitions.partition_of(tenant, self._partition_count) in self._loaded

    def _accepts(self, tenant: str) -> bool:
        """Whether a message of this tenant may be applied: loaded, and still leased."""
        partition = partitions.partition_of(tenant, self._partition_count)
        held = self._ownership.leases if self._ownership is not None else {}
        return partition in self._loaded and partition in held

    async def _drop_partitions(self, dropped: set[int]) -> None:
        """Lease loop: stop consuming `dropped` (batches in hand commit first), then reload
        the engine without them. Their leases are released only after this returns."""
        assert self._consumers is not None
        await self._consumers.stop(sorted(dropped))
        await self._reload()

    async def _adopt_partitions(self, got: Leases) -> None:
        """Lease loop: the leases are ours (new epochs): load their state, then consume."""
        assert self._consumers is not None
        await self._reload()
        await self._consumers.start(sorted(got))

    async def _reload(self) -> None:
        """Reload the engine between two batches of the core loop (at once before it runs)."""
        if not self._core_running:
            await self._load()
            self._refeed_workers_soon()
            return
        done = asyncio.get_running_loop().create_future()
        self._reloads.append(done)
        self._wake.set()
        await done

    async def _reload_now(self) -> None:
        requests, self._reloads = self._reloads, []
        await self._await_relay()
        try:
            await self._load()
        except Exception:
            log.exception("reload after a partition change failed; retrying")
            await self._recover()
        self._refeed_workers_soon()
        for done in requests:
            if not done.done():
                done.set_result(None)

    def _refeed_workers_soon(self) -> None:
        """A new engine knows no workers: the registry's entries are fed to it again."""
        if self._kv is not None:
            kv = self._kv

            async def refeed() -> None:
                with contextlib.suppress(Exception):
                    for info in await _current_workers(kv):
                        self._worker_events.append(("put", info))
                    self._wake.set()

            self._tasks.append(asyncio.create_task(refeed(), name="scheduler-refeed"))

    # consumers ----------------------------------------------------------------------
    async def _on_commands(self, msgs: list[Msg]) -> Rejected:
        items: list[tuple[str, object]] = []
        rejected: Rejected = []
        for msg in msgs:
            try:
                tenant = subjects.tenant_of(msg.subject)
                if _is_flow(msg.subject):  # pause, resume, a window's deadline (flow.py)
                    items.append((tenant, FLOW_DECODER.decode(msg.data)))
                    continue
                cmd = COMMAND_DECODER.decode(msg.data)
            except (msgspec.DecodeError, IndexError) as exc:
                rejected.append((msg, f"undecodable: {exc}"))
                continue
            cmds: Sequence[Command]
            if isinstance(cmd, TriggerRuns):
                cmds = cmd.runs
            elif isinstance(cmd, CancelRuns):  # a cancelled parent's children
                cmds = cmd.each()
            else:
                cmds = [cmd]
            items.extend((tenant, c) for c in cmds)
            # An API trigger carries a fresh random run id and a re-sent publish keeps its
            # msg-id (the stream drops it), so on its first delivery its run cannot exist yet:
            # the existence check, a PostgreSQL round trip on the trigger's path, is skipped.
            # Not for a child: its id is derived from its parent task and a retried parent
            # triggers it again, so the API sends it with source "child" and it is checked.
            if msg.metadata.num_delivered == 1:
                self._fresh_runs.update(
                    c.run_id for c in cmds if isinstance(c, TriggerRun) and c.source == "api"
                )
        await self._hand_over("cmd", items)
        return rejected

    async def _on_reports(self, msgs: list[Msg]) -> Rejected:
        """Reports come one per message or, from dispatchers, as a ReportBatch per tenant."""
        items: list[tuple[str, object]] = []
        rejected: Rejected = []
        for msg in msgs:
            try:
                tenant = subjects.tenant_of(msg.subject)
                if msg.subject.endswith(BATCH_SUFFIX):
                    items.extend((tenant, r) for r in REPORT_BATCH_DECODER.decode(msg.data).reports)
                else:
                    items.append((tenant, REPORT_DECODER.decode(msg.data)))
            except (msgspec.DecodeError, IndexError) as exc:
                rejected.append((msg, f"undecodable: {exc}"))
        await self._hand_over("report", items)
        return rejected

    async def _hand_over(self, kind: str, items: list[tuple[str, object]]) -> None:
        """Give decoded messages to the core loop; return once their batch is committed.

        A message of a partition this scheduler is handing over (or has lost) raises: the
        consumer naks it, and the partition's next holder applies it."""
        strays = {tenant for tenant, _ in items if not self._accepts(tenant)}
        if strays:
            raise NotHeld(f"partition of tenants {sorted(strays)} not held here")
        if items:
            work = Work(kind, items)
            await self._inbox.put(work)
            await work.done

    # core loop ----------------------------------------------------------------------
    async def _core_loop(self) -> None:
        try:
            await self._core_loop_body()
        finally:
            self._core_running = False
            for done in self._reloads:  # the lease loop is stopping too
                done.cancel()
            await self._release_core_connection()

    async def _core_connection(self) -> asyncpg.Connection:
        """The core loop's own connection, kept across batches.

        Handing it back to the pool after every batch made asyncpg reset it (a round trip of
        RESET ALL and friends) — at 100 triggers/s, each its own batch, a fixed cost on every
        task. The loop is the connection's only user, so nothing needs resetting in between.
        """
        assert self._pool is not None
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._pool.acquire()
        return self._conn

    async def _release_core_connection(self) -> None:
        """Back to the pool (which resets it, or discards it when broken)."""
        conn, self._conn = self._conn, None
        if conn is not None and self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def _core_loop_body(self) -> None:
        self._core_running = True
        while True:
            if self._reloads:
                await self._reload_now()
            works = await self._next_works()
            if self._stopping.is_set() and not works:
                await self._await_relay()  # what it could not send stays in the outbox table
                return
            try:
                await self._step(works)
            except Exception as exc:
                if isinstance(exc, Fenced):
                    log.warning("batch refused by the fence (%s); reloading", exc)
                else:
                    log.exception("batch failed; reloading state from PostgreSQL")
                await self._release_core_connection()
                for w in {*works, *self._intake.drop()}:
                    if not w.done.done():
                        w.done.set_exception(exc)
                await self._recover()

    async def _next_works(self) -> list[Work]:
        works: list[Work] = []
        if (self._inbox.empty() and not self._worker_events and not self._unsent
                and not self._intake.pending()):
            next_due = _earliest(self.engine.next_timer_ms(), self._flow.next_due_ms())
            timeout = 1.0 if next_due is None else max(0.0, min(1.0, (next_due - now_ms()) / 1000))
            getter = asyncio.ensure_future(self._inbox.get())
            waker = asyncio.ensure_future(self._wake.wait())
            done, _ = await asyncio.wait({getter, waker}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            if getter in done:
                works.append(getter.result())
            else:
                # Not awaited: a cancelled Queue.get leaves its item in the queue, and awaiting it
                # here could swallow a cancellation meant for this task.
                getter.cancel()
            self._wake.clear()
        while not self._inbox.empty() and len(works) < INBOX_MAX:
            works.append(self._inbox.get_nowait())
        return works

    async def _step(self, works: list[Work]) -> None:
        assert self._pool is not None
        items = self._intake.take(works)
        conn = await self._core_connection()
        specs, existing = await self._prefetch(conn, items)
        flowed = await self._flow.intake(conn, items, specs, now_ms(), self._owns)
        if flowed.starts:  # runs that windows, batches and resumes start now
            specs.update(await self._specs.get_many(conn, {t.version_id for _, t in flowed.starts}))
            for tenant, trig in flowed.starts:
                if trig.version_id in specs:
                    await self._resolve_input(tenant, trig.run_id, trig.input, specs[trig.version_id])
        # Runs durable tasks wait for that are not in memory: ended, or not created yet.
        waited_runs = await store.run_statuses(conn, self.engine.run_lookups())
        await self._fairness.refresh_limits(conn, self.engine)
        observe.trace_triggers(self.engine, _triggers(items), existing)
        engine = self.engine
        engine.begin(now_ms())
        engine.runs_ended(waited_runs)
        while self._worker_events:
            _op, value = self._worker_events.popleft()
            if isinstance(value, WorkerInfo):
                if self._owns(value.tenant):  # another scheduler's tenant: not ours to assign
                    engine.worker_seen(value)
            else:
                engine.worker_lost(value)
        for _work, tenant, msg in items:
            if isinstance(msg, TaskReport):
                engine.report(tenant, msg)
            elif isinstance(msg, TriggerRun):
                spec = specs.get(msg.version_id)
                if id(msg) in flowed.absorbed:
                    continue  # deduplicated, held by a window or a pause, or dropped
                if spec is None:
                    log.error("trigger for unknown version %s dropped", msg.version_id,
                              extra={"tenant": tenant, "workflow": msg.workflow,
                                     "run_id": msg.run_id})
                elif msg.run_id not in existing:
                    engine.trigger(tenant, msg, spec)
            elif isinstance(msg, CancelRun):
                engine.cancel(tenant, msg)
            elif isinstance(msg, ReplayRun):
                engine.replay(tenant, msg)
            elif isinstance(msg, WaitSatisfied):
                engine.wait_satisfied(tenant, msg)
            elif isinstance(msg, SignalRun):
                engine.signal(tenant, msg)
        for tenant, trig in flowed.starts:
            if trig.version_id in specs:
                engine.trigger(tenant, trig, specs[trig.version_id])
        if self._timer_turn.fires(bool(items)):
            self._timer_turn.fired(engine.fire_timers())
        fx = engine.finish()
        if not fx.empty() or self._published:
            # Taken before the flush: the relay in flight keeps appending to the list.
            published, self._published = self._published, []
            await write_batch(
                conn, fx, published, self._fairness, engine.limits.defs,
                self.instance, self._loaded,
            )
        await self._flow.after_commit(conn)
        observe.after_batch(engine, fx)
        for work in Intake.completed(items, works):
            if not work.done.done():
                work.done.set_result(None)
        if engine.has_run_lookups():
            self._wake.set()  # look them up in a batch of their own, without waiting for mail
        await self._await_relay()
        outgoing, self._unsent = self._unsent + fx.outbox, []
        if outgoing:
            self._relay_task = asyncio.create_task(self._relay(outgoing), name="outbox-relay")

    async def _await_relay(self) -> None:
        if self._relay_task is not None:
            await self._relay_task  # never raises: failures are kept in self._unsent
            self._relay_task = None

    async def _prefetch(
        self, conn: asyncpg.Connection, items: list[Item]
    ) -> tuple[dict[str, WorkflowSpec], set[str]]:
        """Look up what the batch needs from PostgreSQL before mutating anything."""
        version_ids: set[str] = set()
        keys: list[tuple[str, str]] = []
        replays: list[tuple[str, str]] = []
        parents: list[tuple[str, str]] = []  # of child triggers (engine/_children.py)
        for _work, tenant, msg in items:
            if isinstance(msg, TriggerRun):
                version_ids.add(msg.version_id)
                parent = self.engine.parent_to_look_up(tenant, msg)
                if parent is not None:
                    parents.append(parent)
                if msg.run_id in self._fresh_runs:
                    self._fresh_runs.discard(msg.run_id)
                elif msg.run_id not in self.engine.runs:
                    keys.append((tenant, msg.run_id))
            elif isinstance(msg, ReplayRun) and msg.run_id not in self.engine.runs:
                replays.append((tenant, msg.run_id))
        specs = await self._specs.get_many(conn, version_ids) if version_ids else {}
        for _work, tenant, msg in items:
            if isinstance(msg, TriggerRun) and msg.version_id in specs:
                await self._resolve_input(tenant, msg.run_id, msg.input, specs[msg.version_id])
        existing = await store.existing_runs(conn, keys)
        self.engine.note_parent_statuses(await store.run_statuses(conn, parents))
        for tenant, run_id in replays:
            for run in await store.load_runs(conn, self._specs, "tenant_id = $1 AND id = $2", tenant, run_id):
                if run.status in RUN_TERMINAL:
                    self.engine.adopt(run)
        return dict(specs), existing

    async def _resolve_input(
        self, tenant: str, run_id: str, raw: bytes, spec: WorkflowSpec
    ) -> None:
        """Fetch an offloaded run input the workflow's CEL keys need (concurrency groups,
        dynamic rate-limit keys), so they see the input itself and not its reference."""
        if not raw.startswith(REF_MAGIC) or not uses_cel(spec):
            return
        assert self._payloads is not None
        ref = maybe_ref(raw)
        if ref is None or run_id in self.engine.resolved_inputs:
            return
        try:
            data = await self._payloads.get_bytes(tenant, ref)
        except PayloadError as exc:  # gone or corrupt: the keys see an empty input
            log.error("run %s: its input %s cannot be read (%r)", run_id, ref.key, exc,
                      extra={"tenant": tenant})
            return
        self.engine.resolved_inputs[run_id] = data

    async def _read_payload(self, tenant: str, raw: bytes) -> bytes:
        """An offloaded input held in a window, read back to be one of a batch's items."""
        assert self._payloads is not None
        ref = maybe_ref(raw)
        if ref is None:
            return raw
        return await self._payloads.get_bytes(tenant, ref)

    async def _relay(self, outgoing: list[Outgoing]) -> None:
        """Publish the outbox in chunks. A message NATS refuses does not hold back the rest
        (issue 11): an assignment too large to send fails its attempt for good, anything
        else refused is dead-lettered (libs/common/publish.py, stand_ins.py)."""
        assert self._publisher is not None
        sent = 0
        try:
            for i in range(0, len(outgoing), OUTBOX_RELAY_BATCH):
                chunk = outgoing[i : i + OUTBOX_RELAY_BATCH]
                await self._publisher.publish(chunk)
                self._published.extend(o.msg_id for o in chunk)
                sent = i + len(chunk)
        except Exception as exc:
            # Republished next step with the same msg-ids: the stream drops any duplicates.
            self._unsent = outgoing[sent:]
            log.warning("outbox relay failed (%r); %d messages pending", exc, len(self._unsent))

    async def _recover(self) -> None:
        await self._await_relay()
        self._fresh_runs.clear()  # what is redelivered now is checked
        if self._stopping.is_set():
            return
        with contextlib.suppress(Exception):  # raised only once stopping: nothing to recover
            async for attempt in retry.policy(
                "scheduler.recover", timeout_s=None, until=self._stopping, on=retry.any_error,
            ):
                with attempt:
                    if self._ownership is not None:
                        await self._ownership.confirm()  # drop leases lost meanwhile
                    await self._load()
                    assert self._pool is not None
                    self._unsent = await store.pending_outbox(self._pool, OUTBOX_RELAY_BATCH * 20)
                    self._published = []
                    assert self._kv is not None
                    for info in await _current_workers(self._kv):
                        self._worker_events.append(("put", info))

    # worker registry ------------------------------------------------------------------
    async def _watch_workers(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._worker_events.append(("del", entry.key))
            else:
                try:
                    info = WORKER_INFO_DECODER.decode(entry.value)
                except msgspec.DecodeError:
                    continue
                self._worker_events.append(("put", info))
            self._wake.set()

    async def _sweep_stale_workers(self) -> None:
        """Resync the registry now and then and declare workers with stale entries lost.

        The KV watch is the fast path; this full read makes the scheduler independent of it
        (a watch can miss updates across a NATS restart). An entry whose heartbeat stopped
        being refreshed means its dispatcher died or stopped hearing from the worker.
        """
        timeout_ms = int(self.settings.worker_heartbeat_timeout_s * 1000)
        started = now_ms()
        last_read = time.monotonic()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=min(2.0, timeout_ms / 4000))
            if self._kv is None or self._stopping.is_set():
                continue
            # Knowing no worker, there is nothing to declare lost: the registry is read again
            # only now and then (each read is a consumer NATS makes and deletes). A worker
            # that registers arrives through the watch and brings back the short period.
            assigner = self.engine.assigner
            if (not assigner.workers and not assigner.orphaned_workers()
                    and time.monotonic() - last_read < IDLE_REGISTRY_READ_S):
                continue
            last_read = time.monotonic()
            try:
                current = {w.worker_id: w for w in await _current_workers(self._kv)}
            except Exception as exc:
                log.warning("worker registry resync failed: %r", exc)
                continue
            now = now_ms()
            for worker_id, info in current.items():
                if now - info.heartbeat_ms > timeout_ms:
                    log.warning("worker %s missed heartbeats: lost", worker_id)
                    self._worker_events.append(("del", worker_id))
                    with contextlib.suppress(Exception):
                        await self._kv.delete(worker_id)
                else:
                    self._worker_events.append(("put", info))
            for worker_id in list(self.engine.assigner.workers):
                if worker_id not in current:
                    self._worker_events.append(("del", worker_id))
            if now - started > timeout_ms:
                for worker_id in self.engine.assigner.orphaned_workers():
                    if worker_id not in current:
                        self._worker_events.append(("del", worker_id))
            if self._worker_events:
                self._wake.set()


async def _current_workers(kv: KeyValue) -> list[WorkerInfo]:
    out: list[WorkerInfo] = []
    try:
        keys = await kv.keys()
    except NoKeysError:
        return out
    for key in keys:
        with contextlib.suppress(Exception):
            entry = await kv.get(key)
            if entry.value:
                out.append(WORKER_INFO_DECODER.decode(entry.value))
    return out


def _is_flow(subject: str) -> bool:
    """`cmd.<tenant>.<partition>.flow.<verb>` (or without the partition, as published)."""
    return FLOW_VERB_PREFIX.rstrip(".") in subject.split(".")[2:4]


def _earliest(*due: int | None) -> int | None:
    known = [d for d in due if d is not None]
    return min(known) if known else None


def _triggers(items: list[Item]) -> Iterator[TriggerRun]:
    """Lazy: only walked when tracing is on."""
    return (m for _, _, m in items if isinstance(m, TriggerRun))


class NotHeld(RuntimeError):
    """A message of a partition this scheduler does not hold (any more)."""
