"""Retry delays: exponential, capped, jittered."""

from __future__ import annotations

import random

from libs.common.specs import TaskSpec

JITTER = 0.2  # ±20 %


def retry_delay_s(spec: TaskSpec, failures: int, rng: random.Random | None = None) -> float:
    """Delay before the retry that follows the `failures`-th failure (1-based).

    base * factor^(failures-1), capped at backoff_max_s, then jittered by ±20 % (never above
    the cap, never negative).
    """
    exponent = max(0, failures - 1)
    try:
        raw = spec.backoff_base_s * (spec.backoff_factor**exponent)
    except OverflowError:
        raw = spec.backoff_max_s
    capped = min(spec.backoff_max_s, max(0.0, raw))
    jitter = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    return min(spec.backoff_max_s, max(0.0, capped * jitter))
