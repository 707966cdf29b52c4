"""Inline SVG drawn on the server: a workflow's DAG (layered layout) and simple charts.

No chart or graph library: a DAG of a few dozen tasks lays out well enough by depth (longest
path from a root) in columns, and the charts are bars and polylines on a fixed-size canvas, so
a live re-render never moves anything around.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

NODE_W, NODE_H, COL_GAP, ROW_GAP, PAD = 156, 38, 56, 18, 12

# Status -> CSS class; the colours themselves live in the stylesheet.
STATUS_CLASS = {
    "PENDING": "s-pending", "QUEUED": "s-queued", "ASSIGNED": "s-running",
    "RUNNING": "s-running", "SUCCEEDED": "s-ok", "FAILED": "s-failed",
    "TIMED_OUT": "s-failed", "CANCELLED": "s-cancelled", "SKIPPED": "s-skipped",
}


@dataclass(frozen=True)
class DagNode:
    name: str
    parents: tuple[str, ...]
    status: str  # "" when the task has no row yet (e.g. an on_failure task not reached)
    href: str = ""
    note: str = ""  # e.g. "on failure"


def _depths(nodes: Sequence[DagNode]) -> dict[str, int]:
    by_name = {n.name: n for n in nodes}
    depth: dict[str, int] = {}

    def visit(name: str, seen: frozenset[str]) -> int:
        if name in depth:
            return depth[name]
        node = by_name.get(name)
        parents = [p for p in (node.parents if node else ()) if p in by_name and p not in seen]
        d = 1 + max((visit(p, seen | {name}) for p in parents), default=-1)
        depth[name] = d
        return d

    for n in nodes:
        visit(n.name, frozenset())
    return depth


def dag_svg(nodes: Sequence[DagNode]) -> str:
    """The DAG left to right: one column per depth, edges from each parent to its child."""
    if not nodes:
        return '<p class="empty">This workflow has no tasks.</p>'
    depth = _depths(nodes)
    columns: dict[int, list[DagNode]] = {}
    for n in nodes:
        columns.setdefault(depth[n.name], []).append(n)
    pos: dict[str, tuple[int, int]] = {}
    for col, members in columns.items():
        for row, n in enumerate(members):
            pos[n.name] = (PAD + col * (NODE_W + COL_GAP), PAD + row * (NODE_H + ROW_GAP))
    width = PAD * 2 + (max(columns) + 1) * (NODE_W + COL_GAP) - COL_GAP
    height = PAD * 2 + max(len(m) for m in columns.values()) * (NODE_H + ROW_GAP) - ROW_GAP
    parts = [
        f'<svg class="dag" role="img" aria-label="task graph" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        '<defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7"'
        ' markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" class="edge-head"/>'
        "</marker></defs>",
    ]
    for n in nodes:
        x2, y2 = pos[n.name]
        for p in n.parents:
            if p not in pos:
                continue
            x1, y1 = pos[p]
            sx, sy, ex, ey = x1 + NODE_W, y1 + NODE_H // 2, x2, y2 + NODE_H // 2
            mid = (sx + ex) // 2
            parts.append(
                f'<path class="edge" d="M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}"'
                ' marker-end="url(#arrow)"/>'
            )
    for n in nodes:
        x, y = pos[n.name]
        cls = STATUS_CLASS.get(n.status, "s-none")
        label = escape(n.name if len(n.name) <= 18 else n.name[:17] + "…")
        sub = escape(n.note or (n.status.lower().replace("_", " ") if n.status else "not started"))
        box = (
            f'<g class="node {cls}" data-task="{escape(n.name)}">'
            f"<title>{escape(n.name)}: {escape(n.status or 'not started')}</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="{x + 10}" y="{y + 16}" class="node-name">{label}</text>'
            f'<text x="{x + 10}" y="{y + 31}" class="node-status">{sub}</text></g>'
        )
        if n.href:
            box = f'<a href="{escape(n.href)}">{box}</a>'
        parts.append(box)
    parts.append("</svg>")
    return "".join(parts)


CHART_W, CHART_H, AXIS_L, AXIS_B = 960, 220, 44, 22


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 < value:
        step *= 10
    for m in (1, 2, 5, 10):
        if value <= m * step:
            return m * step
    return 10 * step


def stacked_bars(
    labels: Sequence[str], series: Mapping[str, Sequence[float]], title: str,
    css: Mapping[str, str],
) -> str:
    """Bars stacked per label (e.g. attempts per minute by outcome), with a legend."""
    n = len(labels)
    totals = [sum(values[i] for values in series.values()) for i in range(n)]
    top = _nice_max(max(totals, default=0))
    plot_w, plot_h = CHART_W - AXIS_L - 8, CHART_H - AXIS_B - 8
    bar_w = plot_w / max(n, 1)
    parts = [_chart_open(title), _y_axis(top, plot_h)]
    for i in range(n):
        y: float = 8 + plot_h
        for name, values in series.items():
            h = values[i] / top * plot_h
            if h <= 0:
                continue
            y -= h
            parts.append(
                f'<rect class="{css.get(name, "")}" x="{AXIS_L + i * bar_w + 1:.1f}" y="{y:.1f}"'
                f' width="{max(bar_w - 2, 1):.1f}" height="{h:.1f}">'
                f"<title>{escape(labels[i])} {escape(name)}: {values[i]:g}</title></rect>"
            )
    parts.extend(_x_labels(labels, bar_w))
    parts.append(_legend(list(series), css))
    parts.append("</svg>")
    return "".join(parts)


def hbars(rows: Sequence[tuple[str, float]], title: str, unit: str, css: str) -> str:
    """One horizontal bar per row (e.g. p95 duration per workflow)."""
    height = 24 + 22 * max(len(rows), 1)
    top = _nice_max(max((v for _, v in rows), default=0))
    label_w = 150
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{CHART_W}"'
        f' height="{height}" viewBox="0 0 {CHART_W} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text class="chart-title" x="0" y="14">{escape(title)}</text>',
    ]
    for i, (name, value) in enumerate(rows):
        y = 24 + i * 22
        w = value / top * (CHART_W - label_w - 90)
        parts.append(
            f'<text class="axis" x="{label_w - 6}" y="{y + 14}" text-anchor="end">'
            f"{escape(name[:22])}</text>"
            f'<rect class="{css}" x="{label_w}" y="{y + 2}" width="{max(w, 1):.1f}" height="16"/>'
            f'<text class="axis" x="{label_w + w + 6:.1f}" y="{y + 14}">{value:,.0f} {unit}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _chart_open(title: str) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{CHART_W}"'
        f' height="{CHART_H + 22}" viewBox="0 -22 {CHART_W} {CHART_H + 22}"'
        ' xmlns="http://www.w3.org/2000/svg">'
        f'<text class="chart-title" x="0" y="-8">{escape(title)}</text>'
    )


def _y_axis(top: float, plot_h: float) -> str:
    out = []
    for frac in (0.0, 0.5, 1.0):
        y = 8 + plot_h - frac * plot_h
        out.append(
            f'<line class="grid" x1="{AXIS_L}" x2="{CHART_W - 8}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{AXIS_L - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{top * frac:g}</text>"
        )
    return "".join(out)


def _x_labels(labels: Sequence[str], bar_w: float) -> list[str]:
    if not labels:
        return []
    every = max(1, len(labels) // 6)
    return [
        f'<text class="axis" x="{AXIS_L + i * bar_w + bar_w / 2:.1f}" y="{CHART_H - 4}"'
        f' text-anchor="middle">{escape(labels[i])}</text>'
        for i in range(0, len(labels), every)
    ]


def _legend(names: list[str], css: Mapping[str, str]) -> str:
    out = []
    x = CHART_W - 8 - 96 * len(names)
    for i, name in enumerate(names):
        out.append(
            f'<rect class="{css.get(name, "")}" x="{x + i * 96}" y="-18" width="10" height="10"/>'
            f'<text class="axis" x="{x + i * 96 + 14}" y="-9">{escape(name)}</text>'
        )
    return "".join(out)
