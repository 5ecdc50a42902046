"""Which block devices io limits are written for, against a fake sysfs."""

from __future__ import annotations

import os

from cgroupfs_helpers import FakeSysfs

from jobworker.engine.cgroups._devices import (
    all_whole_disks,
    block_devices_for,
    resolve_block_devices,
)

# Every real whole disk of the fake sysfs: not loop/zram, not the hidden NVMe path, not empty sr0.
ALL_DISKS = ["8:0", "253:0", "259:0"]


def resolve(sysfs: FakeSysfs, major: int, minor: int) -> list[str]:
    return resolve_block_devices(os.makedev(major, minor), str(sysfs.block))


def test_whole_disk_is_itself(fake_sysfs: FakeSysfs) -> None:
    assert resolve(fake_sysfs, 8, 0) == ["8:0"]


def test_partition_maps_to_its_disk(fake_sysfs: FakeSysfs) -> None:
    assert resolve(fake_sysfs, 8, 1) == ["8:0"]


def test_nvme_namespace_partition_maps_to_the_namespace(fake_sysfs: FakeSysfs) -> None:
    assert resolve(fake_sysfs, 259, 1) == ["259:0"]


def test_device_mapper_includes_its_slaves_disks(fake_sysfs: FakeSysfs) -> None:
    assert resolve(fake_sysfs, 253, 0) == ["8:0", "253:0"]


def test_stacked_device_mapper_is_followed_down(fake_sysfs: FakeSysfs) -> None:
    fake_sysfs.disk("dm-1", "253:1")
    fake_sysfs.slave("dm-1", (fake_sysfs.block / "dm-0").resolve())
    fake_sysfs.slave("dm-1", (fake_sysfs.block / "nvme0n1").resolve() / "nvme0n1p1")

    assert resolve(fake_sysfs, 253, 1) == ["8:0", "253:0", "253:1", "259:0"]


def test_anonymous_device_falls_back_to_every_real_disk(fake_sysfs: FakeSysfs) -> None:
    # overlayfs (Docker's root filesystem) and tmpfs report major 0.
    assert resolve(fake_sysfs, 0, 52) == ALL_DISKS


def test_unknown_device_falls_back_to_every_real_disk(fake_sysfs: FakeSysfs) -> None:
    assert resolve(fake_sysfs, 65, 7) == ALL_DISKS


def test_fallback_skips_virtual_hidden_and_empty_devices(fake_sysfs: FakeSysfs) -> None:
    fake_sysfs.disk("ram0", "1:0")

    assert all_whole_disks(str(fake_sysfs.block)) == ALL_DISKS


def test_missing_sysfs_gives_no_devices(tmp_path: os.PathLike[str]) -> None:
    missing = os.path.join(tmp_path, "nosys", "block")

    assert all_whole_disks(missing) == []
    assert resolve_block_devices(os.makedev(0, 40), missing) == []


def test_paths_are_resolved_through_their_filesystem(fake_sysfs: FakeSysfs) -> None:
    st_dev = os.stat(fake_sysfs.root).st_dev
    # Make the tmp filesystem's own device number a partition of a fake disk.
    fake_sysfs.disk("vdz", "240:0")
    if os.major(st_dev) != 0:
        fake_sysfs.partition("vdz", "vdz1", f"{os.major(st_dev)}:{os.minor(st_dev)}", 1)
        expected = ["240:0"]
    else:
        expected = ["8:0", "240:0", "253:0", "259:0"]

    assert block_devices_for((str(fake_sysfs.root),), str(fake_sysfs.block)) == expected
