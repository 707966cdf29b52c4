"""Where the local stack keeps its state (`.run/`, or RATCHET_RUN_DIR) and how it reads it.

Standard library only: `make down` and `make status` run with a bare python3.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tools.devstack import procs
from tools.devstack.layout import Instance

ROOT = Path(__file__).resolve().parents[2]

# RATCHET_RUN_DIR lets tests (the chaos suite) run a second, private stack.
RUN = Path(os.environ.get("RATCHET_RUN_DIR") or ROOT / ".run").resolve()
PIDS = RUN / "pids"
LOGS = RUN / "logs"
DATA = RUN / "data"
ENV_FILE = RUN / "env"
NATS_AUTH = RUN / "nats-auth"
PORTS_FILE = RUN / "ports.json"
VENV_PY = ROOT / ".venv" / "bin" / "python"


def say(msg: str) -> None:
    print(f"stack: {msg}", flush=True)


def python() -> str:
    return str(VENV_PY) if VENV_PY.exists() else sys.executable


def pid_file(name: str) -> Path:
    return PIDS / f"{name}.pid"


def log_file(name: str) -> Path:
    return LOGS / f"{name}.log"


# ---------------------------------------------------------------------------------- state


def read_env_file() -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = ENV_FILE.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def write_env_file(values: dict[str, str]) -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{key}={value}\n" for key, value in values.items())
    tmp = ENV_FILE.with_name("env.tmp")
    tmp.write_text(body)
    tmp.replace(ENV_FILE)


def read_ports() -> dict[str, int]:
    try:
        raw = json.loads(PORTS_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int)}


def write_ports(ports: dict[str, int]) -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    tmp = PORTS_FILE.with_name("ports.json.tmp")
    tmp.write_text(json.dumps(ports, indent=2, sort_keys=True) + "\n")
    tmp.replace(PORTS_FILE)


def service_pid(inst: Instance) -> int | None:
    """Pid of the live `services.<role>` process recorded in the instance's pid file."""
    pid = procs.read_pid_file(pid_file(inst.name))
    if pid is None or not procs.pid_alive(pid):
        return None
    argv = procs.pid_cmdline(pid)
    if argv is not None and f"services.{inst.role}" not in argv:
        return None  # pid reused by an unrelated process
    return pid


def pick_port(ports: dict[str, int], key: str, running: bool) -> int:
    """The stable port for `key`; a new one when unset or (while ours is down) taken by others."""
    port = ports.get(key)
    if port is None or (not running and not procs.port_is_free(port)):
        if port is not None:
            say(f"port {port} for {key} is taken by another process; choosing a new one")
        port = procs.free_port()
        ports[key] = port
    return port
