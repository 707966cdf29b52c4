"""What every command shares: the client built from options and env, exit codes, errors,
JSON and table output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ratchet.client import Ratchet
from ratchet.errors import ApiError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Exit(IntEnum):
    """What `ratchet` exits with; scripts may rely on these."""

    OK = 0
    FAILED = 1  # the API refused the request, could not be reached, or a run failed
    USAGE = 2  # bad arguments or input (also click's own usage errors)
    NOT_FOUND = 3
    AUTH = 4  # no token, an unknown or revoked one, or a missing scope


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 API error or failed run, 2 usage, 3 not found, 4 auth "
    "(missing, unknown or revoked token, or a missing scope)."
)


class CliError(Exception):
    """An error to print as one line and exit with `code`."""

    def __init__(self, message: str, code: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        self.code = code


def api_exit(exc: ApiError) -> Exit:
    if exc.status == 404:
        return Exit.NOT_FOUND
    if exc.status in (401, 403):
        return Exit.AUTH
    if exc.status in (400, 413, 422):
        return Exit.USAGE
    return Exit.FAILED


def api_message(exc: ApiError) -> str:
    detail = exc.detail
    # Litestar's validation errors put the useful part (which field, why) in `extra`: a list
    # of {"key", "message", "source"}, shown as "key: message".
    extra = exc.extra
    if isinstance(extra, list) and extra and all(isinstance(x, dict) and "message" in x for x in extra):
        reasons = "; ".join(
            f"{x['key']}: {x['message']}" if x.get("key") else str(x["message"]) for x in extra
        )
        detail = f"{detail}: {reasons}"
    elif extra:
        detail = f"{detail}: {json.dumps(extra, separators=(',', ':'))}"
    return f"{detail} (HTTP {exc.status})"


@dataclass
class Settings:
    """The root options, shared with subcommands through the click context."""

    api_url: str | None
    token: str | None
    grpc_addr: str | None
    json_output: bool

    def client(self) -> Ratchet:
        client = Ratchet(token=self.token, api_url=self.api_url, grpc_addr=self.grpc_addr)
        if not client.config.token:
            raise CliError("no API token: set RATCHET_TOKEN or pass --token", Exit.AUTH)
        return client


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings), "the root callback sets the settings"
    return obj


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")
]


def wants_json(ctx: typer.Context, flag: bool) -> bool:
    return flag or settings(ctx).json_output


def print_json(value: Any) -> None:
    # Plain print, not rich: the output must be exactly the JSON, never wrapped or styled.
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


# `--wide` (anywhere on the command line): tables print every cell in full on a terminal too.
WIDE = {"on": False}
# Wide enough that no cell is ever cut; the table itself is only as wide as its content.
_UNCUT = Console(highlight=False, soft_wrap=True, width=100_000)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
    """A table on stdout. On a terminal it fits the window (long cells are cut with "…")
    unless `--wide`; piped or redirected, every cell is printed in full, so ids can be pasted
    into the next command."""
    t = Table(*columns, title=title, show_lines=False, header_style="bold")
    for row in rows:
        # Cells hold user data (names, messages): shown as written, never read as markup.
        t.add_row(*("" if v is None else escape(str(v)) for v in row))
    (_UNCUT if WIDE["on"] or not out.is_terminal else out).print(t)


def parse_json(raw: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}", Exit.USAGE) from None


def parse_pairs(pairs: list[str] | None, what: str) -> dict[str, str]:
    """KEY=VALUE options into a dict."""
    result: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{what} must look like KEY=VALUE, got {pair!r}", Exit.USAGE)
        result[key] = value
    return result


def fail(message: str, code: Exit = Exit.FAILED) -> NoReturn:
    raise CliError(message, code)


def short_time(iso: str | None) -> str:
    """An ISO timestamp without the sub-second part and offset, for tables."""
    if not iso:
        return ""
    return iso.replace("T", " ")[:19]
