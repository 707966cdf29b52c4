"""What the replicator holds is bounded by bytes as well as rows: the batcher flushes at
`max_bytes`, a fetched batch is written a slice at a time, and what the process gives back
(C heap, start-up library pages) is only what is safe to give back."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from nats.aio.msg import Msg

from libs.common import memory, olap
from libs.common.log_messages import LogBatch, LogLine, encode
from libs.common.olap import Params, Row
from libs.common.settings import load_settings
from services.replicator import service as replicator
from services.replicator.batcher import Batcher


class Sink:
    """An OLAP backend that keeps what it is given (the batching logic is what is tested)."""

    def __init__(self) -> None:
        self.inserts: list[tuple[str, int]] = []

    async def execute(self, sql: str) -> None:
        return None

    async def insert(self, table: str, rows: Sequence[Row]) -> None:
        self.inserts.append((table, len(rows)))

    async def query(self, sql: str, params: Params | None = None) -> list[Row]:
        return []

    async def close(self) -> None:
        return None


async def test_batcher_flushes_on_bytes_before_rows_or_time() -> None:
    sink = Sink()
    batcher = Batcher(sink, max_rows=1_000_000, max_bytes=1000, linger_s=3600)
    batcher.start()
    try:
        await asyncio.wait_for(batcher.write({"t": [{"a": 1}]}, size=1500), 5)
        assert sink.inserts == [("t", 1)]
        assert batcher.pending == (0, 0)
    finally:
        await batcher.stop()


def _log_msg(i: int, lines: int) -> Msg:
    batch = LogBatch(run_id=f"r{i}", task_id=f"t{i}", task_name="a", workflow="wf", attempt=0,
                     lines=[LogLine(seq=k, ts_ms=1000, level="info", message="x" * 50)
                            for k in range(lines)])
    return Msg(None, subject="log.acme", data=encode(batch))  # type: ignore[arg-type]


async def test_a_fetched_batch_is_written_a_slice_at_a_time() -> None:
    svc = replicator.ReplicatorService(load_settings(), max_rows=2500, linger_s=3600)
    sink = Sink()
    svc._batcher = Batcher(sink, max_rows=2500, linger_s=3600)
    svc._batcher.start()
    written: list[int] = []
    write = svc._batcher.write

    async def recording(rows_by_table: Mapping[str, Sequence[Row]], size: int = 0) -> None:
        written.append(sum(len(r) for r in rows_by_table.values()))
        await write(rows_by_table, size)

    svc._batcher.write = recording  # type: ignore[method-assign]
    try:
        msgs = [_log_msg(i, 100) for i in range(200)]  # 20,000 rows in one fetched batch
        rejected = await svc._on_logs([*msgs, Msg(None, subject="log.acme", data=b"\xc1")])  # type: ignore[arg-type]
    finally:
        await svc._batcher.stop()
    assert len(rejected) == 1 and "undecodable log batch" in rejected[0][1]
    assert sum(written) == 20_000
    # Every slice but the last fills the batcher (inserted at once, no linger): 2,500 rows
    # and one message more at most.
    assert max(written) <= 2500 + 100 and len(written) == 8
    assert sum(n for table, n in sink.inserts if table == olap.TASK_LOGS) == 20_000


SMAPS = """\
7f0000000000-7f0000100000 r-xp 00000000 fd:01 42 /opt/lib/libengine.so
Size:               1024 kB
Rss:                 800 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000100000-7f0000200000 r--p 00100000 fd:01 42 /opt/lib/libengine.so
Size:               1024 kB
Rss:                 600 kB
Private_Dirty:       600 kB
Anonymous:           600 kB
7f0000200000-7f0000300000 rw-p 00200000 fd:01 42 /opt/lib/libengine.so
Size:               1024 kB
Rss:                  10 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000300000-7f0000400000 rw-p 00000000 00:00 0
Rss:                 100 kB
Anonymous:           100 kB
"""


def test_only_untouched_read_only_file_pages_count_as_droppable() -> None:
    maps = memory.parse_smaps(SMAPS)
    assert [(m.perms, m.rss_kb, m.private_dirty_kb) for m in maps] == [
        ("r-xp", 800, 0), ("r--p", 600, 600), ("rw-p", 10, 0), ("rw-p", 100, 0)]
    # Code: identical to the file. Relocated read-only data: written once, not the file any
    # more. Writable data and anonymous memory: never.
    assert [m.clean_file_copy for m in maps] == [True, False, False, False]


def test_giving_memory_back_is_safe_to_call() -> None:
    assert memory.drop_clean_library_pages("no-such-library-here") == 0
    assert memory.tune_malloc() is True  # glibc on Linux
    memory.trim_heap()
    assert memory.rss_kb()["VmRSS"] > 0


def test_chdb_gets_its_bounds_as_startup_arguments() -> None:
    conn = olap.chdb_connection("/data/chdb")
    path, _, query = conn.partition("?")
    assert path == "/data/chdb"
    assert f"mark_cache_size={32 * 1024 * 1024}" in query.split("&")
    assert "max_server_memory_usage=536870912" in query.split("&")
    assert olap.chdb_connection("/data/chdb", {}) == "/data/chdb"
