"""Incoming webhook verification (services/api/actions/hook_auth.py) and the outgoing
signature and backoff, without servers."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ratchet.webhooks import verify_signature

from services.api.actions.hook_auth import HookAuth, HookRefused, delivery_id, sign, verify
from services.api.notify._send import SmtpConfig, backoff_s

NOW = 1_800_000_000.0
secrets_ = st.text(min_size=1, max_size=40)
bodies = st.binary(max_size=500)


def _mac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def _auth(source: str, secret: str, **config: object) -> HookAuth:
    return HookAuth(source, secret, config, NOW)


@given(secret=secrets_, body=bodies)
def test_github_accepts_its_signature_and_refuses_any_other_body(secret: str, body: bytes) -> None:
    headers = {"x-hub-signature-256": "sha256=" + _mac(secret, body)}
    verify(_auth("github", secret), headers, body)
    with pytest.raises(HookRefused) as refused:
        verify(_auth("github", secret), headers, body + b"x")
    assert refused.value.status == 403


@given(secret=secrets_, body=bodies, skew=st.floats(min_value=-299, max_value=299))
def test_stripe_within_the_tolerance(secret: str, body: bytes, skew: float) -> None:
    ts = str(int(NOW + skew))
    header = f"t={ts},v1=deadbeef,v1={_mac(secret, ts.encode() + b'.' + body)}"
    verify(_auth("stripe", secret), {"stripe-signature": header}, body)


@given(skew=st.sampled_from([-3600, -301.5, 302, 10**6]))
def test_stripe_and_slack_refuse_old_or_future_timestamps(skew: float) -> None:
    ts = str(int(NOW + skew))
    body = b"{}"
    stripe = {"stripe-signature": f"t={ts},v1={_mac('s', ts.encode() + b'.' + body)}"}
    slack = {"x-slack-request-timestamp": ts,
             "x-slack-signature": "v0=" + _mac("s", f"v0:{ts}:".encode() + body)}
    for source, headers in (("stripe", stripe), ("slack", slack)):
        with pytest.raises(HookRefused, match="tolerance") as refused:
            verify(_auth(source, "s"), headers, body)
        assert refused.value.status == 403


def test_missing_credentials_are_401_wrong_ones_403() -> None:
    for source in ("github", "stripe", "slack", "hmac", "basic", "api_key"):
        with pytest.raises(HookRefused) as missing:
            verify(_auth(source, "s", username="u"), {}, b"{}")
        assert missing.value.status == 401, source
    basic = "Basic " + base64.b64encode(b"u:wrong").decode()
    with pytest.raises(HookRefused) as wrong:
        verify(_auth("basic", "s", username="u"), {"authorization": basic}, b"{}")
    assert wrong.value.status == 403
    verify(_auth("basic", "s", username="u"),
           {"authorization": "Basic " + base64.b64encode(b"u:s").decode()}, b"{}")
    verify(_auth("api_key", "k", header="X-Token"), {"x-token": "k"}, b"")
    verify(_auth("hmac", "k", header="X-Sig", prefix=""), {"x-sig": _mac("k", b"a")}, b"a")


def test_delivery_ids_by_source() -> None:
    assert delivery_id("github", {}, {"x-github-delivery": "g1"}, {}) == "g1"
    assert delivery_id("stripe", {}, {}, {"id": "evt_1"}) == "evt_1"
    assert delivery_id("slack", {}, {}, {"event_id": "Ev1"}) == "Ev1"
    assert delivery_id("hmac", {"id_header": "X-Id"}, {"x-id": "h1"}, {}) == "h1"
    assert delivery_id("hmac", {}, {"x-id": "h1"}, {}) is None


@given(secret=secrets_, body=bodies, ts=st.integers(min_value=0, max_value=2**40))
def test_our_signature_verifies_with_the_sdk(secret: str, body: bytes, ts: int) -> None:
    header = sign(secret, ts, body)
    assert verify_signature(secret, header, body, now_s=ts)
    assert not verify_signature(secret + "x", header, body, now_s=ts)
    assert not verify_signature(secret, header, body + b"!", now_s=ts)
    assert not verify_signature(secret, header, body, now_s=ts + 301)


@given(attempt=st.integers(min_value=0, max_value=1000),
       base=st.floats(min_value=0.01, max_value=100), cap=st.floats(min_value=0.01, max_value=10_000))
def test_backoff_is_capped_and_jittered(attempt: int, base: float, cap: float) -> None:
    wait = backoff_s(attempt, base, cap)
    step = min(cap, base * 2 ** min(attempt, 30))
    assert step / 2 <= wait <= step


def test_smtp_url() -> None:
    cfg = SmtpConfig.parse("smtps://bob:p%40ss@mail.example.com?from=a@x.org")
    assert (cfg.host, cfg.port, cfg.username, cfg.password, cfg.use_tls, cfg.sender) == (
        "mail.example.com", 465, "bob", "p@ss", True, "a@x.org")
    assert SmtpConfig.parse("smtp://127.0.0.1:2525").port == 2525
    with pytest.raises(ValueError):
        SmtpConfig.parse("http://x")
