"""End-to-end fixtures: the jobworker image, a throwaway PKI and privileged server containers.

Every test under tests/e2e is marked `e2e`. Without a reachable Docker engine those tests skip,
unless JW_E2E_REQUIRED=1 (CI), where a missing engine is an error. JW_E2E_IMAGE names a prebuilt
image; otherwise docker/build-image.sh builds one once per run, under a file lock that the xdist
workers share. Each worker mints its own PKI and runs its own containers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Ryuk, testcontainers' reaper, is an image pulled from Docker Hub, which air-gapped hosts cannot
# reach; these fixtures remove their own containers. Must be set before testcontainers is imported.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer

import pki

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
CONTAINER_PORT = 50051
CERTS_IN_CONTAINER = "/certs"
E2E_IMAGE_TAG = "jobworker:e2e"
READY_TIMEOUT = float(os.environ.get("JW_E2E_READY_TIMEOUT", "60"))
BUILD_TIMEOUT = float(os.environ.get("JW_E2E_BUILD_TIMEOUT", "1200"))
SERVER_NAME = "server"
SERVER_SANS = ("localhost", "127.0.0.1")
CLIENT_ROLES = {
    "admin": pki.Role.ADMIN,
    "writer": pki.Role.WRITER,
    "writer2": pki.Role.WRITER,
    "reader": pki.Role.READER,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e with `e2e`, so `-m 'not e2e'` leaves them all out."""
    for item in items:
        if E2E_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _docker_unavailable_reason() -> str | None:
    try:
        import docker

        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure to reach the engine means the same thing here
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session", autouse=True)
def docker_engine() -> None:
    """Skip the e2e tests when no Docker engine answers; fail instead when JW_E2E_REQUIRED=1."""
    reason = _docker_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("JW_E2E_REQUIRED") == "1":
        pytest.fail(f"JW_E2E_REQUIRED=1 but no Docker engine is reachable: {reason}", pytrace=False)
    pytest.skip(f"no Docker engine reachable (start dockerd or set DOCKER_HOST): {reason}")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _build_image(tag: str) -> None:
    env = {**os.environ, "IMAGE": tag}
    try:
        result = subprocess.run(
            ["bash", str(REPO_ROOT / "docker" / "build-image.sh")],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"building {tag} took more than {BUILD_TIMEOUT:.0f}s", pytrace=False)
    if result.returncode != 0:
        pytest.fail(
            f"building {tag} failed (exit {result.returncode}):\n"
            f"{_tail(result.stdout)}\n{_tail(result.stderr)}",
            pytrace=False,
        )


def _require_image(name: str) -> None:
    result = subprocess.run(["docker", "image", "inspect", name], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"JW_E2E_IMAGE={name} is not an image on this engine (make image?)")


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> str:
    """The image under test: JW_E2E_IMAGE if set, else jobworker:e2e built once for this run."""
    prebuilt = os.environ.get("JW_E2E_IMAGE")
    if prebuilt:
        _require_image(prebuilt)
        return prebuilt
    if worker_id == "master":
        _build_image(E2E_IMAGE_TAG)
        return E2E_IMAGE_TAG
    # The parent of a worker's basetemp is shared by all workers of this run (and only this run).
    shared = tmp_path_factory.getbasetemp().parent
    with (shared / "image.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        outcome = shared / "image.outcome"
        if not outcome.exists():
            try:
                _build_image(E2E_IMAGE_TAG)
            except BaseException:
                # One failed build is enough: the other workers report it instead of retrying.
                outcome.write_text("failed")
                raise
            outcome.write_text("built")
        elif outcome.read_text() != "built":
            pytest.fail(f"building {E2E_IMAGE_TAG} failed in another xdist worker", pytrace=False)
    return E2E_IMAGE_TAG


@dataclass(frozen=True)
class PkiDir:
    """A CA, the server's and the clients' certificates in one directory, named as jw-pki names them."""

    dir: Path

    @property
    def ca(self) -> Path:
        """The CA certificate."""
        return self.dir / "ca.crt"

    def cert(self, name: str) -> Path:
        """The certificate of `name` (server, admin, writer, writer2, reader)."""
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        """The private key of `name`."""
        return self.dir / f"{name}.key"

    def tls_args(self, name: str) -> list[str]:
        """`jw` flags that authenticate as client `name`."""
        return ["--ca", str(self.ca), "--cert", str(self.cert(name)), "--key", str(self.key(name))]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> PkiDir:
    """A fresh PKI: ca, server (SANs localhost, 127.0.0.1) and admin/writer/writer2/reader clients."""
    directory = tmp_path_factory.mktemp("pki")
    ca = pki.issue_ca("jobworker e2e CA")
    pki.write_issued(directory, pki.CA_NAME, ca)
    pki.write_issued(directory, SERVER_NAME, pki.issue_server(ca, SERVER_NAME, SERVER_SANS))
    for name, role in CLIENT_ROLES.items():
        pki.write_issued(directory, name, pki.issue_client(ca, name, role))
    # Mounted read-only at /certs: the server (root in the container) must be able to enter it.
    directory.chmod(0o755)
    return PkiDir(directory)


@dataclass(frozen=True)
class ExecResult:
    """What a command run inside the server container did."""

    exit_code: int
    stdout: str
    stderr: str


class ServerNotReadyError(RuntimeError):
    """The server container did not become ready; the message carries its logs."""


def _jw_executable() -> str:
    beside = Path(sys.executable).with_name("jw")
    if beside.exists():
        return str(beside)
    found = shutil.which("jw")
    if found is None:
        pytest.fail("the jw CLI is not installed (make venv)")
    return found


class JobworkerServer:
    """A running jw-server container and how to reach it from the host."""

    host = "127.0.0.1"

    def __init__(self, container: DockerContainer, certs: PkiDir, port: int) -> None:
        self.container = container
        self.certs = certs
        self.port = port

    @property
    def address(self) -> str:
        """`host:port` of the published gRPC port."""
        return f"{self.host}:{self.port}"

    @property
    def certs_dir(self) -> Path:
        """The host directory mounted at /certs."""
        return self.certs.dir

    def exec(self, cmd: str | Sequence[str]) -> ExecResult:
        """Run `cmd` inside the container (as root, outside any job) and return what it did."""
        command: str | list[str] = cmd if isinstance(cmd, str) else list(cmd)
        exit_code, (out, err) = self.container.get_wrapped_container().exec_run(command, demux=True)
        return ExecResult(
            exit_code=int(exit_code),
            stdout=(out or b"").decode(errors="replace"),
            stderr=(err or b"").decode(errors="replace"),
        )

    def logs(self) -> str:
        """The container's stdout and stderr so far."""
        out, err = self.container.get_logs()
        return (out + err).decode(errors="replace")

    def state(self) -> dict[str, Any]:
        """The container's `State` as `docker inspect` reports it."""
        wrapped = self.container.get_wrapped_container()
        wrapped.reload()
        state: dict[str, Any] = wrapped.attrs["State"]
        return state

    def jw(
        self, *args: str, identity: str = "writer", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the host's `jw` CLI against this server as client `identity`."""
        # Only the flags below configure the CLI: no JW_* variables or config file of the caller.
        env = {k: v for k, v in os.environ.items() if not k.startswith("JW_")}
        env["XDG_CONFIG_HOME"] = str(self.certs.dir / "no-config")
        return subprocess.run(
            [_jw_executable(), "--server", self.address, *self.certs.tls_args(identity), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _published_port(container: DockerContainer) -> int:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    bindings = wrapped.attrs["NetworkSettings"]["Ports"].get(f"{CONTAINER_PORT}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
            return int(binding["HostPort"])
    raise ServerNotReadyError(f"port {CONTAINER_PORT} is not published: {bindings}")


def _tls_handshake(server: JobworkerServer) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(server.certs.ca)
    context.load_cert_chain(server.certs.cert("reader"), server.certs.key("reader"))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((server.host, server.port), timeout=2) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.do_handshake()


def _wait_ready(server: JobworkerServer, timeout: float) -> None:
    """Return once the container is healthy or accepts a TLS 1.3 handshake; raise with its logs."""
    deadline = time.monotonic() + timeout
    last = "no attempt yet"
    while True:
        state = server.state()
        if state.get("Status") in ("exited", "dead"):
            raise ServerNotReadyError(
                f"server container exited with code {state.get('ExitCode')}; logs:\n"
                f"{_tail(server.logs(), 200)}"
            )
        if (state.get("Health") or {}).get("Status") == "healthy":
            return
        try:
            _tls_handshake(server)
        except (OSError, ssl.SSLError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            return
        if time.monotonic() >= deadline:
            raise ServerNotReadyError(
                f"server not ready after {timeout:.0f}s (last TLS attempt: {last}; "
                f"health: {(state.get('Health') or {}).get('Status')}); logs:\n"
                f"{_tail(server.logs(), 200)}"
            )
        # Nothing to subscribe to from outside the container: poll, briefly.
        time.sleep(0.2)


@contextlib.contextmanager
def running_server(
    image: str,
    certs: PkiDir,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = READY_TIMEOUT,
) -> Iterator[JobworkerServer]:
    """Start a privileged server container with a private cgroup namespace; remove it on exit."""
    container = (
        DockerContainer(image)
        .with_kwargs(privileged=True, cgroupns="private")
        .with_volume_mapping(str(certs.dir), CERTS_IN_CONTAINER, "ro")
    )
    # Loopback only, random port: testcontainers' with_bind_ports cannot name the host address.
    container.ports[f"{CONTAINER_PORT}/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
    for key, value in (env or {}).items():
        container.with_env(key, value)
    try:
        container.start()
        server = JobworkerServer(container, certs, _published_port(container))
        _wait_ready(server, timeout)
        yield server
    finally:
        container.stop()


@pytest.fixture(scope="module")
def server(image: str, certs: PkiDir) -> Iterator[JobworkerServer]:
    """One server container per test module (and per xdist worker), ready to take requests."""
    with running_server(image, certs) as running:
        yield running


@pytest.fixture
def server_factory(image: str, certs: PkiDir) -> Iterator[Callable[..., JobworkerServer]]:
    """Start extra servers, e.g. with other JW_SERVER_* settings: `server_factory(env={...})`."""
    with contextlib.ExitStack() as stack:

        def start(*, env: Mapping[str, str] | None = None) -> JobworkerServer:
            return stack.enter_context(running_server(image, certs, env=env))

        yield start
