"""The local development stack behind `make up` / `make down`.

    python -m tools.devstack up|down|clean|status|env

`up` starts, in the background and idempotently: NATS JetStream (unless NATS_URL is set),
a private PostgreSQL cluster (unless DATABASE_URL is set), runs migrations, ensures tenant `dev`
with a stable token, then the services that exist (replicator, scheduler, matcher, dispatcher,
api), waiting for each one's /healthz. State lives under `.run/`:

    .run/env              KEY=value lines (RATCHET_API_URL, RATCHET_GRPC_ADDR, RATCHET_TOKEN, ...)
    .run/ports.json       ports chosen once and reused by later `up`s
    .run/pids/<name>.pid  one per process
    .run/logs/<name>.log  stdout+stderr of each process
    .run/nats/ .run/pg/   NATS file store, PostgreSQL data directory
    .run/data/            DATA_DIR of the services
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from tools.devstack import procs
from tools.devstack.natsserver import NatsServer
from tools.devstack.postgres import PostgresCluster

if TYPE_CHECKING:
    from libs.common.natsauth_setup import AuthLayout

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

SERVICES_START = ("replicator", "scheduler", "matcher", "dispatcher", "api")
SERVICES_STOP = ("api", "dispatcher", "matcher", "scheduler", "replicator")
ALL = (*SERVICES_START, "postgres", "nats")
TENANT = "dev"
HEALTH_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


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


def service_pid(name: str) -> int | None:
    """Pid of the live `services.<name>` process recorded in its pid file."""
    pid = procs.read_pid_file(pid_file(name))
    if pid is None or not procs.pid_alive(pid):
        return None
    argv = procs.pid_cmdline(pid)
    if argv is not None and f"services.{name}" not in argv:
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


# ---------------------------------------------------------------------------------- up


def nats_auth() -> AuthLayout:
    """Operator, accounts and per-service credentials, created on the first `up` and kept."""
    from libs.common.natsauth_setup import ensure_layout  # lazy: needs the venv (nkeys)

    return ensure_layout(NATS_AUTH)


def start_nats(ports: dict[str, int], auth: AuthLayout) -> str:
    server = NatsServer(
        RUN / "nats", pid_file=pid_file("nats"), log_file=log_file("nats"),
        auth_conf=auth.server_conf, probe={"user_credentials": str(auth.tools_creds)},
    )
    running = server.is_running()
    server.port = pick_port(ports, "nats", running)
    url = server.start()
    ports["nats"] = server.port
    origin = "already running" if server.adopted else f"started from {server.binary}"
    say(f"nats {origin} at {url} (pid {server.pid})")
    if server.adopted and "-c" not in (procs.pid_cmdline(server.pid or 0) or ["-c"]):
        say("WARNING: this nats-server was started without auth (by an older `make up`); "
            "`make down && make up` turns auth on")
    return url


def start_postgres(ports: dict[str, int]) -> str:
    cluster = PostgresCluster(
        RUN / "pg", pid_file=pid_file("postgres"), log_file=log_file("postgres")
    )
    running = cluster.is_running()
    cluster.port = pick_port(ports, "postgres", running)
    dsn = cluster.start()
    ports["postgres"] = cluster.port
    say(
        f"postgres {'already running' if cluster.adopted else 'started'} at {dsn} (pid {cluster.pid})"
    )
    return dsn


def admin(database_url: str, *args: str) -> str:
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [python(), "-m", "libs.common.admin", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"stack: `admin {' '.join(args[:1])}` failed ({result.returncode})")
    return result.stdout


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def fail_service(name: str, pid: int | None, why: str) -> None:
    sys.stderr.write(f"stack: {name} {why}; last lines of {log_file(name)}:\n")
    sys.stderr.write(procs.tail(log_file(name)) + "\n")
    if pid is not None:
        procs.terminate_pid(pid, 5.0, group=True)
    pid_file(name).unlink(missing_ok=True)
    raise SystemExit(1)


def start_service(name: str, env: dict[str, str], metrics_port: int) -> None:
    pid = service_pid(name)
    if pid is None:
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(log_file(name), "ab") as log:
            proc = subprocess.Popen(
                [python(), "-m", f"services.{name}"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pid = proc.pid
        procs.write_pid_file(pid_file(name), pid)
        state = "started"
    else:
        proc = None
        state = "already running"
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while not healthy(metrics_port):
        if proc is not None and proc.poll() is not None:
            fail_service(name, None, f"exited with code {proc.returncode} before it was healthy")
        if proc is None and not procs.pid_alive(pid):
            fail_service(name, None, "died before it was healthy")
        if time.monotonic() >= deadline:
            fail_service(name, pid, f"not healthy on :{metrics_port} after {HEALTH_TIMEOUT_S:.0f}s")
        time.sleep(0.1)
    if proc is not None:
        proc.returncode = 0  # detached on purpose: silence Popen's "still running" warning
    say(f"{name} {state} (pid {pid}, metrics :{metrics_port})")


def cmd_up() -> int:
    for d in (RUN, PIDS, LOGS, DATA):
        d.mkdir(parents=True, exist_ok=True)
    ports = read_ports()
    old_env = read_env_file()
    managed = ports.get("managed_nats", 0) == 1, ports.get("managed_pg", 0) == 1

    # A shell that sourced .run/env has our own URLs in its environment: still ours to manage.
    ext_nats = os.environ.get("NATS_URL", "")
    auth: AuthLayout | None = None  # ours when we run NATS; else NATS_CREDS etc. pass through
    if ext_nats and not (managed[0] and ext_nats == old_env.get("NATS_URL")):
        nats_url = ext_nats
        ports["managed_nats"] = 0
        say(f"using NATS_URL from the environment: {nats_url}")
    else:
        auth = nats_auth()
        nats_url = start_nats(ports, auth)
        ports["managed_nats"] = 1
    write_ports(ports)

    ext_db = os.environ.get("DATABASE_URL", "")
    if ext_db and not (managed[1] and ext_db == old_env.get("DATABASE_URL")):
        database_url = ext_db
        ports["managed_pg"] = 0
        say("using DATABASE_URL from the environment")
    else:
        database_url = start_postgres(ports)
        ports["managed_pg"] = 1
    write_ports(ports)

    admin(database_url, "migrate")
    token = old_env.get("RATCHET_TOKEN") or "rt_" + secrets.token_urlsafe(32)
    out = admin(database_url, "ensure-tenant", TENANT, "--token", token)
    for line in out.splitlines():
        if line.startswith("RATCHET_TOKEN="):
            token = line.partition("=")[2].strip()
    say(f"migrations applied; tenant {TENANT!r} ready")
    # Kept across `up`s like the tenant token, so a shell that sourced .run/env stays valid.
    operator_token = old_env.get("RATCHET_OPERATOR_TOKEN") or "op_" + secrets.token_urlsafe(32)

    present = [s for s in SERVICES_START if (ROOT / "services" / s / "__main__.py").exists()]
    api_port = pick_port(ports, "api", service_pid("api") is not None)
    grpc_port = pick_port(ports, "grpc", service_pid("dispatcher") is not None)
    metrics = {s: pick_port(ports, f"metrics_{s}", service_pid(s) is not None) for s in present}
    write_ports(ports)
    values = {
        "RATCHET_API_URL": f"http://127.0.0.1:{api_port}",
        "RATCHET_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
        "RATCHET_TOKEN": token,
        "RATCHET_TENANT": TENANT,
        "RATCHET_OPERATOR_TOKEN": operator_token,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
    }
    if auth is not None:
        # For tools run with this env (bench, debugging): full access on the dev stack.
        values["NATS_CREDS"] = str(auth.tools_creds)
    write_env_file(values)

    base = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "API_PORT": str(api_port),
        "RATCHET_OPERATOR_TOKEN": operator_token,
        "GRPC_PORT": str(grpc_port),
        "DISPATCHER_ID": os.environ.get("DISPATCHER_ID", "dispatcher-1"),
        "DATA_DIR": str(DATA),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "PYTHONUNBUFFERED": "1",
    }
    for name in present:
        env = {**base, "METRICS_PORT": str(metrics[name])}
        if auth is not None:
            env.update(auth.service_env(name))  # its own credentials, not the tools' ones
        start_service(name, env, metrics[name])
    missing = [s for s in SERVICES_START if s not in present]
    if missing:
        say(f"not started (no services/<name>/__main__.py yet): {', '.join(missing)}")
    say(f"up; environment in {ENV_FILE}")
    return 0


# ---------------------------------------------------------------------------------- down


def cmd_down() -> int:
    for name in SERVICES_STOP:
        pid = service_pid(name)
        if pid is not None:
            killed = procs.terminate_pid(pid, STOP_TIMEOUT_S)
            if killed:
                procs.terminate_pid(pid, 1.0, group=True)
            say(f"{name} stopped (pid {pid}{', SIGKILLed' if killed else ''})")
        pid_file(name).unlink(missing_ok=True)
    cluster = PostgresCluster(RUN / "pg", pid_file=pid_file("postgres"))
    if cluster.is_running():
        cluster.stop(STOP_TIMEOUT_S)
        say("postgres stopped")
    pid_file("postgres").unlink(missing_ok=True)
    nats = NatsServer(RUN / "nats", pid_file=pid_file("nats"))
    if nats.is_running():
        nats.stop(STOP_TIMEOUT_S)
        say("nats stopped")
    pid_file("nats").unlink(missing_ok=True)
    return 0


def cmd_clean() -> int:
    cmd_down()
    if RUN.exists():
        shutil.rmtree(RUN)
        say(f"removed {RUN}/")
    return 0


def cmd_status() -> int:
    env = read_env_file()
    ports = read_ports()
    for name in ALL:
        if name == "postgres":
            pid = PostgresCluster(RUN / "pg").running_pid()
        elif name == "nats":
            pid = NatsServer(RUN / "nats", pid_file=pid_file("nats")).running_pid()
        else:
            pid = service_pid(name)
        if pid is not None:
            state = f"running  pid {pid}"
        elif pid_file(name).exists():
            state = "dead     (stale pid file)"
        else:
            state = "stopped"
        port = ports.get(name) or ports.get(f"metrics_{name}")
        extra = f"  port {port}" if port and pid is not None else ""
        print(f"{name:<11} {state}{extra}")
    if env:
        print(f"env: {ENV_FILE} (RATCHET_API_URL={env.get('RATCHET_API_URL')})")
    return 0


def cmd_env() -> int:
    if not ENV_FILE.exists():
        print("stack: no .run/env yet: run `make up`", file=sys.stderr)
        return 1
    sys.stdout.write(ENV_FILE.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "clean", "status", "env"))
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if (
        args.command == "up"
        and VENV_PY.exists()
        and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve()
    ):
        # `up` needs nats-py for the JetStream probe: re-run under the project's venv.
        os.execv(str(VENV_PY), [str(VENV_PY), "-m", "tools.devstack", *(argv or sys.argv[1:])])
    commands = {
        "up": cmd_up,
        "down": cmd_down,
        "clean": cmd_clean,
        "status": cmd_status,
        "env": cmd_env,
    }
    try:
        return commands[args.command]()
    except procs.DevStackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
