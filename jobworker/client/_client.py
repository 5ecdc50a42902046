"""The synchronous client: one blocking grpc channel, typed methods, translated errors."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
    OutputChunk,
    OutputEvent,
    OutputWindow,
    ServerInfo,
    StreamSelection,
    TerminalSize,
)


class Client:
    """A blocking jobworker client; use as a context manager or call close()."""

    def __init__(self, config: ClientConfig, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._conn = Connection(config, timeout)
        self._channel = grpc.secure_channel(config.server, self._conn.credentials, options=self._conn.options)
        self._stub = jobworker_pb2_grpc.JobWorkerStub(self._channel)

    @property
    def timeout(self) -> float:
        """Seconds each call may take to connect and answer."""
        return self._conn.timeout

    @property
    def config(self) -> ClientConfig:
        """The settings this client connects with."""
        return self._conn.config

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; streams still open are cancelled."""
        self._channel.close()

    def start(
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
    ) -> JobInfo:
        """Start `command` with `args`; return the new job's status.

        `name` must be unique among our stored jobs; `labels` are KEY=VALUE pairs to select jobs by.
        stdin keeps the job's stdin open for write_input; tty runs it on a terminal of that size (its
        stdin, stdout and stderr; its output is all stdout).
        """
        request = _convert.start_request(
            command, args, env, cwd, limits, name=name, labels=labels, stdin=stdin, tty=tty
        )
        self._conn.check_server(self._channel)
        with self._conn.translating():
            response = self._stub.Start(request, timeout=self._conn.timeout)
        return _convert.job_from_proto(response.job)

    def stop(self, job_id: str, grace_seconds: float | None = None) -> JobInfo:
        """Stop a running job (SIGTERM, SIGKILL after the grace period); return its final status."""
        request = _convert.stop_request(job_id, grace_seconds)
        if grace_seconds is None and self._conn.server_grace is None:
            # The server's own default decides how long this Stop may take; ask once.
            with contextlib.suppress(ClientError):
                self._conn.server_grace = (self.server_info()).default_grace_seconds
        self._conn.check_server(self._channel)
        with self._conn.translating():
            response = self._stub.Stop(request, timeout=self._conn.stop_deadline(grace_seconds))
        return _convert.job_from_proto(response.job)

    def server_info(self) -> ServerInfo:
        """What the server enforces (isolation, default and maximum limits) and who we are to it."""
        self._conn.check_server(self._channel)
        with self._conn.translating():
            response = self._stub.GetServerInfo(_convert.server_info_request(), timeout=self._conn.timeout)
        return _convert.server_info_from_proto(response)

    def status(self, job_id: str) -> JobInfo:
        """Return the status of one job."""
        request = _convert.status_request(job_id)
        self._conn.check_server(self._channel)
        with self._conn.translating():
            response = self._stub.GetStatus(request, timeout=self._conn.timeout)
        return _convert.job_from_proto(response.job)

    def delete(self, job_id: str) -> JobInfo:
        """Delete an ended job and its output; return its last status."""
        self._conn.check_server(self._channel)
        with self._conn.translating():
            response = self._stub.Delete(_convert.delete_request(job_id), timeout=self._conn.timeout)
        return _convert.job_from_proto(response.job)

    def prune(
        self, ended_before: datetime | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[JobInfo]:
        """Delete our ended jobs (an admin's: everyone's) that ended before `ended_before` (None: now).

        With `labels`, only jobs that have all of them.
        """
        request = _convert.prune_request(ended_before, labels)
        self._conn.check_server(self._channel)
        with self._conn.translating():
            response = self._stub.Prune(request, timeout=self._conn.timeout)
        return [_convert.job_from_proto(job) for job in response.jobs]

    def signal(self, job_id: str, signal: str) -> JobInfo:
        """Send the signal named `signal` ("USR1", "SIGTERM") to a running job without stopping it."""
        request = _convert.signal_request(job_id, signal)
        self._conn.check_server(self._channel)
        with self._conn.translating():
            response = self._stub.Signal(request, timeout=self._conn.timeout)
        return _convert.job_from_proto(response.job)

    def write_input(
        self, job_id: str, source: Iterable[bytes | TerminalSize | EndOfInput], *, eof: bool = True
    ) -> int:
        """Write `source` to a running job's stdin (bytes as they are, a TerminalSize as a resize of its
        terminal, EndOfInput as its end) and, when it is used up and `eof`, end the input; a source that
        ends without either leaves the job's stdin open for another writer. Returns the bytes it took.

        Blocks as long as `source` does; a job that reads slowly slows it down. One writer at a time:
        FailedPreconditionError when another one writes, or the job has no open stdin."""
        self._conn.check_server(self._channel)
        with self._conn.translating():
            response = self._stub.WriteInput(_convert.input_requests(job_id, source, eof))
        return response.bytes_written

    def wait(self, job_id: str, max_wait: float | None = None) -> JobInfo:
        """Block until the job has ended and return its final status.

        No deadline unless `max_wait` (seconds) is given, like `docker wait`: a job may run for days. A call
        cut because the server retired an old connection is made again on a new one.
        """
        request = _convert.wait_request(job_id)
        self._conn.check_server(self._channel)
        while True:
            try:
                response = self._stub.Wait(request, timeout=max_wait)
            except grpc.RpcError as exc:
                if connection_aged(exc):
                    continue
                raise self._conn.error(exc) from exc
            return _convert.job_from_proto(response.job)

    def list(
        self,
        states: Iterable[JobState] = (),
        owner: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> builtins.list[JobInfo]:
        """The jobs visible to us; optionally only in `states`, of `owner`, with all `labels`, of `name`."""
        request = _convert.list_request(states, owner, labels, name)
        self._conn.check_server(self._channel)
        with self._conn.translating():
            response = self._stub.List(request, timeout=self._conn.timeout)
        return [_convert.job_from_proto(job) for job in response.jobs]

    def stream(
        self,
        job_id: str,
        *,
        streams: StreamSelection = "both",
        offset: int = 0,
        follow: bool = True,
        window: OutputWindow | None = None,
    ) -> Iterator[OutputEvent]:
        """Yield the job's output from `offset` (within `window`); with `follow`, live until the job ends.

        A stream cut because the server retired an old connection resumes where it stopped, on a new
        connection, without the caller noticing.
        """
        request = _convert.stream_request(job_id, streams, offset, follow, window)
        self._conn.check_server(self._channel)
        # No deadline: a followed job may run for days. Connect failures still surface fast.
        call = self._stub.StreamOutput(request)
        return self._events(call, request)

    def _events(self, call: Any, request: Any) -> Iterator[OutputEvent]:
        more = True
        while True:
            try:
                for response in call:
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

    def health(self, service: str = "") -> bool:
        """Whether the server reports SERVING for `service` ("" = the server as a whole)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        self._conn.check_server(self._channel)
        with self._conn.translating():
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self._conn.timeout)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
