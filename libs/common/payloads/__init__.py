"""The payload store: large payloads as blobs, referenced from messages and rows.

Payloads above `Settings.payload_inline_bytes` are written here once and travel as a
`PayloadRef` (key, sha256, size); `encode_ref` / `maybe_ref` put a reference where the
payload's JSON bytes would go. `open_store(settings)` picks the backend: S3 / MinIO when
`S3_ENDPOINT` is set, else a directory under `DATA_DIR/payloads`.
"""

from __future__ import annotations

from libs.common.payloads._errors import (
    InvalidPayloadKey,
    PayloadAccessDenied,
    PayloadCorrupt,
    PayloadError,
    PayloadNotFound,
    PayloadTooLarge,
)
from libs.common.payloads._gc import GcReport, collect_garbage, event_scope
from libs.common.payloads._local import LocalPayloadStore
from libs.common.payloads._refs import REF_MAGIC, PayloadRef, encode_ref, make_key, maybe_ref
from libs.common.payloads._s3 import S3PayloadStore
from libs.common.payloads._store import CHUNK_BYTES, BlobInfo, PayloadStore, Scope
from libs.common.settings import Settings

__all__ = [
    "CHUNK_BYTES",
    "REF_MAGIC",
    "BlobInfo",
    "GcReport",
    "InvalidPayloadKey",
    "LocalPayloadStore",
    "PayloadAccessDenied",
    "PayloadCorrupt",
    "PayloadError",
    "PayloadNotFound",
    "PayloadRef",
    "PayloadStore",
    "PayloadTooLarge",
    "S3PayloadStore",
    "Scope",
    "collect_garbage",
    "encode_ref",
    "event_scope",
    "make_key",
    "maybe_ref",
    "open_store",
]


def open_store(settings: Settings) -> PayloadStore:
    """The store this deployment uses: S3 / MinIO when `s3_endpoint` is set, else local."""
    if settings.s3_endpoint:
        return S3PayloadStore.connect(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
        )
    return LocalPayloadStore(settings.data_path / "payloads")
