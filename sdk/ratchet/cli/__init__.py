"""The `ratchet` command line (console script `ratchet`, installed with ratchet-sdk).

Commands are grouped by what they act on (`runs`, `workflows`, `events`, `tokens`, `limits`,
`audit`, `worker`, `admin`); docs/cli.md describes each. Exit codes: 0 ok, 1 API error or
failed run, 2 usage, 3 not found, 4 auth.
"""

from ratchet.cli._app import app, main, run
from ratchet.cli._common import Exit

__all__ = ["Exit", "app", "main", "run"]
