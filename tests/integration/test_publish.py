"""The isolating publisher against the test session's NATS: a message NATS refuses is set aside
(dead-lettered, or replaced by what stands in for it) and the rest of its batch arrives."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from conftest import Stack
from nats.aio.client import Client as NATS

from libs.common import jetstream, subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import (
    DISPATCH_DECODER,
    REPORT_BATCH_DECODER,
    REPORT_DECODER,
    Assignment,
    CancelTask,
    DispatchBatch,
    ReportBatch,
    TaskReport,
    encode,
)
from libs.common.publish import IsolatingPublisher
from libs.common.subjects import Header, Stream

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def nc(stack: Stack) -> AsyncIterator[NATS]:
    conn = await jetstream.connect(stack.settings, "publish-test")
    await jetstream.provision(conn.jetstream(), stack.settings)
    yield conn
    await conn.drain()


@pytest.fixture
async def small_stream(nc: NATS) -> AsyncIterator[tuple[str, str]]:
    """A stream that takes messages of up to 1 KiB, on subjects `<prefix>.>`."""
    token = uuid.uuid4().hex[:12]
    name, prefix = f"PUB_{token}", f"pub.{token}"
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{prefix}.>"], max_msg_size=1024)
    try:
        yield name, prefix
    finally:
        await js.delete_stream(name)


def _publisher(nc: NATS) -> IsolatingPublisher:
    return IsolatingPublisher(nc, site="test.publish", retry_s=5.0)


async def _stored(nc: NATS, stream: str, subject: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """(subject, body, headers) of every message stored on `subject` (wildcards allowed)."""
    psub = await nc.jetstream().pull_subscribe(subject, stream=stream)
    out: list[tuple[str, bytes, dict[str, str]]] = []
    try:
        while True:
            try:
                msgs = await psub.fetch(100, timeout=1.0)
            except TimeoutError:
                return out
            for msg in msgs:
                out.append((msg.subject, msg.data, dict(msg.headers or {})))
                await msg.ack()
    finally:
        await psub.unsubscribe()


async def test_a_message_over_the_streams_limit_is_dead_lettered_and_the_others_arrive(
    nc: NATS, small_stream: tuple[str, str],
) -> None:
    name, prefix = small_stream
    batch = [Outgoing(f"{prefix}.m{i}", f"small {i}".encode(), f"pub:{prefix}:{i}")
             for i in range(5)]
    big = Outgoing(f"{prefix}.big", b"x" * 2048, f"pub:{prefix}:big", {"Trace": "kept"})
    batch.insert(2, big)
    publisher = _publisher(nc)

    await publisher.publish(batch)

    stored = await _stored(nc, name, f"{prefix}.>")
    assert [body for _, body, _ in stored] == [f"small {i}".encode() for i in range(5)]
    assert [h[Header.MSG_ID.value] for _, _, h in stored] == [
        f"pub:{prefix}:{i}" for i in range(5)
    ]
    [(_, body, headers)] = await _stored(nc, Stream.DLQ.value, subjects.dlq(big.subject))
    assert body == big.payload
    assert headers[Header.DLQ_SUBJECT.value] == big.subject
    assert "refused by NATS" in headers[Header.DLQ_REASON.value]
    assert headers[Header.MSG_ID.value] == f"dlq:{big.msg_id}"
    assert headers["Trace"] == "kept"
    assert (publisher.set_aside, publisher.dead_lettered) == (1, 1)

    # Published again (a relay retried after a crash): nothing is stored twice.
    await publisher.publish(batch)
    assert (await nc.jetstream().stream_info(name)).state.messages == 5
    assert len(await _stored(nc, Stream.DLQ.value, subjects.dlq(big.subject))) == 1


async def test_a_message_over_the_servers_max_payload_is_dead_lettered_without_its_body(
    nc: NATS, small_stream: tuple[str, str],
) -> None:
    name, prefix = small_stream
    huge = Outgoing(f"{prefix}.huge", b"y" * (nc.max_payload + 1), f"pub:{prefix}:huge")
    publisher = _publisher(nc)

    await publisher.publish([huge, Outgoing(f"{prefix}.after", b"after", f"pub:{prefix}:a")])

    assert [body for _, body, _ in await _stored(nc, name, f"{prefix}.>")] == [b"after"]
    [(_, body, headers)] = await _stored(nc, Stream.DLQ.value, subjects.dlq(huge.subject))
    assert body == b""
    assert f"body of {len(huge.payload)} bytes dropped" in headers[Header.DLQ_REASON.value]
    assert headers[Header.DLQ_SUBJECT.value] == huge.subject


async def test_an_assignment_too_large_fails_its_attempt_and_its_cancels_go_on(
    nc: NATS,
) -> None:
    tenant = "tp" + uuid.uuid4().hex[:10]
    dsp = subjects.dsp("pubtest-" + uuid.uuid4().hex[:8])
    assignment = Assignment(
        tenant=tenant, worker_id="w1", task_id="task-1", run_id="run-1", attempt=2,
        workflow="wf", task_name="t", action="wf:t", input=b'"' + b"z" * nc.max_payload + b'"',
    )
    cancel = CancelTask(tenant=tenant, worker_id="w1", task_id="task-0", attempt=1, reason="r")
    fine = Outgoing(dsp, encode(DispatchBatch(cancels=[cancel])), f"dsp:{dsp}:1")
    refused = Outgoing(dsp, encode(DispatchBatch(assignments=[assignment], cancels=[cancel])),
                       f"dsp:{dsp}:2")
    try:
        await _publisher(nc).publish([refused, fine])

        on_dsp = await _stored(nc, Stream.DSP.value, dsp)
        assert [h[Header.MSG_ID.value] for _, _, h in on_dsp] == [fine.msg_id,
                                                                  f"{refused.msg_id}:cancels"]
        rest = DISPATCH_DECODER.decode(on_dsp[1][1])
        assert rest.cancels == [cancel] and rest.assignments == []
        [(_, body, headers)] = await _stored(nc, Stream.TASK.value, f"task.{tenant}.>")
        assert headers[Header.MSG_ID.value] == "task:task-1:2:unsendable"
        report = REPORT_DECODER.decode(body)
        assert (report.kind, report.task_id, report.attempt, report.worker_id) == (
            "failed", "task-1", 2, "w1")
        assert report.error is not None and report.error.non_retryable
        assert report.error.type == "PayloadTooLarge"
    finally:
        await nc.jetstream().purge_stream(Stream.DSP.value, subject=dsp)


async def test_a_report_batch_is_split_down_to_the_report_at_fault(nc: NATS) -> None:
    tenant = "tp" + uuid.uuid4().hex[:10]

    def report(task_id: str, output: bytes) -> TaskReport:
        return TaskReport(kind="completed", task_id=task_id, attempt=1, worker_id="w1",
                          ts_ms=1, output=output)

    reports = [report("a", b"1"), report("big", b'"' + b"o" * nc.max_payload + b'"'),
               report("c", b"3")]
    msg_id = f"reports:{uuid.uuid4().hex}"
    batch = Outgoing(subjects.task_report_batch(tenant), encode(ReportBatch(reports=reports)),
                     msg_id)

    await _publisher(nc).publish([batch])

    stored = await _stored(nc, Stream.TASK.value, f"task.{tenant}.>")
    by_id = {h[Header.MSG_ID.value]: REPORT_BATCH_DECODER.decode(body).reports
             for _, body, h in stored}
    assert set(by_id) == {f"{msg_id}:0", f"{msg_id}:2", "task:big:1:unpublishable"}
    assert [r.task_id for r in by_id[f"{msg_id}:0"]] == ["a"]
    assert [r.task_id for r in by_id[f"{msg_id}:2"]] == ["c"]
    [failed] = by_id["task:big:1:unpublishable"]
    assert failed.kind == "failed" and failed.error is not None
    assert failed.error.type == "PayloadTooLarge" and failed.error.non_retryable


async def test_an_unreachable_stream_raises_and_sets_nothing_aside(nc: NATS) -> None:
    """No stream listens on the subject: that may pass (a stream being created), so it is
    retried and then raised for the caller to publish again, never dead-lettered."""
    publisher = IsolatingPublisher(nc, site="test.publish", retry_s=0.3)
    with pytest.raises(Exception) as raised:
        await publisher.publish([Outgoing("nostream.anywhere", b"x", uuid.uuid4().hex)])
    assert not isinstance(raised.value, AssertionError)
    assert (publisher.set_aside, publisher.dead_lettered) == (0, 0)

