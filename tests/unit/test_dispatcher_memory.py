"""What the dispatcher keeps per attempt and per worker is released when the attempt settles or
the worker goes: after N settled attempts its structures are empty, or at most their grace
period's worth (bounded by time and by bytes)."""

from __future__ import annotations

import asyncio
import tracemalloc
import uuid

from libs.common.messages import Assignment, WorkerInfo
from libs.common.proto import worker_pb2 as pb
from libs.common.settings import load_settings
from services.dispatcher.output import ATTEMPT_OVERHEAD, AttemptDirectory, OutputPublisher
from services.dispatcher.service import DispatcherService
from services.dispatcher.streams import WorkerConn


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _assignment(i: int, tenant: str = "acme") -> Assignment:
    return Assignment(tenant=tenant, worker_id="w1", task_id=f"task-{i:06d}-{uuid.uuid4().hex}",
                      run_id=uuid.uuid4().hex, attempt=0, workflow="wf", task_name="step",
                      action="wf:step", input=b"{}")


def _log(a: Assignment, seq: int = 0) -> pb.TaskEvent:
    return pb.TaskEvent(task_id=a.task_id, attempt=a.attempt, kind=pb.LOG, log="late", seq=seq)


def test_settled_attempts_leave_after_their_grace_period() -> None:
    clock = Clock()
    directory = AttemptDirectory(grace_s=60.0, timer=clock)
    done = [_assignment(i) for i in range(5000)]
    for a in done:
        directory.remember(a)
    assert len(directory.live) == 5000
    directory.settle((a.task_id, a.attempt) for a in done)
    assert len(directory.live) == 0
    # Within the grace period a late log line still finds its attempt...
    clock.now += 59
    assert directory.get("acme", done[0].task_id, 0) is not None
    # ...after it, nothing of the 5,000 is left.
    clock.now += 2
    directory.expire()
    assert len(directory) == 0 and directory.bytes == 0
    assert directory.get("acme", done[0].task_id, 0) is None


def test_the_grace_period_is_bounded_in_bytes() -> None:
    limit = 200 * (ATTEMPT_OVERHEAD + 32)
    directory = AttemptDirectory(grace_s=3600.0, grace_max_bytes=limit, timer=Clock())
    for i in range(10_000):
        a = _assignment(i)
        directory.remember(a)
        directory.settle([(a.task_id, a.attempt)])
    assert len(directory.live) == 0
    assert directory.settled.currsize <= limit
    assert len(directory.settled) == 200


def test_attempts_in_flight_are_bounded_in_bytes() -> None:
    limit = 100 * (ATTEMPT_OVERHEAD + 32)
    directory = AttemptDirectory(live_max_bytes=limit)
    first = _assignment(0)
    directory.remember(first)
    for i in range(1, 1000):
        directory.remember(_assignment(i))
    assert directory.live.currsize <= limit and len(directory.live) == 100
    assert directory.get("acme", first.task_id, 0) is None  # least recently used went first


def test_size_estimate_covers_what_an_attempt_really_costs() -> None:
    directory = AttemptDirectory()
    batch = [_assignment(i) for i in range(5000)]
    keys = [(a.task_id, a.attempt) for a in batch]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for a in batch:
            directory.remember(a)
        directory.settle(keys)
        # The directory keeps its own copies of the ids once the assignment is gone.
        del batch
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used <= directory.bytes, (used / 5000, directory.bytes / 5000)


def test_reconnecting_worker_keeps_its_attempts_in_flight() -> None:
    clock = Clock()
    directory = AttemptDirectory(grace_s=60.0, timer=clock)
    held, other = _assignment(1), _assignment(2)
    for a in (held, other):
        directory.remember(a)
    directory.settle([(held.task_id, 0), (other.task_id, 0)])  # its stream closed
    assert directory.revive("intruder", [(held.task_id, 0)]) == {}
    assert directory.revive("acme", [(held.task_id, 0)]) == {(held.task_id, 0): held.run_id}
    clock.now += 3600
    directory.expire()
    assert directory.get("acme", held.task_id, 0) is not None
    assert directory.get("acme", other.task_id, 0) is None


def test_publisher_routes_late_lines_then_forgets() -> None:
    clock = Clock()
    pub = OutputPublisher(None, load_settings())  # type: ignore[arg-type]  # never publishes
    pub.directory = AttemptDirectory(grace_s=30.0, timer=clock)
    a = _assignment(7)
    pub.directory.remember(a)
    pub.directory.settle([(a.task_id, 0)])
    assert len(pub._convert("acme", [_log(a, 1)]).messages) == 1
    clock.now += 31
    pub.directory.expire()
    assert pub._convert("acme", [_log(a, 2)]).messages == []
    assert pub.unknown_attempts == 1


def _service() -> tuple[DispatcherService, WorkerConn]:
    service = DispatcherService(load_settings())
    service._output = OutputPublisher(None, service.settings)  # type: ignore[arg-type]
    info = WorkerInfo(worker_id="w1", tenant="acme", name="w", dispatcher_id="d", actions=["wf:step"],
                      slots=10, labels={}, heartbeat_ms=0)
    conn = WorkerConn(info, asyncio.Queue(), 0)
    service.conns["w1"] = conn
    return service, conn


async def test_settled_reports_release_the_worker_and_directory_entries() -> None:
    service, conn = _service()
    assert service._output is not None
    directory = service._output.directory
    attempts = [_assignment(i) for i in range(2000)]
    for a in attempts:
        conn.track(a)
        directory.remember(a)
    kinds = (pb.COMPLETED, pb.FAILED, pb.CANCELLED)
    events = [pb.TaskEvent(task_id=a.task_id, attempt=0, kind=kinds[i % 3])
              for i, a in enumerate(attempts)]
    batch = await service._reports(conn, events)
    await service._output.settled("acme", batch)
    directory.settle((r.task_id, r.attempt) for r in batch)
    assert conn.runs == {}
    assert len(directory.live) == 0 and len(directory.settled) == 2000


async def test_a_gone_worker_releases_what_it_held() -> None:
    service, conn = _service()
    assert service._output is not None
    directory = service._output.directory
    for i in range(500):
        a = _assignment(i)
        conn.track(a)
        directory.remember(a)
    service._principals[conn] = ("token", None)  # type: ignore[assignment]
    await service._drop(conn)
    assert "w1" not in service.conns
    assert len(directory.live) == 0 and len(directory.settled) == 500
