"""Write the REST API's OpenAPI schema to sdk/openapi.json (`make openapi`).

The schema comes from the Litestar app object itself, so no server, NATS or PostgreSQL is
needed: building the schema never calls a dependency provider. `--check` exits 1 when the
committed file differs from what the app describes now (run `make openapi` to refresh it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from libs.common.settings import Settings
from services.api.app import create_app
from services.api.state import ApiState

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "sdk" / "openapi.json"


def render() -> str:
    """The schema as stable, diff-friendly JSON (sorted keys, trailing newline)."""
    # create_app reads only `settings` while building the app; request handlers get the real
    # state through dependency injection, which schema generation never invokes.
    placeholder = cast(ApiState, SimpleNamespace(settings=Settings()))
    schema: dict[str, Any] = create_app(placeholder).openapi_schema.to_schema()
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def is_stale() -> bool:
    return not OUT.exists() or OUT.read_text() != render()


def main() -> None:
    if "--check" in sys.argv:
        if is_stale():
            print(f"{OUT.relative_to(ROOT)} is stale; run `make openapi`")
            raise SystemExit(1)
        print(f"{OUT.relative_to(ROOT)} is up to date")
        return
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
