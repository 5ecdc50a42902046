"""Fixtures: a fake cgroup v2 host on tmp_path, and real-kernel cgroup v1 drivers cleaned up after."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroupfs_helpers import (
    ALL_CONTROLLERS,
    ALL_FEATURES,
    FAKE_DEVICES,
    SERVER_PID,
    FakeKernel,
    FakeSysfs,
    FakeV2Host,
    MakeFakeV2,
    cgroup2_mount,
    v1_hierarchies_mounted,
)

from jobworker.engine.cgroups import detect_driver
from jobworker.engine.cgroups._v1 import V1Driver
from jobworker.engine.cgroups._v2 import V2Driver


@pytest.fixture
def fake_sysfs(tmp_path: Path) -> FakeSysfs:
    """sda (two partitions, the second under dm-0), nvme0n1 (+ a hidden path), loop0, zram0, sr0."""
    st_dev = os.stat(tmp_path).st_dev
    if f"{os.major(st_dev)}:{os.minor(st_dev)}" in FAKE_DEVICES:
        pytest.skip("tmp_path lives on a device number the fake sysfs uses")
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.disk("sda", "8:0")
    sysfs.partition("sda", "sda1", "8:1", 1)
    sda2 = sysfs.partition("sda", "sda2", "8:2", 2)
    sysfs.disk("nvme0n1", "259:0")
    sysfs.partition("nvme0n1", "nvme0n1p1", "259:1", 1)
    sysfs.disk("nvme0c0n1", "259:5", hidden=True)
    sysfs.disk("dm-0", "253:0")
    sysfs.slave("dm-0", sda2)
    sysfs.disk("loop0", "7:0")
    sysfs.disk("zram0", "252:0")
    sysfs.disk("sr0", "11:0", size=0)
    return sysfs


@pytest.fixture
def make_fake_v2(tmp_path: Path, fake_sysfs: FakeSysfs) -> MakeFakeV2:
    """Build a fake v2 host; keyword arguments choose controllers, kernel features and layout."""

    def make(
        *,
        controllers: tuple[str, ...] = ALL_CONTROLLERS,
        features: frozenset[str] = ALL_FEATURES,
        server_path: str = "/",
        server_procs: tuple[int, ...] = (1, SERVER_PID),
        host_root: bool = False,
        mount_root: str = "/",
        mount_options: str = "rw,nosuid,nodev,noexec,relatime",
    ) -> FakeV2Host:
        mount = tmp_path / "cgroup"
        kernel = FakeKernel(mount, self_pid=SERVER_PID, features=features)
        kernel.make_root(controllers, [], host_root=host_root)
        server_dir = mount / server_path.lstrip("/")
        if server_dir != mount:
            # Ancestors pass every controller down, as systemd does for a delegated service.
            for ancestor in reversed(server_dir.relative_to(mount).parents):
                directory = mount / ancestor
                if directory != mount:
                    kernel.make_cgroup(directory)
                control = directory / "cgroup.subtree_control"
                control.write_text(" ".join(controllers) + "\n")
            kernel.make_cgroup(server_dir)
        kernel.set_procs(server_dir, list(server_procs))
        proc_self_cgroup = tmp_path / "proc_self_cgroup"
        proc_self_cgroup.write_text(f"0::{server_path}\n")
        mountinfo = tmp_path / "mountinfo"
        mountinfo.write_text(
            "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw\n"
            f"30 23 0:26 {mount_root} {mount} {mount_options} shared:4 - cgroup2 cgroup2 "
            "rw,nsdelegate,memory_recursiveprot\n"
        )
        return FakeV2Host(tmp_path, mount, kernel, fake_sysfs, proc_self_cgroup, mountinfo)

    return make


@pytest.fixture
def fake_v2(make_fake_v2: MakeFakeV2) -> FakeV2Host:
    """A fake v2 host like Docker with a private cgroup namespace: the server sits in "/"."""
    return make_fake_v2()


@pytest.fixture
def real_v1() -> Iterator[V1Driver]:
    """The real kernel's v1 driver under a unique prefix; every directory is gone afterwards."""
    if os.geteuid() != 0:
        pytest.skip("managing real cgroups needs root")
    if not v1_hierarchies_mounted():
        pytest.skip("this host mounts no cgroup v1 controller hierarchies")
    driver = detect_driver(prefix=f"jwtest-{uuid.uuid4().hex[:10]}")
    assert isinstance(driver, V1Driver), f"expected v1, got {driver.name}: {driver.reason}"
    try:
        yield driver
    finally:
        driver.cleanup_stale()
        for directory in driver.jobs_dirs:
            if os.path.isdir(directory):
                os.rmdir(directory)
    leftovers = [d for d in driver.jobs_dirs if os.path.exists(d)]
    assert not leftovers, f"cgroup directories left behind: {leftovers}"


@pytest.fixture
def real_v2() -> Iterator[V2Driver]:
    """The real kernel's v2 driver on a controller-less cgroup2 mount (hybrid hosts' unified/)."""
    if os.geteuid() != 0:
        pytest.skip("managing real cgroups needs root")
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("this host mounts no cgroup2 hierarchy")
    if set(ALL_CONTROLLERS) & set(Path(mount, "cgroup.controllers").read_text().split()):
        pytest.skip(
            f"cgroup2 at {mount} has limit controllers: setting it up would move this host's "
            "own processes into a leaf cgroup"
        )
    driver = detect_driver(root=mount, prefix=f"jwtest-{uuid.uuid4().hex[:10]}")
    assert isinstance(driver, V2Driver), f"expected v2, got {driver.name}: {driver.reason}"
    try:
        yield driver
    finally:
        driver.cleanup_stale()
        if os.path.isdir(driver.jobs_dir):
            os.rmdir(driver.jobs_dir)
    assert not os.path.exists(driver.jobs_dir), f"cgroup directory left behind: {driver.jobs_dir}"
