"""The scheduler's PostgreSQL: what the engine decided is written here, and read back here
after a restart. The engine never imports this package, nor this package the engine: both
share the plain records of `records.py` and the batch's `Effects` (pyproject.toml's
import-linter contracts).

- `batch.py`               the batch's one write transaction (`write_batch`);
- `store.py`               runs, tasks, attempts, history, stored timers and the outbox;
- `durable.py`             durable tasks' logs and the event conditions the matcher reads;
- `fairness.py`            rate-limit definitions and starts, concurrency holders, executing
                           attempts;
- `rate_limit_recheck.py`  the re-check of rate-limit starts across schedulers;
- `retention.py`           daily table partitions: created ahead, dropped past retention;
- `leases.py`              scheduler partition leases and the fence a commit passes;
- `literals.py`            columns bound as array literals.
"""
