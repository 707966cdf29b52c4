"""How the SDK reaches a Ratchet server: the REST API over HTTP and the dispatcher over gRPC.

One `Transport` per tenant holds the token, the API and dispatcher addresses, the pooled HTTP
clients and the record of which workflow definitions it already registered. Workflows, workers
and the REST resources all talk through it, so none of them needs the `Ratchet` client object.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx

from ratchet import _payloads
from ratchet.config import ClientConfig
from ratchet.errors import MISSING_TOKEN, ApiError, ApiUnreachable, ConfigError

# Assignments carry whole inputs and parent outputs; gRPC's 4 MiB default is too small.
GRPC_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# A payload upload's body goes to the socket this much at a time (see `_slices`).
UPLOAD_SLICE_BYTES = 1024 * 1024


class Transport:
    """HTTP and gRPC plumbing for one tenant."""

    def __init__(self, config: ClientConfig, *, timeout_s: float = 75.0) -> None:
        self.config = config
        self._timeout_s = timeout_s
        self._sync: httpx.Client | None = None
        self._async: dict[int, httpx.AsyncClient] = {}
        self._lock = threading.Lock()
        # Workflow name → the spec last registered through this transport: a definition is
        # posted again only when it changed, not before every run.
        self._registered: dict[str, dict[str, Any]] = {}

    # HTTP ---------------------------------------------------------------------------
    def _verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify`: the configured CA (and client certificate), else system roots."""
        c = self.config
        if not (c.tls_ca or c.tls_cert):
            return True
        ctx = ssl.create_default_context(cafile=c.tls_ca or None)
        if c.tls_cert:
            ctx.load_cert_chain(c.tls_cert, c.tls_key)
        return ctx

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._token()}"}

    def _token(self) -> str:
        if not self.config.token:
            raise ConfigError(MISSING_TOKEN)
        return self.config.token

    def _unreachable(self, exc: httpx.TransportError) -> ApiUnreachable:
        return ApiUnreachable(
            f"cannot reach the Ratchet API at {self.config.api_url} ({exc or type(exc).__name__}): "
            "is it running? Set RATCHET_API_URL or pass Ratchet(api_url=...)"
        )

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._sync is None:
                self._sync = httpx.Client(
                    base_url=self.config.api_url, headers=self._headers(), timeout=self._timeout_s,
                    verify=self._verify(),
                )
            return self._sync

    def _aclient(self) -> httpx.AsyncClient:
        # One AsyncClient per event loop: connections cannot cross loops.
        key = id(asyncio.get_running_loop())
        client = self._async.get(key)
        if client is None:
            client = httpx.AsyncClient(
                base_url=self.config.api_url, headers=self._headers(), timeout=self._timeout_s,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
                verify=self._verify(),
            )
            self._async[key] = client
        return client

    def request(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        """Call the REST API; the decoded JSON body, or None for an empty one."""
        try:
            resp = self._client().request(method, path, json=json, params=params)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable(exc) from exc
        return decode(resp)

    async def arequest(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        try:
            resp = await self._aclient().request(method, path, json=json, params=params)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable(exc) from exc
        return decode(resp)

    # payloads -----------------------------------------------------------------------
    async def aupload(self, scope_id: str, data: bytes) -> _payloads.Ref:
        """Store `data` through the API as a payload of `scope_id` (a run id).

        Raises:
            PayloadTooLarge: the server's limit is lower than `data` (its 413).
        """
        resp = await self._aclient().put(
            f"/payloads/{scope_id}", content=_slices(data),
            # Announced, so the body goes out with a length rather than chunked encoding
            # (and the server can refuse an oversized one before reading it).
            headers={"content-type": "application/octet-stream",
                     "content-length": str(len(data))},
        )
        if resp.status_code == 413:
            extra = resp.json().get("extra") or {}
            raise _payloads.PayloadTooLarge(int(extra.get("size", len(data))),
                                            int(extra.get("limit", 0)))
        body = decode(resp)
        return _payloads.Ref(body["key"], body["sha256"], int(body["size"]))

    async def adownload(self, ref: _payloads.Ref) -> bytearray:
        """The payload `ref` names, streamed from the API (which checks its sha256)."""
        # Written into one buffer of the announced size: no list of chunks joined at the end
        # (which would hold the payload twice).
        buf = bytearray(ref.size)
        got = 0
        async with self._aclient().stream(
            "GET", f"/payloads/blobs/{ref.key}", params={"size": ref.size}
        ) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                decode(resp)
            async for chunk in resp.aiter_bytes():
                end = got + len(chunk)
                if end > ref.size:
                    raise ApiError(502, f"payload {ref.key}: more than {ref.size} bytes", None)
                buf[got:end] = chunk
                got = end
        if got != ref.size:
            raise ApiError(502, f"payload {ref.key}: got {got} bytes of {ref.size}", None)
        return buf

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        for client in list(self._async.values()):
            await client.aclose()
        self._async.clear()

    # workflow registration ----------------------------------------------------------
    def register(self, spec: dict[str, Any]) -> None:
        """Register a workflow definition unless this exact one already was."""
        if self._registered.get(spec["name"]) != spec:
            self.request("POST", "/workflows", json=spec)
            self._registered[spec["name"]] = spec

    async def aregister(self, spec: dict[str, Any]) -> None:
        if self._registered.get(spec["name"]) != spec:
            await self.arequest("POST", "/workflows", json=spec)
            self._registered[spec["name"]] = spec

    # gRPC ---------------------------------------------------------------------------
    @property
    def grpc_addrs(self) -> tuple[str, ...]:
        """Every dispatcher a worker may connect to (see `ClientConfig.grpc_addr`)."""
        return self.config.grpc_addrs

    def grpc_channel(self, addr: str | None = None) -> grpc.aio.Channel:
        """A new channel to the dispatcher at `addr` (default: the first listed); the caller
        closes it. Every address gets the same TLS settings."""
        target = addr or self.config.grpc_addrs[0]
        options = [("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES)]
        c = self.config
        if not c.grpc_tls:
            return grpc.aio.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(c.tls_ca),
            private_key=_read(c.tls_key),
            certificate_chain=_read(c.tls_cert),
        )
        return grpc.aio.secure_channel(target, credentials, options=options)

    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token()}"),)


async def _slices(data: bytes) -> AsyncIterator[bytes]:
    """`data` as a request body, one slice at a time.

    Handed to httpx whole, a body reaches asyncio's socket transport in one write, and the
    transport keeps the part the socket did not take at once by slicing it off (a copy) and
    appending that to its write buffer (another): a 64 MiB output's JSON was then in memory
    three times. A slice at a time, the transport buffers at most one slice before the writer
    waits.
    """
    for start in range(0, len(data), UPLOAD_SLICE_BYTES):
        yield data[start : start + UPLOAD_SLICE_BYTES]


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def decode(resp: httpx.Response) -> Any:
    """The JSON body of a successful response; an `ApiError` for a 4xx/5xx one."""
    if resp.status_code >= 400:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            detail, extra = body.get("detail", resp.text), body.get("extra")
        else:
            detail, extra = resp.text, None
        raise ApiError(resp.status_code, str(detail), extra)
    if not resp.content:
        return None
    return resp.json()
