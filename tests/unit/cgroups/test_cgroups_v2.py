"""The cgroup v2 driver against a fake cgroupfs that mirrors the kernel's rules."""

from __future__ import annotations

import errno
import math
import signal

import pytest
from cgroupfs_helpers import SERVER_PID, FakeV2Host, MakeFakeV2

from jobworker.engine.cgroups import CgroupError, CgroupStats
from jobworker.engine.cgroups._v2 import V2Driver, V2JobCgroup
from jobworker.engine.job import Limits


def v2(host: FakeV2Host) -> V2Driver:
    driver = host.detect()
    assert isinstance(driver, V2Driver), f"{driver.name}: {driver.reason}"
    return driver


def test_setup_moves_server_processes_to_a_leaf_then_enables_controllers(
    fake_v2: FakeV2Host,
) -> None:
    driver = v2(fake_v2)

    mount, kernel = fake_v2.mount, fake_v2.kernel
    assert kernel.procs(mount) == []
    assert kernel.procs(mount / "jobworker-server") == [1, SERVER_PID]
    assert (mount / "cgroup.subtree_control").read_text().split() == ["cpu", "io", "memory", "pids", "cpuset"]
    jobs = mount / "jobworker-jobs"
    assert (jobs / "cgroup.subtree_control").read_text().split() == ["cpu", "io", "memory", "pids", "cpuset"]
    assert driver.jobs_dir == str(jobs)
    assert driver.supports_limits()
    assert driver.reason == ""
    # The attach warm-up moves the server into the cgroup it now is in: its leaf.
    assert driver.warm_attach_file == str(mount / "jobworker-server" / "cgroup.procs")


def test_setup_is_idempotent_across_server_restarts(fake_v2: FakeV2Host) -> None:
    v2(fake_v2)
    # The restarted server reads its new place from /proc/self/cgroup.
    fake_v2.proc_self_cgroup.write_text("0::/jobworker-server\n")

    driver = v2(fake_v2)

    assert driver.jobs_dir == str(fake_v2.mount / "jobworker-jobs")
    assert not (fake_v2.mount / "jobworker-server" / "jobworker-jobs").exists()
    assert driver.warm_attach_file == str(fake_v2.mount / "jobworker-server" / "cgroup.procs")


def test_host_root_cgroup_keeps_its_processes(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(host_root=True)

    driver = v2(host)

    assert host.kernel.procs(host.mount) == [1, SERVER_PID]
    assert not (host.mount / "jobworker-server").exists()
    assert driver.warm_attach_file == str(host.mount / "cgroup.procs")


def test_no_warm_up_where_the_server_is_in_neither_cgroup(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(host_root=True, server_procs=(1,))
    assert v2(host).warm_attach_file is None


def test_delegated_service_cgroup_hosts_the_jobs(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(server_path="/system.slice/jw.service")

    driver = v2(host)

    service = host.mount / "system.slice" / "jw.service"
    assert driver.jobs_dir == str(service / "jobworker-jobs")
    assert host.kernel.procs(service / "jobworker-server") == [1, SERVER_PID]


def test_mount_rooted_at_the_server_cgroup(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(mount_root="/docker/abc")
    host.proc_self_cgroup.write_text("0::/docker/abc\n")

    driver = v2(host)

    assert driver.jobs_dir == str(host.mount / "jobworker-jobs")


def test_create_writes_every_limit(fake_v2: FakeV2Host) -> None:
    driver = v2(fake_v2)
    limits = Limits(cpus=0.5, memory_bytes=64 << 20, io_read_bps=1 << 20, io_write_bps=2 << 20, pids=32)

    cgroup = driver.create("job1", limits)

    job = fake_v2.mount / "jobworker-jobs" / "job1"
    assert cgroup.procs_files == (str(job / "cgroup.procs"),)
    assert (job / "cpu.max").read_text() == "50000 100000"
    assert (job / "memory.max").read_text() == str(64 << 20)
    assert (job / "memory.swap.max").read_text() == "0"
    assert (job / "pids.max").read_text() == "32"
    # The tmp filesystem is not in the fake sysfs, so every real whole disk is throttled.
    assert (job / "io.max").read_text().splitlines() == [
        "8:0 rbps=1048576 wbps=2097152",
        "253:0 rbps=1048576 wbps=2097152",
        "259:0 rbps=1048576 wbps=2097152",
    ]


def test_create_without_limits_writes_nothing(fake_v2: FakeV2Host) -> None:
    driver = v2(fake_v2)
    fake_v2.kernel.writes.clear()

    driver.create("job1", Limits())

    assert fake_v2.kernel.writes == []
    assert (fake_v2.mount / "jobworker-jobs" / "job1" / "memory.max").read_text() == "max\n"


def test_io_read_only_limit(fake_v2: FakeV2Host) -> None:
    driver = v2(fake_v2)

    driver.create("job1", Limits(io_read_bps=4096))

    io_max = (fake_v2.mount / "jobworker-jobs" / "job1" / "io.max").read_text()
    assert "8:0 rbps=4096\n" in io_max
    assert "wbps" not in io_max


def test_memory_limit_without_swap_accounting(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(features=frozenset({"cgroup.kill"}))
    driver = v2(host)

    driver.create("job1", Limits(memory_bytes=1 << 30))

    job = host.mount / "jobworker-jobs" / "job1"
    assert (job / "memory.max").read_text() == str(1 << 30)
    assert not (job / "memory.swap.max").exists()


def test_missing_controller_is_named_and_leaves_nothing(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(controllers=("cpu", "memory", "pids"))
    driver = v2(host)
    assert driver.reason == "cgroup v2 controllers unavailable: io"

    with pytest.raises(CgroupError, match="controller 'io'"):
        driver.create("job1", Limits(memory_bytes=1 << 20, io_write_bps=1024))

    assert not (host.mount / "jobworker-jobs" / "job1").exists()
    driver.create("job2", Limits(cpus=1.0))


@pytest.mark.parametrize("failing", ["memory.max", "pids.max", "io.max", "cpu.max"])
def test_refused_limit_raises_and_removes_the_cgroup(fake_v2: FakeV2Host, failing: str) -> None:
    driver = v2(fake_v2)
    fake_v2.kernel.fail[failing] = errno.EINVAL

    with pytest.raises(CgroupError, match=f"cannot write .* to .*{failing}: Invalid argument"):
        driver.create("job1", Limits(cpus=1.5, memory_bytes=1 << 20, pids=5, io_read_bps=1, io_write_bps=1))

    assert not (fake_v2.mount / "jobworker-jobs" / "job1").exists()


def test_mkdir_failure_raises(fake_v2: FakeV2Host) -> None:
    driver = v2(fake_v2)
    (fake_v2.mount / "jobworker-jobs").rename(fake_v2.tmp / "gone")

    with pytest.raises(CgroupError, match="cannot create cgroup"):
        driver.create("job1", Limits())


def test_existing_cgroup_is_refused_and_kept(fake_v2: FakeV2Host) -> None:
    driver = v2(fake_v2)
    driver.create("job1", Limits())
    fake_v2.kernel.set_procs(fake_v2.mount / "jobworker-jobs" / "job1", [300])

    with pytest.raises(CgroupError, match="already exists"):
        driver.create("job1", Limits(pids=3))

    assert fake_v2.kernel.procs(fake_v2.mount / "jobworker-jobs" / "job1") == [300]


@pytest.mark.parametrize("job_id", ["", ".", "..", "../escape", "a/b", "-x", "a b", "x" * 200])
def test_job_id_that_is_not_one_directory_name_is_refused(fake_v2: FakeV2Host, job_id: str) -> None:
    driver = v2(fake_v2)

    with pytest.raises(CgroupError, match="cannot name a cgroup"):
        driver.create(job_id, Limits())

    jobs = fake_v2.mount / "jobworker-jobs"
    assert [p.name for p in jobs.iterdir() if p.is_dir()] == []
    assert sorted(p.name for p in fake_v2.mount.iterdir() if p.is_dir()) == [
        "jobworker-jobs",
        "jobworker-server",
    ]


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(cpus=0), "cpus must be a positive"),
        (Limits(cpus=-1.0), "cpus must be a positive"),
        (Limits(cpus=math.nan), "cpus must be a positive"),
        (Limits(cpus=math.inf), "cpus must be a positive"),
        (Limits(cpus=0.001), "below the smallest enforceable share"),
        (Limits(memory_bytes=0), "memory_bytes must be positive"),
        (Limits(memory_bytes=-5), "memory_bytes must be positive"),
        (Limits(pids=0), "pids must be positive"),
        (Limits(io_read_bps=-1), "io_read_bps must be positive"),
        (Limits(io_write_bps=0), "io_write_bps must be positive"),
        (Limits(pids=True), "pids must be an integer"),
        (Limits(memory_bytes=1.5), "memory_bytes must be an integer"),  # type: ignore[arg-type]
    ],
)
def test_nonsense_limits_are_refused_before_anything_is_made(
    fake_v2: FakeV2Host, limits: Limits, message: str
) -> None:
    driver = v2(fake_v2)

    with pytest.raises(CgroupError, match=message):
        driver.create("job1", limits)

    assert not (fake_v2.mount / "jobworker-jobs" / "job1").exists()


def test_pids_and_signal_all(fake_v2: FakeV2Host) -> None:
    cgroup = v2(fake_v2).create("job1", Limits())
    fake_v2.kernel.set_procs(fake_v2.mount / "jobworker-jobs" / "job1", [300, 301])

    assert cgroup.pids() == [300, 301]
    cgroup.signal_all(signal.SIGTERM)

    assert fake_v2.kernel.signals == [(300, signal.SIGTERM), (301, signal.SIGTERM)]


def test_joining_through_procs_file(fake_v2: FakeV2Host) -> None:
    cgroup = v2(fake_v2).create("job1", Limits())

    fake_v2.kernel.write(cgroup.procs_files[0], "0")

    assert cgroup.pids() == [SERVER_PID]


def test_kill_uses_cgroup_kill(fake_v2: FakeV2Host) -> None:
    cgroup = v2(fake_v2).create("job1", Limits())
    job = fake_v2.mount / "jobworker-jobs" / "job1"
    fake_v2.kernel.set_procs(job, [300, 301])

    cgroup.kill()

    assert ("jobworker-jobs/job1/cgroup.kill", "1") in fake_v2.kernel.writes
    assert cgroup.pids() == []


def test_kill_without_cgroup_kill_freezes_kills_and_thaws(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(features=frozenset({"cgroup.freeze"}))
    cgroup = v2(host).create("job1", Limits())
    host.kernel.set_procs(host.mount / "jobworker-jobs" / "job1", [300, 301])
    host.kernel.writes.clear()

    cgroup.kill()

    freeze = "jobworker-jobs/job1/cgroup.freeze"
    assert host.kernel.writes == [(freeze, "1"), (freeze, "0")]
    assert host.kernel.signals == [(300, signal.SIGKILL), (301, signal.SIGKILL)]
    assert cgroup.pids() == []


def test_kill_without_kill_or_freeze_repeats_until_empty(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(features=frozenset())
    cgroup = v2(host).create("job1", Limits())
    host.kernel.set_procs(host.mount / "jobworker-jobs" / "job1", [300])

    cgroup.kill()

    assert host.kernel.signals == [(300, signal.SIGKILL)]
    assert cgroup.pids() == []


def test_stats_parse_kernel_files(fake_v2: FakeV2Host) -> None:
    cgroup = v2(fake_v2).create("job1", Limits(memory_bytes=1 << 20))
    job = fake_v2.mount / "jobworker-jobs" / "job1"
    (job / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    (job / "memory.peak").write_text("1048576\n")
    (job / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\n")

    assert cgroup.stats() == CgroupStats(cpu_seconds=1.5, memory_peak_bytes=1 << 20, oom_kills=2)


def test_stats_without_memory_peak(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(features=frozenset({"cgroup.kill"}))
    cgroup = v2(host).create("job1", Limits())

    assert cgroup.stats() == CgroupStats(cpu_seconds=0.0, memory_peak_bytes=None, oom_kills=0)


def test_remove_kills_then_removes_and_is_idempotent(fake_v2: FakeV2Host) -> None:
    cgroup = v2(fake_v2).create("job1", Limits())
    job = fake_v2.mount / "jobworker-jobs" / "job1"
    fake_v2.kernel.set_procs(job, [300])

    cgroup.remove()
    cgroup.remove()

    assert not job.exists()
    assert fake_v2.kernel.signals == [(300, signal.SIGKILL)]
    assert cgroup.pids() == []
    assert cgroup.stats() == CgroupStats(cpu_seconds=None, memory_peak_bytes=None, oom_kills=0)
    cgroup.kill()
    cgroup.signal_all(signal.SIGTERM)


def test_remove_gives_up_on_a_cgroup_that_stays_busy(fake_v2: FakeV2Host) -> None:
    cgroup = v2(fake_v2).create("job1", Limits())
    job = fake_v2.mount / "jobworker-jobs" / "job1"
    # Something the job cannot have made (it runs in its own cgroup namespace) keeps it busy.
    fake_v2.kernel.make_cgroup(job / "nested")

    with pytest.raises(CgroupError, match=r"cannot remove cgroup .*job1: Device or resource busy"):
        cgroup.remove()

    fake_v2.kernel.rmdir(str(job / "nested"))
    cgroup.remove()
    assert not job.exists()


def test_cleanup_stale_kills_and_removes_earlier_jobs(fake_v2: FakeV2Host) -> None:
    driver = v2(fake_v2)
    jobs = fake_v2.mount / "jobworker-jobs"
    fake_v2.kernel.make_cgroup(jobs / "old1", [500, 501])
    fake_v2.kernel.make_cgroup(jobs / "old2")

    assert driver.cleanup_stale() == 2

    assert [p for p in jobs.iterdir() if p.is_dir()] == []
    assert sorted(fake_v2.kernel.signals) == [(500, signal.SIGKILL), (501, signal.SIGKILL)]
    assert driver.cleanup_stale() == 0


def test_job_cgroup_satisfies_the_protocol(fake_v2: FakeV2Host) -> None:
    cgroup = v2(fake_v2).create("job1", Limits())
    assert isinstance(cgroup, V2JobCgroup)
    assert cgroup.path == str(fake_v2.mount / "jobworker-jobs" / "job1")


def test_a_cpuset_is_written_to_cpuset_cpus(fake_v2: FakeV2Host) -> None:
    driver = v2(fake_v2)

    driver.create("job1", Limits(cpuset="0,2-3"))

    assert (fake_v2.mount / "jobworker-jobs" / "job1" / "cpuset.cpus").read_text() == "0,2-3"


def test_a_cpuset_without_the_cpuset_controller_is_refused(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(controllers=("cpu", "io", "memory", "pids"))
    driver = v2(host)
    # cpuset is optional: a host without it is not reported as lacking anything until a job asks.
    assert driver.reason == ""

    with pytest.raises(CgroupError, match="controller 'cpuset' is not available"):
        driver.create("job1", Limits(cpuset="0"))
    assert not (host.mount / "jobworker-jobs" / "job1").exists()


def test_memory_swap_is_written_to_memory_swap_max(fake_v2: FakeV2Host) -> None:
    driver = v2(fake_v2)
    fake_v2.kernel.writes.clear()

    driver.create("job1", Limits(memory_bytes=64 << 20, memory_swap_bytes=32 << 20))

    # One write each: memory.swap.max is not first zeroed and then raised.
    assert [name for name, _ in fake_v2.kernel.writes] == [
        "jobworker-jobs/job1/memory.max",
        "jobworker-jobs/job1/memory.swap.max",
    ]
    job = fake_v2.mount / "jobworker-jobs" / "job1"
    assert (job / "memory.max").read_text() == str(64 << 20)
    assert (job / "memory.swap.max").read_text() == str(32 << 20)


def test_memory_swap_without_swap_accounting_is_refused_before_anything_is_made(
    make_fake_v2: MakeFakeV2,
) -> None:
    host = make_fake_v2(features=frozenset({"cgroup.kill"}))
    driver = v2(host)

    with pytest.raises(
        CgroupError, match=r"memory_swap cannot be enforced: this host has no swap accounting"
    ):
        driver.create("job1", Limits(memory_bytes=64 << 20, memory_swap_bytes=1 << 20))

    assert not (host.mount / "jobworker-jobs" / "job1").exists()
