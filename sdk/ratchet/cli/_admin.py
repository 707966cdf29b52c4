"""`ratchet admin ...`: operator commands over the API's /admin endpoints (operator token)."""

from __future__ import annotations

from typing import Annotated

import typer

from ratchet._admin_resources import Admin
from ratchet.cli._common import JsonOpt, err, out, print_json, short_time, table, wants_json
from ratchet.cli._operator import OperatorTokenOpt, operator_client

admin = typer.Typer(
    help="Operators: tenants and migrations. Needs the API's operator token "
         "(RATCHET_OPERATOR_TOKEN); without one configured the API answers 404.",
    no_args_is_help=True,
)
tenant = typer.Typer(help="Create and list tenants.", no_args_is_help=True)
admin.add_typer(tenant, name="tenant")


@tenant.command("create")
def create_tenant(
    ctx: typer.Context,
    tenant_id: Annotated[str, typer.Argument(help="1-64 characters of a-z, 0-9, _ and -.")],
    operator_token: OperatorTokenOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a tenant and print its first API token (shown only now)."""
    created = Admin(operator_client(ctx, operator_token)).create_tenant(tenant_id)
    if wants_json(ctx, json_):
        print_json(created)
        return
    err.print(f"tenant {created['id']} created; its API token (shown only now):")
    out.print(created["token"], markup=False)


@tenant.command("list")
def list_tenants(
    ctx: typer.Context, operator_token: OperatorTokenOpt = None, json_: JsonOpt = False
) -> None:
    """Every tenant with its number of API tokens."""
    found = Admin(operator_client(ctx, operator_token)).list_tenants()
    if wants_json(ctx, json_):
        print_json(found)
        return
    table(("id", "created", "tokens"),
          ((t["id"], short_time(t["created_at"]), t["tokens"]) for t in found))


@admin.command("migrate")
def migrate(
    ctx: typer.Context, operator_token: OperatorTokenOpt = None, json_: JsonOpt = False
) -> None:
    """Apply pending database migrations (through the API)."""
    applied = Admin(operator_client(ctx, operator_token)).migrate()
    if wants_json(ctx, json_):
        print_json({"applied": applied})
    elif applied:
        out.print("applied: " + ", ".join(applied))
    else:
        out.print("up to date")
