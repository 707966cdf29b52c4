"""A bare gRPC worker for auth tests: it sees the stream's status codes the SDK would hide
behind its reconnect loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from libs.common.proto import worker_pb2 as pb
from libs.common.proto import worker_pb2_grpc as pb_grpc


class RawWorker:
    def __init__(self, addr: str, token: str, actions: list[str], slots: int = 1) -> None:
        self._channel = grpc.aio.insecure_channel(addr)
        self._outbox: asyncio.Queue[pb.WorkerMessage | None] = asyncio.Queue(maxsize=64)
        self._outbox.put_nowait(pb.WorkerMessage(register=pb.Register(
            name="raw", actions=actions, slots=slots,
        )))
        self._token = token
        self._call: grpc.aio.StreamStreamCall | None = None
        self.registered: pb.Registered | None = None

    @property
    def call(self) -> grpc.aio.StreamStreamCall:
        assert self._call is not None, "connect() first"
        return self._call

    async def _requests(self) -> AsyncIterator[pb.WorkerMessage]:
        while (msg := await self._outbox.get()) is not None:
            yield msg

    async def connect(self) -> pb.Registered:
        """The dispatcher's Registered answer; raises AioRpcError when it refuses."""
        self._call = pb_grpc.DispatcherStub(self._channel).Connect(
            self._requests(), metadata=[("authorization", f"Bearer {self._token}")]
        )
        first = await self.call.read()
        assert first is not grpc.aio.EOF and first.WhichOneof("msg") == "registered", first
        self.registered = first.registered
        return first.registered

    async def send(self, msg: pb.WorkerMessage) -> None:
        await self._outbox.put(msg)

    async def next_message(self) -> pb.DispatcherMessage:
        """The next message down the stream; raises AioRpcError when the stream ends in error."""
        msg = await self.call.read()
        if msg is grpc.aio.EOF:
            await self.call.wait_for_connection()
            raise EOFError("stream ended")
        return msg

    async def final_code(self) -> grpc.StatusCode:
        """Read until the stream ends; the status it ended with."""
        with contextlib.suppress(grpc.aio.AioRpcError, EOFError):
            while True:
                await self.next_message()
        code: grpc.StatusCode = await self.call.code()
        return code

    async def close(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        await self._channel.close()
