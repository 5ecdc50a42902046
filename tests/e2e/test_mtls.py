"""Mutual TLS at the door: what a client without an acceptable certificate sees.

Every refusal is checked twice: as the client library and `jw` report it to the user, and on the
wire, where the server must hang up before speaking HTTP/2. After each refusal a good certificate
still works on the same server.
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import pki
from jobworker.client import ConfigError, ConnectionFailedError

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer, PkiDir

# The HTTP/2 client preface and an empty SETTINGS frame (RFC 9113, section 3.4); a server that
# accepted us answers with a SETTINGS frame of its own.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
H2_FRAME_HEADER = 9
H2_SETTINGS = 0x04
# `jw` exit statuses (see `jw --help`).
EXIT_USAGE = 2
EXIT_CONNECTION = 3

FOREIGN = "foreign-writer"
EXPIRED = "expired-writer"


@pytest.fixture(scope="module")
def rejected_certs(certs: PkiDir) -> PkiDir:
    """Adds to `certs`: a writer from a foreign CA and a writer whose certificate has expired."""
    foreign_ca = pki.issue_ca("foreign e2e CA")
    pki.write_issued(certs.dir, FOREIGN, pki.issue_client(foreign_ca, FOREIGN, pki.Role.WRITER), force=True)
    now = datetime.now(UTC)
    certs.issue_client(
        EXPIRED,
        pki.Role.WRITER,
        not_before=now - timedelta(days=1),
        not_after=now - timedelta(hours=1),
    )
    return certs


def _tls_context(certs: PkiDir, name: str | None, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certs.ca)
    if name is not None:
        context.load_cert_chain(certs.cert(name), certs.key(name))
    if maximum is not None:
        context.maximum_version = maximum
    context.set_alpn_protocols(["h2"])
    return context


def _recv_exactly(tls: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = tls.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _server_speaks_http2(server: JobworkerServer, context: ssl.SSLContext) -> bool:
    """Handshake and send the HTTP/2 preface: True if the server answers with SETTINGS.

    TLS 1.3 completes the client's side of the handshake before the server has checked the
    client's certificate, so a refusal shows up as the server hanging up (or alerting) afterwards.
    """
    with (
        socket.create_connection((server.host, server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.3"
        try:
            tls.sendall(H2_PREFACE)
            header = _recv_exactly(tls, H2_FRAME_HEADER)
        except (ssl.SSLError, ConnectionError):
            return False
    return len(header) == H2_FRAME_HEADER and header[3] == H2_SETTINGS


def _assert_good_certificate_works(server: JobworkerServer) -> None:
    with server.client("reader") as client:
        assert client.health()
    assert _server_speaks_http2(server, _tls_context(server.certs, "reader"))


def _health_over_raw_grpc(server: JobworkerServer, name: str | None) -> grpc.StatusCode:
    """Call Health/Check with plain grpc (no client-side checks); return the failure code."""
    certs = server.certs
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=certs.key(name).read_bytes() if name else None,
        certificate_chain=certs.cert(name).read_bytes() if name else None,
    )
    with grpc.secure_channel(server.address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    return failure.value.code()


def test_good_certificate_is_accepted(server: JobworkerServer) -> None:
    _assert_good_certificate_works(server)
    result = server.jw("health", identity="reader")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"


def test_connection_without_client_certificate_is_refused(server: JobworkerServer) -> None:
    # The client library and `jw` cannot even be configured without a certificate, so this is
    # what any other gRPC client sees.
    assert _health_over_raw_grpc(server, None) is grpc.StatusCode.UNAVAILABLE
    assert not _server_speaks_http2(server, _tls_context(server.certs, None))
    _assert_good_certificate_works(server)


def test_certificate_from_foreign_ca_is_refused(server: JobworkerServer, rejected_certs: PkiDir) -> None:
    with server.client(FOREIGN) as client, pytest.raises(ConnectionFailedError) as failure:
        client.health()
    assert "client certificate" in failure.value.message

    result = server.jw("health", identity=FOREIGN)
    assert result.returncode == EXIT_CONNECTION, result.stderr
    assert "client certificate" in result.stderr

    assert not _server_speaks_http2(server, _tls_context(rejected_certs, FOREIGN))
    _assert_good_certificate_works(server)


def test_expired_certificate_is_refused(server: JobworkerServer, rejected_certs: PkiDir) -> None:
    # The client refuses to present an expired certificate at all, and says why.
    with pytest.raises(ConfigError, match="expired on"):
        server.client(EXPIRED)
    result = server.jw("health", identity=EXPIRED)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "expired on" in result.stderr

    # A client that presents it anyway is turned away by the server itself.
    assert _health_over_raw_grpc(server, EXPIRED) is grpc.StatusCode.UNAVAILABLE
    assert not _server_speaks_http2(server, _tls_context(rejected_certs, EXPIRED))
    _assert_good_certificate_works(server)


def test_tls12_handshake_fails(server: JobworkerServer) -> None:
    context = _tls_context(server.certs, "reader", maximum=ssl.TLSVersion.TLSv1_2)
    with (
        socket.create_connection((server.host, server.port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")
    _assert_good_certificate_works(server)


def test_server_certificate_presented_as_client_is_refused(server: JobworkerServer) -> None:
    # Same CA, but the certificate is for serverAuth only and carries no role.
    with server.client("server") as client, pytest.raises(ConnectionFailedError) as failure:
        client.health()
    assert "client certificate" in failure.value.message

    result = server.jw("health", identity="server")
    assert result.returncode == EXIT_CONNECTION, result.stderr

    assert not _server_speaks_http2(server, _tls_context(server.certs, "server"))
    _assert_good_certificate_works(server)
