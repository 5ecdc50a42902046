"""Library-minted certificates work in a real mutual TLS 1.3 handshake on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

import pki

_TIMEOUT = 10.0


@dataclass(frozen=True)
class _Outcome:
    server: tuple[str, str, str] | Exception  # (TLS version, peer identity, peer role)
    client: bytes | Exception  # what the server sent back


def _context(server_side: bool, issued: pki.Issued, trust: pki.Issued, tmp: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    name = "tls-server" if server_side else "tls-client"
    cert_path, key_path = pki.write_issued(tmp, name, issued, force=True)
    context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(cadata=trust.cert_pem().decode())
    return context


def _serve_once(listener: socket.socket, context: ssl.SSLContext) -> tuple[str, str, str]:
    conn, _ = listener.accept()
    conn.settimeout(_TIMEOUT)
    with context.wrap_socket(conn, server_side=True) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        peer = x509.load_der_x509_certificate(der)
        identity, role = pki.identity_of(peer), pki.parse_role(peer).value
        tls.sendall(f"{identity} {role}".encode())
        return str(tls.version()), identity, role


def _handshake(tmp: Path, *, server: pki.Issued, client: pki.Issued, ca: pki.Issued) -> _Outcome:
    server_ctx = _context(True, server, ca, tmp)
    client_ctx = _context(False, client, ca, tmp)
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        listener.settimeout(_TIMEOUT)
        served = pool.submit(_serve_once, listener, server_ctx)
        client_result: bytes | Exception
        try:
            with (
                socket.create_connection(listener.getsockname()[:2], timeout=_TIMEOUT) as raw,
                client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                client_result = tls.recv(1024)
        except (ssl.SSLError, OSError) as exc:
            client_result = exc
        server_exc = served.exception(timeout=_TIMEOUT)
        server_result = server_exc if isinstance(server_exc, Exception) else served.result()
        return _Outcome(server=server_result, client=client_result)


@pytest.mark.parametrize("role", list(pki.Role))
def test_mutual_tls13_handshake_carries_identity_and_role(
    tmp_path: Path, ca: pki.Issued, server: pki.Issued, role: pki.Role
) -> None:
    client = pki.issue_client(ca, "alice", role)
    outcome = _handshake(tmp_path, server=server, client=client, ca=ca)
    assert outcome.server == ("TLSv1.3", "alice", role.value)
    assert outcome.client == f"alice {role.value}".encode()


def test_mutual_tls13_handshake_with_rsa_ca(
    tmp_path: Path, rsa_ca: pki.Issued, rsa_client: pki.Issued
) -> None:
    server = pki.issue_server(rsa_ca, "server", days=30)
    outcome = _handshake(tmp_path, server=server, client=rsa_client, ca=rsa_ca)
    assert outcome.server == ("TLSv1.3", "rsa-alice", "admin")


def test_server_rejects_client_from_foreign_ca(
    tmp_path: Path, ca: pki.Issued, server: pki.Issued, foreign_ca: pki.Issued
) -> None:
    mallory = pki.issue_client(foreign_ca, "mallory", pki.Role.ADMIN)
    outcome = _handshake(tmp_path, server=server, client=mallory, ca=ca)
    assert isinstance(outcome.server, ssl.SSLError)
    assert "certificate verify failed" in str(outcome.server)
    assert isinstance(outcome.client, Exception)


def test_server_rejects_expired_client(tmp_path: Path, ca: pki.Issued, server: pki.Issued) -> None:
    now = datetime.now(UTC)
    old = pki.issue_client(ca, "old", pki.Role.ADMIN, not_before=now - timedelta(days=3), days=1)
    outcome = _handshake(tmp_path, server=server, client=old, ca=ca)
    assert isinstance(outcome.server, ssl.SSLError)
    assert "certificate has expired" in str(outcome.server)


def test_client_rejects_server_from_foreign_ca(
    tmp_path: Path, ca: pki.Issued, foreign_ca: pki.Issued
) -> None:
    rogue = pki.issue_server(foreign_ca, "server", days=30)
    client = pki.issue_client(ca, "alice", pki.Role.READER)
    outcome = _handshake(tmp_path, server=rogue, client=client, ca=ca)
    assert isinstance(outcome.client, ssl.SSLError)
    assert "certificate verify failed" in str(outcome.client)
    assert isinstance(outcome.server, Exception)


def test_client_rejects_server_name_not_in_sans(tmp_path: Path, ca: pki.Issued) -> None:
    other = pki.issue_server(ca, "elsewhere", ["elsewhere.example"], days=30)
    client = pki.issue_client(ca, "alice", pki.Role.READER)
    outcome = _handshake(tmp_path, server=other, client=client, ca=ca)
    assert isinstance(outcome.client, ssl.SSLError)
    assert "Hostname mismatch" in str(outcome.client)
