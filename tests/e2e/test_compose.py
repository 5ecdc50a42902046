"""Compose smoke test: the repository's compose.yaml comes up healthy and runs a job.

The real compose.yaml is used in place; only the published ports are overridden (compose.yaml pins
127.0.0.1:50051 and 127.0.0.1:9464, which may be busy) to ephemeral loopback ports.
The project directory is a temp dir, so `./certs` is minted there, and the project name is unique.
Runs of these tests, also from concurrent pytest sessions, take turns through a file lock.
One test uses the image under test; the other lets compose build its own image, as a plain
`docker compose up -d` on a fresh clone does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "compose.yaml"
WHEELS_DIR = REPO_ROOT / "docker" / "wheels"
LOCAL_BASE_IMAGE = "jobworker-base:bookworm"
HUB_BASE_IMAGE = "python:3.11-slim-bookworm"
BUILD_TIMEOUT = 900
LOCK_FILE = Path(tempfile.gettempdir()) / "jobworker-e2e-compose.lock"
LOCK_TIMEOUT = 300.0
UP_TIMEOUT = 120
CONTAINER_PORT = 50051
METRICS_PORT = 9464
# `!override` replaces the list instead of appending to it (compose >= 2.24).
PORT_OVERRIDE = f"""\
services:
  server:
    ports: !override
      - "127.0.0.1::{CONTAINER_PORT}"
      - "127.0.0.1::{METRICS_PORT}"
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

    def __init__(
        self, directory: Path, image: str, *, override: str = "", env: dict[str, str] | None = None
    ) -> None:
        self.directory = directory
        self.name = f"jwe2e{uuid.uuid4().hex[:12]}"
        override_file = directory / "compose.e2e.yaml"
        override_file.write_text(PORT_OVERRIDE + override)
        self._base = [
            "docker",
            "compose",
            "-f",
            str(COMPOSE_FILE),
            "-f",
            str(override_file),
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
            **(env or {}),
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

            metrics = project.run("port", "server", str(METRICS_PORT))
            assert metrics.returncode == 0, metrics.stderr
            assert metrics.stdout.strip().startswith("127.0.0.1:"), metrics.stdout
            url = f"http://{metrics.stdout.strip()}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                assert "\njobworker_jobs_started_total 1.0\n" in response.read().decode()
            figure(f"docker compose {compose_version}: up --wait healthy in {took:.1f}s")
        finally:
            down = project.run("down", "-v", "--timeout", "10", timeout=120)
    assert down.returncode == 0, down.stderr


def _image_exists(name: str) -> bool:
    result = subprocess.run(["docker", "image", "inspect", name], capture_output=True, check=False)
    return result.returncode == 0


def test_compose_builds_its_image_from_the_hosts_wheels(
    compose_version: str,
    tmp_path: Path,
    jw_cli: Callable[..., subprocess.CompletedProcess[str]],
    figure: Callable[[str], None],
) -> None:
    # compose needs a base it can find: Docker Hub's where it is reachable, else the local one.
    base = next((b for b in (LOCAL_BASE_IMAGE, HUB_BASE_IMAGE) if _image_exists(b)), None)
    if base is None:
        pytest.skip(f"neither {LOCAL_BASE_IMAGE} nor {HUB_BASE_IMAGE} is on this engine (make image)")
    if not any(WHEELS_DIR.glob("*.whl")):
        wheels = subprocess.run(
            ["bash", str(REPO_ROOT / "docker" / "build-wheels.sh")],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        assert wheels.returncode == 0, wheels.stderr
    tag = f"jobworker:e2e-compose-{uuid.uuid4().hex[:8]}"
    # The project directory is a temp dir, so the context must be named. The local base has every
    # package the image needs: there the build runs with no network at all, which proves that pip
    # installs from the wheels alone (python:3.11-slim needs apt, so it keeps the host network).
    build = f"""\
    build:
      context: {REPO_ROOT}
"""
    if base == LOCAL_BASE_IMAGE:
        build += "      network: none\n"
    project = ComposeProject(tmp_path, tag, override=build, env={"JW_BASE_IMAGE": base})
    with _compose_turn():
        try:
            started = time.monotonic()
            up = project.run("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT), timeout=BUILD_TIMEOUT)
            took = time.monotonic() - started
            assert up.returncode == 0, f"{up.stderr}\n{project.logs()}"
            assert _image_exists(tag), "compose did not build the image it was missing"

            port = project.run("port", "server", str(CONTAINER_PORT))
            assert port.returncode == 0, port.stderr
            address = port.stdout.strip()
            result = jw_cli(address, tmp_path / "certs", "run", "--", "echo", "built", identity="writer")
            assert result.returncode == 0, f"{result.stderr}\n{project.logs()}"
            assert result.stdout == "built\n"
            network = "no network" if base == LOCAL_BASE_IMAGE else "host network for apt"
            figure(f"docker compose {compose_version}: built on {base} ({network}), healthy in {took:.1f}s")
        finally:
            down = project.run("down", "-v", "--timeout", "10", timeout=120)
            rm = ["docker", "image", "rm", "-f", tag]
            subprocess.run(rm, capture_output=True, timeout=120, check=False)
    assert down.returncode == 0, down.stderr
