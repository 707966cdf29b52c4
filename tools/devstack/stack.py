"""The local development stack behind `make up` / `make down`.

    python -m tools.devstack up|down|clean|status|env

`up` starts, in the background and idempotently: NATS JetStream (unless NATS_URL is set),
a private PostgreSQL cluster (unless DATABASE_URL is set), runs migrations, ensures tenant `dev`
with a stable token, then the services that exist (replicator, scheduler, matcher, dispatcher,
api), waiting for each one's /healthz. How many of each (and NATS_NODES, NATS_SYNC): see
tools/devstack/layout.py. `status --json` lists every process with its ports. State lives under
`.run/` (RATCHET_RUN_DIR names another directory):

    .run/env              KEY=value lines (RATCHET_API_URL, RATCHET_GRPC_ADDR, RATCHET_TOKEN, ...)
    .run/ports.json       ports chosen once and reused by later `up`s, and the last counts
    .run/pids/<name>.pid  one per process
    .run/logs/<name>.log  stdout+stderr of each process
    .run/nats/ .run/pg/   NATS file store (.run/nats-cluster/<node>/ per cluster node), PostgreSQL
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
from typing import TYPE_CHECKING, Any

from tools.devstack import layout, procs
from tools.devstack.layout import Instance, NatsNode
from tools.devstack.natsserver import NatsServer
from tools.devstack.postgres import PostgresCluster
from tools.devstack.rundir import (
    DATA,
    ENV_FILE,
    LOGS,
    NATS_AUTH,
    PIDS,
    ROOT,
    RUN,
    VENV_PY,
    log_file,
    pick_port,
    pid_file,
    python,
    read_env_file,
    read_ports,
    say,
    service_pid,
    write_env_file,
    write_ports,
)

if TYPE_CHECKING:
    from libs.common.natsauth_setup import AuthLayout

TENANT = "dev"
HEALTH_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


# ---------------------------------------------------------------------------------- up


def nats_auth() -> AuthLayout:
    """Operator, accounts and per-service credentials, created on the first `up` and kept."""
    from libs.common.natsauth_setup import ensure_layout  # lazy: needs the venv (nkeys)

    return ensure_layout(NATS_AUTH)


def nats_server(node: NatsNode, **kwargs: Any) -> NatsServer:
    return NatsServer(node.store, pid_file=pid_file(node.name), log_file=log_file(node.name),
                      **kwargs)


def all_nats_nodes() -> list[NatsNode]:
    """The single server's and every possible cluster node's names (for stop and status)."""
    return [*layout.nats_nodes(RUN, 1), *layout.nats_nodes(RUN, layout.MAX_INSTANCES)]


def start_nats(ports: dict[str, int], auth: AuthLayout, count: int, sync: str | None) -> str:
    """Start (or adopt) `count` nats-servers, clustered when more than one; return NATS_URL."""
    nodes = layout.nats_nodes(RUN, count)
    others = [n.name for n in all_nats_nodes()
              if n not in nodes and nats_server(n).is_running()]
    if others:
        raise procs.DevStackError(
            f"NATS runs as {', '.join(others)}, not the {count} node(s) NATS_NODES asks for: "
            "`make down` first (the cluster's stores are separate from the single server's)"
        )
    servers = [nats_server(n, auth_conf=auth.server_conf, sync=sync,
                           probe={"user_credentials": str(auth.tools_creds)},
                           **layout.nats_memory()) for n in nodes]
    for node, server in zip(nodes, servers, strict=True):
        running = server.is_running()
        server.port = pick_port(ports, node.client_key, running)
        server.monitor_port = pick_port(ports, node.monitor_key, running)
        if count > 1:
            server.server_name = node.name
            server.cluster_port = pick_port(ports, node.cluster_key, running)
    for server in servers:
        server.routes = tuple(s.cluster_port for s in servers if count > 1)
        server.launch()
    for node, server in zip(nodes, servers, strict=True):
        server.wait_ready()
        ports[node.client_key] = server.port
        origin = "already running" if server.adopted else f"started from {server.binary}"
        say(f"{node.name} {origin} at {server.url} (pid {server.pid})")
        conf = server.store_dir.parent / f"{server.store_dir.name}.conf"
        if server.adopted and (not conf.exists() or conf.read_text() != server.config_text()):
            say(f"WARNING: {node.name} runs an older config (auth, NATS_SYNC, memory or cluster): "
                "`make down && make up` applies the current one")
    return layout.nats_url(ports, nodes)


def stop_nats() -> None:
    for node in all_nats_nodes():
        server = nats_server(node)
        if server.is_running():
            server.stop(STOP_TIMEOUT_S)
            say(f"{node.name} stopped")
        pid_file(node.name).unlink(missing_ok=True)


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
        [python(), "-m", "tools.admin", *args],
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


def start_service(inst: Instance, env: dict[str, str], metrics_port: int) -> None:
    name = inst.name
    pid = service_pid(inst)
    if pid is None:
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(log_file(name), "ab") as log:
            proc = subprocess.Popen(
                [python(), "-m", f"services.{inst.role}"],
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


def stop_service(inst: Instance) -> None:
    pid = service_pid(inst)
    if pid is not None:
        killed = procs.terminate_pid(pid, STOP_TIMEOUT_S)
        if killed:
            procs.terminate_pid(pid, 1.0, group=True)
        say(f"{inst.name} stopped (pid {pid}{', SIGKILLed' if killed else ''})")
    pid_file(inst.name).unlink(missing_ok=True)


def every_instance() -> list[Instance]:
    """Every instance `up` could have started, in stop order (api first, replicator last)."""
    return layout.instances({r: layout.MAX_INSTANCES for r in layout.ROLES})[::-1]


def cmd_up() -> int:
    counts = layout.role_counts()
    node_count = layout.nats_node_count()
    sync = layout.nats_sync()
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
        nats_url = start_nats(ports, auth, node_count, sync)
        ports["managed_nats"] = 1
        ports["nats_nodes"] = node_count
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

    present = {r for r in layout.ROLES if (ROOT / "services" / r / "__main__.py").exists()}
    wanted = [i for i in layout.instances(counts) if i.role in present]
    for inst in every_instance():
        if inst.role in present and inst not in wanted and service_pid(inst) is not None:
            say(f"{inst.name}: more than {layout.COUNT_ENV[inst.role]}={counts[inst.role]}")
            stop_service(inst)
    for inst in wanted:
        running = service_pid(inst) is not None
        pick_port(ports, inst.metrics_key, running)
        if inst.role == "dispatcher":
            pick_port(ports, inst.grpc_key, running)
        elif inst.role == "api":
            pick_port(ports, inst.api_key, running)
    for role in layout.ROLES:
        ports[f"count_{role}"] = counts[role]
    write_ports(ports)
    apis = [i for i in wanted if i.role == "api"]
    values = {
        "RATCHET_API_URL": f"http://127.0.0.1:{ports[apis[0].api_key]}" if apis else "",
        "RATCHET_GRPC_ADDR": layout.grpc_addr(ports, [i for i in wanted if i.role == "dispatcher"]),
        "RATCHET_TOKEN": token,
        "RATCHET_TENANT": TENANT,
        "RATCHET_OPERATOR_TOKEN": operator_token,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
    }
    if auth is not None:
        # Streams and buckets get one replica per node, up to 3 (libs.common.jetstream.provision).
        values["NATS_REPLICAS"] = str(layout.replicas(node_count))
        # For tools run with this env (bench, debugging): full access on the dev stack.
        values["NATS_CREDS"] = str(auth.tools_creds)
    write_env_file(values)

    base = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "RATCHET_OPERATOR_TOKEN": operator_token,
        "DATA_DIR": str(DATA),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "PYTHONUNBUFFERED": "1",
    }
    if auth is not None:
        base["NATS_REPLICAS"] = values["NATS_REPLICAS"]
    for inst in wanted:
        env = {**base, **layout.instance_env(inst, counts[inst.role], ports)}
        if auth is not None:
            env.update(auth.service_env(inst.role))  # its own credentials, not the tools' ones
        start_service(inst, env, ports[inst.metrics_key])
    missing = [r for r in layout.ROLES if r not in present]
    if missing:
        say(f"not started (no services/<name>/__main__.py yet): {', '.join(missing)}")
    say(f"up; environment in {ENV_FILE}")
    return 0


# ---------------------------------------------------------------------------------- down


def cmd_down() -> int:
    for inst in every_instance():
        stop_service(inst)
    cluster = PostgresCluster(RUN / "pg", pid_file=pid_file("postgres"))
    if cluster.is_running():
        cluster.stop(STOP_TIMEOUT_S)
        say("postgres stopped")
    pid_file("postgres").unlink(missing_ok=True)
    stop_nats()
    return 0


def cmd_clean() -> int:
    cmd_down()
    if RUN.exists():
        shutil.rmtree(RUN)
        say(f"removed {RUN}/")
    return 0


def status_rows() -> list[dict[str, Any]]:
    """Every process of the stack: the ones `up` was asked for, and any other still running."""
    ports = read_ports()
    rows: list[dict[str, Any]] = []

    def row(role: str, index: int, name: str, pid: int | None, port_keys: dict[str, str]) -> None:
        rows.append({
            "role": role, "index": index, "name": name, "pid": pid, "alive": pid is not None,
            "stale_pid_file": pid is None and pid_file(name).exists(),
            "ports": {kind: ports[key] for kind, key in port_keys.items() if key in ports},
        })

    counts = {r: ports.get(f"count_{r}", 1) for r in layout.ROLES}
    for inst in every_instance()[::-1]:
        pid = service_pid(inst)
        if inst.index > counts[inst.role] and pid is None:
            continue
        keys = {"metrics": inst.metrics_key}
        if inst.role == "dispatcher":
            keys["grpc"] = inst.grpc_key
        elif inst.role == "api":
            keys["api"] = inst.api_key
        row(inst.role, inst.index, inst.name, pid, keys)
    row("postgres", 1, "postgres", PostgresCluster(RUN / "pg").running_pid(),
        {"client": "postgres"})
    wanted = layout.nats_nodes(RUN, ports.get("nats_nodes", 1))
    for node in all_nats_nodes():
        pid = nats_server(node).running_pid()
        if node not in wanted and pid is None:
            continue
        index = int(node.name.rpartition("-")[2]) if "-" in node.name else 1
        row("nats", index, node.name, pid, {
            "client": node.client_key, "cluster": node.cluster_key, "monitor": node.monitor_key,
        })
    return rows


def cmd_status(as_json: bool = False) -> int:
    rows = status_rows()
    if as_json:
        print(json.dumps({"run_dir": str(RUN), "processes": rows}, indent=2))
        return 0
    for r in rows:
        if r["alive"]:
            state = f"running  pid {r['pid']}"
        elif r["stale_pid_file"]:
            state = "dead     (stale pid file)"
        else:
            state = "stopped"
        ports = " ".join(f"{kind} {port}" for kind, port in r["ports"].items())
        print(f"{r['name']:<13} {state}{'  ' + ports if ports and r['alive'] else ''}")
    env = read_env_file()
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
    parser.add_argument("--json", action="store_true", help="status: one JSON document")
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
        "status": lambda: cmd_status(args.json),
        "env": cmd_env,
    }
    try:
        return commands[args.command]()
    except procs.DevStackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
