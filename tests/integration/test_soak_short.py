"""`make soak` in a shortened form: a private `make up` stack, a few thousand tasks (10 KiB
outputs and a log line each), and every process's peak RSS under the bound docs/operations.md
states for it. Growth after warm-up is not gated here: a run this short measures warm-up, not
leaks (`make soak` gates it over 100,000 tasks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.soak import RSS_BOUNDS_MB

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.stack
@pytest.mark.timeout(300)
def test_soak_short_stays_under_the_documented_bounds() -> None:
    # Not tmp_path: its parents are 0700, and as root PostgreSQL runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="ratchet-soak-"))
    base.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env |= {
        "RATCHET_RUN_DIR": str(base / "run"),
        "SOAK_WARMUP_TASKS": os.environ.get("SOAK_SHORT_WARMUP", "300"),
        "SOAK_TASKS": os.environ.get("SOAK_SHORT_TASKS", "2000"),
        "SOAK_GATE": "bounds",
        "SOAK_OUT": str(base / "soak.json"),
    }
    stack = [sys.executable, "-m", "tools.devstack"]
    up = subprocess.run([*stack, "up"], cwd=ROOT, env=env, capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        # What `make soak` sources: the stack's URLs and token.
        for line in (base / "run" / "env").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key and not key.startswith("#"):
                env[key.strip()] = value.strip()
        result = subprocess.run(
            [sys.executable, "-m", "bench.soak"], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=240,
        )
        summary = result.stdout[-3000:] + result.stderr[-3000:]
        assert (base / "soak.json").exists(), summary
        report = json.loads((base / "soak.json").read_text())
        assert report["succeeded"] == report["tasks"] == int(env["SOAK_WARMUP_TASKS"]) + int(
            env["SOAK_TASKS"]), summary
        assert report["lost_runs"] == 0, summary
        # Every process was sampled, and none went past its bound.
        assert set(RSS_BOUNDS_MB) <= set(report["rss_peak_mb"]), report["rss_peak_mb"]
        assert report["rss_over_bound"] == {}, (report["rss_peak_mb"], summary)
        assert report["passed"] and result.returncode == 0, summary
    finally:
        subprocess.run([*stack, "down"], cwd=ROOT, env=env, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
