"""`make chaos` in a shortened form: a private `make up` stack, every fault, fewer runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_chaos_short() -> None:
    # Not tmp_path: its parents are 0700, and as root PostgreSQL runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="ratchet-chaos-"))
    base.chmod(0o755)
    run_dir = base / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env["RATCHET_RUN_DIR"] = str(run_dir)
    env["CHAOS_RUNS"] = os.environ.get("CHAOS_RUNS_SHORT", "150")
    stack = [sys.executable, "-m", "tools.devstack"]
    up = subprocess.run([*stack, "up"], cwd=ROOT, env=env, capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        result = subprocess.run(
            [sys.executable, "-m", "bench.chaos"], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=420,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        report = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
        assert report["runs"] == int(env["CHAOS_RUNS"])
        assert report["lost_runs"] == 0
        assert report["double_completed_attempts"] == 0
        assert report["signal_runs_wrong"] == 0  # signals sent while things were down
        assert report["tasks_without_one_success"] == 0
        assert set(report["recovery_s"]) == {"scheduler", "dispatcher", "worker", "nats", "postgres"}
    finally:
        subprocess.run([*stack, "down"], cwd=ROOT, env=env, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
