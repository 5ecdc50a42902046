"""Which block devices an io limit is written for.

cgroup io throttling is per device (v2 io.max, v1 blkio.throttle.*_bps_device) and the kernel only
accepts whole disks, not partitions. For each path whose filesystem jobs write to, the device number
(st_dev) is looked up in /sys/dev/block:

- a partition (it has a ``partition`` file) is replaced by its parent disk (the parent directory);
- a stacked device (device-mapper, md) is throttled itself and so is every device in its
  ``slaves/`` directory, recursively, each mapped to its whole disk;
- NVMe namespaces (nvme0n1) are whole disks like any other.

When the device cannot be resolved - an anonymous st_dev (major 0: overlayfs inside Docker, tmpfs,
btrfs subvolumes) or a number sysfs does not know - every whole disk in /sys/block is throttled
instead, except loop*, ram* and zram* (they sit on top of other disks or memory, not storage),
hidden devices (NVMe multipath paths) and devices without media (size 0). Throttling too many disks
only caps the job where it could not have been measured anyway; throttling too few would silently
let it escape the limit, which the engine must never do.
"""

from __future__ import annotations

import os
import re

from ._base import CgroupError

_DEV = re.compile(r"[0-9]+:[0-9]+")
_VIRTUAL_PREFIXES = ("loop", "ram", "zram")
# Stacks of device-mapper on md on partitions are shallow; the bound only stops sysfs cycles.
_MAX_DEPTH = 16


def block_devices_for(paths: tuple[str, ...], sys_block: str) -> list[str]:
    """Sorted "MAJ:MIN" of the whole disks backing paths (see the module docstring)."""
    found: set[str] = set()
    for path in paths:
        try:
            st_dev = os.stat(path).st_dev
        except OSError as err:
            raise CgroupError(f"cannot find the device of {path}: {err.strerror}") from err
        found.update(resolve_block_devices(st_dev, sys_block))
    return sorted(found, key=_dev_key)


def resolve_block_devices(st_dev: int, sys_block: str) -> list[str]:
    """Sorted "MAJ:MIN" of the whole disks behind one device number, or the fallback set."""
    major, minor = os.major(st_dev), os.minor(st_dev)
    node = os.path.join(_sys_dev_block(sys_block), f"{major}:{minor}")
    if major == 0 or not os.path.exists(node):
        return all_whole_disks(sys_block)
    found: set[str] = set()
    _collect(os.path.realpath(node), found, 0)
    if not found:
        return all_whole_disks(sys_block)
    return sorted(found, key=_dev_key)


def all_whole_disks(sys_block: str) -> list[str]:
    """Sorted "MAJ:MIN" of every real whole disk in sys_block (the unresolvable-device fallback)."""
    found: list[str] = []
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return []
    for name in names:
        if name.startswith(_VIRTUAL_PREFIXES):
            continue
        disk = os.path.join(sys_block, name)
        if _read(os.path.join(disk, "hidden")) == "1" or _read(os.path.join(disk, "size")) == "0":
            continue
        dev = _read_dev(disk)
        if dev:
            found.append(dev)
    return sorted(found, key=_dev_key)


def _collect(devdir: str, found: set[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    if os.path.exists(os.path.join(devdir, "partition")):
        devdir = os.path.dirname(devdir)
    dev = _read_dev(devdir)
    if not dev or dev in found:
        return
    found.add(dev)
    slaves = os.path.join(devdir, "slaves")
    try:
        names = sorted(os.listdir(slaves))
    except OSError:
        return
    for name in names:
        _collect(os.path.realpath(os.path.join(slaves, name)), found, depth + 1)


def _sys_dev_block(sys_block: str) -> str:
    # /sys/block and /sys/dev/block are siblings; deriving one from the other keeps a single knob.
    return os.path.join(os.path.dirname(os.path.normpath(sys_block)), "dev", "block")


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _read_dev(devdir: str) -> str:
    """The "MAJ:MIN" in devdir/dev, or "" when absent or malformed."""
    dev = _read(os.path.join(devdir, "dev"))
    return dev if _DEV.fullmatch(dev) else ""


def _dev_key(dev: str) -> tuple[int, int]:
    major, _, minor = dev.partition(":")
    return int(major), int(minor)
