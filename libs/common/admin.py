"""Operator commands: `python -m libs.common.admin migrate | ensure-tenant ID [--token T]`."""

from __future__ import annotations

import argparse
import asyncio

from libs.common import db, tenants
from libs.common.settings import load_settings


async def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ratchet-admin")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("migrate", help="apply pending SQL migrations")
    ensure = sub.add_parser("ensure-tenant", help="create a tenant and register a token")
    ensure.add_argument("tenant")
    ensure.add_argument("--token", default=None)
    args = parser.parse_args(argv)
    settings = load_settings()
    await db.migrate(settings.database_url)
    if args.cmd == "ensure-tenant":
        pool = await db.create_pool(settings.database_url, max_size=1)
        try:
            token = await tenants.ensure_tenant(pool, args.tenant, args.token)
        finally:
            await pool.close()
        print(f"RATCHET_TENANT={args.tenant}")
        print(f"RATCHET_TOKEN={token}")


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
