"""Case 6, the fleet: a call through a node that does not hold the job vs straight to the one that does.

A one-member etcd (TLS, jw-pki certificates) and two jw-servers `a` and `b` on 127.0.0.5/6; every job runs
on b. Start through a (placement + one forwarded hop) against Start on b; a follower relayed by a against
one reading from b; then b is killed with SIGKILL and we time how soon a answers UNAVAILABLE for b's job
and how soon b drops out of the fleet (its lease expiring).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _context import Context
from _followers import follow_job
from _harness import BenchError, Certs, ServerProcess
from _report import CaseResult, Metric, MiB, summary_ms

import pki
from jobworker.client import AsyncClient, ClientError, ConnectionFailedError, JobState

_HOSTS = {"etcd": "127.0.0.5", "a": "127.0.0.5", "b": "127.0.0.6"}
_NODE_PORT = 42101
_ETCD_CLIENT, _ETCD_PEER = 43201, 43202
_LEASE_TTL = 5
_STREAM_BYTES = 256 * MiB
_ROUNDS = 10


def _mint(directory: Path) -> dict[str, tuple[Path, Path]]:
    ca = pki.issue_ca()
    pki.write_issued(directory, "ca", ca)
    pairs = {
        "a": pki.write_issued(directory, "a", pki.issue_node(ca, "a", sans=(_HOSTS["a"],))),
        "b": pki.write_issued(directory, "b", pki.issue_node(ca, "b", sans=(_HOSTS["b"],))),
        # etcd checks a client's certificate against its source address: 127.0.0.1 on one machine.
        "etcd": pki.write_issued(
            directory, "etcd", pki.issue_etcd(ca, "etcd", sans=(_HOSTS["etcd"], "127.0.0.1"))
        ),
        "admin": pki.write_issued(directory, "admin", pki.issue_client(ca, "admin", pki.Role.ADMIN)),
    }
    return pairs


def _etcd(binary: str, directory: Path, ca: Path, pair: tuple[Path, Path]) -> subprocess.Popen[bytes]:
    host = _HOSTS["etcd"]
    cert, key = pair
    log = (directory / "etcd.log").open("wb")
    return subprocess.Popen(
        [
            binary,
            "--name=bench",
            f"--data-dir={directory / 'etcd'}",
            f"--listen-client-urls=https://{host}:{_ETCD_CLIENT}",
            f"--advertise-client-urls=https://{host}:{_ETCD_CLIENT}",
            f"--listen-peer-urls=https://{host}:{_ETCD_PEER}",
            f"--initial-advertise-peer-urls=https://{host}:{_ETCD_PEER}",
            f"--initial-cluster=bench=https://{host}:{_ETCD_PEER}",
            f"--cert-file={cert}",
            f"--key-file={key}",
            f"--trusted-ca-file={ca}",
            "--client-cert-auth",
            f"--peer-cert-file={cert}",
            f"--peer-key-file={key}",
            f"--peer-trusted-ca-file={ca}",
            "--log-level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )


def _node(ctx: Context, name: str, ca: Path, pairs: dict[str, tuple[Path, Path]]) -> ServerProcess:
    cert, key = pairs[name]
    admin_cert, admin_key = pairs["admin"]
    certs = Certs(ca, cert, key, admin_cert, admin_key)
    return ServerProcess(
        ctx.workdir / f"fleet-{name}",
        certs,
        max_jobs=200,
        extra_args=[
            f"--listen={_HOSTS[name]}:{_NODE_PORT}",
            f"--etcd=https://{_HOSTS['etcd']}:{_ETCD_CLIENT}",
            f"--lease-ttl={_LEASE_TTL}",
        ],
    )


async def _wait(what: str, check: Callable[[], Awaitable[bool]], limit_s: float) -> float:
    """Seconds until `check` returns True; BenchError after `limit_s`."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if await check():
            return time.perf_counter() - t0
        await asyncio.sleep(0.05)
    raise BenchError(f"timed out waiting for {what}")


async def _starts(client: AsyncClient, count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        await client.start("/bin/true", node="b")
        times.append(time.perf_counter() - t0)
    return times


async def _follow(client: AsyncClient, starter: AsyncClient, size: int) -> float:
    job = await starter.start("head", ["-c", str(size), "/dev/zero"], node="b")
    followed = await follow_job(client, job.id, time.perf_counter())
    if followed.nbytes != size:
        raise BenchError(f"the follower got {followed.nbytes} bytes, expected {size}")
    return size / MiB / followed.seconds


async def run(ctx: Context) -> CaseResult:
    """Forwarded Start and follower against direct ones, then failover times."""
    result = CaseResult("fleet", "6. fleet: through a node that does not hold the job vs the one that does")
    binary = shutil.which("etcd")
    if binary is None:
        result.notes.append("skipped: no etcd binary (apt-get install etcd-server)")
        return result
    directory = ctx.workdir / "fleet"
    directory.mkdir(parents=True, exist_ok=True)
    pairs = _mint(directory)
    ca = directory / "ca.crt"
    etcd = _etcd(binary, directory, ca, pairs["etcd"])
    nodes: list[ServerProcess] = []
    try:
        nodes = [_node(ctx, "a", ca, pairs), _node(ctx, "b", ca, pairs)]
        node_a, node_b = nodes
        async with AsyncClient(node_a.config()) as via_a, AsyncClient(node_b.config()) as on_b:

            async def both_alive() -> bool:
                try:
                    return sum(n.alive for n in await via_a.nodes()) == 2
                except ClientError:
                    return False

            await _wait("both nodes to join", both_alive, 30)
            per_round = max(ctx.sizes.starts // _ROUNDS, 2)
            forwarded: list[float] = []
            direct: list[float] = []
            single: list[float] = []
            for client in (via_a, on_b, ctx.client):
                await _starts(client, 5)
            # Alternating rounds, so other load on the machine falls on all alike. The single-host server
            # ignores the node constraint.
            for _ in range(_ROUNDS):
                forwarded += await _starts(via_a, per_round)
                direct += await _starts(on_b, per_round)
                single += await _starts(ctx.client, per_round)
            fwd, dir_, one = summary_ms(forwarded), summary_ms(direct), summary_ms(single)
            result.metrics.append(
                Metric(
                    "Start RPC p50 on a fleet node holding the job (+ its etcd record)",
                    dir_["p50_ms"],
                    "ms",
                    baseline="a single-host jw-server",
                    baseline_value=one["p50_ms"],
                    note=f"+{dir_['p50_ms'] - one['p50_ms']:.2f} ms",
                )
            )
            result.metrics.append(
                Metric(
                    "Start RPC p50 through a non-owner node (placement + one forwarded hop)",
                    fwd["p50_ms"],
                    "ms",
                    baseline="Start on the owner node",
                    baseline_value=dir_["p50_ms"],
                    note=f"+{fwd['p50_ms'] - dir_['p50_ms']:.2f} ms (target <= +3 ms)",
                )
            )
            size = min(ctx.sizes.stream_bytes, _STREAM_BYTES)
            relayed, local = [], []
            for _ in range(max(ctx.sizes.stream_rounds, 1)):
                relayed.append(await _follow(via_a, on_b, size))
                local.append(await _follow(on_b, on_b, size))
            result.metrics.append(
                Metric(
                    f"One follower of {size // MiB} MiB relayed by a non-owner node",
                    statistics.median(relayed),
                    "MiB/s",
                    baseline="the same follower on the owner node",
                    baseline_value=statistics.median(local),
                    higher_is_better=True,
                    target_ratio=0.7,
                )
            )
            # Its holder keeps the job running without b: short enough to end by itself soon after.
            job = await on_b.start("sleep", ["12"], node="b")
            await via_a.status(job.id)
            node_b.process.send_signal(signal.SIGKILL)
            node_b.process.wait()

            async def unavailable() -> bool:
                try:
                    info = await via_a.status(job.id)
                except ConnectionFailedError as exc:
                    return "node b" in str(exc)
                return info.state is not JobState.RUNNING

            async def dropped() -> bool:
                return not {n.name: n for n in await via_a.nodes()}["b"].alive

            refused = await _wait("b's job to answer UNAVAILABLE", unavailable, 10)
            expired = await _wait("b's lease to expire", dropped, _LEASE_TTL + 5)
            result.metrics.append(
                Metric(
                    "kill -9 of the owner -> its job answers UNAVAILABLE via another node",
                    refused * 1000,
                    "ms",
                )
            )
            result.metrics.append(
                Metric(
                    f"kill -9 of a node -> dropped from the fleet (lease TTL {_LEASE_TTL} s)",
                    refused + expired,
                    "s",
                    limit=_LEASE_TTL + 1,
                )
            )
            result.data.update(
                start_forwarded=fwd,
                start_direct=dir_,
                start_single_host=one,
                follower_mib_s={"relayed": relayed, "direct": local},
                failover_seconds={"unavailable": refused, "lease_expired": refused + expired},
            )
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.stop()
                continue
            node.kill()
            # The node killed on purpose left its job's holder and its cgroup prefix: its successor on the
            # same state dir takes them over, and stops cleanly (the job stopped, the prefix removed).
            with contextlib.suppress(BenchError):
                node.restarted().stop()
        etcd.send_signal(signal.SIGTERM)
        try:
            etcd.wait(10)
        except subprocess.TimeoutExpired:
            etcd.kill()
            etcd.wait()
    return result
