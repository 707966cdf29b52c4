"""Recent events and what matching made of them, from the OLAP projection.

Every query filters on `{tenant:String}`, bound from the caller's token by OlapClient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from libs.common.olap import EVENTS, MATCHES, OlapClient, OlapError
from services.api.repos.errors import Unavailable

MAX_EVENT_RUNS = 1000

RECENT_EVENTS_SQL = f"""
SELECT key, event_id, scope, payload, toUnixTimestamp64Milli(ts) AS ts_ms
FROM {EVENTS} FINAL
WHERE tenant = {{tenant:String}}
ORDER BY ts DESC
LIMIT {{limit:UInt32}}
"""

EVENT_MATCHES_SQL = f"""
SELECT event_id, workflow, matched, run_id, detail
FROM {MATCHES} FINAL
WHERE tenant = {{tenant:String}} AND has(splitByChar(',', {{ids:String}}), event_id)
ORDER BY workflow
"""

EVENT_RUNS_SQL = f"""
SELECT run_id FROM {MATCHES} FINAL
WHERE tenant = {{tenant:String}} AND event_id = {{event_id:String}} AND matched = 1
LIMIT {MAX_EVENT_RUNS}
"""


@dataclass
class EventRow:
    """An event with the outcome of matching it against each workflow listening to its key."""

    key: str
    event_id: str
    scope: str
    payload: str
    ts_ms: int
    matches: list[dict[str, Any]] = field(default_factory=list)


class EventRepo:
    def __init__(self, olap: OlapClient | None) -> None:
        self._olap = olap

    async def _query(
        self, tenant: str, sql: str, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        if self._olap is None:
            raise Unavailable("analytics store not configured")
        try:
            rows: list[dict[str, Any]] = await self._olap.query(sql, params, tenant=tenant)
        except OlapError as exc:
            raise Unavailable(f"analytics store unavailable: {exc}") from exc
        return rows

    async def recent(self, tenant: str, limit: int = 50) -> list[EventRow]:
        """The newest events, each with its match outcomes."""
        rows = await self._query(tenant, RECENT_EVENTS_SQL, {"limit": limit})
        events = [
            EventRow(key=r["key"], event_id=r["event_id"], scope=r["scope"],
                     payload=r["payload"], ts_ms=int(r["ts_ms"]))
            for r in rows
        ]
        if events:
            by_id = {e.event_id: e for e in events}
            for m in await self._query(tenant, EVENT_MATCHES_SQL, {"ids": ",".join(by_id)}):
                event = by_id.get(m["event_id"])
                if event is not None:
                    detail = _loads(m.get("detail"))
                    event.matches.append({
                        "workflow": m["workflow"], "matched": bool(m["matched"]),
                        "run_id": m["run_id"], "outcome": detail.get("outcome", ""),
                        "filter_id": detail.get("filter_id", ""),
                        "error": detail.get("error", ""),
                    })
        return events

    async def runs_of(self, tenant: str, event_id: str) -> list[str]:
        """Ids of the runs the event started (up to MAX_EVENT_RUNS)."""
        rows = await self._query(tenant, EVENT_RUNS_SQL, {"event_id": event_id})
        return [r["run_id"] for r in rows if r["run_id"]]


def _loads(raw: Any) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}
