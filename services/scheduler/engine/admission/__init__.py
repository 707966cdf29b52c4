"""Admission: concurrency keys and rate limits a run or task passes before it starts.

`gate.py` is what the engine calls; `concurrency.py` and `ratelimit.py` decide in memory.
The PostgreSQL re-check of rate-limit starts across schedulers is persistence's
(persistence/rate_limit_recheck.py): the engine never touches the database.
"""
