"""Pick the cgroup driver once at start-up from /proc/self/mountinfo and /proc/self/cgroup."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ._base import CgroupDriver, CgroupError, check_job_id
from ._host import Host
from ._null import NullDriver
from ._v1 import CONTROLLERS as V1_CONTROLLERS
from ._v1 import OPTIONAL_CONTROLLERS as V1_OPTIONAL
from ._v1 import Hierarchy, prepare_v1
from ._v2 import prepare_v2

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo, reduced to what detection needs."""

    mountpoint: str
    root: str
    fstype: str
    options: frozenset[str]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def detect_driver(
    *,
    root: str = "/sys/fs/cgroup",
    proc_self_cgroup: str = "/proc/self/cgroup",
    mountinfo: str = "/proc/self/mountinfo",
    sys_block: str = "/sys/block",
    prefix: str = "jobworker",
    io_paths: tuple[str, ...] = ("/",),
    host: Host | None = None,
) -> CgroupDriver:
    """Return the v2, v1 or null driver for this host; never raises (the null driver says why).

    v2 is chosen when root is a cgroup2 mount, v1 when v1 controller hierarchies are mounted (hybrid
    hosts included); otherwise, or when the cgroupfs is read-only or not writable by us, "none".
    io_paths are the paths whose backing block devices io limits are written for.
    """
    try:
        return _detect(
            root=os.path.normpath(root),
            proc_self_cgroup=proc_self_cgroup,
            mountinfo=mountinfo,
            sys_block=sys_block,
            prefix=prefix,
            io_paths=io_paths,
            host=host or Host(),
        )
    except CgroupError as err:
        return NullDriver(str(err))
    except (OSError, ValueError) as err:
        return NullDriver(f"cannot inspect cgroups: {err}")


def _detect(
    *,
    root: str,
    proc_self_cgroup: str,
    mountinfo: str,
    sys_block: str,
    prefix: str,
    io_paths: tuple[str, ...],
    host: Host,
) -> CgroupDriver:
    try:
        check_job_id(prefix)
    except CgroupError as err:
        raise CgroupError(f"invalid cgroup prefix {prefix!r}") from err
    mounts = parse_mountinfo(_read(mountinfo))
    v2_path, v1_paths = parse_proc_cgroup(_read(proc_self_cgroup))

    v2_mounts = [m for m in mounts if m.fstype == "cgroup2" and m.mountpoint == root]
    if v2_mounts:
        mount = v2_mounts[-1]
        if v2_path is None:
            raise CgroupError(f"{proc_self_cgroup} has no cgroup v2 ('0::') entry")
        server_dir = _check_usable(mount, v2_path)
        base_dir = server_dir
        if os.path.basename(server_dir) == f"{prefix}-server" and server_dir != mount.mountpoint:
            # A previous run of the server already moved itself into its leaf: keep one layout.
            base_dir = os.path.dirname(server_dir)
        return prepare_v2(host, base_dir, prefix, sys_block, io_paths)

    v1_mounts = [m for m in mounts if m.fstype == "cgroup"]
    controllers_by_dir: dict[str, set[str]] = {}
    for controller in (*V1_CONTROLLERS, *V1_OPTIONAL):
        candidates = [m for m in v1_mounts if controller in m.options]
        if not candidates or controller not in v1_paths:
            continue
        under_root = [m for m in candidates if _is_under(m.mountpoint, root)]
        mount = (under_root or candidates)[-1]
        server_dir = _check_usable(mount, v1_paths[controller])
        controllers_by_dir.setdefault(server_dir, set()).add(controller)
    if not controllers_by_dir:
        raise CgroupError(f"no cgroup v2 or v1 controller hierarchy is mounted at {root}")
    hierarchies = tuple(
        Hierarchy(frozenset(controllers), os.path.join(server_dir, prefix))
        for server_dir, controllers in sorted(controllers_by_dir.items())
    )
    return prepare_v1(host, hierarchies, sys_block, io_paths)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts in a mountinfo file, in mount order."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 6 or len(fields) < sep + 4:
            continue
        fstype = fields[sep + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(fields[5].split(",")) | frozenset(fields[sep + 3].split(","))
        mounts.append(Mount(_unescape(fields[4]), _unescape(fields[3]), fstype, options))
    return mounts


def parse_proc_cgroup(text: str) -> tuple[str | None, dict[str, str]]:
    """(v2 path or None, {v1 controller: path}) from a /proc/<pid>/cgroup file."""
    v2_path: str | None = None
    v1_paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, path = parts
        if hierarchy_id == "0" and not controllers:
            v2_path = path
            continue
        for controller in controllers.split(","):
            if controller and not controller.startswith("name="):
                v1_paths[controller] = path
    return v2_path, v1_paths


def _check_usable(mount: Mount, cgroup_path: str) -> str:
    """The server's directory in mount, after checking it exists and is writable."""
    server_dir = _host_dir(mount, cgroup_path)
    if mount.read_only:
        raise CgroupError(f"the cgroup filesystem at {mount.mountpoint} is mounted read-only")
    if not os.path.isdir(server_dir):
        raise CgroupError(f"the server's cgroup {server_dir} does not exist")
    if not os.access(server_dir, os.W_OK):
        raise CgroupError(
            f"no permission to create cgroups in {server_dir} "
            "(run the server as root or in a delegated cgroup)"
        )
    return server_dir


def _host_dir(mount: Mount, cgroup_path: str) -> str:
    """Where cgroup_path (as /proc/self/cgroup names it) lies under mount."""
    if mount.root == "/":
        relative = cgroup_path
    elif cgroup_path == mount.root or cgroup_path.startswith(mount.root.rstrip("/") + "/"):
        relative = cgroup_path[len(mount.root) :]
    else:
        relative = None
    if relative is None or ".." in relative.split("/"):
        raise CgroupError(f"the server's cgroup {cgroup_path} is not visible under {mount.mountpoint}")
    return os.path.normpath(os.path.join(mount.mountpoint, relative.lstrip("/")))


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()
