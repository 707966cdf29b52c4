"""The worker: one gRPC stream to a dispatcher, running assigned tasks within `slots`.

With several dispatcher addresses (`RATCHET_GRPC_ADDR=a:7077,b:7077`) a worker starts at a
random one, so a fleet spreads over them, and when its stream drops or an address does not
answer it moves on to the next, registering again under the same name and worker id. Tasks
keep running meanwhile; the registration tells the new dispatcher what the worker still holds,
and what the scheduler requeued in between (attempt + 1) fences the old attempt's late report.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import signal
import threading
import time
import traceback
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from ratchet import _codec, _output, _payloads, _tracing
from ratchet._proto import worker_pb2 as pb
from ratchet._proto import worker_pb2_grpc as pb_grpc
from ratchet._transport import Transport
from ratchet.context import _CURRENT, Context
from ratchet.durable import DurableContext
from ratchet.errors import NonRetryable
from ratchet.workflow import Task, Workflow

log = logging.getLogger("ratchet.worker")

MAX_PENDING_EVENTS = 50_000
# Stream chunks a worker holds unsent; past this put_stream waits (chunks are never dropped).
STREAM_CREDIT_CHUNKS = 2_000
RECONNECT_MAX_S = 5.0
RECONNECT_MIN_S = 0.1
# A dispatcher that accepts the connection but does not answer the registration (a half-dead
# process, a black-holed address) is given up on after this, for the next address.
REGISTER_TIMEOUT_S = 10.0
_SETTLING = frozenset({pb.COMPLETED, pb.FAILED, pb.CANCELLED})
FINISHED_MEMORY = 20_000  # attempts remembered to drop redelivered assignments
_KIND = {
    "log": pb.LOG,
    "stream": pb.STREAM,
    "refresh": pb.REFRESH_TIMEOUT,
    "wait": pb.WAIT,
}
DEFAULT_DURABLE_SLOTS = 1000


@dataclass(slots=True, eq=False)
class _Running:
    ctx: Context
    task: asyncio.Task[None]


class Worker:
    """Runs the tasks of `workflows`. `start()` blocks; `await astart()` in async code.

    Create one with `Ratchet.worker(...)`.
    """

    def __init__(
        self,
        transport: Transport,
        name: str,
        workflows: list[Workflow],
        *,
        slots: int = 10,
        labels: dict[str, str] | None = None,
        durable_slots: int = DEFAULT_DURABLE_SLOTS,
        capture_logging: bool = False,
        log_max_lines: int = _output.DEFAULT_LOG_MAX_LINES,
        log_max_chars: int = _output.DEFAULT_LOG_MAX_CHARS,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        if durable_slots < 1:
            raise ValueError("durable_slots must be >= 1")
        if log_max_lines < 1 or log_max_chars < 1:
            raise ValueError("log_max_lines and log_max_chars must be >= 1")
        # Durable tasks waiting at once without a regular slot (the scheduler counts them).
        self.durable_slots = durable_slots
        self._transport = transport
        self.name = name
        self.workflows = list(workflows)
        self.slots = slots
        self.labels = dict(labels or {})
        # Opt-in: Python logging records emitted inside a task also go to the task's log.
        self.capture_logging = capture_logging
        self.log_max_lines = log_max_lines
        self.log_max_chars = log_max_chars
        self.worker_id = ""
        self.tenant = ""
        addrs = transport.grpc_addrs
        # The order addresses are tried in: from a random one on, wrapping around.
        self.dispatcher_addrs: tuple[str, ...] = _rotated(addrs, random.randrange(len(addrs)))
        # The address of the dispatcher this worker is registered with; "" between streams.
        self.dispatcher_addr = ""
        self._sessions = 0  # registrations so far
        self._by_action: dict[str, Task[Any]] = {
            t.action: t for wf in self.workflows for t in wf.all_tasks()
        }
        if not self._by_action:
            raise ValueError("a worker needs at least one workflow with tasks")
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix=f"ratchet-{name}")
        self._running: dict[tuple[str, int], _Running] = {}
        # Attempts this worker already finished, so a redelivered assignment (the dispatcher's
        # ack raced its redelivery) is not executed a second time. Bounded: oldest forgotten.
        self._finished: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._pending: list[pb.TaskEvent] = []
        self._stream_credit = _output.StreamCredit(STREAM_CREDIT_CHUNKS)
        # asyncio.Event binds to a loop only when first awaited, so these can live here.
        self._events_ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inline_bytes, self._max_bytes = _payloads.limits_from_env()

    # lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Block until stopped. Installs SIGINT/SIGTERM handlers only on the main thread."""
        main = threading.current_thread() is threading.main_thread()

        async def runner() -> None:
            if main:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self.stop)
            await self.astart()

        asyncio.run(runner())

    async def astart(self) -> None:
        """Register the workflows, connect, and work until `stop()`."""
        self._loop = asyncio.get_running_loop()
        _tracing.configure_from_env(f"ratchet-worker-{self.name}")
        _tracing.install_log_filter()
        for wf in self.workflows:
            await self._transport.aregister(wf.spec())
        if self.capture_logging:
            _output.install_capture()
        addrs = self.dispatcher_addrs
        index, failures, backoff = 0, 0, RECONNECT_MIN_S
        try:
            while not self._stop.is_set():
                addr = addrs[index]
                sessions = self._sessions
                try:
                    await self._session(addr)
                except (grpc.aio.AioRpcError, OSError) as exc:
                    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
                    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                        raise
                    log.warning("worker stream to dispatcher %s dropped (%s); reconnecting to %s",
                                addr, code or repr(exc), addrs[(index + 1) % len(addrs)])
                if self._stop.is_set():
                    break
                # Whether the stream dropped or never came up, that dispatcher may be gone: the
                # next attempt goes to the next address. Waits grow only once every address
                # failed in a row, so a live dispatcher is found without delay.
                index = (index + 1) % len(addrs)
                if self._sessions != sessions:
                    failures, backoff = 0, RECONNECT_MIN_S
                failures += 1
                if failures > len(addrs):
                    backoff = min(RECONNECT_MAX_S, backoff * 2)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
        finally:
            await self._cancel_all()
            self._executor.shutdown(wait=False, cancel_futures=True)
            if self.capture_logging:
                _output.uninstall_capture()

    def stop(self) -> None:
        """Drain in-flight tasks, then disconnect. Safe from any thread, and before start."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.current_thread() is threading.main_thread() and _running_loop() is loop:
            loop.create_task(self._drain_and_stop())
        else:
            asyncio.run_coroutine_threadsafe(self._drain_and_stop(), loop)

    async def astop(self, drain_timeout_s: float = 30.0) -> None:
        await self._drain_and_stop(drain_timeout_s)

    async def wait_connected(self, timeout_s: float = 30.0) -> None:
        """Wait until registered with a dispatcher (useful in tests and scripts)."""
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def _drain_and_stop(self, drain_timeout_s: float = 30.0) -> None:
        self._draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        await self._cancel_all()
        # Let the last completions go out before closing the stream.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flushed(), 2.0)
        self._stop.set()
        self._events_ready.set()

    async def _flushed(self) -> None:
        while self._pending and self._connected.is_set():
            self._events_ready.set()
            await asyncio.sleep(0.005)

    async def _cancel_all(self) -> None:
        for running in list(self._running.values()):
            running.ctx._cancel()
            running.task.cancel()
        if self._running:
            await asyncio.gather(*(r.task for r in self._running.values()), return_exceptions=True)

    # the stream ---------------------------------------------------------------------
    async def _session(self, addr: str) -> None:
        async with self._transport.grpc_channel(addr) as channel:
            stub = pb_grpc.DispatcherStub(channel)
            call = stub.Connect(metadata=self._transport.grpc_metadata())
            try:
                # TimeoutError is an OSError: the caller moves on to the next address.
                async with asyncio.timeout(REGISTER_TIMEOUT_S):
                    first = await self._register(call)
            except BaseException:
                call.cancel()
                raise
            self.worker_id = first.registered.worker_id
            self.tenant = first.registered.tenant
            interval_s = max(0.2, first.registered.heartbeat_interval_ms / 1000)
            self.dispatcher_addr = addr
            self._sessions += 1
            self._connected.set()
            log.info("worker %s registered as %s with dispatcher %s at %s", self.name,
                     self.worker_id, first.registered.dispatcher_id, addr,
                     extra={"tenant": self.tenant, "worker_id": self.worker_id})
            writer = asyncio.create_task(self._write_loop(call, interval_s))
            try:
                while not self._stop.is_set():
                    read = asyncio.ensure_future(call.read())
                    stopper = asyncio.ensure_future(self._stop.wait())
                    done, _ = await asyncio.wait({read, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    stopper.cancel()
                    if read not in done:
                        read.cancel()
                        break
                    msg = read.result()
                    if msg is grpc.aio.EOF:
                        raise OSError("dispatcher ended the stream")
                    self._on_message(msg)
            finally:
                self._connected.clear()
                self.dispatcher_addr = ""
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
                with contextlib.suppress(Exception):
                    await call.done_writing()
                call.cancel()

    async def _register(self, call: Any) -> pb.DispatcherMessage:
        """Send the registration (same name and worker id on every stream, and the attempts
        still held) and read the dispatcher's answer."""
        await call.write(pb.WorkerMessage(register=pb.Register(
            name=self.name, actions=sorted(self._by_action), slots=self.slots,
            labels=self.labels, worker_id=self.worker_id, holding=self._holding(),
            durable_slots=self.durable_slots,
        )))
        first = await call.read()
        if first is grpc.aio.EOF or first.WhichOneof("msg") != "registered":
            raise OSError("dispatcher closed the stream during registration")
        return first  # type: ignore[no-any-return]

    async def _write_loop(self, call: Any, interval_s: float) -> None:
        next_beat = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_beat:
                await call.write(pb.WorkerMessage(heartbeat=pb.Heartbeat(ts_ms=int(time.time() * 1000))))
                next_beat = now + interval_s
            if self._pending:
                batch, self._pending = self._pending, []
                try:
                    await call.write(pb.WorkerMessage(events=pb.TaskEvents(events=batch)))
                except BaseException:
                    self._pending[:0] = batch  # keep them for the next stream
                    raise
                # Written chunks left the buffer: waiting put_stream calls may go on.
                self._stream_credit.release(sum(1 for ev in batch if ev.kind == pb.STREAM))
                continue
            self._events_ready.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancel that lands as the
            # event fires (stop sets it, then cancels this loop), and the loop then waits out
            # the heartbeat interval: every worker stop took up to 2 s.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - time.monotonic())):
                    await self._events_ready.wait()

    def _holding(self) -> list[pb.TaskKey]:
        """What this worker still answers for: running attempts and unsent outcomes."""
        keys = set(self._running)
        keys.update((e.task_id, e.attempt) for e in self._pending if e.kind in _SETTLING)
        return [pb.TaskKey(task_id=t, attempt=a) for t, a in sorted(keys)]

    def _on_message(self, msg: pb.DispatcherMessage) -> None:
        which = msg.WhichOneof("msg")
        if which == "assignments":
            for a in msg.assignments.items:
                self._accept(a)
        elif which == "cancels":
            for c in msg.cancels.items:
                running = self._running.get((c.task_id, c.attempt))
                if running is not None:
                    running.ctx._cancel()
                    if running.task is not asyncio.current_task():
                        running.task.cancel()
        elif which == "wakes":
            for w in msg.wakes.items:
                running = self._running.get((w.task_id, w.attempt))
                if running is not None and isinstance(running.ctx, DurableContext):
                    running.ctx._wake(w.position, w.result)

    def _accept(self, a: pb.Assignment) -> None:
        key = (a.task_id, a.attempt)
        if key in self._running or key in self._finished:
            return  # a redelivered assignment: already running or done
        if self._draining:
            self._emit(pb.TaskEvent(task_id=a.task_id, attempt=a.attempt, kind=pb.FAILED,
                                    error=pb.TaskError(type="WorkerLost", message="worker draining")))
            return
        sink = self._sink_for(a.task_id, a.attempt)
        fields: dict[str, Any] = dict(
            run_id=a.run_id, task_id=a.task_id, task_name=a.task_name, workflow=a.workflow,
            attempt=a.attempt,
            # Filled by _execute once any stored payloads are fetched.
            parent_outputs={}, additional={},
            metadata=dict(a.metadata),
            sink=sink,
            output=_output.AttemptOutput(
                sink, max_lines=self.log_max_lines, max_chars=self.log_max_chars
            ),
            stream_credit=self._stream_credit,
        )
        defn = self._by_action.get(a.action)
        ctx: Context = (
            DurableContext(durable_log=list(a.durable_log), transport=self._transport, **fields)
            if defn is not None and defn.options.durable else Context(**fields)
        )
        task = _tracing.start_task(self._execute(a, ctx), a, self.tenant)
        self._running[key] = _Running(ctx, task)
        self._idle.clear()

    async def _execute(self, a: pb.Assignment, ctx: Context) -> None:
        key = (a.task_id, a.attempt)
        _CURRENT.set(ctx)  # runs and spawns made by the task start child runs (children.md)
        self._emit(pb.TaskEvent(task_id=a.task_id, attempt=a.attempt, kind=pb.STARTED))
        if self.capture_logging:
            # This coroutine runs in its own asyncio task (own context), and a sync task's
            # thread gets a copy of it: records logged there find this attempt.
            _output.current_output.set(ctx._output)
        try:
            task = self._by_action.get(a.action)
            if task is None:
                raise NonRetryable(f"this worker has no task {a.action!r}")
            ctx._parents = {k: await self._load(v) for k, v in a.parent_outputs.items()}
            ctx._additional = {k: await self._load(v) for k, v in a.additional.items()}
            result = await self._call(task, a, ctx)
            if ctx.cancelled:
                self._emit(pb.TaskEvent(task_id=a.task_id, attempt=a.attempt, kind=pb.CANCELLED))
            else:
                encoded = _codec.dumps(result)
                # Only the JSON is needed now. Let go of the value (and of the input, which
                # `_call` kept to itself) so a large output is held once while it uploads.
                del result
                output = await self._store_output(a.run_id, encoded)
                self._emit(pb.TaskEvent(task_id=a.task_id, attempt=a.attempt, kind=pb.COMPLETED,
                                        output=output))
        except asyncio.CancelledError:
            self._emit(pb.TaskEvent(task_id=a.task_id, attempt=a.attempt, kind=pb.CANCELLED))
        except Exception as exc:
            _tracing.task_failed(exc)
            self._emit(pb.TaskEvent(
                task_id=a.task_id, attempt=a.attempt, kind=pb.FAILED,
                error=pb.TaskError(
                    type=type(exc).__name__, message=str(exc),
                    traceback="".join(traceback.format_exception(exc))[-8000:],
                    non_retryable=isinstance(exc, NonRetryable | _payloads.PayloadTooLarge),
                ),
            ))
        finally:
            self._running.pop(key, None)
            self._finished[key] = None
            if len(self._finished) > FINISHED_MEMORY:
                self._finished.popitem(last=False)
            if not self._running:
                self._idle.set()

    async def _call(self, task: Task[Any], a: pb.Assignment, ctx: Context) -> Any:
        """The task's result for the assignment's input. The input lives in this frame only,
        so it is freed on return unless the result holds on to it."""
        value = _codec.convert(await self._load(a.input), task.workflow.input_type)
        if task.is_async:
            return await task.fn(value, ctx)
        loop = asyncio.get_running_loop()
        call = contextvars.copy_context().run
        return await loop.run_in_executor(self._executor, call, task.fn, value, ctx)

    async def _load(self, raw: bytes) -> Any:
        """A payload as JSON data: fetched from the store first when it is a reference."""
        ref = _payloads.decode(raw)
        if ref is None:
            return _codec.loads(raw)
        # The downloaded JSON is only an argument here: it is freed as soon as it is decoded,
        # so the payload is in memory twice at most (buffer and value), and only meanwhile.
        return _codec.loads(await self._transport.adownload(ref))

    async def _store_output(self, run_id: str, output: bytes) -> bytes:
        """The output as it travels: inline when small, else uploaded and sent as a reference.

        Raises:
            PayloadTooLarge: past the largest payload the server takes (fails the attempt for
                good: running it again would produce the same output).
        """
        if len(output) > self._max_bytes:
            raise _payloads.PayloadTooLarge(len(output), self._max_bytes)
        if len(output) <= self._inline_bytes:
            return output
        return _payloads.encode(await self._transport.aupload(run_id, output))

    def _sink_for(self, task_id: str, attempt: int) -> Any:
        def sink(kind: str, fields: dict[str, Any]) -> None:
            ev = pb.TaskEvent(task_id=task_id, attempt=attempt, kind=_KIND[kind], **fields)
            loop = self._loop
            if loop is None:
                return
            if _running_loop() is loop:
                self._emit(ev)
            else:
                loop.call_soon_threadsafe(self._emit, ev)

        return sink

    def _emit(self, ev: pb.TaskEvent) -> None:
        if not ev.ts_ms:
            ev.ts_ms = int(time.time() * 1000)
        if len(self._pending) >= MAX_PENDING_EVENTS and ev.kind == pb.LOG:
            return  # bounded: under pressure, log lines give way to state
        # Stream chunks are bounded by StreamCredit instead (put_stream waits): never dropped.
        self._pending.append(ev)
        self._events_ready.set()


def _rotated(addrs: tuple[str, ...], start: int) -> tuple[str, ...]:
    """`addrs` from `start` on, wrapping around."""
    return addrs[start:] + addrs[:start]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
