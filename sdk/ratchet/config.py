"""Client configuration from keyword arguments or the environment."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where and how to reach a Ratchet server.

    TLS, from the environment: `RATCHET_TLS_CA` (a PEM CA bundle trusted for the API and the
    dispatcher, instead of the system's), `RATCHET_TLS_CERT` / `RATCHET_TLS_KEY` (a client
    certificate, for dispatchers that require mutual TLS), and `RATCHET_GRPC_TLS` (on when a CA,
    a client certificate or an https API URL is configured; set it to override).

    `grpc_addr` may name several dispatchers, comma-separated (`a:7077,b:7077`): a worker
    connects to one of them and moves to another when its stream drops (`grpc_addrs`).
    """

    token: str
    api_url: str
    grpc_addr: str
    namespace: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    grpc_tls: bool = False

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("RATCHET_TLS_CERT and RATCHET_TLS_KEY must be set together")
        if not self.grpc_addrs:
            raise ValueError("RATCHET_GRPC_ADDR names no dispatcher address")

    @property
    def grpc_addrs(self) -> tuple[str, ...]:
        """The dispatcher addresses, in the order given."""
        return parse_addrs(self.grpc_addr)

    @classmethod
    def resolve(
        cls,
        token: str | None = None,
        api_url: str | None = None,
        grpc_addr: str | Sequence[str] | None = None,
    ) -> ClientConfig:
        api = (api_url or os.environ.get("RATCHET_API_URL", "http://127.0.0.1:8080")).rstrip("/")
        tls_ca = os.environ.get("RATCHET_TLS_CA", "")
        tls_cert = os.environ.get("RATCHET_TLS_CERT", "")
        return cls(
            token=token or os.environ.get("RATCHET_TOKEN", ""),
            api_url=api,
            grpc_addr=",".join(parse_addrs(
                grpc_addr or os.environ.get("RATCHET_GRPC_ADDR", "127.0.0.1:7077")
            )),
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=os.environ.get("RATCHET_TLS_KEY", ""),
            grpc_tls=_flag(
                "RATCHET_GRPC_TLS", bool(tls_ca or tls_cert or api.startswith("https://"))
            ),
        )


def parse_addrs(raw: str | Sequence[str]) -> tuple[str, ...]:
    """Dispatcher addresses from `a:7077,b:7077` or a list of them: stripped, empties and
    repeats dropped, order kept."""
    parts = raw.split(",") if isinstance(raw, str) else [p for item in raw for p in item.split(",")]
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")
