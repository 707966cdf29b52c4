"""`ratchet runs ...`: trigger, list, inspect, wait for, cancel and replay runs; their logs and
streams."""

from __future__ import annotations

import enum
import json
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ratchet._admin_resources import WorkflowCatalog
from ratchet.cli._common import (
    CliError,
    Exit,
    JsonOpt,
    api_exit,
    api_message,
    err,
    out,
    parse_json,
    parse_pairs,
    print_json,
    settings,
    short_time,
    table,
    wants_json,
)
from ratchet.client import Ratchet
from ratchet.errors import ApiError
from ratchet.resources import TERMINAL, WAIT_CHUNK_S

app = typer.Typer(help="Trigger, inspect, cancel and replay runs; read their logs and streams.",
                  no_args_is_help=True)

RUN_STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
# The largest page the API lists; a bulk action by filter works on at most this many runs.
BULK_MAX = 1000

RunStatus = enum.Enum("RunStatus", {s: s for s in RUN_STATUSES}, type=str)  # type: ignore[misc]
# A choice: a bad value is refused with the valid ones listed (any case is accepted).
StatusOpt = Annotated[
    RunStatus | None,
    typer.Option("--status", "-s", case_sensitive=False, help=f"One of {', '.join(RUN_STATUSES)}."),
]
WorkflowOpt = Annotated[str | None, typer.Option("--workflow", "-w", help="Workflow name.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait for the run to end; exit 1 unless it succeeded.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits at most.")]


def _status(value: RunStatus | str | None) -> str | None:
    if value is None:
        return None
    return str(value.value if isinstance(value, enum.Enum) else value).upper()


def wait_for(client: Ratchet, run_id: str, timeout_s: float) -> dict[str, Any]:
    """Long-poll the run until it ends (or `timeout_s` passes); the last view of it."""
    deadline = time.monotonic() + timeout_s
    while True:
        wait = max(0.0, min(WAIT_CHUNK_S, deadline - time.monotonic()))
        run: dict[str, Any] = client.runs.get(run_id, wait_s=wait)
        if run["status"] in TERMINAL:
            return run
        if time.monotonic() >= deadline:
            raise CliError(f"run {run_id} is still {run['status']} after {timeout_s:g}s")


def _show_run(run: dict[str, Any]) -> None:
    out.print(f"[bold]{run['id']}[/]  {escape(run['workflow'])}  [bold]{run['status']}[/]")
    out.print(f"created {short_time(run.get('created_at'))}"
              + (f"  finished {short_time(run['finished_at'])}" if run.get("finished_at") else ""))
    table(
        ("task", "status", "attempt", "worker", "started", "finished"),
        ((t["name"], t["status"], t["attempt"], t.get("worker_id"),
          short_time(t.get("started_at")), short_time(t.get("finished_at")))
         for t in run.get("tasks", [])),
    )
    for name, error in (run.get("errors") or {}).items():
        # Error text is the task's own: never let it be read as rich markup.
        err.print(f"[red]{escape(name)}[/]: {escape(str(error.get('type')))}: "
                  f"{escape(str(error.get('message')))}")
    if run["status"] == "SUCCEEDED" and run.get("output"):
        out.print_json(json.dumps(run["output"], default=str))


def _finish(run: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(run)
    else:
        _show_run(run)
    if run["status"] != "SUCCEEDED":
        raise typer.Exit(Exit.FAILED)


@app.command("trigger")
def trigger(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(help="A registered workflow's name.")],
    input: Annotated[str, typer.Option("--input", "-i", help="The run input as JSON.")] = "{}",
    metadata: Annotated[list[str] | None, typer.Option(
        "--metadata", "-m", help="KEY=VALUE run metadata (repeatable).")] = None,
    priority: Annotated[int | None, typer.Option(min=1, max=3, help="1 (low) to 3 (high).")] = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
    json_: JsonOpt = False,
) -> None:
    """Start a run of WORKFLOW; print its id (with --wait: its outcome)."""
    as_json = wants_json(ctx, json_)
    body = parse_json(input, "--input")
    client = settings(ctx).client()
    created = WorkflowCatalog(client).trigger(
        workflow, body, metadata=parse_pairs(metadata, "--metadata"), priority=priority
    )
    if not wait:
        if as_json:
            print_json(created)
        else:
            out.print(created["run_id"])
        return
    _finish(wait_for(client, created["run_id"], timeout), as_json)


@app.command("list")
def list_runs(
    ctx: typer.Context,
    status: StatusOpt = None,
    workflow: WorkflowOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=BULK_MAX, help="At most this many runs.")] = 50,
    json_: JsonOpt = False,
) -> None:
    """The newest runs, optionally of one status and workflow."""
    runs = settings(ctx).client().runs.list(status=_status(status), workflow=workflow, limit=limit)
    if wants_json(ctx, json_):
        print_json(runs)
        return
    table(("id", "workflow", "status", "created", "finished"),
          ((r["id"], r["workflow"], r["status"], short_time(r["created_at"]),
            short_time(r.get("finished_at"))) for r in runs))


@app.command("get")
def get(
    ctx: typer.Context,
    run_id: str,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 3600.0,
    json_: JsonOpt = False,
) -> None:
    """A run with its tasks, outputs and errors (with --wait: once it has ended)."""
    as_json = wants_json(ctx, json_)
    client = settings(ctx).client()
    if wait:
        _finish(wait_for(client, run_id, timeout), as_json)
        return
    run = client.runs.get(run_id)
    if as_json:
        print_json(run)
    else:
        _show_run(run)


IdsArg = Annotated[list[str] | None, typer.Argument(help="Run ids (or select them with a filter).")]


def _bulk(ctx: typer.Context, verb: str, ids: list[str] | None, status: RunStatus | str | None,
          workflow: str | None, limit: int, as_json: bool,
          act: Callable[[Ratchet, str], Any]) -> None:
    """Apply `act` to each selected run with a progress bar; one result per run."""
    status = _status(status)
    if ids and (status or workflow):
        raise CliError("give run ids or --status/--workflow, not both", Exit.USAGE)
    if not ids and not (status or workflow):
        raise CliError(f"which runs? give run ids or --status/--workflow to {verb}", Exit.USAGE)
    client = settings(ctx).client()
    if not ids:
        ids = [r["id"] for r in client.runs.list(status=status, workflow=workflow, limit=limit)]
    results: list[dict[str, Any]] = []
    codes: set[Exit] = set()
    progress = Progress(
        TextColumn(f"{verb} runs"), BarColumn(), MofNCompleteColumn(), console=err,
        transient=True, disable=as_json or len(ids) < 2,
    )
    with progress:
        for run_id in progress.track(ids):
            try:
                act(client, run_id)
                results.append({"run_id": run_id, "ok": True, "error": None})
            except ApiError as exc:
                codes.add(api_exit(exc))
                results.append({"run_id": run_id, "ok": False, "error": api_message(exc)})
    done = sum(1 for r in results if r["ok"])
    if as_json:
        print_json({"results": results, "ok": done, "failed": len(results) - done})
    else:
        for r in results:
            if not r["ok"]:
                err.print(f"[red]{escape(r['run_id'])}[/]: {escape(r['error'])}")
        out.print(f"{verb}: {done} of {len(results)} runs")
    if codes:
        # One id that does not exist is "not found"; any other refusal wins over it.
        non_missing = codes - {Exit.NOT_FOUND}
        raise typer.Exit(min(non_missing) if non_missing else Exit.NOT_FOUND)


BulkLimitOpt = Annotated[int, typer.Option(
    min=1, max=BULK_MAX, help="With a filter: at most this many runs, newest first.")]


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    ids: IdsArg = None,
    status: StatusOpt = None,
    workflow: WorkflowOpt = None,
    limit: BulkLimitOpt = BULK_MAX,
    json_: JsonOpt = False,
) -> None:
    """Cancel runs by id, or every run a --status/--workflow filter matches."""
    _bulk(ctx, "cancelled", ids, status, workflow, limit, wants_json(ctx, json_),
          lambda c, run_id: c.runs.cancel(run_id))


@app.command("replay")
def replay(
    ctx: typer.Context,
    ids: IdsArg = None,
    status: StatusOpt = None,
    workflow: WorkflowOpt = None,
    limit: BulkLimitOpt = BULK_MAX,
    json_: JsonOpt = False,
) -> None:
    """Replay finished runs by id, or every run a --status/--workflow filter matches."""
    _bulk(ctx, "replayed", ids, status, workflow, limit, wants_json(ctx, json_),
          lambda c, run_id: c.runs.replay(run_id))


def _runs_method(client: Ratchet, name: str) -> Callable[[str], Any]:
    method = getattr(client.runs, name, None)
    if method is None:
        raise CliError(f"this ratchet-sdk has no runs.{name}(); upgrade the SDK for `runs {name}`")
    fn: Callable[[str], Any] = method
    return fn


@app.command("logs")
def logs(ctx: typer.Context, run_id: str, json_: JsonOpt = False) -> None:
    """The log lines the run's tasks wrote, in order."""
    client = settings(ctx).client()
    lines: list[dict[str, Any]] = _runs_method(client, "logs")(run_id)
    if wants_json(ctx, json_):
        print_json(lines)
        return
    for line in lines:
        out.print(f"{short_time(line.get('ts'))} {line.get('level', ''):<7} "
                  f"{line.get('task')}#{line.get('attempt')}  {line.get('message')}", markup=False)


@app.command("stream")
def stream(ctx: typer.Context, run_id: str, json_: JsonOpt = False) -> None:
    """Print what the run's tasks put on their stream, from the first chunk, until it ends.

    Text chunks are written as they come; other chunks one JSON value a line. With --json every
    chunk is one JSON line.
    """
    as_json = wants_json(ctx, json_)
    client = settings(ctx).client()
    for chunk in _runs_method(client, "stream")(run_id):
        if as_json:
            sys.stdout.write(json.dumps(chunk if not isinstance(chunk, bytes)
                                        else chunk.decode(errors="replace")) + "\n")
        elif isinstance(chunk, str):
            sys.stdout.write(chunk)
        elif isinstance(chunk, bytes):
            sys.stdout.buffer.write(chunk)
        else:
            sys.stdout.write(json.dumps(chunk) + "\n")
        sys.stdout.flush()
