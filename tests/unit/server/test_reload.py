"""Certificates reload without a restart: on SIGHUP and when the files change."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from server_helpers import (
    LogCapture,
    Pki,
    Stub,
    open_channel,
    rpc_code,
    server_config,
    spawn_server,
)

import pki
from jobworker.api import jobworker_pb2 as pb
from jobworker.server import build_server


def replace_file(path: Path, data: bytes) -> None:
    """Atomically replace path's contents, as a rotation tool would."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture
def other_ca(tmp_path: Path, certs: Pki) -> Pki:
    """A second CA with a writer client; clients still trust the first CA for the server."""
    directory = tmp_path / "ca2"
    ca2 = pki.issue_ca("second CA")
    result = Pki(directory, ca2)
    result.add("ca", ca2)
    result.add("walt", pki.issue_client(ca2, "walt", pki.Role.WRITER))
    shutil.copy(certs.ca_path, directory / "server-root.crt")
    return result


async def list_code(port: int, who: Pki, name: str, server_root: Pki) -> grpc.StatusCode:
    """List as `name` of `who`'s CA, verifying the server against `server_root`'s CA."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server_root.ca_path.read_bytes(),
        private_key=who.key(name).read_bytes(),
        certificate_chain=who.cert(name).read_bytes(),
    )
    channel = open_channel(port, credentials)
    try:
        return await rpc_code(Stub(channel).List(pb.ListRequest(), timeout=10))
    finally:
        await channel.close()


def test_sighup_switches_to_a_new_client_ca(tmp_path: Path, certs: Pki, other_ca: Pki) -> None:
    client_ca = tmp_path / "client-ca.crt"
    shutil.copy(certs.ca_path, client_ca)
    process = spawn_server(certs, tmp_path / "state", "--ca", str(client_ca))
    try:
        port = process.port
        assert asyncio.run(list_code(port, certs, "walt", certs)) == grpc.StatusCode.OK
        assert asyncio.run(list_code(port, other_ca, "walt", certs)) == grpc.StatusCode.UNAVAILABLE

        replace_file(client_ca, other_ca.ca_path.read_bytes())
        seen = len(process.lines)
        process.process.send_signal(signal.SIGHUP)
        # No connection was made since the file changed, so this reload is SIGHUP's doing.
        reloaded = process.wait_for_log("credentials reloaded", start=seen)
        assert reloaded["client_cas"] == ["CN=second CA"]

        assert asyncio.run(list_code(port, other_ca, "walt", certs)) == grpc.StatusCode.OK
        assert asyncio.run(list_code(port, certs, "walt", certs)) == grpc.StatusCode.UNAVAILABLE
    finally:
        assert process.terminate() == 0


async def test_changed_files_are_picked_up_by_the_next_connection(
    tmp_path: Path, certs: Pki, other_ca: Pki
) -> None:
    client_ca = tmp_path / "client-ca.crt"
    shutil.copy(certs.ca_path, client_ca)
    server = await build_server(server_config(certs, tmp_path / "state", ca=client_ca))
    await server.start()
    try:
        # During a rotation both CAs are trusted; afterwards only the new one.
        replace_file(client_ca, certs.ca_path.read_bytes() + other_ca.ca_path.read_bytes())
        assert await list_code(server.port, certs, "walt", certs) == grpc.StatusCode.OK
        assert await list_code(server.port, other_ca, "walt", certs) == grpc.StatusCode.OK
        replace_file(client_ca, other_ca.ca_path.read_bytes())
        assert await list_code(server.port, certs, "walt", certs) == grpc.StatusCode.UNAVAILABLE
        assert await list_code(server.port, other_ca, "walt", certs) == grpc.StatusCode.OK
    finally:
        await server.shutdown(0)


def served_certificate(port: int, certs: Pki) -> bytes:
    """The DER certificate the server presents."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certs.ca_path)
    context.load_cert_chain(certs.cert("walt"), certs.key("walt"))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


async def test_server_certificate_rotation_and_a_broken_rotation(
    tmp_path: Path, certs: Pki, logs: LogCapture
) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(certs.cert("server"), cert)
    shutil.copy(certs.key("server"), key)
    server = await build_server(server_config(certs, tmp_path / "state", cert=cert, key=key))
    await server.start()
    try:
        before = await asyncio.to_thread(served_certificate, server.port, certs)
        renewed = pki.issue_server(certs.ca, "localhost")
        # Certificate first, key second: in between the pair does not match and must not be used.
        replace_file(cert, renewed.cert_pem())
        assert await asyncio.to_thread(served_certificate, server.port, certs) == before
        errors = [line for line in logs.lines("jobworker.server.tls") if "error" in line]
        assert errors
        assert "does not match" in errors[-1]["error"]

        replace_file(key, renewed.key_pem())
        assert server.reload_credentials() is True
        after = await asyncio.to_thread(served_certificate, server.port, certs)
        assert after != before
        assert after == renewed.cert.public_bytes(Encoding.DER)
        assert await list_code(server.port, certs, "walt", certs) == grpc.StatusCode.OK
    finally:
        await server.shutdown(0)
