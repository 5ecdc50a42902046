"""The certificate policy on every call: certificates the handshake accepts but the CA never meant to issue.

grpc's C core accepts each of these at the TLS level (RFC 5280 path validation); the server refuses
them on every call with UNAUTHENTICATED naming the rule, and audits the refusal with CN, serial and
fingerprint. Revocation and expiry are checked per call, so they also cut off open connections.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cert_forge import chain_pem, forge
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from server_helpers import (
    Clients,
    Connect,
    LogCapture,
    MakeServer,
    Pki,
    Stub,
    next_message,
    open_channel,
    read_rest,
    rpc_error,
    start_job,
)

import pki
from jobworker.api import jobworker_pb2 as pb
from jobworker.server import JobWorkerServer, ServerStartError

# Client -> the rule its certificate breaks, as the refusal names it.
REFUSED = {
    "ca-true": "is a CA certificate (CA:TRUE): a leaf must be CA:FALSE",
    "via-intermediate": "not issued directly by the configured CA (chains through an intermediate are "
    "refused)",
    "sha1": "signature uses SHA1: SHA-256 or stronger is required",
    "rsa1024": "RSA key of 1024 bits: at least 2048 are required",
    "no-eku": "no extended key usage: clientAuth is required",
    "blank-cn": "common name is not allowed: use 1-64 characters from A-Z a-z 0-9 . _ -",
}


def _write(directory: Path, name: str, cert_chain: bytes, issued: pki.Issued) -> None:
    (directory / f"{name}.crt").write_bytes(cert_chain)
    (directory / f"{name}.key").write_bytes(issued.key_pem())


@pytest.fixture(scope="module")
def forged(certs: Pki) -> dict[str, pki.Issued]:
    """The REFUSED certificates on disk in `certs`' directory, by client name."""
    ca = certs.ca
    intermediate = forge(ca, cn="intermediate", ca=True)
    made = {
        "ca-true": forge(ca, cn="ca-true", ca=True),
        "via-intermediate": forge(intermediate, cn="ada"),
        "sha1": forge(ca, cn="sha1", sha1=True),
        "rsa1024": forge(
            ca, cn="rsa1024", key=rsa.generate_private_key(public_exponent=65537, key_size=1024)
        ),
        "no-eku": forge(ca, cn="no-eku", eku=[]),
        "blank-cn": forge(ca, cn=" "),
    }
    for name, issued in made.items():
        chain = chain_pem(issued, intermediate) if name == "via-intermediate" else chain_pem(issued)
        _write(certs.directory, name, chain, issued)
    return made


def _fingerprint(issued: pki.Issued) -> str:
    return issued.cert.fingerprint(hashes.SHA256()).hex()


async def _audit_of(logs: LogCapture, issued: pki.Issued) -> dict[str, object]:
    return await logs.wait_for("jobworker.audit", lambda line: line["fingerprint"] == _fingerprint(issued))


@pytest.mark.parametrize("name", list(REFUSED))
async def test_policy_refuses_every_call_and_audits_why(
    server: JobWorkerServer,
    clients: Clients,
    forged: dict[str, pki.Issued],
    logs: LogCapture,
    name: str,
) -> None:
    stub = clients.stub(server.port, name)
    for call in (
        stub.List(pb.ListRequest(), timeout=10),
        stub.StreamOutput(pb.StreamOutputRequest(job_id="x")),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details().startswith("client certificate refused: ")
        assert REFUSED[name] in error.details()
    issued = forged[name]
    line = await _audit_of(logs, issued)
    assert line["code"] == "UNAUTHENTICATED"
    assert REFUSED[name] in str(line["reason"])
    assert line["serial"] == f"{issued.cert.serial_number:x}"
    assert line["identity"] == issued.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert str(line["peer"]).startswith("ipv4:127.0.0.1:")


async def test_the_same_cn_is_told_apart_by_serial_and_fingerprint(
    server: JobWorkerServer, clients: Clients, forged: dict[str, pki.Issued], logs: LogCapture
) -> None:
    # "via-intermediate" claims CN=ada, like the real admin: the audit must not confuse them.
    assert (await clients.stub(server.port, "ada").List(pb.ListRequest(), timeout=10)) is not None
    await rpc_error(clients.stub(server.port, "via-intermediate").List(pb.ListRequest(), timeout=10))
    lines = [line for line in logs.lines("jobworker.audit") if line["identity"] == "ada"]
    assert [line["code"] for line in lines] == ["OK", "UNAUTHENTICATED"]
    assert len({line["fingerprint"] for line in lines}) == 2
    assert len({line["serial"] for line in lines}) == 2


async def test_denials_are_audited_with_their_reason(connect: Connect, certs: Pki, logs: LogCapture) -> None:
    error = await rpc_error(connect("rita").Start(pb.StartRequest(command="true"), timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    line = await logs.wait_for("jobworker.audit", lambda x: x["identity"] == "rita")
    assert (line["code"], line["reason"]) == ("PERMISSION_DENIED", "role reader may not call Start")
    assert line["fingerprint"] == _fingerprint(certs.issued["rita"])
    assert line["serial"] == f"{certs.issued['rita'].cert.serial_number:x}"


def _crl(certs: Pki, *revoked: str) -> Path:
    crl = pki.revoke(certs.ca, [certs.issued[name].cert for name in revoked])
    return pki.write_crl(certs.directory / "crl", crl)


async def test_a_revoked_certificate_is_refused_from_the_first_call(
    certs: Pki, make_server: MakeServer, clients: Clients, logs: LogCapture
) -> None:
    server = await make_server(revoked=_crl(certs, "wendy"))
    error = await rpc_error(clients.stub(server.port, "wendy").List(pb.ListRequest(), timeout=10))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "client certificate refused: revoked"
    line = await logs.wait_for("jobworker.audit", lambda x: x["identity"] == "wendy")
    assert line["reason"] == "client certificate refused: revoked"
    assert await clients.stub(server.port, "walt").List(pb.ListRequest(), timeout=10) is not None


async def test_revoking_cuts_off_an_open_connection_at_its_next_call(
    certs: Pki, make_server: MakeServer, logs: LogCapture
) -> None:
    crl_file = _crl(certs)
    server = await make_server(revoked=crl_file)
    channel = open_channel(server.port, _credentials(certs, "walt"))
    try:
        stub = Stub(channel)
        await stub.List(pb.ListRequest(), timeout=10)
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        pki.write_crl(crl_file.parent, pki.revoke(certs.ca, [certs.issued["walt"].cert]))
        error = await rpc_error(stub.List(pb.ListRequest(), timeout=10))
        assert error.details() == "client certificate refused: revoked"
        # Same connection: nothing closed it, the policy refused the call.
        assert channel.get_state() is grpc.ChannelConnectivity.READY
    finally:
        await channel.close()
    reloaded = await logs.wait_for(
        "jobworker.server.revocation", lambda x: x["msg"] == "revocation list reloaded"
    )
    assert reloaded["revoked"] == 1


async def test_revoking_ends_a_stream_that_is_already_open(
    certs: Pki, make_server: MakeServer, clients: Clients
) -> None:
    crl_file = _crl(certs)
    server = await make_server(revoked=crl_file)
    stub = clients.stub(server.port, "walt")
    job = await start_job(stub, "/bin/sh", "-c", "while :; do echo tick; sleep 0.1; done")
    call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True))
    await next_message(call)
    pki.write_crl(crl_file.parent, pki.revoke(certs.ca, [certs.issued["walt"].cert]))
    # The stream re-applies the policy about once a second, at its next message.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await read_rest(call)
    error = info.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "client certificate refused: revoked"


async def test_a_broken_revocation_list_keeps_the_last_good_one(
    certs: Pki, make_server: MakeServer, clients: Clients, logs: LogCapture
) -> None:
    crl_file = _crl(certs, "wendy")
    server = await make_server(revoked=crl_file)
    crl_file.write_bytes(b"not a CRL")
    error = await rpc_error(clients.stub(server.port, "wendy").List(pb.ListRequest(), timeout=10))
    assert error.details() == "client certificate refused: revoked"
    line = await logs.wait_for("jobworker.server.revocation", lambda x: "error" in x)
    assert line["msg"] == "revocation list not reloaded, keeping the previous one"
    assert "is not a valid CRL" in str(line["error"])


def _credentials(certs: Pki, name: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=certs.ca_path.read_bytes(),
        private_key=certs.key(name).read_bytes(),
        certificate_chain=certs.cert(name).read_bytes(),
    )


async def test_a_certificate_that_expires_on_an_open_connection_stops_working(
    certs: Pki, server: JobWorkerServer, logs: LogCapture
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    short = pki.issue_client(certs.ca, "brief", pki.Role.WRITER, not_before=now - timedelta(minutes=1),
                             not_after=now + timedelta(seconds=2))  # fmt: skip
    certs.add("brief", short)
    channel = open_channel(server.port, _credentials(certs, "brief"))
    try:
        stub = Stub(channel)
        await stub.Start(pb.StartRequest(command="true"), timeout=10)
        # Time itself is what the test waits for: nothing else signals an expiry.
        await asyncio.sleep(
            max((short.cert.not_valid_after_utc - datetime.now(UTC)).total_seconds(), 0) + 1.1
        )
        error = await rpc_error(stub.Start(pb.StartRequest(command="true"), timeout=10))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details().startswith("client certificate refused: expired ")
        assert channel.get_state() is grpc.ChannelConnectivity.READY
    finally:
        await channel.close()
    line = await logs.wait_for("jobworker.audit", lambda x: x["identity"] == "brief" and x["code"] != "OK")
    assert str(line["reason"]).startswith("client certificate refused: expired ")


async def test_connections_are_closed_at_their_maximum_age_and_the_channel_reconnects(
    make_server: MakeServer, clients: Clients, logs: LogCapture
) -> None:
    server = await make_server(max_connection_age_seconds=0.5, connection_age_grace_seconds=0.5)
    stub = clients.stub(server.port, "walt")
    await stub.List(pb.ListRequest(), timeout=10)
    # grpc sends GOAWAY once the age (plus up to 10% jitter) has passed; the next call reconnects.
    await asyncio.sleep(1.5)
    await stub.List(pb.ListRequest(), timeout=10)
    peers = [line["peer"] for line in logs.lines("jobworker.audit") if line["identity"] == "walt"]
    assert len(peers) == 2
    assert peers[0] != peers[1], "the second call came over a new connection (new source port)"


async def test_a_revocation_list_under_the_cas_name_but_another_key_is_refused(
    certs: Pki, make_server: MakeServer
) -> None:
    impostor = pki.issue_ca("test CA")
    crl = pki.write_crl(certs.directory / "impostor", pki.revoke(impostor, []))
    with pytest.raises(ServerStartError, match="is not signed by the key of CN=test CA"):
        await make_server(revoked=crl)
