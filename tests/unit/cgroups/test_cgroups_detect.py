"""Driver detection: v2, v1 (hybrid), or none with a reason; never an exception."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from cgroupfs_helpers import FakeV2Host, MakeFakeV2

from jobworker.engine.cgroups import CgroupError, detect_driver, null_driver
from jobworker.engine.cgroups._host import Host
from jobworker.engine.cgroups._v1 import V1Driver
from jobworker.engine.job import Limits


def test_cgroup2_at_root_is_v2(fake_v2: FakeV2Host) -> None:
    driver = fake_v2.detect()

    assert (driver.name, driver.reason) == ("v2", "")


def test_read_only_cgroupfs_is_none_and_untouched(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(mount_options="ro,nosuid,nodev,noexec,relatime")

    driver = host.detect()

    assert driver.name == "none"
    assert "read-only" in driver.reason
    assert host.kernel.writes == []
    assert not (host.mount / "jobworker-jobs").exists()


def test_refused_controllers_are_named_and_their_limits_refused(fake_v2: FakeV2Host) -> None:
    fake_v2.kernel.fail["cgroup.subtree_control"] = errno.EBUSY

    driver = fake_v2.detect()

    assert driver.name == "v2"
    assert not driver.supports_limits()
    assert driver.reason.startswith("cgroup v2 controllers unavailable: cpu, io, memory, pids; ")
    assert "'+cpu' to " in driver.reason
    assert "cgroup.subtree_control: Device or resource busy" in driver.reason
    with pytest.raises(CgroupError, match="controller 'memory' is not available"):
        driver.create("job1", Limits(memory_bytes=1 << 20))
    assert driver.create("job2", Limits()).pids() == []


def test_failed_leaf_move_is_none_with_the_kernel_error(fake_v2: FakeV2Host) -> None:
    fake_v2.kernel.fail["cgroup.procs"] = errno.EACCES

    driver = fake_v2.detect()

    assert driver.name == "none"
    assert driver.reason.startswith("cannot move pid 1 from ")
    assert driver.reason.endswith("jobworker-server: Permission denied")


def test_server_cgroup_outside_the_mount_is_none(make_fake_v2: MakeFakeV2) -> None:
    host = make_fake_v2(mount_root="/docker/abc")
    host.proc_self_cgroup.write_text("0::/elsewhere\n")

    driver = host.detect()

    assert driver.name == "none"
    assert "not visible" in driver.reason


def test_no_v2_line_in_proc_self_cgroup_is_none(fake_v2: FakeV2Host) -> None:
    fake_v2.proc_self_cgroup.write_text("4:memory:/\n")

    assert "has no cgroup v2" in fake_v2.detect().reason


def test_unreadable_proc_file_is_none(fake_v2: FakeV2Host) -> None:
    fake_v2.proc_self_cgroup.unlink()

    driver = fake_v2.detect()

    assert driver.name == "none"
    assert driver.reason.startswith("cannot inspect cgroups")


def test_nothing_mounted_is_none(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        f"31 23 0:28 / {tmp_path} rw,relatime - tmpfs tmpfs rw,mode=755\n"
    )
    (tmp_path / "cgroup").write_text("0::/\n")

    driver = detect_driver(
        root=str(tmp_path),
        proc_self_cgroup=str(tmp_path / "cgroup"),
        mountinfo=str(tmp_path / "mountinfo"),
    )

    assert driver.name == "none"
    assert "no cgroup v2 or v1 controller hierarchy" in driver.reason


@pytest.mark.parametrize("prefix", ["", "../x", "a/b"])
def test_bad_prefix_is_none(fake_v2: FakeV2Host, prefix: str) -> None:
    driver = fake_v2.detect(prefix=prefix)

    assert driver.name == "none"
    assert "invalid cgroup prefix" in driver.reason


def _fake_v1(tmp_path: Path, *, combined: bool) -> tuple[Path, list[str]]:
    """A hybrid v1 host: tmpfs root, controller mounts, an empty cgroup2 at unified/."""
    root = tmp_path / "cgroup"
    mounts = ["cpu,cpuacct", "memory", "pids", "freezer"] if combined else ["cpu", "cpuacct"]
    lines = [f"31 23 0:28 / {root} rw - tmpfs tmpfs rw,mode=755"]
    proc = ["0::/"]
    for n, name in enumerate(mounts):
        (root / name / "srv").mkdir(parents=True)
        lines.append(f"{40 + n} 31 0:{40 + n} / {root / name} rw,relatime - cgroup cgroup rw,{name}")
        proc.append(f"{n + 1}:{name}:/srv")
    lines.append(f"50 31 0:50 / {root / 'unified'} rw - cgroup2 cgroup2 rw")
    lines.append(f"51 31 0:51 / {root / 'systemd'} rw - cgroup cgroup rw,name=systemd")
    proc.append("9:name=systemd:/")
    (tmp_path / "mountinfo").write_text("\n".join(lines) + "\n")
    (tmp_path / "proc_self_cgroup").write_text("\n".join(proc) + "\n")
    return root, mounts


def _detect_v1(tmp_path: Path) -> V1Driver:
    driver = detect_driver(
        root=str(tmp_path / "cgroup"),
        proc_self_cgroup=str(tmp_path / "proc_self_cgroup"),
        mountinfo=str(tmp_path / "mountinfo"),
        sys_block=str(tmp_path / "sys" / "block"),
        prefix="jw",
        host=Host(),
    )
    assert isinstance(driver, V1Driver), f"{driver.name}: {driver.reason}"
    return driver


def test_hybrid_with_combined_cpu_cpuacct_is_v1(tmp_path: Path) -> None:
    root, _ = _fake_v1(tmp_path, combined=True)

    driver = _detect_v1(tmp_path)

    assert driver.reason == "cgroup v1 controllers not mounted: blkio, devices"
    assert driver.jobs_dirs == tuple(
        str(root / name / "srv" / "jw") for name in ["cpu,cpuacct", "freezer", "memory", "pids"]
    )
    cgroup = driver.create("job1", Limits())
    assert cgroup.procs_files == tuple(
        str(root / name / "srv" / "jw" / "job1" / "cgroup.procs")
        for name in ["cpu,cpuacct", "freezer", "memory", "pids"]
    )
    with pytest.raises(CgroupError, match="controller 'blkio' is not mounted"):
        driver.create("job2", Limits(io_read_bps=1))
    cgroup.remove()
    assert not (root / "memory" / "srv" / "jw" / "job1").exists()


def test_separate_cpu_and_cpuacct_are_two_hierarchies(tmp_path: Path) -> None:
    root, _ = _fake_v1(tmp_path, combined=False)

    driver = _detect_v1(tmp_path)

    assert driver.jobs_dirs == (str(root / "cpu" / "srv" / "jw"), str(root / "cpuacct" / "srv" / "jw"))
    assert driver.supports_limits()
    with pytest.raises(CgroupError, match="controller 'memory' is not mounted"):
        driver.create("job1", Limits(memory_bytes=1 << 20))
    assert not (root / "cpu" / "srv" / "jw" / "job1").exists()


def test_v1_cleanup_stale_removes_job_dirs_in_every_hierarchy(tmp_path: Path) -> None:
    root, _ = _fake_v1(tmp_path, combined=True)
    driver = _detect_v1(tmp_path)
    (root / "memory" / "srv" / "jw" / "old").mkdir()
    (root / "pids" / "srv" / "jw" / "old").mkdir()
    (root / "pids" / "srv" / "jw" / "older").mkdir()

    assert driver.cleanup_stale() == 2

    assert [p for d in driver.jobs_dirs for p in Path(d).iterdir()] == []


def test_null_driver_refuses_limits_and_manages_nothing() -> None:
    driver = null_driver("cgroups disabled by configuration")

    assert (driver.name, driver.supports_limits()) == ("none", False)
    with pytest.raises(CgroupError, match="cannot be enforced on this host: cgroups disabled"):
        driver.create("job1", Limits(pids=10))
    cgroup = driver.create("job1", Limits())
    assert cgroup.procs_files == ()
    assert cgroup.pids() == []
    cgroup.signal_all(15)
    cgroup.kill()
    assert cgroup.stats().oom_kills == 0
    cgroup.remove()
    assert driver.cleanup_stale() == 0


def test_null_driver_checks_the_job_id() -> None:
    with pytest.raises(CgroupError, match="cannot name a cgroup"):
        null_driver("none").create("../x", Limits())
