"""Jinja2 rendering of the dashboard's pages and fragments.

Templates are rendered here rather than through Litestar's `template_config` so that the
dashboard stays one router the app registers, with no app-wide settings of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar import Response
from litestar.enums import MediaType

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
HTMX_JS = "htmx-2.0.11.min.js"
HTMX_SSE_JS = "htmx-ext-sse-2.2.4.min.js"


def pretty_json(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def brief_json(value: Any) -> str:
    """A value as it reads in JSON (null, ["read"]), strings as they are."""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def short_time(value: str | datetime | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS' UTC, '—' for none."""
    if value is None:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def precise_time(value: str | None) -> str:
    """An ISO timestamp as 'HH:MM:SS.mmm' UTC (within one run the date adds nothing)."""
    if value is None:
        return "—"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def ms_time(value: int) -> str:
    return short_time(datetime.fromtimestamp(value / 1000, UTC))


def duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return "—"
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["pretty_json"] = pretty_json
_env.filters["short_time"] = short_time
_env.filters["brief_json"] = brief_json
_env.filters["as_time"] = datetime.fromisoformat
_env.filters["ms_time"] = ms_time
_env.filters["precise_time"] = precise_time
_env.globals["duration"] = duration
_env.globals["htmx_js"] = HTMX_JS
# What base.html reads on every page; a page passes its own values to override them.
_env.globals.update(notice=None, session=None, nav="", error=None)
_env.globals["htmx_sse_js"] = HTMX_SSE_JS


def render(name: str, **context: Any) -> str:
    return _env.get_template(name).render(**context)


def page(name: str, status_code: int = 200, **context: Any) -> Response[str]:
    return Response(render(name, **context), media_type=MediaType.HTML, status_code=status_code)


def macro(template: str, name: str, *args: Any, **kwargs: Any) -> str:
    """One macro of a template rendered alone: the fragments the live streams push."""
    return str(getattr(_env.get_template(template).module, name)(*args, **kwargs))
