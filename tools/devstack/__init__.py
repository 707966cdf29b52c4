"""The local development stack: private NATS JetStream and PostgreSQL, and the services.

    python -m tools.devstack up|down|clean|status|env      (what `make up` / `make down` run)

Dev tooling, not part of the shipped wheel. The test fixtures use `NatsServer` and
`PostgresCluster` from here. Only the standard library is imported at module level, so
`python3 -m tools.devstack down` works without the project's venv; nats-py is imported lazily by
the JetStream readiness probe.

Both servers can *adopt* an instance that is already running (e.g. from an earlier `make up`):
`NatsServer` by its pid file (the process's command line must match), `PostgresCluster` by the
`postmaster.pid` file in its data directory.

Why no process runner (supervisor, circus, honcho): `make up` must leave a healthy stack behind
and return, restart only what died, and keep ports and data across runs; `make down`, `clean`
and `status` must work with a bare `python3`. honcho runs a Procfile in the foreground and stops
everything when it exits, so it cannot return and restart one process. supervisord or circusd
could keep the services up, but they are one more daemon to start, adopt and stop (the same
pid-file logic, moved), their control clients live in the venv (breaking `down` without it),
PostgreSQL is started through `pg_ctl`, and the parts that are Ratchet's own (JetStream and
/healthz readiness gates, migrations, the tenant token, `.run/env`) would stay hand-written. What
a runner would replace here is about 40 lines of Popen + pid file + liveness check.
"""

from tools.devstack.binaries import ensure_binaries, find_binary
from tools.devstack.natsserver import NatsServer, sync_interval
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
    "sync_interval",
    "tail",
    "terminate_pid",
    "wait_until",
    "write_pid_file",
]
