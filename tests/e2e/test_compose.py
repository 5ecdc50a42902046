"""Compose smoke test: the repository's compose.yaml comes up healthy and runs a job.

The real compose.yaml is used in place; only the published port is overridden (compose.yaml pins
127.0.0.1:50051, which may be busy, and has no variable for it) to an ephemeral loopback port.
The project directory is a temp dir, so `./certs` is minted there, and the project name is unique.
Runs of this test, also from concurrent pytest sessions, take turns through a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "compose.yaml"
LOCK_FILE = Path(tempfile.gettempdir()) / "jobworker-e2e-compose.lock"
LOCK_TIMEOUT = 300.0
UP_TIMEOUT = 120
CONTAINER_PORT = 50051
# `!override` replaces the list instead of appending to it (compose >= 2.24).
PORT_OVERRIDE = f"""\
services:
  server:
    ports: !override
      - "127.0.0.1::{CONTAINER_PORT}"
"""


@pytest.fixture(scope="module")
def compose_version() -> str:
    """`docker compose version`; skip without the v2 plugin (fail when JW_E2E_REQUIRED=1)."""
    try:
        result = subprocess.run(
            ["docker", "compose", "version", "--short"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"docker compose version failed: {exc}"
    else:
        if result.returncode == 0:
            return result.stdout.strip()
        reason = f"docker compose version failed: {result.stderr.strip() or result.stdout.strip()}"
    if os.environ.get("JW_E2E_REQUIRED") == "1":
        pytest.fail(f"JW_E2E_REQUIRED=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (install the docker compose v2 plugin)")


@contextlib.contextmanager
def _compose_turn() -> Iterator[None]:
    """Hold the machine-wide compose lock: one compose project of these tests at a time."""
    with LOCK_FILE.open("a") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pytest.fail(f"{LOCK_FILE} held by another run for {LOCK_TIMEOUT:.0f}s")
                # flock has no timed wait; another test run holds it for about a minute.
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class ComposeProject:
    """`docker compose` for one project: the real compose.yaml plus the port override."""

    def __init__(self, directory: Path, image: str) -> None:
        self.directory = directory
        self.name = f"jwe2e{uuid.uuid4().hex[:12]}"
        override = directory / "compose.e2e.yaml"
        override.write_text(PORT_OVERRIDE)
        self._base = [
            "docker",
            "compose",
            "-f",
            str(COMPOSE_FILE),
            "-f",
            str(override),
            "--project-directory",
            str(directory),
            "-p",
            self.name,
        ]
        self._env = {
            **os.environ,
            "JW_IMAGE": image,
            "JW_UID": str(os.getuid()),
            "JW_GID": str(os.getgid()),
        }

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `docker compose ARGS` for this project."""
        return subprocess.run(
            [*self._base, *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def logs(self) -> str:
        """The last lines of every service's logs."""
        result = self.run("logs", "--no-color", "--tail", "100")
        return result.stdout + result.stderr


def test_compose_stack_comes_up_healthy_and_runs_a_job(
    compose_version: str,
    image: str,
    tmp_path: Path,
    jw_cli: Callable[..., subprocess.CompletedProcess[str]],
    figure: Callable[[str], None],
) -> None:
    project = ComposeProject(tmp_path, image)
    with _compose_turn():
        try:
            started = time.monotonic()
            up = project.run("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT), timeout=UP_TIMEOUT + 60)
            took = time.monotonic() - started
            assert up.returncode == 0, f"{up.stderr}\n{project.logs()}"

            ps = project.run("ps", "--all", "--format", "json")
            assert ps.returncode == 0, ps.stderr
            services = {s["Service"]: s for s in map(json.loads, ps.stdout.splitlines())}
            assert services["server"]["Health"] == "healthy", services["server"]
            assert services["pki"]["ExitCode"] == 0, project.logs()

            # The certificates were minted into the project directory, not the repository.
            certs_dir = tmp_path / "certs"
            assert (certs_dir / "writer.crt").is_file()

            port = project.run("port", "server", str(CONTAINER_PORT))
            assert port.returncode == 0, port.stderr
            address = port.stdout.strip()
            assert address.startswith("127.0.0.1:"), address

            result = jw_cli(address, certs_dir, "run", "--", "echo", "hello", identity="writer")
            assert result.returncode == 0, f"{result.stderr}\n{project.logs()}"
            assert result.stdout == "hello\n"
            figure(f"docker compose {compose_version}: up --wait healthy in {took:.1f}s")
        finally:
            down = project.run("down", "-v", "--timeout", "10", timeout=120)
    assert down.returncode == 0, down.stderr
