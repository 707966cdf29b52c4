"""Waitpoint URL signatures (docs/interaction.md): the first configured key signs, every one
is accepted (rotation), a changed id or expiry is refused, an expired one is gone."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from libs.common.settings import load_settings
from services.api.actions import waitpoints
from services.api.repos.errors import Forbidden, Gone
from services.api.repos.interaction import Waitpoint


def _api(keys: str) -> Any:
    return SimpleNamespace(settings=load_settings(ratchet_waitpoint_keys=keys,
                                                  ratchet_public_url="https://r.example"))


def _wp(expires_in_s: float = 3600) -> Waitpoint:
    now = datetime.now(UTC)
    return Waitpoint(id="wp_1", tenant="t", run_id="r", task_id="k", position=0, label="",
                     status="pending", payload=None, created_at=now,
                     expires_at=now + timedelta(seconds=expires_in_s), completed_at=None)


def _query(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return parts.path.rsplit("/", 1)[1], int(q["exp"]), q["sig"]


def test_rotation_accepts_the_previous_key_and_signs_with_the_first() -> None:
    old_url = asyncio.run(waitpoints.signed_url(_api("old"), _wp(), "http://ignored"))
    assert old_url.startswith("https://r.example/wp/wp_1?exp=")
    wp_id, exp, sig = _query(old_url)
    asyncio.run(waitpoints.check_signature(_api("new,old"), wp_id, exp, sig))  # rotated: still ok
    with pytest.raises(Forbidden):
        asyncio.run(waitpoints.check_signature(_api("new"), wp_id, exp, sig))  # old key dropped
    new_url = asyncio.run(waitpoints.signed_url(_api("new,old"), _wp(), ""))
    assert _query(new_url)[2] != sig  # new URLs are signed with the first key
    with pytest.raises(Forbidden):
        asyncio.run(waitpoints.check_signature(_api("old"), wp_id, exp + 1, sig))
    with pytest.raises(Forbidden):
        asyncio.run(waitpoints.check_signature(_api("old"), "wp_2", exp, sig))


def test_an_expired_signature_is_gone() -> None:
    url = asyncio.run(waitpoints.signed_url(_api("k"), _wp(expires_in_s=-1), ""))
    wp_id, exp, sig = _query(url)
    assert exp < time.time() * 1000
    with pytest.raises(Gone):
        asyncio.run(waitpoints.check_signature(_api("k"), wp_id, exp, sig))
