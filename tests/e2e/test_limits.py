"""Resource limits and isolation, enforced by the kernel inside the real server container.

Each test records what it measured with the `figure` fixture: printed with -s and listed in the
"jobworker e2e figures" section of the summary. Those figures go into the release notes.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from jobworker.client import JobInfo, JobState, Limits, OutputStream

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer

MIB = 1 << 20

MEMORY_LIMIT = 64 * MIB
ALLOCATE = "b = bytearray(256 << 20)"  # 256 MiB, every page written (zero-filled)

CPU_LIMIT = 0.2
BUSY_SECONDS = 2.0
CPU_SLACK_SECONDS = 0.15  # interpreter start-up and the kernel's quota granularity
BUSY_LOOP = f"""
import time
start = time.monotonic()
while time.monotonic() - start < {BUSY_SECONDS}:
    pass
"""

PIDS_LIMIT = 50
# The bomb's first shell returns at once; the job's main process lives on as `sleep`.
FORK_BOMB = ":(){ :|:& };:; exec sleep 300"

IO_WRITE_LIMIT = 1 * MIB
DD_BLOCKS = ("bs=64k", "count=48")  # 3 MiB: at least 2 s at 1 MiB/s, after the kernel's burst
DD_MIN_SECONDS = 2.0
DD_RATE = re.compile(rb"copied, ([0-9.]+) s, ([0-9.]+ [kMG]?B/s)")


def _wall(info: JobInfo) -> float:
    assert info.started_at is not None
    assert info.ended_at is not None
    return (info.ended_at - info.started_at).total_seconds()


def test_memory_limit_ends_in_oom_kill(server: JobworkerServer, figure: Callable[[str], None]) -> None:
    limits = Limits(memory_bytes=MEMORY_LIMIT)
    job = server.run_job("python3", ["-c", ALLOCATE], limits=limits)
    info = job.info
    assert info.state is JobState.OOM_KILLED, (info, job.stderr)
    assert info.limits.memory_bytes == MEMORY_LIMIT
    peak = info.usage.memory_peak_bytes
    assert peak is not None
    assert peak <= MEMORY_LIMIT
    figure(
        f"memory: 256 MiB allocation under --memory 64M -> {info.state.value} "
        f"(signal {info.signal}) after {_wall(info):.2f}s, peak {peak / MIB:.1f} MiB"
    )


def test_cpu_limit_throttles_a_busy_loop(server: JobworkerServer, figure: Callable[[str], None]) -> None:
    job = server.run_job("python3", ["-c", BUSY_LOOP], limits=Limits(cpus=CPU_LIMIT))
    info = job.info
    assert info.state is JobState.EXITED, (info, job.stderr)
    assert info.exit_code == 0
    cpu = info.usage.cpu_seconds
    assert cpu is not None
    wall = _wall(info)
    assert wall >= BUSY_SECONDS
    assert cpu <= CPU_LIMIT * wall + CPU_SLACK_SECONDS
    figure(
        f"cpu: {BUSY_SECONDS:g}s busy loop under --cpus {CPU_LIMIT} -> {cpu:.3f} cpu-s in "
        f"{wall:.2f}s wall ({cpu / wall:.1%} of a core; bound {CPU_LIMIT * wall + CPU_SLACK_SECONDS:.3f})"
    )


def _cgroup_value(server: JobworkerServer, controller: str, job_id: str, name: str) -> str:
    result = server.exec(
        ["sh", "-c", f'cat "$(find /sys/fs/cgroup/{controller}/ -type d -name {job_id})/{name}"']
    )
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_pids_limit_contains_a_fork_bomb(server: JobworkerServer, figure: Callable[[str], None]) -> None:
    with server.client("writer") as writer:
        job = writer.start("bash", ["-c", FORK_BOMB], limits=Limits(pids=PIDS_LIMIT))
    try:
        # bash reports "fork: retry: Resource temporarily unavailable" once pids.max bites.
        server.wait_for_output(job.id, b"fork", stream=OutputStream.STDERR)
        assert _cgroup_value(server, "pids", job.id, "pids.max") == str(PIDS_LIMIT)
        current = int(_cgroup_value(server, "pids", job.id, "pids.current"))
        assert current <= PIDS_LIMIT
        # "max N": how many forks the limit has refused so far.
        refused = _cgroup_value(server, "pids", job.id, "pids.events").split()[-1]
        assert server.run_job("echo", ["still serving"]).stdout == b"still serving\n"
    finally:
        started = time.monotonic()
        with server.client("writer") as writer:
            stopped = writer.stop(job.id, grace_seconds=1)
        took = time.monotonic() - started
    assert stopped.state is JobState.STOPPED, stopped
    leftovers = server.exec(["ps", "-eo", "args"]).stdout
    assert FORK_BOMB not in leftovers
    figure(
        f"pids: fork bomb under --pids {PIDS_LIMIT}: {current} processes, {refused} forks refused; "
        f"stop (grace 1s) took {took:.2f}s"
    )


def _supports_direct_io(server: JobworkerServer, directory: str) -> bool:
    probe = f"{directory}/jw-e2e-direct-{uuid.uuid4().hex}"
    dd = f"dd if=/dev/zero of={probe} bs=64k count=1 oflag=direct"
    result = server.exec(["sh", "-c", f"{dd}; rc=$?; rm -f {probe}; exit $rc"])
    return result.exit_code == 0


def test_io_write_limit_throttles_direct_writes(
    server: JobworkerServer, figure: Callable[[str], None]
) -> None:
    # Jobs write only where the server exposes a host path: the exchange bind mount, on a real disk
    # (O_DIRECT is not possible on the container's overlay filesystem).
    directory = server.exchange
    assert _supports_direct_io(server, directory), "no O_DIRECT on a bind mount of a host directory"
    # One target per job: each job runs as a uid of its own, which may not overwrite another's file.
    targets = [f"{directory}/dd-{uuid.uuid4().hex}.out" for _ in range(2)]
    free_dd, throttled_dd = (["if=/dev/zero", f"of={t}", *DD_BLOCKS, "oflag=direct"] for t in targets)
    try:
        free = server.run_job("dd", free_dd)
        throttled = server.run_job("dd", throttled_dd, limits=Limits(io_write_bps=IO_WRITE_LIMIT))
    finally:
        server.exec(["rm", "-f", *targets])
    for job in (free, throttled):
        assert job.info.state is JobState.EXITED, (job.info, job.stderr)
        assert job.info.exit_code == 0, job.stderr
    wall = _wall(throttled.info)
    assert wall >= DD_MIN_SECONDS, throttled.stderr
    free_rate = DD_RATE.search(free.stderr)
    throttled_rate = DD_RATE.search(throttled.stderr)
    assert throttled_rate is not None, throttled.stderr
    figure(
        f"io: dd 3 MiB oflag=direct into {directory} under --io-write-bps 1M took {wall:.2f}s "
        f"(dd: {throttled_rate.group(1).decode()} s, {throttled_rate.group(2).decode()}); "
        f"unlimited: {free_rate.group(2).decode() if free_rate else '?'}"
    )


def test_stop_kills_the_whole_process_tree(server: JobworkerServer, figure: Callable[[str], None]) -> None:
    marker = f"jw-e2e-orphan-{uuid.uuid4().hex}"
    # A new session, then a subshell that backgrounds `sleep` under the marker name and exits:
    # the sleep is an orphan in its own session, far from the job's main process.
    script = f"setsid bash -c '(exec -a {marker} sleep 300 &)'; echo ready; exec sleep 300"
    with server.client("writer") as writer:
        job = writer.start("bash", ["-c", script])
    try:
        server.wait_for_output(job.id, b"ready\n")

        def marker_running() -> bool:
            return marker in server.exec(["ps", "-eo", "args"]).stdout

        # setsid may return before its child has exec'd; ps is all there is to look at.
        server.wait_for(marker_running, timeout=10, what=f"{marker} to show up in ps")
    finally:
        with server.client("writer") as writer:
            stopped = writer.stop(job.id, grace_seconds=1)
    assert stopped.state is JobState.STOPPED, stopped
    assert marker not in server.exec(["ps", "-eo", "args"]).stdout
    figure("tree: setsid'd double-forked orphan gone once stop returned")


def test_job_network_namespace_has_no_route_out(
    server: JobworkerServer, figure: Callable[[str], None]
) -> None:
    route = server.run_job("cat", ["/proc/net/route"])
    assert route.info.exit_code == 0, route.stderr
    lines = route.stdout.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].split()[:3] == ["Iface", "Destination", "Gateway"]

    dev = server.run_job("cat", ["/proc/net/dev"])
    assert dev.info.exit_code == 0, dev.stderr
    interfaces = [line.split(":")[0].strip() for line in dev.stdout.decode().splitlines()[2:]]
    assert interfaces == ["lo"]

    # The container itself does have a way out, so the emptiness above is the job's own namespace.
    outside = server.exec(["cat", "/proc/net/route"]).stdout.splitlines()
    assert len(outside) > 1
    figure(f"network: job sees interfaces {interfaces} and no routes; the container has {len(outside) - 1}")
