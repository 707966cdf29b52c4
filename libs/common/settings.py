"""Settings shared by every service, read from the environment."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Process-wide configuration. Every field maps to an upper-case env var."""

    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 7077
    dispatcher_id: str = "dispatcher-1"
    metrics_port: int = 0
    data_dir: str = ".run/data"
    clickhouse_url: str = ""
    # The replicator's CPU niceness (0 = as urgent as the task path). OLAP rows may lag under
    # load; tasks should not wait on analytics.
    replicator_nice: int = 10
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "ratchet"
    s3_secure: bool = False
    payload_inline_max_bytes: int = 64 * 1024
    max_request_bytes: int = 4 * 1024 * 1024
    worker_heartbeat_timeout_s: float = 15.0
    dispatcher_heartbeat_timeout_s: float = 15.0
    stream_max_age_s: float = 7 * 24 * 3600.0
    # Seconds a run's stream chunks stay readable (late subscribers replay from the first).
    # Named after the env var the docs promise: RATCHET_STREAM_RETENTION.
    ratchet_stream_retention: float = 3600.0
    # Per task attempt, enforced by the dispatcher whatever the worker does (the SDK applies
    # the same defaults): lines beyond it are replaced by one marker line, then dropped.
    task_log_max_lines: int = 10_000
    task_log_max_chars: int = 10_000
    dedupe_window_s: float = 600.0
    max_deliver: int = 8
    log_level: str = "INFO"
    otlp_endpoint: str = ""
    service_name: str = "ratchet"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def load_settings(**overrides: object) -> Settings:
    """Build settings from env vars (field name upper-cased), then apply keyword overrides."""
    raw: dict[str, object] = {}
    for field in msgspec.structs.fields(Settings):
        value = os.environ.get(field.name.upper())
        if value is not None:
            raw[field.name] = value
    raw.update(overrides)
    # strict=False lets "8080" become 8080 and "true" become True.
    return msgspec.convert(raw, Settings, strict=False)
