"""A small asyncio etcd v3 client over grpc.aio and stubs generated from etcd's own protos (jobworker.etcdpb).

Only what the fleet needs: get, prefix reads, put (optionally under a lease), create-if-absent, delete,
lease grant / keepalive / revoke. Every endpoint gets a mutual-TLS channel with the node's own certificate;
a call that finds its endpoint unreachable moves on to the next one, so one dead member of a cluster costs
one failed attempt, not an outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from jobworker.etcdpb import kv_pb2
from jobworker.etcdpb import rpc_pb2 as rpc
from jobworker.etcdpb import rpc_pb2_grpc as rpc_grpc

_T = TypeVar("_T")

DEFAULT_CALL_TIMEOUT_SECONDS = 2.0
# Failures that say "try another member"; anything else is an answer from etcd.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class EtcdError(Exception):
    """etcd could not be reached, or refused a request; the message is one line."""


@dataclass(frozen=True)
class KeyValue:
    """One key of etcd with the revision it was last changed at."""

    key: str
    value: bytes
    mod_revision: int
    lease: int


def endpoint_target(endpoint: str) -> str:
    """host:port of an endpoint written as https://host:port or host:port."""
    target = endpoint.strip()
    for scheme in ("https://", "http://"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
    target = target.rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"etcd endpoint {endpoint!r} is not [https://]HOST:PORT")
    return target


def _prefix_end(prefix: bytes) -> bytes:
    # etcd ranges are [key, range_end): the end of a prefix is the prefix with its last byte incremented.
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


@dataclass
class _Member:
    target: str
    channel: grpc.aio.Channel
    kv: rpc_grpc.KVAsyncStub
    lease: rpc_grpc.LeaseAsyncStub


class EtcdClient:
    """Talks to one etcd cluster through any of its client endpoints."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ca: bytes,
        cert: bytes,
        key: bytes,
        timeout: float = DEFAULT_CALL_TIMEOUT_SECONDS,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        self._members = []
        for endpoint in endpoints:
            target = endpoint_target(endpoint)
            # A dead member must fail fast so the next one is tried within the call's timeout.
            channel = grpc.aio.secure_channel(
                target,
                credentials,
                options=[
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    # A member that comes back at another address (a recreated container) is found again
                    # within seconds, not after grpc's default 30 s between DNS resolutions.
                    ("grpc.dns_min_time_between_resolutions_ms", 2000),
                ],
            )
            self._members.append(
                _Member(target, channel, rpc_grpc.KVStub(channel), rpc_grpc.LeaseStub(channel))
            )
        self._current = 0
        self._timeout = timeout

    @property
    def targets(self) -> list[str]:
        """host:port of every endpoint, in the order they are tried."""
        return [m.target for m in self._members]

    async def close(self) -> None:
        """Close every channel."""
        for member in self._members:
            await member.channel.close()

    async def _call(self, operation: Callable[[_Member], Awaitable[_T]]) -> _T:
        last = ""
        for attempt in range(len(self._members)):
            index = (self._current + attempt) % len(self._members)
            member = self._members[index]
            try:
                result = await operation(member)
            except grpc.aio.AioRpcError as exc:
                detail = (exc.details() or exc.code().name).splitlines()[0][:200]
                if exc.code() not in _RETRYABLE:
                    raise EtcdError(f"etcd {member.target}: {detail}") from None
                last = f"etcd {member.target}: {exc.code().name.lower()}"
                continue
            self._current = index
            return result
        raise EtcdError(f"no etcd endpoint answers (last: {last})")

    async def get(self, key: str) -> KeyValue | None:
        """The key, or None when it does not exist."""
        request = rpc.RangeRequest(key=key.encode())
        response = await self._call(lambda m: m.kv.Range(request, timeout=self._timeout))
        return _kv(response.kvs[0]) if response.kvs else None

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        """Every key starting with `prefix`, sorted by key."""
        raw = prefix.encode()
        request = rpc.RangeRequest(key=raw, range_end=_prefix_end(raw))
        response = await self._call(lambda m: m.kv.Range(request, timeout=self._timeout))
        return [_kv(kv) for kv in response.kvs]

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Set the key (attached to `lease` when given); returns the store's new revision."""
        request = rpc.PutRequest(key=key.encode(), value=value, lease=lease)
        response = await self._call(lambda m: m.kv.Put(request, timeout=self._timeout))
        return int(response.header.revision)

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> bool:
        """Set the key only if it does not exist; returns whether it was created."""
        raw = key.encode()
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=raw,
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.CREATE,
                    create_revision=0,
                )
            ],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=raw, value=value, lease=lease))],
        )
        response = await self._call(lambda m: m.kv.Txn(request, timeout=self._timeout))
        return bool(response.succeeded)

    async def delete(self, key: str) -> None:
        """Delete the key (nothing happens when it does not exist)."""
        request = rpc.DeleteRangeRequest(key=key.encode())
        await self._call(lambda m: m.kv.DeleteRange(request, timeout=self._timeout))

    async def grant(self, ttl_seconds: int) -> int:
        """A new lease of `ttl_seconds`; returns its id."""
        request = rpc.LeaseGrantRequest(TTL=ttl_seconds)
        response: rpc.LeaseGrantResponse = await self._call(
            lambda m: m.lease.LeaseGrant(request, timeout=self._timeout)
        )
        if response.error:
            raise EtcdError(f"etcd refused a lease: {response.error}")
        return int(response.ID)

    async def keepalive(self, lease: int) -> int:
        """Renew the lease once; returns its new TTL, 0 when it has already expired."""

        async def once(member: _Member) -> int:
            async def requests() -> AsyncIterator[rpc.LeaseKeepAliveRequest]:
                yield rpc.LeaseKeepAliveRequest(ID=lease)

            call = member.lease.LeaseKeepAlive(requests(), timeout=self._timeout)
            try:
                async for response in call:
                    return int(response.TTL)
            finally:
                call.cancel()
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "no keepalive answer"
            )

        return await self._call(once)

    async def revoke(self, lease: int) -> None:
        """End the lease now: its keys are deleted."""
        request = rpc.LeaseRevokeRequest(ID=lease)
        try:
            await self._call(lambda m: m.lease.LeaseRevoke(request, timeout=self._timeout))
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise


def _kv(kv: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(key=kv.key.decode(), value=bytes(kv.value), mod_revision=kv.mod_revision, lease=kv.lease)


async def wait_healthy(client: EtcdClient, deadline_seconds: float) -> None:
    """Wait until etcd answers a read, or raise EtcdError at the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_seconds
    while True:
        try:
            await client.get("/jobworker/health")
            return
        except EtcdError:
            if loop.time() >= end:
                raise
            await asyncio.sleep(0.2)
