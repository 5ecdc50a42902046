"""Fixtures for the server tests: a PKI minted by `pki`, in-process servers, clients by name."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import (
    Clients,
    Connect,
    LogCapture,
    MakeServer,
    OpenChannel,
    Pki,
    mint_pki,
    server_config,
)

from jobworker.engine import JobMount
from jobworker.server import JobWorkerServer, build_server


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A P-256 PKI shared by the whole session (per xdist worker)."""
    return mint_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def make_server(certs: Pki, tmp_path: Path) -> AsyncIterator[MakeServer]:
    """make_server(**ServerConfig overrides) -> a started in-process server, shut down afterwards."""
    servers: list[JobWorkerServer] = []

    # Jobs run in the sandbox: tests hand them files (FIFOs) through tmp_path, exposed at the same path.
    await asyncio.to_thread(tmp_path.chmod, 0o755)
    shared = (JobMount(str(tmp_path), str(tmp_path), writable=True),)

    async def make(**overrides: Any) -> JobWorkerServer:
        overrides.setdefault("job_mounts", shared)
        state_dir = tmp_path / f"state{len(servers)}"
        running = await build_server(server_config(certs, state_dir, **overrides))
        servers.append(running)
        await running.start()
        return running

    yield make
    for running in servers:
        await running.shutdown(1.0)


@pytest.fixture
async def server(make_server: MakeServer) -> JobWorkerServer:
    """A started in-process server with a real engine."""
    return await make_server()


@pytest.fixture
async def clients(certs: Pki) -> AsyncIterator[Clients]:
    """Client channels by identity, to any server."""
    opened = Clients(certs)
    yield opened
    await opened.close()


@pytest.fixture
def channel(clients: Clients, server: JobWorkerServer) -> OpenChannel:
    """channel(name) -> a channel to `server` presenting `name`'s certificate (None: none)."""
    return lambda name: clients.channel(server.port, name)


@pytest.fixture
def connect(clients: Clients, server: JobWorkerServer) -> Connect:
    """connect(name) -> a JobWorker stub for `server` presenting `name`'s certificate."""
    return lambda name: clients.stub(server.port, name)


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Every log record emitted during the test."""
    handler = LogCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
