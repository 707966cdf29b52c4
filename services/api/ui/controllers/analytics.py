"""Analytics charts: throughput, failure rate and latency per workflow, from the OLAP store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from litestar import Controller, Response, get
from litestar.exceptions import HTTPException

from services.api.auth import Api
from services.api.repos import RepoError
from services.api.schemas.analytics import MinuteThroughput
from services.api.ui import commands
from services.api.ui.render import page
from services.api.ui.session import UiSession
from services.api.ui.svg import hbars, stacked_bars

RANGES = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "6h": timedelta(hours=6),
          "24h": timedelta(days=1), "7d": timedelta(days=7)}
OUTCOME_CSS = {"succeeded": "s-ok", "failed": "s-failed", "timed out": "s-timeout",
               "cancelled": "s-cancelled"}


MAX_BARS = 60


def _buckets(
    minutes: list[MinuteThroughput], start: datetime, span: timedelta
) -> tuple[list[str], dict[str, list[float]], str]:
    """Per-minute counts summed into at most MAX_BARS equal buckets covering the whole range,
    empty ones included, so the time axis reads evenly."""
    step_min = max(1, -(-int(span.total_seconds() // 60) // MAX_BARS))
    step = timedelta(minutes=step_min)
    first = start.replace(second=0, microsecond=0)
    count = int(span / step) + 1
    series: dict[str, list[float]] = {k: [0.0] * count for k in OUTCOME_CSS}
    for m in minutes:
        i = int((datetime.fromisoformat(m.minute) - first) / step)
        if 0 <= i < count:
            series["succeeded"][i] += m.succeeded
            series["failed"][i] += m.failed
            series["timed out"][i] += m.timed_out
            series["cancelled"][i] += m.cancelled
    fmt = "%H:%M" if span <= timedelta(days=1) else "%m-%d %H:%M"
    labels = [(first + i * step).strftime(fmt) for i in range(count)]
    per = "minute" if step_min == 1 else f"{step_min} minutes"
    return labels, series, per


class AnalyticsPages(Controller):
    path = "/ui/analytics"

    @get("/")
    async def analytics(self, session: UiSession, api: Api, range: str = "1h") -> Response[str]:
        span = RANGES.get(range, RANGES["1h"])
        until = datetime.now(UTC)
        try:
            counts, latency, through = await commands.analytics(
                api, session.tenant, until - span, until
            )
        except (HTTPException, RepoError) as exc:
            detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
            return page("analytics.html", session=session, nav="analytics", error=detail,
                        ranges=list(RANGES), range=range, charts=[], table=[])
        labels, series, per = _buckets(through.minutes, until - span, span)
        charts = [stacked_bars(labels, series, f"Finished task attempts per {per}",
                               OUTCOME_CSS)] if through.minutes else []
        per_wf = latency.workflows
        if per_wf:
            charts.append(hbars([(w.workflow or "?", w.duration_ms.p95 or 0) for w in per_wf],
                                "p95 task duration per workflow", "ms", "s-running"))
            charts.append(hbars([(w.workflow or "?", w.wait_ms.p95 or 0) for w in per_wf],
                                "p95 queue wait per workflow", "ms", "s-queued"))
        runs: dict[str, dict[str, int]] = {}
        for c in counts.counts:
            runs.setdefault(c.workflow, {})[c.status] = c.runs
        table = []
        for w in per_wf:
            rate = w.failed / w.finished * 100 if w.finished else 0.0
            table.append({"workflow": w.workflow, "finished": w.finished, "failed": w.failed,
                          "failure_rate": rate, "p50": w.duration_ms.p50, "p95": w.duration_ms.p95,
                          "wait50": w.wait_ms.p50, "wait95": w.wait_ms.p95,
                          "runs": runs.get(w.workflow or "", {})})
        return page("analytics.html", session=session, nav="analytics", error=None,
                    ranges=list(RANGES), range=range, charts=charts, table=table,
                    overall=latency.overall)
