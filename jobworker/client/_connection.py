"""What the sync and async clients share: settings checked up front, channel options, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobworker.client._config import ClientConfig
from jobworker.client._errors import ClientError, translate_rpc_error
from jobworker.client._server_check import ServerCheck
from jobworker.client._tls import load_tls_material

DEFAULT_TIMEOUT = 10.0
# What a Stop without a grace period allows for it when the server does not say its own (older servers).
_UNKNOWN_SERVER_GRACE = 60.0
# After the grace period the server SIGKILLs and waits for the job to go; allow for that.
_STOP_SLACK = 10.0
# grpc's status details when the server closed a connection that reached its maximum age (plus the
# grace) under a call still running: the job's output is all still there, so a stream resumes.
_CONNECTION_AGED = "max connection age"
# Status codes of a health check that never reached a server.
_NOT_CONNECTED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, None})


def connection_aged(exc: grpc.RpcError) -> bool:
    """Whether a call failed only because the server retired its connection (--max-connection-age)."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if not callable(code) or not callable(details):
        return False
    return bool(code() is grpc.StatusCode.UNAVAILABLE and details() == _CONNECTION_AGED)


class Connection:
    """Validated settings plus the derived channel credentials and options."""

    def __init__(self, config: ClientConfig, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.config = config
        self.timeout = timeout
        self.credentials = load_tls_material(config).channel_credentials()
        self.server_check = ServerCheck(config, timeout)
        # The server's default grace period, from GetServerInfo, once a Stop without one needs it.
        self.server_grace: float | None = None
        # The minimum reconnect backoff doubles as grpc's per-attempt connect (TCP + TLS)
        # timeout; bounding it makes a black-holed address fail in `timeout`, with details,
        # instead of grpc's 20 s default.
        backoff_ms = max(int(timeout * 1000), 100)
        self.options: list[tuple[str, int | str]] = [
            ("grpc.min_reconnect_backoff_ms", backoff_ms),
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
        ]

    def check_server(self, channel: grpc.Channel) -> None:
        """Apply the certificate policy to the server once, before the first request on `channel`."""
        if self.server_check.done:
            return
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            self._raise_unconnected(exc)
        self.server_check.ensure()

    async def check_server_async(self, channel: grpc.aio.Channel) -> None:
        """check_server for an asyncio channel (the probe's handshake blocks, so it runs in a thread)."""
        if self.server_check.done:
            return
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            self._raise_unconnected(exc)
        await asyncio.to_thread(self.server_check.ensure)

    def _raise_unconnected(self, exc: grpc.RpcError) -> None:
        # Any answer at all means grpc connected and verified the server: the probe may go ahead.
        code = exc.code() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else None
        if code in _NOT_CONNECTED:
            raise self.error(exc) from exc

    @property
    def target(self) -> str:
        """The server address."""
        return self.config.server

    def stop_deadline(self, grace_seconds: float | None) -> float:
        """Seconds to allow a Stop call, which only returns once the job is gone: never less than the grace
        the server will wait (its own default when the call names none)."""
        if grace_seconds is None:
            grace_seconds = self.server_grace if self.server_grace is not None else _UNKNOWN_SERVER_GRACE
        return self.timeout + grace_seconds + _STOP_SLACK

    @contextlib.contextmanager
    def translating(self) -> Iterator[None]:
        """Turn a grpc failure inside the block into this library's ClientError (one place for every call)."""
        try:
            yield
        except grpc.RpcError as exc:
            raise self.error(exc) from exc

    def error(self, exc: grpc.RpcError) -> ClientError:
        """Translate a grpc failure of a call on this connection."""
        return translate_rpc_error(exc, target=self.target, timeout=self.timeout)
