"""The local development stack: private NATS JetStream and PostgreSQL, and the services.

    python -m tools.devstack up|down|clean|status|env      (what `make up` / `make down` run)

Dev tooling, not part of the shipped wheel. The test fixtures use `NatsServer` and
`PostgresCluster` from here. Only the standard library is imported at module level, so
`python3 -m tools.devstack down` works without the project's venv; nats-py is imported lazily by
the JetStream readiness probe.

Both servers can *adopt* an instance that is already running (e.g. from an earlier `make up`):
`NatsServer` by its pid file (the process's command line must match), `PostgresCluster` by the
`postmaster.pid` file in its data directory.
"""

from tools.devstack.binaries import ensure_binaries, find_binary
from tools.devstack.natsserver import NatsServer
from tools.devstack.postgres import PostgresCluster
from tools.devstack.procs import (
    DevStackError,
    free_port,
    pid_alive,
    pid_cmdline,
    port_is_free,
    port_open,
    read_pid_file,
    run_blocking,
    tail,
    terminate_pid,
    wait_until,
    write_pid_file,
)

__all__ = [
    "DevStackError",
    "NatsServer",
    "PostgresCluster",
    "ensure_binaries",
    "find_binary",
    "free_port",
    "pid_alive",
    "pid_cmdline",
    "port_is_free",
    "port_open",
    "read_pid_file",
    "run_blocking",
    "tail",
    "terminate_pid",
    "wait_until",
    "write_pid_file",
]
