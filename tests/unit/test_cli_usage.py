"""The `ratchet` CLI's own checks, in process (no server): a bad choice lists the valid ones,
usage lines name arguments plainly, `--wide` and a missing token."""

from __future__ import annotations

import pytest
from ratchet.cli._app import run
from ratchet.cli._common import WIDE, Exit


def test_a_bad_status_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["runs", "list", "--status", "QUEUED"]) == Exit.USAGE
    err = capsys.readouterr().err
    assert "'QUEUED' is not one of" in err, err
    for status in ("pending", "running", "succeeded", "failed", "cancelled"):
        assert f"'{status}'" in err, err


def test_usage_lines_read_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["runs", "trigger"]) == Exit.USAGE
    assert "Usage: ratchet runs trigger [OPTIONS] WORKFLOW" in capsys.readouterr().err
    assert run(["tokens", "revoke", "--help"]) == Exit.OK
    assert "Usage: ratchet tokens revoke [OPTIONS] TOKEN_IDS..." in capsys.readouterr().out
    assert run(["runs", "cancel", "--help"]) == Exit.OK
    assert "Usage: ratchet runs cancel [OPTIONS] [IDS]..." in capsys.readouterr().out


def test_wide_anywhere_and_a_missing_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RATCHET_TOKEN", raising=False)
    monkeypatch.setitem(WIDE, "on", False)
    # `--wide` after the command is taken as the global switch, not refused as unknown.
    assert run(["runs", "list", "--wide"]) == Exit.AUTH
    assert WIDE["on"] is True
    assert capsys.readouterr().err.startswith("error: no API token")
