"""The client speaks only TLS 1.3: TLS 1.2-only servers are refused, ECDSA and RSA servers work.

grpc reads its cipher setting once, at import, so each case runs a fresh interpreter that imports
jobworker.client first, exactly like the jw CLI does.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from client_fakes import Credentials, FakeJobWorker, serve

import pki

CLIENT_SCRIPT = """
import sys
from pathlib import Path
from jobworker.client import Client, ClientConfig, ClientError
address, ca, cert, key = sys.argv[1:5]
config = ClientConfig(server=address, ca=Path(ca), cert=Path(cert), key=Path(key))
try:
    with Client(config, timeout=3) as client:
        print("SERVING" if client.health() else "NOT_SERVING")
except ClientError as exc:
    print(f"{type(exc).__name__}: {exc}")
"""

# A TLS 1.2 cipher list every stock server accepts; used to show the refusal is ours.
PERMISSIVE_CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"


def run_client(creds: Credentials, address: str, *, ciphers: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    if ciphers is not None:
        env["GRPC_SSL_CIPHER_SUITES"] = ciphers
    args = [str(creds.ca), str(creds.cert("alice")), str(creds.key("alice"))]
    done = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, address, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@dataclass
class SslServer:
    """A plain Python TLS server that records the outcome of each handshake."""

    address: str
    outcomes: list[str] = field(default_factory=list)
    handshaken: threading.Event = field(default_factory=threading.Event)


@pytest.fixture(scope="module")
def rsa_server_name(creds: Credentials) -> str:
    ca = pki.Issued(cert=pki.load_certificate(creds.ca), key=pki.load_private_key(creds.directory / "ca.key"))
    issued = pki.issue_server(ca, "rsa-server", key_type=pki.KeyType.RSA4096)
    pki.write_issued(creds.directory, "rsa-server", issued, force=True)
    return "rsa-server"


def ssl_server(creds: Credentials, name: str, version: ssl.TLSVersion) -> Iterator[SslServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = context.maximum_version = version
    context.load_cert_chain(creds.cert(name), creds.key(name))
    context.load_verify_locations(creds.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    server = SslServer(address=f"127.0.0.1:{listener.getsockname()[1]}")

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    server.outcomes.append(f"ok {tls.version()}")
            except (ssl.SSLError, OSError) as exc:
                server.outcomes.append(f"failed {exc}")
            server.handshaken.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server
    # shutdown() wakes the blocked accept(); close() alone would not.
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(5)


@pytest.fixture
def tls12_only_server(creds: Credentials) -> Iterator[SslServer]:
    yield from ssl_server(creds, "server", ssl.TLSVersion.TLSv1_2)


def test_tls12_only_server_is_refused(creds: Credentials, tls12_only_server: SslServer) -> None:
    output = run_client(creds, tls12_only_server.address)
    assert output.startswith("ConnectionFailedError: ")
    assert "refused TLS 1.3, the only version jw speaks" in output
    assert tls12_only_server.outcomes
    assert all(o.startswith("failed") for o in tls12_only_server.outcomes)
    assert "NO_SHARED_CIPHER" in tls12_only_server.outcomes[0]


def test_same_server_accepts_a_client_without_the_restriction(
    creds: Credentials, tls12_only_server: SslServer
) -> None:
    run_client(creds, tls12_only_server.address, ciphers=PERMISSIVE_CIPHERS)
    assert "ok TLSv1.2" in tls12_only_server.outcomes


@pytest.mark.parametrize("key_type", ["p256", "rsa4096"])
def test_tls13_handshake_with_ecdsa_and_rsa_server_keys(
    creds: Credentials, rsa_server_name: str, key_type: str
) -> None:
    name = "server" if key_type == "p256" else rsa_server_name
    for server in ssl_server(creds, name, ssl.TLSVersion.TLSv1_3):
        # The handshake succeeds; the call then fails because this server is not gRPC.
        run_client(creds, server.address)
        assert server.handshaken.wait(10)
        assert server.outcomes[0] == "ok TLSv1.3"


@pytest.mark.parametrize("key_type", ["p256", "rsa4096"])
def test_grpc_call_over_tls13(creds: Credentials, rsa_server_name: str, key_type: str) -> None:
    name = "server" if key_type == "p256" else rsa_server_name
    server, address, _ = serve(creds, FakeJobWorker(), name=name)
    try:
        assert run_client(creds, address) == "SERVING"
    finally:
        server.stop(grace=None)
