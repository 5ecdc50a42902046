"""End-to-end fixtures: the jobworker image, a throwaway PKI and privileged server containers.

Every test under tests/e2e is marked `e2e`. Without a reachable Docker engine those tests skip,
unless JW_E2E_REQUIRED=1 (CI), where a missing engine is an error. JW_E2E_IMAGE names a prebuilt
image; otherwise docker/build-image.sh builds one once per run, under a file lock that the xdist
workers share. Each worker mints its own PKI and runs its own containers.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

# Ryuk, testcontainers' reaper, is an image pulled from Docker Hub, which air-gapped hosts cannot
# reach; these fixtures remove their own containers. Must be set before testcontainers is imported.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer

import pki
from jobworker.client import (
    DEFAULT_TIMEOUT,
    AsyncClient,
    Client,
    ClientConfig,
    JobInfo,
    Limits,
    OutputChunk,
    OutputStream,
    StreamEnd,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
CONTAINER_PORT = 50051
CERTS_IN_CONTAINER = "/certs"
# A host directory shared by the test, the container and (as a --job-mount) every job: jobs live in a
# sandbox with a private /tmp, so files the test hands them (go signals, dd targets) go through here.
EXCHANGE = "/exchange"
E2E_IMAGE_TAG = "jobworker:e2e"
READY_TIMEOUT = float(os.environ.get("JW_E2E_READY_TIMEOUT", "60"))
BUILD_TIMEOUT = float(os.environ.get("JW_E2E_BUILD_TIMEOUT", "1200"))
SERVER_NAME = "server"
# The CA starts in the past so that tests can mint client certificates that have already expired.
CA_BACKDATE = timedelta(days=2)
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


FIGURE = "figure"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the figures tests measured (see the `figure` fixture), also from xdist workers."""
    lines = [
        f"{report.nodeid.rsplit('/', 1)[-1]}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if isinstance(report, pytest.TestReport) and report.when == "call"
        for name, value in report.user_properties
        if name == FIGURE
    ]
    if lines:
        terminalreporter.write_sep("=", "jobworker e2e figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def figure(record_property: Callable[[str, object], None]) -> Callable[[str], None]:
    """`figure("...")` records a measured figure: printed (-s) and listed in the summary."""

    def record(line: str) -> None:
        print(f"\n{line}")
        record_property(FIGURE, line)

    return record


def _probe_docker() -> str | None:
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


def _docker_unavailable_reason() -> str | None:
    # When the engine is unreachable, docker.from_env() fails inside its constructor and leaks the
    # socket it opened; with filterwarnings=error its ResourceWarning would turn the skip into an
    # error at some later test. Collect that socket here, with the warning silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        reason = _probe_docker()
        gc.collect()
    return reason


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

    def issue_client(
        self,
        name: str,
        role: pki.Role | None,
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> None:
        """Mint client `name` (no role extension when `role` is None) with this directory's CA."""
        ca = pki.load_ca(self.dir)
        issued = pki.issue_client(ca, name, role, not_before=not_before, not_after=not_after)
        pki.write_issued(self.dir, name, issued, force=True)

    def client_config(self, server: str, name: str) -> ClientConfig:
        """Client settings that reach `server` as client `name`."""
        return ClientConfig(server=server, ca=self.ca, cert=self.cert(name), key=self.key(name))


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> PkiDir:
    """A fresh PKI: ca, server (SANs localhost, 127.0.0.1) and admin/writer/writer2/reader clients."""
    directory = tmp_path_factory.mktemp("pki")
    ca = pki.issue_ca("jobworker e2e CA", not_before=datetime.now(UTC) - CA_BACKDATE)
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


@dataclass(frozen=True)
class FinishedJob:
    """A job followed to its end: final status and everything it wrote."""

    info: JobInfo
    stdout: bytes
    stderr: bytes


def _jw_executable() -> str:
    beside = Path(sys.executable).with_name("jw")
    if beside.exists():
        return str(beside)
    found = shutil.which("jw")
    if found is None:
        pytest.fail("the jw CLI is not installed (make venv)")
    return found


def jw_command(address: str, certs: PkiDir, identity: str, args: Iterable[str]) -> list[str]:
    """argv of the host's `jw` CLI talking to `address` as client `identity` of `certs`."""
    return [_jw_executable(), "--server", address, *certs.tls_args(identity), *args]


def jw_environment(certs: PkiDir) -> dict[str, str]:
    """Our environment without JW_* variables or a config file, so only the flags configure `jw`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JW_")}
    env["XDG_CONFIG_HOME"] = str(certs.dir / "no-config")
    return env


def run_jw(
    address: str, certs: PkiDir, *args: str, identity: str = "writer", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the host's `jw` CLI against `address` as client `identity` of `certs`."""
    return subprocess.run(
        jw_command(address, certs, identity, args),
        env=jw_environment(certs),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll `condition` until true; fail naming `what` after `timeout` seconds.

    Only for state with no event to subscribe to from the host (/proc, ps, docker inspect).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
        time.sleep(interval)


def _follow(
    config: ClientConfig,
    job_id: str,
    *,
    until: Callable[[bytes, bytes], bool] | None,
    timeout: float,
) -> tuple[bytes, bytes, StreamEnd | None]:
    """Stream a job's output from byte 0 until `until(stdout, stderr)` or the stream's end."""
    stdout, stderr = bytearray(), bytearray()
    outcome: dict[str, Any] = {}
    client = Client(config)

    def pump() -> None:
        try:
            for event in client.stream(job_id):
                if isinstance(event, OutputChunk):
                    (stdout if event.stream is OutputStream.STDOUT else stderr).extend(event.data)
                    if until is not None and until(bytes(stdout), bytes(stderr)):
                        return
                elif isinstance(event, StreamEnd):
                    outcome["end"] = event
                    return
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    # The sync stream has no deadline of its own: a thread bounds it, and closing the client
    # cancels the call if the bound is hit.
    thread = threading.Thread(target=pump, name=f"follow-{job_id}", daemon=True)
    thread.start()
    thread.join(timeout)
    try:
        if thread.is_alive():
            client.close()
            thread.join(5)
            pytest.fail(
                f"job {job_id}: no {'match' if until else 'end'} within {timeout:g}s; "
                f"stdout so far: {bytes(stdout[-500:])!r}; stderr so far: {bytes(stderr[-500:])!r}",
                pytrace=False,
            )
    finally:
        client.close()
    if "error" in outcome:
        raise outcome["error"]
    return bytes(stdout), bytes(stderr), outcome.get("end")


class JobworkerServer:
    """A running jw-server container and how to reach it from the host."""

    host = "127.0.0.1"

    # Where the test and the server's jobs exchange files (a --job-mount of a host directory).
    exchange = EXCHANGE

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

    def config(self, identity: str = "writer") -> ClientConfig:
        """Client settings for this server as client `identity`."""
        return self.certs.client_config(self.address, identity)

    def client(self, identity: str = "writer", *, timeout: float = DEFAULT_TIMEOUT) -> Client:
        """A sync client of this server as `identity`; use it as a context manager."""
        return Client(self.config(identity), timeout=timeout)

    def async_client(self, identity: str = "writer", *, timeout: float = DEFAULT_TIMEOUT) -> AsyncClient:
        """An asyncio client of this server as `identity`; create it inside the running loop."""
        return AsyncClient(self.config(identity), timeout=timeout)

    def run_job(
        self,
        command: str,
        args: Sequence[str] = (),
        *,
        identity: str = "writer",
        limits: Limits | None = None,
        timeout: float = 60.0,
    ) -> FinishedJob:
        """Start a job, follow its output to the end and return what it did."""
        with self.client(identity) as client:
            job = client.start(command, args, limits=limits)
        stdout, stderr, end = _follow(self.config(identity), job.id, until=None, timeout=timeout)
        if end is None:
            pytest.fail(f"job {job.id}: the output stream ended without an end event", pytrace=False)
        info = end.job
        if info is None:
            with self.client(identity) as client:
                info = client.status(job.id)
        return FinishedJob(info=info, stdout=stdout, stderr=stderr)

    def wait_for_output(
        self,
        job_id: str,
        needle: bytes,
        *,
        stream: OutputStream = OutputStream.STDOUT,
        identity: str = "writer",
        timeout: float = 30.0,
    ) -> bytes:
        """Follow a job until `needle` appears in `stream`; return that stream's bytes so far."""

        def seen(stdout: bytes, stderr: bytes) -> bool:
            return needle in (stdout if stream is OutputStream.STDOUT else stderr)

        stdout, stderr, end = _follow(self.config(identity), job_id, until=seen, timeout=timeout)
        data = stdout if stream is OutputStream.STDOUT else stderr
        if needle not in data:
            pytest.fail(
                f"job {job_id} ended ({end.job.state if end and end.job else '?'}) without writing "
                f"{needle!r} to {stream.value}; stdout: {stdout[-500:]!r}; stderr: {stderr[-500:]!r}",
                pytrace=False,
            )
        return data

    wait_for = staticmethod(wait_for)

    def published_port(self, container_port: int) -> int:
        """The host port (on 127.0.0.1) that `container_port` is published on (see running_server's ports)."""
        return _published_port(self.container, container_port)

    def jw_server_pid(self) -> int:
        """jw-server's pid inside the container (jobworker.pid1 is PID 1 and runs it)."""
        result = self.exec(["ps", "-o", "pid=", "-C", "jw-server"])
        pids = result.stdout.split()
        if result.exit_code != 0 or len(pids) != 1:
            pytest.fail(f"expected one jw-server process, ps said: {result.stdout!r} {result.stderr!r}")
        return int(pids[0])

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

    def jw_popen(self, *args: str, identity: str = "writer") -> subprocess.Popen[bytes]:
        """Start the host's `jw` CLI against this server as `identity`, stdout and stderr piped."""
        return subprocess.Popen(
            jw_command(self.address, self.certs, identity, args),
            env=jw_environment(self.certs),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def jw(
        self, *args: str, identity: str = "writer", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the host's `jw` CLI against this server as client `identity`."""
        return run_jw(self.address, self.certs, *args, identity=identity, timeout=timeout)


def _published_port(container: DockerContainer, container_port: int = CONTAINER_PORT) -> int:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    bindings = wrapped.attrs["NetworkSettings"]["Ports"].get(f"{container_port}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
            return int(binding["HostPort"])
    raise ServerNotReadyError(f"port {container_port} is not published: {bindings}")


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
    volumes: Mapping[str, str] | None = None,
    ports: Sequence[int] = (),
    timeout: float = READY_TIMEOUT,
) -> Iterator[JobworkerServer]:
    """Start a privileged server container with a private cgroup namespace; remove it on exit.

    `volumes` maps host directories to read-write mount points in the container. EXCHANGE is always
    there, writable by jobs. `ports` are container ports published, like the gRPC port, on a random port
    of the host's loopback (`published_port()`).
    """
    exchange = tempfile.mkdtemp(prefix="jw-e2e-exchange-")
    os.chmod(exchange, 0o777)
    container = (
        DockerContainer(image)
        .with_kwargs(privileged=True, cgroupns="private")
        .with_volume_mapping(str(certs.dir), CERTS_IN_CONTAINER, "ro")
        .with_volume_mapping(exchange, EXCHANGE, "rw")
        .with_env("JW_SERVER_JOB_MOUNT", f"{EXCHANGE}:{EXCHANGE}:rw")
    )
    for host_dir, mount_point in (volumes or {}).items():
        container.with_volume_mapping(host_dir, mount_point, "rw")
    # Loopback only, random port: testcontainers' with_bind_ports cannot name the host address.
    for port in (CONTAINER_PORT, *ports):
        container.ports[f"{port}/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
    for key, value in (env or {}).items():
        container.with_env(key, value)
    try:
        container.start()
        server = JobworkerServer(container, certs, _published_port(container))
        _wait_ready(server, timeout)
        yield server
    finally:
        container.stop()
        # Jobs wrote here as their own uids: the container (root) can remove what the host user cannot.
        shutil.rmtree(exchange, ignore_errors=True)


@pytest.fixture(scope="module")
def server(image: str, certs: PkiDir) -> Iterator[JobworkerServer]:
    """One server container per test module (and per xdist worker), ready to take requests."""
    with running_server(image, certs) as running:
        yield running


@pytest.fixture
def server_factory(image: str, certs: PkiDir) -> Iterator[Callable[..., JobworkerServer]]:
    """Start extra servers, e.g. with other JW_SERVER_* settings: `server_factory(env={...})`."""
    with contextlib.ExitStack() as stack:

        def start(
            *,
            env: Mapping[str, str] | None = None,
            volumes: Mapping[str, str] | None = None,
            ports: Sequence[int] = (),
        ) -> JobworkerServer:
            return stack.enter_context(running_server(image, certs, env=env, volumes=volumes, ports=ports))

        yield start


@pytest.fixture(scope="session")
def jw_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`jw_cli(address, certs_dir, *args, identity="writer")`: the host's `jw` against any server."""

    def run(
        address: str, certs_dir: Path, *args: str, identity: str = "writer", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run_jw(address, PkiDir(certs_dir), *args, identity=identity, timeout=timeout)

    return run
