"""A 5 MB input and output round trip with the S3 payload backend (moto's server on
loopback, the same one the store's contract suite uses): the API and the dispatcher of the
session stack are pointed at a fresh bucket for the test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import boto3
import pytest
from conftest import Stack, WorkerFactory
from ratchet import Context, Ratchet
from test_payload_store import S3_KEY, s3_endpoint  # noqa: F401  (a fixture)

from libs.common.payloads import S3PayloadStore

pytestmark = pytest.mark.asyncio(loop_scope="session")

MiB = 1024 * 1024


@pytest.fixture
async def s3_bucket(stack: Stack, s3_endpoint: str) -> AsyncIterator[str]:  # noqa: F811
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    store = S3PayloadStore.connect(f"http://{s3_endpoint}", S3_KEY, S3_KEY, bucket)
    api_store, dsp_store = stack.api.state.payloads, stack.dispatcher._store
    stack.api.state.payloads = stack.dispatcher._store = store
    try:
        yield bucket
    finally:
        stack.api.state.payloads, stack.dispatcher._store = api_store, dsp_store
        await store.close()


async def test_five_mb_round_trip_through_s3(
    client: Ratchet, start_worker: WorkerFactory, tenant: str, s3_bucket: str,
    s3_endpoint: str,  # noqa: F811
) -> None:
    big_in = "i" * (5 * MiB)
    big_out = "o" * (5 * MiB)
    wf = client.workflow("s3big-" + uuid.uuid4().hex[:6])

    @wf.task()
    async def echo(input: dict, ctx: Context) -> dict:
        return {"text": big_out, "in_len": len(input["text"])}

    await start_worker("w-s3", workflows=[wf], slots=1)
    ref = await wf.aio_run_no_wait({"text": big_in})
    assert await ref.aio_result(60) == {"echo": {"text": big_out, "in_len": 5 * MiB}}
    run = await client.runs.aio_get(ref.run_id)
    assert run["input"] == {"text": big_in}
    s3 = boto3.client(
        "s3", endpoint_url=f"http://{s3_endpoint}", aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_KEY, region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert len(keys) == 2 and all(k.startswith(f"{tenant}/{ref.run_id}/") for k in keys)
