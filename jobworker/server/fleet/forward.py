"""Calls to other nodes, under the original caller's identity.

A node dials its peers with its own node certificate (mutual TLS 1.3, the same CA) and names the caller it
forwards for in metadata (`auth.ASSERTED_IDENTITY`, `auth.ASSERTED_ROLE`); the owning node believes that only
from a node certificate and then applies roles and ownership exactly as for a direct call. A peer's errors
come back with their own status; an unreachable peer answers UNAVAILABLE naming the node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc

from jobworker.aio_stream_unary import stream_unary
from jobworker.api import jobworker_pb2 as pb
from jobworker.api import jobworker_pb2_grpc as pb_grpc
from jobworker.server.auth import ASSERTED_IDENTITY, ASSERTED_ROLE, Caller
from jobworker.server.config import GRPC_RECEIVE_LIMIT_BYTES
from jobworker.server.errors import ServiceError
from jobworker.server.fleet.membership import NodeInfo

STREAM_OUTPUT = "/jobworker.v1.JobWorker/StreamOutput"
# Bytes of messages (64 KiB to 1 MiB each) a relayed stream may hold between the owner and the client,
# besides the one it is passing on.
RELAY_BYTES = 512 * 1024
# What grpc's own channel says when it could not reach a peer at all (the request was never sent).
_CONNECT_FAILURES = ("failed to connect to all addresses", "errors resolving", "DNS resolution failed")
# Calls that answer at once get this long; Wait, Stop and streams have no deadline of their own.
UNARY_TIMEOUT_SECONDS = 10.0
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_RECEIVE_LIMIT_BYTES),
    # A restarted peer must be dialled again quickly, not after grpc's default backoff.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.dns_min_time_between_resolutions_ms", 2000),
]


def _metadata(caller: Caller) -> tuple[tuple[str, str], ...]:
    return ((ASSERTED_IDENTITY, caller.identity), (ASSERTED_ROLE, caller.role.value))


class PeerUnreachableError(ServiceError):
    """The peer could not be connected to: the request never reached it."""


def _error(node: NodeInfo, exc: grpc.aio.AioRpcError | grpc.Call) -> ServiceError:
    detail = (exc.details() or "").splitlines()[0][:200] if exc.details() else exc.code().name
    unreachable = f"node {node.name} ({node.address}) is unreachable"
    # grpc's own connect-failure text would read to the client as its own connection failing.
    if any(marker in detail for marker in _CONNECT_FAILURES):
        return PeerUnreachableError(grpc.StatusCode.UNAVAILABLE, unreachable)
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServiceError(grpc.StatusCode.UNAVAILABLE, unreachable)
    if exc.code() is grpc.StatusCode.UNAVAILABLE:
        return ServiceError(grpc.StatusCode.UNAVAILABLE, f"node {node.name}: {detail}")
    # The owner's answer (NOT_FOUND, PERMISSION_DENIED, ...) is the answer.
    return ServiceError(exc.code(), detail)


class Peers:
    """One mTLS channel per peer node, opened on first use."""

    def __init__(self, *, cert: Path, key: Path, ca: Path) -> None:
        self._files = (cert, key, ca)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pb_grpc.JobWorkerAsyncStub] = {}
        self._relays: dict[str, grpc.aio.UnaryStreamMultiCallable[pb.StreamOutputRequest, bytes]] = {}
        # WriteInput goes over a synchronous channel (see jobworker.aio_stream_unary), opened on first use.
        self._input_channels: dict[str, grpc.Channel] = {}

    def _credentials(self) -> grpc.ChannelCredentials:
        # Read per new channel, so a rotated node certificate is used for the next peer dialled.
        cert, key, ca = (p.read_bytes() for p in self._files)
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def stub(self, node: NodeInfo) -> pb_grpc.JobWorkerAsyncStub:
        """The stub for a node's current address."""
        stub = self._stubs.get(node.address)
        if stub is None:
            channel = grpc.aio.secure_channel(node.address, self._credentials(), options=_CHANNEL_OPTIONS)
            self._channels[node.address] = channel
            stub = self._stubs[node.address] = pb_grpc.JobWorkerStub(channel)
            # Output messages are relayed as the owner encoded them: no decoding and re-encoding of every
            # chunk on the way through.
            self._relays[node.address] = channel.unary_stream(
                STREAM_OUTPUT, request_serializer=pb.StreamOutputRequest.SerializeToString
            )
        return stub

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            await channel.close()
        for input_channel in self._input_channels.values():
            input_channel.close()
        self._input_channels.clear()
        self._channels.clear()
        self._stubs.clear()
        self._relays.clear()

    async def unary(
        self,
        node: NodeInfo,
        method: str,
        request: Any,
        caller: Caller,
        *,
        deadline: float | None = UNARY_TIMEOUT_SECONDS,
    ) -> Any:
        """Make one unary call (`method` of JobWorker, by name) on `node` for `caller`."""
        call = getattr(self.stub(node), method)
        try:
            return await call(request, metadata=_metadata(caller), timeout=deadline)
        except grpc.aio.AioRpcError as exc:
            raise _error(node, exc) from None

    async def write_input(
        self, node: NodeInfo, requests: AsyncIterator[pb.WriteInputRequest], caller: Caller
    ) -> Any:
        """Relay a WriteInput to `node`: the caller's messages pass on as they come, under flow control."""
        channel = self._input_channels.get(node.address)
        if channel is None:
            channel = grpc.secure_channel(node.address, self._credentials(), options=_CHANNEL_OPTIONS)
            self._input_channels[node.address] = channel
        try:
            return await stream_unary(
                pb_grpc.JobWorkerStub(channel).WriteInput, requests, metadata=_metadata(caller)
            )
        except grpc.RpcError as exc:
            raise _error(node, cast(grpc.Call, exc)) from None

    async def stream_output(
        self, node: NodeInfo, request: pb.StreamOutputRequest, caller: Caller
    ) -> AsyncGenerator[bytes, None]:
        """Relay a StreamOutput from `node`, encoded messages as the owner sent them.

        Reading from the owner and writing to the client overlap, through a queue of about RELAY_BYTES
        (by bytes: the owner's messages grow to 1 MiB while the follower is behind): a slow client holds
        this node to that queue plus HTTP/2's flow-control windows, never to the job's output.
        """
        self.stub(node)
        call = self._relays[node.address](request, metadata=_metadata(caller))
        queue: asyncio.Queue[bytes | ServiceError | None] = asyncio.Queue()
        room = asyncio.Event()
        room.set()
        queued = 0

        async def pump() -> None:
            nonlocal queued
            try:
                while (message := await call.read()) is not grpc.aio.EOF:
                    data = cast(bytes, message)
                    queued += len(data)
                    queue.put_nowait(data)
                    if queued >= RELAY_BYTES:
                        room.clear()
                        await room.wait()
            except grpc.aio.AioRpcError as exc:
                queue.put_nowait(_error(node, exc))
                return
            queue.put_nowait(None)

        reader = asyncio.create_task(pump())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, ServiceError):
                    raise item
                queued -= len(item)
                if queued < RELAY_BYTES:
                    room.set()
                yield item
        finally:
            reader.cancel()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
