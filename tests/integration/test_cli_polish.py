"""What the `ratchet` CLI shows a newcomer: full ids when piped (and with `--wide`) and
idempotent token revocation. The console script runs as a subprocess against the in-process
test stack (helpers from test_cli); what needs no server is in tests/unit/test_cli_usage.py."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from ratchet import Context, Ratchet
from ratchet.cli._common import Exit

from tests.integration.conftest import Stack, WorkerFactory
from tests.integration.test_cli import assert_one_line_error, cli_env, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def narrow(stack: Stack, tenant: str) -> dict[str, str]:
    """A 60-column "terminal": narrower than an id column plus the rest of the table."""
    env = cli_env(stack.api_url, stack.tokens[tenant], RATCHET_GRPC_ADDR=stack.grpc_addr)  # type: ignore[attr-defined]
    env["COLUMNS"] = "60"
    return env


async def test_piped_tables_print_full_ids_and_wide_is_accepted_anywhere(
    client: Ratchet, start_worker: WorkerFactory, narrow: dict[str, str]
) -> None:
    name = f"cli-ids-{uuid.uuid4().hex[:8]}-with-a-long-workflow-name"
    wf = client.workflow(name)

    @wf.task()
    async def noop(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    await start_worker(f"{name[:20]}-w", workflows=[wf])
    done = await run_cli("runs", "trigger", name, "--wait", "--json", env=narrow)
    assert done.code == Exit.OK, done
    run_id = done.json()["id"]

    # stdout is a pipe here: every cell in full, so the id can be pasted into `runs get`.
    listed = await run_cli("runs", "list", "--workflow", name, env=narrow)
    assert listed.code == Exit.OK, listed
    assert run_id in listed.out and name in listed.out and "…" not in listed.out, listed.out
    wide = await run_cli("runs", "list", "--workflow", name, "--wide", env=narrow)
    assert wide.code == Exit.OK and run_id in wide.out, wide


async def test_token_ids_are_whole_when_piped_and_revoke_is_idempotent(
    narrow: dict[str, str],
) -> None:
    created = await run_cli("tokens", "create", "ci-polish", "--scope", "read", "--json", env=narrow)
    assert created.code == Exit.OK, created
    token_id = created.json()["id"]
    listed = await run_cli("tokens", "list", env=narrow)
    assert listed.code == Exit.OK and token_id in listed.out, listed.out

    first = await run_cli("tokens", "revoke", token_id, env=narrow)
    assert first.code == Exit.OK and "revoked 1 token" in first.out, first
    again = await run_cli("tokens", "revoke", token_id, env=narrow)
    assert again.code == Exit.OK, again
    assert f"{token_id} was already revoked" in again.out, again
    unknown = await run_cli("tokens", "revoke", "tok_no-such-token", "--json", env=narrow)
    assert_one_line_error(unknown, Exit.NOT_FOUND)
