"""The root `ratchet` command: global options, subcommand groups, and turning every error into
one line on stderr and a meaningful exit code."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import grpc
import httpx
import typer
from typer.core import TyperArgument

from ratchet.cli import _admin, _hooks, _runs, _tokens, _workflows
from ratchet.cli._common import (
    EXIT_CODES_HELP,
    WIDE,
    CliError,
    Exit,
    Settings,
    api_exit,
    api_message,
)
from ratchet.cli._worker import worker
from ratchet.errors import ApiError, ApiUnreachable, ConfigError

app = typer.Typer(
    name="ratchet",
    help="Ratchet from the command line: runs, workflows, events, tokens, limits, workers.\n\n"
         "Configuration: RATCHET_TOKEN, RATCHET_API_URL and RATCHET_GRPC_ADDR (as for the SDK), "
         "or the options below. Every command takes --json for scripts.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(_runs.app, name="runs")
app.add_typer(_workflows.workflows, name="workflows")
app.add_typer(_workflows.events, name="events")
app.add_typer(_tokens.tokens, name="tokens")
app.add_typer(_tokens.limits, name="limits")
app.command("audit")(_tokens.audit)
app.command("worker")(worker)
app.add_typer(_admin.admin, name="admin")
app.add_typer(_hooks.webhooks, name="webhooks")
app.add_typer(_hooks.alerts, name="alerts")


@app.callback()
def root(
    ctx: typer.Context,
    api_url: Annotated[str | None, typer.Option(
        envvar="RATCHET_API_URL", show_envvar=True, help="REST API base URL.")] = None,
    token: Annotated[str | None, typer.Option(
        envvar="RATCHET_TOKEN", show_envvar=True, show_default=False, help="API token.")] = None,
    grpc_addr: Annotated[str | None, typer.Option(
        envvar="RATCHET_GRPC_ADDR", show_envvar=True, help="Dispatcher address (workers).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON output for every command.")] = False,
    wide: Annotated[bool, typer.Option(
        "--wide", help="Print table cells in full on a terminal too (they always are when "
        "piped). Accepted after any command.")] = False,
) -> None:
    if wide:
        WIDE["on"] = True
    ctx.obj = Settings(api_url=api_url, token=token, grpc_addr=grpc_addr, json_output=json_)


def _fail(message: str, code: Exit) -> int:
    # One line, no traceback: the message is for a person, the exit code for a script.
    sys.stderr.write(f"error: {message}\n")
    return int(code)


def _readable_usage(command: Any) -> None:
    """Name arguments in usage lines the usual way (`WORKFLOW`, `[RUN_IDS]...`), not as
    typer's `{workflow}`."""
    for param in command.params:
        if isinstance(param, TyperArgument):
            name = (param.metavar or param.name or "").upper()
            piece = (name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else "")
            param.get_usage_pieces = lambda ctx, piece=piece: [piece]  # type: ignore[method-assign,misc]
    for sub in getattr(command, "commands", {}).values():
        _readable_usage(sub)


def _take_wide(argv: list[str]) -> list[str]:
    """`--wide` may come anywhere before `--` (`ratchet runs list --wide`): it is a global
    switch for tables, so it is taken out here."""
    end = argv.index("--") if "--" in argv else len(argv)
    if "--wide" in argv[:end]:
        WIDE["on"] = True
        return [a for i, a in enumerate(argv) if not (a == "--wide" and i < end)]
    return argv


def run(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv` (default: sys.argv); the exit code."""
    command = typer.main.get_command(app)
    _readable_usage(command)
    argv = _take_wide(list(sys.argv[1:] if argv is None else argv))
    try:
        # Standalone: click reports usage errors itself (exit 2) and turns typer.Exit into
        # SystemExit; what is left to catch here are the errors of the work itself.
        command.main(args=argv, prog_name="ratchet", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except ApiError as exc:
        return _fail(api_message(exc), api_exit(exc))
    except ApiUnreachable as exc:
        return _fail(str(exc), Exit.FAILED)
    except ConfigError as exc:
        return _fail(str(exc), Exit.AUTH)
    except httpx.TransportError as exc:
        return _fail(f"cannot reach the API: {exc}", Exit.FAILED)
    except grpc.aio.AioRpcError as exc:
        code = Exit.AUTH if exc.code() == grpc.StatusCode.UNAUTHENTICATED else Exit.FAILED
        return _fail(f"dispatcher: {exc.code().name}: {exc.details()}", code)
    except ValueError as exc:
        # The SDK refuses bad arguments with ValueError before any request is made.
        return _fail(str(exc), Exit.USAGE)
    except KeyboardInterrupt:
        return 130
    return 0


def main() -> None:
    sys.exit(run())
