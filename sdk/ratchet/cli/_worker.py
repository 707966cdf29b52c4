"""`ratchet worker MODULE:ATTR`: serve the workflows a module defines."""

from __future__ import annotations

import asyncio
import importlib
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ratchet.cli._common import CliError, Exit, err, parse_pairs, settings
from ratchet.worker import Worker
from ratchet.workflow import Workflow


def load_target(spec: str) -> Any:
    """The object `MODULE:ATTR` names (ATTR may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected MODULE:ATTR (e.g. app.workers:worker), got {spec!r}", Exit.USAGE)
    # Like `python -m`: modules next to where the command runs are importable.
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CliError(f"cannot import module {module_name!r}: {exc}", Exit.USAGE) from None
        raise  # the module exists but one of its imports failed: show the real trace
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}", Exit.USAGE) from None
    return obj


def _workflows(obj: Any, spec: str) -> list[Workflow]:
    items = list(obj) if isinstance(obj, list | tuple) else [obj]
    if not items or not all(isinstance(w, Workflow) for w in items):
        raise CliError(f"{spec} is {type(obj).__name__}: expected a Worker, a Workflow or a "
                       "list of Workflows", Exit.USAGE)
    return items


async def _serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    task = asyncio.create_task(worker.astart())
    connected = asyncio.create_task(worker.wait_connected(timeout_s=3600))
    await asyncio.wait({task, connected}, return_when=asyncio.FIRST_COMPLETED)
    if connected.done() and not connected.cancelled() and connected.exception() is None:
        actions = sum(len(wf.all_tasks()) for wf in worker.workflows)
        err.print(f"worker {worker.name} connected: {len(worker.workflows)} workflows, "
                  f"{actions} tasks, {worker.slots} slots (Ctrl-C drains and stops)", markup=False)
    else:
        connected.cancel()
    await task
    err.print(f"worker {worker.name} stopped", markup=False)


def worker(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(
        metavar="MODULE:ATTR", help="A Worker, a Workflow or a list of Workflows in MODULE.")],
    name: Annotated[str | None, typer.Option(
        help="Worker name for a Workflow target. Default: ATTR@hostname.")] = None,
    slots: Annotated[int, typer.Option(min=1, help="Tasks run at once, for a Workflow target.")] = 10,
    label: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE worker label for affinity (repeatable).")] = None,
) -> None:
    """Start a worker from a module and block; Ctrl-C (or SIGTERM) drains in-flight tasks.

    MODULE:ATTR names a Worker (started as it is) or a Workflow / list of Workflows, served by a
    new worker of --name with --slots and --label. The worker connects with --token/--api-url/
    --grpc-addr (or RATCHET_TOKEN, RATCHET_API_URL, RATCHET_GRPC_ADDR).
    """
    obj = load_target(target)
    if isinstance(obj, Worker):
        w = obj
    else:
        workflows = _workflows(obj, target)
        worker_name = name or f"{target.partition(':')[2]}@{socket.gethostname()}"
        w = settings(ctx).client().worker(
            worker_name, workflows, slots=slots, labels=parse_pairs(label, "--label")
        )
    asyncio.run(_serve(w))
