"""A private multi-process devstack for the cluster benches (chaos_cluster.py, scale.py).

Each harness runs its own stack in its own run directory (never the `.run/` of `make up`): the
process counts (NATS_NODES, SCHEDULERS, ...) go to `python -m tools.devstack`, and the URLs a
shell may have exported from another stack's env file are scrubbed first, so `up` manages
NATS and PostgreSQL of this run directory, not someone else's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# What a stack's env file exports: from another stack they would make `up` adopt its servers.
FOREIGN = ("NATS_URL", "DATABASE_URL", "NATS_CREDS", "NATS_REPLICAS", "RATCHET_API_URL",
           "RATCHET_GRPC_ADDR", "RATCHET_TOKEN", "RATCHET_TENANT", "RATCHET_OPERATOR_TOKEN")


@dataclass
class Stack:
    """`tools.devstack` for one run directory and one set of process counts."""

    run_dir: Path
    counts: Mapping[str, int] = field(default_factory=dict)  # e.g. {"NATS_NODES": 3}

    def stack_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
        env["RATCHET_RUN_DIR"] = str(self.run_dir)
        env.update({k: str(v) for k, v in self.counts.items()})
        return env

    def devstack(self, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "tools.devstack", *args], cwd=ROOT, env=self.stack_env(),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"devstack {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def up(self) -> None:
        self.devstack("up")

    def down(self) -> None:
        self.devstack("down")

    def clean(self) -> None:
        self.devstack("clean")

    def processes(self) -> list[dict[str, Any]]:
        """`status --json`: role, index, name, pid, alive, ports of every process."""
        rows: list[dict[str, Any]] = json.loads(self.devstack("status", "--json"))["processes"]
        return rows

    def env(self) -> dict[str, str]:
        """The stack's env file (RATCHET_API_URL, NATS_URL, DATABASE_URL, ...)."""
        values: dict[str, str] = {}
        for line in (self.run_dir / "env").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
        return values

    def export_env(self) -> dict[str, str]:
        """Put the stack's env into os.environ (this process and the workers it starts)."""
        values = self.env()
        os.environ.update(values)
        return values

    def ensure_tenant(self, tenant: str) -> str:
        """Create `tenant` with `python -m tools.admin ensure-tenant`; returns its token."""
        from tools.devstack.stack import admin

        out = admin(self.env()["DATABASE_URL"], "ensure-tenant", tenant)
        for line in out.splitlines():
            if line.startswith("RATCHET_TOKEN="):
                return line.partition("=")[2].strip()
        raise RuntimeError(f"ensure-tenant {tenant}: no token in {out!r}")


def by_role(rows: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["role"] == role]


def http_json(port: int, path: str, timeout_s: float = 2.0) -> Any:
    """GET a JSON document from 127.0.0.1:port (NATS monitoring, service metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as resp:
        return json.loads(resp.read())


def metric(port: int, name: str, timeout_s: float = 2.0) -> float:
    """The sum of a Prometheus metric's samples on a service's metrics port (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def worker_spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A worker process (`python -m ...`) with this process's env, output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
