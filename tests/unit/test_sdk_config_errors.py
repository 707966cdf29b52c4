"""A client without a token, or without a server to talk to, says what to do (not a bare
transport error)."""

import pytest
from ratchet import Ratchet
from ratchet.errors import ConfigError


def test_missing_token_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RATCHET_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"no API token: pass Ratchet\(token=\.\.\.\) or set RATCHET_TOKEN"):
        Ratchet().runs.list()


def test_unreachable_api_names_the_url() -> None:
    # Port 9 (discard) on loopback: nothing listens there in the test environment.
    away = Ratchet(token="t", api_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"cannot reach the Ratchet API at http://127\.0\.0\.1:9 "):
        away.runs.list()
