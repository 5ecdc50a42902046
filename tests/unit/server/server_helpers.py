"""Helpers for the server tests: PKI minting, in-process and subprocess servers, client calls."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

import pki
from jobworker.api import jobworker_pb2 as pb
from jobworker.api import jobworker_pb2_grpc as pb_grpc
from jobworker.server import JobWorkerServer, ServerConfig
from jobworker.server.jsonlog import record_fields

if TYPE_CHECKING:
    Stub = pb_grpc.JobWorkerAsyncStub
else:
    # The async stub type exists only in the .pyi; at runtime the one stub class serves both.
    Stub = pb_grpc.JobWorkerStub

CLIENT_OPTIONS = [
    # Each channel gets its own connection; grpc would otherwise share one between test clients.
    ("grpc.use_local_subchannel_pool", 1),
]

ROLE_CLIENTS: dict[str, pki.Role | None] = {
    "rita": pki.Role.READER,
    "walt": pki.Role.WRITER,
    "wendy": pki.Role.WRITER,
    "ada": pki.Role.ADMIN,
    "nora": None,
}
"""Client name (= the identity the server sees) -> role; None means no role extension."""


@dataclass
class Pki:
    """Certificates and keys on disk by name; `ca` signs all but the foreign ones."""

    directory: Path
    ca: pki.Issued
    issued: dict[str, pki.Issued] = field(default_factory=dict)

    def add(self, name: str, issued: pki.Issued) -> None:
        pki.write_issued(self.directory, name, issued)
        self.issued[name] = issued

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    @property
    def ca_path(self) -> Path:
        return self.cert("ca")


def mint_pki(directory: Path, key_type: pki.KeyType = pki.KeyType.P256) -> Pki:
    """CA, server and one client per role, plus the broken clients the rejection tests need."""
    now = datetime.now(UTC)
    ca = pki.issue_ca("test CA", key_type, not_before=now - timedelta(days=30))
    result = Pki(directory, ca)
    result.add("ca", ca)
    result.add("server", pki.issue_server(ca, "localhost", key_type=key_type))
    if key_type is not pki.KeyType.P256:
        result.add("walt", pki.issue_client(ca, "walt", pki.Role.WRITER, key_type=key_type))
        return result
    for name, role in ROLE_CLIENTS.items():
        result.add(name, pki.issue_client(ca, name, role))
    # An OCTET STRING where the UTF8String belongs, and a well-formed but unknown role.
    result.add("mal", pki.issue_client(ca, "mal", None, role_der=b"\x04\x05admin"))
    result.add("uma", pki.issue_client(ca, "uma", None, role_der=b"\x0c\x04root"))
    # A fleet node: a caller only when it asserts whom it forwards for.
    result.add("nico", pki.issue_node(ca, "nico"))
    day = timedelta(days=1)
    expired = pki.issue_client(ca, "expired", pki.Role.ADMIN, not_before=now - 20 * day, not_after=now - day)
    result.add("expired", expired)
    early = pki.issue_client(ca, "early", pki.Role.ADMIN, not_before=now + day, not_after=now + 10 * day)
    result.add("early", early)
    foreign = pki.issue_ca("foreign CA")
    result.add("foreign-ca", foreign)
    result.add("alien", pki.issue_client(foreign, "alien", pki.Role.ADMIN))
    return result


def server_config(certs: Pki, state_dir: Path, **overrides: Any) -> ServerConfig:
    """Config of an in-process server on a free port of 127.0.0.1."""
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "cert": certs.cert("server"),
        "key": certs.key("server"),
        "ca": certs.ca_path,
        "state_dir": state_dir,
        "grace_seconds": 2.0,
        # Engines in parallel test workers would clean up each other's job cgroups.
        "cgroups": False,
        # No test leaves jobs behind for a next server, unless it says so.
        "stop_jobs_on_shutdown": True,
    }
    values.update(overrides)
    return ServerConfig(**values)


def channel_credentials(
    certs: Pki, name: str | None, *, root: bytes | None = None
) -> grpc.ChannelCredentials:
    """mTLS credentials presenting `name`'s certificate (none when name is None)."""
    root_pem = certs.ca_path.read_bytes() if root is None else root
    if name is None:
        return grpc.ssl_channel_credentials(root_certificates=root_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=root_pem,
        private_key=certs.key(name).read_bytes(),
        certificate_chain=certs.cert(name).read_bytes(),
    )


def open_channel(port: int, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    """An aio channel to 127.0.0.1:port with its own connection."""
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=CLIENT_OPTIONS)


async def start_job(stub: Stub, command: str, *args: str, **fields: Any) -> pb.JobStatus:
    """Start a job and return its status."""
    response = await stub.Start(pb.StartRequest(command=command, args=list(args), **fields))
    return response.job


async def collect(
    stub: Stub, job_id: str, **fields: Any
) -> tuple[list[pb.StreamOutputResponse], pb.StreamEnd]:
    """Read StreamOutput to its end: (messages before StreamEnd, StreamEnd)."""
    messages = [m async for m in stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id, **fields))]
    assert messages, "a stream always ends with StreamEnd"
    assert messages[-1].HasField("end"), "the last message must be StreamEnd"
    return messages[:-1], messages[-1].end


def output_of(messages: list[pb.StreamOutputResponse], stream: int | None = None) -> bytes:
    """Concatenated chunk data (of one stream if given)."""
    return b"".join(
        m.chunk.data for m in messages if m.HasField("chunk") and (stream is None or m.chunk.stream == stream)
    )


async def _drain(call: Any) -> None:
    """Await a unary call or read a stream to its end."""
    if hasattr(call, "__aiter__"):
        async for _ in call:
            pass
    else:
        await call


async def rpc_code(call: Any) -> grpc.StatusCode:
    """Await a unary call or drain a stream; return its status code."""
    try:
        await _drain(call)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    """The error a call fails with (fails the test if it succeeds)."""
    try:
        await _drain(call)
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


class LogCapture(logging.Handler):
    """Collects log records in memory; coroutines can wait for a matching record."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self._loop is not None and self._changed is not None:
            # Records may come from grpc's threads (the certificate fetcher).
            self._loop.call_soon_threadsafe(self._changed.set)

    def lines(self, logger: str) -> list[dict[str, Any]]:
        """Records of `logger` as {"msg": ..., **fields}."""
        return [{**record_fields(r), "msg": r.getMessage()} for r in self.records if r.name == logger]

    async def wait_for(
        self, logger: str, predicate: Callable[[dict[str, Any]], bool], limit_s: float = 10.0
    ) -> dict[str, Any]:
        """The first line of `logger` matching `predicate`, waiting for it up to `limit_s`."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        async with asyncio.timeout(limit_s):
            while True:
                self._changed.clear()
                for line in self.lines(logger):
                    if predicate(line):
                        return line
                await self._changed.wait()


async def next_message(call: Any) -> pb.StreamOutputResponse:
    """The next message of a stream call (fails at the end of the stream)."""
    message = await call.read()
    assert isinstance(message, pb.StreamOutputResponse), "the stream ended early"
    return message


async def read_rest(call: Any) -> list[pb.StreamOutputResponse]:
    """The remaining messages of a stream read with read() (grpc forbids mixing it with async for)."""
    messages = []
    while (message := await call.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


class ServerProcess:
    """A `jw-server` subprocess; a reader thread collects its stderr JSON lines."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.address = ""
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"msg": "<not json>", "raw": raw}
            self._queue.put(line)
        self._queue.put(None)

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def wait_for_log(self, msg: str, timeout: float = 20.0, start: int = 0) -> dict[str, Any]:
        """The first line from index `start` on whose msg is `msg`, waiting up to `timeout`."""
        for line in self.lines[start:]:
            if line.get("msg") == msg:
                return line
        deadline = time.monotonic() + timeout
        while True:
            try:
                received = self._queue.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"jw-server did not log {msg!r}: {self.lines}") from None
            if received is None:
                self._queue.put(None)
                raise AssertionError(f"jw-server ended before logging {msg!r}: {self.lines}")
            self.lines.append(received)
            if received.get("msg") == msg:
                return received

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the server and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """Make sure the process is gone; then `lines` holds everything it logged."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None:
                self.lines.append(pending)


def spawn_server(certs: Pki, state_dir: Path, *extra: str, stop_jobs: bool = True) -> ServerProcess:
    """Run `python -m jobworker.server` on 127.0.0.1:0 and wait until it listens.

    stop_jobs: SIGTERM stops its jobs (no test leaves jobs behind for a next server unless it says so)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JW_", "GRPC_"))}
    command = [
        sys.executable, "-m", "jobworker.server",
        "--listen", "127.0.0.1:0",
        "--cert", str(certs.cert("server")),
        "--key", str(certs.key("server")),
        "--ca", str(certs.ca_path),
        "--state-dir", str(state_dir),
        "--grace", "1",
        "--no-cgroups",
        *(["--stop-jobs-on-shutdown"] if stop_jobs else []),
        *extra,
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    result = ServerProcess(process)
    try:
        result.address = str(result.wait_for_log("listening")["address"])
    except BaseException:
        result.kill()
        raise
    return result


def tls_handshake(
    port: int,
    certs: Pki,
    name: str | None,
    *,
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> str:
    """Handshake with Python's ssl (ALPN h2) and read the server's first bytes.

    Returns "ok <version>" when the server talks HTTP/2 with us, else the TLS failure reason. With
    TLS 1.3 the server judges the client certificate after the client finished its handshake, so a
    rejection shows up as an alert on the first read.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certs.ca_path)
    context.set_alpn_protocols(["h2"])
    context.maximum_version = maximum
    if name is not None:
        context.load_cert_chain(certs.cert(name), certs.key(name))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                version = tls.version()
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                data = tls.recv(64)
                return f"ok {version}" if data else "closed"
        except ssl.SSLError as exc:
            return exc.reason or str(exc)
        except (ConnectionResetError, BrokenPipeError):
            return "connection reset"


OpenChannel = Callable[[str | None], grpc.aio.Channel]
Connect = Callable[[str | None], Stub]
MakeServer = Callable[..., Awaitable[JobWorkerServer]]


class Clients:
    """Opens client channels as any PKI identity and closes them all at the end."""

    def __init__(self, certs: Pki) -> None:
        self._certs = certs
        self._channels: list[grpc.aio.Channel] = []

    def channel(self, port: int, name: str | None) -> grpc.aio.Channel:
        opened = open_channel(port, channel_credentials(self._certs, name))
        self._channels.append(opened)
        return opened

    def stub(self, port: int, name: str | None) -> Stub:
        return Stub(self.channel(port, name))

    async def close(self) -> None:
        for opened in self._channels:
            await opened.close()
