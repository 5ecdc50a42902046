"""gRPC failures become the client's typed errors, with one-line messages that say what went wrong."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import grpc
import pytest
from client_fakes import Credentials, FakeJobWorker, FakeServer, serve

from jobworker.client import (
    AlreadyExistsError,
    AsyncClient,
    AuthenticationError,
    Client,
    ClientError,
    ConnectionFailedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ServerError,
)

CODE_TO_ERROR = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
    (grpc.StatusCode.OUT_OF_RANGE, InvalidArgumentError),
    (grpc.StatusCode.NOT_FOUND, NotFoundError),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
    (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
    (grpc.StatusCode.UNAVAILABLE, ConnectionFailedError),
    (grpc.StatusCode.INTERNAL, ServerError),
    (grpc.StatusCode.UNKNOWN, ServerError),
    (grpc.StatusCode.UNIMPLEMENTED, ServerError),
    (grpc.StatusCode.DATA_LOSS, ServerError),
    (grpc.StatusCode.ABORTED, ServerError),
    (grpc.StatusCode.ALREADY_EXISTS, AlreadyExistsError),
]


@pytest.mark.parametrize(("code", "error"), CODE_TO_ERROR, ids=[c.name for c, _ in CODE_TO_ERROR])
def test_every_status_code_maps_to_one_error_class(
    fake: FakeServer, client: Client, code: grpc.StatusCode, error: type[ClientError]
) -> None:
    fake.servicer.failures["GetStatus"] = (code, "the server says no")
    with pytest.raises(error) as info:
        client.status("job-1")
    assert type(info.value) is error
    assert info.value.code == code.name
    assert "the server says no" in str(info.value)


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("Start", lambda c: c.start("true")),
        ("Stop", lambda c: c.stop("job-1")),
        ("List", lambda c: c.list()),
        ("StreamOutput", lambda c: list(c.stream("job-1"))),
    ],
)
def test_every_method_translates_errors(fake: FakeServer, client: Client, method: str, call: object) -> None:
    fake.servicer.failures[method] = (grpc.StatusCode.PERMISSION_DENIED, "role reader may not")
    with pytest.raises(PermissionDeniedError, match="role reader may not"):
        call(client)  # type: ignore[operator]


async def test_async_client_translates_errors(fake: FakeServer, creds: Credentials) -> None:
    fake.servicer.failures["Stop"] = (grpc.StatusCode.FAILED_PRECONDITION, "job has ended")
    fake.servicer.failures["StreamOutput"] = (grpc.StatusCode.NOT_FOUND, "no job x")
    async with AsyncClient(creds.config(fake.address)) as client:
        with pytest.raises(FailedPreconditionError, match="job has ended"):
            await client.stop("x")
        with pytest.raises(NotFoundError, match="no job x"):
            async for _ in client.stream("x"):
                pass


async def test_async_write_input_reports_the_servers_refusal_while_it_still_writes(
    fake: FakeServer, creds: Credentials
) -> None:
    """grpc.aio alone turns a refusal that arrives while the client writes into INTERNAL (grpc#36066)."""
    fake.servicer.failures["WriteInput"] = (grpc.StatusCode.PERMISSION_DENIED, "role reader may not write")

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(10_000):  # bounded: the refusal ends the call long before
            yield b"x" * 65536
            await asyncio.sleep(0)

    async with AsyncClient(creds.config(fake.address)) as client:
        for _ in range(20):  # the race went wrong about half of the time
            with pytest.raises(PermissionDeniedError, match="role reader may not write"):
                await client.write_input("job-1", endless())


async def test_async_write_input_writes_everything(fake: FakeServer, creds: Credentials) -> None:
    async def three() -> AsyncIterator[bytes]:
        for chunk in (b"a", b"bb", b"ccc"):
            yield chunk

    async with AsyncClient(creds.config(fake.address)) as client:
        assert await client.write_input("job-1", three()) == 6


async def test_async_write_input_raises_what_its_source_raised(fake: FakeServer, creds: Credentials) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"some"
        raise OSError("stdin went away")

    async with AsyncClient(creds.config(fake.address)) as client:
        with pytest.raises(OSError, match="stdin went away"):
            await client.write_input("job-1", broken())
        # The call that followed it still works: nothing of the first one is left behind.
        assert await client.write_input("job-1", _one()) == 3


async def _one() -> AsyncIterator[bytes]:
    yield b"one"


async def test_cancelling_async_write_input_ends_the_call(fake: FakeServer, creds: Credentials) -> None:
    sent = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"first"
        sent.set()
        await asyncio.Event().wait()  # a source that never yields again (a silent terminal)
        yield b"never"

    async with AsyncClient(creds.config(fake.address)) as client:
        call = asyncio.create_task(client.write_input("job-1", slow()))
        await asyncio.wait_for(sent.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, 10)
        # The client is still usable, and nothing of the cancelled call holds its loop.
        assert await client.write_input("job-1", _one()) == 3


def test_server_sent_unavailable_is_not_mistaken_for_a_connect_failure(
    fake: FakeServer, client: Client
) -> None:
    fake.servicer.failures["List"] = (grpc.StatusCode.UNAVAILABLE, "engine is shutting down")
    with pytest.raises(ConnectionFailedError, match="server unavailable: engine is shutting down"):
        client.list()


# --- connection and TLS failures against real listeners -------------------------------------


def connect_error(creds: Credentials, address: str, name: str = "alice", **kw: object) -> str:
    config = replace(creds.config(address, name), **kw)  # type: ignore[arg-type]
    with Client(config, timeout=2) as client, pytest.raises(ConnectionFailedError) as info:
        client.status("job-1")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_server_certificate_not_trusted_by_our_ca(fake: FakeServer, creds: Credentials) -> None:
    message = connect_error(creds, fake.address, ca=creds.cert("foreign-ca"))
    assert "server certificate not trusted by --ca" in message
    assert "unable to get local issuer certificate" in message


def test_server_rejects_our_client_certificate(fake: FakeServer, creds: Credentials) -> None:
    message = connect_error(creds, fake.address, name="mallory")
    assert "rejected our client certificate" in message


@pytest.fixture(scope="module")
def other_host_server(creds: Credentials) -> Iterator[str]:
    server, address, _ = serve(creds, FakeJobWorker(), name="other-host")
    yield address
    server.stop(grace=None)


def test_server_certificate_for_another_name(other_host_server: str, creds: Credentials) -> None:
    message = connect_error(creds, other_host_server)
    assert "server certificate is not valid for that name" in message


def test_connection_refused(creds: Credentials) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    message = connect_error(creds, address)
    assert f"cannot connect to {address}: connection refused" in message


def test_plaintext_server(creds: Credentials) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"

        def answer_http() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=answer_http, daemon=True)
        thread.start()
        message = connect_error(creds, address)
        thread.join(5)
    assert "did not answer with TLS" in message


def test_silent_server_times_out(creds: Credentials) -> None:
    # Accepted by the kernel's backlog, never answered: the TLS handshake cannot finish.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        message = connect_error(creds, f"127.0.0.1:{listener.getsockname()[1]}")
    assert "no answer from" in message
    assert "within 2s" in message
