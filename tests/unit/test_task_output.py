"""Log lines and stream chunks without servers: SDK encoding and caps, the dispatcher's routing
and server-side caps, SSE parsing, and the log queries on both OLAP backends."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from ratchet import _output

from libs.common import olap
from libs.common.log_messages import LOG_BATCH_DECODER, STREAM_CHUNK_DECODER, LogBatch, LogLine
from libs.common.messages import Assignment
from libs.common.olap import ChdbBackend, ClickHouseBackend, OlapBackend
from libs.common.proto import worker_pb2 as pb
from libs.common.settings import load_settings
from services.api.actions.stream import chunk_payload
from services.api.repos.logs import RUN_LOGS_SQL, SEARCH_SQL, like_pattern
from services.dispatcher.output import ATTEMPT_OVERHEAD, AttemptDirectory, OutputPublisher
from services.replicator import rows


def _assignment(tenant: str, task_id: str, attempt: int = 0) -> Assignment:
    return Assignment(tenant=tenant, worker_id="w", task_id=task_id, run_id=f"run-{task_id}",
                      attempt=attempt, workflow="wf", task_name="step", action="wf:step",
                      input=b"{}")


# --- SDK ---------------------------------------------------------------------------------

def test_attempt_output_caps_lines_with_one_marker() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    out = _output.AttemptOutput(lambda kind, fields: sent.append((kind, fields)),
                                max_lines=3, max_chars=4)
    for i in range(10):
        out.log(f"line{i}", "WARN" if i == 1 else "info")
    assert [f["seq"] for _, f in sent] == [0, 1, 2, 3]
    assert [f["level"] for _, f in sent] == ["info", "warning", "info", "warning"]
    assert sent[0][1]["log"].startswith("line") and "cut at 4" in sent[0][1]["log"]
    assert "truncated" in sent[3][1]["log"]
    with pytest.raises(ValueError, match="log level"):
        out.log("x", "loud")


def test_chunks_keep_their_type_and_refuse_oversize() -> None:
    assert _output.encode_chunk("é") == ("text", "é".encode())
    assert _output.encode_chunk(b"\x00") == ("bytes", b"\x00")
    assert _output.encode_chunk({"a": [1]}) == ("json", b'{"a":[1]}')
    assert _output.encode_chunk(3) == ("json", b"3")
    with pytest.raises(ValueError, match="exceeds"):
        _output.encode_chunk(b"x" * (_output.MAX_CHUNK_BYTES + 1))


def test_stream_credit_blocks_until_released() -> None:
    credit = _output.StreamCredit(2)
    assert credit.try_acquire() and credit.try_acquire()
    assert not credit.try_acquire()
    with pytest.raises(_output.StreamBufferFull):
        credit.acquire(timeout_s=0)
    got = threading.Event()

    def waiter() -> None:
        credit.acquire(timeout_s=30)
        got.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not got.is_set()
    credit.release(1)
    thread.join(30)
    assert got.is_set()


# --- dispatcher ----------------------------------------------------------------------------

def _publisher(max_lines: int = 3) -> OutputPublisher:
    settings = load_settings(task_log_max_lines=max_lines, task_log_max_chars=8)
    return OutputPublisher(None, settings)  # type: ignore[arg-type]  # never publishes here


def _log(task_id: str, seq: int, text: str = "hello", level: str = "info") -> pb.TaskEvent:
    return pb.TaskEvent(task_id=task_id, attempt=0, kind=pb.LOG, log=text, level=level, seq=seq,
                        ts_ms=1000 + seq)


def test_dispatcher_enforces_the_cap_whatever_the_worker_sends() -> None:
    pub = _publisher(max_lines=3)
    pub.directory.remember(_assignment("acme", "t1"))
    events = [_log("t1", i, "x" * 20 if i == 0 else "ok", "LOUD" if i == 1 else "info")
              for i in range(10)]
    events += [_log("t1", 0)] * 50  # a flood of one repeated seq stays bounded too
    sub = pub._convert("acme", events)
    batches = [LOG_BATCH_DECODER.decode(m.payload) for m in sub.messages]
    lines = [line for b in batches for line in b.lines]
    assert [line.seq for line in lines[:4]] == [0, 1, 2, 3]
    assert lines[0].message.startswith("x" * 8) and "cut" in lines[0].message
    assert lines[1].level == "info"  # unknown levels are stored as info
    assert lines[3].level == "warning" and "truncated" in lines[3].message
    assert len(lines) <= 2 * 3 + 2
    assert all(b.run_id == "run-t1" and b.workflow == "wf" for b in batches)
    assert sub.messages[0].subject == "log.acme"
    assert sub.messages[0].msg_id == "log:t1:0:0-3"


def test_dispatcher_routes_only_attempts_of_the_workers_tenant() -> None:
    pub = _publisher()
    pub.directory.remember(_assignment("acme", "t1"))
    assert pub._convert("intruder", [_log("t1", 0)]).messages == []
    assert pub._convert("acme", [_log("unknown", 0)]).messages == []
    chunk = pb.TaskEvent(task_id="t1", attempt=0, kind=pb.STREAM, chunk=b"\x01", seq=4,
                         chunk_type="bytes")
    odd = pb.TaskEvent(task_id="t1", attempt=0, kind=pb.STREAM, chunk=b"1", seq=5,
                       chunk_type="weird")
    sub = pub._convert("acme", [chunk, odd])
    assert [m.subject for m in sub.messages] == ["chunk.acme.run-t1"] * 2
    assert [m.msg_id for m in sub.messages] == ["chunk:t1:0:4", "chunk:t1:0:5"]
    decoded = [STREAM_CHUNK_DECODER.decode(m.payload) for m in sub.messages]
    assert [(c.type, c.data) for c in decoded] == [("bytes", b"\x01"), ("json", b"1")]
    assert chunk_payload(decoded[0])["data"] == "AQ=="


def test_attempt_directory_is_bounded() -> None:
    directory = AttemptDirectory(live_max_bytes=2 * (ATTEMPT_OVERHEAD + len("run-a")))
    for task_id in ("a", "b", "c"):
        directory.remember(_assignment("acme", task_id))
    assert len(directory) == 2
    assert directory.get("acme", "a", 0) is None
    assert directory.get("acme", "c", 0) is not None


# --- the log queries on both backends --------------------------------------------------------

def _chdb(path: Path) -> OlapBackend:
    return ChdbBackend(path)


def _clickhouse_connect(path: Path) -> OlapBackend:
    import clickhouse_connect

    return ClickHouseBackend(clickhouse_connect.get_client(interface="chdb", path=str(path)))


@pytest.fixture(params=[_chdb, _clickhouse_connect], ids=["chdb", "clickhouse-connect"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OlapBackend]:
    factory: Callable[[Path], OlapBackend] = request.param
    store = factory(tmp_path / "chdb")
    await olap.ensure_schema(store)
    try:
        yield store
    finally:
        await store.close()


def _batch(run_id: str, task_id: str, attempt: int, messages: list[str], t0: int) -> LogBatch:
    return LogBatch(run_id=run_id, task_id=task_id, task_name=task_id, workflow="wf",
                    attempt=attempt, lines=[LogLine(seq=i, ts_ms=t0 + i, level="info", message=m)
                                            for i, m in enumerate(messages)])


async def test_log_queries_order_dedupe_and_search(backend: OlapBackend) -> None:
    b1 = _batch("r1", "a", 0, ["first", "Second 50%"], 1_700_000_000_000)
    b2 = _batch("r1", "b", 0, ["third"], 1_700_000_000_100)
    other = _batch("r1", "a", 0, ["not yours second"], 1_700_000_000_000)
    await backend.insert(olap.TASK_LOGS, rows.log_rows("acme", b1) + rows.log_rows("acme", b2))
    await backend.insert(olap.TASK_LOGS, rows.log_rows("acme", b1))  # a redelivery
    await backend.insert(olap.TASK_LOGS, rows.log_rows("evil", other))
    run = await backend.query(RUN_LOGS_SQL, {"tenant": "acme", "run_id": "r1", "limit": 100,
                                             "offset": 0})
    assert [r["message"] for r in run] == ["first", "Second 50%", "third"]
    assert run[0]["ts_ms"] == 1_700_000_000_000 and run[0]["task"] == "a"
    found = await backend.query(SEARCH_SQL, {
        "tenant": "acme", "pattern": like_pattern("SECOND 50%"), "workflow": "",
        "since_ms": 0, "limit": 10,
    })
    assert [r["message"] for r in found] == ["Second 50%"]
    none = await backend.query(SEARCH_SQL, {
        "tenant": "acme", "pattern": like_pattern("second"), "workflow": "other",
        "since_ms": 0, "limit": 10,
    })
    assert none == []
    assert msgspec.json.encode(run)  # rows are plain JSON values
