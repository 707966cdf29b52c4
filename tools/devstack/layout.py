"""How many of each process `make up` runs, what each is called, and its ports and environment.

    SCHEDULERS=2 DISPATCHERS=2 MATCHERS=2 REPLICATORS=1 APIS=1 NATS_NODES=3 NATS_SYNC=always make up

Instance 1 of every role keeps the names a one-of-each stack always had (`scheduler.pid`,
`metrics_scheduler` in ports.json), so an existing `.run/` stays valid; instance 2 and up are
`<role>-<n>`. A single NATS server is `nats` with its store in `.run/nats/`; the nodes of a
cluster are `nats-1` ... `nats-<n>`, stores in `.run/nats-cluster/<name>/` (a standalone store
is not turned into a cluster member: switching NATS_NODES starts from an empty JetStream).

Standard library only, like the rest of tools/devstack.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tools.devstack.natsserver import SYNC_ALWAYS, sync_interval
from tools.devstack.procs import DevStackError

# Start order; `down` stops in the reverse order.
ROLES: tuple[str, ...] = ("replicator", "scheduler", "matcher", "dispatcher", "api")
COUNT_ENV: Mapping[str, str] = {
    "replicator": "REPLICATORS",
    "scheduler": "SCHEDULERS",
    "matcher": "MATCHERS",
    "dispatcher": "DISPATCHERS",
    "api": "APIS",
}
NODES_ENV = "NATS_NODES"
SYNC_ENV = "NATS_SYNC"
# A durable task queue acknowledges only what is on disk (docs/operations.md).
DEFAULT_SYNC = SYNC_ALWAYS
MAX_INSTANCES = 9
# Replicas of every stream and KV bucket: 3 once the cluster can place them.
CLUSTER_REPLICAS = 3


@dataclass(frozen=True, slots=True)
class Instance:
    """One process of a role; `index` counts from 1."""

    role: str
    index: int

    @property
    def name(self) -> str:
        """Its pid file, log file and ports.json name."""
        return self.role if self.index == 1 else f"{self.role}-{self.index}"

    @property
    def metrics_key(self) -> str:
        return f"metrics_{self.name}"

    @property
    def grpc_key(self) -> str:
        return "grpc" if self.index == 1 else f"grpc_{self.name}"

    @property
    def api_key(self) -> str:
        return "api" if self.index == 1 else self.name

    @property
    def dispatcher_id(self) -> str:
        return f"dispatcher-{self.index}"


@dataclass(frozen=True, slots=True)
class NatsNode:
    """One nats-server of the stack: the single server, or a node of the cluster."""

    name: str
    store: Path

    @property
    def client_key(self) -> str:
        return self.name

    @property
    def cluster_key(self) -> str:
        return f"cluster_{self.name}"

    @property
    def monitor_key(self) -> str:
        return f"monitor_{self.name}"


def _count(environ: Mapping[str, str], name: str, default: int = 1) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DevStackError(f"{name}={raw!r} is not a number") from None
    if not 1 <= value <= MAX_INSTANCES:
        raise DevStackError(f"{name}={value}: expected 1 to {MAX_INSTANCES}")
    return value


def role_counts(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Processes per role from SCHEDULERS, DISPATCHERS, ... (1 each by default).

    More than one replicator needs a ClickHouse server (CLICKHOUSE_URL): the embedded chDB keeps
    its data directory open in one process only.
    """
    counts = {role: _count(environ, COUNT_ENV[role]) for role in ROLES}
    if counts["replicator"] > 1 and not environ.get("CLICKHOUSE_URL"):
        raise DevStackError(
            f"REPLICATORS={counts['replicator']} needs CLICKHOUSE_URL: the embedded chDB "
            "(no CLICKHOUSE_URL) opens its data directory in one process only"
        )
    return counts


def instances(counts: Mapping[str, int]) -> list[Instance]:
    """Every service process, in start order."""
    return [Instance(role, i) for role in ROLES for i in range(1, counts.get(role, 1) + 1)]


def nats_node_count(environ: Mapping[str, str] = os.environ) -> int:
    return _count(environ, NODES_ENV)


def nats_sync(environ: Mapping[str, str] = os.environ) -> str | None:
    """The sync_interval the devstack's nats-servers run with (NATS_SYNC, default `always`)."""
    return sync_interval(environ.get(SYNC_ENV, DEFAULT_SYNC))


# What bounds a devstack nats-server's memory and disk (docs/operations.md, "Memory").
MEMORY_DEFAULTS = {
    # GOMEMLIMIT: the Go runtime keeps the server's RSS near this once the heap would pass it
    # (its live data: consumers, dedupe windows, block caches, is far below on this stack).
    "NATS_MEMLIMIT": "384MiB",
    # JetStream caps. No stream here is memory-backed. File-backed data is left at the
    # server's own cap (75 % of the free disk when it starts): at the cap every publish fails,
    # commands included, and the streams' own limits (age; bytes for LOG and CHUNK) are what
    # should bound them first.
    "NATS_MAX_MEMORY_STORE": "64MB",
    "NATS_MAX_FILE_STORE": "",
}


def nats_memory(environ: Mapping[str, str] = os.environ) -> dict[str, str | None]:
    """NatsServer keyword arguments from NATS_MEMLIMIT, NATS_MAX_MEMORY_STORE and
    NATS_MAX_FILE_STORE (an empty value leaves the server's own default)."""
    value = {name: environ.get(name, default).strip() or None
             for name, default in MEMORY_DEFAULTS.items()}
    return {
        "memory_limit": value["NATS_MEMLIMIT"],
        "max_memory_store": value["NATS_MAX_MEMORY_STORE"],
        "max_file_store": value["NATS_MAX_FILE_STORE"],
    }


def nats_nodes(run: Path, count: int) -> list[NatsNode]:
    if count == 1:
        return [NatsNode("nats", run / "nats")]
    return [NatsNode(f"nats-{i}", run / "nats-cluster" / f"nats-{i}") for i in range(1, count + 1)]


def replicas(node_count: int) -> int:
    """Replicas per stream: 3 on a cluster of 3 or more, else 1 (R2 survives no failure)."""
    return CLUSTER_REPLICAS if node_count >= CLUSTER_REPLICAS else 1


def nats_url(ports: Mapping[str, int], nodes: list[NatsNode]) -> str:
    """NATS_URL for the clients: every node, comma-separated (the client picks one, fails over)."""
    return ",".join(f"nats://127.0.0.1:{ports[node.client_key]}" for node in nodes)


def grpc_addr(ports: Mapping[str, int], dispatchers: list[Instance]) -> str:
    """RATCHET_GRPC_ADDR: every dispatcher, comma-separated."""
    return ",".join(f"127.0.0.1:{ports[d.grpc_key]}" for d in dispatchers)


def instance_env(
    inst: Instance, count: int, ports: Mapping[str, int], environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """What one process gets on top of the shared environment."""
    env = {
        "RATCHET_INSTANCE": str(inst.index),
        "RATCHET_INSTANCES": str(count),
        "METRICS_PORT": str(ports[inst.metrics_key]),
    }
    if inst.role == "dispatcher":
        env["GRPC_PORT"] = str(ports[inst.grpc_key])
        # A caller's DISPATCHER_ID names the only dispatcher; with several, each its own.
        own = environ.get("DISPATCHER_ID") if count == 1 else None
        env["DISPATCHER_ID"] = own or inst.dispatcher_id
    elif inst.role == "api":
        env["API_PORT"] = str(ports[inst.api_key])
    return env
