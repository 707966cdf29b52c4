"""Stream messages → analytical rows. Pure functions, so the mapping is testable on its own.

Every row carries the message's own timestamps (never the replicator's clock) so that a
redelivered message yields a byte-identical row, which the ReplacingMergeTree tables collapse.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.msg import Msg

from libs.common.log_messages import LogBatch
from libs.common.messages import RunStateChanged, TaskStateChanged
from libs.common.olap import Row, ch_time, run_version
from libs.common.payloads import PayloadError, maybe_ref
from libs.common.statuses import RUN_TERMINAL, TASK_TERMINAL
from libs.common.subjects import Header

MAX_PAYLOAD_CHARS = 64 * 1024  # evt payloads above this are truncated in the projection
_GENERIC = msgspec.msgpack.Decoder()
_JSON = msgspec.json.Encoder()


def task_event_row(change: TaskStateChanged) -> Row:
    # Queue wait is known once an attempt starts (RUNNING), duration once it ends; -1 keeps
    # the columns non-Nullable, and every query filters on >= 0.
    wait_ms = -1
    if change.state == "RUNNING" and change.started_ms and change.queued_ms:
        wait_ms = max(0, change.started_ms - change.queued_ms)
    duration_ms = -1
    if change.state in TASK_TERMINAL and change.started_ms:
        duration_ms = max(0, change.ts_ms - change.started_ms)
    return {
        "tenant": change.tenant,
        "run_id": change.run_id,
        "task_id": change.task_id,
        "task_name": change.task_name,
        "workflow": change.workflow,
        "attempt": change.attempt,
        "state": change.state,
        "ts": ch_time(change.ts_ms),
        "worker_id": change.worker_id,
        "wait_ms": wait_ms,
        "duration_ms": duration_ms,
        "error_type": change.error.type if change.error else "",
        "error_message": change.error.message[:4000] if change.error else "",
    }


def run_row(change: RunStateChanged) -> Row:
    created_ms = change.created_ms or change.ts_ms
    terminal = change.status in RUN_TERMINAL
    return {
        "tenant": change.tenant,
        "run_id": change.run_id,
        "workflow": change.workflow,
        "status": change.status,
        "created_at": ch_time(created_ms),
        "updated_at": ch_time(change.ts_ms),
        "duration_ms": max(0, change.ts_ms - created_ms) if terminal else -1,
        "version": run_version(change.ts_ms, change.status),
    }


def log_rows(tenant: str, batch: LogBatch) -> list[Row]:
    """One row per line; the tenant comes from the subject, which stream permissions guard."""
    return [
        {
            "tenant": tenant,
            "run_id": batch.run_id,
            "task_id": batch.task_id,
            "task_name": batch.task_name,
            "workflow": batch.workflow,
            "attempt": batch.attempt,
            "seq": line.seq,
            "ts": ch_time(line.ts_ms),
            "level": line.level,
            "message": line.message,
        }
        for line in batch.lines
    ]


def _stream_ms(msg: Msg) -> int:
    return int(msg.metadata.timestamp.timestamp() * 1000)


def _fallback_id(msg: Msg) -> str:
    headers = msg.headers or {}
    return headers.get(Header.MSG_ID.value) or f"seq:{msg.metadata.sequence.stream}"


def event_row(msg: Msg) -> Row | None:
    """`evt.<tenant>.<key>` with a JSON body; None for what cannot be an event."""
    parts = msg.subject.split(".", 2)
    if len(parts) < 3:
        return None
    try:
        ref = maybe_ref(msg.data)
    except PayloadError:
        return None
    if ref is not None:
        # A payload the API offloaded: OLAP keeps a marker naming the blob, never the blob
        # itself (up to RATCHET_MAX_PAYLOAD_BYTES) in a row.
        payload = _JSON.encode({"$ref": ref.key, "size": ref.size}).decode()
    else:
        try:
            payload = msg.data.decode()
        except UnicodeDecodeError:
            return None
    headers = msg.headers or {}
    return {
        "tenant": parts[1],
        "key": parts[2],
        "event_id": headers.get(Header.EVENT_ID.value) or _fallback_id(msg),
        "scope": headers.get(Header.SCOPE.value, ""),
        "payload": payload[:MAX_PAYLOAD_CHARS],
        "ts": ch_time(_stream_ms(msg)),
    }


def match_rows(msg: Msg) -> list[Row]:
    """Match outcomes (`task.<tenant>.match`): a msgpack map whose schema belongs to the
    matcher — a MatchBatch of `records`, each one event with its `outcomes` list
    (libs.common.match_messages). Each outcome becomes a row (known fields lifted into columns,
    the outcome and the event's key and scope kept as JSON in `detail`), identified by
    (event id, position) so a re-recorded event collapses. A lone record, or a map without
    `outcomes`, is read the same way; anything that is not a map is skipped."""
    try:
        doc = _GENERIC.decode(msg.data)
    except msgspec.DecodeError:
        return []
    if not isinstance(doc, dict):
        return []
    records = doc.get("records")
    if not isinstance(records, list):
        return _record_rows(msg, doc)
    return [row for rec in records if isinstance(rec, dict) for row in _record_rows(msg, rec)]


def _record_rows(msg: Msg, doc: dict[str, Any]) -> list[Row]:
    # The subject, not the body, names the tenant: it is what stream permissions guard.
    tenant = msg.subject.split(".", 2)[1]
    ts_ms = _int(doc.get("ts_ms")) or _stream_ms(msg)
    event_id = str(doc.get("event_id") or "")
    outcomes = doc.get("outcomes")
    if not isinstance(outcomes, list):
        outcomes, shared = [doc], {}
    else:
        shared = {k: doc.get(k) for k in ("event_key", "scope")}
    base_id = f"match:{event_id}" if event_id else _fallback_id(msg)
    out: list[Row] = []
    for i, item in enumerate(outcomes):
        if not isinstance(item, dict):
            continue
        kind = item.get("outcome")
        matched = kind == "matched" if kind is not None else item.get("run_id") is not None
        out.append({
            "tenant": tenant,
            "msg_id": f"{base_id}:{i}" if len(outcomes) > 1 else base_id,
            "event_id": event_id or str(item.get("event_id") or ""),
            "workflow": str(item.get("workflow") or ""),
            "matched": 1 if matched else 0,
            "run_id": str(item.get("run_id") or ""),
            "detail": _JSON.encode(_jsonable({**shared, **item})).decode()[:MAX_PAYLOAD_CHARS],
            "ts": ch_time(ts_ms),
        })
    return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _jsonable(value: Any) -> Any:
    """msgpack may carry bytes and non-string keys that JSON cannot; make them strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value
