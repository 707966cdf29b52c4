"""Client configuration from keyword arguments or the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientConfig:
    token: str
    api_url: str
    grpc_addr: str
    namespace: str = ""

    @classmethod
    def resolve(
        cls,
        token: str | None = None,
        api_url: str | None = None,
        grpc_addr: str | None = None,
    ) -> ClientConfig:
        return cls(
            token=token or os.environ.get("RATCHET_TOKEN", ""),
            api_url=(api_url or os.environ.get("RATCHET_API_URL", "http://127.0.0.1:8080")).rstrip("/"),
            grpc_addr=grpc_addr or os.environ.get("RATCHET_GRPC_ADDR", "127.0.0.1:7077"),
        )
