"""Admission: concurrency keys and rate limits a run or task passes before it starts.

`gate.py` is what the engine calls; `concurrency.py` and `ratelimit.py` decide in memory;
`rate_limit_recheck.py` re-checks rate-limit starts in PostgreSQL across schedulers.
"""
