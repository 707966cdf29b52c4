"""One embedded replicator per data directory: an advisory lock on `<DATA_DIR>/chdb.lock`.

chDB opens its directory inside the process. A second process opening it fails inside chDB
("Error initializing EmbeddedServer: BAD_ARGUMENTS"; the reason, a lock on `status`, only goes
to stdout), and a second session in the same process opens it without complaint. So the
replicator takes an exclusive `flock` of its own before it connects to anything and holds it
until it stops: a second replicator on the same DATA_DIR, in this process or another, refuses
to start and says why. The kernel drops the lock when its holder exits, however it exits, so
a replicator restarted after a crash never finds a stale lock. Several replicators make sense
only against a ClickHouse server (`CLICKHOUSE_URL`), where they share the durable consumers
and no lock is taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = "chdb.lock"


class DataDirBusy(RuntimeError):
    """Another replicator holds the data directory."""


class DataDirLock:
    """An exclusive, non-blocking lock on a data directory, released by `release()`."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise.

        Raises:
            DataDirBusy: another process (or another replicator in this one) holds it.
        """
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirBusy(
                f"another replicator{holder} holds the embedded OLAP store in "
                f"{self.path.parent}: a chDB data directory can be open in one process only. "
                "Run one replicator per DATA_DIR, or set CLICKHOUSE_URL to run several "
                "against a ClickHouse server."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Idempotent."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        if pid == os.getpid():
            return " in this process"
        return f" (pid {pid})"
    return ""
