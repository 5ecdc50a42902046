"""Limits and namespaces on the real kernel (root only): what a job can and cannot do."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobworker.engine import (
    EngineConfig,
    JobManager,
    JobMount,
    JobSpec,
    JobState,
    Limits,
    OutputChunk,
    SandboxConfig,
    Stream,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and cgroups need root"),
]

# The job runs as another user in its own view of the host: the venv (under /root here) may be out of
# its reach, the system python3 on the job's PATH is not.
PY = "python3"
MiB = 1 << 20


def cgroup_dirs(prefix: str) -> list[str]:
    """Directories named prefix in any mounted cgroup hierarchy (v1 controllers or unified)."""
    found = []
    for root, dirs, _files in os.walk("/sys/fs/cgroup"):
        if prefix in dirs:
            found.append(os.path.join(root, prefix))
        if root.count("/") > 6:
            dirs.clear()
    return found


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o777)
    return path


@pytest.fixture
async def isolated(tmp_path: Path, shared_dir: Path) -> AsyncIterator[JobManager]:
    prefix = f"jwtest-{uuid.uuid4().hex[:12]}"
    mounts = (JobMount(str(shared_dir), str(shared_dir), writable=True),)
    mgr = JobManager(
        EngineConfig(state_dir=tmp_path / "state", sandbox=SandboxConfig(mounts=mounts), cgroup_prefix=prefix)
    )
    await mgr.open()
    if not mgr.info.limits_supported:
        pytest.skip(f"cgroups unavailable: {mgr.info.cgroup_reason}")
    yield mgr
    await mgr.close(grace_seconds=1)
    assert cgroup_dirs(prefix) == [], "job cgroups leaked"


async def output(mgr: JobManager, job_id: str, stream: Stream = Stream.STDOUT) -> bytes:
    chunks = [e.data async for e in mgr.follow(job_id) if isinstance(e, OutputChunk) and e.stream is stream]
    return b"".join(chunks)


async def test_job_sees_only_its_own_processes(isolated: JobManager) -> None:
    status = await isolated.start(JobSpec("sh", ("-c", "echo $$; ps -e -o pid=,comm=")))
    lines = (await output(isolated, status.id)).decode().split("\n")
    assert lines[0] == "2", "the command is the first child of the job's init (PID 1)"
    pids = {int(line.split()[0]) for line in lines[1:] if line.strip()}
    assert 1 in pids
    assert pids <= {1, 2, 3}, lines
    assert status.pid != 1  # the host-side pid of the job's init


async def test_job_has_only_loopback_and_no_route(isolated: JobManager) -> None:
    script = "cat /proc/net/dev; echo ---; cat /proc/net/route; echo ---; hostname"
    status = await isolated.start(JobSpec("sh", ("-c", script)))
    dev, route, hostname = (await output(isolated, status.id)).decode().split("---\n")
    interfaces = {line.split(":")[0].strip() for line in dev.splitlines()[2:]}
    assert interfaces == {"lo"}
    assert route.strip().splitlines()[1:] == []  # the header only: no route out
    assert hostname.strip() == f"job-{status.id[:8]}"


async def test_loopback_is_up_inside_the_job(isolated: JobManager) -> None:
    code = (
        "import socket\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "c = socket.create_connection(s.getsockname(), timeout=5); print('connected')\n"
    )
    status = await isolated.start(JobSpec(PY, ("-c", code)))
    assert await output(isolated, status.id) == b"connected\n"
    assert (await isolated.wait(status.id)).exit_code == 0


async def test_memory_limit_oom_kills_and_reports_it(isolated: JobManager) -> None:
    code = "b = bytearray(256 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('survived')"
    status = await isolated.start(JobSpec(PY, ("-c", code), limits=Limits(memory_bytes=64 * MiB)))
    final = await isolated.wait(status.id)
    assert final.state is JobState.OOM_KILLED, final
    assert final.signal == 9
    assert await output(isolated, status.id) == b""
    assert final.usage.memory_peak_bytes is not None
    assert final.usage.memory_peak_bytes <= 64 * MiB


async def test_cpu_quota_throttles_a_busy_loop(isolated: JobManager) -> None:
    code = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 2: pass"
    started = time.monotonic()
    status = await isolated.start(JobSpec(PY, ("-c", code), limits=Limits(cpus=0.2)))
    final = await isolated.wait(status.id)
    wall = time.monotonic() - started
    assert final.exit_code == 0
    assert final.usage.cpu_seconds is not None
    print(f"cpus=0.2 for {wall:.2f} s wall: {final.usage.cpu_seconds:.3f} s CPU")
    assert final.usage.cpu_seconds <= 0.2 * wall + 0.1


async def test_pids_limit_contains_a_fork_bomb(isolated: JobManager) -> None:
    bomb = "b() { b | b & }; b; sleep 1000"
    status = await isolated.start(JobSpec("sh", ("-c", bomb), limits=Limits(pids=50)))
    # The shell reports failed forks on stderr: the bomb has hit the limit.
    async for event in isolated.follow(status.id):
        if isinstance(event, OutputChunk) and event.stream is Stream.STDERR and b"fork" in event.data:
            break
    started = time.monotonic()
    final = await isolated.stop(status.id, grace_seconds=1)
    assert final.state is JobState.STOPPED
    assert time.monotonic() - started < 10


async def test_io_write_limit_throttles_direct_writes(isolated: JobManager, shared_dir: Path) -> None:
    target = shared_dir / "dd.out"
    dd = ("if=/dev/zero", f"of={target}", "bs=64k", "count=48", "oflag=direct")
    started = time.monotonic()
    status = await isolated.start(JobSpec("dd", dd, limits=Limits(io_write_bps=MiB)))
    final = await isolated.wait(status.id)
    elapsed = time.monotonic() - started
    print(f"3 MiB with oflag=direct at io-write-bps 1M: {elapsed:.2f} s")
    assert final.exit_code == 0, await output(isolated, status.id, Stream.STDERR)
    assert target.stat().st_size == 3 * MiB
    assert elapsed >= 2.0


async def test_limits_survive_in_status(isolated: JobManager) -> None:
    limits = Limits(cpus=0.5, memory_bytes=128 * MiB, pids=20)
    status = await isolated.start(JobSpec("true", limits=limits))
    assert status.limits == limits
    final = await isolated.wait(status.id)
    assert final.limits == limits
    assert final.usage.cpu_seconds is not None


async def test_many_jobs_leave_no_cgroups(isolated: JobManager) -> None:
    statuses = await asyncio.gather(
        *(isolated.start(JobSpec("sh", ("-c", f"exit {i}"), limits=Limits(pids=10))) for i in range(10))
    )
    finals = [await isolated.wait(s.id) for s in statuses]
    assert sorted(f.exit_code or 0 for f in finals) == list(range(10))


async def test_an_oom_killed_child_is_reported_while_the_job_goes_on(isolated: JobManager) -> None:
    """The kernel killing one process of a job for memory is news even when the job exits 0."""
    child = "b = bytearray(256 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
    script = f'{PY} -c "{child}"; echo child=$?; exit 0'
    status = await isolated.start(JobSpec("sh", ("-c", script), limits=Limits(memory_bytes=64 * MiB)))
    final = await isolated.wait(status.id)
    assert (final.state, final.exit_code) == (JobState.EXITED, 0)
    assert await output(isolated, status.id) == b"child=137\n"
    assert final.usage.oom_kills >= 1
