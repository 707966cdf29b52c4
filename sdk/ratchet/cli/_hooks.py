"""`ratchet webhooks ...` and `ratchet alerts ...`: incoming hooks and their request logs, the
outgoing signing secret and delivery log, alert rules."""

from __future__ import annotations

from typing import Annotated

import typer

from ratchet.cli._common import (
    CliError,
    Exit,
    JsonOpt,
    err,
    out,
    print_json,
    settings,
    short_time,
    table,
    wants_json,
)

webhooks = typer.Typer(help="Incoming webhooks (POST /hooks/<tenant>/<name>), their request "
                       "logs, and outgoing deliveries.", no_args_is_help=True)
alerts = typer.Typer(help="Alert rules: Slack, email or webhook messages when runs fail, a "
                     "workflow has no worker, a token expires soon or a limit is reached.",
                     no_args_is_help=True)

SOURCES = ("github", "stripe", "slack", "hmac", "basic", "api_key")
EVENTS = ("run.failed", "worker.pool_empty", "token.expiring", "limit.reached")


@webhooks.command("create")
def create_hook(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The hook's name, the last part of its URL.")],
    source: Annotated[str, typer.Option(help=f"One of {', '.join(SOURCES)}.")],
    secret: Annotated[str, typer.Option(
        help="Signing secret (github, stripe, slack, hmac), password (basic) or key (api_key).")],
    event_key: Annotated[str, typer.Option(
        help="CEL over input and headers giving the event key, e.g. "
             "\"'gh.' + headers['x-github-event']\".")],
    scope: Annotated[str | None, typer.Option(help="CEL giving the event's scope.")] = None,
    header: Annotated[str | None, typer.Option(
        help="hmac: signature header; api_key: key header.")] = None,
    prefix: Annotated[str | None, typer.Option(help="hmac: signature prefix.")] = None,
    username: Annotated[str | None, typer.Option(help="basic: the user name.")] = None,
    id_header: Annotated[str | None, typer.Option(
        help="hmac, basic, api_key: header holding the sender's delivery id.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Create a hook; prints the path to give the provider."""
    if source not in SOURCES:
        raise CliError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}",
                       Exit.USAGE)
    created = settings(ctx).client().webhooks.create(
        name, source=source, secret=secret, event_key=event_key, scope=scope, header=header,
        prefix=prefix, username=username, id_header=id_header)
    if wants_json(ctx, json_):
        print_json(created)
        return
    err.print(f"webhook {created['name']} ({created['source']}): POST to")
    out.print(settings(ctx).client().config.api_url.rstrip("/") + created["url_path"],
              markup=False)


@webhooks.command("list")
def list_hooks(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """The tenant's hooks (never their secrets)."""
    found = settings(ctx).client().webhooks.list()
    if wants_json(ctx, json_):
        print_json(found)
        return
    table(["name", "source", "event key", "scope", "path"],
          [[h["name"], h["source"], h["event_key"], h["scope"] or "", h["url_path"]]
           for h in found])


@webhooks.command("delete")
def delete_hook(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Delete a hook (its URL answers 404 from now on)."""
    settings(ctx).client().webhooks.delete(name)
    err.print(f"webhook {name} deleted")


@webhooks.command("deliveries")
def hook_deliveries(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A hook, or _unknown for requests to none.")],
    limit: Annotated[int, typer.Option(min=1, max=100)] = 100,
    json_: JsonOpt = False,
) -> None:
    """The hook's last requests, newest first."""
    found = settings(ctx).client().webhooks.deliveries(name, limit)
    if wants_json(ctx, json_):
        print_json(found)
        return
    table(["received", "status", "outcome", "event id", "key", "detail"],
          [[short_time(d["received_at"]), d["status"], d["outcome"], d["event_id"] or "",
            d["event_key"] or "", d["detail"]] for d in found])


@webhooks.command("outgoing")
def outgoing(
    ctx: typer.Context,
    run_id: Annotated[str | None, typer.Option(help="Only this run's callbacks.")] = None,
    kind: Annotated[str | None, typer.Option(help="callback or alert.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    json_: JsonOpt = False,
) -> None:
    """Outgoing deliveries (run callbacks and alert messages) and how they went."""
    found = settings(ctx).client().webhooks.outgoing(run_id=run_id, kind=kind, limit=limit)
    if wants_json(ctx, json_):
        print_json(found)
        return
    table(["created", "kind", "channel", "target", "status", "attempts", "last"],
          [[short_time(d["created_at"]), d["kind"], d["channel"], d["target"], d["status"],
            d["attempts"], d["last_error"] or d["last_status"] or ""] for d in found])


@webhooks.command("signing-secret")
def signing_secret(
    ctx: typer.Context,
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace it first.")] = False,
) -> None:
    """Print the key outgoing deliveries are signed with (Ratchet-Signature)."""
    hooks = settings(ctx).client().webhooks
    out.print(hooks.rotate_signing_secret() if rotate else hooks.signing_secret(), markup=False)


@alerts.command("create")
def create_alert(
    ctx: typer.Context,
    on: Annotated[list[str] | None, typer.Option(
        "--on", help=f"Repeatable; one of {', '.join(EVENTS)}. Default: run.failed.")] = None,
    workflow: Annotated[str | None, typer.Option(help="Only this workflow.")] = None,
    filter_: Annotated[str | None, typer.Option(
        "--filter", help="CEL over run (id, workflow, status, input, metadata, errors).")] = None,
    slack: Annotated[str | None, typer.Option(help="A Slack incoming-webhook URL.")] = None,
    email: Annotated[list[str] | None, typer.Option(help="Repeatable: an address.")] = None,
    webhook: Annotated[str | None, typer.Option(help="A URL to POST JSON to (signed).")] = None,
    window_s: Annotated[float | None, typer.Option(
        help="One message per window of this many seconds, with a count.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Create an alert rule."""
    events = on or ["run.failed"]
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise CliError(f"unknown --on {unknown}; choose from {', '.join(EVENTS)}", Exit.USAGE)
    created = settings(ctx).client().alerts.create(
        on=events, workflow=workflow, filter=filter_, slack_webhook_url=slack, email=email,
        webhook_url=webhook, window_s=window_s)
    if wants_json(ctx, json_):
        print_json(created)
        return
    out.print(created["id"], markup=False)


@alerts.command("list")
def list_alerts(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """The tenant's alert rules."""
    found = settings(ctx).client().alerts.list()
    if wants_json(ctx, json_):
        print_json(found)
        return
    table(["id", "on", "workflow", "filter", "to", "window"],
          [[a["id"], ", ".join(a["on"]), a["workflow"] or "(any)", a["filter"] or "",
            ", ".join([*(["slack"] if a["slack_webhook_url"] else []), *a["email"],
                       *([a["webhook_url"]] if a["webhook_url"] else [])]),
            f"{a['window_s']:g} s"] for a in found])


@alerts.command("delete")
def delete_alert(ctx: typer.Context, rule_id: Annotated[str, typer.Argument()]) -> None:
    """Delete a rule."""
    settings(ctx).client().alerts.delete(rule_id)
    err.print(f"alert {rule_id} deleted")


@alerts.command("test")
def test_alert(ctx: typer.Context, rule_id: Annotated[str, typer.Argument()],
               json_: JsonOpt = False) -> None:
    """Send a test message to each destination of the rule now."""
    sent = settings(ctx).client().alerts.test(rule_id)
    if wants_json(ctx, json_):
        print_json(sent)
        return
    err.print(f"queued {len(sent['delivery_ids'])} test message(s); see "
              f"`ratchet alerts deliveries {rule_id}`")


@alerts.command("deliveries")
def alert_deliveries(ctx: typer.Context, rule_id: Annotated[str, typer.Argument()],
                     json_: JsonOpt = False) -> None:
    """The rule's messages and how each went."""
    found = settings(ctx).client().alerts.deliveries(rule_id)
    if wants_json(ctx, json_):
        print_json(found)
        return
    table(["created", "channel", "target", "status", "attempts", "last"],
          [[short_time(d["created_at"]), d["channel"], d["target"], d["status"], d["attempts"],
            d["last_error"] or d["last_status"] or ""] for d in found])
