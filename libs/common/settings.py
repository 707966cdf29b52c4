"""Settings shared by every service, read from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

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
    # Payloads (run inputs, task outputs, event data) larger than this travel as a reference to
    # a blob in the payload store instead of inline in NATS messages and PostgreSQL rows.
    payload_inline_bytes: Annotated[int, msgspec.Meta(ge=0)] = 128 * 1024
    # The largest payload accepted at all; beyond it: HTTP 413 / a PayloadTooLarge failure.
    max_payload_bytes: Annotated[int, msgspec.Meta(gt=0)] = 64 * 1024 * 1024
    max_request_bytes: int = 4 * 1024 * 1024
    worker_heartbeat_timeout_s: float = 15.0
    dispatcher_heartbeat_timeout_s: float = 15.0
    stream_max_age_s: float = 7 * 24 * 3600.0
    dedupe_window_s: float = 600.0
    max_deliver: int = 8
    # Child runs (docs/children.md): how deep a tree of runs may grow (a top-level run is at
    # depth 0) and how many children one task may start, over all its attempts.
    max_child_depth: int = 10
    max_children_per_task: int = 100_000
    log_level: str = "INFO"
    otlp_endpoint: str = ""
    service_name: str = "ratchet"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


# Settings users set next to their SDK variables carry the RATCHET_ prefix (the documented
# contract); every other field reads its upper-cased name.
ENV_NAMES: dict[str, str] = {
    "payload_inline_bytes": "RATCHET_PAYLOAD_INLINE_BYTES",
    "max_payload_bytes": "RATCHET_MAX_PAYLOAD_BYTES",
}


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    return ENV_NAMES.get(field, field.upper())


def load_settings(**overrides: object) -> Settings:
    """Build settings from env vars (see `env_name`), then apply keyword overrides."""
    raw: dict[str, object] = {}
    for field in msgspec.structs.fields(Settings):
        value = os.environ.get(env_name(field.name))
        if value is not None:
            raw[field.name] = value
    raw.update(overrides)
    # strict=False lets "8080" become 8080 and "true" become True.
    return msgspec.convert(raw, Settings, strict=False)
