"""The cgroup v1 driver against the real kernel (root, v1 hierarchies mounted)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from cgroupfs_helpers import SLEEP, python, v1_hierarchies_mounted, wait_exited

from jobworker.engine.cgroups import CgroupError, detect_driver
from jobworker.engine.cgroups._v1 import V1Driver
from jobworker.engine.job import Limits

pytestmark = pytest.mark.root

MiB = 1 << 20


def job_dir(driver: V1Driver, controller: str, job_id: str) -> Path:
    hierarchy = next(h for h in driver.hierarchies if controller in h.controllers)
    return Path(hierarchy.jobs_dir, job_id)


def read(driver: V1Driver, controller: str, job_id: str, name: str) -> str:
    return (job_dir(driver, controller, job_id) / name).read_text()


def test_detects_v1_on_a_v1_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating the prefix directories needs root")
    if not v1_hierarchies_mounted():
        pytest.skip("this host mounts no cgroup v1 controller hierarchies")

    driver = detect_driver(prefix="jobworker-detect-probe")
    try:
        assert driver.name == "v1", driver.reason
        assert driver.supports_limits()
    finally:
        if isinstance(driver, V1Driver):
            for directory in driver.jobs_dirs:
                os.rmdir(directory)


def test_kernel_reports_the_limits(real_v1: V1Driver) -> None:
    limits = Limits(cpus=0.5, memory_bytes=64 * MiB, pids=50, io_read_bps=MiB, io_write_bps=2 * MiB)

    cgroup = real_v1.create("limits", limits)

    assert read(real_v1, "cpu", "limits", "cpu.cfs_period_us") == "100000\n"
    assert read(real_v1, "cpu", "limits", "cpu.cfs_quota_us") == "50000\n"
    assert read(real_v1, "memory", "limits", "memory.limit_in_bytes") == f"{64 * MiB}\n"
    memsw = job_dir(real_v1, "memory", "limits") / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        assert memsw.read_text() == f"{64 * MiB}\n"
    else:
        assert read(real_v1, "memory", "limits", "memory.swappiness") == "0\n"
    assert read(real_v1, "pids", "limits", "pids.max") == "50\n"
    reads = read(real_v1, "blkio", "limits", "blkio.throttle.read_bps_device").splitlines()
    writes = read(real_v1, "blkio", "limits", "blkio.throttle.write_bps_device").splitlines()
    assert reads
    assert [line.split()[1] for line in reads] == [str(MiB)] * len(reads)
    assert [line.split()[0] for line in writes] == [line.split()[0] for line in reads]
    assert {line.split()[1] for line in writes} == {str(2 * MiB)}
    for line in reads:
        # Only whole disks: the kernel refuses partitions, so none may appear here.
        assert not Path("/sys/dev/block", line.split()[0], "partition").exists()
    cgroup.remove()
    assert not any(job_dir(real_v1, h, "limits").exists() for h in ("cpu", "memory", "pids"))


def test_refused_limit_leaves_no_directory(real_v1: V1Driver) -> None:
    # Above PID_MAX_LIMIT: the kernel refuses it after the memory limit was already written.
    with pytest.raises(CgroupError, match=r"pids\.max: Invalid argument"):
        real_v1.create("refused", Limits(memory_bytes=64 * MiB, pids=10**9))

    assert not any(job_dir(real_v1, c, "refused").exists() for c in ("pids", "memory", "freezer"))


def test_process_moved_in_is_listed_signalled_and_measured(real_v1: V1Driver) -> None:
    cgroup = real_v1.create("sleep", Limits(pids=10))
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        for procs in cgroup.procs_files:
            Path(procs).write_text(str(sleeper.pid))

        assert cgroup.pids() == [sleeper.pid]
        cgroup.signal_all(signal.SIGTERM)
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
    finally:
        sleeper.kill()
        sleeper.wait()
    cgroup.remove()
    assert cgroup.pids() == []


def test_stats_report_cpu_time_and_memory_peak(real_v1: V1Driver) -> None:
    cgroup = real_v1.create("stats", Limits())

    child = python(
        "b = bytearray(24 * 1024 * 1024)\nsum(i * i for i in range(2_000_000))\n",
        cgroup.procs_files,
    )
    assert child.wait(timeout=60) == 0

    stats = cgroup.stats()
    assert stats.cpu_seconds is not None
    assert stats.cpu_seconds > 0.05
    assert stats.memory_peak_bytes is not None
    assert stats.memory_peak_bytes >= 24 * MiB
    assert stats.oom_kills == 0
    cgroup.remove()


def test_kill_reaches_a_setsid_double_forked_grandchild(real_v1: V1Driver) -> None:
    cgroup = real_v1.create("escape", Limits())
    child = python(
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.execvp('sleep', ['sleep', '300'])\n"
        "    print(pid, flush=True)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "print('joined', flush=True)\n"
        "os.execvp('sleep', ['sleep', '300'])\n",
        cgroup.procs_files,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    # The middle process has been reaped once the child says it joined.
    assert child.stdout.readline() == "joined\n"
    pid_fd = os.pidfd_open(grandchild)
    try:
        assert os.getsid(grandchild) != os.getsid(child.pid)
        assert sorted(cgroup.pids()) == sorted([child.pid, grandchild])

        cgroup.kill()

        assert child.wait(timeout=10) == -signal.SIGKILL
        assert wait_exited(pid_fd)
    finally:
        os.close(pid_fd)
        child.kill()
        child.wait()
        child.stdout.close()
    cgroup.remove()
    assert not any(Path(p).parent.exists() for p in cgroup.procs_files)


def test_remove_kills_what_is_left_and_leaves_no_directory(real_v1: V1Driver) -> None:
    cgroup = real_v1.create("leftover", Limits(cpus=0.2))
    child = python(SLEEP, cgroup.procs_files, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "joined\n"
        assert cgroup.pids() == [child.pid]

        cgroup.remove()
        cgroup.remove()

        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.communicate()
    assert not any(Path(p).parent.exists() for p in cgroup.procs_files)


def test_out_of_memory_is_counted(real_v1: V1Driver) -> None:
    cgroup = real_v1.create("oom", Limits(memory_bytes=32 * MiB))

    child = python("b = bytearray(200 * 1024 * 1024)\n", cgroup.procs_files)

    assert child.wait(timeout=60) == -signal.SIGKILL
    assert cgroup.stats().oom_kills >= 1
    cgroup.remove()


def test_cleanup_stale_removes_a_previous_runs_jobs(real_v1: V1Driver) -> None:
    old = real_v1.create("previous-run", Limits(pids=5))
    child = python(SLEEP, old.procs_files, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "joined\n"
        restarted = detect_driver(prefix=os.path.basename(real_v1.jobs_dirs[0]))

        assert restarted.cleanup_stale() == 1

        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.communicate()
    assert not any(Path(p).parent.exists() for p in old.procs_files)


def test_a_job_pinned_to_cpu_0_sees_only_cpu_0(real_v1: V1Driver) -> None:
    if not any("cpuset" in h.controllers for h in real_v1.hierarchies):
        pytest.skip("this host mounts no cpuset hierarchy")
    cgroup = real_v1.create("pinned", Limits(cpuset="0"))

    assert read(real_v1, "cpuset", "pinned", "cpuset.cpus") == "0\n"
    # v1 refuses tasks in a cpuset without mems: they were copied from the parent.
    assert read(real_v1, "cpuset", "pinned", "cpuset.mems").strip()
    child = python(
        "print(next(ln for ln in open('/proc/self/status') if ln.startswith('Cpus_allowed_list')), end='')\n",
        cgroup.procs_files,
        stdout=subprocess.PIPE,
    )
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert out.split() == ["Cpus_allowed_list:", "0"]
    cgroup.remove()
    assert not job_dir(real_v1, "cpuset", "pinned").exists()


def test_a_job_without_a_cpuset_does_not_join_the_cpuset_hierarchy(real_v1: V1Driver) -> None:
    # Each v1 cgroup.procs write waits for an RCU grace period: a job joins only what its limits need.
    cgroup = real_v1.create("unpinned", Limits(pids=10))

    assert not job_dir(real_v1, "cpuset", "unpinned").exists()
    assert all("/cpuset/" not in path for path in cgroup.procs_files)
    cgroup.remove()


def test_memory_swap_is_memsw_on_top_of_memory(real_v1: V1Driver) -> None:
    memsw = Path(job_dir(real_v1, "memory", "x").parent, "memory.memsw.limit_in_bytes")
    if not memsw.exists():
        with pytest.raises(CgroupError, match="no swap accounting"):
            real_v1.create("swap", Limits(memory_bytes=64 * MiB, memory_swap_bytes=32 * MiB))
        assert not job_dir(real_v1, "memory", "swap").exists()
        return

    cgroup = real_v1.create("swap", Limits(memory_bytes=64 * MiB, memory_swap_bytes=32 * MiB))

    assert read(real_v1, "memory", "swap", "memory.limit_in_bytes") == f"{64 * MiB}\n"
    assert read(real_v1, "memory", "swap", "memory.memsw.limit_in_bytes") == f"{96 * MiB}\n"
    cgroup.remove()


def test_memory_swap_without_a_memory_limit_is_refused_on_v1(real_v1: V1Driver) -> None:
    memsw = Path(job_dir(real_v1, "memory", "x").parent, "memory.memsw.limit_in_bytes")
    match = "needs a memory limit" if memsw.exists() else "no swap accounting"
    with pytest.raises(CgroupError, match=match):
        real_v1.create("swap", Limits(memory_swap_bytes=32 * MiB))
    assert not job_dir(real_v1, "memory", "swap").exists()
