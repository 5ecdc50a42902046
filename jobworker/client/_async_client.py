"""The asyncio client (grpc.aio) with the same methods as Client, for fan-out and benchmarks."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobworker.aio_stream_unary import stream_unary
from jobworker.api import jobworker_pb2_grpc
from jobworker.client import _convert
from jobworker.client._config import ClientConfig
from jobworker.client._connection import DEFAULT_TIMEOUT, Connection, connection_aged
from jobworker.client._errors import ClientError
from jobworker.client._types import (
    EndOfInput,
    JobInfo,
    JobState,
    Limits,
    NodeInfo,
    OutputChunk,
    OutputEvent,
    OutputWindow,
    ServerInfo,
    StreamSelection,
    TerminalSize,
)


class AsyncClient:
    """An asyncio jobworker client; create it inside the running event loop."""

    def __init__(self, config: ClientConfig, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._conn = Connection(config, timeout)
        self._channel = grpc.aio.secure_channel(
            config.server, self._conn.credentials, options=self._conn.options
        )
        self._stub = jobworker_pb2_grpc.JobWorkerStub(self._channel)
        # For write_input only (see jobworker.aio_stream_unary): opened on its first use.
        self._sync_channel: grpc.Channel | None = None

    @property
    def config(self) -> ClientConfig:
        """The settings this client connects with."""
        return self._conn.config

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; streams still open are cancelled."""
        await self._channel.close()
        if self._sync_channel is not None:
            self._sync_channel.close()

    async def start(
        self,
        command: str,
        args: Iterable[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        limits: Limits | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        stdin: bool = False,
        tty: TerminalSize | None = None,
        node: str | None = None,
        node_labels: Mapping[str, str] | None = None,
    ) -> JobInfo:
        """Start `command` with `args`; return the new job's status.

        `name` must be unique among our stored jobs; `labels` are KEY=VALUE pairs to select jobs by.
        stdin keeps the job's stdin open for write_input; tty runs it on a terminal of that size (its
        stdin, stdout and stderr; its output is all stdout). In a fleet, `node` and `node_labels` constrain
        where it runs (a node name; labels the node must carry).
        """
        request = _convert.start_request(
            command,
            args,
            env,
            cwd,
            limits,
            name=name,
            labels=labels,
            stdin=stdin,
            tty=tty,
            node=node,
            node_labels=node_labels,
        )
        await self._conn.check_server_async(self._channel)
        with self._conn.translating():
            response = await self._stub.Start(request, timeout=self._conn.timeout)
        return _convert.job_from_proto(response.job)

    async def stop(self, job_id: str, grace_seconds: float | None = None) -> JobInfo:
        """Stop a running job (SIGTERM, SIGKILL after the grace period); return its final status."""
        request = _convert.stop_request(job_id, grace_seconds)
        if grace_seconds is None and self._conn.server_grace is None:
            # The server's own default decides how long this Stop may take; ask once.
            with contextlib.suppress(ClientError):
                self._conn.server_grace = (await self.server_info()).default_grace_seconds
        await self._conn.check_server_async(self._channel)
        with self._conn.translating():
            response = await self._stub.Stop(request, timeout=self._conn.stop_deadline(grace_seconds))
        return _convert.job_from_proto(response.job)

    async def nodes(self) -> builtins.list[NodeInfo]:
        """The nodes of the server's fleet (FAILED_PRECONDITION from a server not in one)."""
        await self._conn.check_server_async(self._channel)
        with self._conn.translating():
            response = await self._stub.ListNodes(_convert.list_nodes_request(), timeout=self._conn.timeout)
        return _convert.nodes_from_proto(response)

    async def server_info(self) -> ServerInfo:
        """What the server enforces (isolation, default and maximum limits) and who we are to it."""
        await self._conn.check_server_async(self._channel)
        with self._conn.translating():
            response = await self._stub.GetServerInfo(
                _convert.server_info_request(), timeout=self._conn.timeout
            )
        return _convert.server_info_from_proto(response)

    async def status(self, job_id: str) -> JobInfo:
        """Return the status of one job."""
        request = _convert.status_request(job_id)
        await self._conn.check_server_async(self._channel)
        with self._conn.translating():
            response = await self._stub.GetStatus(request, timeout=self._conn.timeout)
        return _convert.job_from_proto(response.job)

    async def delete(self, job_id: str) -> JobInfo:
        """Delete an ended job and its output; return its last status."""
        await self._conn.check_server_async(self._channel)
        with self._conn.translating():
            response = await self._stub.Delete(_convert.delete_request(job_id), timeout=self._conn.timeout)
        return _convert.job_from_proto(response.job)

    async def prune(
        self, ended_before: datetime | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[JobInfo]:
        """Delete our ended jobs (an admin's: everyone's) that ended before `ended_before` (None: now).

        With `labels`, only jobs that have all of them.
        """
        request = _convert.prune_request(ended_before, labels)
        await self._conn.check_server_async(self._channel)
        with self._conn.translating():
            response = await self._stub.Prune(request, timeout=self._conn.timeout)
        return [_convert.job_from_proto(job) for job in response.jobs]

    async def signal(self, job_id: str, signal: str) -> JobInfo:
        """Send the signal named `signal` ("USR1", "SIGTERM") to a running job without stopping it."""
        request = _convert.signal_request(job_id, signal)
        await self._conn.check_server_async(self._channel)
        with self._conn.translating():
            response = await self._stub.Signal(request, timeout=self._conn.timeout)
        return _convert.job_from_proto(response.job)

    async def write_input(
        self, job_id: str, source: AsyncIterable[bytes | TerminalSize | EndOfInput], *, eof: bool = True
    ) -> int:
        """Client.write_input with an async source."""
        await self._conn.check_server_async(self._channel)
        if self._sync_channel is None:
            self._sync_channel = grpc.secure_channel(
                self._conn.target, self._conn.credentials, options=self._conn.options
            )
        method = jobworker_pb2_grpc.JobWorkerStub(self._sync_channel).WriteInput
        with self._conn.translating():
            response = await stream_unary(method, _convert.input_requests_async(job_id, source, eof))
        return int(response.bytes_written)

    async def wait(self, job_id: str, max_wait: float | None = None) -> JobInfo:
        """Block until the job has ended and return its final status.

        No deadline unless `max_wait` (seconds) is given, like `docker wait`: a job may run for days. A call
        cut because the server retired an old connection is made again on a new one.
        """
        request = _convert.wait_request(job_id)
        await self._conn.check_server_async(self._channel)
        while True:
            try:
                response = await self._stub.Wait(request, timeout=max_wait)
            except grpc.RpcError as exc:
                if connection_aged(exc):
                    continue
                raise self._conn.error(exc) from exc
            return _convert.job_from_proto(response.job)

    async def list(
        self,
        states: Iterable[JobState] = (),
        owner: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> builtins.list[JobInfo]:
        """The jobs visible to us; optionally only in `states`, of `owner`, with all `labels`, of `name`."""
        request = _convert.list_request(states, owner, labels, name)
        await self._conn.check_server_async(self._channel)
        with self._conn.translating():
            response = await self._stub.List(request, timeout=self._conn.timeout)
        return [_convert.job_from_proto(job) for job in response.jobs]

    def stream(
        self,
        job_id: str,
        *,
        streams: StreamSelection = "both",
        offset: int = 0,
        follow: bool = True,
        window: OutputWindow | None = None,
    ) -> AsyncIterator[OutputEvent]:
        """Yield the job's output from `offset` (within `window`); with `follow`, live until the job ends.

        A stream cut because the server retired an old connection resumes where it stopped, on a new
        connection, without the caller noticing.
        """
        request = _convert.stream_request(job_id, streams, offset, follow, window)
        return self._events(request)

    async def _events(self, request: Any) -> AsyncIterator[OutputEvent]:
        await self._conn.check_server_async(self._channel)
        call = self._stub.StreamOutput(request)
        more = True
        while True:
            try:
                async for response in call:
                    event = _convert.event_from_proto(response)
                    if isinstance(event, OutputChunk):
                        more = _convert.resume_after(request, event)
                    yield event
                return
            except grpc.RpcError as exc:
                if not connection_aged(exc):
                    raise self._conn.error(exc) from exc
                if not more:
                    yield _convert.LIMIT_END
                    return
            finally:
                call.cancel()
            call = self._stub.StreamOutput(request)

    async def health(self, service: str = "") -> bool:
        """Whether the server reports SERVING for `service` ("" = the server as a whole)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        await self._conn.check_server_async(self._channel)
        with self._conn.translating():
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self._conn.timeout
            )
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
