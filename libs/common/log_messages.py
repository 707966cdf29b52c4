"""Wire schemas of what tasks say while they run (msgpack), published by the dispatchers.

- `LogBatch` on `subjects.task_logs(tenant)` (`log.<tenant>`, stream LOG): consecutive lines of
  one task attempt. The replicator projects them into ClickHouse `task_logs`, keyed by
  (tenant, task id, attempt, seq), so a line published twice is stored once.
- `StreamChunk` on `subjects.run_chunks(tenant, run_id)` (`chunk.<tenant>.<run id>`, stream
  CHUNK): one chunk per message, read by the API's `/runs/{id}/stream` from the first.
"""

from __future__ import annotations

from typing import Literal

import msgspec

ChunkType = Literal["text", "json", "bytes"]
CHUNK_TYPES: frozenset[str] = frozenset({"text", "json", "bytes"})
LOG_LEVELS: frozenset[str] = frozenset({"debug", "info", "warning", "error", "critical"})
# The replicator's durable consumer of stream LOG. Its ack floor is how far the log store has
# caught up: the API reads a finished run's log through it (read-your-writes).
LOG_REPLICATOR_DURABLE = "replicator-logs"


class LogLine(msgspec.Struct, kw_only=True, array_like=True):
    seq: int
    ts_ms: int
    level: str
    message: str


class LogBatch(msgspec.Struct, kw_only=True):
    run_id: str
    task_id: str
    task_name: str
    workflow: str
    attempt: int
    lines: list[LogLine]


class StreamChunk(msgspec.Struct, kw_only=True):
    task_id: str
    task_name: str
    attempt: int
    seq: int
    ts_ms: int
    type: ChunkType
    data: bytes


LOG_BATCH_DECODER = msgspec.msgpack.Decoder(LogBatch)
STREAM_CHUNK_DECODER = msgspec.msgpack.Decoder(StreamChunk)
_ENCODER = msgspec.msgpack.Encoder()


def encode(message: LogBatch | StreamChunk) -> bytes:
    return _ENCODER.encode(message)


def log_batch_id(batch: LogBatch) -> str:
    """Deterministic Nats-Msg-Id: a retried publish of the same lines is dropped by JetStream."""
    first, last = batch.lines[0].seq, batch.lines[-1].seq
    return f"log:{batch.task_id}:{batch.attempt}:{first}-{last}"


def chunk_id(chunk: StreamChunk) -> str:
    return f"chunk:{chunk.task_id}:{chunk.attempt}:{chunk.seq}"
