"""Backoff math: exponential, capped, jittered within bounds."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.specs import TaskSpec
from services.scheduler.backoff import JITTER, retry_delay_s


@settings(max_examples=50)
@given(
    base=st.floats(0.01, 10), factor=st.floats(1, 4), cap=st.floats(0.01, 120),
    failures=st.integers(1, 60), seed=st.integers(0, 1000),
)
def test_delay_is_bounded(base: float, factor: float, cap: float, failures: int, seed: int) -> None:
    spec = TaskSpec(name="t", backoff_base_s=base, backoff_factor=factor, backoff_max_s=cap)
    delay = retry_delay_s(spec, failures, random.Random(seed))
    raw = min(cap, base * factor ** (failures - 1))
    assert 0 <= delay <= cap
    assert raw * (1 - JITTER) - 1e-9 <= delay <= raw * (1 + JITTER) + 1e-9


def test_grows_exponentially_until_the_cap() -> None:
    spec = TaskSpec(name="t", backoff_base_s=1, backoff_factor=2, backoff_max_s=10)
    rng = random.Random(1)
    delays = [retry_delay_s(spec, n, rng) for n in range(1, 8)]
    assert delays[0] < delays[2] < delays[3]
    assert max(delays) <= 10
