"""Fixtures for the client library tests: a PKI minted once per worker and an mTLS fake server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from client_fakes import Credentials, FakeJobWorker, FakeServer, serve
from grpc_health.v1 import health_pb2

import jobworker.client
import pki


@pytest.fixture(scope="session")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    """CA, servers and clients alice (writer), rita (reader), adam (admin), mallory (foreign)."""
    directory = tmp_path_factory.mktemp("pki")
    ca = pki.issue_ca("client-tests CA")
    foreign = pki.issue_ca("foreign CA")
    pki.write_issued(directory, "ca", ca)
    pki.write_issued(directory, "foreign-ca", foreign)
    pki.write_issued(directory, "server", pki.issue_server(ca, "server"))
    pki.write_issued(directory, "other-host", pki.issue_server(ca, "other-host", sans=()))
    pki.write_issued(directory, "alice", pki.issue_client(ca, "alice", pki.Role.WRITER))
    pki.write_issued(directory, "rita", pki.issue_client(ca, "rita", pki.Role.READER))
    pki.write_issued(directory, "adam", pki.issue_client(ca, "adam", pki.Role.ADMIN))
    pki.write_issued(directory, "mallory", pki.issue_client(foreign, "mallory", pki.Role.ADMIN))
    return Credentials(directory=directory, ca=directory / "ca.crt")


@pytest.fixture(scope="session")
def _fake_session(creds: Credentials) -> Iterator[FakeServer]:
    servicer = FakeJobWorker()
    server, address, health_servicer = serve(creds, servicer)
    yield FakeServer(address=address, servicer=servicer, health=health_servicer)
    servicer.stream_cancelled.set()
    server.stop(grace=None)


@pytest.fixture
def fake(_fake_session: FakeServer) -> Iterator[FakeServer]:
    """The shared fake server, reset for this test."""
    _fake_session.servicer.reset()
    _fake_session.health.set("", health_pb2.HealthCheckResponse.SERVING)
    yield _fake_session
    _fake_session.servicer.stream_cancelled.set()


@pytest.fixture
def client(fake: FakeServer, creds: Credentials) -> Iterator[jobworker.client.Client]:
    """A sync client of alice connected to the fake server."""
    with jobworker.client.Client(creds.config(fake.address), timeout=5) as c:
        yield c
