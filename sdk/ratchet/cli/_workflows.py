"""`ratchet workflows ...` and `ratchet events push`."""

from __future__ import annotations

from typing import Annotated

import typer

from ratchet._admin_resources import WorkflowCatalog
from ratchet.cli._common import (
    JsonOpt,
    out,
    parse_json,
    parse_pairs,
    print_json,
    settings,
    short_time,
    table,
    wants_json,
)

workflows = typer.Typer(help="Registered workflows, their versions, rollback, pause and resume.",
                        no_args_is_help=True)
events = typer.Typer(help="Push events (they trigger the workflows listening for their key).",
                     no_args_is_help=True)


@workflows.command("list")
def list_workflows(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Every workflow with its current version."""
    found = WorkflowCatalog(settings(ctx).client()).list()
    if wants_json(ctx, json_):
        print_json([{k: w[k] for k in ("name", "version_id", "updated_at")} for w in found])
        return
    table(("name", "current version", "updated"),
          ((w["name"], w["version_id"], short_time(w["updated_at"])) for w in found))


@workflows.command("versions")
def versions(ctx: typer.Context, name: str, json_: JsonOpt = False) -> None:
    """The versions of workflow NAME, newest first; `current` is the one new runs use."""
    found = settings(ctx).client().workflows.versions(name)
    if wants_json(ctx, json_):
        print_json(found)
        return
    table(("id", "hash", "created", "current"),
          ((v["id"], v["hash"][:12], short_time(v["created_at"]), "*" if v["current"] else "")
           for v in found))


@workflows.command("rollback")
def rollback(ctx: typer.Context, name: str, version_id: str, json_: JsonOpt = False) -> None:
    """Make VERSION_ID the version new runs of NAME start on (runs in flight keep theirs)."""
    version = settings(ctx).client().workflows.rollback(name, version_id)
    if wants_json(ctx, json_):
        print_json(version)
    else:
        out.print(f"{name}: version {version['id']} is current", markup=False)


@workflows.command("pause")
def pause(
    ctx: typer.Context, name: str,
    mode: Annotated[str, typer.Option(
        help="queue: keep new runs until resumed; drop: refuse API triggers (409), skip "
             "event and cron ones.")] = "queue",
    json_: JsonOpt = False,
) -> None:
    """Pause workflow NAME: new runs wait (queue) or are refused (drop); running tasks finish."""
    if mode not in ("queue", "drop"):
        raise typer.BadParameter("--mode must be queue or drop")
    state = settings(ctx).client().workflows.pause(name, mode=mode)
    if wants_json(ctx, json_):
        print_json(state)
    else:
        out.print(f"{name}: paused (mode {state['mode']})", markup=False)


@workflows.command("resume")
def resume(ctx: typer.Context, name: str, json_: JsonOpt = False) -> None:
    """Resume workflow NAME: the runs it kept start, new ones start at once."""
    state = settings(ctx).client().workflows.resume(name)
    if wants_json(ctx, json_):
        print_json(state)
    else:
        out.print(f"{name}: resumed ({state['held']} held runs start, "
                  f"{state['dropped']} triggers were dropped)", markup=False)


@events.command("push")
def push(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The event key, e.g. doc.uploaded.")],
    data: Annotated[str, typer.Option("--data", "-d", help="The payload as JSON.")] = "{}",
    scope: Annotated[str | None, typer.Option(help="Only filters of this scope match.")] = None,
    metadata: Annotated[list[str] | None, typer.Option(
        "--metadata", "-m", help="KEY=VALUE event metadata (repeatable).")] = None,
    event_id: Annotated[str | None, typer.Option(
        help="Idempotency key: an event pushed twice with one id counts once.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Push event KEY with a JSON payload; print its id."""
    payload = parse_json(data, "--data")
    accepted = settings(ctx).client().events.push(
        key, payload, scope=scope, metadata=parse_pairs(metadata, "--metadata") or None,
        event_id=event_id,
    )
    if wants_json(ctx, json_):
        print_json(accepted)
    else:
        out.print(accepted["event_id"])
