"""Every error path ends in one readable line and a documented exit code, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cli_fixtures import Jw
from test_cli_process import LAUNCHER, REPO


def one_line_error(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_server_certificate_not_trusted(jw: Jw) -> None:
    result = jw("--ca", str(jw.credentials.directory / "foreign-ca.crt"), "list")
    assert result.exit_code == 3
    assert "server certificate not trusted by --ca" in one_line_error(result.stderr)


def test_client_certificate_rejected(jw: Jw) -> None:
    result = jw("list", user="mallory")
    assert result.exit_code == 3
    assert "rejected our client certificate" in one_line_error(result.stderr)


def test_a_certificate_grpc_refuses_to_load_is_one_line_from_a_real_process(jw: Jw) -> None:
    """A CA certificate as the client's: grpc's C core refuses it and logs ERROR lines of its own on fd 2,
    which an in-process runner never sees; jw must keep them off the user's terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JW_", "GRPC_"))}
    env.update({k: v for k, v in jw.env("alice").items() if v is not None})
    env.update(JW_CERT=str(jw.credentials.ca), JW_KEY=str(jw.credentials.key("ca")))
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 3
    assert "cannot connect" in one_line_error(done.stderr)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_server(jw: Jw, closed_port: int) -> None:
    result = jw("--server", f"127.0.0.1:{closed_port}", "list")
    assert result.exit_code == 3
    assert "connection refused" in one_line_error(result.stderr)


@pytest.fixture
def silent_server() -> Iterator[str]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_timeout_is_configurable(jw: Jw, silent_server: str) -> None:
    result = jw("--timeout", "500ms", "--server", silent_server, "health")
    assert result.exit_code == 3
    assert "no answer from" in one_line_error(result.stderr)


def test_run_against_unreachable_server(jw: Jw, closed_port: int) -> None:
    result = jw("--server", f"127.0.0.1:{closed_port}", "run", "--", "true")
    assert result.exit_code == 3


@pytest.mark.parametrize("option", ["--ca", "--cert", "--key"])
def test_missing_credential_file(jw: Jw, option: str) -> None:
    result = jw(option, "/nonexistent/file.pem", "list")
    assert result.exit_code == 2
    line = one_line_error(result.stderr)
    assert f"({option}) /nonexistent/file.pem: no such file" in line


def test_no_connection_settings(jw: Jw) -> None:
    result = jw("list", user=None)
    assert result.exit_code == 2
    line = one_line_error(result.stderr)
    assert "--server or JW_SERVER" in line
    assert "config.toml" in line


def test_bad_server_address(jw: Jw) -> None:
    result = jw("--server", "localhost", "list")
    assert result.exit_code == 2
    assert "is not HOST:PORT" in one_line_error(result.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["start", "--memory", "lots", "--", "true"],
        ["start", "--io-read-bps", "0", "--", "true"],
        ["start", "--cpus", "0", "--", "true"],
        ["start", "--pids", "0", "--", "true"],
        ["start", "--env", "=value", "--", "true"],
        ["start", "--env", "JW_SURELY_UNSET_VARIABLE", "--", "true"],
        ["start"],
        ["run"],
        ["stop", "--grace", "soon", "some-id"],
        ["--timeout", "0s", "list"],
        ["logs", "--stdout", "--stderr", "some-id"],
        ["logs", "--offset", "-1", "some-id"],
        ["list", "--state", "sleeping"],
        ["list", "--json", "--quiet"],
        ["status"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(jw: Jw, args: list[str]) -> None:
    result = jw(*args)
    assert result.exit_code == 2
    assert "Error: " in result.stderr
    assert result.stdout == ""


def test_help_documents_exit_codes_and_completion(jw: Jw) -> None:
    result = jw("--help", user=None)
    assert result.exit_code == 0
    for line in [
        "2    usage or configuration error",
        "3    connection or TLS error",
        "4    job not found",
        "5    permission denied",
        "6    failed precondition",
        "130  interrupted by Ctrl-C",
        'eval "$(_JW_COMPLETE=bash_source jw)"',
    ]:
        assert line in result.stdout
    for command in ["start", "run", "logs", "stop", "status", "list", "health"]:
        assert f"  {command} " in result.stdout


def test_version(jw: Jw) -> None:
    result = jw("--version", user=None)
    assert result.exit_code == 0
    assert result.stdout.startswith("jw, version ")
