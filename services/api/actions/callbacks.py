"""Run callbacks: when a run ends, POST its id, status and outputs to the run's `callback_url`
and its workflow's `on_finish_webhook`.

The notifier (services/api/notify) calls `queue_run_callbacks` with the runs of one batch of
state changes; the deliveries are rows of the outgoing queue whose ids derive from the run and
the URL, so the same ending seen twice (a redelivered batch) queues nothing new.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from libs.common.payloads import maybe_ref
from services.api.repos.deliveries import NewDelivery, RunEnd
from services.api.state import ApiState

_JSON = msgspec.json.Encoder()
EVENT = "run.finished"


def delivery_id(prefix: str, run_id: str, url: str) -> str:
    return f"{prefix}:{run_id}:{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def _output(raw: bytes | None) -> Any:
    """A task's output as the callback carries it: the value, or for an offloaded one its
    reference (key, sha256, size and the API path that serves it)."""
    if raw is None:
        return None
    ref = maybe_ref(raw)
    if ref is not None:
        return {"$ref": {"key": ref.key, "sha256": ref.sha256, "size": ref.size,
                         "path": f"/payloads/blobs/{ref.key}?size={ref.size}"}}
    return msgspec.json.decode(raw) if raw else None


async def callback_body(api: ApiState, tenant: str, end: RunEnd) -> bytes:
    """The JSON body announcing that a run ended."""
    records = await api.runs.get(tenant, end.run_id)
    output: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    finished_at = None
    if records is not None:
        run, tasks, attempts = records
        finished_at = run["finished_at"].isoformat() if run["finished_at"] else None
        last_error: dict[str, Any] = {}
        for a in attempts:
            if a["error"]:
                last_error[a["task_id"]] = msgspec.json.decode(a["error"])
        for t in tasks:
            raw = bytes(t["output"]) if t["output"] is not None else None
            if t["status"] == "SUCCEEDED":
                output[t["name"]] = _output(raw)
            elif t["status"] in ("FAILED", "TIMED_OUT") and t["id"] in last_error:
                errors[t["name"]] = last_error[t["id"]]
    return _JSON.encode({
        "event": EVENT, "tenant": tenant, "run_id": end.run_id, "workflow": end.workflow,
        "status": end.status, "finished_at": finished_at, "output": output, "errors": errors,
    })


async def queue_run_callbacks(api: ApiState, tenant: str, run_ids: list[str]) -> int:
    """Queue the callbacks of these ended runs; answers how many deliveries are new."""
    ends = await api.deliveries.run_ends(tenant, run_ids)
    items: list[NewDelivery] = []
    for end in ends:
        urls = {u for u in (end.callback_url, end.on_finish_webhook) if u}
        if not urls:
            continue
        body = await callback_body(api, tenant, end)
        for url in sorted(urls):
            items.append(NewDelivery(tenant, delivery_id("cb", end.run_id, url), "callback",
                                     "webhook", url, end.run_id, None, body))
    return await api.deliveries.enqueue(items)
