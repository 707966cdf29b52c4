"""Several dispatcher addresses: how the SDK reads them and the order a worker tries them in."""

from __future__ import annotations

import pytest
from ratchet import Context, Ratchet
from ratchet.config import ClientConfig, parse_addrs


def test_comma_separated_and_list_forms_agree() -> None:
    assert parse_addrs("a:7077,b:7077") == ("a:7077", "b:7077")
    assert parse_addrs(" a:7077 , b:7077 ,") == ("a:7077", "b:7077")
    assert parse_addrs(["a:7077", "b:7077,c:7077"]) == ("a:7077", "b:7077", "c:7077")
    assert parse_addrs("a:7077,b:7077,a:7077") == ("a:7077", "b:7077")  # a repeat is one dispatcher


def test_env_variable_lists_dispatchers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATCHET_GRPC_ADDR", "d1:7077,d2:7077")
    config = ClientConfig.resolve(token="t")
    assert config.grpc_addrs == ("d1:7077", "d2:7077")


def test_keyword_takes_a_list_or_a_string() -> None:
    listed = Ratchet(token="t", grpc_addr=["d1:7077", "d2:7077"])
    joined = Ratchet(token="t", grpc_addr="d1:7077,d2:7077")
    assert listed.config.grpc_addrs == joined.config.grpc_addrs == ("d1:7077", "d2:7077")
    assert Ratchet(token="t", grpc_addr="d1:7077").config.grpc_addrs == ("d1:7077",)


def test_no_address_at_all_is_refused() -> None:
    with pytest.raises(ValueError, match="no dispatcher address"):
        ClientConfig.resolve(token="t", grpc_addr=" , ")


def test_each_worker_tries_every_address_once_per_round() -> None:
    addrs = tuple(f"d{i}:7077" for i in range(4))
    r = Ratchet(token="t", grpc_addr=list(addrs))
    wf = r.workflow("addresses")

    @wf.task()
    def step(input: dict[str, object], ctx: Context) -> dict[str, object]:
        return {}

    firsts = set()
    for i in range(60):
        order = r.worker(f"w{i}", workflows=[wf]).dispatcher_addrs
        # A rotation of the configured list: every dispatcher once, the given order kept.
        assert sorted(order) == sorted(addrs)
        start = addrs.index(order[0])
        assert order == addrs[start:] + addrs[:start]
        firsts.add(order[0])
    # Workers start at a random address, so a fleet spreads over the dispatchers
    # (60 workers all starting at the same one of 4: probability 4 * 0.25**60).
    assert len(firsts) > 1

