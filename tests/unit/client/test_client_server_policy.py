"""The client applies the certificate policy to the server (serverAuth) before it sends any request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from cert_forge import chain_pem, forge
from client_fakes import Credentials, FakeJobWorker, serve
from cryptography.x509.oid import ExtendedKeyUsageOID

import jobworker.client
import pki

SERVER_SANS = ["localhost", "127.0.0.1"]
SERVER_AUTH = [ExtendedKeyUsageOID.SERVER_AUTH]

# Server certificate -> the rule the client's refusal names.
REFUSED = {
    "ca-true-server": "is a CA certificate (CA:TRUE): a leaf must be CA:FALSE",
    "sha1-server": "signature uses SHA1: SHA-256 or stronger is required",
    "intermediate-server": "not issued directly by the configured CA",
    "blank-cn-server": "common name is not allowed",
    "no-eku-server": "no extended key usage: serverAuth is required",
}


@pytest.fixture(scope="module")
def forged_servers(creds: Credentials) -> Credentials:
    """Server certificates grpc's chain check accepts but the policy does not, next to the CA."""
    ca_key = pki.load_private_key(creds.key("ca"))
    ca = pki.Issued(pki.load_certificate(creds.ca), ca_key)
    # serverAuth on the intermediate too, or grpc's own chain check refuses the chain already.
    intermediate = forge(ca, cn="intermediate", ca=True, role=None, eku=SERVER_AUTH)
    made = {
        "ca-true-server": (forge(ca, cn="server", ca=True, role=None, eku=SERVER_AUTH, sans=SERVER_SANS), ()),
        "sha1-server": (forge(ca, cn="server", sha1=True, role=None, eku=SERVER_AUTH, sans=SERVER_SANS), ()),
        "intermediate-server": (
            forge(intermediate, cn="server", role=None, eku=SERVER_AUTH, sans=SERVER_SANS),
            (intermediate,),
        ),
        "blank-cn-server": (forge(ca, cn=" ", role=None, eku=SERVER_AUTH, sans=SERVER_SANS), ()),
        "no-eku-server": (forge(ca, cn="server", role=None, eku=[], sans=SERVER_SANS), ()),
    }
    for name, (issued, chain) in made.items():
        creds.cert(name).write_bytes(chain_pem(issued, *chain))
        creds.key(name).write_bytes(issued.key_pem())
    return creds


@pytest.fixture(params=list(REFUSED))
def bad_server(
    request: pytest.FixtureRequest, forged_servers: Credentials
) -> Iterator[tuple[str, str, FakeJobWorker]]:
    """(certificate name, address, servicer) of a fake server presenting a refused certificate."""
    servicer = FakeJobWorker()
    server, address, _ = serve(forged_servers, servicer, request.param)
    yield request.param, address, servicer
    server.stop(grace=None)


def test_sync_client_refuses_a_server_that_breaks_the_policy(
    creds: Credentials, bad_server: tuple[str, str, FakeJobWorker]
) -> None:
    name, address, servicer = bad_server
    with jobworker.client.Client(creds.config(address), timeout=5) as client:
        for _ in range(2):  # refused again on the next call: a refusal is not remembered as a pass
            with pytest.raises(jobworker.client.ConnectionFailedError) as info:
                client.list()
            assert str(info.value).startswith(f"server certificate of {address} refused: ")
            assert REFUSED[name] in str(info.value)
    assert servicer.requests == [], "no request may reach a server the policy refuses"


def test_async_client_refuses_a_server_that_breaks_the_policy(
    creds: Credentials, bad_server: tuple[str, str, FakeJobWorker]
) -> None:
    name, address, servicer = bad_server

    async def stream_then_list() -> list[str]:
        errors = []
        async with jobworker.client.AsyncClient(creds.config(address), timeout=5) as client:
            with pytest.raises(jobworker.client.ConnectionFailedError) as info:
                async for _ in client.stream("00000000-0000-4000-8000-000000000000"):
                    pass
            errors.append(str(info.value))
            with pytest.raises(jobworker.client.ConnectionFailedError) as info:
                await client.list()
            errors.append(str(info.value))
        return errors

    for error in asyncio.run(stream_then_list()):
        assert REFUSED[name] in error
    assert servicer.requests == []


def test_a_compliant_server_is_probed_once(creds: Credentials) -> None:
    servicer = FakeJobWorker()
    server, address, _ = serve(creds, servicer)
    try:
        with jobworker.client.Client(creds.config(address), timeout=5) as client:
            client.list()
            client.list()
    finally:
        server.stop(grace=None)
    assert [method for method, _ in servicer.requests] == ["List", "List"]
