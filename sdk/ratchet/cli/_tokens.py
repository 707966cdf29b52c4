"""`ratchet tokens ...`, `ratchet limits ...` and `ratchet audit`: a tenant's own access
controls. `limits set` is the operator's (it takes the operator token)."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from ratchet._admin_resources import LIMIT_NAMES, SCOPES, Admin, Audit, Limits, Tokens
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
from ratchet.cli._operator import OperatorTokenOpt, operator_client

tokens = typer.Typer(help="API tokens of your tenant (needs the admin scope).",
                     no_args_is_help=True)
limits = typer.Typer(help="Your tenant's limits and usage; operators set them.",
                     no_args_is_help=True)

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+)([smhd]?)$")


def parse_duration_s(raw: str) -> int:
    """'90', '90s', '15m', '12h' or '30d' → seconds."""
    match = _DURATION.match(raw.strip().lower())
    if match is None or int(match.group(1)) <= 0:
        raise CliError(f"--expires-in must look like 3600, 90s, 15m, 12h or 30d, got {raw!r}",
                       Exit.USAGE)
    return int(match.group(1)) * _UNITS_S[match.group(2) or "s"]


@tokens.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="What the token is for (shown in lists and the audit log).")],
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", help=f"Repeatable; one of {', '.join(SCOPES)}. Default: read.")] = None,
    expires_in: Annotated[str | None, typer.Option(
        help="Lifetime: 3600, 90s, 15m, 12h or 30d. Default: never expires.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Create a token; its secret is printed once and cannot be shown again."""
    scopes = scope or ["read"]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise CliError(f"unknown scopes {unknown}; choose from {', '.join(SCOPES)}", Exit.USAGE)
    expires_s = parse_duration_s(expires_in) if expires_in is not None else None
    created = Tokens(settings(ctx).client()).create(name, scopes, expires_in_s=expires_s)
    if wants_json(ctx, json_):
        print_json(created)
        return
    err.print(f"token {created['id']} ({', '.join(created['scopes'])}"
              f"{', expires ' + short_time(created['expires_at']) if created.get('expires_at') else ''})"
              " — the secret below is shown only now:")
    out.print(created["token"], markup=False)


@tokens.command("list")
def list_tokens(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    json_: JsonOpt = False,
) -> None:
    """The tenant's tokens (never their secrets)."""
    found = Tokens(settings(ctx).client()).list(include_revoked=all_)
    if wants_json(ctx, json_):
        print_json(found)
        return
    table(("id", "name", "scopes", "created", "expires", "revoked"),
          ((t["id"], t["name"], ",".join(t["scopes"]), short_time(t.get("created_at")),
            short_time(t.get("expires_at")), short_time(t.get("revoked_at"))) for t in found))


@tokens.command("revoke")
def revoke(
    ctx: typer.Context,
    token_ids: Annotated[list[str], typer.Argument(help="Ids from `ratchet tokens list`.")],
    json_: JsonOpt = False,
) -> None:
    """Revoke tokens: within seconds no API or dispatcher accepts them. A token revoked
    before is left as it is, and said so."""
    resource = Tokens(settings(ctx).client())
    revoked: list[str] = []
    already: list[str] = []
    for token_id in token_ids:
        # 404 (exit 3) when the tenant has no such token at all.
        if resource.get(token_id).get("revoked_at"):
            already.append(token_id)
            continue
        resource.revoke(token_id)
        revoked.append(token_id)
    if wants_json(ctx, json_):
        print_json({"revoked": revoked, "already_revoked": already})
        return
    if revoked:
        out.print(f"revoked {len(revoked)} token{'s' if len(revoked) != 1 else ''}")
    for token_id in already:
        out.print(f"{token_id} was already revoked")


@limits.command("get")
def get_limits(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Each limit of your tenant against its current usage (empty limit = unlimited)."""
    found = Limits(settings(ctx).client()).get()
    if wants_json(ctx, json_):
        print_json(found)
        return
    table(("limit", "value", "usage"),
          ((x["name"], "unlimited" if x["limit"] is None else x["limit"],
            "-" if x["usage"] is None else x["usage"]) for x in found["limits"]))


def parse_limit(pair: str) -> tuple[str, float | None]:
    name, sep, raw = pair.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in LIMIT_NAMES:
        raise CliError(f"expected NAME=VALUE with NAME one of {', '.join(LIMIT_NAMES)}, "
                       f"got {pair!r}", Exit.USAGE)
    if raw.strip().lower() in ("none", "unlimited"):
        return name, None
    try:
        value = float(raw)
    except ValueError:
        raise CliError(f"{name}: {raw!r} is not a number (or 'none')", Exit.USAGE) from None
    if value <= 0:
        raise CliError(f"{name} must be positive (or 'none' for unlimited)", Exit.USAGE)
    return name, int(value) if value.is_integer() else value


@limits.command("set")
def set_limits(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument(help="The tenant whose limits change.")],
    values: Annotated[list[str], typer.Argument(
        help=f"NAME=VALUE pairs; NAME one of {', '.join(LIMIT_NAMES)}; VALUE a number or none.")],
    operator_token: OperatorTokenOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Operators: set some of TENANT's limits (others stay as they are)."""
    changes = dict(parse_limit(pair) for pair in values)
    stored = Admin(operator_client(ctx, operator_token)).set_limits(tenant, changes)
    if wants_json(ctx, json_):
        print_json(stored)
    else:
        table(("limit", "value"), ((k, "unlimited" if v is None else v)
                                   for k, v in stored.items() if k in LIMIT_NAMES))


def audit(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="Entries at or after this ISO 8601 time.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. run.cancel.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    json_: JsonOpt = False,
) -> None:
    """Who did what to your tenant, newest first (needs the admin scope)."""
    found = Audit(settings(ctx).client()).list(since=since, action=action, limit=limit)
    if wants_json(ctx, json_):
        print_json(found)
        return
    table(("time", "action", "target", "token"),
          ((short_time(e["ts"]), e["action"], e.get("target"),
            e.get("token_name") or e.get("token_id")) for e in found))
