"""Settings shared by every service, read from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import msgspec


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Process-wide configuration. Every field maps to an upper-case env var."""

    # One server, or several comma-separated (the nodes of a cluster): the client connects to
    # one of them and fails over to the others.
    nats_url: str = "nats://127.0.0.1:4222"
    # Replicas of every stream and KV bucket; 0 = 3 when the server is part of a cluster that
    # can place them, else 1 (libs.common.jetstream.provision).
    nats_replicas: Annotated[int, msgspec.Meta(ge=0, le=5)] = 0
    # NATS client auth, one of: a .creds file (user JWT + seed), user/password, or a token.
    nats_creds: str = ""
    nats_user: str = ""
    nats_password: str = ""
    nats_token: str = ""
    # NATS over TLS: the CA that signed the server's certificate, and optionally a client
    # certificate when the server verifies clients.
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    # Issuing tenant NATS credentials (POST /nats-credentials, API only): the application
    # account's public key and the file holding its signing seed (libs.common.natsauth_setup).
    nats_account: str = ""
    nats_signing_seed_file: str = ""
    nats_tenant_creds_ttl_s: float = 24 * 3600.0
    # The URL handed to tenants with their credentials (nats_url when empty).
    nats_public_url: str = ""
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # HTTPS for the API when both are set.
    api_tls_cert: str = ""
    api_tls_key: str = ""
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 7077
    # TLS for the worker gRPC server when both are set; with a client CA, workers must present
    # a certificate it signed (mutual TLS).
    grpc_tls_cert: str = ""
    grpc_tls_key: str = ""
    grpc_tls_client_ca: str = ""
    dispatcher_id: str = "dispatcher-1"
    # Scheduler partitions (docs/scaling.md): the count is fixed when the CMD stream is first
    # created (an existing stream's count wins); a scheduler's instance id names its leases
    # (empty: host and pid). A lease not renewed for `scheduler_lease_s` may be taken over.
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    scheduler_instance: str = ""
    scheduler_lease_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
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
    # The API sweeps the payload store for blobs of deleted runs and expired events: one
    # tenant per tick, a tick every this many seconds (0 turns the sweeper off).
    payload_gc_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # A blob younger than this is never collected (its run row may not be committed yet).
    payload_gc_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
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
    # Child runs (docs/children.md): how deep a tree of runs may grow (a top-level run is at
    # depth 0) and how many children one task may start, over all its attempts.
    max_child_depth: int = 10
    max_children_per_task: int = 100_000
    # Days of finished history kept in PostgreSQL and the OLAP store; 0 keeps everything.
    # Whole daily partitions are dropped (migration 050, services/scheduler/partitions.py).
    retention_days: Annotated[int, msgspec.Meta(ge=0)] = 0
    log_level: str = "INFO"
    otlp_endpoint: str = ""
    service_name: str = "ratchet"
    # Bearer token of the operator endpoints (/admin: tenants, migrations). Named with the
    # RATCHET_ prefix so the env var cannot be mistaken for a tenant's; empty = those endpoints
    # answer 404.
    ratchet_operator_token: str = ""
    # Keys that sign waitpoint URLs (docs/interaction.md), comma-separated: the first signs,
    # every one is accepted, so a key is rotated by putting the new one first. Empty: a key
    # the API makes once and keeps in PostgreSQL.
    ratchet_waitpoint_keys: str = ""
    # Webhooks and alerts (docs/webhooks.md, docs/alerts.md). Outgoing deliveries are retried
    # with base x 2^attempt (capped) until `delivery_retry_for_s` after they were made.
    delivery_backoff_base_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    delivery_backoff_max_s: Annotated[float, msgspec.Meta(gt=0)] = 1800.0
    delivery_retry_for_s: Annotated[float, msgspec.Meta(gt=0)] = 24 * 3600.0
    delivery_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    delivery_concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 16
    # An alert rule's default grouping window: one message per rule per window, with a count.
    alert_window_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # How often the periodic alerts (worker.pool_empty, token.expiring) look; a workflow with
    # a task queued this long and no worker serving it is `worker.pool_empty`; a token this
    # close to its expiry is `token.expiring`.
    alert_check_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    alert_pool_empty_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    alert_token_expiring_s: Annotated[float, msgspec.Meta(gt=0)] = 7 * 24 * 3600.0
    # Email alerts: smtp://user:password@host:port (smtps:// for TLS; ?from=alerts@x.org).
    ratchet_smtp_url: str = ""
    # The dashboard's public address, for links in alerts (the API's own address when empty).
    ratchet_public_url: str = ""

    def __post_init__(self) -> None:
        pairs = (
            ("API_TLS_CERT", self.api_tls_cert, "API_TLS_KEY", self.api_tls_key),
            ("GRPC_TLS_CERT", self.grpc_tls_cert, "GRPC_TLS_KEY", self.grpc_tls_key),
            ("NATS_TLS_CERT", self.nats_tls_cert, "NATS_TLS_KEY", self.nats_tls_key),
        )
        for cert_name, cert, key_name, key in pairs:
            if bool(cert) != bool(key):
                raise ValueError(f"{cert_name} and {key_name} must be set together")
        if self.grpc_tls_client_ca and not self.grpc_tls_cert:
            raise ValueError("GRPC_TLS_CLIENT_CA (mutual TLS) needs GRPC_TLS_CERT/GRPC_TLS_KEY")
        auths = [name for name, value in (
            ("NATS_CREDS", self.nats_creds), ("NATS_USER", self.nats_user),
            ("NATS_TOKEN", self.nats_token),
        ) if value]
        if len(auths) > 1:
            raise ValueError(f"set only one NATS auth method, not {' and '.join(auths)}")
        if bool(self.nats_user) != bool(self.nats_password):
            raise ValueError("NATS_USER and NATS_PASSWORD must be set together")

    @property
    def nats_servers(self) -> list[str]:
        """NATS_URL split into its servers."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


# Settings users set next to their SDK variables carry the RATCHET_ prefix (the documented
# contract); every other field reads its upper-cased name.
ENV_NAMES: dict[str, str] = {
    "payload_inline_bytes": "RATCHET_PAYLOAD_INLINE_BYTES",
    "max_payload_bytes": "RATCHET_MAX_PAYLOAD_BYTES",
    "retention_days": "RATCHET_RETENTION_DAYS",
    "partitions": "RATCHET_PARTITIONS",
    "scheduler_instance": "RATCHET_SCHEDULER_INSTANCE",
    "scheduler_lease_s": "RATCHET_SCHEDULER_LEASE_S",
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
