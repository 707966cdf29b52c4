"""TLS everywhere: a CA made at test time signs the certificates of nats-server (TLS + auth),
the API (HTTPS) and the dispatcher (gRPC with mutual TLS); a workflow runs through the SDK,
configured only by its RATCHET_TLS_* environment variables."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from ratchet import Context, Ratchet
from securestack import SecureStack, permission_violations, secure_stack

from tools import devstack

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return path


def _sign(subject: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          usage: x509.ObjectIdentifier | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(issuer_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(root: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a worker client certificate."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _sign("ratchet-test-ca", None, ca_key, ca=True)
    files: dict[str, Path] = {"ca": root / "ca.pem"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                        ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _sign(f"ratchet-test-{role}", (ca_cert.subject, ca_key), key, usage=usage)
        files[f"{role}_cert"] = root / f"{role}.pem"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"] = _write_key(root / f"{role}.key", key)
    return Pki(**files)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _client_ssl(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


@pytest.fixture(scope="module")
def tls_nats(pki: Pki, nats_auth: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nats-server with TLS and auth (the auth layout of the `nats_auth` fixture)."""
    base = tmp_path_factory.mktemp("nats-tls")
    layout = nats_auth.layout
    server = devstack.NatsServer(
        base / "store", log_file=base / "nats-server.log", auth_conf=layout.server_conf,
        tls_cert=pki.server_cert, tls_key=pki.server_key,
        probe={"user_credentials": str(layout.tools_creds), "tls": _client_ssl(pki)},
    )
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def tls_stack(
    pki: Pki, tls_nats: str, nats_auth: Any, new_database: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[SecureStack]:
    async with secure_stack(
        tls_nats, nats_auth.layout, new_database(), tmp_path_factory.mktemp("tls-data"),
        nats_tls_ca=str(pki.ca),
        api_tls_cert=str(pki.server_cert), api_tls_key=str(pki.server_key),
        grpc_tls_cert=str(pki.server_cert), grpc_tls_key=str(pki.server_key),
        grpc_tls_client_ca=str(pki.ca),
    ) as s:
        yield s


@pytest.fixture
def tls_env(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Pki:
    monkeypatch.setenv("RATCHET_TLS_CA", str(pki.ca))
    monkeypatch.setenv("RATCHET_TLS_CERT", str(pki.client_cert))
    monkeypatch.setenv("RATCHET_TLS_KEY", str(pki.client_key))
    monkeypatch.delenv("RATCHET_GRPC_TLS", raising=False)
    return pki


async def test_workflow_runs_over_tls_everywhere(
    tls_stack: SecureStack, tls_env: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    assert tls_stack.api_url.startswith("https://")
    _, token = await tls_stack.new_tenant()
    client = Ratchet(token=token, api_url=tls_stack.api_url, grpc_addr=tls_stack.grpc_addr)
    wf = client.workflow("over-tls")

    @wf.task()
    async def first(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"n": input["n"] + 1}

    @wf.task(parents=[first])
    def second(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"n": ctx.parent_output(first)["n"] * 10}

    worker = client.worker("w-tls", workflows=[wf], slots=2)
    task = asyncio.create_task(worker.astart())
    try:
        await worker.wait_connected(30)
        out = await asyncio.wait_for(wf.aio_run({"n": 1}), 60)
        assert out == {"first": {"n": 2}, "second": {"n": 20}}
        assert permission_violations(caplog.records) == []
    finally:
        await worker.astop(drain_timeout_s=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await client.aclose()
        client.close()


async def test_plain_connections_are_refused(tls_stack: SecureStack, tls_nats: str,
                                             pki: Pki, nats_auth: Any) -> None:
    # Plain HTTP to the HTTPS port gets no answer a client could use.
    plain = tls_stack.api_url.replace("https://", "http://")
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.HTTPError):
            await http.get(f"{plain}/healthz", timeout=5)
        # HTTPS with a CA that did not sign the server's certificate is refused by the client.
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{tls_stack.api_url}/healthz", timeout=5)
    # NATS without TLS: the server requires it.
    with pytest.raises(Exception):  # noqa: B017 - nats-py raises several kinds here
        await nats.connect(tls_nats, allow_reconnect=False, max_reconnect_attempts=0,
                           connect_timeout=2,
                           user_credentials=str(nats_auth.layout.tools_creds))


async def test_worker_without_client_certificate_cannot_connect(
    tls_stack: SecureStack, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutual TLS: the dispatcher refuses a worker whose certificate the CA did not sign."""
    monkeypatch.setenv("RATCHET_TLS_CA", str(pki.ca))
    monkeypatch.delenv("RATCHET_TLS_CERT", raising=False)
    monkeypatch.delenv("RATCHET_TLS_KEY", raising=False)
    _, token = await tls_stack.new_tenant()
    client = Ratchet(token=token, api_url=tls_stack.api_url, grpc_addr=tls_stack.grpc_addr)
    wf = client.workflow("no-client-cert")

    @wf.task()
    async def noop(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    worker = client.worker("w-no-cert", workflows=[wf], slots=1)
    task = asyncio.create_task(worker.astart())
    try:
        with pytest.raises(Exception):  # noqa: B017 - never connects: times out
            await worker.wait_connected(3)
        assert tls_stack.dispatcher.conns == {}
    finally:
        await worker.astop(drain_timeout_s=1)
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 10)
        await client.aclose()
        client.close()
