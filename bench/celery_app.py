"""The Celery side of `make bench-compare`: the app, its tasks, and a private Redis.

The worker subprocess imports this module (`celery -A bench.celery_app worker`), so the broker
URL comes from the environment (`BENCH_REDIS_URL`), set by `bench.compare` after it started
its own redis-server. Tasks return their own start wall time: the client subtracts the trigger
wall time it recorded (same machine, same clock), as the Ratchet side does.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery

from tools import devstack

QUEUE = "bench"

app = Celery("bench")
app.conf.update(
    # The fastest honest configuration measured here: one solo process, prefetch 4, results on.
    worker_prefetch_multiplier=4,
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def configure(redis_url: str) -> None:
    """Point the app at a Redis: database 0 is the broker, database 1 the result backend."""
    app.conf.broker_url = f"{redis_url}/0"
    app.conf.result_backend = f"{redis_url}/1"


if os.environ.get("BENCH_REDIS_URL"):
    configure(os.environ["BENCH_REDIS_URL"])


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]  # celery is untyped
def noop(i: int, t: float) -> dict[str, Any]:
    """A no-op that reports when it started."""
    return {"i": i, "start": time.time()}


@app.task(name="bench.step")  # type: ignore[untyped-decorator]
def step(prev: dict[str, Any] | None = None, i: int = 0, t: float = 0.0) -> dict[str, Any]:
    """One link of a three-step chain: the first records its start, later ones count the hops."""
    if prev is None:
        return {"i": i, "start": time.time(), "steps": 1}
    return {**prev, "steps": int(prev["steps"]) + 1}


class PrivateRedis:
    """A throwaway redis-server on a free 127.0.0.1 port, data in a temp dir, no persistence.

    Never touches a Redis the machine may already run on 6379: it always picks its own port.
    """

    def __init__(self) -> None:
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> str:
        binary = devstack.ensure_binaries(("redis-server",))["redis-server"]
        self._dir = tempfile.TemporaryDirectory(prefix="ratchet-bench-redis-")
        self.port = devstack.free_port()
        log = Path(self._dir.name) / "redis.log"
        cmd = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", self._dir.name,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--logfile", str(log),
            "--daemonize", "no",
        ]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = self._proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise devstack.DevStackError(
                    f"redis-server exited with {proc.returncode}:\n{devstack.tail(log)}"
                )
            return self.ping()

        try:
            devstack.wait_until(ready, timeout_s, f"redis-server on {self.url}")
        except BaseException:
            self.stop()
            raise
        return self.url

    def ping(self) -> bool:
        import redis

        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self._proc is not None:
            devstack.terminate_pid(self._proc.pid, 10.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
