"""Fixtures for the CLI tests: a PKI and a real jw-server per worker, and a `jw` runner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_fixtures import Jw, Pki, ServerProcess, mint_pki, start_server
from click.testing import CliRunner


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Test certificates, minted once per worker."""
    return mint_pki(tmp_path_factory.mktemp("cli-pki"))


@pytest.fixture(scope="session")
def server(credentials: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real jw-server on 127.0.0.1:0 with a temporary state directory."""
    process = start_server(credentials, tmp_path_factory.mktemp("cli-state"))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def limits_server(credentials: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real jw-server that puts jobs in cgroups, so limits are enforced (root only)."""
    if os.geteuid() != 0:
        pytest.skip("resource limits need cgroups, which need root")
    process = start_server(credentials, tmp_path_factory.mktemp("cli-state"), cgroups=True)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def aging_server(credentials: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real jw-server that retires every connection after about a second."""
    process = start_server(
        credentials,
        tmp_path_factory.mktemp("cli-state"),
        "--max-connection-age",
        "1",
        "--connection-age-grace",
        "0.5",
    )
    yield process
    process.stop()


def _runner(server: ServerProcess, credentials: Pki, tmp_path: Path) -> Jw:
    config_home = tmp_path / "config"
    config_home.mkdir(exist_ok=True)
    return Jw(CliRunner(), credentials, server, config_home)


@pytest.fixture
def jw(server: ServerProcess, credentials: Pki, tmp_path: Path) -> Jw:
    """`jw(...)`: run the CLI in-process against the real server (alice unless user= says)."""
    return _runner(server, credentials, tmp_path)


@pytest.fixture
def jw_aging(aging_server: ServerProcess, credentials: Pki, tmp_path: Path) -> Jw:
    """Like `jw`, against the server with a one-second maximum connection age."""
    return _runner(aging_server, credentials, tmp_path)


@pytest.fixture
def jw_limits(limits_server: ServerProcess, credentials: Pki, tmp_path: Path) -> Jw:
    """Like `jw`, against the server that enforces limits."""
    return _runner(limits_server, credentials, tmp_path)
