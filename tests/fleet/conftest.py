"""A fleet on one machine: a 3-member etcd cluster and 3 jw-servers as processes on 127.0.0.2-4.

Ports come from the fleet's range (jw-servers 42001, etcd 43101/43102 on each address); every process is
started here and stopped by PID in the fixture's teardown. The suite needs the `etcd` binary (Debian
etcd-server) and skips without it (fails instead when JW_FLEET_REQUIRED is set, as in CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

import pki
from jobworker.client import Client, ClientConfig, ClientError
from jobworker.server.fleet.etcd import EtcdClient, wait_healthy

_T = TypeVar("_T")

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
# Under pytest-xdist each worker that gets fleet tests brings up a fleet of its own, on ports of its own.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
NODE_PORT = 42001 + 10 * _WORKER
ETCD_CLIENT_PORT = 43101 + 10 * _WORKER
ETCD_PEER_PORT = 43102 + 10 * _WORKER
NODES = ("a", "b", "c")
ZONES = {"a": "east", "b": "west", "c": "west"}
LEASE_TTL = 5

ETCD = shutil.which("etcd")
ROOT = os.geteuid() == 0
REQUIRED = bool(os.environ.get("JW_FLEET_REQUIRED"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/fleet/" in str(item.fspath):
            item.add_marker(pytest.mark.fleet)


def wait_until(what: str, check: Callable[[], _T | None], timeout: float, interval: float = 0.1) -> _T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except ClientError as exc:
            last, result = exc, None
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last error: {last})")


@dataclass
class Certs:
    directory: Path

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"


def _write(directory: Path, name: str, issued: pki.Issued) -> None:
    (directory / f"{name}.crt").write_bytes(issued.cert_pem())
    key = directory / f"{name}.key"
    key.write_bytes(issued.key_pem())
    key.chmod(0o600)


def mint(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.issue_ca()
    (directory / "ca.crt").write_bytes(ca.cert_pem())
    for name, host in zip(NODES, HOSTS, strict=True):
        _write(directory, name, pki.issue_node(ca, name, sans=(host,)))
        # etcd checks a peer's client certificate against the address the peer connects from, and on one
        # machine that is 127.0.0.1 whatever address the peer listens on.
        _write(directory, f"etcd-{name}", pki.issue_etcd(ca, f"etcd-{name}", sans=(host, "127.0.0.1")))
    for name, role in (("alice", pki.Role.WRITER), ("bob", pki.Role.WRITER), ("rita", pki.Role.READER)):
        _write(directory, name, pki.issue_client(ca, name, role))
    _write(directory, "root", pki.issue_client(ca, "root", pki.Role.ADMIN))
    return Certs(directory)


@dataclass
class Proc:
    """A process this suite started; stopped by its PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _spawn(name: str, argv: list[str], log: Path) -> Proc:
    with log.open("ab") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Proc(name, popen, log)


@dataclass
class Fleet:
    """The running fleet: etcd members and jw-server nodes by name, and how to reach them."""

    tmp: Path
    certs: Certs
    etcd: dict[str, Proc] = field(default_factory=dict)
    nodes: dict[str, Proc] = field(default_factory=dict)
    clients: list[Client] = field(default_factory=list)

    @property
    def endpoints(self) -> str:
        return ",".join(f"https://{h}:{ETCD_CLIENT_PORT}" for h in HOSTS)

    def address(self, node: str) -> str:
        return f"{HOSTS[NODES.index(node)]}:{NODE_PORT}"

    def start_etcd(self, member: str) -> None:
        host = HOSTS[NODES.index(member)]
        cert, key = self.certs.pair(f"etcd-{member}")
        cluster = ",".join(
            f"etcd-{n}=https://{h}:{ETCD_PEER_PORT}" for n, h in zip(NODES, HOSTS, strict=True)
        )
        assert ETCD is not None
        argv = [
            ETCD,
            f"--name=etcd-{member}",
            f"--data-dir={self.tmp / f'etcd-{member}'}",
            f"--listen-client-urls=https://{host}:{ETCD_CLIENT_PORT}",
            f"--advertise-client-urls=https://{host}:{ETCD_CLIENT_PORT}",
            f"--listen-peer-urls=https://{host}:{ETCD_PEER_PORT}",
            f"--initial-advertise-peer-urls=https://{host}:{ETCD_PEER_PORT}",
            f"--initial-cluster={cluster}",
            "--initial-cluster-token=jw-fleet-test",
            "--initial-cluster-state=new",
            f"--cert-file={cert}",
            f"--key-file={key}",
            f"--trusted-ca-file={self.certs.ca}",
            "--client-cert-auth",
            f"--peer-cert-file={cert}",
            f"--peer-key-file={key}",
            f"--peer-trusted-ca-file={self.certs.ca}",
            "--peer-client-cert-auth",
            "--heartbeat-interval=100",
            "--election-timeout=1000",
            "--log-level=warn",
        ]
        self.etcd[member] = _spawn(f"etcd-{member}", argv, self.tmp / f"etcd-{member}.log")

    def start_node(self, node: str) -> None:
        cert, key = self.certs.pair(node)
        argv = [
            sys.executable,
            "-m",
            "jobworker.server",
            f"--listen={self.address(node)}",
            f"--cert={cert}",
            f"--key={key}",
            f"--ca={self.certs.ca}",
            f"--state-dir={self.tmp / f'state-{node}'}",
            f"--cgroup-prefix=jw-fleet-{node}",
            f"--etcd={self.endpoints}",
            f"--node-label=zone={ZONES[node]}",
            f"--lease-ttl={LEASE_TTL}",
            "--grace=2",
            # The teardown's SIGTERM must end the jobs too (they outlive a plain stop, with their holders).
            "--stop-jobs-on-shutdown",
        ]
        if not ROOT:
            argv += ["--no-cgroups", "--isolation=none"]
        self.nodes[node] = _spawn(node, argv, self.tmp / f"node-{node}.log")

    def client(self, node: str, who: str = "alice", timeout: float = 10.0) -> Client:
        cert, key = self.certs.pair(who)
        client = Client(
            ClientConfig(server=self.address(node), ca=self.certs.ca, cert=cert, key=key), timeout=timeout
        )
        self.clients.append(client)
        return client

    def wait_fleet(self, alive: int, timeout: float = 30.0, via: tuple[str, ...] = NODES) -> None:
        for node in via:
            client = self.client(node, "rita")

            def ready(client: Client = client) -> bool:
                info = client.server_info()
                return (
                    info.fleet is not None and info.fleet.etcd_reachable and info.fleet.nodes_alive == alive
                )

            wait_until(f"node {node} to see {alive} live nodes", ready, timeout)

    def diagnostics(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in (*self.etcd.values(), *self.nodes.values()))

    def stop_all(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()
        for proc in self.nodes.values():
            proc.stop()
        for proc in self.etcd.values():
            proc.stop()


def _etcd_healthy(fleet: Fleet, timeout: float) -> None:
    cert, key = fleet.certs.pair("a")

    async def check() -> None:
        client = EtcdClient(
            fleet.endpoints.split(","),
            ca=fleet.certs.ca.read_bytes(),
            cert=cert.read_bytes(),
            key=key.read_bytes(),
        )
        try:
            await wait_healthy(client, timeout)
        finally:
            await client.close()

    asyncio.run(check())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if ETCD is None:
        reason = "needs the etcd binary (apt-get install etcd-server)"
        # CI sets JW_FLEET_REQUIRED: there a missing etcd is a broken set-up, not a reason to skip.
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("fleet")
    running = Fleet(tmp, mint(tmp / "certs"))
    try:
        for member in NODES:
            running.start_etcd(member)
        _etcd_healthy(running, 20)
        for node in NODES:
            running.start_node(node)
        running.wait_fleet(alive=3)
    except BaseException:
        diagnostics = running.diagnostics()
        running.stop_all()
        pytest.fail(f"the fleet did not come up:\n{diagnostics}")
    try:
        yield running
    finally:
        running.stop_all()


def describe(fleet: Fleet) -> dict[str, Any]:
    """What each process is doing, for assertion messages."""
    return {p.name: p.alive() for p in (*fleet.etcd.values(), *fleet.nodes.values())}
