"""Operator commands.

    python -m tools.admin migrate
    python -m tools.admin ensure-tenant ID [--token T]
    python -m tools.admin limits ID                      # show
    python -m tools.admin set-limits ID [--unfinished-runs N] [--triggers-per-s X]
        [--events-per-s X] [--payload-bytes N] [--workers N] [--slots N]   # "none" = unlimited

Limits are the operator's to set (tenants only read theirs, `GET /limits`); each change is
written to the tenant's audit log as done by "operator".

This talks to PostgreSQL directly (`DATABASE_URL`), from a checkout of the repository: `make up`
uses it, and it is not in the service image. Without database access, an operator does the same
through the API's operator endpoints (`ratchet admin ...`, services/api/routes/admin.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec

from libs.common import db, limits, tokens
from libs.common.limits import Limit
from libs.common.settings import load_settings

_INTEGER_LIMITS = frozenset({Limit.UNFINISHED_RUNS, Limit.PAYLOAD_BYTES, Limit.WORKERS, Limit.SLOTS})


def limit_value(limit: Limit, raw: str) -> float | None:
    """Parse one limit's value: "none" (unlimited) or a positive number."""
    if raw.strip().lower() in ("none", "unlimited"):
        return None
    try:
        value = int(raw) if limit in _INTEGER_LIMITS else float(raw)
    except ValueError:
        kind = "an integer" if limit in _INTEGER_LIMITS else "a number"
        raise ValueError(f"--{limit.value.replace('_', '-')} must be {kind} or 'none'") from None
    if value <= 0:
        raise ValueError(f"--{limit.value.replace('_', '-')} must be positive (or 'none')")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ratchet-admin")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("migrate", help="apply pending SQL migrations")
    ensure = sub.add_parser("ensure-tenant", help="create a tenant and register a full token")
    ensure.add_argument("tenant")
    ensure.add_argument("--token", default=None)
    show = sub.add_parser("limits", help="show a tenant's limits (JSON)")
    show.add_argument("tenant")
    put = sub.add_parser("set-limits", help="set some of a tenant's limits ('none' = unlimited)")
    put.add_argument("tenant")
    for limit in Limit:
        put.add_argument(f"--{limit.value.replace('_', '-')}", dest=limit.value, default=None)
    return parser


async def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings()
    await db.migrate(settings.database_url)
    if args.cmd == "migrate":
        return 0
    pool = await db.create_pool(settings.database_url, max_size=1)
    try:
        if args.cmd == "ensure-tenant":
            token = await tokens.ensure_tenant(pool, args.tenant, args.token)
            print(f"RATCHET_TENANT={args.tenant}")
            print(f"RATCHET_TOKEN={token}")
        elif args.cmd == "limits":
            print(msgspec.json.encode(await limits.load(pool, args.tenant)).decode())
        elif args.cmd == "set-limits":
            try:
                changes = {
                    limit: limit_value(limit, getattr(args, limit.value))
                    for limit in Limit
                    if getattr(args, limit.value) is not None
                }
                if not changes:
                    raise ValueError("name at least one limit to set")
                stored = await limits.store(pool, args.tenant, changes)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(msgspec.json.encode(stored).decode())
    finally:
        await pool.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(asyncio.run(_main(argv)))


if __name__ == "__main__":
    main()
