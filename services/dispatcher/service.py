"""The dispatcher: holds live gRPC streams to workers and bridges them to JetStream.

Assignments arrive on `dsp.<dispatcher id>` and are pushed down the worker's stream; the
worker's events are published as task reports. Each connected worker has an entry in the
workers KV bucket that this dispatcher refreshes while the worker heartbeats; when the stream
drops or heartbeats stop the entry is deleted, and the scheduler requeues what it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import asyncpg
import grpc
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from libs.common import db, jetstream, limits, metrics, subjects, tokens
from libs.common.jetstream import BatchConsumer, Outgoing, Rejected
from libs.common.logs import now_ms
from libs.common.messages import (
    DISPATCH_DECODER,
    TaskError,
    TaskReport,
    WorkerInfo,
    encode,
)
from libs.common.payloads import PayloadStore, PayloadTooLarge, encode_ref, maybe_ref, open_store
from libs.common.proto import worker_pb2 as pb
from libs.common.proto import worker_pb2_grpc as pb_grpc
from libs.common.publish import IsolatingPublisher
from libs.common.service import Service
from libs.common.settings import Settings
from libs.common.subjects import Bucket, Stream
from libs.common.tokens import Principal
from services.dispatcher.auth import WorkerAuth
from services.dispatcher.output import OutputPublisher
from services.dispatcher.reports import ReportMessage, chunks, too_large
from services.dispatcher.streams import (
    SETTLING,
    WorkerConn,
    durable_slots,
    to_proto_assignment,
    to_proto_cancel,
    to_proto_wake,
    to_report,
    validate_register,
)

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 2000
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
PUBLISH_RETRY_S = 120.0
# Worker event batches waiting to be published; a full queue slows the gRPC readers down.
EVENT_QUEUE_MAX = 256
EVENT_PUBLISH_MAX = 2000  # reports per JetStream publish batch


def _server_credentials(s: Settings) -> grpc.ServerCredentials:
    """TLS for the worker stream; with a client CA, a worker without a certificate it signed
    cannot even connect (mutual TLS)."""
    client_ca = Path(s.grpc_tls_client_ca).read_bytes() if s.grpc_tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(s.grpc_tls_key).read_bytes(), Path(s.grpc_tls_cert).read_bytes())],
        root_certificates=client_ca, require_client_auth=client_ca is not None,
    )


class DispatcherService(Service, WorkerAuth, pb_grpc.DispatcherServicer):
    name = "dispatcher"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.dispatcher_id = settings.dispatcher_id
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._pool: asyncpg.Pool | None = None
        self._tokens: tokens.TokenCache | None = None
        self._limits: limits.LimitCache | None = None
        # Each connected worker's token, and the streams to end as UNAUTHENTICATED.
        self._principals: dict[WorkerConn, tuple[str, Principal]] = {}
        self._auth_lost: dict[WorkerConn, str] = {}
        self._auth_watch: asyncio.Task[None] | None = None
        self._kv: KeyValue | None = None
        self._store: PayloadStore | None = None
        self._server: grpc.aio.Server | None = None
        self._consumer: BatchConsumer | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # Readers hand worker events to one publisher task, which publishes whatever has
        # accumulated as one pipelined batch: a reader never waits for a JetStream ack round
        # trip per gRPC message, and order is kept (one FIFO, one publisher).
        # (worker id, tenant, reports); an empty list is the stop sentinel
        self._events: asyncio.Queue[tuple[str, str, list[TaskReport]]] = asyncio.Queue(
            maxsize=EVENT_QUEUE_MAX
        )
        self._publisher: asyncio.Task[None] | None = None
        self._reports_out: IsolatingPublisher | None = None  # what _publisher publishes with
        # Log lines and stream chunks: their own bounded queue and publisher (output.py).
        self._output: OutputPublisher | None = None
        self._stopping = asyncio.Event()
        self.conns: dict[str, WorkerConn] = {}
        self.port = settings.grpc_port

    async def _start(self) -> None:
        s = self.settings
        self._nc = await jetstream.connect(s, f"dispatcher-{self.dispatcher_id}")
        self._js = self._nc.jetstream()
        self._reports_out = IsolatingPublisher(
            self._nc, site="dispatcher.publish_reports", retry_s=PUBLISH_RETRY_S,
        )
        await jetstream.provision(self._js, s)
        self._pool = await db.create_pool(s.database_url, max_size=2)
        self._tokens = tokens.TokenCache(self._pool)
        self._tokens.on_revoke(self._on_token_revoked)
        await self._tokens.listen(self._nc)
        self._limits = limits.LimitCache(self._pool)
        self._kv = await self._js.key_value(Bucket.WORKERS.value)
        self._store = open_store(s)
        self._consumer = BatchConsumer(
            self._js, stream=Stream.DSP, durable=f"dispatcher-{self.dispatcher_id}",
            filter_subject=subjects.dsp(self.dispatcher_id), handler=self._on_dispatch,
            batch_size=500, max_deliver=s.max_deliver,
        )
        await self._consumer.start()
        self._publisher = asyncio.create_task(self._publish_loop(), name="dispatcher-events")
        self._output = OutputPublisher(self._js, s)
        self._output.start()
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        pb_grpc.add_DispatcherServicer_to_server(self, self._server)
        address = f"{s.grpc_host}:{s.grpc_port}"
        if s.grpc_tls_cert:
            self.port = self._server.add_secure_port(address, _server_credentials(s))
        else:
            self.port = self._server.add_insecure_port(address)
        await self._server.start()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="dispatcher-heartbeat")
        self._auth_watch = asyncio.create_task(self._auth_loop(), name="dispatcher-auth")
        log.info("dispatcher %s listening on %s:%d", self.dispatcher_id, s.grpc_host, self.port)

    async def refresh_metrics(self) -> None:
        conns = list(self.conns.values())
        metrics.DISPATCHER_WORKERS.set(len(conns))
        metrics.DISPATCHER_SLOTS.set(sum(c.info.slots for c in conns))
        await metrics.refresh_consumer_lag(
            self._js, [(Stream.DSP, f"dispatcher-{self.dispatcher_id}")]
        )

    async def _stop(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            await self._consumer.stop()
        for conn in list(self.conns.values()):
            conn.closed.set()
        if self._server is not None:
            await self._server.stop(grace=5)
        if self._publisher is not None:
            await self._events.put(("", "", []))  # sentinel: all queued before it gets published
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._publisher, PUBLISH_RETRY_S)
        if self._output is not None:
            await self._output.stop()
        for task in (self._heartbeat, self._auth_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._tokens is not None:
            await self._tokens.close()
        if self._pool is not None:
            await self._pool.close()
        if self._store is not None:
            await self._store.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    # gRPC ---------------------------------------------------------------------------
    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.WorkerMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.DispatcherMessage]:
        token, principal = await self._authenticate(context)
        tenant = principal.tenant
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("msg") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be register")
        assert first is not None
        reg = first.register
        problem = validate_register(reg)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        worker_id = reg.worker_id or uuid.uuid4().hex
        await self._admit(context, tenant, worker_id, reg.slots)
        info = WorkerInfo(
            worker_id=worker_id, tenant=tenant, name=reg.name, dispatcher_id=self.dispatcher_id,
            actions=list(reg.actions), slots=reg.slots, labels=dict(reg.labels),
            heartbeat_ms=now_ms(), session=uuid.uuid4().hex, registered_ms=now_ms(),
            holding=[(k.task_id, k.attempt) for k in reg.holding],
            durable_slots=durable_slots(reg),
        )
        conn = WorkerConn(info, asyncio.Queue(maxsize=reg.slots * 2 + 256), now_ms())
        if self._output is not None and info.holding:
            # Attempts it kept running across a reconnect: their output is still routed.
            conn.runs.update(self._output.directory.revive(tenant, info.holding))
        previous = self.conns.get(worker_id)
        if previous is not None:
            previous.closed.set()
        self.conns[worker_id] = conn
        self._principals[conn] = (token, principal)
        await self._put_entry(conn)
        log.info("worker connected", extra={"tenant": tenant, "worker_id": worker_id, "worker_name": reg.name})
        yield pb.DispatcherMessage(
            registered=pb.Registered(
                worker_id=worker_id, tenant=tenant, dispatcher_id=self.dispatcher_id,
                heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            )
        )
        reader = asyncio.create_task(self._read_worker(conn, request_iterator))
        closed = asyncio.create_task(conn.closed.wait())
        try:
            while True:
                getter = asyncio.create_task(conn.outbox.get())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                yield getter.result()
        finally:
            closed.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._principals.pop(conn, None)
            lost = self._auth_lost.pop(conn, None)
            await self._drop(conn)
        if lost is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, lost)

    async def _read_worker(
        self, conn: WorkerConn, request_iterator: AsyncIterator[pb.WorkerMessage]
    ) -> None:
        try:
            async for msg in request_iterator:
                conn.last_seen_ms = now_ms()
                which = msg.WhichOneof("msg")
                if which == "events":
                    batch = await self._reports(conn, msg.events.events)
                    if self._output is not None:
                        await self._output.submit(conn.info.tenant, msg.events.events)
                        await self._output.settled(conn.info.tenant, batch)
                        self._output.directory.settle(
                            (r.task_id, r.attempt) for r in batch if r.kind in SETTLING
                        )
                    if batch:
                        await self._events.put((conn.info.worker_id, conn.info.tenant, batch))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            conn.closed.set()

    async def _reports(
        self, conn: WorkerConn, events: Iterable[pb.TaskEvent]
    ) -> list[TaskReport]:
        now = now_ms()
        batch: list[TaskReport] = []
        for ev in events:
            report = to_report(conn.info.worker_id, ev, now)
            if report is None or report.kind in ("log", "stream"):
                continue  # logs and stream chunks are not state: OutputPublisher takes them
            if report.kind in SETTLING:
                run_id = conn.runs.pop((report.task_id, report.attempt), None)
                if report.kind == "completed" and run_id is not None:
                    report = await self._sized(conn.info.tenant, run_id, report)
            batch.append(report)
        return batch

    async def _sized(self, tenant: str, run_id: str, report: TaskReport) -> TaskReport:
        """A completed report fit for NATS: an output past the inline limit that a client sent
        inline (the TypeScript SDK, older SDKs) is stored here and replaced by its reference;
        one past RATCHET_MAX_PAYLOAD_BYTES fails the attempt for good."""
        s = self.settings
        size = len(report.output)
        if size <= s.payload_inline_bytes or maybe_ref(report.output) is not None:
            return report
        if size > s.max_payload_bytes:
            return too_large(report, PayloadTooLarge(size, s.max_payload_bytes))
        assert self._store is not None
        try:
            ref = await self._store.put_bytes(tenant, run_id, report.output, s.max_payload_bytes)
        except Exception as exc:
            log.error("offloading the output of task %s failed: %r", report.task_id, exc,
                      extra={"tenant": tenant})
            return report  # as if inline: if NATS refuses it, the publisher isolates it
        report.output = encode_ref(ref)
        return report

    async def _publish_loop(self) -> None:
        """Publish queued worker events in batches until the empty-batch sentinel arrives."""
        assert self._js is not None
        while True:
            worker_id, tenant, first = await self._events.get()
            workers = {worker_id}
            last = not first
            per_tenant: dict[str, list[TaskReport]] = {}
            count = 0
            if first:
                per_tenant[tenant] = list(first)
                count = len(first)
            while not last and count < EVENT_PUBLISH_MAX and not self._events.empty():
                worker_id, tenant, more = self._events.get_nowait()
                workers.add(worker_id)
                last = not more
                per_tenant.setdefault(tenant, []).extend(more)
                count += len(more)
            # One message per tenant (the subject carries it); the msg-id is fixed here, so
            # every retry of this batch is deduplicated by the stream.
            batch = [
                ReportMessage(tenant, chunk, f"reports:{uuid.uuid4().hex}")
                for tenant, reports in per_tenant.items()
                for chunk in chunks(reports)
            ]
            if batch and not await self._publish_reports(batch, count):
                # The outcomes are gone: end those workers' streams so the scheduler declares
                # them lost and requeues their tasks rather than waiting for a timeout.
                for wid in workers:
                    conn = self.conns.get(wid)
                    if conn is not None:
                        conn.closed.set()
            if last:
                return

    async def _publish_reports(self, batch: list[ReportMessage], count: int) -> bool:
        """Keep trying through a NATS restart (same msg-ids, so the stream drops duplicates).

        A message NATS refuses for what it is (too big, rejected) is never retried as is: that
        would hold back every report behind it, for every tenant. The isolating publisher sets
        it aside instead: split down to the report at fault, whose attempt then fails for good
        (libs/common/publish.py, stand_ins.py).
        """
        assert self._reports_out is not None
        try:
            await self._reports_out.publish([m.outgoing() for m in batch])
        except Exception as exc:
            log.error("dropped %d worker events after failed publishes (%r)", count, exc)
            return False
        metrics.DISPATCHER_EVENTS.inc(count)
        return True

    async def _drop(self, conn: WorkerConn) -> None:
        worker_id = conn.info.worker_id
        current = self.conns.get(worker_id)
        if self._output is not None:
            # What it held is over here, unless its new stream (a reconnect) holds it still.
            held = current.runs if current is not None and current is not conn else {}
            self._output.directory.settle(key for key in conn.runs if key not in held)
        if current is conn:
            del self.conns[worker_id]
            # Only the entry this dispatcher wrote last: if the worker already registered with
            # another dispatcher, deleting its entry would declare the live worker lost.
            with contextlib.suppress(Exception):
                assert self._kv is not None
                if conn.revision:
                    await self._kv.delete(worker_id, last=conn.revision)
            log.info("worker disconnected", extra={"tenant": conn.info.tenant, "worker_id": worker_id})

    async def _put_entry(self, conn: WorkerConn) -> None:
        """Write the worker's registry entry: unconditionally when it registers (it may move
        here from another dispatcher), then only over this dispatcher's own last write.

        Raises:
            KeyWrongLastSequenceError: the entry changed since (another dispatcher took the
                worker, or the scheduler declared it lost): this stream is superseded.
        """
        assert self._kv is not None
        conn.info.heartbeat_ms = now_ms()
        value = encode(conn.info)
        if conn.revision:
            conn.revision = await self._kv.update(conn.info.worker_id, value, last=conn.revision)
        else:
            conn.revision = await self._kv.put(conn.info.worker_id, value)

    # JetStream ----------------------------------------------------------------------
    async def _on_dispatch(self, msgs: list[Msg]) -> Rejected:
        rejected: Rejected = []
        per_worker: dict[str, tuple[list[pb.Assignment], list[pb.Cancel]]] = {}
        wakes: dict[str, list[pb.Wake]] = {}
        undeliverable: list[tuple[str, TaskReport]] = []
        for msg in msgs:
            try:
                batch = DISPATCH_DECODER.decode(msg.data)
            except Exception as exc:
                rejected.append((msg, f"undecodable: {exc}"))
                continue
            for a in batch.assignments:
                conn = self.conns.get(a.worker_id)
                if conn is not None:
                    conn.track(a)
                    if self._output is not None:
                        self._output.directory.remember(a)
                    per_worker.setdefault(a.worker_id, ([], []))[0].append(to_proto_assignment(a))
                else:
                    report = TaskReport(
                        kind="failed", task_id=a.task_id, attempt=a.attempt,
                        worker_id=a.worker_id, ts_ms=now_ms(),
                        error=TaskError(type="WorkerLost", message="worker not connected"),
                    )
                    undeliverable.append((a.tenant, report))
            for c in batch.cancels:
                if c.worker_id in self.conns:
                    per_worker.setdefault(c.worker_id, ([], []))[1].append(to_proto_cancel(c))
            for w in batch.wakes:
                if w.worker_id in self.conns:
                    wakes.setdefault(w.worker_id, []).append(to_proto_wake(w))
                else:
                    # Like an undeliverable assignment: the scheduler requeues the attempt and
                    # the next one replays the log, where the wait's result is recorded.
                    undeliverable.append((w.tenant, TaskReport(
                        kind="failed", task_id=w.task_id, attempt=w.attempt,
                        worker_id=w.worker_id, ts_ms=now_ms(),
                        error=TaskError(type="WorkerLost", message="worker not connected"),
                    )))
        for worker_id, (assigns, cancels) in per_worker.items():
            conn = self.conns.get(worker_id)
            if conn is None:
                continue
            if assigns:
                await conn.outbox.put(
                    pb.DispatcherMessage(assignments=pb.Assignments(items=assigns))
                )
                metrics.DISPATCHER_ASSIGNMENTS.inc(len(assigns))
            if cancels:
                await conn.outbox.put(pb.DispatcherMessage(cancels=pb.Cancels(items=cancels)))
        for worker_id, items in wakes.items():
            conn = self.conns.get(worker_id)
            if conn is not None:
                await conn.outbox.put(pb.DispatcherMessage(wakes=pb.Wakes(items=items)))
        if undeliverable:
            await self._report_undeliverable(undeliverable)
        return rejected

    async def _report_undeliverable(self, reports: list[tuple[str, TaskReport]]) -> None:
        """Tell the scheduler at once, instead of letting the task wait for its timeout."""
        assert self._js is not None
        log.warning("%d assignments for workers not connected here", len(reports))
        await jetstream.publish_batch(
            self._js,
            [
                Outgoing(
                    subjects.task_report(tenant, "failed"),
                    encode(r),
                    f"task:{r.task_id}:{r.attempt}:undeliverable",
                )
                for tenant, r in reports
            ],
        )

    async def _heartbeat_loop(self) -> None:
        timeout_ms = int(self.settings.worker_heartbeat_timeout_s * 1000)
        refresh_ms = max(500, timeout_ms // 4)
        while not self._stopping.is_set():
            await asyncio.sleep(refresh_ms / 1000)
            if self._output is not None:
                self._output.directory.expire()
            now = now_ms()
            for conn in list(self.conns.values()):
                if now - conn.last_seen_ms > timeout_ms:
                    log.warning("worker %s stopped heartbeating", conn.info.worker_id,
                                extra={"tenant": conn.info.tenant, "worker_id": conn.info.worker_id})
                    conn.closed.set()
                    continue
                try:
                    await self._put_entry(conn)
                except KeyWrongLastSequenceError:
                    # The worker reconnected elsewhere (or was declared lost): end this stream
                    # rather than route its assignments here. It re-registers if still alive.
                    log.warning("worker %s has a newer registration: closing this stream",
                                conn.info.worker_id, extra={"tenant": conn.info.tenant,
                                                            "worker_id": conn.info.worker_id})
                    conn.closed.set()
                except Exception:  # NATS hiccup: the next refresh tries again
                    continue

