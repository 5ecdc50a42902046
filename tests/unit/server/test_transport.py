"""Transport security: mTLS with a verified client certificate, TLS 1.3 only."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from server_helpers import (
    Connect,
    LogCapture,
    Pki,
    Stub,
    channel_credentials,
    mint_pki,
    open_channel,
    rpc_code,
    spawn_server,
    tls_handshake,
)

import pki
from jobworker.api import jobworker_pb2 as pb
from jobworker.server import JobWorkerServer, ServiceError, auth, tls13

# Client certificate -> why the handshake must fail.
REJECTED = {
    None: "no client certificate",
    "alien": "signed by a foreign CA",
    "expired": "expired yesterday",
    "early": "valid from tomorrow",
    "server": "the server certificate (serverAuth only) presented as a client certificate",
}


@pytest.mark.parametrize("name", list(REJECTED), ids=[str(n) for n in REJECTED])
async def test_bad_client_certificate_fails_the_handshake(
    server: JobWorkerServer, connect: Connect, certs: Pki, logs: LogCapture, name: str | None
) -> None:
    stub = connect(name)
    code = await rpc_code(stub.List(pb.ListRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE, REJECTED[name]
    # At the TLS level: the server closes the connection without ever speaking HTTP/2.
    outcome = await asyncio.to_thread(tls_handshake, server.port, certs, name)
    assert not outcome.startswith("ok"), outcome
    assert logs.lines("jobworker.audit") == [], "no RPC may reach a handler"


async def test_good_client_certificate_speaks_http2_over_tls13(server: JobWorkerServer, certs: Pki) -> None:
    assert await asyncio.to_thread(tls_handshake, server.port, certs, "walt") == "ok TLSv1.3"


async def test_calls_not_made_over_tls13_are_rejected(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the connection's TLS 1.3 is the wrong version: the wrapper must refuse every call.
    monkeypatch.setattr(auth, "TLS_VERSION", b"TLSv1.4")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await connect("ada").List(pb.ListRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.details() == "TLS 1.3 is required, got TLSv1.3"


def _context(certs: Pki, **overrides: list[bytes]) -> dict[str, list[bytes]]:
    context = {
        "transport_security_type": [b"ssl"],
        "ssl_tls_version": [b"TLSv1.3"],
        "x509_pem_cert": [certs.cert("walt").read_bytes()],
        "x509_common_name": [b"walt"],
    }
    context.update(overrides)
    return context


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ssl_tls_version": [b"TLSv1.2"]}, "TLS 1.3 is required, got TLSv1.2"),
        ({"ssl_tls_version": []}, "TLS 1.3 is required, got unknown"),
        ({"transport_security_type": [b"insecure"]}, "a TLS connection is required"),
        ({"x509_pem_cert": []}, "a client certificate is required"),
    ],
)
def test_authenticate_refuses_weak_transports(
    certs: Pki, overrides: dict[str, list[bytes]], message: str
) -> None:
    with pytest.raises(ServiceError) as info:
        auth.authenticate(_context(certs, **overrides))
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.message == message


def test_identity_comes_from_the_certificate_not_the_common_name_field(certs: Pki) -> None:
    # x509_common_name is what grpc extracted; the server parses the verified certificate itself.
    peer = auth.authenticate(_context(certs, x509_common_name=[b"ada"]))
    assert (peer.identity, peer.role) == ("walt", pki.Role.WRITER)


@pytest.mark.parametrize("key_type", [pki.KeyType.P256, pki.KeyType.RSA4096])
def test_jw_server_refuses_tls12_handshakes(tmp_path: Path, key_type: pki.KeyType, certs: Pki) -> None:
    pki_set = certs if key_type is pki.KeyType.P256 else mint_pki(tmp_path / "pki", key_type)
    process = spawn_server(pki_set, tmp_path / "state")
    try:
        assert process.wait_for_log("listening")["tls13_handshake_pinned"] is True
        tls12 = tls_handshake(process.port, pki_set, "walt", maximum=ssl.TLSVersion.TLSv1_2)
        assert not tls12.startswith("ok"), tls12
        assert tls_handshake(process.port, pki_set, "walt") == "ok TLSv1.3"
        assert asyncio.run(_list_code(process.port, pki_set)) == grpc.StatusCode.OK
    finally:
        assert process.terminate() == 0


async def _list_code(port: int, certs: Pki) -> grpc.StatusCode:
    channel = open_channel(port, channel_credentials(certs, "walt"))
    try:
        return await rpc_code(Stub(channel).List(pb.ListRequest(), timeout=10))
    finally:
        await channel.close()


@pytest.mark.parametrize(
    ("before_import", "expected"),
    [("", "False"), (f"os.environ[{tls13.CIPHER_SUITES_ENV!r}] = {tls13.TLS12_UNUSABLE_SUITES!r}", "True")],
)
def test_pin_reports_whether_it_can_still_take_effect(before_import: str, expected: str) -> None:
    # A fresh interpreter: grpc imported without the pin, a later pin cannot take effect; with the variable
    # already set when grpc was imported, it is in force.
    code = (
        f"import os\nos.environ.pop({tls13.CIPHER_SUITES_ENV!r}, None)\n{before_import}\n"
        "import grpc\nfrom jobworker import tls13\nprint(tls13.pin_tls13())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == expected


# Client certificate (None: none; "tls12": walt over TLS 1.2) -> what grpc names as the reason.
HANDSHAKE_FAILURES = {
    None: "PEER_DID_NOT_RETURN_A_CERTIFICATE",
    "alien": "CERTIFICATE_VERIFY_FAILED",
    "expired": "CERTIFICATE_VERIFY_FAILED",
    "tls12": "NO_SHARED_CIPHER",
}


def test_jw_server_audits_failed_handshakes_with_peer_and_reason(certs: Pki, tmp_path: Path) -> None:
    process = spawn_server(certs, tmp_path / "state")
    try:
        assert process.wait_for_log("listening")["handshakes_audited"] is True
        for name, reason in HANDSHAKE_FAILURES.items():
            seen = len(process.lines)
            if name == "tls12":
                outcome = tls_handshake(process.port, certs, "walt", maximum=ssl.TLSVersion.TLSv1_2)
            else:
                outcome = tls_handshake(process.port, certs, name)
            assert not outcome.startswith("ok"), outcome
            line = process.wait_for_log("handshake failed", start=seen)
            assert line["logger"] == "jobworker.audit"
            assert line["peer"].startswith("ipv4:127.0.0.1:"), line
            assert reason in line["reason"], (name, line)
        # A good client (and its own probe of the server certificate) leaves no such line.
        seen = len(process.lines)
        assert tls_handshake(process.port, certs, "walt") == "ok TLSv1.3"
        assert asyncio.run(_list_code(process.port, certs)) == grpc.StatusCode.OK
    finally:
        assert process.terminate() == 0
    assert [line for line in process.lines[seen:] if line.get("msg") == "handshake failed"] == []
    assert [line for line in process.lines if line.get("msg") == "<not json>"] == [], (
        "grpc's lines are JSON too"
    )
