"""The bench-compare and soak harnesses: their arithmetic, report shape, and the Celery side.

The Celery test starts the same private redis-server and `--pool=solo` worker `make
bench-compare` uses and pushes a handful of tasks and chains through them.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator

import pytest

from bench import compare, soak


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert compare.pct(values, 50) == 50.0
    assert compare.pct(values, 99) == 99.0
    assert compare.pct(values, 100) == 100.0
    assert compare.pct([7.0], 95) == 7.0
    assert math.isnan(compare.pct([], 50))


def test_summary_counts_every_task_of_a_chain() -> None:
    row = compare.summarize(
        runs=100, tasks_per_run=3, t0=10.0, end=12.0, start_ms=[1.0] * 100, result_ms=[5.0] * 100
    )
    assert row["runs_per_s"] == 50.0
    assert row["tasks_per_s"] == 150.0
    assert row["start_p99_ms"] == 1.0 and row["result_p50_ms"] == 5.0


def test_pace_is_steady() -> None:
    offsets = compare.pace(100, 2)
    assert len(offsets) == 200
    assert offsets[1] - offsets[0] == pytest.approx(0.01)
    assert offsets[-1] < 2.0


def test_report_has_the_headline_keys_and_every_workload() -> None:
    def row(tasks_per_s: float, p50: float) -> dict[str, float]:
        return compare.summarize(
            runs=10, tasks_per_run=1, t0=0.0, end=10 / tasks_per_s, start_ms=[p50] * 10,
            result_ms=[p50] * 10,
        )

    ratchet = {"noop": row(500, 900), "chain": row(400, 50), "latency": row(100, 4)}
    celery = {"noop": row(1000, 800), "chain": row(500, 40), "latency": row(100, 2)}
    report = compare.build_report(ratchet, celery)
    assert report["ratchet_tasks_per_s"] == 500.0
    assert report["celery_tasks_per_s"] == 1000.0
    assert report["ratio"] == 0.5
    assert report["ratchet_start_p50_ms"] == 4.0 and report["ratchet_start_p99_ms"] == 4.0
    assert set(report["workloads"]) == {"noop", "chain", "latency"}
    assert report["workloads"]["chain"]["ratio_tasks_per_s"] == 0.8
    table = compare.format_table(report)
    assert "ratio" in table and "celery" in table


def test_report_with_one_system_is_valid_json() -> None:
    ratchet = {"noop": compare.summarize(runs=1, tasks_per_run=1, t0=0, end=1, start_ms=[],
                                         result_ms=[])}
    report = compare.without_nan(compare.build_report(ratchet, {}))
    assert report["ratio"] is None and report["celery_tasks_per_s"] is None
    json.dumps(report, allow_nan=False)
    assert "n/a" in compare.format_table(compare.build_report(ratchet, {}))


def test_soak_growth_uses_the_windows_after_warmup() -> None:
    samples = [
        # the warm-up tasks (the first 200): RSS climbs, which must not count as growth
        *(soak.Sample(t=i, completed=i * 10, rss_mb={"api": 50.0 + i}) for i in range(20)),
        *(soak.Sample(t=i, completed=i * 10, rss_mb={"api": 100.0}) for i in range(20, 90)),
        *(soak.Sample(t=i, completed=i * 10, rss_mb={"api": 104.0}) for i in range(90, 101)),
    ]
    result = soak.growth(samples, warmup=200, measured=800)["api"]
    assert result["baseline_mb"] == 100.0
    assert result["end_mb"] == 104.0
    assert result["growth_pct"] == 4.0
    assert result["peak_mb"] == 104.0


def test_soak_verdict_needs_drained_queues_and_bounded_growth() -> None:
    clean = {"tasks_not_terminal": {}, "outbox_rows": 0,
             "jetstream_pending": {"TASK/scheduler": {"pending": 0, "ack_pending": 0}}}
    good = {"rss_growth_pct": 3.0, "lost_runs": 0, "queue_depths": clean, "rss_over_bound": {}}
    assert soak.passed(good)
    assert not soak.passed({**good, "rss_growth_pct": 6.0})
    assert not soak.passed({**good, "rss_growth_pct": None})
    assert not soak.passed({**good, "lost_runs": 1})
    backlog = {**clean, "jetstream_pending": {"TASK/scheduler": {"pending": 3, "ack_pending": 0}}}
    assert not soak.passed({**good, "queue_depths": backlog})
    # A peak past its bound fails; a short run gates on the bounds only.
    over = soak.over_bound({"dispatcher": soak.RSS_BOUNDS_MB["dispatcher"] + 1, "api": 1.0})
    assert over == {"dispatcher": soak.RSS_BOUNDS_MB["dispatcher"] + 1}
    assert not soak.passed({**good, "rss_over_bound": over})
    assert soak.passed({**good, "rss_growth_pct": 40.0}, gate="bounds")
    assert not soak.passed({**good, "rss_over_bound": over}, gate="bounds")


@pytest.fixture
def celery_side() -> Iterator[compare.CelerySide]:
    from bench import celery_app

    with celery_app.PrivateRedis() as redis, tempfile.TemporaryDirectory() as logs:
        assert redis.port != 6379  # never the machine's own Redis
        celery_app.configure(redis.url)
        worker = compare.CeleryWorker(redis.url, logs)
        worker.start()
        try:
            yield compare.CelerySide(celery_app, redis.url)
        finally:
            worker.stop()
            celery_app.app.close()


@pytest.mark.stack
def test_celery_side_runs_tasks_and_chains(celery_side: compare.CelerySide) -> None:
    noop = celery_side.noop(20)  # the first result also waits out the worker's start
    assert noop["runs"] == 20 and noop["tasks_per_s"] > 0
    assert noop["start_p50_ms"] >= 0 and noop["result_p50_ms"] >= noop["start_p50_ms"]
    chains = celery_side.chains(5)  # raises unless each chain ran all three steps
    assert chains["tasks"] == 15


def test_cpu_accounting_counts_a_process_tree(tmp_path) -> None:
    """bench.cpu reads utime + stime from /proc: a busy child shows up in its parent's tree
    (live, then reaped into cutime/cstime), and the pid files of a stack are read by name."""
    import os
    import subprocess
    import sys

    from bench import cpu

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    child = subprocess.Popen([sys.executable, "-c", burn])
    child.wait()
    me = os.getpid()
    assert cpu.cpu_s(me, tree=True) - cpu.cpu_s(me, tree=False) >= 0.25
    assert cpu.cpu_s(2**22 + 12345, tree=True) == 0.0  # no such process

    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "scheduler.pid").write_text(f"{me}\n")
    (tmp_path / "pids" / "broken.pid").write_text("not a pid\n")
    old = cpu.RUN
    cpu.RUN = tmp_path
    try:
        assert cpu.stack_pids() == {"scheduler": me}
    finally:
        cpu.RUN = old
