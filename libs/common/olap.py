"""The analytical store: ClickHouse schema, two backends with one SQL dialect, and a reader client.

Backends:
- `ClickHouseBackend` wraps a `clickhouse-connect` client: a ClickHouse server when
  `CLICKHOUSE_URL` is set (it also accepts clickhouse-connect's in-process chDB client, which is
  how the contract suite exercises this code path without a server).
- `ChdbBackend` drives chDB in-process through `chdb.session.Session` (the default).

Both take the same SQL: fully qualified `ratchet.<table>` names, server-side parameters written
`{name:Type}`, rows in and out as JSONEachRow. A chDB directory can be open in only one process
(in fact chDB allows one data path per process), so in embedded mode the replicator owns it and
answers reads on `ratchet.olap.query`; `OlapClient` hides which of the two a reader talks to.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import msgspec
from nats.aio.client import Client as NATS

from libs.common import memory, subjects
from libs.common.settings import Settings
from libs.common.statuses import RUN_TERMINAL, RunStatus

DATABASE = "ratchet"
TASK_EVENTS = f"{DATABASE}.task_events"
RUNS = f"{DATABASE}.runs"
EVENTS = f"{DATABASE}.events"
MATCHES = f"{DATABASE}.match_outcomes"
TASK_STATS_1M = f"{DATABASE}.task_stats_1m"
TASK_LOGS = f"{DATABASE}.task_logs"
TABLES = (TASK_EVENTS, RUNS, EVENTS, MATCHES, TASK_LOGS)

# Terminal run statuses outrank live ones in the runs version (see run_version).
_RUN_RANK: dict[str, int] = {
    RunStatus.PENDING: 0, RunStatus.RUNNING: 1, **{status: 2 for status in RUN_TERMINAL}
}

# Dedupe: every table is a ReplacingMergeTree whose sorting key is the identity of the fact
# it records (the same identity the producer used for its Nats-Msg-Id), so a batch redelivered
# after a crash between insert and ack collapses on merge; readers use FINAL. Timestamps come
# from the message, never from the replicator's clock, so duplicates are byte-identical and
# land in the same partition.
SCHEMA: tuple[str, ...] = (
    f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
    f"""CREATE TABLE IF NOT EXISTS {TASK_EVENTS} (
        tenant LowCardinality(String),
        run_id String,
        task_id String,
        task_name LowCardinality(String),
        workflow LowCardinality(String),
        attempt UInt32,
        state LowCardinality(String),
        ts DateTime64(3, 'UTC'),
        worker_id String,
        wait_ms Int64,
        duration_ms Int64,
        error_type String,
        error_message String,
        INDEX ts_idx ts TYPE minmax GRANULARITY 4
    ) ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMM(ts)
    ORDER BY (tenant, task_id, attempt, state)""",
    f"""CREATE TABLE IF NOT EXISTS {RUNS} (
        tenant LowCardinality(String),
        run_id String,
        workflow LowCardinality(String),
        status LowCardinality(String),
        created_at DateTime64(3, 'UTC'),
        updated_at DateTime64(3, 'UTC'),
        duration_ms Int64,
        version UInt64
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY (tenant, run_id)""",
    f"""CREATE TABLE IF NOT EXISTS {EVENTS} (
        tenant LowCardinality(String),
        key String,
        event_id String,
        scope String,
        payload String,
        ts DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMM(ts)
    ORDER BY (tenant, key, event_id)""",
    f"""CREATE TABLE IF NOT EXISTS {MATCHES} (
        tenant LowCardinality(String),
        msg_id String,
        event_id String,
        workflow String,
        matched UInt8,
        run_id String,
        detail String,
        ts DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMM(ts)
    ORDER BY (tenant, msg_id)""",
    # Task log lines (docs/logs.md). Sorted by run so a run's log is one contiguous range;
    # the identity (task_id, attempt, seq) is the dedupe key. Substring search over a tenant
    # scans its part of the table (the ngram index skips granules that cannot match).
    f"""CREATE TABLE IF NOT EXISTS {TASK_LOGS} (
        tenant LowCardinality(String),
        run_id String,
        task_id String,
        task_name LowCardinality(String),
        workflow LowCardinality(String),
        attempt UInt32,
        seq UInt32,
        ts DateTime64(3, 'UTC'),
        level LowCardinality(String),
        message String,
        INDEX message_idx lower(message) TYPE ngrambf_v1(3, 65536, 2, 0) GRANULARITY 1
    ) ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMM(ts)
    ORDER BY (tenant, run_id, task_id, attempt, seq)""",
    # Per-minute stats. Counts are uniqExact over (task_id, attempt), so a redelivered batch
    # (which the materialized view sees a second time, before any merge) does not inflate
    # them; the t-digest quantiles may weigh such a sample twice, which an approximate
    # percentile tolerates. Exact percentiles come from task_events FINAL.
    f"""CREATE TABLE IF NOT EXISTS {TASK_STATS_1M} (
        tenant LowCardinality(String),
        workflow LowCardinality(String),
        state LowCardinality(String),
        minute DateTime('UTC'),
        attempts AggregateFunction(uniqExact, String, UInt32),
        duration_ms AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Int64),
        wait_ms AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Int64)
    ) ENGINE = AggregatingMergeTree
    PARTITION BY toYYYYMM(minute)
    ORDER BY (tenant, minute, workflow, state)""",
    f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {TASK_STATS_1M}_mv TO {TASK_STATS_1M} AS
    SELECT tenant, workflow, state, toStartOfMinute(ts) AS minute,
        uniqExactState(task_id, attempt) AS attempts,
        quantilesTDigestStateIf(0.5, 0.95, 0.99)(duration_ms, duration_ms >= 0) AS duration_ms,
        quantilesTDigestStateIf(0.5, 0.95, 0.99)(wait_ms, wait_ms >= 0) AS wait_ms
    FROM {TASK_EVENTS}
    GROUP BY tenant, workflow, state, minute""",
)

Row = dict[str, Any]
Params = Mapping[str, Any]

# 64-bit integers as JSON numbers, as chDB returns them. (Not `readonly`: clickhouse-connect's
# chDB client keeps per-query settings for the session, which would then refuse inserts;
# check_read guards reads, and a server deployment gives readers a readonly user.)
READ_SETTINGS: dict[str, Any] = {"output_format_json_quote_64bit_integers": 0}

_JSON = msgspec.json.Encoder()
_READ_START = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)
TENANT_PLACEHOLDER = "{tenant:String}"


class OlapError(Exception):
    """A query or insert the store refused, or a reader request that failed."""


class OlapBackend(Protocol):
    """What the replicator and readers need from a store. All methods are coroutines."""

    async def execute(self, sql: str) -> None: ...

    async def insert(self, table: str, rows: Sequence[Row]) -> None: ...

    async def query(self, sql: str, params: Params | None = None) -> list[Row]: ...

    async def close(self) -> None: ...


@functools.lru_cache(maxsize=4096)  # a scheduler batch stamps all its changes with one time
def ch_time(ms: int) -> str:
    """Epoch milliseconds as a DateTime64(3) JSON input ("seconds.millis", UTC)."""
    return f"{ms // 1000}.{ms % 1000:03d}"


def run_version(ts_ms: int, status: str) -> int:
    """ReplacingMergeTree version of a run row: newest wins, and on a millisecond tie a terminal
    status beats RUNNING (both transitions can share the scheduler's batch timestamp)."""
    return ts_ms * 4 + _RUN_RANK.get(status, 1)


def encode_rows(rows: Sequence[Row]) -> bytes:
    """Rows as JSONEachRow."""
    return b"\n".join(_JSON.encode(row) for row in rows) + b"\n"


def decode_rows(raw: bytes | str) -> list[Row]:
    if isinstance(raw, str):
        raw = raw.encode()
    return [msgspec.json.decode(line) for line in raw.splitlines() if line.strip()]


def check_read(sql: str) -> None:
    """Reject anything but one SELECT (or WITH ... SELECT) statement."""
    body = sql.strip().rstrip(";")
    if not _READ_START.match(body) or ";" in body:
        raise OlapError("only a single SELECT statement may be run as a query")


def scope_to_tenant(sql: str, params: Params | None, tenant: str) -> dict[str, Any]:
    """Bind `tenant` into a reader's query, refusing SQL that does not filter on it.

    The tenant comes from the caller's credentials; whatever the request carried under that
    name is overwritten, so no client can read another tenant's rows.
    """
    if not subjects.valid_tenant(tenant):
        raise OlapError(f"invalid tenant {tenant!r}")
    if TENANT_PLACEHOLDER not in sql:
        raise OlapError(f"tenant-scoped queries must filter on {TENANT_PLACEHOLDER}")
    check_read(sql)
    bound = dict(params or {})
    bound["tenant"] = tenant
    return bound


PURGE_INTERVAL_S = 1.0

_MIB = 1024 * 1024
# The embedded engine's caches and limits. Its defaults suit a server with the machine to
# itself (mark and primary-index caches of 5 GiB each, memory up to 90 % of RAM); embedded in
# the replicator it gets small caches (this store's reads are a dashboard's, over recent
# parts), a ceiling on what it may allocate (past it a query or an insert fails and the
# replicator naks and retries rather than grow) and two threads per query. These go to the
# engine as start-up arguments: server-wide ones for the process, query-level ones for the
# session. docs/operations.md ("Memory") lists what each bounds.
CHDB_SETTINGS: dict[str, int] = {
    "max_server_memory_usage": 512 * _MIB,
    "max_memory_usage": 256 * _MIB,  # per query (a log search, a stats query)
    "mark_cache_size": 32 * _MIB,
    "index_mark_cache_size": 8 * _MIB,
    "primary_index_cache_size": 32 * _MIB,
    "uncompressed_cache_size": 0,
    "index_uncompressed_cache_size": 0,
    "compiled_expression_cache_size": 16 * _MIB,
    "query_condition_cache_size": 16 * _MIB,
    "vector_similarity_index_cache_size": 0,
    "max_threads": 2,
    "max_insert_threads": 1,
}


# Path fragments of the shared libraries the embedded engine loads.
ENGINE_LIBRARIES = ("/chdb/", "/pyarrow/", "/numpy/", "/numpy.libs/")


def chdb_connection(path: str | Path, settings: Mapping[str, int] = CHDB_SETTINGS) -> str:
    """chDB's connection string: the data path, then the engine's settings."""
    return f"{path}?{urlencode(dict(settings))}" if settings else str(path)


class ChdbBackend:
    """chDB in-process. Calls run in a worker thread: chDB releases the GIL while it works."""

    def __init__(self, path: str | Path) -> None:
        from chdb import session  # imported lazily: server deployments never load the engine

        Path(path).mkdir(parents=True, exist_ok=True)
        self._session: Any = session.Session(chdb_connection(path))  # type: ignore[no-untyped-call]
        # One statement at a time keeps inserts from interleaving with DDL on the one engine.
        self._lock = threading.Lock()
        self._purged_at = time.monotonic()

    def _run(self, sql: str, params: Params | None = None) -> Any:
        if self._session is None:
            raise OlapError("chDB backend is closed")
        with self._lock:
            try:
                if params:
                    return self._session.query(sql, "JSONEachRow", params=dict(params))
                return self._session.query(sql, "JSONEachRow")
            except Exception as exc:
                raise OlapError(str(exc)) from exc

    async def execute(self, sql: str) -> None:
        await asyncio.to_thread(self._run, sql)

    async def insert(self, table: str, rows: Sequence[Row]) -> None:
        if rows:
            body = encode_rows(rows).decode()
            await asyncio.to_thread(self._insert, f"INSERT INTO {table} FORMAT JSONEachRow\n{body}")

    def _insert(self, sql: str) -> None:
        self._run(sql)
        # The engine's allocator keeps freed pages (insert buffers, merges) for reuse; in a
        # process that also runs Python they only inflate RSS. Hand them back now and then.
        now = time.monotonic()
        if now - self._purged_at >= PURGE_INTERVAL_S:
            self._purged_at = now
            self._run("SYSTEM JEMALLOC PURGE")
            # Likewise the C heap the Python side builds insert bodies in.
            memory.trim_heap()

    async def query(self, sql: str, params: Params | None = None) -> list[Row]:
        check_read(sql)
        # chDB's session has no per-query settings argument; check_read is the guard here and
        # 64-bit integers are already unquoted by default in chDB.
        result = await asyncio.to_thread(self._run, sql, params)
        return decode_rows(result.bytes())

    def release_startup_pages(self) -> int:
        """Give back the library pages read only while the engine started (KiB resident there
        before); see libs/common/memory.py. The replicator calls it once it is up. chDB's
        Python package also imports pyarrow (and with it numpy), which the replicator never
        uses: their pages go too."""
        return sum(memory.drop_clean_library_pages(marker) for marker in ENGINE_LIBRARIES)

    async def close(self) -> None:
        if self._session is not None:
            with self._lock:
                self._session.close()
                self._session = None


class ClickHouseBackend:
    """A clickhouse-connect client (HTTP to a server, or its chDB interface)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def from_url(cls, url: str) -> ClickHouseBackend:
        """`url` is a clickhouse-connect DSN, e.g. http://user:pass@clickhouse:8123."""
        import clickhouse_connect

        return cls(clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False))

    async def execute(self, sql: str) -> None:
        await asyncio.to_thread(self._call, self._client.command, sql)

    async def insert(self, table: str, rows: Sequence[Row]) -> None:
        if rows:
            await asyncio.to_thread(
                self._call, self._client.raw_insert, table, None, encode_rows(rows),
                None, "JSONEachRow",
            )

    async def query(self, sql: str, params: Params | None = None) -> list[Row]:
        check_read(sql)
        raw = await asyncio.to_thread(
            self._call, self._client.raw_query, sql, dict(params or {}), READ_SETTINGS,
            "JSONEachRow",
        )
        return decode_rows(raw)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    @staticmethod
    def _call(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            raise OlapError(str(exc)) from exc


def chdb_path(settings: Settings) -> Path:
    return settings.data_path / "chdb"


def open_backend(settings: Settings) -> OlapBackend:
    """The store this deployment writes to: a server when configured, else chDB on data_dir."""
    if settings.clickhouse_url:
        return ClickHouseBackend.from_url(settings.clickhouse_url)
    return ChdbBackend(chdb_path(settings))


async def ensure_schema(backend: OlapBackend) -> None:
    for statement in SCHEMA:
        await backend.execute(statement)


# --- reads over NATS (embedded mode) --------------------------------------------------


class QueryRequest(msgspec.Struct, kw_only=True):
    sql: str
    params: dict[str, Any] = {}
    tenant: str


class QueryReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    rows: list[Row] = []
    error: str = ""


QUERY_REQUEST_DECODER = msgspec.msgpack.Decoder(QueryRequest)
QUERY_REPLY_DECODER = msgspec.msgpack.Decoder(QueryReply)
_MSGPACK = msgspec.msgpack.Encoder()


async def answer_query(backend: OlapBackend, data: bytes) -> bytes:
    """The replicator's side of `ratchet.olap.query`: scope, run, reply rows or an error."""
    try:
        req = QUERY_REQUEST_DECODER.decode(data)
        params = scope_to_tenant(req.sql, req.params, req.tenant)
        rows = await backend.query(req.sql, params)
        return _MSGPACK.encode(QueryReply(rows=rows))
    except (OlapError, msgspec.DecodeError) as exc:
        return _MSGPACK.encode(QueryReply(error=str(exc)[:2000]))


class OlapClient:
    """Tenant-scoped reads for other services.

    With a ClickHouse server it queries directly; in embedded mode it asks the replicator,
    which owns the chDB directory, over NATS request/reply.
    """

    def __init__(
        self, settings: Settings, nc: NATS | None = None, *, timeout_s: float = 10.0
    ) -> None:
        self._timeout_s = timeout_s
        self._nc = nc
        self._url = settings.clickhouse_url
        self._backend: OlapBackend | None = None
        if not self._url and nc is None:
            raise ValueError("embedded OLAP needs a NATS connection to reach the replicator")

    async def query(self, sql: str, params: Params | None, *, tenant: str) -> list[Row]:
        bound = scope_to_tenant(sql, params, tenant)
        if self._url:
            if self._backend is None:
                # Connected on first use: clickhouse-connect probes the server when created,
                # and the API must start (and serve everything else) while ClickHouse is down.
                try:
                    self._backend = await asyncio.to_thread(ClickHouseBackend.from_url, self._url)
                except Exception as exc:
                    raise OlapError(f"cannot reach ClickHouse: {exc}") from exc
            return await self._backend.query(sql, bound)
        assert self._nc is not None
        request = _MSGPACK.encode(QueryRequest(sql=sql, params=bound, tenant=tenant))
        try:
            msg = await self._nc.request(subjects.OLAP_QUERY, request, timeout=self._timeout_s)
        except Exception as exc:  # no responder, timeout, connection closed
            raise OlapError(f"OLAP query via replicator failed: {exc!r}") from exc
        reply = QUERY_REPLY_DECODER.decode(msg.data)
        if reply.error:
            raise OlapError(reply.error)
        return reply.rows

    async def close(self) -> None:
        if self._backend is not None:
            await self._backend.close()
